"""TFRecord files written by TensorFlow itself: the reference the TFRecord and shard readers are checked against."""
import tensorflow as tf


def example(**features) -> bytes:
    """A serialized tf.train.Example: bytes, float or int64 values (one or a list) by feature name."""
    def feature(value):
        if isinstance(value, bytes) or (isinstance(value, list) and value and isinstance(value[0], bytes)):
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=value if isinstance(value, list) else [value]))
        if isinstance(value, float) or (isinstance(value, list) and value and isinstance(value[0], float)):
            return tf.train.Feature(float_list=tf.train.FloatList(value=value if isinstance(value, list) else [value]))
        return tf.train.Feature(int64_list=tf.train.Int64List(value=value if isinstance(value, list) else [value]))

    return tf.train.Example(features=tf.train.Features(
        feature={name: feature(value) for name, value in features.items()})).SerializeToString()


def write_tfrecord(path, records, options=None):
    with tf.io.TFRecordWriter(str(path), options) as writer:
        for record in records:
            writer.write(record)
