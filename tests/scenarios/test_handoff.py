"""The README's handoff recipes (faiss, DuckDB, LanceDB), run as written, find the store's exact neighbours."""
import re
from pathlib import Path

import numpy as np
import pytest

from pipeline.store.indexing import build_index
from pipeline.store.feature_store import FeatureStore
from tests.helpers.stores import clustered, generated_store

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def recipe(name):
    """The README's python block that starts with `# handoff: NAME`."""
    blocks = re.findall(r"```python\n# handoff: (\w+)\n(.*?)```", README, re.S)
    found = [code for marker, code in blocks if marker == name]
    assert len(found) == 1, f"README has {len(found)} recipes marked '# handoff: {name}'"
    return found[0]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A folder holding `out`: a 2,000-row store of three units with an IVF index tuned to recall 1.0 (so
    the faiss recipe's top 10 is the exact one, and the comparison below is exact)."""
    root = tmp_path_factory.mktemp("handoff")
    store = generated_store(root / "out", {"embedding": clustered(2000)})
    build_index(store, factory="IVF16,Flat", recall_target=1.0)
    return root


@pytest.mark.parametrize("name", ["faiss", "duckdb", "lancedb"])
def test_recipe_finds_the_exact_top_10(name, folder, monkeypatch):
    monkeypatch.chdir(folder)  # the recipes name the store `out`
    namespace = {}
    exec(compile(recipe(name), f"README.md[{name}]", "exec"), namespace)
    store = FeatureStore.open(str(folder / "out"))
    expected = store.search(store.embeddings()[0], k=10, exact=True)
    top = namespace["top"]
    assert [key for key, _ in top] == expected.keys[0]
    assert top[0][0] == store.keys[0]
    np.testing.assert_allclose([score for _, score in top], expected.scores[0], rtol=1e-4, atol=1e-5)
