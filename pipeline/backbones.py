"""The backbone registry: every `keras.applications` model, one table row each.

Keras and TensorFlow are imported inside the functions only, never at module
import, so a Beam worker can set `KERAS_BACKEND` and the thread-pool variables
before Keras loads. This module does not import Apache Beam.

Output naming (the one rule, used by `output_name` and `build_feature_model`):
    Every output is keyed ``f"{layer}/{pooling}"``, e.g. ``"conv4_block6_out/gem"``.
    ``layer`` is the layer name as requested; a request for the default layer
    (``layers=None``, or ``None`` inside ``layers``) is spelled with the
    backbone's real final-layer name (see `default_layer`), e.g.
    ``"conv5_block3_out/avg"``.  The one exception: a request with a single
    output (one layer, one pooling, whichever layer) names it ``"embedding"``, so
    the common case reads the same everywhere (Parquet column, HDF5 dataset,
    embedding-reader's default column).

Layer names are those of a model built in a fresh Keras session (the auto
generated names such as ``activation_187`` do not depend on what the process
built before), so names listed by `list_layers` on one machine are valid on
every worker.

Features of the final layer are what ``keras.applications.<Name>(include_top=False,
pooling=...)`` returns: the pooling applied to the final feature map.  ConvNeXt is
the one family where that is not "pool the last layer's output": its
include_top=False model ends with a LayerNormalization that Keras applies *after*
pooling when ``pooling`` is set, so for ConvNeXt's final layer the features are
``LayerNorm(pool(feature map before that norm))`` (this is what keeps avg/max
parity with Keras); intermediate layers are always pooled directly.

Poolings: ``avg`` (GlobalAveragePooling2D), ``max`` (GlobalMaxPooling2D) and ``gem``
(generalized mean, ``mean(clip(x, eps) ** p) ** (1 / p)`` over H and W; ``p=1``
equals ``avg`` on non-negative feature maps, large ``p`` approaches ``max``).
With ``l2_normalize`` every output vector is divided by its L2 norm.
"""
from __future__ import annotations

import collections
import contextlib
import os
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

POOLINGS = ("avg", "max", "gem")
PREPROCESS_MODES = ("caffe", "tf", "torch", "builtin")
EMBEDDING = "embedding"
GEM_EPSILON = 1e-6
L2_EPSILON = 1e-12


@dataclass(frozen=True)
class Backbone:
    """One `keras.applications` model.

    name: attribute of `keras.applications` ("ResNet50").
    module: `keras.applications` submodule whose `preprocess_input` the model expects.
    preprocess: "caffe" (RGB->BGR, minus ImageNet means), "tf" (to [-1, 1]), "torch"
        (to [0, 1], minus mean, divided by std), or "builtin" (the model rescales
        inside itself; `preprocess_input` is the identity).
    default_size: the input side Keras builds by default (and trained the ImageNet weights at).
    min_size: the smallest side Keras accepts for include_top=False (checked with weights=None).
    dim: channels of the final feature map: the feature dimension for avg/max/gem.
    imagenet_size: set only for the NASNets, whose Keras documentation says ImageNet weights
        need exactly this input side (224 / 331). Keras 3.15's code does not enforce it for
        include_top=False (the NASNet graph and weight shapes are the same at every size), so
        `build_feature_model` only warns at other sizes.
    """
    name: str
    module: str
    preprocess: str
    default_size: int
    min_size: int
    dim: int
    imagenet_size: int | None = None


