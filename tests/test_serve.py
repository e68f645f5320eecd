"""`featurize serve`: the JSON API through a real HTTP client, the page in real headless Chromium.

The server is `python -m pipeline serve` in its own process on a free 127.0.0.1 port, over a store
of tar shards (so thumbnails are read from tar members), stopped by its PID at the end.
"""
import io
import os
import shutil
import subprocess
import tempfile

import httpx
import numpy as np
import pytest
from PIL import Image

from pipeline.store.indexing import build_index
from pipeline.inputs.reading import read_uri
from pipeline.store.feature_store import FeatureStore
from tests.helpers.runs import MODES, run_small
from tests.helpers.servers import featurize_serve

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# As root on a closed network Chromium needs these (no sandbox, nothing fetched from Google).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def store(tmp_path_factory, zoo_shards, small_weights):
    out = tmp_path_factory.mktemp("served")
    run_small(f"{zoo_shards}/shard-{{000000..000002}}.tar", out, small_weights, *MODES["in_process"])
    build_index(FeatureStore.open(str(out)))
    return FeatureStore.open(str(out))


@pytest.fixture(scope="module")
def server(store):
    with featurize_serve(store.root) as base:
        yield base


def test_search_by_key_returns_the_stores_exact_neighbours(server, store):
    key = store.keys[3]
    response = httpx.get(f"{server}/api/search", params={"key": key, "k": 5}, timeout=30)
    assert response.status_code == 200
    results = response.json()["results"]
    expected = store.search(store.get(key), k=5, exact=True)
    assert [r["key"] for r in results] == expected.keys[0]
    assert [r["rank"] for r in results] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose([r["score"] for r in results], expected.scores[0], rtol=1e-5, atol=1e-6)
    assert results[0]["key"] == key and results[0]["uri"] == store.uris[store.index_of(key)]
    assert "#" in results[0]["uri"]  # a tar member


def test_search_by_uploaded_image_embeds_it_with_the_stores_model(server, store):
    key = store.keys[5]
    image = read_uri(store.uris[5])
    response = httpx.post(f"{server}/api/search", params={"k": 3}, content=image, timeout=120)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 3 and results[0]["key"] == key
    assert results[0]["score"] == pytest.approx(1.0, abs=1e-4)  # the same image gives the same vector


def test_thumbnails_are_read_from_tar_members(server, store):
    response = httpx.get(f"{server}/api/thumbnail", params={"key": store.keys[0]}, timeout=30)
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    thumbnail = Image.open(io.BytesIO(response.content))
    original = Image.open(io.BytesIO(read_uri(store.uris[0])))
    assert thumbnail.format == "JPEG" and max(thumbnail.size) == 192
    assert thumbnail.size[0] / thumbnail.size[1] == pytest.approx(original.size[0] / original.size[1], rel=0.05)


@pytest.mark.parametrize("method, path, params, body, status, sentence", [
    ("GET", "/api/search", {"k": 3}, None, 400, "key is missing; give ?key= one of the store's keys"),
    ("GET", "/api/search", {"key": "nope", "k": 3}, None, 404, "key 'nope' is not in the store"),
    ("GET", "/api/search", {"key": "x", "k": 0}, None, 400, "k '0' is not a whole number from 1 to 1000"),
    ("GET", "/api/search", {"key": "x", "k": "ten"}, None, 400, "k 'ten' is not a whole number from 1 to 1000"),
    ("POST", "/api/search", {"k": 3}, b"", 400, "the request body is empty; POST an image's bytes"),
    ("POST", "/api/search", {"k": 3}, b"not an image at all", 422, "the request body is not an image featurize can decode"),
    ("GET", "/api/thumbnail", {"key": "nope"}, None, 404, "key 'nope' is not in the store"),
    ("GET", "/api/search", {"text": "a cat", "k": 3}, None, 400, "store "),  # a CNN store: no text tower
    ("GET", "/nothing-here", {}, None, 404, "GET /nothing-here: Not Found"),
    ("DELETE", "/api/search", {}, None, 405, "DELETE /api/search: Method Not Allowed"),
])
def test_bad_requests_get_a_4xx_and_one_json_sentence(server, method, path, params, body, status, sentence):
    response = httpx.request(method, server + path, params=params, content=body, timeout=60)
    assert response.status_code == status
    error = response.json()["error"]
    assert error.startswith(sentence) and "\n" not in error and "Traceback" not in response.text


def chromium(*args, timeout=90):
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=timeout)


