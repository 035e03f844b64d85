"""Robot-side runtime of an exported svrl policy bundle.

This file is copied into every bundle and needs only numpy and torch (and `tokenizers` for
an OpenVLA-OFT bundle, whose instructions become Llama tokens, and Pillow for one whose images take
the JPEG + lanczos3 path of upstream LIBERO checkpoints): no svrl code.

    policy = BundlePolicy("path/to/bundle")                       # checks manifest.json
    policy = BundlePolicy("path/to/bundle", signing_key=key)      # ... and manifest.sig (HMAC-SHA256)
    chunk = policy.act(image, proprio, "move to the red disc")    # (K, D) actions to execute

Loading a bundle runs none of its code
--------------------------------------
The bundle (format svrl-bundle-v2) is data only: `policy.json`, the network as torch.export's JSON
serialization of the graph, and `policy.safetensors`, its weights and tensor constants as raw
little-endian bytes. Loading never calls torch.load, pickle, torch.export.load or a zip reader:

- the weights are parsed here (an 8-byte length, a JSON header, raw bytes) and copied into tensors
  this runtime allocates: nothing in the file is unpickled or executed;
- torch's JSON deserializer is not safe on its own: it passes symbolic shape strings to
  sympy.sympify (which is eval), compiles `guards_code` strings into Python with exec, imports
  modules named in pytree contexts, resolves node targets by walking attributes of torch, math
  and operator (torch.os.system included) and generates Python source from node names. So
  `check_program` first refuses any program outside the small subset svrl exports: every node
  target is one of the ATen operators in ALLOWED_OPS (tensor arithmetic, no I/O, no raw storage)
  or a symbolic-size operator; every name is a plain identifier or dotted path; shape expressions
  and guards must match a grammar of literals, sizes and comparisons (no attribute access, no
  calls other than sympy constructors); pytree specs may name tuple, list and dict only; no node
  metadata, higher-order operators, custom objects, operator arguments or subgraphs. Only a
  program that passes is handed to torch (torch._export.serde, the deserializer behind
  torch.export.load: a bundle needs a torch that reads its schema; re-export after an upgrade).

Every file the runtime uses (bundle.json, policy.json, policy.safetensors, provenance.json and the
tokenizer) is read once into memory, checked against manifest.json (size and sha256), and then
used from those same bytes, so it cannot change between the check and the use. The manifest
must list each of them, names must be plain relative paths inside the bundle (no absolute paths,
`..`, backslashes or symlinks leading out), and a malformed manifest is refused with one line
naming the problem. Files in the directory that the manifest does not list are ignored: the
runtime never reads them (a `__pycache__` beside runtime.py is harmless).

The manifest says what the bundle is, not who made it: anyone who can write the directory can
rewrite it. With `signing_key`, manifest.sig must hold the HMAC-SHA256 of manifest.json's exact
bytes under that key (`sign_bundle`), checked in constant time before the manifest is parsed;
since the manifest holds every file's sha256, the signature covers the whole bundle. Without a
key, manifest.sig is not looked at. Residual risk: the allowed ATen kernels run on bundle-chosen
shapes and values, so a flaw in one of them could still be reachable; sign bundles that come
from anywhere you do not control.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
SPEC = "bundle.json"
PROGRAM = "policy.json"
WEIGHTS = "policy.safetensors"
PROVENANCE = "provenance.json"
REQUIRED_FILES = (SPEC, PROGRAM, WEIGHTS, PROVENANCE)  # and the tokenizer, when bundle.json names one
BUNDLE_FORMAT = "svrl-bundle-v2"
MANIFEST_FORMAT = "svrl-bundle-manifest-v2"
REFETCH = "re-export it (`dvc repro export`) or restore it (`dvc checkout exports/policy_bundle`)"
MIN_KEY_BYTES = 16


class BundleError(ValueError):
    """The bundle is incomplete or differs from what was exported."""


class ProgramError(ValueError):
    """An exported program outside what this runtime agrees to load (see check_program)."""


DECODINGS = ("argmax", "mean")
IMAGE_RESIZES = ("none", "jpeg-lanczos3")  # bundle.json preprocessing.image_resize (absent: none)
GRIPPER_CONVENTIONS = ("env", "open_is_one")  # postprocessing.gripper_convention (absent: env)


def decode_bins(logits: torch.Tensor, decoding: str) -> torch.Tensor:
    """(..., n_bins) logits -> (...) int64: each action token's deterministic bin.

    argmax: the most likely bin (OpenVLA). mean: the bin nearest the token distribution's
    expected bin. Training labels pile up in the edge bins (saturated, clipped actions), so
    argmax often jumps to a full-scale action where the distribution's bulk asks for a small
    one; the mean follows the bulk (docs/results/libero.md has the measurements). svrl's in-process
    greedy actions call this same function, so a bundle acts exactly like its policy.
    """
    if decoding == "argmax":
        return logits.argmax(-1)
    if decoding == "mean":
        probs = logits.float().softmax(-1)  # (..., n_bins)
        return (probs @ torch.arange(probs.shape[-1], dtype=probs.dtype)).round().long()
    raise ValueError(f"unknown decoding {decoding!r}: use one of {list(DECODINGS)}")


def jpeg_lanczos3_resize(images: np.ndarray, size: int, quality: int) -> np.ndarray:
    """(B, H, W, 3) uint8 -> (B, size, size, 3) uint8: JPEG encode at `quality` (4:2:0) and decode, then an
    antialiased lanczos3 resize of each channel in float32, rounded: what upstream OpenVLA-OFT / SimpleVLA-RL
    LIBERO checkpoints saw (svrl's policies/openvla_oft/conventions.py documents the rule and its tolerance;
    tests pin the two implementations to the same bytes)."""
    import io

    from PIL import Image  # only bundles that ask for this path need Pillow

    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="JPEG", quality=quality, subsampling=2)
        buffer.seek(0)
        with Image.open(buffer, formats=["JPEG"]) as decoded:  # the bytes just written, never a file
            pixels = np.asarray(decoded.convert("RGB"), dtype=np.float32)  # (H, W, 3)
        # each channel as a float image: no uint8 rounding between the two passes (as TensorFlow's float32)
        resized = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(pixels[..., c])).resize(
            (size, size), Image.LANCZOS)) for c in range(3)], axis=-1)  # (size, size, 3) float32
        out[i] = np.clip(np.round(resized), 0, 255).astype(np.uint8)
    return out


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# signing


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, (bytes, bytearray)):
        raise TypeError(f"a bundle signing key must be bytes, got {type(key).__name__} (encode a text key first)")
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"a bundle signing key must be at least {MIN_KEY_BYTES} bytes, got {len(key)}")
    return bytes(key)


def manifest_signature(manifest_bytes: bytes, key: bytes) -> str:
    """HMAC-SHA256 of the manifest's exact bytes under `key`, as 64 hex digits (what manifest.sig holds)."""
    return hmac.new(_check_key(key), manifest_bytes, hashlib.sha256).hexdigest()


