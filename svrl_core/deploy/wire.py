"""The wire format between policy server and robot: msgpack with numpy arrays as raw bytes.

Never pickle: a message decodes to dicts, lists, strings, numbers and arrays of a few plain
dtypes, whatever the sender put in it.
"""

from __future__ import annotations

import math

import msgpack
import numpy as np

ARRAY_TAG = "__ndarray__"
ARRAY_DTYPES = frozenset({"bool", "uint8", "int32", "int64", "float32", "float64"})


class WireError(ValueError):
    """Bytes that are not a valid message."""


def _encode(obj: object) -> object:
    if isinstance(obj, np.ndarray):
        if obj.dtype.name not in ARRAY_DTYPES:
            raise TypeError(f"wire: arrays of dtype {obj.dtype} cannot be sent; use one of {sorted(ARRAY_DTYPES)}")
        little = np.ascontiguousarray(obj, dtype=obj.dtype.newbyteorder("<"))
        return {ARRAY_TAG: obj.dtype.name, "shape": list(obj.shape), "data": little.tobytes()}
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"wire: cannot encode {type(obj).__name__}")


def _decode(obj: dict) -> object:
    if ARRAY_TAG not in obj:
        return obj
    dtype, shape, data = obj.get(ARRAY_TAG), obj.get("shape"), obj.get("data")
    if dtype not in ARRAY_DTYPES:
        raise WireError(f"array dtype {dtype!r} is not one of {sorted(ARRAY_DTYPES)}")
    if not (isinstance(shape, list) and all(isinstance(n, int) and n >= 0 for n in shape)) or len(shape) > 8:
        raise WireError(f"array shape {shape!r} is not a list of at most 8 non-negative integers")
    if not isinstance(data, bytes) or len(data) != math.prod(shape) * np.dtype(dtype).itemsize:
        raise WireError(f"array data does not hold {shape} values of {dtype}")
    return np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype).reshape(shape)


def pack(message: dict) -> bytes:
    return msgpack.packb(message, default=_encode, use_bin_type=True)


def unpack(payload: bytes) -> dict:
    """bytes -> message dict; raises WireError for anything else."""
    try:
        message = msgpack.unpackb(payload, object_hook=_decode, raw=False)
    except WireError:
        raise
    except Exception as err:  # msgpack raises several unrelated types for malformed input
        raise WireError(f"not a msgpack message ({type(err).__name__}: {err})") from None
    if not isinstance(message, dict):
        raise WireError(f"a message must be a map, got {type(message).__name__}")
    return message