def test_the_page_shows_the_neighbours_and_their_thumbnails_in_chromium(server, store):
    assert CHROMIUM, "this test needs Debian's chromium package (.ci/run installs it)"
    key = store.keys[2]
    expected = httpx.get(f"{server}/api/search", params={"key": key, "k": 4}, timeout=30).json()["results"]
    # The page fetches the results, then every thumbnail; virtual time waits for them before the dump.
    done = chromium("--virtual-time-budget=20000", "--dump-dom", f"{server}/?key={key}&k=4")
    dom = done.stdout
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"4 neighbours of {key}" in dom
    for result in expected:
        assert f'data-key="{result["key"]}"' in dom and f"#{result['rank']} {result['key']}" in dom
    assert dom.count('class="result"') == 4
    # Each thumbnail, query included, arrived and decoded (the page marks img.dataset.loaded on load).
    assert dom.count('data-loaded="true"') == 5 and 'data-loaded="false"' not in dom


def test_an_index_of_another_model_answers_409_in_one_sentence(tmp_path):
    """The index's fingerprint is not the store's (rebuilt by another model since): searching would name rows of
    another store, so the API refuses (409) and says how to fix it, while what needs no index (a thumbnail) still
    answers."""
    import json

    from pipeline.store.index import INFO_FILE, index_path
    from tests.helpers.stores import clustered, generated_store

    build_index(generated_store(tmp_path, {"embedding": clustered(300)}))
    path = os.path.join(index_path(str(tmp_path), "embedding"), INFO_FILE)
    info = json.loads(open(path).read())
    open(path, "w").write(json.dumps(dict(info, fingerprint={**info["fingerprint"], "backbone": "other"})))
    with featurize_serve(str(tmp_path)) as base:
        response = httpx.get(f"{base}/api/search", params={"key": "u2/img00299.jpg", "k": 3}, timeout=30)
        assert response.status_code == 409
        error = response.json()["error"]
        assert error.startswith("the index in ") and "was built with another model" in error
        assert f"rebuild it with `featurize index {tmp_path} --rebuild`" in error and "\n" not in error
        thumbnail = httpx.get(f"{base}/api/thumbnail", params={"key": "u2/img00299.jpg"}, timeout=30)
        assert thumbnail.status_code == 404
        assert thumbnail.json() == {"error": "the image of 'u2/img00299.jpg' is no longer at '/images/u2/img00299.jpg'"}


def test_a_grown_store_answers_new_keys_at_once_and_says_how_many_rows_the_index_missed(tmp_path):
    from tests.helpers.stores import clustered, exact_top, generated_store, grow_store

    generated_store(tmp_path, {"embedding": clustered(300)}, first_unit=1)
    build_index(FeatureStore.open(str(tmp_path)))
    grown = grow_store(tmp_path)
    with featurize_serve(str(tmp_path)) as base:
        response = httpx.get(f"{base}/api/search", params={"key": "u9/img00029.jpg", "k": 5}, timeout=30)
    assert response.status_code == 200, response.text
    answer = response.json()
    truth, scores = exact_top(grown, grown.get("u9/img00029.jpg")[None, :], 5)
    assert [r["key"] for r in answer["results"]] == [grown.keys[i] for i in truth[0]]
    np.testing.assert_allclose([r["score"] for r in answer["results"]], scores[0], rtol=1e-5, atol=1e-6)
    assert answer["tail_rows"] == 60 and answer["results"][0]["tail"] is True
    assert [r["tail"] for r in answer["results"]] == [r["key"].startswith(("u0/", "u9/")) for r in answer["results"]]


@pytest.fixture(scope="module")
def clip_server(clip_store):
    """`featurize serve` over a store of the tiny CLIP preset (a text tower)."""
    with featurize_serve(clip_store["out"]) as base:
        yield base, FeatureStore.open(clip_store["out"])


def test_search_by_text_returns_the_stores_text_neighbours(clip_server):
    server, store = clip_server
    response = httpx.get(f"{server}/api/search", params={"text": "a red circle", "k": 4}, timeout=120)
    assert response.status_code == 200, response.text
    expected = store.search(text="a red circle", k=4)
    results = response.json()["results"]
    assert [r["key"] for r in results] == expected.keys[0]
    np.testing.assert_allclose([r["score"] for r in results], expected.scores[0], rtol=1e-5, atol=1e-6)
    empty = httpx.get(f"{server}/api/search", params={"text": " ", "k": 4}, timeout=30)
    assert empty.status_code == 400 and empty.json()["error"].startswith("text is empty")


def test_the_page_searches_by_text_in_chromium(clip_server):
    assert CHROMIUM, "this test needs Debian's chromium package (.ci/run installs it)"
    server, store = clip_server
    expected = store.search(text="a red circle", k=3)
    done = chromium("--virtual-time-budget=20000", "--dump-dom", f"{server}/?text=a%20red%20circle&k=3")
    dom = done.stdout
    assert done.returncode == 0, done.stderr[-2000:]
    assert '3 neighbours of "a red circle"' in dom
    for rank, key in enumerate(expected.keys[0], 1):
        assert f'data-key="{key}"' in dom and f"#{rank} {key}" in dom
    assert dom.count('class="result"') == 3 and dom.count('data-loaded="true"') == 3