# Checked against keras 3.15.1 (tests/test_backbones.py builds every row).
_TABLE = (
    #        name                 module                 preprocess default min  dim   imagenet_size
    Backbone("ConvNeXtBase",      "convnext",            "builtin", 224,    32, 1024),
    Backbone("ConvNeXtLarge",     "convnext",            "builtin", 224,    32, 1536),
    Backbone("ConvNeXtSmall",     "convnext",            "builtin", 224,    32, 768),
    Backbone("ConvNeXtTiny",      "convnext",            "builtin", 224,    32, 768),
    Backbone("ConvNeXtXLarge",    "convnext",            "builtin", 224,    32, 2048),
    Backbone("DenseNet121",       "densenet",            "torch",   224,    32, 1024),
    Backbone("DenseNet169",       "densenet",            "torch",   224,    32, 1664),
    Backbone("DenseNet201",       "densenet",            "torch",   224,    32, 1920),
    Backbone("EfficientNetB0",    "efficientnet",        "builtin", 224,    32, 1280),
    Backbone("EfficientNetB1",    "efficientnet",        "builtin", 240,    32, 1280),
    Backbone("EfficientNetB2",    "efficientnet",        "builtin", 260,    32, 1408),
    Backbone("EfficientNetB3",    "efficientnet",        "builtin", 300,    32, 1536),
    Backbone("EfficientNetB4",    "efficientnet",        "builtin", 380,    32, 1792),
    Backbone("EfficientNetB5",    "efficientnet",        "builtin", 456,    32, 2048),
    Backbone("EfficientNetB6",    "efficientnet",        "builtin", 528,    32, 2304),
    Backbone("EfficientNetB7",    "efficientnet",        "builtin", 600,    32, 2560),
    Backbone("EfficientNetV2B0",  "efficientnet_v2",     "builtin", 224,    32, 1280),
    Backbone("EfficientNetV2B1",  "efficientnet_v2",     "builtin", 240,    32, 1280),
    Backbone("EfficientNetV2B2",  "efficientnet_v2",     "builtin", 260,    32, 1408),
    Backbone("EfficientNetV2B3",  "efficientnet_v2",     "builtin", 300,    32, 1536),
    Backbone("EfficientNetV2L",   "efficientnet_v2",     "builtin", 480,    32, 1280),
    Backbone("EfficientNetV2M",   "efficientnet_v2",     "builtin", 480,    32, 1280),
    Backbone("EfficientNetV2S",   "efficientnet_v2",     "builtin", 384,    32, 1280),
    Backbone("InceptionResNetV2", "inception_resnet_v2", "tf",      299,    75, 1536),
    Backbone("InceptionV3",       "inception_v3",        "tf",      299,    75, 2048),
    Backbone("MobileNet",         "mobilenet",           "tf",      224,    32, 1024),
    Backbone("MobileNetV2",       "mobilenet_v2",        "tf",      224,    32, 1280),
    Backbone("MobileNetV3Large",  "mobilenet_v3",        "builtin", 224,    32, 960),
    Backbone("MobileNetV3Small",  "mobilenet_v3",        "builtin", 224,    32, 576),
    Backbone("NASNetLarge",       "nasnet",              "tf",      331,    32, 4032, 331),
    Backbone("NASNetMobile",      "nasnet",              "tf",      224,    32, 1056, 224),
    Backbone("ResNet101",         "resnet",              "caffe",   224,    32, 2048),
    Backbone("ResNet101V2",       "resnet_v2",           "tf",      224,    32, 2048),
    Backbone("ResNet152",         "resnet",              "caffe",   224,    32, 2048),
    Backbone("ResNet152V2",       "resnet_v2",           "tf",      224,    32, 2048),
    Backbone("ResNet50",          "resnet50",            "caffe",   224,    32, 2048),
    Backbone("ResNet50V2",        "resnet_v2",           "tf",      224,    32, 2048),
    Backbone("VGG16",             "vgg16",               "caffe",   224,    32, 512),
    Backbone("VGG19",             "vgg19",               "caffe",   224,    32, 512),
    Backbone("Xception",          "xception",            "tf",      299,    71, 2048),
)

BACKBONES: dict[str, Backbone] = {row.name: row for row in _TABLE}


# --------------------------------------------------------------------------- registry


def get_backbone(name: str | Backbone) -> Backbone:
    """The registry row for `name` (exact, else case-insensitive); KeyError listing the valid names."""
    if isinstance(name, Backbone):
        return name
    if name in BACKBONES:
        return BACKBONES[name]
    folded = {key.lower(): row for key, row in BACKBONES.items()}
    if isinstance(name, str) and name.lower() in folded:
        return folded[name.lower()]
    raise KeyError(f"unknown backbone {name!r}; valid names: {', '.join(BACKBONES)}")


def model_summary_rows() -> list[dict[str, Any]]:
    """One row per backbone for a `featurize models` table (imagenet_size "any": no fixed size)."""
    return [{
        "name": row.name,
        "preprocess": row.preprocess,
        "default_size": row.default_size,
        "min_size": row.min_size,
        "imagenet_size": row.imagenet_size or "any",
        "dim_avg": row.dim,
        "dim_max": row.dim,
        "dim_gem": row.dim,
        "module": row.module,
    } for row in _TABLE]


