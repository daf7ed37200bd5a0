"""mnist.py - reads MNIST-style IDX files (gzipped or not) and prepares the
digits the way the project's models see them (28x28 padded to 32x32, [-1, 1]).

    images = read_idx("t10k-images-idx3-ubyte.gz")      # uint8 [N, 28, 28]
    images, labels, paths = load_split("/work/shared/data/mnist", "train")
    x = to_model_space(images)                           # float32 [N, 1, 32, 32]

Used by tools/train.py and tools/eval.py.
"""
import gzip
import hashlib
import os
import struct
import zlib

import numpy as np

DEFAULT_DIR = "/work/shared/data/mnist"
MODEL_SIZE = 32

# IDX type codes (the third byte of the magic number) and their big-endian dtypes.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path):
    with open(path, "rb") as source:
        data = source.read()
    # Gzip files start with 1f 8b; IDX files always start with two zero bytes.
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as error:
            raise ValueError(f"{path}: damaged gzip file ({error})") from error
    return data


def parse_idx(data, name="<bytes>"):
    """The array an IDX byte string holds, in native byte order."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{name}: not an IDX file (bad magic)")
    type_code, ndim = data[2], data[3]
    if type_code not in _IDX_DTYPES:
        raise ValueError(f"{name}: unknown IDX type code 0x{type_code:02x}")
    if ndim == 0:
        raise ValueError(f"{name}: IDX file with no dimensions")
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise ValueError(f"{name}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[4:header_size])
    dtype = _IDX_DTYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    body = data[header_size:]
    if len(body) != expected:
        raise ValueError(f"{name}: IDX body is {len(body)} bytes, shape {shape} needs {expected}")
    return np.frombuffer(body, dtype=dtype).astype(dtype.newbyteorder("=")).reshape(shape)


def read_idx(path):
    return parse_idx(_read_bytes(path), path)


def _split_path(directory, split, kind):
    """The file of a split ('train' or 't10k'), kind 'images' or 'labels';
    prefers the .gz name, falls back to the uncompressed one."""
    stem = f"{split}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
    for candidate in (stem + ".gz", stem):
        path = os.path.join(directory, candidate)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"no {stem}[.gz] in {directory}")


def load_split(directory=DEFAULT_DIR, split="train"):
    """(uint8 images [N,28,28], int64 labels [N], (image path, label path))."""
    image_path = _split_path(directory, split, "images")
    label_path = _split_path(directory, split, "labels")
    images = read_idx(image_path)
    labels = read_idx(label_path).astype(np.int64)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{split}: images {images.shape} do not match labels {labels.shape}")
    if labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"{split}: labels outside 0..9")
    return images, labels, (image_path, label_path)


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        for chunk in iter(lambda: source.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def to_model_space(images, size=MODEL_SIZE):
    """uint8 [N,H,W] -> float32 [N,1,size,size] in [-1,1], centred with the
    padding at the background value (-1)."""
    images = np.asarray(images)
    count, height, width = images.shape
    if height > size or width > size:
        raise ValueError(f"images {height}x{width} larger than {size}x{size}")
    top, left = (size - height) // 2, (size - width) // 2
    out = np.full((count, 1, size, size), -1.0, dtype=np.float32)
    out[:, 0, top:top + height, left:left + width] = images.astype(np.float32) / 127.5 - 1.0
    return out
