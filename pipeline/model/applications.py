"""A `keras.applications` backbone built as Keras builds it, with its weights of any kind: the
include_top=False body (`body_with_weights`) or the full model with its classifier
(`full_with_weights`). `pipeline.model.keras_models` puts featurize's outputs on top.

Keras and TensorFlow are imported inside the functions only, never at module import, so a
Beam worker can set `KERAS_BACKEND` and the thread-pool variables before Keras loads.

Layer names are those of a model built in a fresh Keras session (the auto generated names such
as ``activation_187`` do not depend on what the process built before), so names listed on one
machine are valid on every worker.

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
from pipeline.model.backbones import Backbone
from pipeline.model.spec import weights_argument
from pipeline.model.weight_files import NoClassifier, WeightsDoNotFit


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
    import keras

    return getattr(keras.applications, backbone.name)


def body(backbone: Backbone, input_size: Sequence[int], weights: str | None = None):
    """The include_top=False model, no pooling; `weights` as Keras takes them (None, "imagenet",
    or a file Keras loads itself)."""
    height, width = _check_size(backbone, input_size)
    with _fresh_layer_names():
        return _application(backbone)(include_top=False, weights=weights, input_shape=(height, width, 3),
                                      pooling=None)


def _full(backbone: Backbone, input_size: Sequence[int], weights: str | None):
    """The include_top=True model (1000 classes); "imagenet" only at the default size (Keras's rule)."""
    height, width = _check_size(backbone, input_size)
    with _fresh_layer_names():
        if weights == "imagenet":
            return _application(backbone)(include_top=True, weights="imagenet")
        return _application(backbone)(include_top=True, weights=weights, input_shape=(height, width, 3))


def spatial_layers(model) -> dict[str, tuple]:
    """{name: output shape} of every layer with a 4-D output, in model order (the input excluded)."""
    import keras

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


def _body_from_file(backbone: Backbone, input_size: Sequence[int], path: str, weights_ordering: str = "auto"):
    """The include_top=False model at `input_size` with weights from a local file, which may hold
    the include_top=False model (any input size) or the full model with its classifier."""
    _check_file(path)
    if weight_files.is_legacy_file(path):
        return _load_legacy(backbone, body(backbone, input_size), path, weights_ordering, whole=False)
    failures = []
    # 1. A no-top file (or a Keras 3 full-model `.weights.h5`/`.keras`: Keras skips the head).
    try:
        return weight_files.quietly(lambda: body(backbone, input_size, path))
    except Exception as error:  # noqa: BLE001 - Keras raises several types; all mean "try the next way"
        failures.append(f"as an include_top=False file: {error}")
    model = body(backbone, input_size)
    # 2. A full (include_top=True, 1000 classes) file: load it at the default size and copy the body.
    try:
        full = _full(backbone, (backbone.default_size,) * 2, None)
        weight_files.quietly(lambda: full.load_weights(path))
        weight_files.copy_weights(full, model)
        return model
    except Exception as error:  # noqa: BLE001
        failures.append(f"as an include_top=True file: {error}")
    reasons = "\n  ".join(" ".join(str(f).split())[:500] for f in failures)
    raise ValueError(f"weights file {path!r} does not fit {backbone.name} (tried include_top=False and "
                     f"include_top=True):\n  {reasons}")


def body_with_weights(backbone: Backbone, input_size: Sequence[int], weights: str | None,
                      weights_ordering: str = "auto"):
    """The include_top=False model at `input_size` with `weights`: "imagenet", None (random init)
    or a local file holding the include_top=False model or the full model (`weights_ordering`: a
    legacy file's kernel ordering)."""
    weights = weights_argument(weights)
    if weights is None:
        return body(backbone, input_size)
    if weights == "imagenet":
        height, width = _check_size(backbone, input_size)
        if backbone.imagenet_size and (height, width) != (backbone.imagenet_size,) * 2:
            warnings.warn(f"{backbone.name}'s ImageNet weights are documented for "
                          f"{backbone.imagenet_size}x{backbone.imagenet_size} inputs; got {height}x{width}",
                          stacklevel=3)  # the caller of keras_models.build_pooled_model
        return body(backbone, input_size, "imagenet")
    return _body_from_file(backbone, input_size, weights, weights_ordering)


def full_with_weights(backbone: Backbone, input_size: Sequence[int], weights: str | None,
                      weights_ordering: str = "auto"):
    """The full model at `input_size` with its weights; a file must hold the classifier
    (NoClassifier when it holds only the include_top=False model)."""
    weights = weights_argument(weights)
    height, width = _check_size(backbone, input_size)
    if weights == "imagenet":
        trained = _full(backbone, input_size, "imagenet")  # Keras builds it at the default size only
        if (height, width) == (backbone.default_size,) * 2:
            return trained
        model = _full(backbone, input_size, None)  # a pooling head: the same weights fit any size
        weight_files.copy_weights(trained, model)
        return model
    model = _full(backbone, input_size, None)
    if weights is None:
        return model
    _check_file(weights)
    if weight_files.is_legacy_file(weights):
        return _load_legacy(backbone, model, weights, weights_ordering, whole=True)
    try:
        weight_files.quietly(lambda: model.load_weights(weights))
    except ValueError as error:
        try:
            weight_files.quietly(lambda: body(backbone, input_size, weights))
        except ValueError:
            raise WeightsDoNotFit(f"weights file {weights!r} does not fit {backbone.name} with its classifier: "
                                  f"{' '.join(str(error).split())[:300]}") from None
        raise NoClassifier(f"--predictions needs the full model's weights; {weights!r} holds no classifier "
                           f"(an include_top=False file)") from None
    return model
