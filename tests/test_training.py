import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from m3.loading import load_m3_model
from m3.training import PRESETS, ScaleLossMeter, TrainConfig, ensure_granularity_data, sampled_scale, train


def tiny_run(tmp_path, name, **overrides) -> TrainConfig:
    data = tmp_path / "data"
    settings = dict(
        output_dir=str(tmp_path / name),
        data_path=str(data / "train.json"),
        eval_data_path=None,
        train_images=6,
        eval_images=0,
        batch_size=4,
        learning_rate=3e-3,
        warmup_ratio=0.0,
        max_steps=6,
        save_steps=100,
        logging_steps=1,
        eval_steps=0,
        tiny_hidden_size=32,
        seed=0,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def test_killed_and_resumed_run_ends_with_the_same_weights(tmp_path):
    uninterrupted = train(tiny_run(tmp_path, "full"))
    interrupted = tiny_run(tmp_path, "resumed", stop_after_steps=3)
    train(interrupted)
    assert not (tmp_path / "resumed" / "model.safetensors").exists()  # a "killed" run leaves only a checkpoint
    checkpoints = sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir())
    assert checkpoints == ["step-0000003"]
    state = json.loads((tmp_path / "resumed" / "checkpoints" / "step-0000003" / "trainer_state.json").read_text())
    assert state["step"] == 3 and state["batches_in_epoch"] == 3
    train(tiny_run(tmp_path, "resumed", resume=True))

    full = load_file(uninterrupted / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "model.safetensors")
    assert full.keys() == resumed.keys()
    for key in full:
        assert torch.equal(full[key], resumed[key]), key
    summary = json.loads((tmp_path / "resumed" / "train_summary.json").read_text())
    assert summary["steps"] == 6


def test_short_tiny_training_lowers_the_loss_and_saves_a_loadable_model(tmp_path):
    output = train(tiny_run(tmp_path, "run", max_steps=25, train_images=8))
    history = json.loads((output / "train_summary.json").read_text())["history"]
    losses = [row["loss"] for row in history if "loss" in row]
    assert len(losses) == 25
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    model = load_m3_model(output)
    assert model.config.m3_scales == [1, 9, 36, 144, 576] and model.config.m3_train_vision_tower


def test_single_scale_baseline_trains_only_its_scale(tmp_path):
    output = train(tiny_run(tmp_path, "ss", scales="576", max_steps=2))
    history = json.loads((output / "train_summary.json").read_text())["history"]
    assert set(history[0]) == {"step", "loss", "L576", "seconds"}
    assert 0 < history[0]["seconds"] < history[1]["seconds"]  # wall time since the loop began
    assert load_m3_model(output).config.m3_scales == [576]


@pytest.mark.parametrize("train_vision_tower", [False, True])
def test_a_frozen_vision_tower_is_left_out_of_the_optimizer(train_vision_tower):
    from m3.tiny import tiny_model
    from m3.training import trainable_parameters

    model = tiny_model("llava", m3_train_vision_tower=train_vision_tower)
    params = {id(p) for p in trainable_parameters(model)}
    vision = [p for n, p in model.model.vision_tower.named_parameters() if not n.startswith("post_layernorm")]
    assert all((id(p) in params) == train_vision_tower for p in vision)
    assert all(p.requires_grad == train_vision_tower for p in vision)
    assert not any(p.requires_grad for p in model.model.vision_tower.post_layernorm.parameters())
    assert all(id(p) in params for p in model.model.multi_modal_projector.parameters())
    assert all(id(p) in params for p in model.model.language_model.parameters())


def test_paper_presets_follow_the_official_recipe():
    for name, lr in (("llava-1.5-7b", 2e-5), ("llava-next-7b", 1e-5)):
        preset = TrainConfig(**PRESETS[name])
        assert preset.learning_rate == lr and preset.mixed_precision == "bf16"
        assert preset.batch_size * preset.gradient_accumulation_steps * 8 == 128
        assert preset.warmup_ratio == 0.03 and preset.lr_scheduler == "cosine" and preset.num_epochs == 1.0
        assert not preset.train_vision_tower and preset.gradient_checkpointing


