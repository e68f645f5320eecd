"""The backbone registry: every `keras.applications` model, one table row each, and what
depends on the row alone (preprocessing).

Keras and TensorFlow are imported inside the functions only, never at module import, so a
Beam worker can set `KERAS_BACKEND` and the thread-pool variables before Keras loads. This
module does not import Apache Beam. The models themselves are built by `pipeline.model.keras_models`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

POOLINGS = ("avg", "max", "gem")
# A keras-hub model's own image embedding (pipeline.model.hub), beside the poolings of its patch tokens.
MODEL_POOLING = "model"
ALL_POOLINGS = (MODEL_POOLING, *POOLINGS)
PREPROCESS_MODES = ("caffe", "tf", "torch", "builtin")


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
        `applications.body_with_weights` only warns at other sizes.
    classifier_input: the width of the full model's classifier input (the embedding with
        --predictions) where it is not `dim`: VGG's fc2 (4096), MobileNetV3's 1x1 conv before its
        logits (1024 / 1280). See `classifier_dim`.
    flatten_head: the full model's classifier flattens the feature map (VGG), so it runs at the
        default size only; other heads pool globally and run at any size.
    """
    name: str
    module: str
    preprocess: str
    default_size: int
    min_size: int
    dim: int
    imagenet_size: int | None = None
    classifier_input: int | None = None
    flatten_head: bool = False

    @property
    def classifier_dim(self) -> int:
        """The embedding's dimension with --predictions: the input width of the classifier."""
        return self.classifier_input or self.dim


# Checked against keras 3.15.1 (tests/model/test_backbones.py builds every row).
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
    Backbone("MobileNetV3Large",  "mobilenet_v3",        "builtin", 224,    32, 960, classifier_input=1280),
    Backbone("MobileNetV3Small",  "mobilenet_v3",        "builtin", 224,    32, 576, classifier_input=1024),
    Backbone("NASNetLarge",       "nasnet",              "tf",      331,    32, 4032, 331),
    Backbone("NASNetMobile",      "nasnet",              "tf",      224,    32, 1056, 224),
    Backbone("ResNet101",         "resnet",              "caffe",   224,    32, 2048),
    Backbone("ResNet101V2",       "resnet_v2",           "tf",      224,    32, 2048),
    Backbone("ResNet152",         "resnet",              "caffe",   224,    32, 2048),
    Backbone("ResNet152V2",       "resnet_v2",           "tf",      224,    32, 2048),
    Backbone("ResNet50",          "resnet50",            "caffe",   224,    32, 2048),
    Backbone("ResNet50V2",        "resnet_v2",           "tf",      224,    32, 2048),
    Backbone("VGG16",             "vgg16",               "caffe",   224,    32, 512, classifier_input=4096,
             flatten_head=True),
    Backbone("VGG19",             "vgg19",               "caffe",   224,    32, 512, classifier_input=4096,
             flatten_head=True),
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
        "dim_predictions": row.classifier_dim,
        "module": row.module,
    } for row in _TABLE]


def preprocess_batch(backbone: Backbone | str, x):
    """RGB 0..255 (N, H, W, 3) -> exactly `keras.applications.<module>.preprocess_input(x)`.

    Works on numpy arrays (copied first: Keras' preprocess_input edits float arrays in place)
    and on TF tensors, also inside a tf.function.
    """
    import keras

    backbone = get_backbone(backbone)
    preprocess_input = getattr(keras.applications, backbone.module).preprocess_input
    if isinstance(x, (np.ndarray, list, tuple)):
        x = np.array(x, dtype=np.float32, copy=True)
    return preprocess_input(x)


__all__ = ["ALL_POOLINGS", "BACKBONES", "Backbone", "MODEL_POOLING", "POOLINGS", "PREPROCESS_MODES", "get_backbone", "model_summary_rows",
           "preprocess_batch"]