def weights_argument(weights: str | None) -> str | None:
    """Parse a user's weights value: "imagenet" -> "imagenet"; "none"/"None"/"" -> None (random
    init); anything else is a weights file path (legacy ``.h5`` or Keras 3 ``.weights.h5``), returned
    with ``~`` expanded. The path is not checked here (it may exist only on the workers)."""
    if weights is None:
        return None
    text = str(weights).strip()
    if text.lower() in ("", "none", "null"):
        return None
    if text.lower() == "imagenet":
        return "imagenet"
    return os.path.expanduser(text)


# --------------------------------------------------------------------------- naming


def output_name(layer: str | None, pooling: str, n_outputs: int, *,
                backbone: Backbone | str | None = None, final_layer: str | None = None) -> str:
    """Name of one output under the module's rule (see the module docstring).

    layer: the requested layer, None for the default (final) layer.
    n_outputs: how many outputs the request has in all (layers x poolings).
    backbone / final_layer: needed only to spell the default layer when there are several
        outputs; `final_layer` (the name) wins over `backbone` (which builds the model once
        to look the name up, see `default_layer`).
    """
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose from: {', '.join(POOLINGS)}")
    if n_outputs == 1:
        return EMBEDDING
    if layer is None:
        if final_layer is None:
            if backbone is None:
                raise ValueError("output_name(None, ...) with several outputs needs backbone= or final_layer= "
                                 "to spell the final layer's real name")
            final_layer = default_layer(backbone)
        layer = final_layer
    return f"{layer}/{pooling}"


# --------------------------------------------------------------------------- keras helpers


def _keras():
    import keras

    return keras


@contextlib.contextmanager
def _fresh_layer_names():
    """Build with Keras' auto-naming counters reset, as in a fresh session, then restore them.

    Keras names unnamed layers `conv2d_95` etc. from a per-thread global counter, so the
    same model gets different layer names depending on what was built before. Swapping
    only the counter (not `clear_session`, which would also drop e.g. the dtype policy)
    makes the names reproducible across processes.
    """
    try:
        from keras.src.backend.common import global_state
    except ImportError:  # pragma: no cover - a Keras without this internal: names are then not reset
        yield
        return
    key = "object_name_uids"
    saved = global_state.get_global_attribute(key)
    global_state.set_global_attribute(key, collections.defaultdict(int))
    try:
        yield
    finally:
        global_state.set_global_attribute(key, saved)


def _check_size(backbone: Backbone, input_size: Sequence[int]) -> tuple[int, int]:
    try:
        height, width = (int(side) for side in input_size)
    except (TypeError, ValueError):
        raise ValueError(f"input_size must be (height, width); got {input_size!r}") from None
    if min(height, width) < backbone.min_size:
        raise ValueError(f"input size {height}x{width} is below {backbone.name}'s minimum of "
                         f"{backbone.min_size}x{backbone.min_size}")
    return height, width


def _application(backbone: Backbone):
    return getattr(_keras().applications, backbone.name)


def _build_notop(backbone: Backbone, input_size: Sequence[int], weights: str | None):
    height, width = _check_size(backbone, input_size)
    with _fresh_layer_names():
        return _application(backbone)(include_top=False, weights=weights, input_shape=(height, width, 3),
                                      pooling=None)


def _spatial_layers(model) -> dict[str, tuple]:
    """{name: output shape} of every layer with a 4-D output, in model order (the input excluded)."""
    keras = _keras()
    found = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        try:
            output = layer.output
        except (AttributeError, ValueError, RuntimeError):  # never called, or called several times
            continue
        shape = getattr(output, "shape", None)
        if shape is not None and len(shape) == 4:
            found[layer.name] = tuple(shape)
    return found


_FINAL_LAYERS: dict[str, str] = {}


def default_layer(backbone: Backbone | str) -> str:
    """Name of the final layer of the include_top=False model (builds it once, weights=None)."""
    backbone = get_backbone(backbone)
    if backbone.name not in _FINAL_LAYERS:
        model = _build_notop(backbone, (backbone.min_size, backbone.min_size), None)
        _FINAL_LAYERS[backbone.name] = model.layers[-1].name
    return _FINAL_LAYERS[backbone.name]