def test_scripts_parse_presets_and_overrides(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_m3", "scripts/train_m3.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    config = script.parse_args(["--preset", "llava-1.5-7b", "--scales", "576", "--model", "x"])
    assert config.learning_rate == 2e-5 and config.scale_list() == [576] and config.model == "x"
    (tmp_path / "c.json").write_text(json.dumps({"learning_rate": 0.5, "batch_size": 3}))
    config = script.parse_args(["--config", str(tmp_path / "c.json"), "--batch_size", "5"])
    assert config.learning_rate == 0.5 and config.batch_size == 5
    (tmp_path / "bad.json").write_text(json.dumps({"learning_rat": 0.5}))
    with pytest.raises(SystemExit):
        script.parse_args(["--config", str(tmp_path / "bad.json")])


def test_the_run_identity_fields_are_the_ones_checkpoints_record():
    """Checkpoints store these settings (a hand-kept list named them before the arguments were split by concern);
    --resume compares them (a setting an older checkpoint does not record is warned about, not compared)."""
    from dataclasses import fields

    from m3.training_args import ARGUMENT_CLASSES, RUN_SETTINGS

    assert set(RUN_SETTINGS) == {
        "family", "scales", "scale_sampling", "mixed_scale_fraction", "token_selection", "train_vision_tower",
        "learning_rate", "weight_decay", "warmup_ratio", "lr_scheduler", "lr_cycles", "lr_decay_ratio", "num_epochs",
        "max_steps", "batch_size",
        "gradient_accumulation_steps", "max_length", "conversation_template", "max_grad_norm", "mixed_precision",
        "seed", "skip_bad_images", "tiny_hidden_size", "tiny_vision_layers", "tiny_text_layers",
        "tiny_projector_hidden_act", "tiny_vision_feature_layer", "train_images", "eval_images",
    }  # fmt: skip
    parts = [{f.name for f in fields(part)} for part in ARGUMENT_CLASSES]
    assert sum(map(len, parts)) == len(set().union(*parts)) == len(fields(TrainConfig))  # each field in one part


def test_training_starts_from_a_saved_checkpoint_with_new_m3_settings(tmp_path):
    """The real path: --model DIR (a llava-hf style folder with tokenizer and image processor)."""
    from m3.data.granularity import VOCABULARY
    from m3.processing import M3Processor
    from m3.tiny import build_tiny_tokenizer, tiny_image_processor, tiny_model

    tokenizer = build_tiny_tokenizer(extra_words=VOCABULARY)
    base = tiny_model("llava", tokenizer=tokenizer, hidden_size=32)
    base.save_pretrained(tmp_path / "base")
    M3Processor(tiny_image_processor("llava"), tokenizer, base.config).save_pretrained(tmp_path / "base")

    output = train(
        tiny_run(tmp_path, "finetuned", model=str(tmp_path / "base"), scales="1,9", max_steps=2,
                 train_vision_tower=False)
    )  # fmt: skip
    tuned = load_m3_model(output)
    assert tuned.config.m3_scales == [1, 9] and tuned.config.m3_default_scale == 9
    assert not tuned.config.m3_train_vision_tower
    before, after = base.state_dict(), tuned.state_dict()
    vision = [k for k in before if ".vision_tower." in k]
    assert all(torch.equal(before[k], after[k]) for k in vision)  # frozen tower untouched
    assert not torch.equal(before["lm_head.weight"], after["lm_head.weight"])  # the LLM trained


def test_a_granularity_split_of_another_generator_version_is_refused(tmp_path):
    config = tiny_run(tmp_path, "run")
    ensure_granularity_data(config)  # writes the split
    meta = tmp_path / "data" / "train.meta.json"
    ensure_granularity_data(config)  # the same version is reused silently
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "generator_version": "0"}))
    with pytest.raises(ValueError, match="generator version 0.*delete that folder"):
        ensure_granularity_data(config)


