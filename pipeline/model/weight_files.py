"""Weights files: which format a file has, and loading a legacy `.h5` into a Keras model.

Keras 3 files (`.weights.h5`, `.keras`) are Keras's own format and Keras loads them. Every other
`.h5` / `.hdf5` is a legacy file, read here into its weighted layers in file order:

- `layer_names` files of Keras 1 and 2 (`save_weights`, or a whole saved model's `model_weights`
  group): one group per layer, its arrays listed in the group's `weight_names`;
- `nb_layers` files of Keras 0.x/1 Sequential models: root attribute `nb_layers`, groups
  `layer_{k}` with attribute `nb_params` and datasets `param_{p}`; groups without params
  (padding, pooling, flatten, dropout) are skipped.

The file's weighted layers are paired with the model's in order; a file holding more (a full
model's classifier after the body) loads into the body and the rest is ignored. A layer whose
arrays do not fit stops the load with one sentence naming it.

Kernel ordering (`ordering`: auto, th, tf). Theano-era files differ from today's in two ways:
their dim ordering (channels first) stores conv kernels as (out, in, kh, kw), which are
transposed to Keras's (kh, kw, in, out), and the rows of a Dense layer fed by a Flatten come in
(C, H, W) order, which are reordered to (H, W, C) (Keras's `convert_dense_weights_data_format`);
and Theano kernels are flipped spatially (Theano convolves, TensorFlow correlates), which is
undone as `keras.utils.convert_all_kernels_in_model` did. `th` means both, `tf` neither. `auto`
reads Keras's file naming (`_th_dim_ordering`, `_tf_dim_ordering`, `_th_kernels`, `_tf_kernels`)
and a Keras 2 file's `backend` attribute; what the name does not say comes from the shapes
(kernels that fit only as (out, in, kh, kw) make a channels-first file, whose kernels are Theano
kernels unless the name says `_tf_kernels`).

BatchNormalization in `layer_names` files loads as gamma, beta, mean, variance (Keras 1 saved the
variance under the name `running_std`). Keras 0.x `nb_layers` files stored a true standard
deviation, under an epsilon the file does not record, so their BatchNormalization layers are
refused. Nothing here imports Keras: layers are told apart by their class names.
"""
from __future__ import annotations

import collections
import os
import re
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

KERAS3_SUFFIXES = (".weights.h5", ".keras")
LEGACY_SUFFIXES = (".h5", ".hdf5")
ORDERINGS = ("auto", "th", "tf")
_PARTIAL_LOAD_WARNINGS = ("freshly-initialized", "could not be loaded")


class WeightsDoNotFit(ValueError):
    """A weights file that does not fit the model; `reason` is one clause naming the first layer that does not."""

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason or message


class NoClassifier(WeightsDoNotFit):
    """A file without the full model's classifier where the classifier was asked for (--predictions)."""


def is_keras3_file(path: str) -> bool:
    return path.endswith(KERAS3_SUFFIXES)


def is_legacy_file(path: str) -> bool:
    return path.endswith(LEGACY_SUFFIXES) and not is_keras3_file(path)


@dataclass(frozen=True)
class SavedLayer:
    name: str
    values: tuple[np.ndarray, ...]


@dataclass(frozen=True)
class LegacyFile:
    layout: str  # "layer_names" (Keras 1/2) or "nb_layers" (Keras 0.x/1 Sequential)
    layers: tuple[SavedLayer, ...]  # the weighted layers, in file order
    backend: str | None  # the `backend` attribute Keras 2 writes ("theano", "tensorflow")


def _text(value: Any) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _attribute(group, name: str) -> list[str]:
    """A list attribute; Keras splits long ones into name0, name1, ..."""
    if name in group.attrs:
        return [_text(v) for v in group.attrs[name]]
    chunks, index = [], 0
    while f"{name}{index}" in group.attrs:
        chunks.extend(_text(v) for v in group.attrs[f"{name}{index}"])
        index += 1
    return chunks


