"""The Keras models featurize runs: a backbone's include_top=False body with pooled outputs
(`build_pooled_model`), or its full model with the classifier (`build_classifier_model`, for
--predictions); the layers a backbone offers and the names of the outputs.

Keras and TensorFlow are imported inside the functions only, never at module import, so a
Beam worker can set `KERAS_BACKEND` and the thread-pool variables before Keras loads (the
custom layers of `pipeline.model.layers` import Keras at their top, so they are imported here lazily).

Output naming (the one rule, used by `output_name` and `build_pooled_model`):
    Every output is keyed ``f"{layer}/{pooling}"``, e.g. ``"conv4_block6_out/gem"``.
    ``layer`` is the layer name as requested; a request for the default layer
    (``layers=None``, or ``None`` inside ``layers``) is spelled with the
    backbone's real final-layer name (see `default_layer`), e.g.
    ``"conv5_block3_out/avg"``.  The one exception: a request with a single
    output (one layer, one pooling, whichever layer) names it ``"embedding"``, so
    the common case reads the same everywhere (Parquet column, HDF5 dataset,
    embedding-reader's default column). The classifier model's outputs are
    ``"embedding"`` and ``"predictions"``.

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

Weights: "imagenet" (Keras downloads them), None (random init) or a local file (see
`pipeline.model.weight_files`): a Keras 3 file is loaded by Keras, as an include_top=False file or
as a full model whose body is copied; a legacy `.h5` is read layer by layer (any Keras-1/2
layout, full or notop, Theano or TensorFlow kernel ordering).
"""
from __future__ import annotations

import collections
import contextlib
import os
import warnings
from typing import Sequence

from pipeline.model import weight_files
from pipeline.model.backbones import POOLINGS, Backbone, get_backbone, weights_argument
from pipeline.model.weight_files import NoClassifier, WeightsDoNotFit

EMBEDDING = "embedding"
PREDICTIONS = "predictions"


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


def _build_full(backbone: Backbone, input_size: Sequence[int], weights: str | None):
    """The include_top=True model (1000 classes); "imagenet" only at the default size (Keras's rule)."""
    height, width = _check_size(backbone, input_size)
    with _fresh_layer_names():
        if weights == "imagenet":
            return _application(backbone)(include_top=True, weights="imagenet")
        return _application(backbone)(include_top=True, weights=weights, input_shape=(height, width, 3))


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


def _check_file(path: str) -> None:
    if "://" not in path and not os.path.isfile(path):
        raise ValueError(f"weights file {path!r} does not exist")


def _load_legacy(backbone: Backbone, model, path: str, weights_ordering: str, whole: bool):
    try:
        weight_files.load_legacy(model, path, weights_ordering, whole=whole)
    except NoClassifier:
        raise
    except WeightsDoNotFit as error:
        raise WeightsDoNotFit(f"weights file {path!r} does not fit {backbone.name}: {error}", error.reason) from None
    return model


def _load_from_file(backbone: Backbone, input_size: Sequence[int], path: str, weights_ordering: str = "auto"):
    """The include_top=False model at `input_size` with weights from a local file, which may hold
    the include_top=False model (any input size) or the full model with its classifier."""
    _check_file(path)
    if weight_files.is_legacy_file(path):
        return _load_legacy(backbone, _build_notop(backbone, input_size, None), path, weights_ordering, whole=False)
    failures = []
    # 1. A no-top file (or a Keras 3 full-model `.weights.h5`/`.keras`: Keras skips the head).
    try:
        return weight_files.quietly(lambda: _build_notop(backbone, input_size, path))
    except Exception as error:  # noqa: BLE001 - Keras raises several types; all mean "try the next way"
        failures.append(f"as an include_top=False file: {error}")
    model = _build_notop(backbone, input_size, None)
    # 2. A full (include_top=True, 1000 classes) file: load it at the default size and copy the body.
    try:
        full = _build_full(backbone, (backbone.default_size,) * 2, None)
        weight_files.quietly(lambda: full.load_weights(path))
        weight_files.copy_weights(full, model)
        return model
    except Exception as error:  # noqa: BLE001
        failures.append(f"as an include_top=True file: {error}")
    reasons = "\n  ".join(" ".join(str(f).split())[:500] for f in failures)
    raise ValueError(f"weights file {path!r} does not fit {backbone.name} (tried include_top=False and "
                     f"include_top=True):\n  {reasons}")


def _build_base(backbone: Backbone, input_size: Sequence[int], weights: str | None, weights_ordering: str = "auto"):
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
    return _load_from_file(backbone, input_size, weights, weights_ordering)


