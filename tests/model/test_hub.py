"""keras-hub models (pipeline.model.hub): every family's vectors against keras-hub's own pipeline
(`ImageConverter.from_preset` then the backbone), the text tower against keras-hub's preprocessor and
`get_text_embeddings`, the preset's fingerprint and its staging, and the fetch that fails in one sentence.

The presets are tiny ones written by keras-hub's `save_to_preset` (tests/helpers/hub_presets.py), read
back through the real `from_preset`."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pipeline.model import hub
from pipeline.model.runtime import build_feature_model
from pipeline.model.weights_cache import WeightsMismatch
from tests.helpers.hub_presets import BUILDERS, SENTENCES, hub_spec, published


def relative_l2(ours, reference):
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    return np.linalg.norm(ours - reference) / np.linalg.norm(reference)


def images(size, count=3, seed=1):
    return np.random.RandomState(seed).randint(0, 256, (count, *size, 3)).astype(np.uint8)


def reference_sequences(folder, pixels):
    """keras-hub's own pipeline: the preset's converter, then the backbone: (own embedding, final tokens)."""
    import keras_hub

    converter = keras_hub.layers.ImageConverter.from_preset(folder)
    backbone = keras_hub.models.Backbone.from_preset(folder)
    x = converter(pixels)
    if hasattr(backbone, "get_vision_embeddings"):
        own = backbone.get_vision_embeddings(x)
        encoder = backbone.vision_encoder
        final = encoder.output if type(backbone).__name__ == "CLIPBackbone" else encoder.post_layer_norm.output
        import keras
        tokens = keras.Model(encoder.input, final)({"images": x})
    else:
        tokens = backbone(x)
        own = tokens[:, 0, :]
    return np.asarray(own), np.asarray(tokens)


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_every_family_equals_keras_hubs_own_converter_and_backbone(family, hub_presets, tmp_path):
    folder = hub_presets[family]
    info = hub.describe_preset(folder, folder)
    assert info.family.name == family
    size = info.image_size
    pixels = images(size)
    spec = hub_spec(folder, str(tmp_path), size, poolings=("model", "avg", "max", "gem"))
    ours = build_feature_model(spec, batch_size=2)(pixels)  # 3 images in batches of 2: padding on the way
    own, tokens = reference_sequences(folder, pixels)
    assert relative_l2(ours["final/model"], own) < 1e-5
    # Patch tokens: after the class token and any registers (DINOv2 here has 4); SigLIP has no class token.
    prefix = {"clip": 1, "siglip": 0, "dinov2": 5, "dinov3": 5, "vit": 1}[family]
    patches = tokens[:, prefix:, :]
    assert relative_l2(ours["final/avg"], patches.mean(axis=1)) < 1e-5
    assert relative_l2(ours["final/max"], patches.max(axis=1)) < 1e-5
    gem = np.mean(np.maximum(patches, 1e-6) ** 3, axis=1) ** (1 / 3)
    assert relative_l2(ours["final/gem"], gem) < 1e-5
    assert hub.output_dims(info, None, ("model", "avg")) == {"final/model": own.shape[1], "final/avg": tokens.shape[2]}


def test_an_intermediate_block_is_that_blocks_output(hub_presets, tmp_path):
    import keras_hub

    folder = hub_presets["dinov2"]
    pixels = images((56, 56))
    spec = hub_spec(folder, str(tmp_path), (56, 56), layers=["block1"], poolings=("model", "avg"))
    ours = build_feature_model(spec, batch_size=3)(pixels)
    backbone = keras_hub.models.Backbone.from_preset(folder)
    converter = keras_hub.layers.ImageConverter.from_preset(folder)
    import keras
    block = np.asarray(keras.Model(backbone.input, backbone.pyramid_outputs["stage1"])(converter(pixels)))
    assert relative_l2(ours["block1/model"], block[:, 0, :]) < 1e-5
    assert relative_l2(ours["block1/avg"], block[:, 5:, :].mean(axis=1)) < 1e-5
    # The final output is another vector: the block is not silently the last one.
    assert relative_l2(ours["block1/model"], reference_sequences(folder, pixels)[0]) > 1e-2


def test_l2_normalize_gives_unit_vectors_in_the_same_direction(hub_presets, tmp_path):
    folder = hub_presets["clip"]
    pixels = images((64, 64))
    plain = build_feature_model(hub_spec(folder, str(tmp_path / "a"), (64, 64)), 3)(pixels)["embedding"]
    unit = build_feature_model(hub_spec(folder, str(tmp_path / "b"), (64, 64), l2=True), 3)(pixels)["embedding"]
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(unit, plain / np.linalg.norm(plain, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_the_text_tower_equals_keras_hubs_preprocessor_and_text_embeddings(family, hub_presets):
    import keras_hub

    folder = hub_presets[family]
    preprocessor = getattr(keras_hub.models, hub.FAMILY_NAMES[family].text_preprocessor).from_preset(folder)
    preprocessor.image_converter = None
    backbone = keras_hub.models.Backbone.from_preset(folder)
    reference = np.asarray(backbone.get_text_embeddings(
        preprocessor({"images": None, "prompts": SENTENCES[:3]})["token_ids"]))
    ours = hub.TextTower(folder, hub.FAMILY_NAMES[family]).embed(SENTENCES[:3])
    assert ours.shape == reference.shape and relative_l2(ours, reference) < 1e-5
    assert not np.allclose(ours[0], ours[1])  # different sentences, different vectors


def test_an_image_only_family_has_no_text_tower(hub_presets):
    with pytest.raises(ValueError, match="no text tower"):
        hub.TextTower(hub_presets["dinov2"], hub.FAMILY_NAMES["dinov2"])


def test_the_preset_digest_names_its_bytes(hub_presets, tmp_path):
    import shutil

    copy = shutil.copytree(hub_presets["vit"], tmp_path / "vit")
    before = hub.PresetFiles.of_folder(str(copy))
    assert set(before.sha256) >= {"config.json", "model.weights.h5", "image_converter.json"}
    assert hub.PresetFiles.of_folder(hub_presets["vit"]).digest == before.digest  # same bytes, another folder
    config = json.loads((copy / "config.json").read_text())
    config["config"]["dropout_rate"] = 0.5
    (copy / "config.json").write_text(json.dumps(config))
    assert hub.PresetFiles.of_folder(str(copy)).digest != before.digest


def test_a_worker_stages_the_stores_copy_and_refuses_a_tampered_one(hub_presets, tmp_path, monkeypatch):
    monkeypatch.setenv("FEATURIZE_CACHE", str(tmp_path / "cache"))
    location, digest = published(hub_presets["vit"], str(tmp_path / "store"))
    staged = hub.stage_preset(location, digest)
    assert staged.startswith(str(tmp_path / "cache"))
    staged_files = hub.PresetFiles.of_folder(staged).sha256
    staged_files.pop(hub.PRESET_FILES)
    assert staged_files == hub.PresetFiles.of_folder(hub_presets["vit"]).sha256  # the preset's very bytes
    with pytest.raises(WeightsMismatch):
        hub.stage_preset(location, "0" * 64)  # a copy that is not the run's preset
    monkeypatch.setenv("FEATURIZE_CACHE", str(tmp_path / "cold"))
    with open(os.path.join(location, "model.weights.h5"), "ab") as handle:
        handle.write(b"tampered")
    with pytest.raises(WeightsMismatch):
        hub.stage_preset(location, digest)


def test_a_folder_without_config_and_an_unknown_name_are_one_sentence(tmp_path):
    with pytest.raises(hub.PresetUnavailable, match="has no config.json"):
        hub.resolve_preset(str(tmp_path))
    with pytest.raises(hub.PresetUnavailable, match=r"neither a keras-hub preset name \(did you mean .*clip_vit"):
        hub.resolve_preset("clip_vit_base")


def test_a_builtin_preset_without_network_or_cache_fails_in_one_sentence(tmp_path):
    """No network here: keras-hub's download fails, and so does the run, in one sentence (not a retry loop)."""
    script = ("from pipeline.model import hub\n"
              "try:\n    hub.resolve_preset('dinov2_small')\n"
              "except hub.PresetUnavailable as exc:\n    print('REFUSED', exc)\n")
    env = {**os.environ, "KAGGLEHUB_CACHE": str(tmp_path / "kagglehub"), "HF_HOME": str(tmp_path / "hf")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert "REFUSED preset 'dinov2_small' cannot be fetched" in done.stdout, done.stderr[-2000:]
    assert "without network" in done.stdout


def test_jax_gives_tensorflows_vectors(hub_presets, tmp_path):
    """The same preset on the JAX backend (a process of its own: a process has one Keras backend)."""
    folder = hub_presets["dinov2"]
    pixels = images((56, 56))
    np.save(tmp_path / "pixels.npy", pixels)
    script = f"""
import numpy as np
from pipeline.model.runtime import build_feature_model
from pipeline.model.spec import ModelSpec
from tests.helpers.hub_presets import hub_spec
spec = hub_spec({folder!r}, {str(tmp_path / 'jax-store')!r}, (56, 56), poolings=("model", "avg"))
outputs = build_feature_model(spec, batch_size=3)(np.load({str(tmp_path / 'pixels.npy')!r}))
np.save({str(tmp_path / 'jax.npy')!r}, np.stack([outputs["final/model"], outputs["final/avg"]]))
"""
    env = {**os.environ, "KERAS_BACKEND": "jax", "FEATURIZE_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert done.returncode == 0, done.stderr[-3000:]
    jax = np.load(tmp_path / "jax.npy")
    tf = build_feature_model(hub_spec(folder, str(tmp_path / "tf-store"), (56, 56), poolings=("model", "avg")), 3)(pixels)
    assert relative_l2(jax[0], tf["final/model"]) < 1e-5 and relative_l2(jax[1], tf["final/avg"]) < 1e-5


def test_a_preset_on_a_beam_filesystem_is_copied_once_into_the_cache(hub_presets, tmp_path, monkeypatch):
    """hub:scheme://folder (gs://, s3://): read through Beam's filesystems (slow:// here, an object store's
    stand-in on local disk), copied once into featurize's cache, the same bytes."""
    from tests.helpers import slow_fs

    monkeypatch.setenv("FEATURIZE_CACHE", str(tmp_path / "cache"))
    uri = slow_fs.slow_path(hub_presets["dinov2"])
    with slow_fs.latency(0.0):
        folder = hub.resolve_preset(uri)
        calls = slow_fs.stats()["calls"]
        assert hub.resolve_preset(uri) == folder and slow_fs.stats()["calls"] == calls  # the second: the cache
    assert folder.startswith(str(tmp_path / "cache"))
    assert hub.PresetFiles.of_folder(folder).sha256 == hub.PresetFiles.of_folder(hub_presets["dinov2"]).sha256


def test_dino_at_another_size_equals_keras_hub_built_at_that_size(hub_presets, tmp_path):
    """DINOv2 interpolates its position embeddings: --image-size 84 on a 56 px preset."""
    import keras_hub

    folder = hub_presets["dinov2"]
    pixels = images((84, 84))
    ours = build_feature_model(hub_spec(folder, str(tmp_path), (84, 84)), batch_size=3)(pixels)["embedding"]
    converter = keras_hub.layers.ImageConverter.from_preset(folder)
    converter.image_size = (84, 84)  # the converter's own arithmetic, at the run's size
    backbone = keras_hub.models.Backbone.from_preset(folder, image_shape=(84, 84, 3))
    reference = np.asarray(backbone(converter(pixels)))[:, 0, :]
    assert relative_l2(ours, reference) < 1e-5


def test_a_hub_model_resizes_inside_itself_like_the_host(hub_presets, tmp_path):
    """--resize-in model with a keras-hub preset: the converter's arithmetic after the in-model resize; images at
    twice the preset's size resampled in the model give the host's vectors up to Pillow's uint8 rounding."""
    import dataclasses
    import io

    from PIL import Image

    from pipeline.images import DecodeSpec, decode_for_model, stack_for_model

    folder = hub_presets["dinov2"]
    info = hub.describe_preset(folder, folder)
    height, width = info.image_size
    y, x = np.mgrid[0:2 * height, 0:2 * width].astype(np.float32)
    encoded = []
    for i in range(3):
        smooth = np.stack([127 + 100 * np.sin(x / (7 + i) + c) * np.cos(y / 9 - c) for c in range(3)], -1)
        buffer = io.BytesIO()
        Image.fromarray(smooth.astype(np.uint8)).save(buffer, "PNG")
        encoded.append(buffer.getvalue())
    host_spec = hub_spec(folder, str(tmp_path), (height, width))
    vectors = {}
    for resize_in, spec in (("host", host_spec), ("model", dataclasses.replace(host_spec, resample="bilinear"))):
        decode = DecodeSpec(height, width, resize_in=resize_in)
        batch = stack_for_model([decode_for_model(data, decode)[0] for data in encoded])
        vectors[resize_in] = build_feature_model(spec, batch_size=2)(*batch)["embedding"]
    # measured 9.5e-3: a random tiny transformer magnifies the one-level differences; bit parity is host's
    assert relative_l2(vectors["model"], vectors["host"]) < 3e-2
