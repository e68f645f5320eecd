"""keras-hub's retrieval models (`--model hub:PRESET`): CLIP, SigLIP and SigLIP2, DINOv2 (with registers
too), DINOv3 and ViT, one `Family` row each saying how its image embedding is taken.

A preset is what keras-hub's `from_preset` reads: a built-in name (`clip_vit_base_patch16`), a local
folder (what `save_to_preset` writes), or a `kaggle://`, `hf://` or filesystem URI. The launcher
resolves it once to a local folder (`resolve_preset`: keras-hub's and kagglehub's cache, a download,
or the folder itself) and fingerprints its files (`PresetFiles`: sha256 of every file); the run copies
those bytes into the store (`_featurize/presets/DIGEST/`), and every worker stages them from there
(`stage_preset`, file by file through `pipeline.model.weights_cache`), so no worker asks the hub and a
store can embed a new image or a sentence years later with exactly its model.

The feature model (`build_hub_model`) takes float32 pixels 0..255 at the preset's input size and
folds in the preset's image converter (`x * scale + offset`, the converter's own arithmetic); its
vectors are the family's own embedding (pooling `model`) or avg / max / GeM over the patch tokens,
of the final output or of transformer block N (`--layers blockN`).

keras-hub, Keras and TensorFlow are imported inside the functions only (a missing `featurize[hub]`
extra is an ImportError naming keras_hub, which the CLI turns into one sentence).
"""
from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from pipeline import files
from pipeline.model.backbones import MODEL_POOLING

HUB_PREFIX = "hub:"
FINAL_LAYER = "final"  # the backbone's final output, in output names with several outputs
PRESET_FILES = "files.json"  # {relative path: sha256} of a preset's copy in the store


@dataclass(frozen=True)
class Family:
    """One keras-hub model family.

    backbone_class: the keras-hub Backbone class its presets build.
    embedding: what its own image embedding (pooling `model`) is, in words.
    class_token: a class token leads its token sequence (the `model` pooling of an intermediate
        block is that token); SigLIP has none (its embedding is an attention-pooling head).
    text_preprocessor: the keras-hub preprocessor of its text tower; None: image-only.
    blocks: its transformer blocks can be tapped (`--layers blockN`); ViT's encoder is one layer.
    any_size: the backbone takes another `--image-size` (DINO interpolates position embeddings).
    """
    name: str
    backbone_class: str
    embedding: str
    class_token: bool = True
    text_preprocessor: str | None = None
    blocks: bool = True
    any_size: bool = False


FAMILIES: tuple[Family, ...] = (
    Family("clip", "CLIPBackbone", "the class token projected into the joint image-text space",
           text_preprocessor="CLIPPreprocessor"),
    Family("siglip", "SigLIPBackbone", "the attention-pooling head's output, in the joint image-text space",
           class_token=False, text_preprocessor="SigLIPPreprocessor"),
    Family("dinov2", "DINOV2Backbone", "the class token of the final (normalised) output", any_size=True),
    Family("dinov3", "DINOV3Backbone", "the class token of the final (normalised) output", any_size=True),
    Family("vit", "ViTBackbone", "the class token of the final (normalised) output", blocks=False),
)
FAMILY_NAMES = {family.name: family for family in FAMILIES}
_BY_CLASS = {family.backbone_class: family for family in FAMILIES}


class PresetUnavailable(ValueError):
    """A preset that cannot be fetched or read; the message is one sentence."""


def is_hub(model: str | None) -> bool:
    return bool(model) and model.startswith(HUB_PREFIX)


def preset_of(model: str) -> str:
    """`hub:PRESET` -> PRESET."""
    return model[len(HUB_PREFIX):]


def family_of_class(class_name: str, preset: str) -> Family:
    if class_name not in _BY_CLASS:
        known = ", ".join(f"{f.name} ({f.backbone_class})" for f in FAMILIES)
        raise PresetUnavailable(f"preset {preset!r} is a {class_name}, which featurize does not embed with; "
                                f"its families are {known}")
    return _BY_CLASS[class_name]


# --------------------------------------------------------------------------- fetching and fingerprinting


