"""The lmms-eval plugin's failure behaviour (issue 31): a multiple-choice doc that cannot be scored stops the run
naming it, a question past the context is refused, and every argument is read by one table with one-line errors.

Needs the lmms-eval extra, like tests/test_lmms_eval_plugin.py (skipped without it; required in CI)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from . import extras
from .damage import TINY_M3
from .lmms_eval_tasks import BROKEN_CHOICE_TASK, documents, offline_env, probe_requests, write_tasks

REPO = Path(__file__).resolve().parents[1]
ROUTER = TINY_M3.parent / "tiny-m3-router"

extras.need("m3_lmms_eval.models", "lmms-eval")  # skips the module without the extra (fails in CI)


@pytest.fixture(scope="module")
def adaptive_dir(tmp_path_factory) -> Path:
    """The committed tiny model and router as one AdaptiveM3 folder (what ``m3_adaptive`` loads)."""
    from adaptive import AdaptiveM3

    return AdaptiveM3.from_pretrained(TINY_M3, ROUTER).save_pretrained(tmp_path_factory.mktemp("adaptive"))


@pytest.fixture(scope="module")
def models(adaptive_dir):
    from m3_lmms_eval.models import M3, M3Adaptive

    return {
        "m3": M3(pretrained=str(TINY_M3), scale=9, device="cpu", batch_size=8),
        "m3_adaptive": M3Adaptive(pretrained=str(adaptive_dir), device="cpu", batch_size=8),
    }


# ---- 1. a loglikelihood doc that cannot be read stops the run, naming it
@pytest.mark.parametrize("name", ["m3", "m3_adaptive"])
def test_a_multiple_choice_doc_that_cannot_be_read_stops_the_run_naming_it(models, name, tmp_path):
    from m3_lmms_eval.models import FailedDocsError

    model = models[name]
    docs = documents(tmp_path)
    readable = model.loglikelihood(probe_requests(model, tmp_path, "loglikelihood", " red", docs[:-1]))
    assert all(math.isfinite(result.text[0]) for result in readable)
    with pytest.raises(FailedDocsError, match=r"^" + name + r": 1 loglikelihood doc\(s\) could not be scored "
                       r"\(task probe split test doc 6: .*missing.png"):  # fmt: skip
        model.loglikelihood(probe_requests(model, tmp_path, "loglikelihood", " red", docs))
    two_placeholders = dict(docs[0], question="<image> <image>\nwhat color is the square ?")  # one image
    with pytest.raises(FailedDocsError, match=r"1 loglikelihood doc\(s\).*task probe split test doc 1: "):
        model.loglikelihood(probe_requests(model, tmp_path, "loglikelihood", " red", [docs[1], two_placeholders]))


def test_a_generation_doc_that_fails_answers_empty_and_the_rest_are_answered(models, tmp_path, caplog):
    model = models["m3"]
    answers = model.generate_until(probe_requests(model, tmp_path, "generate_until", {"max_new_tokens": 2}))
    assert answers[-1].text == "" and all(answer.text for answer in answers[:-1])


def test_lmms_eval_cli_stops_on_a_broken_multiple_choice_task_for_both_models(adaptive_dir, tmp_path):
    """Before: a 7-doc task whose last image is missing was scored (the failed doc as option 0), exit 0."""
    write_tasks(tmp_path / "tasks", broken_choice=True)
    runs = {
        "m3": f"pretrained={TINY_M3},scale=9",
        "m3_adaptive": f"pretrained={adaptive_dir}",
    }
    processes = {}
    for name, model_args in runs.items():
        command = [sys.executable, "-m", "lmms_eval", "--model", name, "--model_args", model_args,
                   "--tasks", BROKEN_CHOICE_TASK, "--include_path", str(tmp_path / "tasks"), "--batch_size", "4",
                   "--device", "cpu", "--output_path", str(tmp_path / f"out-{name}")]  # fmt: skip
        processes[name] = subprocess.Popen(command, env=offline_env(tmp_path, REPO), cwd=tmp_path, text=True,
                                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    for name, process in processes.items():
        log = process.communicate(timeout=600)[0]
        assert "FailedDocsError" in log and f"task {BROKEN_CHOICE_TASK} split test doc 6" in log, log[-3000:]
        assert not list((tmp_path / f"out-{name}").glob("**/*_results.json")), "the broken task was scored"


# ---- 5. a question past the model's context is refused, as every other path refuses it
def test_a_question_past_the_context_is_refused(models, tmp_path):
    from m3_lmms_eval.models import FailedDocsError

    long = "what " * 5000 + "color is the square ?"
    for name, model in models.items():
        docs = documents(tmp_path)[:2]
        docs[1] = dict(docs[1], question=long)
        answers = model.generate_until(probe_requests(model, tmp_path, "generate_until", {"max_new_tokens": 2}, docs))
        assert answers[0].text and answers[1].text == "", name  # the long doc fails alone
        with pytest.raises(FailedDocsError, match=r"doc 1: ValueError: task probe split test doc 1 is \d+ text tokens"
                           r".*more than the model's context of 4096"):  # fmt: skip
            model.loglikelihood(probe_requests(model, tmp_path, "loglikelihood", " red", docs))
    model = models["m3"]
    docs = documents(tmp_path)[:1]
    with pytest.raises(FailedDocsError, match="context or its continuation"):  # a 15,000-character continuation
        model.loglikelihood(probe_requests(model, tmp_path, "loglikelihood", " red" * 5000, docs))


# ---- 6. every argument read by one table, with one-line errors when the model is built
@pytest.mark.parametrize(
    "model_args, message",
    [
        ({"max_batch_size": -4, "batch_size": "auto"}, "max_batch_size=-4 must be a whole number >= 1"),
        ({"batch_size": 0}, "batch_size=0 must be a whole number >= 1 or auto"),
        ({"batch_size": -2}, "batch_size=-2 must be a whole number >= 1 or auto"),
        ({"batch_size": "2.5"}, "batch_size='2.5' must be a whole number"),
        ({"scale": True}, "scale=True must be a whole number >= 1"),
        ({"scale": 9.5}, "scale=9.5 must be a whole number"),
        ({"scale": "nine"}, "scale='nine' must be a whole number"),
        ({"scale": 7}, "unknown scale 7"),
        ({"dtype": "float64"}, "dtype='float64' must be one of auto, float32, bfloat16, float16"),
        ({"template": "llama"}, "template='llama' must be one of plain, vicuna_v1, chat_template"),
        ({"scales": 9}, r"m3: unknown model arg\(s\) \['scales'\]; known: batch_size, device"),
        ({"pretrained": ""}, "model arg pretrained is required"),
        ({"device": "banana"}, "device='banana' is not a torch device"),  # before: torch's RuntimeError
    ],
)
def test_bad_model_args_are_refused_before_the_model_loads(model_args, message, monkeypatch):
    import m3.loading
    from m3_lmms_eval.models import M3

    monkeypatch.setattr(m3.loading, "load_m3_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(ValueError, match=message):
        M3(**{"pretrained": str(TINY_M3), "device": "cpu", **model_args})


@pytest.mark.parametrize(
    "model_args, message",
    [
        ({"budget": 0}, "budget=0 must be a whole number >= 1"),
        ({"budget": -1}, "budget=-1 must be a whole number >= 1"),
        ({"budget": 4.5}, "budget=4.5 must be a whole number"),
        ({"threshold": 1.5}, r"threshold=1.5 must be a finite number in \[0, 1\]"),
        ({"threshold": "nan"}, r"threshold='nan' must be a finite number"),
        ({"scale": 9}, r"m3_adaptive: unknown model arg\(s\) \['scale'\]"),
        ({"price": -1}, "price=-1 must be a finite number >= 0"),  # the price argument: one row of the table
        ({"price": "0.1", "threshold": "0.5"}, "a threshold or a price, not both"),
    ],
)
def test_bad_adaptive_model_args_are_refused_before_the_model_loads(model_args, message, monkeypatch):
    import adaptive.model
    from m3_lmms_eval.models import M3Adaptive

    monkeypatch.setattr(adaptive.model.AdaptiveM3, "from_pretrained", lambda *a, **k: pytest.fail("loaded"))
    with pytest.raises(ValueError, match=message):
        M3Adaptive(**{"pretrained": "anything", "device": "cpu", **model_args})


def test_integral_numbers_and_yaml_strings_are_read_as_meant(models, tmp_path, monkeypatch):
    from m3_lmms_eval.models import M3

    assert M3(pretrained=str(TINY_M3), scale="9.0", device="cpu").scale == 9  # before: "is not a number"
    assert M3(pretrained=str(TINY_M3), scale=36.0, device="cpu", batch_size="4").batch_size == 4
    model = models["m3"]
    seen = []
    original = model.model.generate

    def spy(*args, **kwargs):
        seen.append((kwargs.get("do_sample"), kwargs.get("max_new_tokens")))
        return original(*args, **{**kwargs, "max_new_tokens": 2})

    monkeypatch.setattr(model.model, "generate", spy)
    for gen_kwargs in ({"do_sample": "false"}, {"do_sample": "true", "max_new_tokens": "3"}, {"do_sample": 0}):
        model.generate_until(probe_requests(model, tmp_path, "generate_until", gen_kwargs)[:1])
    assert seen == [(False, 1024), (True, 3), (False, 1024)]  # before: "false" sampled


@pytest.mark.parametrize(
    "gen_kwargs, message",
    [
        ({"max_new_tokens": 0}, "max_new_tokens=0 must be a whole number >= 1"),  # before: 1024
        ({"max_new_tokens": -3}, "max_new_tokens=-3 must be a whole number >= 1"),
        ({"do_sample": "maybe"}, "do_sample='maybe' must be true or false"),
        ({"temperature": -0.5}, "temperature=-0.5 must be a finite number >= 0"),
        ({"top_p": 2}, r"top_p=2 must be a finite number in \[0, 1\]"),
        ({"num_beams": 0}, "num_beams=0 must be a whole number >= 1"),
        ({"until": 5}, "until=5 must be a string or a list of strings"),
        ({"max_new_tokens": 10**9}, "max_new_tokens=1000000000 leaves no room for a question in the model's context"),
    ],
)
def test_a_tasks_bad_generation_kwargs_stop_the_run_naming_the_setting(models, tmp_path, gen_kwargs, message):
    model = models["m3"]
    with pytest.raises(ValueError, match=f"task probe split test doc 0: generation_kwargs {message}"):
        model.generate_until(probe_requests(model, tmp_path, "generate_until", gen_kwargs)[:2])


# ---- hostile pass 2: a model arg given twice in --model_args
@pytest.mark.parametrize("name", ["m3", "m3_adaptive"])
def test_a_model_arg_given_twice_is_refused_before_the_model_loads(name, monkeypatch):
    import adaptive.model
    import m3.loading
    from m3_lmms_eval.arguments import check_arg_string
    from m3_lmms_eval.models import M3, M3Adaptive

    monkeypatch.setattr(adaptive.model.AdaptiveM3, "from_pretrained", lambda *a, **k: pytest.fail("loaded"))
    monkeypatch.setattr(m3.loading, "load_m3_model", lambda *a, **k: pytest.fail("loaded"))
    model, twice = {"m3": (M3, "scale=9,scale=36"), "m3_adaptive": (M3Adaptive, "budget=9,budget=144")}[name]
    with pytest.raises(ValueError, match=r"model arg\(s\) \['(scale|budget)'\] given more than once"):
        model.create_from_arg_string(f"pretrained={TINY_M3},{twice}", {"device": "cpu"})  # before: the last one won
    check_arg_string('pretrained=a,x={"k": 1, "k2": 2},y="p,q"')  # commas in a JSON value or quotes do not split
