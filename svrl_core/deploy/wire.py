"""The wire format between policy server and robot: msgpack with numpy arrays as raw bytes.

Never pickle: a message decodes to dicts, lists, strings, numbers and arrays of a few plain
dtypes, whatever the sender put in it. Decoding is bounded before it builds anything big: a
container holds at most `max_items` entries and a message at most `max_containers` containers,
so a hostile 4 MiB frame costs the event loop microseconds, not seconds (msgpack's decoder holds
the interpreter lock, so moving it to a thread would stall every other robot just the same).
"""

from __future__ import annotations

import math

import msgpack
import numpy as np

ARRAY_TAG = "__ndarray__"
ARRAY_DTYPES = frozenset({"bool", "uint8", "int32", "int64", "float32", "float64"})
# A robot's request is a handful of maps (message, observation, images, one per array) and
# lists (array shapes); a server's metadata reply carries per-task metrics and file checksums.
REQUEST_LIMITS = (64, 256)  # (max_items, max_containers)
REPLY_LIMITS = (1 << 16, 1 << 16)


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


def _refuse_extension(code: int, data: bytes) -> object:
    raise WireError(f"msgpack extension type {code} is not part of the protocol")


def unpack(payload: bytes, limits: tuple[int, int] = REQUEST_LIMITS) -> dict:
    """bytes -> message dict, within `limits` (max_items, max_containers); raises WireError for anything else."""
    max_items, max_containers = limits
    containers = 0

    def counted(container):
        nonlocal containers
        containers += 1
        if containers > max_containers:
            raise WireError(f"more than {max_containers} maps and arrays in one message")
        return container

    def decoded_map(obj: dict) -> object:
        if not all(isinstance(key, str) for key in obj):
            raise WireError(f"map keys must be strings, got {sorted({type(k).__name__ for k in obj})}")
        return _decode(counted(obj))

    try:
        message = msgpack.unpackb(payload, object_hook=decoded_map, list_hook=counted, ext_hook=_refuse_extension,
                                  raw=False, max_array_len=max_items, max_map_len=max_items)
    except WireError:
        raise
    except Exception as err:  # msgpack raises several unrelated types for malformed input
        raise WireError(f"not a msgpack message ({type(err).__name__}: {err})") from None
    if not isinstance(message, dict):
        raise WireError(f"a message must be a map, got {type(message).__name__}")
    return message