def resolve_preset(preset: str) -> str:
    """The local folder holding `preset`'s files: the folder itself, else keras-hub's download (kagglehub's
    or Hugging Face's cache, which a second call finds without the network). Raises PresetUnavailable
    with one sentence (no network, not in the cache, no such preset)."""
    import keras_hub  # noqa: F401 - the hub extra: missing, it is the first thing said (ImportError naming it)

    local = os.path.expanduser(preset)
    if os.path.isdir(local):
        if not os.path.isfile(os.path.join(local, "config.json")):
            raise PresetUnavailable(f"preset folder {preset!r} has no config.json; give a folder written by "
                                    f"keras-hub's save_to_preset")
        return os.path.abspath(local)
    from keras_hub.src.utils import preset_utils

    handle = preset_utils.BUILTIN_PRESETS.get(preset, {}).get("kaggle_handle", preset)
    scheme = handle.split("://", 1)[0].lower() if "://" in handle else None
    try:
        if scheme == "kaggle":
            import kagglehub

            return kagglehub.model_download(handle[len("kaggle://"):])
        if scheme == "hf":
            import huggingface_hub

            return huggingface_hub.snapshot_download(handle[len("hf://"):])
        if scheme is not None:
            return _copy_folder(handle)
    except ImportError:
        raise
    except (OSError, ValueError, *_fetch_errors()) as exc:  # network, HTTP, missing files (requests' are OSErrors)
        raise PresetUnavailable(f"preset {preset!r} cannot be fetched ({_reason(exc)}); on a machine without "
                                f"network give the folder keras-hub's save_to_preset wrote, or fetch it once where "
                                f"there is network (keras-hub's cache is then used)") from None
    names = sorted(name for name in preset_utils.BUILTIN_PRESETS
                   if any(name.startswith(f.name) for f in FAMILIES))
    wanted = preset.lower().replace("-", "_")
    close = difflib.get_close_matches(wanted, names, n=3, cutoff=0.75) or [n for n in names if wanted in n][:3]
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise PresetUnavailable(f"preset {preset!r} is neither a keras-hub preset name{hint}, a local folder, nor a "
                            f"kaggle://, hf:// or filesystem URI; `featurize models --hub` lists the presets")


def _fetch_errors() -> tuple[type[BaseException], ...]:
    """kagglehub's own errors that are not OSErrors (no credentials, a gated model, not found)."""
    try:
        from kagglehub import exceptions
    except ImportError:
        return ()
    return (exceptions.CredentialError, exceptions.BackendError, exceptions.NotFoundError,
            exceptions.UnauthenticatedError, exceptions.DataCorruptionError)


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if "NameResolution" in text or "Failed to resolve" in text or "Max retries" in text or "ConnectionError" in \
            type(exc).__name__ or "Connection" in text:
        return f"no network: {type(exc).__name__}"
    return f"{type(exc).__name__}: {text[:200]}"


def _copy_folder(uri: str) -> str:
    """A preset folder on a Beam filesystem (gs://, s3://), copied once into featurize's cache."""
    from pipeline.model.weights_cache import cache_dir

    target = os.path.join(cache_dir(), "presets-fetched", hashlib.sha256(uri.encode()).hexdigest()[:32])
    if os.path.isfile(os.path.join(target, "config.json")):
        return target
    root = uri.rstrip("/") + "/"
    paths = files.list_paths(root + "**")
    if not paths:
        raise FileNotFoundError(f"nothing found below {uri}")
    partial = target + f".partial-{os.getpid()}"
    for path in paths:
        local = os.path.join(partial, path[len(root):])
        os.makedirs(os.path.dirname(local), exist_ok=True)
        with files.open_read(path) as source, open(local, "wb") as sink:
            shutil.copyfileobj(source, sink, 1 << 22)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.replace(partial, target)
    return target


@dataclass(frozen=True)
class PresetFiles:
    """A preset's files as {relative path: sha256}; `digest` names the whole (the order of files aside)."""
    sha256: dict[str, str]

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.sha256, sort_keys=True).encode()).hexdigest()

    @classmethod
    def of_folder(cls, folder: str) -> "PresetFiles":
        """Every file below `folder` but hidden ones (a cache's markers), hashed."""
        from pipeline.model.weights_cache import sha256_of

        found = {}
        for directory, subdirectories, names in os.walk(folder):
            subdirectories[:] = sorted(d for d in subdirectories if not d.startswith("."))
            for name in sorted(names):
                if not name.startswith("."):
                    path = os.path.join(directory, name)
                    found[os.path.relpath(path, folder).replace(os.sep, "/")] = sha256_of(path)
        return cls(found)


