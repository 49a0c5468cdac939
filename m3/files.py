"""Reading and writing the project's files defensively: a damaged file, or a full disk, gives ONE line that names
the file and says what to do.

A truncated JSON file, safetensors file or LightGBM text model (a full disk, an interrupted copy) would otherwise
surface as a parser error that names no file, a raw traceback, or - for LightGBM - a segfault. Every reader
checks the file first and raises :class:`DamagedFileError`. :func:`json_safe` is the other half: what we write
as JSON never holds NaN or infinities (which are not JSON). A write that runs out of space (:func:`writing`,
:func:`atomic_write`) removes what it had written and raises :class:`DiskFullError`, one line, not a traceback.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import struct
from collections.abc import Iterator
from contextlib import contextmanager
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


NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
NO_SPACE_WORDS = ("No space left on device", "Disk quota exceeded", "StorageFull")  # torch and safetensors wrap it


class DiskFullError(OSError):
    """A write failed for lack of space; what it had written so far was removed."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.errno = errno.ENOSPC


def out_of_space(error: BaseException | None) -> bool:
    """Whether ``error``, or one it was raised from, says the disk (or the quota) is full: ``OSError`` ENOSPC or
    EDQUOT, or the words torch's and safetensors' own errors wrap it in."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in NO_SPACE_ERRNOS:
            return True
        if any(words in str(error) for words in NO_SPACE_WORDS):
            return True
        error = error.__cause__ or error.__context__
    return False


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def writing(what: str, partial: list[str | os.PathLike], fix: str = "free some space and run it again") -> Iterator:
    """Run a write of ``what``; when it fails, remove ``partial`` (the files or folders it was writing) and, if it
    failed for lack of space (:func:`out_of_space`, or under 1 MiB left on the device, as torch's "file write
    failed" says no more), raise :class:`DiskFullError` saying so in one line, with the free space and ``fix``,
    instead of the library's traceback. Other errors propagate unchanged."""
    try:
        yield
    except BaseException as error:
        existing = next((p for p in Path(partial[0]).parents if p.exists()), Path("."))  # outlives the partial
        full = out_of_space(error) or shutil.disk_usage(existing).free < 2**20
        for path in partial:
            _remove(Path(path))
        if not full or not isinstance(error, Exception):
            raise
        free = shutil.disk_usage(existing).free / 2**20
        raise DiskFullError(
            f"no space left on the device while writing {what} ({free:.0f} MiB free after removing it); the partial "
            f"files were removed: {fix}"
        ) from error


def atomic_write(path: str | os.PathLike, write, durable: bool = True) -> None:
    """``write(tmp_path)``, flush it to disk (``durable``), then rename over ``path``: readers see the old or the
    new file. Files that can be regenerated (benchmark images) skip the flush. A full disk is one
    :class:`DiskFullError` line, and no temporary file is left."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with writing(str(path), [tmp]):
        write(tmp)
        if durable:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)


def write_json_atomic(path: str | os.PathLike, value, durable: bool = True) -> None:
    """``value`` as indented JSON, written with :func:`atomic_write`."""
    text = json.dumps(value, indent=2) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), durable)