def list_layers(backbone: Backbone | str, input_size: Sequence[int]) -> list[tuple[str, tuple]]:
    """(layer name, output shape) of every layer with a 4-D (N, H, W, C) output, input excluded,
    in model order; the last one is `default_layer`. Built with weights=None."""
    backbone = get_backbone(backbone)
    model = _build_notop(backbone, input_size, None)
    _FINAL_LAYERS.setdefault(backbone.name, model.layers[-1].name)
    return list(_spatial_layers(model).items())


# --------------------------------------------------------------------------- weights


def _weighted_layers(model) -> list:
    return [layer for layer in model.layers if layer.weights]


def _copy_weights(source, target) -> None:
    """Copy every weighted layer of `target` from `source`, pairing layers by (class, order of
    appearance) -- the scheme of Keras 3's own `.weights.h5` files, which survives Keras'
    auto-generated names and the renamed ConvNeXt head norm; every shape must match."""
    by_class: dict[str, list] = collections.defaultdict(list)
    for layer in _weighted_layers(source):
        by_class[type(layer).__name__].append(layer)
    taken: dict[str, int] = collections.defaultdict(int)
    pairs = []
    for layer in _weighted_layers(target):
        kind = type(layer).__name__
        index = taken[kind]
        taken[kind] += 1
        if index >= len(by_class[kind]):
            raise ValueError(f"the weights have no {kind} for layer {layer.name!r}")
        other = by_class[kind][index]
        mine, theirs = layer.get_weights(), other.get_weights()
        if [w.shape for w in mine] != [w.shape for w in theirs]:
            raise ValueError(f"layer {layer.name!r}: weight shapes {[w.shape for w in mine]} do not match "
                             f"{other.name!r}'s {[w.shape for w in theirs]}")
        pairs.append((layer, theirs))
    for layer, values in pairs:
        layer.set_weights(values)


def _load_legacy_h5_prefix(path: str, model) -> None:
    """Legacy `.h5` whose first weighted layers are this model's (a full model with any head,
    e.g. a fine-tuned classifier): load them in order and ignore the rest (the head)."""
    import h5py

    def strings(values) -> list[str]:
        return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]

    def attribute(group, name) -> list[str]:
        if name in group.attrs:
            return strings(group.attrs[name])
        chunks, index = [], 0  # Keras splits long attributes into name0, name1, ...
        while f"{name}{index}" in group.attrs:
            chunks.extend(strings(group.attrs[f"{name}{index}"]))
            index += 1
        return chunks

    saved = []
    with h5py.File(path, "r") as handle:
        group = handle
        if not attribute(handle, "layer_names") and "model_weights" in handle:
            group = handle["model_weights"]
        for name in attribute(group, "layer_names"):
            weight_names = attribute(group[name], "weight_names")
            if weight_names:
                saved.append((name, [np.asarray(group[name][w]) for w in weight_names]))
    targets = _weighted_layers(model)
    if not saved:
        raise ValueError("no layer weights in the file")
    if len(saved) < len(targets):
        raise ValueError(f"the file has {len(saved)} weighted layers, the model needs {len(targets)}")
    for layer, (name, values) in zip(targets, saved):
        variables = layer.trainable_weights + layer.non_trainable_weights
        if [tuple(v.shape) for v in variables] != [v.shape for v in values]:
            raise ValueError(f"layer {layer.name!r} does not match saved layer {name!r}: shapes "
                             f"{[tuple(v.shape) for v in variables]} vs {[v.shape for v in values]}")
    for layer, (_, values) in zip(targets, saved):
        for variable, value in zip(layer.trainable_weights + layer.non_trainable_weights, values):
            variable.assign(value)


_PARTIAL_LOAD_WARNINGS = ("freshly-initialized", "could not be loaded")


