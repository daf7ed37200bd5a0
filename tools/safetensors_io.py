"""safetensors_io.py - a minimal reader/writer of the .safetensors format with
numpy and json only (the `safetensors` package is not a dependency).

    write(path, {name: array or ('bf16', float32 array)}, {key: value})
    tensors, metadata = read(path)      # BF16 and F16 come back as float32

The header is compact JSON padded with spaces to a multiple of 8 bytes, as the
Hugging Face library writes it, so the data section starts 8-byte aligned.
"""
import json
import struct

import numpy as np

_NUMPY_TO_SAFETENSORS = {
    np.dtype(np.float32): "F32",
    np.dtype(np.float16): "F16",
    np.dtype(np.float64): "F64",
    np.dtype(np.int64): "I64",
    np.dtype(np.int32): "I32",
}
_SAFETENSORS_TO_NUMPY = {v: k for k, v in _NUMPY_TO_SAFETENSORS.items()}


def float32_to_bf16_bits(values):
    """Rounds float32 to bfloat16 (nearest, ties to even, as torch does) and
    returns the 16-bit patterns."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounding_bias = 0x7FFF + ((bits >> 16) & 1)
    rounded = ((bits + rounding_bias) >> 16).astype(np.uint16)
    nan = np.isnan(np.asarray(values, dtype=np.float32))
    # Rounding could carry a NaN's payload into the exponent; keep it a quiet NaN.
    rounded[nan] = ((bits[nan] >> 16).astype(np.uint16)) | np.uint16(0x0040)
    return rounded


def bf16_bits_to_float32(bits):
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def round_to_bf16(values):
    """float32 values exactly representable in bfloat16 (nearest-even)."""
    return bf16_bits_to_float32(float32_to_bf16_bits(values)).reshape(np.shape(values))


def _encode(value):
    if isinstance(value, tuple):
        kind, array = value
        if kind != "bf16":
            raise ValueError(f"unknown tagged dtype {kind!r}")
        array = np.asarray(array, dtype=np.float32)
        return "BF16", list(array.shape), float32_to_bf16_bits(array).astype("<u2").tobytes()
    array = np.asarray(value)
    if array.dtype not in _NUMPY_TO_SAFETENSORS:
        raise ValueError(f"unsupported dtype {array.dtype}")
    little_endian = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return _NUMPY_TO_SAFETENSORS[array.dtype], list(array.shape), np.ascontiguousarray(little_endian).tobytes()


def write(path, tensors, metadata=None):
    header = {}
    if metadata:
        for key, value in metadata.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise ValueError(f"metadata must map str to str: {key!r}: {value!r}")
        header["__metadata__"] = dict(metadata)
    blobs = []
    offset = 0
    for name in sorted(tensors):
        dtype, shape, blob = _encode(tensors[name])
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(header_bytes)))
        out.write(header_bytes)
        for blob in blobs:
            out.write(blob)


def read(path):
    with open(path, "rb") as source:
        data = source.read()
    if len(data) < 8:
        raise ValueError(f"{path}: too short for a safetensors file")
    (header_size,) = struct.unpack("<Q", data[:8])
    if 8 + header_size > len(data):
        raise ValueError(f"{path}: header length {header_size} past the end of the file")
    header = json.loads(data[8:8 + header_size].decode("utf-8"))
    metadata = header.pop("__metadata__", None) or {}
    body = data[8 + header_size:]
    tensors = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"])
        raw = body[begin:end]
        if info["dtype"] == "BF16":
            array = bf16_bits_to_float32(np.frombuffer(raw, dtype="<u2")).reshape(shape)
        elif info["dtype"] == "F16":
            array = np.frombuffer(raw, dtype="<f2").astype(np.float32).reshape(shape)
        elif info["dtype"] in _SAFETENSORS_TO_NUMPY:
            numpy_dtype = _SAFETENSORS_TO_NUMPY[info["dtype"]]
            array = np.frombuffer(raw, dtype=numpy_dtype.newbyteorder("<")).astype(numpy_dtype).reshape(shape)
        else:
            raise ValueError(f"{path}: tensor {name}: unsupported dtype {info['dtype']}")
        tensors[name] = array
    return tensors, metadata


def read_raw(path):
    """(header, body): the header's JSON as a dict (__metadata__ included) and
    the data section's bytes untouched, for rewriting a file's header only."""
    with open(path, "rb") as source:
        data = source.read()
    (header_size,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + header_size].decode("utf-8")), data[8 + header_size:]


def write_raw(path, header, body):
    """The inverse of read_raw: header (padded with spaces to 8 bytes) then body."""
    header_bytes = json.dumps(header).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(header_bytes)) + header_bytes + body)


def _read_header(path):
    with open(path, "rb") as source:
        (header_size,) = struct.unpack("<Q", source.read(8))
        return json.loads(source.read(header_size).decode("utf-8"))


def read_metadata(path):
    """The file's "__metadata__" strings, without reading the tensors."""
    return _read_header(path).get("__metadata__") or {}


def read_dtypes(path):
    """The stored dtype name of each tensor (e.g. to check what a writer chose)."""
    header = _read_header(path)
    header.pop("__metadata__", None)
    return {name: info["dtype"] for name, info in header.items()}
