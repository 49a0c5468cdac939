"""Model identity: a hash of every weight tensor, stored beside the model so that a 7B checkpoint is hashed once.

What is hashed (method :data:`METHOD`): for every tensor in the model's safetensors files, in name order, the line
``name dtype shape sha256(tensor bytes)``; the fingerprint is the sha256 of those lines. It does not depend on how
the weights are sharded, on the order of the header or on file names, and every byte of every tensor counts. The
files are read in 16 MiB blocks (never loaded), the tensors hashed on a few threads. A folder with pickled
``*.bin`` weights and no safetensors is hashed file by file instead (the bytes of each file).

The result is stored in ``m3_fingerprint.json`` beside the weights together with each weight file's size and
mtime_ns: a later call rehashes only when a weight file was added, removed, or changed size or modification time.
A folder that cannot be written (a read-only mount, a shared model store) keeps the record in the user cache
(``$M3_CACHE_DIR``, default ``~/.cache/m3``, under ``fingerprints/``), keyed by the folder's resolved path.
The M3 classes' ``save_pretrained`` writes the record at once, so a trained or converted model is hashed while
its files are still in the page cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .files import DamagedFileError, read_json, safetensors_header

logger = logging.getLogger(__name__)

FINGERPRINT_NAME = "m3_fingerprint.json"
METHOD = "tensors-sha256-v1"
BLOCK = 16 << 20
REDOWNLOAD = "re-download or re-save the model"


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The sha256 of a whole file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def weight_files(model_dir: str | os.PathLike) -> list[Path]:
    """The files that hold a saved model's weights: its ``*.safetensors`` files, else its ``*.bin`` files (what
    transformers loads, in the same order of preference)."""
    model_dir = Path(model_dir)
    safetensors = sorted(p for p in model_dir.glob("*.safetensors") if p.is_file())
    if safetensors:
        return safetensors
    return sorted(p for p in model_dir.glob("*.bin") if p.is_file() and p.name != "training_args.bin")


def _digest(entry: tuple) -> str:
    """sha256 of bytes ``[begin, end)`` of a file; a file shorter than that is damaged."""
    path, begin, end = entry[3:]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        handle.seek(begin)
        remaining = end - begin
        while remaining:
            block = handle.read(min(BLOCK, remaining))
            if not block:
                raise DamagedFileError(path, f"it ends before byte {end}", REDOWNLOAD)
            digest.update(block)
            remaining -= len(block)
    return digest.hexdigest()


def hash_tensors(files: list[Path]) -> dict:
    """The fingerprint of the tensors in ``files`` (see the module docstring) and how many tensors and bytes."""
    entries = []  # (name, dtype, shape, path, begin, end)
    owner: dict[str, Path] = {}
    for path in files:
        if path.suffix != ".safetensors":
            entries.append((f"file:{path.name}", "bytes", [path.stat().st_size], path, 0, path.stat().st_size))
            continue
        tensors, data_start = safetensors_header(path, REDOWNLOAD)
        for name, entry in tensors.items():
            if name in owner:
                raise ValueError(f"tensor {name!r} is stored twice, in {owner[name]} and {path}")
            owner[name] = path
            begin, end = entry["data_offsets"]
            entries.append((name, entry["dtype"], entry["shape"], path, data_start + begin, data_start + end))
    entries.sort(key=lambda entry: entry[0])
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        digests = list(pool.map(_digest, entries))
    top = hashlib.sha256()
    for (name, dtype, shape, *_), digest in zip(entries, digests):
        top.update(f"{name}\t{dtype}\t{list(shape)}\t{digest}\n".encode())
    return {
        "method": METHOD,
        "weights_sha256": top.hexdigest(),
        "num_tensors": len(entries),
        "num_bytes": sum(entry[5] - entry[4] for entry in entries),
    }


def cache_dir() -> Path:
    """Where fingerprints of folders we cannot write to are kept: ``$M3_CACHE_DIR``, else ``~/.cache/m3``."""
    root = os.environ.get("M3_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "m3"
    return Path(root) / "fingerprints"


def record_paths(model_dir: Path) -> list[Path]:
    """The places a folder's fingerprint record may be: beside the weights, then the user cache."""
    key = hashlib.sha256(str(model_dir.resolve()).encode()).hexdigest()[:32]
    return [model_dir / FINGERPRINT_NAME, cache_dir() / f"{key}.json"]


def write_record(path: Path, record: dict) -> None:
    """Write a fingerprint record atomically (a reader sees the old record or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _read_record(path: Path) -> dict | None:
    try:
        record = read_json(path, "it is rehashed")
    except (OSError, ValueError):  # missing or damaged: a cache, recomputed
        return None
    return record if isinstance(record, dict) else None


def weights_fingerprint(model_dir: str | os.PathLike, recompute: bool = False) -> dict:
    """The weights fingerprint record of a saved model folder: ``method``, ``weights_sha256``, ``num_tensors``,
    ``num_bytes``, ``files`` (each weight file's size and mtime_ns) and ``hash_seconds`` (what hashing cost).

    Read from the stored record while the weight files are unchanged, else computed and stored (see the module
    docstring); ``recompute`` hashes again regardless."""
    model_dir = Path(model_dir)
    files = weight_files(model_dir)
    if not files:
        raise FileNotFoundError(f"{model_dir} holds no weight files (*.safetensors or *.bin)")
    stats = {path.name: {"size": path.stat().st_size, "mtime_ns": path.stat().st_mtime_ns} for path in files}
    locations = record_paths(model_dir)
    if not recompute:
        for location in locations:
            record = _read_record(location)
            if record and record.get("method") == METHOD and record.get("files") == stats:
                return record
    start = time.perf_counter()
    record = {**hash_tensors(files), "files": stats, "hash_seconds": round(time.perf_counter() - start, 3)}
    for location in locations:
        try:
            write_record(location, record)
            break
        except OSError as error:
            logger.info("cannot store the fingerprint of %s in %s (%s)", model_dir, location, error)
    else:
        logger.warning("cannot store the weights fingerprint of %s anywhere; it is recomputed on every use", model_dir)
    return record


def model_fingerprint(model_dir: str | os.PathLike) -> dict:
    """What identifies a saved model: its weights fingerprint (``method``, ``weights_sha256``) and the hash of its
    ``config.json`` (``config_sha256``; None without one). Oracle manifests and predictors store this."""
    model_dir = Path(model_dir)
    weights = weights_fingerprint(model_dir)
    config = model_dir / "config.json"
    return {
        "method": weights["method"],
        "weights_sha256": weights["weights_sha256"],
        "config_sha256": file_sha256(config) if config.is_file() else None,
    }


def same_weights(first: dict | None, second: dict | None) -> bool | None:
    """Whether two model fingerprints name the same weights; None when either is missing or was computed by an
    older method (the first and last MiB of each file) and so cannot be compared."""
    if not first or not second or first.get("method") != METHOD or second.get("method") != METHOD:
        return None
    return first.get("weights_sha256") == second.get("weights_sha256")


def short(fingerprint: dict | None) -> str:
    """A fingerprint as people read it: the first 12 hex digits of the weights hash."""
    value = (fingerprint or {}).get("weights_sha256")
    return f"weights {value[:12]}" if value else "weights of unknown fingerprint"
