import json

import numpy as np
import pytest
from scipy.sparse.csgraph import shortest_path

from rald_fast.hierarchy import SIGMA, TaxonomyError, fg_emotions, load_taxonomy


def scipy_xi(adj: np.ndarray, sigma: int) -> np.ndarray:
    d = shortest_path(adj, unweighted=True, directed=False)
    return np.where(np.isinf(d), sigma, d).astype(np.int64)


def test_fg_emotions_sizes():
    t = fg_emotions()
    assert (t.num_fine, len(t.coarse), t.num_nodes) == (33, 6, 39)
    assert t.coarse == ("fear", "sadness", "anger", "surprise", "happiness", "love")
    assert t.valence["love"] == "pleasant" and t.valence["fear"] == "unpleasant"
    assert t.children()["surprise"] == ["amaze", "astonish", "surprise"]


@pytest.mark.parametrize("spec", ["fg-emotions", "basic7", "affectnet8"])
def test_xi_matches_scipy(spec):
    t = load_taxonomy(spec)
    xi = t.xi()
    assert (np.diag(xi) == 0).all()
    np.testing.assert_array_equal(xi, scipy_xi(t.adjacency(), SIGMA))


def test_xi_values_fg_emotions():
    t = fg_emotions()
    xi, nodes = t.xi(), t.node_names
    fine, coarse = t.fine.index, lambda c: t.num_fine + t.coarse.index(c)
    assert xi[fine("panic"), coarse("fear")] == 1                 # parent
    assert xi[fine("panic"), fine("worry")] == 2                  # siblings
    assert xi[fine("panic"), fine("lust")] == SIGMA               # different coarse groups
    assert xi[coarse("fear"), coarse("love")] == SIGMA            # valence is not a node
    assert nodes[fine("anger")] == nodes[coarse("anger")] == "anger"  # distinct nodes
    assert xi[fine("anger"), coarse("anger")] == 1


def test_user_taxonomy_yaml_json_flat(tmp_path):
    y = tmp_path / "mine.yaml"
    y.write_text("pleasant:\n  joy: [glee, bliss]\nunpleasant:\n  gloom: [sulk]\n")
    t = load_taxonomy(str(y))
    assert t.fine == ("glee", "bliss", "sulk") and t.valence == {"joy": "pleasant",
                                                                 "gloom": "unpleasant"}
    np.testing.assert_array_equal(t.xi(), scipy_xi(t.adjacency(), SIGMA))
    j = tmp_path / "flat.json"
    j.write_text(json.dumps({"name": "mine", "labels": ["a", "b", "c"]}))
    f = load_taxonomy(str(j))
    assert f.is_flat and f.name == "mine" and f.num_nodes == 3
    assert (f.xi() == np.where(np.eye(3, dtype=bool), 0, SIGMA)).all()


@pytest.mark.parametrize("text, match", [
    ("{bad json", "cannot parse"),
    ('{"joy": []}', "non-empty list"),
    ('["a", "a"]', "repeats"),
])
def test_bad_taxonomy_files(tmp_path, text, match):
    p = tmp_path / "t.json"
    p.write_text(text)
    with pytest.raises(TaxonomyError, match=match):
        load_taxonomy(str(p))


def test_unknown_taxonomy_name():
    with pytest.raises(TaxonomyError, match="not a built-in taxonomy"):
        load_taxonomy("no-such-taxonomy")


def test_xi_literal_reading():
    """Eq. (9) word for word: SPD only along an edge (parent 1), sigma for every other pair."""
    t = load_taxonomy("fg-emotions")
    lit, spd = t.xi(SIGMA, "literal"), t.xi(SIGMA)
    assert (np.diag(lit) == 0).all()
    np.testing.assert_array_equal(lit == 1, t.adjacency() == 1)
    assert ((lit == 0) | (lit == 1) | (lit == SIGMA)).all()
    assert ((spd == 2) <= (lit == SIGMA)).all() and (spd == 2).any()  # siblings: 2 -> sigma
    with pytest.raises(ValueError, match="literal"):
        t.xi(SIGMA, "graphormer")