def _quietly(attempt):
    """Run one loading attempt with Keras' warnings held back: a failed attempt's warnings are
    noise (the next attempt or the final error says what happened); a "successful" load that
    warned about weights left at their initial values counts as a failure, not a silent half-load."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = attempt()
    partial = [str(w.message) for w in caught if any(hint in str(w.message) for hint in _PARTIAL_LOAD_WARNINGS)]
    if partial:
        raise ValueError(f"only part of the weights loaded: {partial[0]}")
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return result


def _load_from_file(backbone: Backbone, input_size: Sequence[int], path: str):
    """The include_top=False model at `input_size` with weights from a local file, which may hold
    the include_top=False model (any input size) or the full model with its classifier."""
    if "://" not in path and not os.path.isfile(path):
        raise ValueError(f"weights file {path!r} does not exist")
    failures = []
    # 1. A no-top file (or a Keras 3 full-model `.weights.h5`/`.keras`: Keras skips the head).
    try:
        return _quietly(lambda: _build_notop(backbone, input_size, path))
    except Exception as error:  # noqa: BLE001 - Keras raises several types; all mean "try the next way"
        failures.append(f"as an include_top=False file: {error}")
    model = _build_notop(backbone, input_size, None)
    # 2. A full (include_top=True, 1000 classes) file: load it at the default size and copy the body.
    try:
        with _fresh_layer_names():
            full = _application(backbone)(include_top=True, weights=None)
        _quietly(lambda: full.load_weights(path))
        _copy_weights(full, model)
        return model
    except Exception as error:  # noqa: BLE001
        failures.append(f"as an include_top=True file: {error}")
    # 3. A legacy `.h5` full model with some other head: the body's layers come first.
    if path.endswith((".h5", ".hdf5")) and not path.endswith(".weights.h5"):
        try:
            _load_legacy_h5_prefix(path, model)
            return model
        except Exception as error:  # noqa: BLE001
            failures.append(f"as a legacy .h5 body prefix: {error}")
    reasons = "\n  ".join(" ".join(str(f).split())[:500] for f in failures)
    raise ValueError(f"weights file {path!r} does not fit {backbone.name} (tried include_top=False and "
                     f"include_top=True):\n  {reasons}")


def _build_base(backbone: Backbone, input_size: Sequence[int], weights: str | None):
    weights = weights_argument(weights)
    if weights is None:
        return _build_notop(backbone, input_size, None)
    if weights == "imagenet":
        height, width = _check_size(backbone, input_size)
        if backbone.imagenet_size and (height, width) != (backbone.imagenet_size,) * 2:
            warnings.warn(f"{backbone.name}'s ImageNet weights are documented for "
                          f"{backbone.imagenet_size}x{backbone.imagenet_size} inputs; got {height}x{width}",
                          stacklevel=3)
        return _build_notop(backbone, input_size, "imagenet")
    return _load_from_file(backbone, input_size, weights)


# --------------------------------------------------------------------------- feature model


_CUSTOM_LAYERS: dict[str, type] = {}


def _custom_layers() -> dict[str, type]:
    """GeM pooling and L2 normalisation layers, defined on first use (Keras is imported lazily)."""
    if _CUSTOM_LAYERS:
        return _CUSTOM_LAYERS
    keras = _keras()
    ops = keras.ops

    @keras.saving.register_keras_serializable(package="featurize")
    class GeneralizedMeanPooling2D(keras.layers.Layer):
        """(mean over H, W of clip(x, eps) ** p) ** (1 / p) for (N, H, W, C) -> (N, C)."""

        def __init__(self, p: float = 3.0, epsilon: float = GEM_EPSILON, **kwargs):
            super().__init__(**kwargs)
            self.p = float(p)
            self.epsilon = float(epsilon)

        def call(self, inputs):
            x = ops.maximum(inputs, self.epsilon)
            if self.p == 1.0:
                return ops.mean(x, axis=(1, 2))
            return ops.power(ops.mean(ops.power(x, self.p), axis=(1, 2)), 1.0 / self.p)

        def compute_output_shape(self, input_shape):
            return (input_shape[0], input_shape[-1])

        def get_config(self):
            return {**super().get_config(), "p": self.p, "epsilon": self.epsilon}

    @keras.saving.register_keras_serializable(package="featurize")
    class L2Normalize(keras.layers.Layer):
        """x / max(||x||_2, eps) along the last axis."""

        def __init__(self, epsilon: float = L2_EPSILON, **kwargs):
            super().__init__(**kwargs)
            self.epsilon = float(epsilon)

        def call(self, inputs):
            squared = ops.sum(ops.square(inputs), axis=-1, keepdims=True)
            return inputs * ops.rsqrt(ops.maximum(squared, self.epsilon ** 2))

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            return {**super().get_config(), "epsilon": self.epsilon}

    _CUSTOM_LAYERS.update(GeneralizedMeanPooling2D=GeneralizedMeanPooling2D, L2Normalize=L2Normalize)
    return _CUSTOM_LAYERS


def _unique(values: Sequence) -> list:
    return list(dict.fromkeys(values))


def build_feature_model(backbone: Backbone | str, input_size: tuple[int, int], weights: str | None,
                        layers: list[str] | None = None, poolings: Sequence[str] = ("avg",),
                        gem_p: float = 3.0, l2_normalize: bool = False):
    """A keras.Model taking float32 *already preprocessed* batches (N, H, W, 3) (see
    `preprocess_batch`) and returning a dict {output name: (N, D) float32}.

    One forward pass computes every requested (layer, pooling). layers None -> the final layer;
    `None` inside `layers` also means the final layer. weights: "imagenet", None (random init) or
    a local `.h5` / `.weights.h5` file holding the include_top=False model or the full model.
    Names follow the module docstring's rule.
    """
    backbone = get_backbone(backbone)
    keras = _keras()
    poolings = _unique(poolings)
    if not poolings:
        raise ValueError(f"no pooling given; choose from: {', '.join(POOLINGS)}")
    for pooling in poolings:
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choose from: {', '.join(POOLINGS)}")
    if "gem" in poolings and not gem_p > 0:
        raise ValueError(f"gem_p must be > 0; got {gem_p}")
    requested = [None] if not layers else _unique(layers)

    base = _build_base(backbone, input_size, weights)
    final = base.layers[-1].name
    _FINAL_LAYERS.setdefault(backbone.name, final)
    spatial = _spatial_layers(base)
    unknown = [layer for layer in requested if layer is not None and layer not in spatial]
    if unknown:
        raise ValueError(f"{backbone.name} has no layer {', '.join(map(repr, unknown))} with a spatial "
                         f"(N, H, W, C) output; valid layers: {', '.join(spatial)}")
    if None in requested and final in requested:  # the same layer twice under two spellings
        requested.remove(None)

    custom = _custom_layers()
    count = len(requested) * len(poolings)
    outputs = {}
    for index, layer_name in enumerate(requested):
        layer = base.get_layer(layer_name or final)
        post_norm = None
        if layer.name == final and isinstance(layer, keras.layers.LayerNormalization):
            # ConvNeXt: Keras normalises *after* pooling when include_top=False with pooling set.
            feature_map, post_norm = layer.input, layer
        else:
            feature_map = layer.output
        for pooling in poolings:
            tag = f"featurize_{index}_{pooling}"
            if pooling == "avg":
                pooled = keras.layers.GlobalAveragePooling2D(name=f"{tag}_pool", dtype="float32")(feature_map)
            elif pooling == "max":
                pooled = keras.layers.GlobalMaxPooling2D(name=f"{tag}_pool", dtype="float32")(feature_map)
            else:
                pooled = custom["GeneralizedMeanPooling2D"](p=gem_p, name=f"{tag}_pool",
                                                            dtype="float32")(feature_map)
            if post_norm is not None:
                pooled = post_norm(pooled)
                pooled = keras.layers.Activation("linear", name=f"{tag}_float32", dtype="float32")(pooled)
            if l2_normalize:
                pooled = custom["L2Normalize"](name=f"{tag}_l2", dtype="float32")(pooled)
            outputs[output_name(layer_name, pooling, count, final_layer=final)] = pooled
    return keras.Model(inputs=base.inputs[0], outputs=outputs, name=f"featurize_{backbone.name.lower()}")


def preprocess_batch(backbone: Backbone | str, x):
    """RGB 0..255 (N, H, W, 3) -> exactly `keras.applications.<module>.preprocess_input(x)`.

    Works on numpy arrays (copied first: Keras' preprocess_input edits float arrays in place)
    and on TF tensors, also inside a tf.function.
    """
    backbone = get_backbone(backbone)
    preprocess_input = getattr(_keras().applications, backbone.module).preprocess_input
    if isinstance(x, (np.ndarray, list, tuple)):
        x = np.array(x, dtype=np.float32, copy=True)
    return preprocess_input(x)


__all__ = [
    "BACKBONES", "Backbone", "EMBEDDING", "POOLINGS", "PREPROCESS_MODES", "build_feature_model",
    "default_layer", "get_backbone", "list_layers", "model_summary_rows", "output_name",
    "preprocess_batch", "weights_argument",
]
