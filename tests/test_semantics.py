"""Label semantic encoder F_s (paper eq. 2): bundled vectors, reader formats, the coarse-mean rule."""

from __future__ import annotations

import numpy as np
import pytest

from rald_fast.hierarchy import BUILTIN, FG_EMOTIONS
from rald_fast.semantics import (
    BUNDLED,
    BUNDLED_VECTORS,
    MissingLabelVectorError,
    label_vectors,
    load_keyed_vectors,
)

FG = {coarse: fine for groups in FG_EMOTIONS.values() for coarse, fine in groups.items()}  # paper Table 1
FINE = [f for fs in FG.values() for f in fs]
COARSE = list(FG)
BUILT_IN = set(FINE) | set(COARSE) | {"pleasant", "unpleasant", "neutral", "contempt", "disgust"}


@pytest.fixture(scope="module", params=sorted(BUNDLED))
def kv(request):
    return load_keyed_vectors(request.param)


def _unit(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_bundled_file_has_every_built_in_label(kv):
    assert BUNDLED_VECTORS.is_file() and all(p.is_file() for p in BUNDLED.values())
    assert kv.vector_size in (50, 300)
    assert BUILT_IN <= set(kv.index_to_key)
    assert len(kv.index_to_key) == len(set(kv.index_to_key))


def test_bundled_file_covers_the_hierarchy_module(kv):
    from rald_fast import hierarchy

    words = set(hierarchy.BASIC7) | set(hierarchy.AFFECTNET8)
    for valence, groups in hierarchy.FG_EMOTIONS.items():
        words |= {valence, *groups, *(f for fs in groups.values() for f in fs)}
    assert words <= set(kv.index_to_key)


def test_fine_siblings_more_similar_than_unrelated(kv):
    s = label_vectors(FINE, ["fine"] * len(FINE), path=kv)
    assert s.shape == (33, kv.vector_size) and s.dtype == np.float32
    sim = _unit(s.astype(np.float64)) @ _unit(s.astype(np.float64)).T
    parent = np.array([c for c, fs in FG.items() for _ in fs])
    same = parent[:, None] == parent[None, :]
    off = ~np.eye(len(FINE), dtype=bool)
    assert sim[same & off].mean() > sim[~same].mean()


def test_every_coarse_label_is_the_mean_of_its_children(kv):
    """Section 4.2: EVERY coarse label averages its fine labels' vectors, not only anger/surprise."""
    names, kinds = FINE + COARSE, ["fine"] * 33 + ["coarse"] * 6
    s = label_vectors(names, kinds, children=FG, path=kv)
    assert s.shape == (39, kv.vector_size)
    for i, coarse in enumerate(COARSE):
        np.testing.assert_allclose(s[33 + i], np.mean([kv[w] for w in FG[coarse]], axis=0), rtol=1e-5,
                                   atol=1e-6, err_msg=coarse)
        assert not np.allclose(s[33 + i], kv[coarse])  # never the coarse word's own vector
    np.testing.assert_array_equal(s[names.index("anger")], kv["anger"])  # the fine node is its word
    with pytest.raises(ValueError, match="children"):
        label_vectors(["anger", "fear"], ["fine", "coarse"], path=kv)


@pytest.mark.parametrize("taxonomy", sorted(BUILTIN))
def test_default_vectors_give_every_label_its_own_vector(taxonomy):
    """The default table distinguishes every node of every built-in taxonomy (the pruned spaCy
    table does not: hate = love, coarse fear = sadness before averaging)."""
    t = BUILTIN[taxonomy]()
    s = label_vectors(t.node_names, t.node_kinds, t.children())
    unique = {tuple(np.round(row, 6)) for row in s}
    assert len(unique) == t.num_nodes, f"{t.num_nodes - len(unique)} duplicate label vectors"


def test_default_table_puts_siblings_closer_than_unrelated_labels():
    s = label_vectors(FINE, ["fine"] * len(FINE)).astype(np.float64)
    sim = _unit(s) @ _unit(s).T
    parent = np.array([c for c, fs in FG.items() for _ in fs])
    same, off = parent[:, None] == parent[None, :], ~np.eye(len(FINE), dtype=bool)
    siblings, unrelated = sim[same & off].mean(), sim[~same].mean()
    assert siblings > unrelated + 0.03, (siblings, unrelated)  # measured 0.399 vs 0.343 (GloVe 50-d)


def test_onehot_needs_no_vectors_file():
    s = label_vectors(["schadenfreude", "awe", "mixed"], ["fine", "fine", "coarse"],
                      children={"mixed": ["schadenfreude", "awe"]}, path="onehot")
    np.testing.assert_array_equal(s, np.eye(3, dtype=np.float32))
    with pytest.raises(MissingLabelVectorError, match="--label-vectors onehot"):
        label_vectors(["schadenfreude"], ["fine"])


def test_default_path_is_bundled_and_deterministic():
    a = label_vectors(["neutral", "happiness"], ["fine", "fine"])
    b = label_vectors(["neutral", "happiness"], ["fine", "fine"], path=BUNDLED_VECTORS)
    np.testing.assert_array_equal(a, b)


def test_user_word2vec_text_and_multi_word_names(tmp_path):
    p = tmp_path / "mine.txt"
    p.write_text("3 4\nfearfully 1 0 0 0\nsurprised 0 1 0 0\nCalm 0 0 2 0\n")
    kv = load_keyed_vectors(p)
    assert kv.vector_size == 4
    for name in ["fearfully surprised", "fearfully_surprised", "Fearfully-Surprised"]:
        np.testing.assert_array_equal(label_vectors([name], ["fine"], path=p), [[0.5, 0.5, 0, 0]])
    # lower-case lookup first, then the original case
    np.testing.assert_array_equal(label_vectors(["Calm"], ["fine"], path=p), [[0, 0, 2, 0]])


def test_glove_text_without_header(tmp_path):
    p = tmp_path / "glove.6B.3d.txt"
    p.write_text("joy 1 2 3\nawe 4 5 6\n")
    kv = load_keyed_vectors(p)
    assert kv.index_to_key == ["joy", "awe"] and kv.vector_size == 3
    np.testing.assert_array_equal(label_vectors(["awe"], ["fine"], path=p), [[4, 5, 6]])


def test_binary_and_gensim_native_saves(tmp_path, kv):
    from gensim.models import KeyedVectors

    small = KeyedVectors(kv.vector_size)
    small.add_vectors(["anger", "relief"], np.stack([kv["anger"], kv["relief"]]))
    small.save_word2vec_format(str(tmp_path / "v.bin"), binary=True)
    small.save(str(tmp_path / "v.kv"))
    for name in ["v.bin", "v.kv"]:
        np.testing.assert_array_equal(
            label_vectors(["relief"], ["fine"], path=tmp_path / name), kv["relief"][None])


def test_missing_label_raises_naming_label_and_file(tmp_path):
    p = tmp_path / "tiny.txt"
    p.write_text("1 2\njoy 1 0\n")
    with pytest.raises(MissingLabelVectorError) as e:
        label_vectors(["joy", "schadenfreude"], ["fine", "fine"], path=p)
    assert isinstance(e.value, KeyError)
    assert "schadenfreude" in str(e.value) and str(p) in str(e.value)
    with pytest.raises(MissingLabelVectorError, match="xyzzy"):
        label_vectors(["xyzzy"], ["fine"])  # bundled file
    with pytest.raises(MissingLabelVectorError, match="'quietly' of label 'quietly happy'"):
        label_vectors(["quietly happy"], ["fine"], path=p)


def test_missing_file_raises_naming_path(tmp_path):
    p = tmp_path / "nowhere" / "vectors.txt"
    with pytest.raises(FileNotFoundError) as e:
        load_keyed_vectors(p)
    assert str(p) in str(e.value) and "--label-vectors" in str(e.value)
    with pytest.raises(FileNotFoundError):
        label_vectors(["anger"], ["fine"], path=p)


def test_bad_kinds_rejected(kv):
    with pytest.raises(ValueError):
        label_vectors(["anger"], ["medium"], path=kv)
    with pytest.raises(ValueError):
        label_vectors(["anger", "fear"], ["fine"], path=kv)
