"""Where a run's results go, checked before any work: nothing overwritten, nothing reused without a word.

* :func:`distinct_names`: one result name per input (a model folder), unique even when two inputs share a folder
  name (``A/final`` and ``B/final`` become ``A-final`` and ``B-final``); an input given twice is refused.
* :func:`check_output_dir`: an output path that cannot be a folder (an existing file) is refused before the work
  that would end in writing to it.
* :func:`check_same_record`: what a record (e.g. a generated split's meta) says made a folder's files must match.
* :func:`held_run_folder`: one run at a time in a folder (a lock naming its holder), and a refused run leaves no
  folder behind that it created.
* :func:`claim_run_folder`: a run folder records what made it (``run.json``: the settings whose outputs a rerun
  reuses or leaves in place). Rerunning with the same settings continues the run; other settings are refused,
  listing every difference; a used folder that records nothing is reused with a warning that names what it holds.
  A script with an ``--overwrite`` flag refuses such a folder too, and with the flag takes it over.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from .files import read_json, write_json_atomic

RUN_RECORD = "run.json"
LOCK_NAME = ".m3-run.lock"  # held (flock) by the process running in the folder; it says who that is


class RunFolderMismatchError(ValueError):
    """A run folder was made by other settings than the run about to use it."""


class RunFolderLockedError(FileExistsError):
    """Another process runs in the folder (it holds the folder's lock)."""


def distinct_names(paths: Sequence[str | os.PathLike]) -> list[str]:
    """A name per path, unique among them: its folder name, with as many parent folders (joined by ``-``) as it
    takes to tell it apart from the others. The same folder given twice is refused."""
    resolved = [Path(path).resolve() for path in paths]
    seen: dict[Path, str] = {}
    for given, path in zip(paths, resolved):
        if path in seen:
            raise ValueError(f"{given} is given twice (also as {seen[path]}); give each model once")
        seen[path] = str(given)
    parts = [path.parts[1:] or (str(path),) for path in resolved]  # without the root
    depth = [1] * len(paths)
    while True:
        names = ["-".join(p[-d:]) for p, d in zip(parts, depth)]
        counts = Counter(names)
        clashing = [i for i, name in enumerate(names) if counts[name] > 1]
        if not clashing:
            return names
        grown = [i for i in clashing if depth[i] < len(parts[i])]
        if not grown:
            raise ValueError(f"cannot give {[str(paths[i]) for i in clashing]} distinct result names")
        for i in grown:
            depth[i] += 1


def check_folder_path(path: str | os.PathLike, option: str = "--out") -> Path:
    """Refuse (``NotADirectoryError``, naming ``option``) a path that cannot be a folder: an existing file, or a file
    on the way to it; nothing is created. An empty path (``--out ""``) is refused: it would mean the current folder."""
    if not str(path).strip():
        raise ValueError(f"{option} is empty; give a folder (. for the current one)")
    path = Path(path)
    blocking = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        where = "" if blocking == path else f" ({blocking} is)"
        raise NotADirectoryError(f"{option} {path} cannot be a folder: it is a file{where}; choose another path")
    return path


def check_output_dir(path: str | os.PathLike, option: str = "--out") -> Path:
    """Create the output folder ``path`` now, so that a path that cannot be one (an existing file, or a file on the
    way to it) or an unwritable place is refused before the work, in one line naming ``option``."""
    path = check_folder_path(path, option)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OSError(f"{option} {path}: cannot create the folder ({error.strerror or error})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(f"{option} {path}: the folder is not writable")
    return path


def check_new_folder(path: str | os.PathLike, option: str = "--out") -> Path:
    """``path`` (:func:`check_folder_path`) when nothing is in it yet; a folder holding files is refused, naming a few
    of them: a save into it would replace some files and keep the others (a predictor saved over another keeps the
    old one's ``certificates.json``; a predictor saved into its own input folder replaces what it was read from)."""
    path = check_folder_path(path, option)
    held = sorted(entry.name for entry in path.iterdir()) if path.is_dir() else []
    if held:
        shown = ", ".join(held[:4]) + (f" and {len(held) - 4} more" if len(held) > 4 else "")
        raise FileExistsError(f"{option} {path} already holds files ({shown}); give a new folder or delete it first")
    return path


def setting_differences(recorded: dict, current: dict) -> list[str]:
    """``"key: X there, Y now"`` for every setting of ``current`` that ``recorded`` holds otherwise (JSON-shown)."""
    return [
        f"{key}: {json.dumps(recorded.get(key))} there, {json.dumps(value)} now"
        for key, value in current.items()
        if recorded.get(key) != value
    ]


def check_same_record(record_path: str | os.PathLike, wanted: dict, what: str, way_out: str) -> None:
    """Refuse (:class:`RunFolderMismatchError`) to write or use ``what`` when its record (a JSON file such as a
    generated split's ``.meta.json``) holds other values for ``wanted``'s keys, listing each difference, then
    ``way_out``; a missing record passes (nothing there yet, or the user's own data)."""
    record_path = Path(record_path)
    if not record_path.is_file():
        return
    recorded = read_json(record_path, f"delete {record_path.parent} to start afresh")
    differences = setting_differences(recorded if isinstance(recorded, dict) else {}, json.loads(json.dumps(wanted)))
    if differences:
        raise RunFolderMismatchError(f"{what} was made otherwise ({'; '.join(differences)}): {way_out}")


def claim_run_folder(
    out: str | os.PathLike, made_by: dict, option: str = "--out", overwrite: bool | None = None
) -> str:
    """Check ``out`` against what this run is made of (``made_by``: JSON values), before any work, and record it.

    Returns ``"new"`` (a missing or empty folder: ``run.json`` is written), ``"continued"`` (its record matches: a
    rerun or a resumed run reuses what is there) or ``"unrecorded"`` (a used folder without a record, e.g. of an
    older version: a warning names what it holds, which this run may reuse; the record is written). A record that
    differs raises :class:`RunFolderMismatchError` listing every difference.

    ``overwrite`` is the caller's ``--overwrite`` flag (None: it has none). False refuses a differing record and a
    used folder without one, naming the flag; True takes either over: the record is rewritten and ``"replaced"``
    returned (the caller then replaces its outputs there)."""
    out = check_output_dir(out, option)
    record_path = out / RUN_RECORD
    made_by = json.loads(json.dumps(made_by))  # the values as they read back
    way_out = f"delete {out} to start afresh" if overwrite is None else "pass --overwrite to replace it"
    if record_path.is_file():
        recorded = read_json(record_path, f"delete {out} (or just {RUN_RECORD}) to start afresh")
        recorded = recorded if isinstance(recorded, dict) else {}
        differences = setting_differences(recorded, made_by)
        if differences and not overwrite:
            raise RunFolderMismatchError(
                f"{option} {out} holds a run made with other settings ({'; '.join(differences)}); its outputs would "
                f"be reused or left beside this run's: choose another {option}, or {way_out}"
            )
        if not differences:
            return "continued"
    held = sorted(entry.name for entry in out.iterdir())
    shown = ", ".join(held[:6]) + (f" and {len(held) - 6} more" if len(held) > 6 else "")
    state = "new"
    if held and overwrite is False:
        raise RunFolderMismatchError(
            f"{option} {out} already holds {shown}, and no {RUN_RECORD} says what made them; choose another "
            f"{option}, or pass --overwrite to write over them"
        )
    if held and overwrite:
        state = "replaced"
    elif held:
        warnings.warn(
            f"{out} already holds {shown}, and no {RUN_RECORD} says what made them; this run reuses or keeps them",
            stacklevel=2,
        )
        state = "unrecorded"
    write_json_atomic(record_path, made_by)
    return state


def _lock(folder: Path, option: str) -> int:
    """Take ``folder``'s lock (an exclusive ``flock`` on :data:`LOCK_NAME`, released by the kernel when the process
    ends, so the lock of a killed run is simply taken over) and write who holds it; returns its descriptor.
    :class:`RunFolderLockedError` names the holder (pid, host, start time, command) when another process has it."""
    import fcntl

    path = folder / LOCK_NAME
    while True:
        try:
            handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except IsADirectoryError:
            raise IsADirectoryError(f"{path} is a folder, not a run lock: remove it") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(handle, 4096).decode("utf-8", "replace")
            os.close(handle)
            try:
                held = json.loads(holder)
                who = f"pid {held['pid']} on {held['host']}, started {held['started']}: {held['command']}"
            except (ValueError, KeyError, TypeError):
                who = "a process that has not said who it is yet"
            raise RunFolderLockedError(
                f"{option} {folder} is in use by another run ({who}); wait for it to end, or choose another {option}"
            ) from None
        try:
            same = os.fstat(handle).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a lock file its last holder removed while this process was opening it
            break
        os.close(handle)
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300]
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}
    os.ftruncate(handle, 0)
    os.write(handle, json.dumps({**me, "command": command}).encode())
    return handle


@contextmanager
def held_run_folder(path: str | os.PathLike, option: str = "--output_dir", lock: bool = True) -> Iterator[Path]:
    """The output folder of one run, for the time of the ``with`` body: created (:func:`check_output_dir`), locked
    against a second run (``lock``: the main process of a distributed run; :class:`RunFolderLockedError` names the
    holder) and, when the body raises while the folder holds nothing, removed again with the parents this call
    created: a refused run leaves no empty folder behind."""
    path = Path(path)
    missing = [folder for folder in (path, *path.parents) if not folder.exists()]
    path = check_output_dir(path, option)
    handle = None
    try:
        handle = _lock(path, option) if lock else None
        yield path
    except BaseException:
        _release(path, handle)
        handle = None
        for folder in missing:  # innermost first; a folder holding anything stays
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    finally:
        _release(path, handle)


def _release(folder: Path, handle: int | None) -> None:
    if handle is not None:
        (folder / LOCK_NAME).unlink(missing_ok=True)  # before the unlock: no one else holds it meanwhile
        os.close(handle)
