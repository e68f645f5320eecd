"""Inputs: what --input names, listing it, and reading a unit's records. Never imports TensorFlow or Keras.

layouts (the one table of input kinds and suffixes) -> listing (resolve --input, list, key files)
-> reading (a unit's records by its layout, a row's uri): fetch (one file or URL), tar,
record_shards (TFRecord via tfrecord, Parquet, Arrow), path_lists; retries tells transient failures.
"""