def publish_preset(folder: str, preset_files: PresetFiles, target: str) -> None:
    """Copy a preset's files into `target` (any filesystem), `files.json` last: a copy with it is whole."""
    listing = files.join(target, PRESET_FILES)
    if files.exists(listing) and files.read_json(listing) == preset_files.sha256:
        return  # a resumed run: the same bytes are there already
    for relative in preset_files.sha256:
        files.upload(os.path.join(folder, relative), files.join(target, relative))
    with tempfile.TemporaryDirectory(prefix="featurize-preset-") as scratch:
        local = os.path.join(scratch, PRESET_FILES)
        with open(local, "w") as handle:
            json.dump(preset_files.sha256, handle, indent=1, sort_keys=True)
        files.upload(local, listing)


def stage_preset(location: str, digest: str) -> str:
    """A local folder with the preset copy at `location` (the store's `_featurize/presets/...`), each file
    staged once per machine and verified (`weights_cache.stage_weights`), linked under the digest."""
    from pipeline.model.weights_cache import WeightsMismatch, cache_dir, machine_lock, stage_weights

    listed = files.read_json(files.join(location, PRESET_FILES))
    preset_files = PresetFiles(listed)
    if preset_files.digest != digest:
        raise WeightsMismatch(f"preset copy {location!r} has digest {preset_files.digest}, expected {digest}")
    # Each file staged (copied once per machine) and verified once per process, whether linked before or not.
    staged = {relative: stage_weights(files.join(location, relative), sha256) for relative, sha256 in listed.items()}
    folder = os.path.join(cache_dir(), "presets", digest)
    with machine_lock(os.path.join(cache_dir(), f".preset-{digest}.lock")):
        if not os.path.isfile(os.path.join(folder, PRESET_FILES)):
            partial = f"{folder}.partial-{os.getpid()}"
            for relative, path in staged.items():
                link = os.path.join(partial, relative)
                os.makedirs(os.path.dirname(link), exist_ok=True)
                os.symlink(path, link)
            with open(os.path.join(partial, PRESET_FILES), "w") as handle:
                json.dump(listed, handle)
            os.replace(partial, folder)
    return folder


# --------------------------------------------------------------------------- what a preset is


@dataclass(frozen=True)
class PresetInfo:
    """What the launcher needs from a preset, read from its configs (no weights loaded)."""
    family: Family
    image_size: tuple[int, int]  # (height, width): the image converter's
    scale: Any  # the converter's: None, a number, or one per channel
    offset: Any
    resize: str  # featurize's resize policy for the converter's crop / pad choice
    interpolation: str  # the converter's interpolation
    blocks: int  # transformer blocks that `--layers blockN` may tap (0: none)
    hidden_dim: int  # width of the tokens (an intermediate block's vector)
    embedding_dim: int  # width of the family's own embedding

    @property
    def preprocess(self) -> str:
        """How the converter maps pixels, as the fingerprint records it."""
        return f"x * {self.scale} + {self.offset}"


def _family_and_converter(folder: str, preset: str):
    """The preset's Family and keras-hub image converter (configs only, no weights)."""
    import keras_hub
    from keras_hub.src.utils.preset_utils import get_preset_loader

    family = family_of_class(get_preset_loader(folder).check_backbone_class().__name__, preset)
    try:
        converter = keras_hub.layers.ImageConverter.from_preset(folder)
    except (ValueError, FileNotFoundError) as exc:
        raise PresetUnavailable(f"preset {preset!r} has no image converter ({exc}); featurize needs one to know "
                                f"the input size and scaling") from None
    if converter.image_size is None:
        raise PresetUnavailable(f"preset {preset!r}'s image converter names no image size")
    return family, converter


def describe_preset(folder: str, preset: str) -> PresetInfo:
    """The family, image converter and dimensions of the preset in `folder` (its skeleton is built without
    weights to read the dimensions; a few seconds for the largest presets)."""
    import keras_hub

    from pipeline.images import INTERPOLATIONS

    family, converter = _family_and_converter(folder, preset)
    taps = _Taps(keras_hub.models.Backbone.from_preset(folder, load_weights=False), family)
    resize = "center-crop" if converter.crop_to_aspect_ratio else "pad" if converter.pad_to_aspect_ratio else "squash"
    interpolation = converter.interpolation if converter.interpolation in INTERPOLATIONS else "bilinear"
    return PresetInfo(family, tuple(int(v) for v in converter.image_size), _plain(converter.scale),
                      _plain(converter.offset), resize, interpolation, taps.blocks, taps.hidden_dim,
                      taps.embedding_dim)