def sign_bundle(directory: str | Path, key: bytes) -> str:
    """Check the bundle against its manifest, then write manifest.sig: the HMAC-SHA256 of the
    manifest bytes just checked, under `key` (bytes you keep secret, >= 16 of them). Returns the
    signature. A bundle that does not match its manifest is refused (BundleError), never signed."""
    directory = Path(directory)
    raw = _read_manifest_bytes(directory)
    manifest = _parse_manifest(directory, raw)
    for name, entry in sorted(manifest["files"].items()):
        _verify_file(directory, name, entry)
    signature = manifest_signature(raw, key)
    fd, tmp = tempfile.mkstemp(prefix=f".{SIGNATURE}.tmp-", dir=directory)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(signature + "\n")
        os.replace(tmp, directory / SIGNATURE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return signature


def _check_signature(directory: Path, raw: bytes, key: bytes) -> None:
    expected = manifest_signature(raw, key)
    try:
        given = (directory / SIGNATURE).read_bytes().strip()
    except FileNotFoundError:
        raise BundleError(f"bundle {directory}: it is not signed (no {SIGNATURE}) but a signing key was given; "
                          f"sign it with that key (`sign_bundle`) or fetch the signed release") from None
    except OSError as err:
        raise BundleError(f"bundle {directory}: {SIGNATURE} cannot be read ({err}); fetch the signed release") from None
    if not re.fullmatch(rb"[0-9a-f]{64}", given):
        raise BundleError(f"bundle {directory}: {SIGNATURE} is not 64 lowercase hex digits (an HMAC-SHA256); "
                          f"sign the bundle again (`sign_bundle`) or fetch the signed release")
    if not hmac.compare_digest(given, expected.encode()):
        raise BundleError(f"bundle {directory}: {SIGNATURE} does not match {MANIFEST} under this key: the manifest "
                          f"was changed after signing or signed with another key; {REFETCH} and sign it again")


# ---------------------------------------------------------------------------------------------
# the manifest


def _strict_json(raw: bytes):
    """JSON that refuses duplicate keys (the last one would silently win)."""
    def unique(pairs: list) -> dict:
        out: dict = {}
        for key, value in pairs:
            if key in out:
                raise ValueError(f"duplicate key {key!r}")
            out[key] = value
        return out

    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=unique)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _read_manifest_bytes(directory: Path) -> bytes:
    try:
        return (directory / MANIFEST).read_bytes()
    except OSError as err:
        raise BundleError(f"bundle {directory}: no readable {MANIFEST} ({err}); {REFETCH}") from None


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _parse_manifest(directory: Path, raw: bytes) -> dict:
    """The manifest, refused unless it is a v2 manifest whose every entry is a plain relative name
    inside the bundle with a sha256 and a byte count, listing every file the runtime reads."""
    def bad(problem: str) -> BundleError:
        return BundleError(f"bundle {directory}: {MANIFEST} {problem}; {REFETCH}")

    try:
        manifest = _strict_json(raw)
    except ValueError as err:
        raise BundleError(f"bundle {directory}: no readable {MANIFEST} ({err}); {REFETCH}") from None
    if not isinstance(manifest, dict):
        raise bad(f"is a JSON {type(manifest).__name__}, not an object")
    if manifest.get("format") != MANIFEST_FORMAT:
        if manifest.get("format") == "svrl-bundle-manifest-v1":
            raise BundleError(f"bundle {directory}: it is an old svrl-bundle-manifest-v1 bundle (policy.pt2, which "
                              f"loads through pickle and can run code), which this runtime refuses; re-export it "
                              f"with this svrl (`dvc repro export`)")
        raise bad(f"has format {manifest.get('format')!r}, this runtime reads {MANIFEST_FORMAT}")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise bad(f"'files' must map each file name to {{\"sha256\", \"bytes\"}}, got {type(files).__name__}")
    root = directory.resolve()
    for name, entry in files.items():
        _check_name(directory, root, name, bad)
        if not isinstance(entry, dict):
            raise bad(f"entry {name!r} must be a map with sha256 and bytes, got {type(entry).__name__}")
        if not (isinstance(entry.get("sha256"), str) and _SHA256.fullmatch(entry["sha256"])):
            raise bad(f"entry {name!r}: sha256 must be 64 lowercase hex digits, got {str(entry.get('sha256'))[:80]!r}")
        if type(entry.get("bytes")) is not int or entry["bytes"] < 0:
            raise bad(f"entry {name!r}: bytes must be a non-negative integer, got {entry.get('bytes')!r}")
    missing = [name for name in REQUIRED_FILES if name not in files]
    if missing:
        raise bad(f"does not list {', '.join(missing)}: every file the runtime reads must be listed")
    return manifest


