"""Label taxonomies and the structural index table xi of equation (9).

The label graph G (paper section 3) has the coarse and the fine labels as nodes and an edge between every coarse
label and each of its fine labels. The model predicts fine labels only; coarse labels are derived.
HLRR (eqs. 8-10) adds a learnable bias b[xi(v_i, v_j)] to its attention logits, where xi is 0 on the
diagonal, the shortest-path distance where v_j is reachable from v_i, and sigma (500) where it is not
(docs/DESIGN.md, "Eq. (9)", gives this reading and the literal one, `--xi-reading literal`).

Built in: FG-Emotions (6 coarse / 33 fine, Table 1 of the paper, with the valence level kept as
metadata) and the 7 (or 8, with contempt) flat basic classes of RAF-DB and AffectNet. A user's own
taxonomy comes from a JSON or YAML file, see `load_taxonomy`.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rald_fast.errors import TaxonomyError

SIGMA = 500  # xi value for unreachable pairs (eq. 9); the bias table has SIGMA + 1 entries

# valence -> coarse -> fine, in the order of the paper's Table 1
FG_EMOTIONS = {
    "unpleasant": {
        "fear": ["anxiety", "worry", "panic", "terror", "nervous"],
        "sadness": ["depression", "embarrass", "gloom", "guilt", "remorse", "sorrow", "suffering"],
        "anger": ["anger", "contempt", "disgust", "frustrate", "hate", "irritate", "loathing",
                  "torment", "wrath"],
    },
    "pleasant": {
        "surprise": ["amaze", "astonish", "surprise"],
        "happiness": ["cheerful", "enthrall", "optimism", "pleasure", "pride", "relief"],
        "love": ["thrill", "affection", "lust"],
    },
}
# RAF-DB label order (list_patition_label.txt uses 1-7 in this order)
BASIC7 = ["surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral"]
# AffectNet expression codes 0-7
AFFECTNET8 = ["neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger", "contempt"]


@dataclass(frozen=True)
class Taxonomy:
    """Fine labels, their optional coarse parents and valence, and the graph G built from them.

    Node order (used by HLRR's label tokens and the xi table): the C_f fine labels first, in class-index
    order, then the coarse labels. A flat taxonomy (RALD-L) has no coarse nodes.
    """

    name: str
    fine: tuple[str, ...]
    parent: tuple[str | None, ...]  # coarse label of each fine label, None when flat
    valence: dict[str, str] = field(default_factory=dict)  # coarse -> valence (metadata only)

    def __post_init__(self):
        if len(self.fine) == 0:
            raise TaxonomyError(f"taxonomy {self.name!r} has no fine labels")
        if len(set(self.fine)) != len(self.fine):
            dup = sorted({f for f in self.fine if self.fine.count(f) > 1})
            raise TaxonomyError(f"taxonomy {self.name!r} repeats fine labels: {dup}")
        if len(self.parent) != len(self.fine):
            raise TaxonomyError("parent must give one entry per fine label")
        if any(p is None for p in self.parent) and any(p is not None for p in self.parent):
            raise TaxonomyError(f"taxonomy {self.name!r}: either every fine label has a coarse "
                                "parent or none has")

    # --- sizes and names -------------------------------------------------------------------
    @property
    def is_flat(self) -> bool:
        return self.parent[0] is None

    @property
    def coarse(self) -> tuple[str, ...]:
        """Coarse labels in first-appearance order."""
        return tuple(dict.fromkeys(p for p in self.parent if p is not None))

    @property
    def num_fine(self) -> int:
        return len(self.fine)

    @property
    def num_nodes(self) -> int:
        return len(self.fine) + len(self.coarse)

    @property
    def node_names(self) -> list[str]:
        return list(self.fine) + list(self.coarse)

    @property
    def node_kinds(self) -> list[str]:
        return ["fine"] * len(self.fine) + ["coarse"] * len(self.coarse)

    def children(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {c: [] for c in self.coarse}
        for f, p in zip(self.fine, self.parent):
            if p is not None:
                out[p].append(f)
        return out

    def fine_index(self, label: str) -> int:
        try:
            return self.fine.index(label)
        except ValueError:
            raise TaxonomyError(f"unknown label {label!r}: taxonomy {self.name!r} has "
                                f"{', '.join(self.fine)}") from None

    def coarse_of_fine(self) -> np.ndarray:
        """(C_f,) index of each fine label's coarse group; identity for a flat taxonomy."""
        if self.is_flat:
            return np.arange(self.num_fine)
        coarse = self.coarse
        return np.array([coarse.index(p) for p in self.parent])

    # --- graph G and equation (9) ------------------------------------------------------------
    def adjacency(self) -> np.ndarray:
        """(C, C) 0/1 adjacency of G: coarse <-> each of its fine labels."""
        n, nf = self.num_nodes, self.num_fine
        adj = np.zeros((n, n), dtype=np.int64)
        if not self.is_flat:
            coarse = self.coarse
            for i, p in enumerate(self.parent):
                j = nf + coarse.index(p)
                adj[i, j] = adj[j, i] = 1
        return adj

    def xi(self, sigma: int = SIGMA, reading: str = "spd") -> np.ndarray:
        """Equation (9): (C, C) int64; 0 on the diagonal, sigma where v_j is not reachable.

        reading "spd" (Graphormer's, the default): the shortest-path distance for every reachable
        pair, so fine siblings get 2 (through their parent). "literal": eq. (9) read word for word,
        SPD only for pairs joined by an edge (coarse-fine: 1) and sigma for every other pair,
        siblings included.
        """
        adj = self.adjacency()
        n = len(adj)
        if reading == "literal":
            out = np.where(adj > 0, 1, sigma).astype(np.int64)
            np.fill_diagonal(out, 0)
            return out
        if reading != "spd":
            raise ValueError(f"xi reading must be 'spd' or 'literal', got {reading!r}")
        out = np.full((n, n), sigma, dtype=np.int64)
        for s in range(n):  # breadth-first search: G is unweighted and tiny
            out[s, s] = 0
            queue = deque([s])
            while queue:
                u = queue.popleft()
                for v in np.flatnonzero(adj[u]):
                    if out[s, v] == sigma and v != s:
                        out[s, v] = out[s, u] + 1
                        queue.append(v)
        if (out[out != sigma] >= sigma).any():
            raise TaxonomyError(f"a path in taxonomy {self.name!r} is as long as sigma={sigma}")
        return out

    # --- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"name": self.name, "fine": list(self.fine), "parent": list(self.parent),
                "valence": dict(self.valence)}

    @classmethod
    def from_dict(cls, d: dict) -> Taxonomy:
        return cls(d["name"], tuple(d["fine"]), tuple(d["parent"]), dict(d.get("valence", {})))


