"""Label semantic encoder F_s of equation (2): frozen pre-trained word vectors, one row per label node.

Paper eq. (2): each label of the graph G gets a pre-trained word vector, S in R^{C x E}, with no gradient.
EVERY coarse label takes the mean of its fine labels' vectors (paper section 4.2: "将每个粗粒度标签所属
细粒度的特征进行平均"); fine labels take their own word's vector.

The vectors of every built-in label ship with the package (word2vec text format; source, licence and
measurements in ``resources/README.md``), so nothing is downloaded at run time. ``--label-vectors``
takes a bundled table by name or a file:
- ``glove50`` (the default): Stanford GloVe 6B, 50-d. Every label of every built-in taxonomy has its
  own vector (no two identical), and siblings are closer than unrelated labels.
- ``spacy300``: spaCy ``en_core_web_md``, 300-d like the paper's word2vec, but its table is pruned
  so 18 pairs of built-in label words share one identical vector (hate = love, ...).
- ``onehot``: no word vectors at all: one-hot label tokens (S = identity); HLRR's hierarchy bias
  still carries the structure. For a taxonomy whose words have no vector file.
- a PATH: word2vec text or binary (``.bin``), gensim's ``.kv`` / ``.model`` saves, or GloVe text
  without a header line.
Nothing here is random.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np

from rald_fast.errors import MissingLabelVectorError

RESOURCES = Path(__file__).resolve().parent / "resources"
BUNDLED: dict[str, Path] = {"glove50": RESOURCES / "label_vectors_glove50.txt",
                            "spacy300": RESOURCES / "label_vectors_spacy300.txt"}
DEFAULT_VECTORS = "glove50"
ONEHOT = "onehot"
BUNDLED_VECTORS: Path = BUNDLED[DEFAULT_VECTORS]
CHOICES_HELP = f"{', '.join(BUNDLED)} (bundled tables), {ONEHOT} (no vectors), or a word-vectors file"

_SPLIT = re.compile(r"[\s_\-]+")


def _has_word2vec_header(path: Path) -> bool:
    """True when the first line of a text vectors file is 'count dim' (word2vec), False for GloVe."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf8", errors="replace") as f:
        first = f.readline().split()
    return len(first) == 2 and all(t.isdigit() for t in first)


class BundledVectors:
    """A bundled table (word2vec text, a few dozen rows) read with numpy alone: the part of gensim's
    ``KeyedVectors`` interface (``key_to_index``, ``index_to_key``, ``vector_size``, ``kv[word]``). The bundled tables
    need no gensim, so RALD builds where gensim is not installed (the GPU machine's image)."""

    def __init__(self, path: Path):
        lines = path.read_text(encoding="utf8").splitlines()
        count, dim = (int(t) for t in lines[0].split())
        rows = [line.rsplit(" ", dim) for line in lines[1:] if line.strip()]
        if len(rows) != count or any(len(r) != dim + 1 for r in rows):
            raise ValueError(f"{path}: not a word2vec text table of {count} x {dim}")
        self.index_to_key = [r[0] for r in rows]
        self.key_to_index = {w: i for i, w in enumerate(self.index_to_key)}
        self.vectors = np.array([r[1:] for r in rows], dtype=np.float32)
        self.vector_size = dim

    def __getitem__(self, word: str) -> np.ndarray:
        return self.vectors[self.key_to_index[word]]


def load_keyed_vectors(path: str | Path | None = None):
    """Read word vectors: a bundled table's name (or None, the default) with numpy
    (`BundledVectors`), any other file into a gensim ``KeyedVectors`` (gensim imported only then).

    ``*.bin`` / ``*.bin.gz``: word2vec binary. ``*.kv`` / ``*.model``: ``KeyedVectors.load`` (a saved
    Word2Vec model gives its ``.wv``). Anything else is text: word2vec when the first line is
    'count dim', GloVe (no header) otherwise.
    """
    if path is None or str(path) in BUNDLED:
        return BundledVectors(BUNDLED[DEFAULT_VECTORS if path is None else str(path)])
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"label word-vectors file not found: {path}; pass --label-vectors with {CHOICES_HELP}")
    from gensim.models import KeyedVectors  # only for a user's own file: optional on slim images
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes[-1:] in ([".kv"], [".model"]):
        obj = KeyedVectors.load(str(path))
        return getattr(obj, "wv", obj)
    if ".bin" in suffixes[-2:]:
        return KeyedVectors.load_word2vec_format(str(path), binary=True)
    return KeyedVectors.load_word2vec_format(str(path), binary=False,
                                             no_header=not _has_word2vec_header(path))


def _source_name(kv, path) -> str:
    if path is None or str(path) in BUNDLED:
        return str(BUNDLED[DEFAULT_VECTORS if path is None else str(path)])
    return str(path) if isinstance(path, (str, Path)) else f"the given {type(kv).__name__}"


def _word_vector(kv, name: str, source: str) -> np.ndarray:
    """Vector of a label name: mean over its words (split on space/underscore/hyphen); each word is
    looked up lower-cased first, then as written."""
    words = [w for w in _SPLIT.split(name.strip()) if w]
    if not words:
        raise MissingLabelVectorError(f"label {name!r} is empty")
    vecs = []
    for w in words:
        for key in dict.fromkeys((w.lower(), w)):
            if key in kv.key_to_index:
                vecs.append(np.asarray(kv[key], dtype=np.float64))
                break
        else:
            what = f"label {name!r}" if len(words) == 1 else f"word {w!r} of label {name!r}"
            raise MissingLabelVectorError(
                f"{what} has no vector in {source}; pass a word-vectors file that has it "
                f"(--label-vectors PATH: word2vec text/.bin, GloVe text or gensim .kv), or "
                f"--label-vectors {ONEHOT} for one-hot label tokens that need no vectors")
    return np.mean(vecs, axis=0)


def label_vectors(names: list[str], kinds: list[str],
                  children: dict[str, list[str]] | None = None, path=None) -> np.ndarray:
    """S of equation (2): (len(names), E) float32, one row per label node of G.

    ``kinds[i]`` is "fine" or "coarse". A fine label is its word's vector (mean over words for
    multi-word names); every coarse label is the mean of its ``children``'s vectors (section 4.2).
    ``path``: a bundled table's name or a vectors file (see `load_keyed_vectors`), None for the
    default table, a loaded ``KeyedVectors``, or ``"onehot"`` (S = identity, E = len(names)).
    """
    if len(names) != len(kinds):
        raise ValueError(f"{len(names)} names but {len(kinds)} kinds")
    bad = sorted({k for k in kinds if k not in ("fine", "coarse")})
    if bad:
        raise ValueError(f"kinds must be 'fine' or 'coarse', got {bad}")
    children = children or {}
    orphans = [n for n, k in zip(names, kinds) if k == "coarse" and not children.get(n)]
    if orphans:
        raise ValueError(f"coarse label(s) {orphans}: a coarse label's vector is the mean of its fine "
                         f"labels' vectors, so pass children[{orphans[0]!r}]")
    if isinstance(path, str) and path == ONEHOT:
        return np.eye(len(names), dtype=np.float32)
    kv = path if hasattr(path, "key_to_index") else load_keyed_vectors(path)
    source = _source_name(kv, path)
    rows = [np.mean([_word_vector(kv, c, source) for c in children[name]], axis=0) if kind == "coarse"
            else _word_vector(kv, name, source) for name, kind in zip(names, kinds)]
    return np.stack(rows).astype(np.float32)
