"""The Keras models featurize runs, on top of a backbone built with its weights
(`pipeline.model.applications`): the include_top=False body with pooled outputs
(`build_pooled_model`), or the full model with the classifier (`build_classifier_model`, for
--predictions); the layers a backbone offers (`list_layers`, `default_layer`) and the names of
the outputs (`output_name`).

Keras and TensorFlow are imported inside the functions only, never at module import, so a
Beam worker can set `KERAS_BACKEND` and the thread-pool variables before Keras loads (the
custom layers of `pipeline.model.layers` are made on first use, too).

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

Layer names are reproducible across processes (see `pipeline.model.applications`), so names
listed by `list_layers` on one machine are valid on every worker.

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

from typing import Sequence

from pipeline.model import applications
from pipeline.model.backbones import ALL_POOLINGS, POOLINGS, Backbone, get_backbone
from pipeline.model.layers import custom_layers

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
    if pooling not in ALL_POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose from: {', '.join(ALL_POOLINGS)}")
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


# --------------------------------------------------------------------------- layers


_FINAL_LAYERS: dict[str, str] = {}  # backbone name -> its final layer's name, once known in this process


def default_layer(backbone: Backbone | str) -> str:
    """Name of the final layer of the include_top=False model (builds it once, weights=None)."""
    backbone = get_backbone(backbone)
    if backbone.name not in _FINAL_LAYERS:
        model = applications.body(backbone, (backbone.min_size, backbone.min_size))
        _FINAL_LAYERS[backbone.name] = model.layers[-1].name
    return _FINAL_LAYERS[backbone.name]


def list_layers(backbone: Backbone | str, input_size: Sequence[int]) -> list[tuple[str, tuple]]:
    """(layer name, output shape) of every layer with a 4-D (N, H, W, C) output, input excluded,
    in model order; the last one is `default_layer`. Built with weights=None."""
    backbone = get_backbone(backbone)
    model = applications.body(backbone, input_size)
    _FINAL_LAYERS.setdefault(backbone.name, model.layers[-1].name)
    return list(applications.spatial_layers(model).items())


# --------------------------------------------------------------------------- models


def pooling_layer(pooling: str, name: str, gem_p: float = 3.0):
    """The global pooling layer of `pooling` (avg, max, gem) over (N, H, W, C) maps, float32 out."""
    import keras

    if pooling == "avg":
        return keras.layers.GlobalAveragePooling2D(name=name, dtype="float32")
    if pooling == "max":
        return keras.layers.GlobalMaxPooling2D(name=name, dtype="float32")
    return custom_layers().GeneralizedMeanPooling2D(p=gem_p, name=name, dtype="float32")


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
    import keras

    backbone = get_backbone(backbone)
    poolings = _unique(poolings)
    if not poolings:
        raise ValueError(f"no pooling given; choose from: {', '.join(POOLINGS)}")
    for pooling in poolings:
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choose from: {', '.join(POOLINGS)}")
    if "gem" in poolings and not gem_p > 0:
        raise ValueError(f"gem_p must be > 0; got {gem_p}")
    requested = [None] if not layers else _unique(layers)

    base = applications.body_with_weights(backbone, input_size, weights, weights_ordering)
    final = base.layers[-1].name
    _FINAL_LAYERS.setdefault(backbone.name, final)
    spatial = applications.spatial_layers(base)
    unknown = [layer for layer in requested if layer is not None and layer not in spatial]
    if unknown:
        raise ValueError(f"{backbone.name} has no layer {', '.join(map(repr, unknown))} with a spatial "
                         f"(N, H, W, C) output; valid layers: {', '.join(spatial)}")
    if None in requested and final in requested:  # the same layer twice under two spellings
        requested.remove(None)

    custom = custom_layers()
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
            pooled = pooling_layer(pooling, f"{tag}_pool", gem_p)(feature_map)
            if post_norm is not None:
                pooled = post_norm(pooled)
                pooled = keras.layers.Activation("linear", name=f"{tag}_float32", dtype="float32")(pooled)
            if l2_normalize:
                pooled = custom.L2Normalize(name=f"{tag}_l2", dtype="float32")(pooled)
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
    import keras

    backbone = get_backbone(backbone)
    full = applications.full_with_weights(backbone, input_size, weights, weights_ordering)
    classifier = [layer for layer in full.layers if layer.weights][-1]
    features = classifier.input
    if len(features.shape) > 2:  # MobileNet's 1x1 convolution classifiers take (N, 1, 1, D)
        features = keras.layers.Flatten(name="featurize_classifier_input")(features)
    embedding = keras.layers.Activation("linear", name="featurize_embedding", dtype="float32")(features)
    if l2_normalize:
        embedding = custom_layers().L2Normalize(name="featurize_embedding_l2", dtype="float32")(embedding)
    predictions = keras.layers.Activation("linear", name="featurize_predictions", dtype="float32")(full.outputs[0])
    return keras.Model(inputs=full.inputs[0], outputs={EMBEDDING: embedding, PREDICTIONS: predictions},
                       name=f"featurize_{backbone.name.lower()}_classifier")


__all__ = ["EMBEDDING", "PREDICTIONS", "build_classifier_model", "build_pooled_model", "default_layer",
           "list_layers", "output_name"]
