"""Where a run's results go, checked before any work: nothing overwritten, nothing reused without a word.

* :func:`distinct_names`: one result name per input (a model folder), unique even when two inputs share a folder
  name (``A/final`` and ``B/final`` become ``A-final`` and ``B-final``); an input given twice is refused.
* :func:`check_output_dir`: an output path that cannot be a folder (an existing file) is refused before the work
  that would end in writing to it.
* :func:`check_same_record`: what a record (e.g. a generated split's meta) says made a folder's files must match.
* :func:`claim_run_folder`: a run folder records what made it (``run.json``: the settings whose outputs a rerun
  reuses or leaves in place). Rerunning with the same settings continues the run; other settings are refused,
  listing every difference; a used folder that records nothing is reused with a warning that names what it holds.
  A script with an ``--overwrite`` flag refuses such a folder too, and with the flag takes it over.
"""

from __future__ import annotations

import json
import os
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from .files import read_json, write_json_atomic

RUN_RECORD = "run.json"


class RunFolderMismatchError(ValueError):
    """A run folder was made by other settings than the run about to use it."""


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


def check_output_dir(path: str | os.PathLike, option: str = "--out") -> Path:
    """Create the output folder ``path`` now, so that a path that cannot be one (an existing file, or a file on the
    way to it) or an unwritable place is refused before the work, in one line naming ``option``."""
    path = Path(path)
    blocking = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        where = "" if blocking == path else f" ({blocking} is)"
        raise NotADirectoryError(f"{option} {path} cannot be a folder: it is a file{where}; choose another path")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OSError(f"{option} {path}: cannot create the folder ({error.strerror or error})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(f"{option} {path}: the folder is not writable")
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
