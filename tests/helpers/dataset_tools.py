"""Datasets written by the libraries featurize's users have: Hugging Face `datasets` (Hub Parquet
shards, `save_to_disk` folders) and TensorFlow Datasets (a builder's TFRecord shards).

Not a test module. Each writer uses the library itself, so the files are exactly what users have.
"""
from __future__ import annotations

import pathlib


def _quiet_datasets():
    import datasets

    datasets.disable_progress_bars()
    return datasets


def hf_dataset(images: list[bytes | None], paths: list[str | None] | None = None, decode: bool = True):
    """A `datasets.Dataset` with an `image` column (`datasets.Image()`) and a `label`: the images
    embedded as bytes, or (paths given) path-only rows {"bytes": None, "path": ...}."""
    datasets = _quiet_datasets()
    paths = paths or [None] * len(images)
    features = datasets.Features({"image": datasets.Image(decode=decode), "label": datasets.Value("int64")})
    rows = [{"bytes": data, "path": path} for data, path in zip(images, paths)]
    return datasets.Dataset.from_dict({"image": rows, "label": list(range(len(rows)))}, features=features)


def write_hub_parquet(root: pathlib.Path, dataset, split: str = "train", shards: int = 2) -> str:
    """`data/SPLIT-0000i-of-0000n.parquet`, the Hub's layout (what `push_to_hub` uploads), each shard a
    contiguous slice written by `Dataset.to_parquet`; returns the glob a user selects the split with."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    for index in range(shards):
        part = dataset.shard(num_shards=shards, index=index, contiguous=True)
        part.to_parquet(str(root / "data" / f"{split}-{index:05d}-of-{shards:05d}.parquet"))
    return f"{root}/data/{split}-*.parquet"


def save_to_disk(folder: pathlib.Path, splits: dict[str, object]) -> str:
    """`DatasetDict(splits).save_to_disk(folder)` (one dataset: `Dataset.save_to_disk`, two shards)."""
    datasets = _quiet_datasets()
    if len(splits) == 1:
        next(iter(splits.values())).save_to_disk(str(folder), num_shards=2)
    else:
        datasets.DatasetDict(splits).save_to_disk(str(folder))
    return str(folder)


def write_tfds(data_dir: pathlib.Path, splits: dict[str, list[tuple[str, str]]]) -> pathlib.Path:
    """A TensorFlow Datasets builder run offline into `data_dir`: features `image` (the JPEG files
    given, stored as they are), `image/filename` and `label`; splits of (filename, path) examples.
    Returns the version folder holding `featurize_tiny-SPLIT.tfrecord-00000-of-00001`."""
    import tensorflow_datasets as tfds

    class FeaturizeTiny(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        # As a builder in a user's script: TFDS looks for the code of a builder in a package with
        # importlib_resources, which TFDS 4.9 requires only on Python < 3.9.
        __module__ = "__main__"
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                "image/filename": tfds.features.Text(),
                "label": tfds.features.ClassLabel(names=["even", "odd"])}))

        def _split_generators(self, dl_manager):
            return {name: self._generate_examples(examples) for name, examples in splits.items()}

        def _generate_examples(self, examples):
            for index, (filename, path) in enumerate(examples):
                yield filename, {"image": path, "image/filename": filename, "label": index % 2}

    builder = FeaturizeTiny(data_dir=str(data_dir))
    builder.download_and_prepare()
    return pathlib.Path(builder.data_dir)