@dataclass(frozen=True)
class LocalPreset:
    """A preset as the launcher holds it: the local folder, its files' hashes and what it is."""
    folder: str
    files: PresetFiles
    info: PresetInfo

    @classmethod
    def resolve(cls, preset: str) -> "LocalPreset":
        folder = resolve_preset(preset)
        return cls(folder, PresetFiles.of_folder(folder), describe_preset(folder, preset))


def _plain(value: Any) -> Any:
    """A converter's scale or offset as plain JSON numbers."""
    if value is None:
        return None
    array = np.asarray(value, dtype=np.float64)
    return float(array) if array.ndim == 0 else [float(v) for v in array.ravel()]


def block_number(layer: str, blocks: int) -> int | None:
    """`blockN` -> N when 1 <= N <= blocks; None otherwise."""
    found = re.fullmatch(r"block(\d+)", layer)
    return int(found.group(1)) if found and 1 <= int(found.group(1)) <= blocks else None


# --------------------------------------------------------------------------- the model


class _Taps:
    """Where a backbone's token sequences are: the final one, block N's, and the family's own embedding."""

    def __init__(self, backbone, family: Family):
        import keras

        self.backbone, self.family = backbone, family
        if family.name in ("clip", "siglip"):
            encoder = backbone.vision_encoder
            final = encoder.output if family.name == "clip" else encoder.post_layer_norm.output
            blocks = [layer.output for layer in encoder.encoder_layers]
            self._model = keras.Model(encoder.input, {FINAL_LAYER: final, "head": encoder.output,
                                                      **{f"block{i}": t for i, t in enumerate(blocks, 1)}})
            self.blocks = len(blocks)
            self.hidden_dim = int(final.shape[-1])
            self.prefix = 1 if family.class_token else 0
            self.embedding_dim = (int(backbone.vision_projection.units) if family.name == "clip"
                                  else int(encoder.output.shape[-1]))
        else:
            pyramid = getattr(backbone, "pyramid_outputs", {}) if family.blocks else {}
            blocks = {name.replace("stage", "block"): t for name, t in pyramid.items() if name.startswith("stage")}
            self._model = keras.Model(backbone.input, {FINAL_LAYER: backbone.output, **blocks})
            self.blocks = len(blocks)
            self.hidden_dim = self.embedding_dim = int(backbone.output.shape[-1])
            registers = int(getattr(backbone, "num_register_tokens", 0) or 0)
            class_token = getattr(backbone, "use_class_token", True)
            self.prefix = (1 if class_token else 0) + registers

    def __call__(self, images):
        inputs = self._model.input  # keras-hub names it (images, pixel_values): called by that name
        return self._model({next(iter(inputs)): images} if isinstance(inputs, dict) else images)

    def own_embedding(self, sequences: dict[str, Any]):
        if self.family.name == "clip":
            return self.backbone.vision_projection(self.backbone.vision_pooler(sequences[FINAL_LAYER]))
        if self.family.name == "siglip":
            return sequences["head"]
        return sequences[FINAL_LAYER][:, 0, :]


def _load_backbone(folder: str, input_size: tuple[int, int] | None = None, precision: str = "float32"):
    """keras-hub's backbone from a local preset folder (with another input size where the family allows)."""
    import keras_hub

    kwargs: dict[str, Any] = {}
    if input_size is not None:
        kwargs["image_shape"] = (*input_size, 3)
    if precision != "float32":
        kwargs["dtype"] = precision
    return keras_hub.models.Backbone.from_preset(folder, **kwargs)


