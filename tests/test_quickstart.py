import subprocess
import sys
from pathlib import Path

from .damage import one_line_error

REPO = Path(__file__).resolve().parents[1]


def test_quickstart_smoke_runs_the_whole_chain_and_resumes(tmp_path):
    command = [sys.executable, str(REPO / "scripts" / "quickstart.py"), "--smoke", "--out", str(tmp_path / "qs")]
    first = subprocess.run(command, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    report = (tmp_path / "qs" / "report.md").read_text()
    for section in ("## Oracle and per-scale accuracy", "Table 2 rows", "## Routing", "curves.png"):
        assert section in report, section
    assert (tmp_path / "qs" / "oracle-test" / "report.png").exists()
    assert (tmp_path / "qs" / "router" / "curves.png").exists()
    from adaptive import AdaptiveM3

    adaptive = AdaptiveM3.from_pretrained(tmp_path / "qs" / "adaptive")
    image = next((tmp_path / "qs" / "granularity" / "images" / "test").glob("*.png"))
    assert adaptive.generate(image, "what color is in the black frame ?", max_new_tokens=2).scale in adaptive.scales
    # a second run reuses the benchmark, the model and the oracle builds
    weights = (tmp_path / "qs" / "m3" / "model.safetensors").read_bytes()
    second = subprocess.run(command, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-3000:]
    assert (tmp_path / "qs" / "m3" / "model.safetensors").read_bytes() == weights
    assert "continuing the smoke run" in second.stdout and "reusing the model" in second.stdout
    # a full run into the smoke run's folder would reuse its 12-image data and untrained model: refused before any work
    full = subprocess.run(command[:2] + command[3:], capture_output=True, text=True, timeout=600)
    assert full.returncode == 2 and '"smoke" there, "full" now' in one_line_error(full.stderr)
    assert (tmp_path / "qs" / "m3" / "model.safetensors").read_bytes() == weights