def read_legacy(path: str) -> LegacyFile:
    """The weighted layers of a legacy `.h5` weights or model file, in file order."""
    import h5py

    with h5py.File(path, "r") as handle:
        if "nb_layers" in handle.attrs:
            layout, layers = "nb_layers", []
            for k in range(int(handle.attrs["nb_layers"])):
                group = handle[f"layer_{k}"]
                count = int(group.attrs["nb_params"])
                if count:
                    layers.append(SavedLayer(f"layer_{k}", tuple(np.asarray(group[f"param_{p}"])
                                                                 for p in range(count))))
        else:
            group = handle
            if not _attribute(handle, "layer_names") and "model_weights" in handle:
                group = handle["model_weights"]  # a whole model saved with model.save()
            layout, layers = "layer_names", []
            for name in _attribute(group, "layer_names"):
                weight_names = _attribute(group[name], "weight_names")
                if weight_names:
                    layers.append(SavedLayer(name, tuple(np.asarray(group[name][w]) for w in weight_names)))
        backend = _text(handle.attrs["backend"]) if "backend" in handle.attrs else None
    if not layers:
        raise WeightsDoNotFit(f"weights file {path!r} holds no layer weights (neither Keras's layer_names "
                              f"layout nor the Keras-1 nb_layers layout)")
    return LegacyFile(layout, tuple(layers), backend)


@dataclass(frozen=True)
class KernelOrdering:
    theano_kernels: bool | None  # flipped spatially; None: not said, follows channels_first
    channels_first: bool | None  # Theano's dim ordering; None: not said, read from the kernel shapes


def kernel_ordering(path: str, ordering: str, backend: str | None = None) -> KernelOrdering:
    """What `--weights-ordering` and the file's name (and `backend` attribute) say about its kernels."""
    if ordering == "th":
        return KernelOrdering(True, True)
    if ordering == "tf":
        return KernelOrdering(False, False)
    if ordering != "auto":
        raise ValueError(f"weights_ordering {ordering!r} is not valid; choose one of: {', '.join(ORDERINGS)}")
    name = os.path.basename(path)
    kernels = re.search(r"_(th|tf)_kernels", name)
    dims = re.search(r"_(th|tf)_dim_ordering", name)
    theano = kernels.group(1) == "th" if kernels else (True if backend == "theano" else None)
    return KernelOrdering(theano, dims.group(1) == "th" if dims else None)


def _transposed(shape: tuple) -> tuple:
    """A (kh, kw, in, out) kernel's shape in Theano's (out, in, kh, kw) order."""
    return (shape[3], shape[2], shape[0], shape[1])


def _fits(expected: list[tuple], got: list[tuple], transposable: bool) -> bool:
    return len(expected) == len(got) and all(
        e == g or (transposable and len(e) == 4 and _transposed(e) == g) for e, g in zip(expected, got))


def _variables(layer) -> list:
    return layer.trainable_weights + layer.non_trainable_weights  # the order legacy files use


def _flattened_map(layer) -> tuple[int, int, int] | None:
    """(H, W, C) of the feature map a Flatten turned into this Dense layer's input, if it is one."""
    if type(layer).__name__ != "Dense":
        return None
    history = getattr(layer.input, "_keras_history", None)
    source = history[0] if history else None
    if type(source).__name__ != "Flatten" or len(source.input.shape) != 4:
        return None
    return tuple(int(side) for side in source.input.shape[1:])


def _shapes(shapes: list[tuple]) -> str:
    return ", ".join(str(tuple(int(side) for side in shape)) for shape in shapes) or "none"


