"""The README's test command passes without the optional extras (their tests skip, naming the install command), and
``.ci/run``'s M3_REQUIRE_EXTRAS=1 turns each of those skips into a failure. A missing extra is simulated by a pytest
plugin that puts ``None`` in ``sys.modules`` for its modules, so ``import lmms_eval`` raises ImportError."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest

from . import extras

REPO = Path(__file__).resolve().parents[1]
BLOCKER = "import os\nimport sys\n\nfor name in os.environ['M3_TEST_BLOCK'].split(','):\n    sys.modules[name] = None\n"
# every test that needs an extra, and the install command its skip must name
NEEDING = {
    "tests/test_lmms_eval_plugin.py": extras.INSTALL["lmms-eval"],
    "tests/test_lmms_eval_runs.py": extras.INSTALL["lmms-eval"],
    "tests/test_demo_browser.py": extras.INSTALL["browser-test"],
    "tests/test_demo.py::test_page_handlers_turn_every_user_error_into_a_message": extras.INSTALL["demo"],
}
PARTLY = "tests/test_failures_second_pass.py::test_every_image_reader_gives_the_same_pixels"  # lmms-eval: one reader


def test_need_imports_skips_or_fails(monkeypatch):
    monkeypatch.delenv(extras.REQUIRE, raising=False)
    assert extras.need("json", "demo").__name__ == "json" and extras.installed("json", "demo")
    monkeypatch.setitem(sys.modules, "gradio", None)
    with pytest.raises(pytest.skip.Exception, match=r"demo extra is missing.*pip install -e \"\.\[demo\]\""):
        extras.need("gradio", "demo")
    assert not extras.installed("gradio", "demo")
    monkeypatch.setenv(extras.REQUIRE, "1")
    for check in (extras.need, extras.installed):
        with pytest.raises(pytest.fail.Exception, match=r"M3_REQUIRE_EXTRAS=1 but the demo extra is missing"):
            check("gradio", "demo")


def _pytest_without_extras(tmp_path: Path, require: bool) -> dict[str, tuple[str, str]]:
    """Run pytest on every extra-needing test with lmms-eval, gradio and selenium unimportable: test -> (outcome,
    message), read from its JUnit XML (the one report that names a module skipped at import)."""
    tmp_path.mkdir()
    (tmp_path / "block_extras.py").write_text(BLOCKER)
    env = {k: v for k, v in os.environ.items() if k != extras.REQUIRE}
    env.update(M3_TEST_BLOCK="lmms_eval,gradio,selenium", PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]))
    if require:
        env[extras.REQUIRE] = "1"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "block_extras", "-p", "no:cacheprovider",
               "--continue-on-collection-errors", f"--junitxml={tmp_path / 'junit.xml'}", *NEEDING, PARTLY]  # fmt: skip
    run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert (run.returncode != 0) == require, run.stdout[-3000:]
    found = {}
    for case in ElementTree.parse(tmp_path / "junit.xml").iter("testcase"):
        module, name = (case.get("classname") or case.get("name")).replace(".", "/") + ".py", case.get("name")
        test = module if not case.get("classname") else f"{module}::{name}"
        found[test] = next(((child.tag, child.text or "") for child in case), ("passed", ""))
    return found


def test_missing_extras_skip_with_the_install_command_and_fail_where_required(tmp_path):
    found = _pytest_without_extras(tmp_path / "skip", require=False)
    for test, install in NEEDING.items():
        outcome, message = found[test]
        assert outcome == "skipped" and install in message and "\n" not in message.strip(), (test, found[test])
        assert test.split("::")[0] in message, message  # reported at the test's own line, not in tests/extras.py
    assert found[PARTLY] == ("passed", "")  # runs without the lmms-eval reader

    found = _pytest_without_extras(tmp_path / "require", require=True)
    for test in [*NEEDING, PARTLY]:
        outcome, message = found[test]
        assert outcome in ("error", "failure") and "M3_REQUIRE_EXTRAS=1 but the" in message, (test, found[test])