def build_hub_model(folder: str, input_size: tuple[int, int], layers: Sequence[str] | None,
                    poolings: Sequence[str], gem_p: float = 3.0, l2_normalize: bool = False,
                    precision: str = "float32"):
    """A keras.Model: float32 pixels 0..255 (N, H, W, 3) -> {output name: (N, D) float32}, the preset's
    image converter folded in. Names follow `pipeline.model.keras_models.output_name`, the final output
    spelled `final`."""
    import keras

    from pipeline.model.keras_models import output_name, pooling_layer
    from pipeline.model.layers import custom_layers

    family, converter = _family_and_converter(folder, folder)
    size = None if tuple(input_size) == tuple(converter.image_size) else tuple(input_size)
    taps = _Taps(_load_backbone(folder, size, precision), family)
    pixels = keras.Input((*input_size, 3), name="pixels", dtype="float32")
    x = pixels
    if converter.scale is not None:  # the converter's arithmetic, in its order and dtype
        x = x * np.asarray(converter.scale, np.float32)
    if converter.offset is not None:
        x = x + np.asarray(converter.offset, np.float32)
    sequences = taps(x)
    custom = custom_layers()
    requested = list(layers) if layers else [None]
    count = len(requested) * len(poolings)
    outputs = {}
    for index, layer in enumerate(requested):
        sequence = sequences[layer or FINAL_LAYER]
        for pooling in poolings:
            tag = f"featurize_{index}_{pooling}"
            if pooling == MODEL_POOLING:
                vector = taps.own_embedding(sequences) if layer is None else sequence[:, 0, :]
            else:
                grid = keras.ops.expand_dims(sequence[:, taps.prefix:, :], 1)  # (N, 1, patches, D): 2-D poolings
                vector = pooling_layer(pooling, f"{tag}_pool", gem_p)(grid)
            vector = keras.layers.Activation("linear", name=f"{tag}_float32", dtype="float32")(vector)
            if l2_normalize:
                vector = custom.L2Normalize(name=f"{tag}_l2", dtype="float32")(vector)
            outputs[output_name(layer, pooling, count, final_layer=FINAL_LAYER)] = vector
    return keras.Model(pixels, outputs, name="featurize_hub")


def output_dims(info: PresetInfo, layers: Sequence[str] | None, poolings: Sequence[str]) -> dict[str, int]:
    """{output name: dimension} for a request, from the preset's description alone."""
    from pipeline.model.keras_models import output_name

    requested = list(layers) if layers else [None]
    count = len(requested) * len(poolings)
    return {output_name(layer, pooling, count, final_layer=FINAL_LAYER):
            info.embedding_dim if (layer is None and pooling == MODEL_POOLING) else info.hidden_dim
            for layer in requested for pooling in poolings}


# --------------------------------------------------------------------------- text


class TextTower:
    """A preset's tokenizer and text tower, built on the first text query: sentences -> vectors in the
    joint space, through keras-hub's own preprocessor and `get_text_embeddings`."""

    def __init__(self, folder: str, family: Family):
        import keras_hub

        if family.text_preprocessor is None:
            raise ValueError(f"{family.name} has no text tower")
        self._preprocessor = getattr(keras_hub.models, family.text_preprocessor).from_preset(folder)
        self._preprocessor.image_converter = None  # text only: no image goes through it
        self._backbone = keras_hub.models.Backbone.from_preset(folder)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import keras

        tokens = self._preprocessor({"images": None, "prompts": list(texts)})["token_ids"]
        return np.asarray(keras.ops.convert_to_numpy(self._backbone.get_text_embeddings(tokens)), np.float32)


# --------------------------------------------------------------------------- listing


def preset_rows() -> list[dict[str, Any]]:
    """keras-hub's built-in presets of the families: name, family, parameters and the input size its
    description or name states ("?" where neither does)."""
    from keras_hub.src.utils.preset_utils import BUILTIN_PRESETS

    rows = []
    for name, entry in sorted(BUILTIN_PRESETS.items()):
        family = next((f for f in FAMILIES if name.startswith(f.name)), None)
        if family is None:
            continue
        metadata = entry.get("metadata", {})
        stated = re.search(r"image size (\d+)", metadata.get("description", "")) or re.search(r"_(\d{3})(?:_|$)", name)
        rows.append({"preset": f"{HUB_PREFIX}{name}", "family": family.name,
                     "params": f"{metadata.get('params', 0) / 1e6:,.0f}M" if metadata.get("params") else "?",
                     "input": stated.group(1) if stated else "?",
                     "text": "yes" if family.text_preprocessor else "no"})
    return rows


def family_rows() -> list[dict[str, Any]]:
    return [{"family": f.name, "keras-hub class": f.backbone_class, "vector (--pooling model)": f.embedding,
             "text search": "yes" if f.text_preprocessor else "no",
             "--layers": "blockN" if f.blocks else "no", "--image-size": "any (patch multiple)" if f.any_size
             else "the preset's"} for f in FAMILIES]