def fg_emotions() -> Taxonomy:
    fine, parent, valence = [], [], {}
    for val, groups in FG_EMOTIONS.items():
        for coarse, fines in groups.items():
            valence[coarse] = val
            fine += fines
            parent += [coarse] * len(fines)
    return Taxonomy("fg-emotions", tuple(fine), tuple(parent), valence)


def flat(name: str, labels: list[str]) -> Taxonomy:
    return Taxonomy(name, tuple(labels), (None,) * len(labels))


BUILTIN = {
    "fg-emotions": fg_emotions,
    "basic7": lambda: flat("basic7", BASIC7),
    "affectnet8": lambda: flat("affectnet8", AFFECTNET8),
}


def load_taxonomy(spec: str) -> Taxonomy:
    """A built-in name (fg-emotions, basic7, affectnet8) or a JSON/YAML file.

    File forms (YAML shown; JSON is the same structure):
      hierarchical:  {coarse_a: [fine1, fine2], coarse_b: [fine3]}
      with valence:  {pleasant: {coarse_a: [fine1]}, unpleasant: {...}}
      flat:          [fine1, fine2, fine3]        (RALD-L: no hierarchy bias)
    Optionally wrapped as {name: ..., labels: <one of the above>}.
    """
    if spec in BUILTIN:
        return BUILTIN[spec]()
    path = Path(spec)
    if not path.is_file():
        raise TaxonomyError(f"--taxonomy {spec!r}: not a built-in taxonomy ({', '.join(BUILTIN)}) "
                            "and no such file")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # yaml and json raise different types; both are "unparseable"
        raise TaxonomyError(f"{path}: cannot parse taxonomy file: {e}") from None
    name = path.stem
    if isinstance(data, dict) and "labels" in data:
        name, data = str(data.get("name", name)), data["labels"]
    return _taxonomy_from_data(name, data, path)


def _taxonomy_from_data(name: str, data, path: Path) -> Taxonomy:
    if isinstance(data, list):
        if not all(isinstance(x, str) for x in data):
            raise TaxonomyError(f"{path}: a flat taxonomy is a list of label names")
        return flat(name, data)
    if not isinstance(data, dict) or not data:
        raise TaxonomyError(f"{path}: expected a list of labels or a mapping coarse -> [fine...]")
    nested = all(isinstance(v, dict) for v in data.values())
    groups = {}
    valence = {}
    for key, value in data.items():
        for coarse, fines in (value.items() if nested else [(key, value)]):
            if not isinstance(fines, list) or not fines or not all(isinstance(f, str) for f in fines):
                raise TaxonomyError(f"{path}: coarse label {coarse!r} must map to a non-empty list "
                                    "of fine label names")
            if coarse in groups:
                raise TaxonomyError(f"{path}: coarse label {coarse!r} appears twice")
            groups[coarse] = fines
            if nested:
                valence[coarse] = key
    fine = [f for fs in groups.values() for f in fs]
    parent = [c for c, fs in groups.items() for _ in fs]
    return Taxonomy(name, tuple(fine), tuple(parent), valence)
