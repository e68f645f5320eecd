"""--resize-in model end to end: the workers only decode, the compiled model resizes. Its vectors are close
to (not equal to) the host's parity mode's, a store of it embeds new images exactly like its rows, and it
says so in its fingerprint."""
import glob

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.job.launch import run
from pipeline.store.feature_store import FeatureStore

SIZE = 64
# Both modes decode the same pixels (same JPEG draft) and apply the same filter to the same box; the host
# rounds to uint8 after each of Pillow's two passes, the model does not (up to one level per pixel), and an
# image past the model's canvas is first reduced by a box filter on the host. A random MobileNetV3Small at
# 64 px turned that into 3.5e-3 to 6.1e-3 of relative L2 error, and 9.6e-3 for the reduced image (measured):
# not bit parity, hence the tolerance, with room for other CPUs' float arithmetic.
TOLERANCE = 3e-2


def smooth_photo(width, height, seed):
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(seed)
    channels = [127 + 100 * np.sin(x / rng.uniform(5, 30) + c) * np.cos(y / rng.uniform(5, 30) - c)
                for c in range(3)]
    return Image.fromarray(np.clip(np.stack(channels, -1), 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """JPEGs of several sizes and aspects (one drafted to 1/2, one past the canvas, one below the target) and a PNG."""
    root = tmp_path_factory.mktemp("photos")
    for i, (width, height) in enumerate([(200, 150), (97, 61), (300, 80), (40, 50)]):
        smooth_photo(width, height, i).save(root / f"p{i}.jpg", quality=90)
    smooth_photo(120, 90, 9).save(root / "p9.png")
    return root


def features(out):
    table = pq.read_table(glob.glob(f"{out}/features/*.parquet"))
    return dict(zip(table.column("key").to_pylist(), np.array(table.column("embedding").to_pylist())))


def test_vectors_resized_in_the_model_are_close_to_the_hosts_and_embed_like_their_rows(photos, tmp_path):
    common = ["--input", str(photos), "--model", "MobileNetV3Small", "--weights", "none", "--image-size",
              str(SIZE), "--batch-size", "4", "--no-progress", "--direct_running_mode=in_memory"]
    run([*common, "--output", str(tmp_path / "host")])
    manifest = run([*common, "--output", str(tmp_path / "model"), "--resize-in", "model"])
    assert manifest["fingerprint"]["resize_in"] == "model"
    host, model = features(tmp_path / "host"), features(tmp_path / "model")
    assert sorted(model) == sorted(host) == ["p0.jpg", "p1.jpg", "p2.jpg", "p3.jpg", "p9.png"]
    for key in host:
        error = np.linalg.norm(model[key] - host[key]) / np.linalg.norm(host[key])
        assert error <= TOLERANCE, f"{key}: relative L2 error {error:.2e}"

    store = FeatureStore.open(str(tmp_path / "model"))
    keys = ["p2.jpg", "p9.png"]
    embedded = store.embed([(photos / key).read_bytes() for key in keys])
    np.testing.assert_allclose(embedded, np.stack([model[key] for key in keys]), rtol=1e-4, atol=1e-5)