def _check_name(directory: Path, root: Path, name: str, bad) -> None:
    parts = name.split("/")
    if (not name or name.startswith("/") or "\\" in name or ":" in name or not name.isprintable()
            or any(part in ("", ".", "..") for part in parts)):
        raise bad(f"names {name!r}: file names must be relative paths inside the bundle, '/'-separated, without "
                  f"'..', '.', empty parts, backslashes or drive letters")
    if name in (MANIFEST, SIGNATURE):
        raise bad(f"lists {name}, which cannot be checksummed by the manifest")
    resolved = (directory / name).resolve()
    if not resolved.is_relative_to(root):
        raise bad(f"names {name!r}, which resolves to {resolved}, outside the bundle")


def _checked_manifest(directory: Path, signing_key: bytes | None) -> dict:
    raw = _read_manifest_bytes(directory)
    if signing_key is not None:
        _check_signature(directory, raw, signing_key)  # before anything in the manifest is interpreted
    return _parse_manifest(directory, raw)


def _missing(directory: Path, name: str) -> BundleError:
    return BundleError(f"bundle {directory}: {name} is missing; {REFETCH}")


def _changed(directory: Path, name: str) -> BundleError:
    return BundleError(f"bundle {directory}: {name} does not match its sha256 in {MANIFEST}: the file was changed "
                       f"after export; {REFETCH}")


def _verify_file(directory: Path, name: str, entry: dict) -> None:
    """A file the runtime does not use, checked in streaming."""
    path = directory / name
    if not path.is_file():
        raise _missing(directory, name)
    if path.stat().st_size != entry["bytes"] or file_sha256(path) != entry["sha256"]:
        raise _changed(directory, name)


def _read_verified(directory: Path, name: str, entry: dict) -> bytes:
    """A file the runtime uses: read once, checked, and used from these same bytes."""
    if not (directory / name).is_file():  # not a directory, pipe or device
        raise _missing(directory, name)
    try:
        with open(directory / name, "rb") as f:
            data = f.read(entry["bytes"] + 1)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise _missing(directory, name) from None
    if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise _changed(directory, name)
    return data


def read_manifest(directory: str | Path, signing_key: bytes | None = None) -> dict:
    """manifest.json after checking it (its signature first when `signing_key` is given) and every file
    it lists; raises BundleError naming the first problem."""
    directory = Path(directory)
    manifest = _checked_manifest(directory, signing_key)
    for name, entry in sorted(manifest["files"].items()):
        _verify_file(directory, name, entry)
    return manifest


# ---------------------------------------------------------------------------------------------
# policy.safetensors: raw tensors, no pickle

SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                      "U8": torch.uint8, "BOOL": torch.bool}
MAX_HEADER_BYTES = 100 << 20


