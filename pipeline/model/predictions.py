"""--predictions K: each row's top-K classes, exactly as Keras's `decode_predictions(preds, top=K)`.

The model's classifier gives class probabilities beside the embedding (one forward pass);
here they become three columns: `predicted_ids` (K int32), `predicted_names` (K strings) and
`predicted_scores` (K float32), best first. The class names come from a class index JSON in
Keras's format (`{"0": ["n01440764", "tench"], ...}`): `--class-index FILE`, else Keras's own
`imagenet_class_index.json`, from Keras's cache (`~/.keras/models`, or `$KERAS_HOME`), fetched
by the launcher once and cached there when it is missing. Workers never download it: the
launcher hands them the names.
"""
from __future__ import annotations

import contextlib
import io
import json
from typing import Any, Sequence

import numpy as np

# What keras.applications.imagenet_utils.decode_predictions fetches, and the md5 Keras checks.
CLASS_INDEX_URL = "https://storage.googleapis.com/download.tensorflow.org/data/imagenet_class_index.json"
CLASS_INDEX_MD5 = "c2c37ea517e94d9795004a39431a14cb"
CLASS_INDEX_NAME = "imagenet_class_index.json"
IDS, NAMES, SCORES = "predicted_ids", "predicted_names", "predicted_scores"
IMAGENET_CLASSES = 1000  # the classifier of every keras.applications model
CLASSIFIER_OUTPUT = "predictions"  # the model output holding the class probabilities
COLUMNS = (IDS, NAMES, SCORES)


class ClassIndexError(ValueError):
    """The class names cannot be had: one sentence saying where featurize looked and what to do."""


def _keras_class_index() -> str:
    """Keras's cached class index, fetched into Keras's cache first when it is not there. Quietly:
    TensorFlow's start-up lines go to the log and Keras's "Downloading data from" line nowhere."""
    from pipeline.logs import native_stderr_to_log
    from pipeline.model.runtime import tensorflow_without_jax

    with native_stderr_to_log(), tensorflow_without_jax(), contextlib.redirect_stdout(io.StringIO()):
        import keras

        try:
            return keras.utils.get_file(CLASS_INDEX_NAME, CLASS_INDEX_URL, cache_subdir="models",
                                        file_hash=CLASS_INDEX_MD5)
        except Exception as exc:  # noqa: BLE001 - get_file raises bare Exception for a failed download
            reason = " ".join(str(exc).split())[:300]
            raise ClassIndexError(f"predictions need ImageNet's class names, and {CLASS_INDEX_NAME} is not in "
                                  f"Keras's cache and could not be downloaded from {CLASS_INDEX_URL} ({reason}); on "
                                  f"a machine without internet pass --class-index FILE with a copy of that file"
                                  ) from None


def load_class_names(class_index: str | None, classes: int) -> list[str]:
    """The name of each of `classes` classes, from `class_index` (a path) or Keras's ImageNet index."""
    path = class_index or _keras_class_index()
    try:
        with open(path, encoding="utf-8") as handle:
            index = json.load(handle)
    except (OSError, ValueError) as exc:
        raise ClassIndexError(f"class_index {path!r} cannot be read as JSON ({exc})") from None
    try:
        names = [str(index[str(i)][1]) for i in range(classes)]
    except (KeyError, IndexError, TypeError):
        raise ClassIndexError(f"class_index {path!r} must map every class \"0\" .. \"{classes - 1}\" to "
                              f"[id, name], as Keras's {CLASS_INDEX_NAME} does") from None
    if len(index) != classes:
        raise ClassIndexError(f"class_index {path!r} has {len(index)} classes but the model has {classes}")
    return names


def top_classes(probabilities: np.ndarray, k: int, names: Sequence[str]) -> dict[str, Any]:
    """One image's columns, in decode_predictions' order: `argsort()[-k:][::-1]`, then a stable
    sort by score, best first (so ties come out as Keras orders them)."""
    ids = probabilities.argsort()[-k:][::-1]
    ids = ids[np.argsort(-probabilities[ids], kind="stable")]
    return {IDS: ids.astype(np.int32), NAMES: [names[i] for i in ids],
            SCORES: probabilities[ids].astype(np.float32)}