def _build_classifier_base(backbone: Backbone, input_size: Sequence[int], weights: str | None,
                           weights_ordering: str = "auto"):
    """The full model at `input_size` with its weights; a file must hold the classifier."""
    weights = weights_argument(weights)
    height, width = _check_size(backbone, input_size)
    if weights == "imagenet":
        trained = _build_full(backbone, input_size, "imagenet")  # Keras builds it at the default size only
        if (height, width) == (backbone.default_size,) * 2:
            return trained
        model = _build_full(backbone, input_size, None)  # a pooling head: the same weights fit any size
        weight_files.copy_weights(trained, model)
        return model
    model = _build_full(backbone, input_size, None)
    if weights is None:
        return model
    _check_file(weights)
    if weight_files.is_legacy_file(weights):
        return _load_legacy(backbone, model, weights, weights_ordering, whole=True)
    try:
        weight_files.quietly(lambda: model.load_weights(weights))
    except ValueError as error:
        try:
            weight_files.quietly(lambda: _build_notop(backbone, input_size, weights))
        except ValueError:
            raise WeightsDoNotFit(f"weights file {weights!r} does not fit {backbone.name} with its classifier: "
                                  f"{' '.join(str(error).split())[:300]}") from None
        raise NoClassifier(f"--predictions needs the full model's weights; {weights!r} holds no classifier "
                           f"(an include_top=False file)") from None
    return model


# --------------------------------------------------------------------------- models


def _unique(values: Sequence) -> list:
    return list(dict.fromkeys(values))


def build_pooled_model(backbone: Backbone | str, input_size: tuple[int, int], weights: str | None,
                       layers: list[str] | None = None, poolings: Sequence[str] = ("avg",),
                       gem_p: float = 3.0, l2_normalize: bool = False, weights_ordering: str = "auto"):
    """A keras.Model taking float32 *already preprocessed* batches (N, H, W, 3) (see
    `backbones.preprocess_batch`) and returning a dict {output name: (N, D) float32}.

    One forward pass computes every requested (layer, pooling). layers None -> the final layer;
    `None` inside `layers` also means the final layer. weights: "imagenet", None (random init) or
    a local `.h5` / `.weights.h5` file holding the include_top=False model or the full model
    (`weights_ordering`: a legacy file's kernel ordering, see `pipeline.model.weight_files`).
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

    base = _build_base(backbone, input_size, weights, weights_ordering)
    final = base.layers[-1].name
    _FINAL_LAYERS.setdefault(backbone.name, final)
    spatial = _spatial_layers(base)
    unknown = [layer for layer in requested if layer is not None and layer not in spatial]
    if unknown:
        raise ValueError(f"{backbone.name} has no layer {', '.join(map(repr, unknown))} with a spatial "
                         f"(N, H, W, C) output; valid layers: {', '.join(spatial)}")
    if None in requested and final in requested:  # the same layer twice under two spellings
        requested.remove(None)

    from pipeline.model.layers import GeneralizedMeanPooling2D, L2Normalize

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
                pooled = GeneralizedMeanPooling2D(p=gem_p, name=f"{tag}_pool", dtype="float32")(feature_map)
            if post_norm is not None:
                pooled = post_norm(pooled)
                pooled = keras.layers.Activation("linear", name=f"{tag}_float32", dtype="float32")(pooled)
            if l2_normalize:
                pooled = L2Normalize(name=f"{tag}_l2", dtype="float32")(pooled)
            outputs[output_name(layer_name, pooling, count, final_layer=final)] = pooled
    return keras.Model(inputs=base.inputs[0], outputs=outputs, name=f"featurize_{backbone.name.lower()}")


def build_classifier_model(backbone: Backbone | str, input_size: tuple[int, int], weights: str | None,
                           l2_normalize: bool = False, weights_ordering: str = "auto"):
    """A keras.Model taking float32 *already preprocessed* batches (N, H, W, 3) and returning
    {"embedding": (N, D) float32, "predictions": (N, 1000) float32} from one forward pass of
    ``keras.applications.<Name>(include_top=True)``: `predictions` is that model's output (the
    softmax), `embedding` the input of its last weighted layer, flattened (D is
    `Backbone.classifier_dim`), L2-normalised with `l2_normalize`.

    weights: "imagenet", None (random init) or a local file holding the full model (Keras 3, or a
    legacy `.h5` in any layout and kernel ordering); a file without the classifier raises
    NoClassifier. A head that flattens a feature map (VGG) needs the default input size.
    """
    backbone = get_backbone(backbone)
    keras = _keras()
    full = _build_classifier_base(backbone, input_size, weights, weights_ordering)
    classifier = [layer for layer in full.layers if layer.weights][-1]
    features = classifier.input
    if len(features.shape) > 2:  # MobileNet's 1x1 convolution classifiers take (N, 1, 1, D)
        features = keras.layers.Flatten(name="featurize_classifier_input")(features)
    embedding = keras.layers.Activation("linear", name="featurize_embedding", dtype="float32")(features)
    if l2_normalize:
        from pipeline.model.layers import L2Normalize

        embedding = L2Normalize(name="featurize_embedding_l2", dtype="float32")(embedding)
    predictions = keras.layers.Activation("linear", name="featurize_predictions", dtype="float32")(full.outputs[0])
    return keras.Model(inputs=full.inputs[0], outputs={EMBEDDING: embedding, PREDICTIONS: predictions},
                       name=f"featurize_{backbone.name.lower()}_classifier")


__all__ = ["EMBEDDING", "PREDICTIONS", "build_classifier_model", "build_pooled_model", "default_layer",
           "list_layers", "output_name"]