@pytest.mark.parametrize("feature_layer", [0, -2, -1, [0, -2]])
def test_a_trained_tower_trains_exactly_the_parameters_that_get_gradients(feature_layer):
    """Unread tower layers are frozen, or DDP fails on parameters that never receive a gradient."""
    from m3.processing import M3Processor
    from m3.tiny import build_tiny_tokenizer, tiny_image_processor, tiny_model
    from m3.training import trainable_parameters
    from tests.conftest import random_image, training_batch

    tokenizer = build_tiny_tokenizer()
    model = tiny_model(
        "llava", tokenizer=tokenizer, vision_layers=3, vision_feature_layer=feature_layer, m3_train_vision_tower=True
    ).train()
    processor = M3Processor(tiny_image_processor("llava"), tokenizer, model.config)
    batch = training_batch(processor, [random_image(96, 96, 0)], ["what color is the image ?"], ["red"])
    trained = {id(p) for p in trainable_parameters(model)}
    model(**batch, m3_scales=[1, 576]).loss.backward()
    for name, param in model.model.vision_tower.named_parameters():
        if name.startswith("embeddings.class_embedding"):
            continue  # dropped with the CLS token ("default" strategy); its gradient is an exact zero
        assert (param.grad is not None) == (id(param) in trained), name
    layers = {
        n.split(".")[2] for n, p in model.model.vision_tower.named_parameters() if id(p) in trained and ".layers." in n
    }
    deepest = max(i % 4 for i in ([feature_layer] if isinstance(feature_layer, int) else feature_layer))
    assert layers == {str(i) for i in range(deepest)}


# --- scale sampling (paper Table 8) ---


def test_sampled_scales_are_seeded_per_step_and_uniform():
    scales = [1, 9, 36, 144, 576]
    draws = [sampled_scale(scales, 0, step) for step in range(5000)]
    assert draws[:50] == [sampled_scale(scales, 0, step) for step in range(50)]  # a pure function of (seed, step)
    assert draws[:50] != [sampled_scale(scales, 1, step) for step in range(50)]
    counts = {scale: draws.count(scale) for scale in scales}
    assert all(abs(count / 5000 - 0.2) < 0.03 for count in counts.values()), counts
    assert {sampled_scale([576], 3, step) for step in range(20)} == {576}


def test_scale_loss_meter_keeps_each_scales_recent_mean():
    meter = ScaleLossMeter(window=2)
    meter.update({9: 4.0})
    meter.update({1: 1.0})
    meter.update({9: 2.0})
    meter.update({9: 0.0})  # 4.0 leaves the window
    assert meter.means() == {1: 1.0, 9: 1.0}
    step_losses = ScaleLossMeter(window=1)
    step_losses.update({1: 3.0, 9: 2.0})
    step_losses.update({1: 1.0, 9: 0.5})
    assert step_losses.means() == {1: 1.0, 9: 0.5}  # averaged sampling: the step's own losses, as before


def test_random_scale_run_killed_and_resumed_draws_the_same_scales_and_weights(tmp_path):
    settings = dict(scale_sampling="random", max_steps=8)
    uninterrupted = train(tiny_run(tmp_path, "full", **settings))
    train(tiny_run(tmp_path, "resumed", stop_after_steps=4, **settings))
    train(tiny_run(tmp_path, "resumed", resume=True, **settings))

    full = load_file(uninterrupted / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "model.safetensors")
    for key in full:
        assert torch.equal(full[key], resumed[key]), key
    history = json.loads((uninterrupted / "train_summary.json").read_text())["history"]
    drawn = [row["scale"] for row in history]
    assert drawn == [sampled_scale([1, 9, 36, 144, 576], 0, step) for step in range(8)]
    assert len(set(drawn)) > 1
    after_resume = json.loads((tmp_path / "resumed" / "train_summary.json").read_text())["history"]
    assert [row["scale"] for row in after_resume] == drawn[4:]
    for row in history:  # one scale per step: the step's loss is that scale's, the others are running means
        assert {"step", "scale", "loss", f"L{row['scale']}"} <= set(row)
        assert set(row) - {"step", "scale", "loss", "seconds"} <= {f"L{s}" for s in drawn}
    assert load_m3_model(uninterrupted).config.m3_scales == [1, 9, 36, 144, 576]


