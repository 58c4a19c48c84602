"""The paper's figures for two checkpoints (a baseline and RALD): Fig. 9, Fig. 8, confusion, curves.

`python -m rald_fast.experiments figures --baseline CKPT --rald CKPT --out DIR` writes
- tsne.png: t-SNE (scikit-learn) of the test features of both models side by side, coloured by fine
  class (hues ordered by coarse group, as the paper's colour bar) with one marker per coarse group and
  the group's name at its median point; tsne.json holds how well the coarse groups cluster (share of
  each image's 10 nearest neighbours, in the feature space, from its own coarse group; silhouette of
  the coarse groups), the measurable form of the paper's reading of Fig. 9;
- neighbours.png: Fig. 8, a few test images and their top-5 neighbours by the run's NNLDL relation
  (R_v by default) inside one test batch, with NNLDL's renormalised weights (green: same fine class,
  orange: same coarse group);
- confusion_baseline.png, confusion_rald.png; curves.png: loss, accuracy, NNLDL neighbour purity against
  chance and ITRR attention entropy per epoch (metrics.jsonl).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from rald_fast.evaluate.run import Run, load_run
from rald_fast.experiments.common import pyplot, write_json
from rald_fast.experiments.compare import evaluate_loaded
from rald_fast.evaluate.metrics import predict_split
from rald_fast.evaluate.reports import plot_confusion
from rald_fast.kernels import neighbour_targets
from rald_fast.models.losses import relation_qk

log = logging.getLogger(__name__)
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">"]


def _features(m: Run, batch: int, limit: int) -> tuple[np.ndarray, np.ndarray]:

    pred = predict_split(m.model, m.split, m.preprocess, batch, m.device, m.cfg.run.seed)
    keep = np.random.default_rng(0).permutation(len(pred["labels"]))[:limit]
    feats = pred["features"][keep]
    if not np.isfinite(feats).all():  # an under-trained model's eval-mode batch norm can overflow
        log.warning("%s: %d non-finite feature values set to 0 for t-SNE", m.name,
                    int((~np.isfinite(feats)).sum()))
        feats = np.nan_to_num(feats, nan=0.0, posinf=0.0, neginf=0.0)
    return feats, pred["labels"][keep]


def coarse_clustering(feats: np.ndarray, coarse: np.ndarray, k: int = 10) -> dict:
    """How close same-coarse-group images lie: kNN coarse agreement and silhouette (cosine)."""
    from sklearn.metrics import silhouette_score
    from sklearn.neighbors import NearestNeighbors

    k = min(k, len(feats) - 1)
    idx = NearestNeighbors(n_neighbors=k + 1, metric="cosine").fit(feats).kneighbors(feats)[1]
    agree = float((coarse[idx[:, 1:]] == coarse[:, None]).mean())
    sil = float(silhouette_score(feats, coarse, metric="cosine")) if len(set(coarse)) > 1 else 0.0
    return {"knn_coarse_agreement": agree, "coarse_silhouette": sil, "k": k, "n": len(feats)}


def plot_tsne(models: list[Run], batch: int, limit: int, path: Path) -> dict:
    from sklearn.manifold import TSNE

    plt = pyplot()
    tax = models[0].taxonomy
    parent = tax.coarse_of_fine()
    order = np.argsort(parent, kind="stable")                  # fine classes grouped by coarse
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    cmap = plt.get_cmap("turbo", tax.num_fine)
    fig, axes = plt.subplots(1, len(models), figsize=(7.5 * len(models) + 1.5, 7))
    stats = {}
    for ax, m in zip(np.atleast_1d(axes), models):
        feats, labels = _features(m, batch, limit)
        coarse = parent[labels]
        stats[m.name] = coarse_clustering(feats, coarse)
        emb = TSNE(n_components=2, init="pca", random_state=0,
                   perplexity=float(min(30, (len(feats) - 1) / 3))).fit_transform(feats)
        for g, gname in enumerate(tax.coarse):
            sel = coarse == g
            if not sel.any():
                continue
            sc = ax.scatter(emb[sel, 0], emb[sel, 1], c=rank[labels[sel]], cmap=cmap, vmin=-0.5,
                            vmax=tax.num_fine - 0.5, marker=MARKERS[g % len(MARKERS)], s=16,
                            alpha=0.8, label=gname, edgecolors="none")
            cx, cy = np.median(emb[sel], axis=0)
            ax.annotate(gname, (cx, cy), fontsize=10, weight="bold", ha="center",
                        bbox=dict(boxstyle="round", fc="white", alpha=0.7))
        s = stats[m.name]
        ax.set_title(f"{m.name} ({m.cfg.variant}): {len(feats)} test images\n"
                     f"same-coarse share of 10-NN {100 * s['knn_coarse_agreement']:.1f}%, "
                     f"coarse silhouette {s['coarse_silhouette']:.3f}", fontsize=10)
        ax.set_xlabel("t-SNE 1")
        ax.set_ylabel("t-SNE 2")
        ax.legend(title="coarse group (marker)", fontsize=8, loc="best", markerscale=1.2)
    cbar = fig.colorbar(sc, ax=axes, fraction=0.025, pad=0.01, ticks=range(tax.num_fine))
    cbar.ax.set_yticklabels([tax.fine[i] for i in order], fontsize=6.5)
    cbar.set_label("fine class (grouped by coarse group)")
    fig.suptitle("Fig. 9: t-SNE of test features, coloured by fine class", fontsize=13)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return stats


@torch.no_grad()
def plot_neighbours(m: Run, batch: int, queries: int, path: Path) -> list[dict]:
    """Fig. 8 for the first `queries` images of one seeded test batch, ranked and weighted by the
    run's own NNLDL relation (`--nnldl-relation`)."""

    if m.model.itrr is None:
        raise ValueError(f"--rald {m.name}: the neighbours figure needs a model with ITRR")
    tax, plt = m.taxonomy, pyplot()
    parent = tax.coarse_of_fine()
    sel = torch.randperm(len(m.split), generator=torch.Generator().manual_seed(0))[:batch]
    x = m.preprocess.normalize(m.split.images[sel].to(m.device))
    out = m.model.head_outputs(m.model.backbone_features(x))
    probs = out["logits"].float().softmax(-1)
    relation = m.cfg.loss.nnldl_relation
    q, k, scale = relation_qk(out, relation, m.cfg.model.scale, m.cfg.loss.nnldl_tau)
    _, idx, w = neighbour_targets(q, k, probs, 5, scale)
    labels, pred = m.split.labels[sel].numpy(), probs.argmax(1).cpu().numpy()
    k = idx.shape[1]
    fig, axes = plt.subplots(queries, k + 1, figsize=(2.1 * (k + 1), 2.5 * queries), squeeze=False)
    rows = []
    for r in range(queries):
        nb, wt = idx[r].cpu().numpy(), w[r].cpu().numpy()
        tiles = [(r, f"query: {tax.fine[labels[r]]}\npred: {tax.fine[pred[r]]}", "black")]
        for j, wj in zip(nb, wt):
            same = "green" if labels[j] == labels[r] else \
                "orange" if parent[labels[j]] == parent[labels[r]] else "red"
            tiles.append((j, f"{tax.fine[labels[j]]}\nw = {wj:.3f}", same))
        for ax, (i, title, colour) in zip(axes[r], tiles):
            ax.imshow(m.split.images[sel[i]].permute(1, 2, 0).numpy())
            ax.set_title(title, fontsize=9, color=colour)
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_edgecolor(colour)
                s.set_linewidth(3)
        rows.append({"query": tax.fine[labels[r]], "pred": tax.fine[pred[r]],
                     "neighbours": [tax.fine[labels[j]] for j in nb],
                     "weights": [float(v) for v in wt]})
    fig.suptitle(f"Fig. 8: top-{k} NNLDL neighbours ({relation}) in a test batch of {len(sel)} and their "
                 f"weights ({m.name})\ngreen: same fine class, orange: same coarse group, red: other",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return rows


def plot_curves(models: list[Run], checkpoints: list[str], path: Path) -> None:
    """Loss, accuracy and, for runs with ITRR, what NNLDL did per epoch: the share of each training
    image's top-k neighbours with its fine label (dotted: chance) and ITRR's attention entropy."""
    plt = pyplot()
    fig, (ax_l, ax_a, ax_n) = plt.subplots(1, 3, figsize=(16, 4.5))
    ax_e = ax_n.twinx()
    for m, ckpt in zip(models, checkpoints):
        rows = [json.loads(x) for x in (Path(ckpt).parent / "metrics.jsonl").read_text().splitlines()]
        ep = [r["epoch"] for r in rows]
        line, = ax_l.plot(ep, [r["train_loss"] for r in rows], marker=".", label=f"{m.name} loss")
        color = line.get_color()
        if "train_ce" in rows[0] and "train_kl" in rows[-1]:
            ax_l.plot(ep, [r["train_ce"] for r in rows], ls="--", color=color, label=f"{m.name} CE part")
        ax_a.plot(ep, [100 * r["train_acc"] for r in rows], ls="--", color=color, label=f"{m.name} train")
        test = [(r["epoch"], 100 * r["test_acc"]) for r in rows if "test_acc" in r]
        if test:
            ax_a.plot(*zip(*test), marker="o", color=color, label=f"{m.name} test")
        nn = [(r["epoch"], 100 * r["train_nn_purity_fine"], 100 * r["train_nn_chance_fine"]) for r in rows
              if "train_nn_purity_fine" in r]
        if nn:
            e, purity, chance = zip(*nn)
            ax_n.plot(e, purity, marker="o", color=color, label=f"{m.name} neighbour purity")
            ax_n.plot(e, chance, ls=":", color=color, label=f"{m.name} chance")
        ent = [(r["epoch"], r["train_itrr_entropy"]) for r in rows if "train_itrr_entropy" in r]
        if ent:
            ax_e.plot(*zip(*ent), ls="-.", color=color, label=f"{m.name} ITRR entropy")
    ax_l.set(xlabel="epoch", ylabel="training loss", title="Training loss (CE + NNLDL)")
    ax_a.set(xlabel="epoch", ylabel="fine accuracy (%)", title="Accuracy (test at eval epochs)")
    ax_n.set(xlabel="epoch", ylabel="top-k neighbours with the same fine label (%)",
             title="NNLDL neighbours (training batches)")
    ax_e.set_ylabel("ITRR attention entropy / log N (dash-dot)")
    for ax in (ax_l, ax_a, ax_n):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def make_figures(args, out: Path) -> list[Path]:

    ckpts = [args.baseline, args.rald]
    models = [load_run(c, args.device, name=n) for c, n in zip(ckpts, ("baseline", "rald"))]
    if list(models[0].taxonomy.fine) != list(models[1].taxonomy.fine):
        raise ValueError("--baseline and --rald were trained on different taxonomies")
    written = [out / "tsne.png", out / "neighbours.png", out / "curves.png"]
    summary = {"tsne": plot_tsne(models, args.batch_size, args.tsne_images, written[0]),
               "neighbours": plot_neighbours(models[1], args.batch_size, args.queries, written[1])}
    plot_curves(models, ckpts, written[2])
    for m in models:
        metrics = evaluate_loaded(m)
        summary.setdefault("accuracy", {})[m.name] = metrics["accuracy"]
        path = out / f"confusion_{m.name}.png"
        plot_confusion(metrics["confusion"], list(m.taxonomy.fine), path,
                       f"{m.name} ({m.cfg.variant}): fine accuracy {100 * metrics['accuracy']:.2f}%")
        written.append(path)
    write_json(out / "figures.json", {"checkpoints": ckpts, **summary})
    return [*written, out / "figures.json"]
