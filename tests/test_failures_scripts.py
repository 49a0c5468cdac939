"""Every script answers a user error with one ``error:`` line and exit code 2 (the shared ``m3.cli`` helper)."""

import json

import pytest

from m3.data.granularity import write_split

from .damage import TINY_M3, one_line_error, run_script


def test_the_helper_turns_user_errors_into_one_line_and_exit_2(capsys):
    from m3.cli import user_errors

    with pytest.raises(SystemExit) as exit_info, user_errors():
        raise FileNotFoundError("data file x.json does not exist")
    assert exit_info.value.code == 2
    assert one_line_error(capsys.readouterr().err) == "error: data file x.json does not exist"
    with pytest.raises(ZeroDivisionError), user_errors():  # a bug keeps its traceback
        raise ZeroDivisionError("division by zero")


def test_evaluate_script(tmp_path, capsys):
    data = write_split(tmp_path / "data", "test", num_images=1, seed=0)
    argv = ["--model", str(TINY_M3), "--out", str(tmp_path / "out")]
    code, err = run_script("evaluate", [*argv, "--data", str(tmp_path / "missing.json")], capsys)
    assert code == 2 and "missing.json" in one_line_error(err)
    code, err = run_script("evaluate", [*argv, "--data", str(data), "--limit", "-5"], capsys)
    assert code == 2 and "limit" in one_line_error(err)
    code, err = run_script("evaluate", [*argv, "--data", str(data), "--scales", "9,9"], capsys)
    assert code == 2 and "9" in one_line_error(err)
    records = json.loads(data.read_text())
    records[0]["conversations"][0]["value"] = "<image>\n" + " ".join(["what"] * 5000) + " ?"
    data.write_text(json.dumps(records))
    code, err = run_script("evaluate", [*argv, "--data", str(data)], capsys)
    assert code == 2 and f"item {records[0]['id']} is" in one_line_error(err) and "context" in one_line_error(err)


def test_quickstart_script(tmp_path, capsys):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    code, err = run_script("quickstart", ["--out", str(tmp_path / "out"), "--data-dir", str(not_a_folder)], capsys)
    assert code == 2 and str(not_a_folder) in one_line_error(err)