def load_legacy(model, path: str, ordering: str = "auto", *, whole: bool = False) -> None:
    """Load a legacy `.h5` into `model`'s weighted layers, in order.

    whole=False: the file may go on after the model (a full model's classifier loads into its
    body). whole=True: the file must hold every layer, classifier included (NoClassifier when it
    ends where the classifier begins). Raises WeightsDoNotFit naming the first layer that does not fit.
    """
    saved = read_legacy(path)
    declared = kernel_ordering(path, ordering, saved.backend)
    targets = [layer for layer in model.layers if layer.weights]
    pairs = list(zip(targets, saved.layers))
    for index, (layer, stored) in enumerate(pairs):
        expected = [tuple(v.shape) for v in _variables(layer)]
        got = [value.shape for value in stored.values]
        if not _fits(expected, got, transposable=declared.channels_first is not False):
            raise WeightsDoNotFit(
                f"layer {layer.name!r} (weighted layer {index + 1} of {len(targets)}) needs weights of shapes "
                f"{_shapes(expected)}, but the file's {stored.name!r} has {_shapes(got)}")
        if saved.layout == "nb_layers" and type(layer).__name__ == "BatchNormalization":
            raise WeightsDoNotFit(
                f"layer {layer.name!r} is a BatchNormalization and the file's {stored.name!r} is Keras 0.x's, "
                f"whose running_std is a standard deviation under an epsilon the file does not record; convert "
                f"the file with the Keras that wrote it (save_weights), then pass that file")
    if len(saved.layers) < len(targets):
        missing = targets[len(saved.layers)]
        if whole:
            raise NoClassifier(f"--predictions needs the full model's weights; {path!r} ends before layer "
                               f"{missing.name!r}, so it holds no classifier (an include_top=False file)")
        raise WeightsDoNotFit(f"the file ends after {len(saved.layers)} weighted layers, before layer "
                              f"{missing.name!r} (weighted layer {len(saved.layers) + 1} of {len(targets)})")
    if whole and len(saved.layers) > len(targets):
        extra = saved.layers[len(targets)]
        raise WeightsDoNotFit(f"the file has {len(saved.layers)} weighted layers and the model {len(targets)}; "
                              f"nothing in the model takes the file's {extra.name!r}")

    channels_first = declared.channels_first
    if channels_first is None:  # from the shapes: a kernel that fits only as (out, in, kh, kw)
        channels_first = any(
            value.ndim == 4 and value.shape != tuple(v.shape) and value.shape == _transposed(tuple(v.shape))
            for layer, stored in pairs for v, value in zip(_variables(layer), stored.values))
    flip = channels_first if declared.theano_kernels is None else declared.theano_kernels
    for layer, stored in pairs:
        flattened = _flattened_map(layer) if channels_first else None
        for variable, value in zip(_variables(layer), stored.values):
            shape = tuple(variable.shape)
            if value.ndim == 4:
                if value.shape == _transposed(shape) and (value.shape != shape or channels_first):
                    value = value.transpose(2, 3, 1, 0)
                if flip:
                    value = value[::-1, ::-1]
            elif flattened is not None and value.ndim == 2:
                height, width, channels = flattened  # rows saved in (C, H, W) order
                value = value.reshape(channels, height, width, -1).transpose(1, 2, 0, 3).reshape(shape)
            variable.assign(np.ascontiguousarray(value))


def quietly(attempt: Callable[[], Any]) -> Any:
    """Run one Keras loading attempt with its warnings held back: a failed attempt's warnings are
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


def copy_weights(source, target) -> None:
    """Copy every weighted layer of `target` from `source`, pairing layers by (class, order of
    appearance) -- the scheme of Keras 3's own `.weights.h5` files, which survives Keras'
    auto-generated names and the renamed ConvNeXt head norm; every shape must match."""
    by_class: dict[str, list] = collections.defaultdict(list)
    for layer in source.layers:
        if layer.weights:
            by_class[type(layer).__name__].append(layer)
    taken: dict[str, int] = collections.defaultdict(int)
    pairs = []
    for layer in (layer for layer in target.layers if layer.weights):
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