def _parse_weights_header(header: object, data_bytes: int) -> list[tuple[str, torch.dtype, list[int], int, int]]:
    """(name, dtype, shape, begin, end) in file order; the tensors must tile the data exactly."""
    if not isinstance(header, dict):
        raise ProgramError("its header is not a JSON object")
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not (isinstance(info, dict) and set(info) == {"dtype", "shape", "data_offsets"}):
            raise ProgramError(f"tensor {name!r} needs exactly dtype, shape and data_offsets")
        dtype, shape, offsets = SAFETENSORS_DTYPES.get(info["dtype"]), info["shape"], info["data_offsets"]
        if dtype is None:
            raise ProgramError(f"tensor {name!r} has dtype {info['dtype']!r}, not one of {list(SAFETENSORS_DTYPES)}")
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            raise ProgramError(f"tensor {name!r} has shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= data_bytes):
            raise ProgramError(f"tensor {name!r} has data_offsets {offsets!r} outside the {data_bytes} data bytes")
        if offsets[1] - offsets[0] != math.prod(shape) * dtype.itemsize:
            raise ProgramError(f"tensor {name!r}: {offsets[1] - offsets[0]} bytes for shape {shape} of {dtype}")
        entries.append((name, dtype, shape, offsets[0], offsets[1]))
    entries.sort(key=lambda e: (e[3], e[4]))
    position = 0
    for name, _, _, begin, end in entries:
        if begin != position:
            raise ProgramError(f"tensor {name!r} starts at byte {begin}, the previous one ends at {position}")
        position = end
    if position != data_bytes:
        raise ProgramError(f"the tensors end at byte {position} of {data_bytes}")
    return entries


def _read_weights(directory: Path, entry: dict) -> dict[str, torch.Tensor]:
    """policy.safetensors read once into tensors allocated here, hashing those very bytes on the way:
    one pass, one copy in memory, and nothing is used unless the sha256 matches the manifest."""
    if sys.byteorder != "little":
        raise BundleError(f"bundle {directory}: {WEIGHTS} holds little-endian tensors, this machine is big-endian")
    digest, tensors = hashlib.sha256(), {}
    if not (directory / WEIGHTS).is_file():
        raise _missing(directory, WEIGHTS)

    def read(f, n: int) -> bytes:
        data = f.read(n)
        digest.update(data)
        if len(data) != n:
            raise ProgramError("it ends early")
        return data

    try:
        f = open(directory / WEIGHTS, "rb")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise _missing(directory, WEIGHTS) from None
    with f:
        size = os.fstat(f.fileno()).st_size
        if size != entry["bytes"]:
            raise _changed(directory, WEIGHTS)
        try:
            header_bytes = int.from_bytes(read(f, 8), "little")
            if header_bytes > min(size - 8, MAX_HEADER_BYTES):
                raise ProgramError(f"its header claims {header_bytes} bytes")
            try:
                header = _strict_json(read(f, header_bytes))
            except ValueError as err:
                raise ProgramError(f"its header is not JSON ({err})") from None
            for name, dtype, shape, begin, end in _parse_weights_header(header, size - 8 - header_bytes):
                tensor = torch.empty(shape, dtype=dtype)
                if end > begin:
                    view = tensor.view(-1).view(torch.uint8).numpy()
                    if f.readinto(memoryview(view)) != end - begin:
                        raise ProgramError("it ends early")
                    digest.update(view)
                tensors[name] = tensor
        except ProgramError as err:
            for block in iter(lambda: f.read(1 << 20), b""):  # tampered, or malformed as exported?
                digest.update(block)
            if digest.hexdigest() != entry["sha256"]:
                raise _changed(directory, WEIGHTS) from None
            raise BundleError(f"bundle {directory}: {WEIGHTS} is not a tensor file this runtime reads ({err}); "
                              f"{REFETCH}") from None
    if digest.hexdigest() != entry["sha256"]:
        raise _changed(directory, WEIGHTS)
    return tensors


# ---------------------------------------------------------------------------------------------
# policy.json: torch.export's JSON, checked before torch sees it

# ATen operators a bundle may call: tensor arithmetic, shapes, normalization, attention. None reads
# or writes files, reaches raw storage or leaves memory uninitialized. An operator outside the list
# fails export_bundle with its name: review it and add it here.
ALLOWED_OPS = frozenset("""
    abs acos add add_ addcdiv addcmul addmm alias all amax amin any arange argmax argmin argsort asin atan atan2
    avg_pool1d avg_pool2d adaptive_avg_pool1d adaptive_avg_pool2d baddbmm batch_norm bitwise_and bitwise_not
    bitwise_or bitwise_xor bmm cat ceil chunk clamp clamp_ clamp_max clamp_min clip clone concat concatenate
    constant_pad_nd contiguous conv1d conv2d conv3d conv_transpose1d conv_transpose2d convolution copy_ cos cosh
    cumprod cumsum detach detach_ diagonal div div_ dropout einsum elu embedding eq erf erfinv exp exp2 expand
    expand_as expm1 eye fill_ flatten flip floor floor_divide fmod frac full full_like gather ge gelu group_norm gt
    hardsigmoid hardswish hardtanh index index_select instance_norm isfinite isinf isnan layer_norm le leaky_relu
    lerp lift_fresh_copy linalg_vector_norm linear linspace log log10 log1p log2 log_softmax logical_and
    logical_not logical_or logical_xor logit logsumexp lt masked_fill masked_fill_ matmul max max_pool1d max_pool2d
    maximum mean meshgrid min minimum mish mm movedim mul mul_ nan_to_num narrow native_group_norm
    native_layer_norm ne neg new_full new_ones new_zeros norm numpy_T ones ones_like outer pad permute pow prod
    reciprocal relu remainder repeat repeat_interleave reshape rms_norm roll round rsqrt rsub scalar_tensor
    scaled_dot_product_attention select sigmoid sign silu sin sinh slice softmax softplus sort split
    split_with_sizes sqrt square squeeze stack std sub sub_ sum sym_size sym_numel sym_stride sym_storage_offset t
    tan tanh tensor_split to _to_copy topk transpose tril triu trunc type_as unbind unflatten unsqueeze
    upsample_bilinear2d upsample_nearest2d var var_mean view view_as where zero_ zeros zeros_like
    _assert_tensor_metadata _assert_scalar _assert_async sym_constrain_range_for_size _softmax _log_softmax
    _native_batch_norm_legit_no_training _upsample_bilinear2d_aa
""".split())  # _upsample_bilinear2d_aa: OFT's antialiased resize to the towers' size (a pure resampling kernel)
# arithmetic on symbolic sizes (torch.export's _SYM_OPS), as torch.export names them
ALLOWED_PYTHON_TARGETS = frozenset(
    [f"_operator.{op}" for op in ("eq ne le ge lt gt neg pos mul add sub floordiv mod pow truediv and_ or_".split())]
    + ["math.trunc"] + [f"torch.sym_{op}" for op in "not int float ite max min sqrt".split()])
_ATEN_TARGET = re.compile(r"torch\.ops\.aten\.([A-Za-z0-9_]+)\.([A-Za-z][A-Za-z0-9_]*)")
_NAME = re.compile(r"[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*")  # identifiers and dotted paths (FQNs)
# symbolic shape expressions, as sympy's srepr writes them: Mul(Integer(3), Symbol('s23', positive=True, ...))
_SYMPY_TOKEN = re.compile(r"\s+|[(),=-]|'[a-z]+[0-9]+'|'-?[0-9]+(?:\.[0-9]+)?(?:e[+-]?[0-9]+)?'"
                          r"|[0-9]+(?:\.[0-9]+)?(?:e[+-]?[0-9]+)?|([A-Za-z_][A-Za-z0-9_]*)")
_SYMPY_NAMES = frozenset("""
    Symbol Integer Float Rational Add Mul Pow Mod Max Min Abs Eq Ne Lt Le Gt Ge StrictLessThan StrictGreaterThan
    LessThan GreaterThan Equality Unequality And Or Not true false True False oo zoo nan precision
    positive negative integer real nonnegative nonpositive finite infinite zero nonzero even odd commutative rational
    FloorDiv ModularIndexing Where PythonMod CleanDiv CeilToInt FloorToInt CeilDiv LShift RShift PowByNatural
    FloatPow FloatTrueDiv IntTrueDiv IsNonOverlappingAndDenseIndicator TruncToFloat TruncToInt RoundToInt
    RoundDecimal ToFloat Identity
""".split())
# guards on input sizes: L['images'].size()[0] == L['instruction_ids'].size()[0]
_GUARD_TOKEN = re.compile(r"\s+|L\['[A-Za-z_][A-Za-z0-9_]*'\]|\.(?:size|stride)\(\)|\.storage_offset\(\)|\[[0-9]+\]"
                          r"|[0-9]+|==|!=|<=|>=|//|[<>+*%()-]|(?:and|or|not)\b")
_REFUSED_KINDS = {"as_graph": "a subgraph", "as_custom_obj": "a custom object", "as_operator": "an operator argument",
                  "as_string_to_argument": "a string-keyed argument map", "custom_obj": "a custom object input",
                  "token": "an effect token", "constant_input": "a constant input"}
_INPUT_KINDS = ("user_input", "parameter", "buffer", "tensor_constant")
_SPECIAL_FLOATS = ("Infinity", "-Infinity", "NaN")


def _tokens(text: str, pattern: re.Pattern, what: str, names: frozenset | None = None) -> None:
    """Refuse `text` unless it splits into `pattern`'s tokens (and its bare names are `names`)."""
    position = 0
    while position < len(text):
        match = pattern.match(text, position)
        if match is None:
            raise ProgramError(f"{what} {text[:120]!r} has {text[position:position + 20]!r} where only literals, "
                               f"sizes and arithmetic may stand")
        if names is not None and match.lastindex and match.group(1) not in names:
            raise ProgramError(f"{what} {text[:120]!r} names {match.group(1)!r}, which is not a sympy constructor")
        position = match.end()


def _check_sympy(text: str) -> None:
    _tokens(text, _SYMPY_TOKEN, "shape expression", _SYMPY_NAMES)


def _check_treespec(text: str) -> None:
    try:
        protocol, spec = json.loads(text)
    except (ValueError, TypeError):
        raise ProgramError(f"pytree spec {text[:120]!r} is not [protocol, spec]") from None

    def node(spec: object) -> None:
        if not (isinstance(spec, dict) and set(spec) == {"type", "context", "children_spec"}
                and spec["type"] in (None, "builtins.tuple", "builtins.list", "builtins.dict")
                and isinstance(spec["children_spec"], list)):
            raise ProgramError(f"pytree spec {text[:120]!r} holds something other than tuples, lists and dicts")
        if spec["context"] is not None:
            context = json.loads(spec["context"]) if isinstance(spec["context"], str) else spec["context"]
            if not (context is None or isinstance(context, list)
                    and all(isinstance(k, (str, int)) and not isinstance(k, bool) for k in context)):
                raise ProgramError(f"pytree spec {text[:120]!r} has a context other than a list of keys")
        for child in spec["children_spec"]:
            node(child)

    if type(protocol) is not int:
        raise ProgramError(f"pytree spec {text[:120]!r} has protocol {protocol!r}")
    try:
        node(spec)
    except (ValueError, TypeError, RecursionError) as err:
        raise ProgramError(f"pytree spec {text[:120]!r} is malformed ({err})") from None


def _check_target(target: str) -> None:
    if target in ALLOWED_PYTHON_TARGETS:
        return
    match = _ATEN_TARGET.fullmatch(target)
    if match is None or match.group(1) not in ALLOWED_OPS:
        raise ProgramError(f"it calls {target[:120]!r}, which is not an ATen operator in this runtime's "
                           f"ALLOWED_OPS (a genuine new operator: review it and add it there)")
    if not isinstance(getattr(getattr(torch.ops.aten, match.group(1)), match.group(2), None), torch._ops.OpOverload):
        raise ProgramError(f"it calls {target!r}, which this torch {torch.__version__} does not have")


def _check_string(key: str, text: str) -> None:
    if key == "target":
        _check_target(text)
    elif key == "expr_str":
        _check_sympy(text)
    elif key in ("in_spec", "out_spec"):
        _check_treespec(text)
    elif key == "guards_code":
        _tokens(text, _GUARD_TOKEN, "guard")
    elif key in ("as_string", "as_strings"):  # operator arguments (an einsum equation): code generation repr()s them
        if not text.isprintable() or len(text) > 1000:
            raise ProgramError(f"string argument {text[:120]!r} is not short printable text")
    elif key == "torch_version":
        if not re.fullmatch(r"[0-9A-Za-z.+_-]{0,64}", text):
            raise ProgramError(f"torch_version {text[:120]!r}")
    elif text and text not in _SPECIAL_FLOATS and not (
            _NAME.fullmatch(text) and not any(part.startswith("__") for part in text.split("."))):
        raise ProgramError(f"{key} {text[:120]!r} is not a plain name or dotted path")


def _walk(value: object, key: str) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if k in _REFUSED_KINDS:
                raise ProgramError(f"it holds {_REFUSED_KINDS[k]} ({k}), which svrl bundles never contain")
            if not _NAME.fullmatch(k) or k.startswith("__"):
                raise ProgramError(f"it has the key {k[:120]!r}, not a plain name")
            _walk(v, k)
    elif isinstance(value, list):
        for item in value:
            _walk(item, key)
    elif isinstance(value, str):
        _check_string(key, value)
    elif not (value is None or isinstance(value, (bool, int, float))):
        raise ProgramError(f"{key} holds a {type(value).__name__}")


def check_program(program: object) -> None:
    """Raise ProgramError unless `program` (torch.export's JSON of an ExportedProgram, parsed) stays
    inside what svrl exports: ATen operators from ALLOWED_OPS and symbolic-size arithmetic, plain
    names, literal shape expressions and guards, tuple/list/dict pytrees, tensor inputs, no node
    metadata, subgraphs, custom objects or higher-order operators. See the module docstring for
    which torch code paths each rule closes."""
    try:
        module, graph = program["graph_module"], program["graph_module"]["graph"]
        nodes, inputs = graph["nodes"], graph["inputs"]
        input_specs = module["signature"]["input_specs"]
        output_specs = module["signature"]["output_specs"]
        if not all(isinstance(x, list) for x in (nodes, inputs, input_specs, output_specs)):
            raise TypeError("not lists")
        for node in nodes:
            if node.get("metadata"):
                raise ProgramError(f"node {str(node.get('name'))[:80]!r} carries metadata, which svrl bundles "
                                   f"never write")
            if not isinstance(node.get("target"), str):
                raise TypeError("a node without a target")
        for part, what in ((module.get("metadata"), "graph metadata"),
                           (graph.get("custom_obj_values"), "custom objects"),
                           (module.get("treespec_namedtuple_fields"), "named tuples")):
            if part:
                raise ProgramError(f"it has {what}, which svrl bundles never contain")
        if not all(isinstance(arg, dict) and set(arg) == {"as_tensor"} for arg in inputs):
            raise ProgramError("its inputs are not all tensors")
        if not all(isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in _INPUT_KINDS
                   for spec in input_specs):
            raise ProgramError(f"its inputs are not all of {list(_INPUT_KINDS)}")
        if not all(isinstance(spec, dict) and set(spec) == {"user_output"} for spec in output_specs):
            raise ProgramError("it has outputs other than user outputs (mutations, gradients, tokens)")
        if not isinstance(program.get("guards_code", []), list):
            raise TypeError("guards_code is not a list")
    except (KeyError, TypeError, AttributeError) as err:
        raise ProgramError(f"it is not an exported program ({type(err).__name__}: {err})") from None
    try:
        _walk(program, "")
    except RecursionError:
        raise ProgramError("it is nested too deeply") from None


def _network(program: dict, tensors: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The checked program with its weights, as torch's deserializer builds it from a .pt2 -- minus
    every pickle: state dict and constants are given as tensors, there are no example inputs."""
    from torch._export.serde.serialize import SerializedArtifact, deserialize

    parameters = {spec["parameter"]["parameter_name"] for spec in program["graph_module"]["signature"]["input_specs"]
                  if "parameter" in spec}
    state_dict, constants = {}, {}
    for key, tensor in tensors.items():
        kind, _, name = key.partition("/")
        if kind == "state_dict":
            state_dict[name] = torch.nn.Parameter(tensor, requires_grad=False) if name in parameters else tensor
        elif kind == "constants":
            constants[name] = tensor
        else:
            raise ProgramError(f"{WEIGHTS} holds {key!r}, neither state_dict/... nor constants/...")
    program_bytes = json.dumps(program).encode()
    return deserialize(SerializedArtifact(program_bytes, state_dict, constants, b"")).module()


def _check_conventions(directory: Path, pre: dict, post: dict) -> None:
    """Refuse image / gripper conventions this runtime does not know (absent keys are svrl's: no change)."""
    resize, gripper = pre.get("image_resize", "none"), post.get("gripper_convention", "env")
    if resize not in IMAGE_RESIZES or gripper not in GRIPPER_CONVENTIONS:
        raise BundleError(f"bundle {directory}: image_resize {resize!r} / gripper_convention {gripper!r} is none that "
                          f"this runtime knows ({list(IMAGE_RESIZES)} / {list(GRIPPER_CONVENTIONS)}); {REFETCH}")
    sizes = (pre.get("image_resize_to", 224), pre.get("image_jpeg_quality", 95))
    if resize != "none" and not (type(sizes[0]) is int and 1 <= sizes[0] <= 4096
                                 and type(sizes[1]) is int and 1 <= sizes[1] <= 100):
        raise BundleError(f"bundle {directory}: image_resize_to / image_jpeg_quality {sizes} are not a side in "
                          f"[1, 4096] and a quality in [1, 100]; {REFETCH}")
    dim = post.get("gripper_dim", -1)
    if gripper != "env" and not (type(dim) is int and -post["action_dim"] <= dim < post["action_dim"]):
        raise BundleError(f"bundle {directory}: gripper_dim {dim!r} is no dim of a {post['action_dim']}-D action; "
                          f"{REFETCH}")


class BundlePolicy:
    """A bundle's network and pre/postprocessing. `signing_key` (bytes): also require manifest.sig to be
    the HMAC-SHA256 of manifest.json under that key; without it an unsigned bundle loads."""

    def __init__(self, directory: str | Path, signing_key: bytes | None = None):
        self.directory = directory = Path(directory)
        self._tokenizer = None
        self.manifest = _checked_manifest(directory, signing_key)
        files = self.manifest["files"]

        def json_file(name: str):
            try:
                return _strict_json(_read_verified(directory, name, files[name]))
            except ValueError as err:
                if isinstance(err, BundleError):
                    raise
                raise BundleError(f"bundle {directory}: {name} is not JSON ({err}); {REFETCH}") from None

        self.spec = json_file(SPEC)
        if not isinstance(self.spec, dict) or self.spec.get("format") != BUNDLE_FORMAT:
            got = self.spec.get("format") if isinstance(self.spec, dict) else None
            raise BundleError(f"bundle {directory}: {SPEC} has format {got!r}, this runtime reads {BUNDLE_FORMAT}; "
                              f"re-export it with this svrl (`dvc repro export`)")
        if self.spec["postprocessing"]["decoding"] not in DECODINGS:
            raise BundleError(f"bundle {directory}: decoding {self.spec['postprocessing']['decoding']!r} is none "
                              f"that this runtime knows ({list(DECODINGS)}); export it again with this svrl version")
        _check_conventions(directory, self.spec["preprocessing"], self.spec["postprocessing"])
        tokenizer = self.spec["preprocessing"].get("tokenizer_file")
        if tokenizer is not None and (not isinstance(tokenizer, str) or tokenizer not in files):
            raise BundleError(f"bundle {directory}: {MANIFEST} does not list {tokenizer!r}, the tokenizer {SPEC} "
                              f"names: every file the runtime reads must be listed; {REFETCH}")
        self.provenance = json_file(PROVENANCE)
        program = json_file(PROGRAM)
        self._tokenizer_json = _read_verified(directory, tokenizer, files[tokenizer]).decode() if tokenizer else None
        for name, entry in sorted(files.items()):  # what the runtime does not read is checked all the same
            if name not in (SPEC, PROVENANCE, PROGRAM, WEIGHTS, tokenizer):
                _verify_file(directory, name, entry)
        try:
            check_program(program)
        except ProgramError as err:
            raise BundleError(f"bundle {directory}: {PROGRAM} is refused: {err}; {REFETCH}") from None
        tensors = _read_weights(directory, files[WEIGHTS])
        try:
            self.net = _network(program, tensors)
        except Exception as err:  # torch's deserializer raises many types; the program was checked, so none ran code
            first_line = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
            raise BundleError(f"bundle {directory}: {PROGRAM} cannot be loaded by torch {torch.__version__} "
                              f"({type(err).__name__}: {first_line}); {REFETCH}") from None

    def preprocess(self, images: np.ndarray, proprio: np.ndarray, instructions: list[str]) -> tuple:
        """images (B, H, W, 3) uint8, proprio (B, S), texts -> the network's three tensors."""
        pre = self.spec["preprocessing"]
        if images.shape[1:] != (pre["image_height"], pre["image_width"], 3) or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 images (B, {pre['image_height']}, {pre['image_width']}, 3), "
                             f"got {images.dtype} {images.shape}")
        images = self._model_images(images, pre)
        image_tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
        states = self._normalize_state(np.asarray(proprio, np.float64), pre)
        return image_tensor, torch.from_numpy(states.astype(np.float32)), torch.from_numpy(self.encode_instructions(instructions))

    @staticmethod
    def _model_images(images: np.ndarray, pre: dict) -> np.ndarray:
        """Upright (B, H, W, 3) frames -> the images the network was trained on: mirrored left-right and/or
        JPEG + lanczos3 resized, as bundle.json says (upstream LIBERO checkpoints); unchanged by default."""
        if pre.get("image_mirror_left_right", False):
            images = images[:, :, ::-1]
        if pre.get("image_resize", "none") == "jpeg-lanczos3":
            images = jpeg_lanczos3_resize(images, pre["image_resize_to"], pre["image_jpeg_quality"])
        return images

    @staticmethod
    def _normalize_state(proprio: np.ndarray, pre: dict) -> np.ndarray:
        if pre.get("state_normalization", "mean_std") == "mean_std":
            return (proprio - np.asarray(pre["state_mean"], np.float32)) / (
                np.asarray(pre["state_std"], np.float32) + pre["state_eps"])
        low, high = np.asarray(pre["state_low"]), np.asarray(pre["state_high"])  # q01 -> -1, q99 -> 1
        return np.clip(2.0 * (proprio - low) / np.where(high > low, high - low, 1.0) - 1.0, -1.0, 1.0)

    def encode_instructions(self, instructions: list[str]) -> np.ndarray:
        """Texts -> (B, L) int64 token ids; ValueError for an instruction the bundle cannot take (too long)."""
        pre = self.spec["preprocessing"]
        if pre["instruction_encoding"] == "openvla-prompt":
            return self._openvla_prompt_ids(instructions, pre)
        ids = np.zeros((len(instructions), pre["max_instruction_bytes"]), dtype=np.int64)
        for row, text in enumerate(instructions):
            raw = np.frombuffer(text.encode("utf-8")[: pre["max_instruction_bytes"]], dtype=np.uint8)
            ids[row, : len(raw)] = raw.astype(np.int64) + 1
        return ids

    def _openvla_prompt_ids(self, instructions: list[str], pre: dict) -> np.ndarray:
        """[BOS] [pad ...] prompt [space] [action placeholders] [stop], as svrl trained it."""
        if self._tokenizer is None:
            from tokenizers import Tokenizer

            self._tokenizer = Tokenizer.from_str(self._tokenizer_json)  # the bytes checked at load
        width = pre["max_prompt_tokens"]
        ids = np.full((len(instructions), width + pre["n_action_tokens"] + 1), pre["pad_token_id"], dtype=np.int64)
        ids[:, width:-1], ids[:, -1] = pre["placeholder_token_id"], pre["stop_token_id"]
        for row, text in enumerate(instructions):
            prompt = self._tokenizer.encode(pre["prompt"].format(instruction=text.lower()), add_special_tokens=False).ids
            if pre["space_token_id"] is not None and prompt[-1:] != [pre["space_token_id"]]:
                prompt.append(pre["space_token_id"])
            if len(prompt) + 1 > width:
                raise ValueError(f"instruction {text!r} is {len(prompt) + 1} tokens, the bundle takes {width}")
            ids[row, 0] = pre["bos_token_id"]
            ids[row, width - len(prompt):width] = prompt
        return ids

    def bins_to_actions(self, bins: np.ndarray, proprio: np.ndarray | None = None) -> np.ndarray:
        """(B, K, D) bins -> (B, K, D) actions: bin centre, undo the q01/q99 scaling, binarize grippers,
        add the proprio (B, D) to the dims that are relative to it, and map a gripper modelled in [0, 1]
        (1 = open) to the env's -1 open / +1 close as -sign(2 g - 1)."""
        post = self.spec["postprocessing"]
        if post.get("binning", "uniform") == "openvla":  # 256 edges, 255 centres; the top bin decodes as the one below
            edges = np.linspace(-1.0, 1.0, post["n_bins"])
            normalized = ((edges[:-1] + edges[1:]) / 2)[np.minimum(bins, post["n_bins"] - 2)]
        else:
            edges = np.linspace(-1.0, 1.0, post["n_bins"] + 1)
            normalized = ((edges[:-1] + edges[1:]) / 2)[bins]
        low, high = np.asarray(post["low"]), np.asarray(post["high"])
        scaled = (normalized + 1.0) / 2.0 * (high - low) + low
        actions = np.where(np.asarray(post["normalize_mask"], bool), scaled, normalized)
        binary = np.asarray(post.get("binary_mask", [False] * len(low)), bool)  # grippers: low or high, the nearer
        actions = np.where(binary, np.where(actions >= (low + high) / 2, high, low), actions).astype(np.float32)
        relative = np.asarray(post.get("relative_mask", [False] * len(low)), bool)
        if relative.any():
            if proprio is None:
                raise BundleError("this bundle's actions are relative to the proprio: pass it to bins_to_actions")
            offset = np.where(relative, np.asarray(proprio, np.float64), 0.0)[:, None, :]  # (B, 1, D)
            actions = (actions + offset).astype(np.float32)
        if post.get("gripper_convention", "env") == "open_is_one":
            dim = post["gripper_dim"]
            actions[..., dim] = np.sign(1.0 - 2.0 * actions[..., dim])
        return actions

    @torch.no_grad()
    def act_batch(self, images: np.ndarray, proprio: np.ndarray, instructions: list[str]) -> np.ndarray:
        """Deterministic action chunks (the bundle's decoding), (B, K, D)."""
        logits = self.net(*self.preprocess(images, proprio, instructions))  # (B, K * D, n_bins)
        post = self.spec["postprocessing"]
        bins = decode_bins(logits, post["decoding"]).numpy()
        bins = bins.reshape(len(instructions), post["chunk_size"], post["action_dim"])
        return self.bins_to_actions(bins, proprio)

    def act(self, image: np.ndarray, proprio: np.ndarray, instruction: str) -> np.ndarray:
        """One observation -> its (K, D) action chunk."""
        return self.act_batch(image[None], np.asarray(proprio)[None], [instruction])[0]