def test_unknown_scale_sampling_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown scale_sampling 'mixed'"):
        train(tiny_run(tmp_path, "bad", scale_sampling="mixed"))


def test_train_script_takes_the_ablation_options():
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_m3", "scripts/train_m3.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    config = script.parse_args(["--scale_sampling", "random", "--token_selection", "spatial"])
    assert config.scale_sampling == "random" and config.token_selection == "spatial"
    assert script.parse_args([]).scale_sampling == "averaged" and script.parse_args([]).token_selection == "avg_pool"
    with pytest.raises(SystemExit):
        script.parse_args(["--token_selection", "max_pool"])


def scheduled_rates(config: TrainConfig, total_steps: int) -> list[float]:
    """The learning rate of every optimizer step under the schedule ``train`` builds for ``config``."""
    from transformers import get_scheduler

    from m3.training import scheduler_kwargs

    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=config.learning_rate)
    scheduler = get_scheduler(
        config.lr_scheduler, optimizer, num_warmup_steps=round(config.warmup_ratio * total_steps),
        num_training_steps=total_steps, scheduler_specific_kwargs=scheduler_kwargs(config, total_steps),
    )  # fmt: skip
    rates = []
    for _ in range(total_steps):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return rates


def test_restarted_and_stable_schedules_reach_the_peak_rate_again_or_hold_it():
    restarts = scheduled_rates(TrainConfig(lr_scheduler="cosine_with_restarts", lr_cycles=2, learning_rate=1.0), 1000)
    assert max(restarts[:100]) == pytest.approx(1.0, abs=0.01)  # after warmup
    restart = int(np.argmax(np.diff(restarts))) + 1  # the first cycle ends near 0, the second starts at the top
    assert 450 < restart < 550 and restarts[restart - 1] < 0.01 and restarts[restart] > 0.99
    stable = scheduled_rates(
        TrainConfig(lr_scheduler="warmup_stable_decay", lr_decay_ratio=0.2, learning_rate=1.0), 1000
    )
    assert all(rate == pytest.approx(1.0) for rate in stable[30:800]) and stable[-1] < 0.01
    assert stable[900] < 0.9  # the last 20 % decays


def test_schedule_settings_are_checked_before_training(tmp_path):
    for bad, message in (
        (dict(lr_scheduler="cosine_restarts"), "unknown lr_scheduler"),
        (dict(lr_cycles=2), "only with cosine_with_restarts"),
        (dict(lr_scheduler="cosine_with_restarts", lr_cycles=0), "lr_cycles must be >= 1"),
        (dict(lr_scheduler="warmup_stable_decay", lr_decay_ratio=1.5), "lr_decay_ratio must be in"),
    ):
        with pytest.raises(ValueError, match=message):
            train(tiny_run(tmp_path, "refused", **bad))
        assert not (tmp_path / "refused").exists()


def test_periodic_evaluation_logs_every_family(tmp_path):
    """The overall accuracy hides which family a run has learned: every periodic evaluation records each family's
    accuracy per scale too, and the progress line names them."""
    from m3.data.granularity import FAMILIES
    from m3.training import evaluation_line

    config = tiny_run(
        tmp_path, "evaluated", eval_data_path=str(tmp_path / "data" / "validation.json"), eval_images=2,
        eval_samples=6, eval_steps=3, max_steps=3,
    )  # fmt: skip
    history = json.loads((train(config) / "train_summary.json").read_text())["history"]
    evaluations = [row for row in history if "eval_accuracy" in row]
    assert len(evaluations) == 1 and set(evaluations[0]["eval_family_accuracy"]) == set(FAMILIES)
    families = evaluations[0]["eval_family_accuracy"]
    for scale, overall in evaluations[0]["eval_accuracy"].items():  # 2 records per family: overall is their mean
        assert overall == pytest.approx(sum(by_scale[scale] for by_scale in families.values()) / len(FAMILIES))
    line = evaluation_line(3, {"overall": {1: 0.5, 576: 0.75}, "background": {1: 1.0, 576: 1.0}, "x": {1: 0, 576: 0.5}})
    assert line == "step 3 eval accuracy 1:0.500 576:0.750 | at 576: background 1.000 x 0.500"
