"""Label semantic encoder F_s of equation (2): frozen pre-trained word vectors, one row per label node.

SPEC 2: each label of the graph G gets a 300-d pre-trained word vector, S in R^{C x 300}, with no
gradient. A coarse label whose name repeats one of its fine labels' names (FG-Emotions: anger,
surprise) takes the mean of its fine labels' vectors (paper section 4.2).

The vectors of every built-in label ship with the package in ``resources/label_vectors.txt``
(word2vec text format; source, licence and measurements in ``resources/README.md``), so nothing is
downloaded at run time. A user's own labels need their own file: word2vec text or binary (``.bin``),
gensim's native ``.kv`` / ``.model`` saves, or GloVe text without a header line. Nothing here is random.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np

BUNDLED_VECTORS: Path = Path(__file__).resolve().parent / "resources" / "label_vectors.txt"

_SPLIT = re.compile(r"[\s_\-]+")


class MissingLabelVectorError(KeyError):
    """A label (or one of its words) has no vector in the word-vector file."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else ""


def _has_word2vec_header(path: Path) -> bool:
    """True when the first line of a text vectors file is 'count dim' (word2vec), False for GloVe."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf8", errors="replace") as f:
        first = f.readline().split()
    return len(first) == 2 and all(t.isdigit() for t in first)


def load_keyed_vectors(path: str | Path | None = None):
    """Read a word-vectors file into a gensim ``KeyedVectors``; None reads the bundled file.

    ``*.bin`` / ``*.bin.gz``: word2vec binary. ``*.kv`` / ``*.model``: ``KeyedVectors.load`` (a saved
    Word2Vec model gives its ``.wv``). Anything else is text: word2vec when the first line is
    'count dim', GloVe (no header) otherwise.
    """
    from gensim.models import KeyedVectors

    path = BUNDLED_VECTORS if path is None else Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"label word-vectors file not found: {path}; pass an existing word2vec/GloVe/gensim "
            f"file with --label-vectors PATH (default: the bundled {BUNDLED_VECTORS})")
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes[-1:] in ([".kv"], [".model"]):
        obj = KeyedVectors.load(str(path))
        return getattr(obj, "wv", obj)
    if ".bin" in suffixes[-2:]:
        return KeyedVectors.load_word2vec_format(str(path), binary=True)
    return KeyedVectors.load_word2vec_format(str(path), binary=False,
                                             no_header=not _has_word2vec_header(path))


def _source_name(kv, path) -> str:
    if path is None:
        return str(BUNDLED_VECTORS)
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
                "(--label-vectors PATH: word2vec text/.bin, GloVe text or gensim .kv)")
    return np.mean(vecs, axis=0)


def label_vectors(names: list[str], kinds: list[str],
                  children: dict[str, list[str]] | None = None, path=None) -> np.ndarray:
    """S of equation (2): (len(names), dim) float32, one row per label node of G.

    ``kinds[i]`` is "fine" or "coarse". A coarse label whose name is also a fine label's name (one of
    ``names`` with kind "fine", or one of its own ``children``) is the mean of its children's
    vectors; any other label is its word's vector (mean over words for multi-word names).
    ``path``: a vectors file (see `load_keyed_vectors`), None for the bundled one, or a loaded
    ``KeyedVectors``.
    """
    if len(names) != len(kinds):
        raise ValueError(f"{len(names)} names but {len(kinds)} kinds")
    bad = sorted({k for k in kinds if k not in ("fine", "coarse")})
    if bad:
        raise ValueError(f"kinds must be 'fine' or 'coarse', got {bad}")
    kv = path if hasattr(path, "key_to_index") else load_keyed_vectors(path)
    source = _source_name(kv, path)
    fine_names = {n for n, k in zip(names, kinds) if k == "fine"}
    children = children or {}
    rows = []
    for name, kind in zip(names, kinds):
        kids = children.get(name, [])
        if kind == "coarse" and (name in fine_names or name in kids):
            if not kids:
                raise ValueError(f"coarse label {name!r} repeats a fine label's name, so its vector "
                                 f"is the mean of its fine labels': pass children[{name!r}]")
            rows.append(np.mean([_word_vector(kv, c, source) for c in kids], axis=0))
        else:
            rows.append(_word_vector(kv, name, source))
    return np.stack(rows).astype(np.float32)
