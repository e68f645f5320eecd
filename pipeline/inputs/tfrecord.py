"""The TFRecord container and the `tf.train.Example` message, read without TensorFlow.

A TFRecord file is a sequence of records, each framed as
``uint64 length | uint32 masked crc32c(length) | data | uint32 masked crc32c(data)``
(little-endian). An `Example` is the protobuf ``Example{features: Features{feature:
map<string, Feature>}}`` with ``Feature`` one of ``bytes_list`` / ``float_list`` /
``int64_list``. Both are decoded here in plain Python (the checksums by google-crc32c's C
code), so reading shards on a worker never imports TensorFlow; the tests write the files with
TensorFlow's own writer.
"""
from __future__ import annotations

import struct
from typing import BinaryIO, Iterator, Union

import google_crc32c

FeatureValues = Union[list[bytes], list[float], list[int]]

_HEADER = struct.Struct("<QI")
_CRC = struct.Struct("<I")
_MASK_DELTA = 0xA282EAD8


class TFRecordError(ValueError):
    """A TFRecord file or Example that is truncated or corrupt."""


def masked_crc32c(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def iter_records(handle: BinaryIO) -> Iterator[bytes]:
    """Every record's bytes, checksums verified; a truncated or corrupt record raises TFRecordError."""
    index = 0
    while True:
        header = handle.read(_HEADER.size)
        if not header:
            return
        if len(header) < _HEADER.size:
            raise TFRecordError(f"record {index} is truncated (its header has {len(header)} of 12 bytes)")
        length, length_crc = _HEADER.unpack(header)
        if masked_crc32c(header[:8]) != length_crc:
            raise TFRecordError(f"record {index} is corrupt (the checksum of its length does not match)")
        data = handle.read(length)
        footer = handle.read(_CRC.size)
        if len(data) < length or len(footer) < _CRC.size:
            raise TFRecordError(f"record {index} is truncated ({len(data)} of {length} bytes)")
        if masked_crc32c(data) != _CRC.unpack(footer)[0]:
            raise TFRecordError(f"record {index} is corrupt (the checksum of its data does not match)")
        yield data
        index += 1


# --------------------------------------------------------------------------- protobuf wire format


def _varint(buffer: memoryview, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if position >= len(buffer):
            raise TFRecordError("Example is truncated inside a varint")
        byte = buffer[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7
        if shift > 63:
            raise TFRecordError("Example has a varint longer than 10 bytes")


def _fields(buffer: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value) of a message: ints for varints and fixed fields, views for the rest."""
    position = 0
    while position < len(buffer):
        tag, position = _varint(buffer, position)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, position = _varint(buffer, position)
        elif wire == 1:
            value, position = int.from_bytes(buffer[position:position + 8], "little"), position + 8
        elif wire == 2:
            length, position = _varint(buffer, position)
            if position + length > len(buffer):
                raise TFRecordError("Example is truncated inside a field")
            value, position = buffer[position:position + length], position + length
        elif wire == 5:
            value, position = int.from_bytes(buffer[position:position + 4], "little"), position + 4
        else:
            raise TFRecordError(f"Example has a field of unknown wire type {wire}")
        if position > len(buffer):
            raise TFRecordError("Example is truncated inside a field")
        yield number, wire, value


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _feature_values(feature: memoryview) -> FeatureValues:
    """A Feature's values: bytes_list (1), float_list (2) or int64_list (3); packed or not."""
    for kind, _, payload in _fields(feature):
        if not isinstance(payload, memoryview):
            continue
        if kind == 1:
            return [bytes(value) for number, _, value in _fields(payload) if number == 1]
        values: list = []
        for number, wire, value in _fields(payload):
            if number != 1:
                continue
            if kind == 2 and wire == 2:  # packed floats
                values.extend(struct.unpack(f"<{len(value) // 4}f", value))
            elif kind == 2:
                values.append(struct.unpack("<f", struct.pack("<I", value))[0])
            elif kind == 3 and wire == 2:  # packed varints
                position = 0
                while position < len(value):
                    item, position = _varint(value, position)
                    values.append(_signed64(item))
            elif kind == 3:
                values.append(_signed64(value))
        return values
    return []


def parse_example(data: bytes) -> dict[str, FeatureValues]:
    """A serialized `tf.train.Example` -> {feature name: its values}."""
    features: dict[str, FeatureValues] = {}
    for number, _, payload in _fields(memoryview(data)):
        if number != 1 or not isinstance(payload, memoryview):
            continue
        for entry_number, _, entry in _fields(payload):  # Features: repeated map entries (field 1)
            if entry_number != 1 or not isinstance(entry, memoryview):
                continue
            name, feature = "", memoryview(b"")
            for part, _, value in _fields(entry):
                if part == 1 and isinstance(value, memoryview):
                    name = bytes(value).decode("utf-8", "replace")
                elif part == 2 and isinstance(value, memoryview):
                    feature = value
            features[name] = _feature_values(feature)
    return features
