"""Reading the project's files defensively: a damaged file gives ONE line that names it and says what to do.

A truncated JSON file, safetensors file or LightGBM text model (a full disk, an interrupted copy) would otherwise
surface as a parser error that names no file, a raw traceback, or - for LightGBM - a segfault. Every reader
checks the file first and raises :class:`DamagedFileError`. :func:`json_safe` is the other half: what we write
as JSON never holds NaN or infinities (which are not JSON).
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

SAFETENSORS_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
MAX_SAFETENSORS_HEADER = 100 << 20  # the format's own limit on the JSON header


class DamagedFileError(ValueError):
    """A file exists but cannot be what it claims to be (truncated, overwritten, not the right format)."""

    def __init__(self, path: str | os.PathLike, problem: str, fix: str) -> None:
        self.path = Path(path)
        super().__init__(f"{self.path} is damaged ({_one_line(problem)}); {fix}")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def read_json(path: str | os.PathLike, fix: str):
    """The JSON value in ``path``; :class:`DamagedFileError` (saying ``fix``) when it does not parse."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        return json.loads(text)
    except UnicodeDecodeError as error:
        raise DamagedFileError(path, f"not UTF-8 text: {error.reason}", fix) from None
    except json.JSONDecodeError as error:
        raise DamagedFileError(path, f"not valid JSON: {error.msg} at line {error.lineno}", fix) from None


def safetensors_header(path: str | os.PathLike, fix: str) -> tuple[dict[str, dict], int]:
    """The tensor entries of a safetensors file's header (name -> dtype, shape, data_offsets) and where its data
    starts, after checking that the header parses and that every tensor's bytes lie inside the file, which must end
    where the last one does: a truncated or padded file is refused without reading its data."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise DamagedFileError(path, f"{size} bytes, shorter than a safetensors header", fix)
        (length,) = struct.unpack("<Q", prefix)
        if length > min(MAX_SAFETENSORS_HEADER, size - 8):
            raise DamagedFileError(path, f"header of {length} bytes in a {size}-byte file", fix)
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise DamagedFileError(path, f"header is not valid JSON ({error})", fix) from None
    if not isinstance(header, dict):
        raise DamagedFileError(path, "header is not a JSON object", fix)
    tensors = {name: entry for name, entry in header.items() if name != "__metadata__"}
    end = 0
    for name, entry in tensors.items():
        try:
            dtype, shape, (begin, stop) = entry["dtype"], entry["shape"], entry["data_offsets"]
            expected = SAFETENSORS_DTYPE_BYTES.get(dtype, 0) * math.prod(shape)
        except (KeyError, TypeError, ValueError):
            raise DamagedFileError(path, f"header entry of {name!r} is malformed", fix) from None
        if (dtype in SAFETENSORS_DTYPE_BYTES and stop - begin != expected) or not 0 <= begin <= stop:
            raise DamagedFileError(path, f"tensor {name!r} has {stop - begin} bytes for shape {shape} {dtype}", fix)
        end = max(end, stop)
    if 8 + length + end != size:
        raise DamagedFileError(path, f"{size} bytes, the header describes {8 + length + end}", fix)
    return tensors, 8 + length


def json_safe(value):
    """``value`` with every non-finite float (NaN, +-inf; numpy values too) replaced by None, recursively: the
    result always serialises with ``json.dumps(..., allow_nan=False)``."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy scalars and arrays
        return json_safe(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps_json(value, **kwargs) -> str:
    """``json.dumps`` of :func:`json_safe` (``value``): null where a number is not finite, never ``NaN``."""
    return json.dumps(json_safe(value), allow_nan=False, **kwargs)


def atomic_write(path: str | os.PathLike, write, durable: bool = True) -> None:
    """``write(tmp_path)``, flush it to disk (``durable``), then rename over ``path``: readers see the old or the
    new file. Files that can be regenerated (benchmark images) skip the flush."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        if durable:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: str | os.PathLike, value, durable: bool = True) -> None:
    """``value`` as indented JSON, written with :func:`atomic_write`."""
    text = json.dumps(value, indent=2) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), durable)
