"""Near-duplicate groups (pipeline.store.duplicates, `FeatureStore.duplicates`, `featurize duplicates`): equal to a
brute-force all-pairs comparison, exactly and through the index's range search, on stores with planted exact and
re-encoded copies; written as Parquet that `featurize inspect` summarises."""
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from pipeline.store.duplicates import components, exact_pairs
from pipeline.store.feature_store import FeatureStore
from pipeline.store.indexing import build_index
from pipeline.store.search import normalize
from tests.helpers.duplicates import brute_force_groups, planted_images
from tests.helpers.runs import featurize
from tests.helpers.stores import clustered, generated_store, grow_store


def _planted(rows, seed=0):
    """Clustered rows and near-copies of some of them: exact, slightly moved, and chains (a~b~c)."""
    rng = np.random.default_rng(seed)
    vectors = clustered(rows, seed=seed)
    picked = rng.choice(rows, 40, replace=False)
    copies = [vectors[picked[:10]], vectors[picked[10:30]] + 0.01 * rng.standard_normal((20, vectors.shape[1]))]
    chain = vectors[picked[30:40]] + 0.05 * rng.standard_normal((10, vectors.shape[1]))
    copies += [chain, chain + 0.05 * rng.standard_normal(chain.shape)]
    return np.concatenate([vectors, *copies]).astype(np.float32)


def _key_groups(table):
    groups = {}
    for key, group in zip(table["key"].to_pylist(), table["group"].to_pylist()):
        groups.setdefault(group, set()).add(key)
    return {frozenset(keys) for keys in groups.values()}


def _truth(store, threshold, metric="cosine"):
    keys = store.keys
    return {frozenset(keys[row] for row in group)
            for group in brute_force_groups(store.embeddings(), threshold, metric)}


@pytest.mark.parametrize("metric, threshold", [("cosine", 0.995), ("l2", 0.12)])
def test_exact_groups_equal_brute_force_on_planted_copies(tmp_path, metric, threshold):
    store = generated_store(tmp_path, {"embedding": _planted(700)}, units=4)
    found = store.duplicates(threshold, metric=metric)
    truth = _truth(store, threshold, metric)
    assert found.method == "exact" and len(truth) >= 30 and _key_groups(found.table) == truth
    # Numbered by each group's first row, rows in the store's order, the first row of each marked.
    rows = [store.index_of(key) for key in found.table["key"].to_pylist()]
    group, first = found.table["group"].to_numpy(), found.table["first"].to_numpy()
    assert np.all(np.diff(group) >= 0) and group[0] == 0 and found.groups == group[-1] + 1 == len(truth)
    starts = [rows[i] for i in np.flatnonzero(first)]
    assert starts == sorted(starts) and list(np.flatnonzero(first)) == [list(group).index(g) for g in range(found.groups)]
    assert found.table["size"].to_pylist() == [int(np.sum(group == g)) for g in group]
    assert found.table["uri"].to_pylist() == [store.uri_of(row) for row in rows]


def test_blocked_pairs_and_their_components_equal_brute_force_across_blocks():
    vectors = _planted(500, seed=3)
    truth = brute_force_groups(vectors, 0.99)
    labels = components(len(vectors), exact_pairs(normalize(vectors), 0.99, "cosine", block_rows=64))
    found = {}
    for row, label in enumerate(labels):
        found.setdefault(label, set()).add(row)
    assert {frozenset(group) for group in found.values() if len(group) > 1} == truth
    assert all(label == min(found[label]) for label in found)  # each component named by its smallest row


def test_the_index_range_search_finds_the_brute_force_groups(tmp_path):
    generated_store(tmp_path, {"embedding": _planted(3000, seed=5)}, first_unit=1)
    build_index(FeatureStore.open(str(tmp_path)), factory="IVF32,Flat")
    store = FeatureStore.open(str(tmp_path))
    found = store.duplicates(0.995)
    assert found.method == "index" and _key_groups(found.table) == _truth(store, 0.995)
    assert store.duplicates(0.995, exact=True).table.equals(found.table)
    l2 = store.duplicates(0.05, metric="l2")  # the index ranks by cosine: an L2 threshold is found exactly
    assert l2.method == "exact" and _key_groups(l2.table) == _truth(store, 0.05, "l2")
    grow_store(tmp_path)  # units the index does not cover: refused in one sentence, exact still answers
    grown = FeatureStore.open(str(tmp_path))
    with pytest.raises(ValueError, match=r"does not cover 60 rows of 2 units added since; run `featurize index .*` to "
                                         r"add them, or find the groups exactly \(exact=True, --exact\)"):
        grown.duplicates(0.995)
    assert _key_groups(grown.duplicates(0.995, exact=True).table) == _truth(grown, 0.995)


def test_featurize_duplicates_groups_re_encoded_copies_of_real_images(tmp_path, small_weights, capsys):
    planted = planted_images(tmp_path / "images")
    out = tmp_path / "out"
    featurize(tmp_path / "images", out, small_weights, "--pooling", "avg")
    assert main(["duplicates", str(out), "--threshold", "0.95"]) == 0
    said = capsys.readouterr().out
    assert said == (f"featurize: 3 groups of 6 keys (3 beyond each group's first) at cosine >= 0.95, compared exactly "
                    f"over 15 rows -> {out}/duplicates.parquet\n")
    table = pq.read_table(out / "duplicates.parquet")
    store = FeatureStore.open(str(out))
    assert _key_groups(table) == _truth(store, 0.95) == {frozenset(pair) for pair in planted.items()}
    assert table.column_names == ["key", "uri", "group", "size", "first"]
    # The first in the store's order (keys sorted: copy-* before img*) is the one to keep.
    assert sorted(table.filter(table["first"])["key"].to_pylist()) == sorted(planted)
    assert main(["inspect", str(out)]) == 0
    assert ("duplicates 3 groups of 6 keys (3 beyond each group's first) at cosine >= 0.95, exact, over 15 rows "
            "(duplicates.parquet)") in capsys.readouterr().out
    elsewhere = tmp_path / "groups.parquet"
    assert main(["duplicates", str(out), "--threshold", "0.999", "--output", str(elsewhere)]) == 0
    assert _key_groups(pq.read_table(elsewhere)) == {frozenset({"copy-same-bytes.jpg", "img00.jpg"})}
    capsys.readouterr()
    assert main(["duplicates", str(out), "--threshold", "1.5"]) == 2
    assert capsys.readouterr().err == ("featurize: error: threshold 1.5 is not a cosine similarity; give a number from "
                                       "-1 to 1, e.g. 0.95\n")
