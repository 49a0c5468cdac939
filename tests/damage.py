"""Test helpers for the failure-behaviour tests: copies of the tiny model, and ways to damage files as a fault
campaign does (a flipped weight byte, a truncated file, NaN weights), plus running a script in-process."""

from __future__ import annotations

import importlib.util
import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[1]
TINY_M3 = REPO / "checkpoints" / "tiny-m3"


def copy_tiny_m3(destination: Path) -> Path:
    """A private copy of the committed tiny model (2.4 MB), without any stored fingerprint."""
    shutil.copytree(TINY_M3, destination, ignore=shutil.ignore_patterns("m3_fingerprint.json"))
    return destination


def flip_middle_weight(path: Path) -> None:
    """Change the lowest mantissa bit of the float32 weight in the middle of a safetensors file, in place: a tiny,
    finite change that the first and last MiB of the file do not show."""
    with open(path, "r+b") as handle:
        (header_length,) = struct.unpack("<Q", handle.read(8))
        start = 8 + header_length
        size = path.stat().st_size
        offset = start + ((size - start) // 2) // 4 * 4  # the low byte of a little-endian float32
        handle.seek(offset)
        byte = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([byte ^ 1]))


def truncate(path: Path, keep: float = 0.5) -> None:
    """Cut a file to ``keep`` of its size, as a full disk or an interrupted copy leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def make_non_finite(model_dir: Path, count: int = 3) -> list[str]:
    """Set ``count`` weight tensors of a saved model to NaN (what ``--learning_rate 1e6`` used to save)."""
    path = model_dir / "model.safetensors"
    tensors = load_file(path)
    names = sorted(name for name, tensor in tensors.items() if tensor.is_floating_point())[:count]
    for name in names:
        tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, path, metadata={"format": "pt"})
    return names


def load_script(name: str):
    """``scripts/NAME.py`` as a module (its ``main(argv)`` runs the command in this process)."""
    spec = importlib.util.spec_from_file_location(f"script_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(name: str, argv: list[str], capsys) -> tuple[int, str]:
    """Run a script's ``main`` in-process; ``(exit code, stderr)``. A traceback would propagate as an exception."""
    module = load_script(name)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        module.main(argv)
    return exit_info.value.code, capsys.readouterr().err


def one_line_error(stderr: str) -> str:
    """The error line of a user error: one line starting with ``error:``, the last one written (progress bars may
    come before it), and no traceback."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert "Traceback" not in stderr, stderr
    assert len(errors) == 1 and lines[-1] == errors[0], stderr
    return errors[0]


def strict_json(text: str):
    """``json.loads`` that refuses NaN and +-Infinity (which are not JSON)."""

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)
