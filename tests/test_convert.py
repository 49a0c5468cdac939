"""The original-LLaVA -> M3 converter: tiny M3 models are written in the original layout, converted back,
and must come out tensor-for-tensor and logit-for-logit identical."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    CLIPConfig,
    CLIPVisionModel,
    LlavaForConditionalGeneration,
    LlavaNextForConditionalGeneration,
    PreTrainedTokenizerFast,
)

from m3.anyres import anyres_num_image_tokens
from m3.convert import (
    clip_key_to_m3,
    convert_llava_checkpoint,
    grow_vocabulary,
    original_key_to_m3,
    vision_config_from_name,
)
from m3.loading import is_original_llava_config
from m3.modeling import M3LlavaForConditionalGeneration, M3LlavaNextForConditionalGeneration
from m3.processing import M3Processor, llava_prompt
from m3.tiny import IMAGE_SIZE, TINY_GRID_PINPOINTS, tiny_model

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "convert_llava_checkpoint.py"
M3_CLASSES = {"llava": M3LlavaForConditionalGeneration, "llava_next": M3LlavaNextForConditionalGeneration}
PLAIN_CLASSES = {"llava": LlavaForConditionalGeneration, "llava_next": LlavaNextForConditionalGeneration}
NEXT_IMAGE_SIZE = (96, 192)  # a 1x2 anyres grid: base crop + 2 grid crops

# Written independently of m3.convert: M3 in-memory prefix -> original LLaVA prefix.
TO_ORIGINAL = (
    ("model.vision_tower.", "model.vision_tower.vision_tower.vision_model."),
    ("model.multi_modal_projector.linear_1.", "model.mm_projector.0."),
    ("model.multi_modal_projector.linear_2.", "model.mm_projector.2."),
    ("model.language_model.", "model."),
)


@pytest.fixture(scope="module")
def sources(tokenizer):  # ``tokenizer``: the tiny tokenizer from conftest.py
    return {family: tiny_model(family, seed=3, tokenizer=tokenizer) for family in M3_CLASSES}


@pytest.fixture
def clip_config_dir(sources, tmp_path) -> str:
    """A local directory holding only the tiny CLIP config, to be named by ``mm_vision_tower``."""
    directory = tmp_path / "clip-config"
    sources["llava"].config.vision_config.save_pretrained(directory)
    return str(directory)


def original_state_dict(model, with_vision: bool = True) -> dict[str, torch.Tensor]:
    state = {}
    for key, tensor in model.state_dict().items():
        for ours, theirs in TO_ORIGINAL:
            if key.startswith(ours):
                key = theirs + key[len(ours) :]
                break
        if with_vision or not key.startswith("model.vision_tower."):
            state[key] = tensor.clone()
    return state


def original_config(model, mm_vision_tower: str) -> dict:
    text = model.config.text_config
    config = {
        "architectures": ["LlavaLlamaForCausalLM"],
        "model_type": "llava",
        "torch_dtype": "float32",
        "transformers_version": "4.37.2",
        "max_length": 4096,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "mm_vision_tower": mm_vision_tower,
        "mm_hidden_size": model.config.vision_config.hidden_size,
        "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": model.config.vision_feature_layer,
        "mm_vision_select_feature": "patch",
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "tune_mm_mlp_adapter": False,
        "matryoshka_vis_token_scale": None,
        "image_aspect_ratio": "pad",
        "mm_patch_merge_type": "flat",
    }
    for name in (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "hidden_act",
        "max_position_embeddings",
        "rms_norm_eps",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "tie_word_embeddings",
    ):
        config[name] = getattr(text, name)
    if isinstance(model, M3LlavaNextForConditionalGeneration):
        config.update(
            image_aspect_ratio="anyres", mm_patch_merge_type="spatial_unpad", image_grid_pinpoints=TINY_GRID_PINPOINTS
        )
    return config


def write_original(directory: Path, state: dict, config: dict, tokenizer=None, fmt: str = "safetensors") -> Path:
    """Write an original-layout checkpoint in two shards with an index (``fmt``: safetensors or bin)."""
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(config))
    keys = sorted(state)
    shards = {f"model-0000{i + 1}-of-00002.{fmt}": keys[i::2] for i in range(2)}
    if fmt == "bin":
        shards = {name.replace("model-", "pytorch_model-"): part for name, part in shards.items()}
    for name, part in shards.items():
        tensors = {key: state[key].contiguous() for key in part}
        save_file(tensors, directory / name) if fmt == "safetensors" else torch.save(tensors, directory / name)
    index = "model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"
    weight_map = {key: name for name, part in shards.items() for key in part}
    (directory / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return directory


def write_clip(directory: Path, model, layout: str) -> Path:
    """The source's vision tower as a CLIP checkpoint: ``CLIPVisionModel.save_pretrained`` or a full legacy
    CLIP file (``vision_model.*`` + text tower + ``position_ids`` buffer, as openai/clip-* on the hub)."""
    vision_config = model.config.vision_config
    vision = {k.removeprefix("model.vision_tower."): v for k, v in model.state_dict().items() if "vision_tower" in k}
    if layout == "clip_vision_model":
        tower = CLIPVisionModel(vision_config)
        tower.load_state_dict(vision, strict=True)
        tower.save_pretrained(directory)
        return directory
    directory.mkdir(parents=True)
    text_config = {"hidden_size": 32, "num_attention_heads": 4}
    CLIPConfig(vision_config=vision_config.to_dict(), text_config=text_config).save_pretrained(directory)
    tensors = {f"vision_model.{key}": value.contiguous() for key, value in vision.items()}
    tensors["vision_model.embeddings.position_ids"] = torch.arange(577)[None]
    tensors["text_model.embeddings.token_embedding.weight"] = torch.zeros(10, 32)
    tensors["logit_scale"] = torch.tensor(2.0)
    save_file(tensors, directory / "model.safetensors")
    return directory


def load_script():
    spec = importlib.util.spec_from_file_location("convert_llava_checkpoint", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def model_inputs(family: str, tokenizer, scale: int = 576, image_token_id: int | None = None):
    torch.manual_seed(0)
    image_token_id = tokenizer.convert_tokens_to_ids("<image>") if image_token_id is None else image_token_id
    words = tokenizer("what color is the circle ?", add_special_tokens=False)["input_ids"]
    if family == "llava":
        pixel_values, image_sizes, count = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE), None, scale
    else:
        pixel_values = torch.randn(1, 3, 3, IMAGE_SIZE, IMAGE_SIZE)
        image_sizes = torch.tensor([NEXT_IMAGE_SIZE])
        count = anyres_num_image_tokens(NEXT_IMAGE_SIZE, scale, TINY_GRID_PINPOINTS, IMAGE_SIZE)
    input_ids = torch.tensor([[tokenizer.bos_token_id, *[image_token_id] * count, *words]])
    return dict(input_ids=input_ids, pixel_values=pixel_values, image_sizes=image_sizes)


def load_checked(model_class, path: Path):
    model, info = model_class.from_pretrained(path, output_loading_info=True)
    assert not any(info[kind] for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    return model.eval()


def assert_same_tensors(converted, source):
    expected, actual = source.state_dict(), converted.state_dict()
    assert actual.keys() == expected.keys()
    for key, tensor in expected.items():
        assert torch.equal(actual[key], tensor), key


@torch.no_grad()
def assert_same_logits(converted, source, inputs, **kwargs):
    expected = source(**inputs, **kwargs).logits
    assert torch.equal(converted(**inputs, **kwargs).logits, expected)


# --------------------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("family", ["llava", "llava_next"])
def test_vision_in_checkpoint_round_trip(family, sources, tokenizer, clip_config_dir, tmp_path):
    source_model = sources[family]
    config = original_config(source_model, clip_config_dir)
    assert is_original_llava_config(config)
    source = write_original(tmp_path / "original", original_state_dict(source_model), config, tokenizer)
    report = convert_llava_checkpoint(source, tmp_path / "out")

    assert report.family == family and report.dtype == "float32"
    assert report.image_token_index == source_model.config.image_token_id and not report.added_image_token
    assert "in the checkpoint" in report.vision_weights_from
    assert "matryoshka_vis_token_scale" in report.ignored_config_keys and "max_length" in report.ignored_config_keys
    assert sorted(p.name for p in (tmp_path / "out").glob("*.safetensors")) == ["model.safetensors"]
    assert not list((tmp_path / "out").glob("*.bin"))

    converted = load_checked(M3_CLASSES[family], tmp_path / "out")
    assert converted.config.m3_scales == [1, 9, 36, 144, 576]
    assert converted.config.vision_feature_layer == source_model.config.vision_feature_layer
    assert converted.config.vision_feature_select_strategy == "default"
    assert_same_tensors(converted, source_model)
    assert_same_logits(converted, source_model, model_inputs(family, tokenizer))
    assert_same_logits(converted, source_model, model_inputs(family, tokenizer, scale=9), m3_scale=9)

    plain = load_checked(PLAIN_CLASSES[family], tmp_path / "out")
    assert_same_tensors(plain, source_model)
    assert_same_logits(plain, source_model, model_inputs(family, tokenizer))

    processor = M3Processor.from_pretrained(tmp_path / "out")  # the saved tokenizer and image processor
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (80, 150, 3), dtype=np.uint8))
    inputs = dict(processor(llava_prompt("what color is the circle ?"), images=[image], m3_scale=9))
    assert inputs["pixel_values"].shape[-2:] == (IMAGE_SIZE, IMAGE_SIZE)
    assert_same_logits(converted, source_model, inputs, m3_scale=9)


@pytest.mark.parametrize(
    ("family", "layout", "fmt"),
    [
        ("llava", "clip_vision_model", "bin"),
        ("llava", "clip_full_legacy", "safetensors"),
        ("llava_next", "clip_full_legacy", "bin"),
    ],
)
def test_separate_vision_tower_round_trip(family, layout, fmt, sources, tokenizer, tmp_path):
    source_model = sources[family]
    clip_dir = write_clip(tmp_path / "clip", source_model, layout)
    config = original_config(source_model, "openai/clip-vit-large-patch14-336")  # not local: needs the dir
    source = write_original(
        tmp_path / "original", original_state_dict(source_model, with_vision=False), config, tokenizer, fmt
    )
    report = convert_llava_checkpoint(source, tmp_path / "out", vision_tower=clip_dir)

    assert report.vision_weights_from == str(clip_dir)
    if layout == "clip_full_legacy":
        assert "text_model.embeddings.token_embedding.weight" in report.skipped_keys
    converted = load_checked(M3_CLASSES[family], tmp_path / "out")
    assert_same_tensors(converted, source_model)
    assert_same_logits(converted, source_model, model_inputs(family, tokenizer))


def test_cli_help_and_run_with_dtype(sources, tokenizer, tmp_path):
    help_run = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=True)
    assert "--vision-tower" in help_run.stdout and "--dtype" in help_run.stdout

    source_model = sources["llava"]
    clip_dir = write_clip(tmp_path / "clip", source_model, "clip_vision_model")
    config = original_config(source_model, "openai/clip-vit-large-patch14-336")
    state = original_state_dict(source_model, with_vision=False)
    source = write_original(tmp_path / "original", state, config, tokenizer)
    run = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            str(source),
            str(tmp_path / "out"),
            "--vision-tower",
            str(clip_dir),
            "--dtype",
            "bfloat16",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr
    assert "wrote llava M3 checkpoint" in run.stdout and "bfloat16" in run.stdout

    converted = load_checked(M3LlavaForConditionalGeneration, tmp_path / "out")
    expected = source_model.state_dict()
    for key, tensor in converted.state_dict().items():
        assert tensor.dtype == torch.bfloat16, key
        assert torch.equal(tensor, expected[key].to(torch.bfloat16)), key
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"

    with pytest.raises(SystemExit) as exit_info:  # in-process: a second interpreter is slow
        load_script().main([str(source), str(tmp_path / "out"), "--vision-tower", str(clip_dir)])
    assert exit_info.value.code == 2  # a user error (m3.cli.user_errors), as every script reports it


def test_image_token_added_and_vocabulary_grown(sources, tokenizer, clip_config_dir, tmp_path):
    """An original vicuna tokenizer has no <image>: it is appended, and the matrices grow by one row."""
    source_model = sources["llava"]
    vocab_size = source_model.config.text_config.vocab_size
    vocab = {token: index for token, index in tokenizer.get_vocab().items() if index < vocab_size}
    vocab["w_image_slot"] = vocab.pop("<image>")  # the slot becomes an ordinary word
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    plain_tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    config = original_config(source_model, clip_config_dir)
    source = write_original(tmp_path / "original", original_state_dict(source_model), config, plain_tokenizer)
    report = convert_llava_checkpoint(source, tmp_path / "out")

    assert report.added_image_token and report.image_token_index == vocab_size
    assert report.vocab_size == vocab_size + 1
    converted = load_checked(M3LlavaForConditionalGeneration, tmp_path / "out")
    assert converted.config.image_token_id == vocab_size
    assert converted.config.text_config.vocab_size == vocab_size + 1
    for key in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
        old, new = source_model.state_dict()[key], converted.state_dict()[key]
        assert torch.equal(new[:vocab_size], old)
        torch.testing.assert_close(new[vocab_size], old.mean(dim=0))
    saved_tokenizer = PreTrainedTokenizerFast.from_pretrained(tmp_path / "out")
    assert saved_tokenizer.convert_tokens_to_ids("<image>") == vocab_size

    inputs = model_inputs("llava", tokenizer)
    old_id = source_model.config.image_token_id
    moved = dict(inputs, input_ids=torch.where(inputs["input_ids"] == old_id, vocab_size, inputs["input_ids"]))
    with torch.no_grad():
        expected = source_model(**inputs).logits
        actual = converted(**moved).logits
    assert torch.equal(actual[..., :vocab_size], expected)


def test_without_tokenizer_needs_image_token_index(sources, clip_config_dir, tmp_path):
    source_model = sources["llava"]
    config = original_config(source_model, clip_config_dir)
    source = write_original(tmp_path / "original", original_state_dict(source_model), config)
    with pytest.raises(ValueError, match="image-token-index"):
        convert_llava_checkpoint(source, tmp_path / "out")
    image_token_id = source_model.config.image_token_id
    report = convert_llava_checkpoint(source, tmp_path / "out", image_token_index=image_token_id)
    assert not report.tokenizer_saved and report.vocab_size == source_model.config.text_config.vocab_size
    assert_same_tensors(load_checked(M3LlavaForConditionalGeneration, tmp_path / "out"), source_model)


# --------------------------------------------------------------------------------------------------
# pure parts


def test_key_mapping():
    assert original_key_to_m3("model.layers.3.mlp.up_proj.weight") == "model.language_model.layers.3.mlp.up_proj.weight"
    assert original_key_to_m3("model.mm_projector.2.bias") == "model.multi_modal_projector.linear_2.bias"
    assert original_key_to_m3("model.vision_tower.vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight") == (
        "model.vision_tower.encoder.layers.0.mlp.fc1.weight"
    )
    assert original_key_to_m3("model.image_newline") == "model.image_newline"
    assert original_key_to_m3("model.layers.0.self_attn.rotary_emb.inv_freq") is None
    with pytest.raises(KeyError, match="model.mm_projector.4.weight"):
        original_key_to_m3("model.mm_projector.4.weight")
    assert clip_key_to_m3("vision_model.post_layernorm.bias") == "model.vision_tower.post_layernorm.bias"
    assert clip_key_to_m3("encoder.layers.1.mlp.fc2.bias") == "model.vision_tower.encoder.layers.1.mlp.fc2.bias"
    assert clip_key_to_m3("text_model.final_layer_norm.weight") is None
    with pytest.raises(KeyError, match="model.weird"):
        clip_key_to_m3("model.weird")


def test_known_vision_tower_config():
    config = vision_config_from_name("openai/clip-vit-large-patch14-336")
    assert (config.image_size, config.patch_size, config.hidden_size, config.num_hidden_layers) == (336, 14, 1024, 24)
    assert config.hidden_act == "quick_gelu"
    with pytest.raises(ValueError, match="--vision-tower"):
        vision_config_from_name("someone/unknown-tower")


def test_grow_vocabulary_keeps_rows():
    embed = torch.arange(6.0).view(3, 2)
    state = {"model.language_model.embed_tokens.weight": embed, "lm_head.weight": torch.ones(3, 2)}
    grown = grow_vocabulary(state, 5)
    assert grown["lm_head.weight"].shape == (5, 2)
    assert torch.equal(grown["model.language_model.embed_tokens.weight"][3:], torch.tensor([[2.0, 3.0], [2.0, 3.0]]))
    assert grow_vocabulary(state, 3)["lm_head.weight"] is state["lm_head.weight"]


# --------------------------------------------------------------------------------------------------
# errors


@pytest.fixture
def llava_source(sources, clip_config_dir):
    """(model, original state dict, original config) to be edited and written by a test."""
    model = sources["llava"]
    return model, original_state_dict(model), original_config(model, clip_config_dir)


def test_unknown_key_is_named(llava_source, tokenizer, tmp_path):
    _, state, config = llava_source
    state["model.vision_resampler.query"] = torch.zeros(2)
    source = write_original(tmp_path / "original", state, config, tokenizer)
    with pytest.raises(KeyError, match="model.vision_resampler.query"):
        convert_llava_checkpoint(source, tmp_path / "out")


@pytest.mark.parametrize(
    ("mm_vision_tower", "message"),
    [
        ("openai/clip-vit-large-patch14-336", "stores no vision tower weights"),  # known config, no weights
        ("someone/custom-clip", "cannot tell the config"),  # not even a config
    ],
)
def test_missing_vision_weights_need_vision_tower(mm_vision_tower, message, llava_source, tokenizer, tmp_path):
    _, state, config = llava_source
    state = {key: value for key, value in state.items() if "vision_tower" not in key}
    config = {**config, "mm_vision_tower": mm_vision_tower, "mm_hidden_size": 1024}
    source = write_original(tmp_path / "original", state, config, tokenizer)
    with pytest.raises(ValueError, match=f"{message}.*--vision-tower DIR"):
        convert_llava_checkpoint(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_vision_tower_dir_must_be_clip(llava_source, tokenizer, tmp_path):
    model, state, config = llava_source
    source = write_original(tmp_path / "original", state, config, tokenizer)
    with pytest.raises(FileNotFoundError, match="no config.json in the vision tower directory"):
        convert_llava_checkpoint(source, tmp_path / "out", vision_tower=tmp_path)
    model.config.text_config.save_pretrained(tmp_path / "llama")
    with pytest.raises(ValueError, match="model_type 'llama': not a CLIP checkpoint"):
        convert_llava_checkpoint(source, tmp_path / "out", vision_tower=tmp_path / "llama")


def test_missing_and_incomplete_weights_are_named(llava_source, tokenizer, tmp_path):
    _, state, config = llava_source
    del state["model.norm.weight"]
    del state["model.vision_tower.vision_tower.vision_model.post_layernorm.bias"]
    source = write_original(tmp_path / "original", state, config, tokenizer)
    with pytest.raises(ValueError, match=r"missing: .*model\.language_model\.norm\.weight") as error:
        convert_llava_checkpoint(source, tmp_path / "out")
    assert "model.vision_tower.post_layernorm.bias" in str(error.value)
    assert "vision tower weights are incomplete" in str(error.value)


def test_wrong_shape_fails(llava_source, tokenizer, tmp_path):
    _, state, config = llava_source
    state["model.mm_projector.0.bias"] = torch.zeros(3)
    source = write_original(tmp_path / "original", state, config, tokenizer)
    with pytest.raises(RuntimeError, match="multi_modal_projector.linear_1.bias"):
        convert_llava_checkpoint(source, tmp_path / "out")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"mm_vision_tower": None}, "no mm_vision_tower"),
        ({"text_config": {}}, "already a llava-hf config"),
        ({"architectures": ["LlavaMistralForCausalLM"]}, "LlavaMistralForCausalLM"),
        ({"mm_projector_type": "linear"}, "mm_projector_type 'linear'"),
        ({"mm_use_im_start_end": True}, "mm_use_im_start_end"),
        ({"mm_hidden_size": 1024}, "mm_hidden_size is 1024"),
        ({"image_aspect_ratio": "anyres", "mm_patch_merge_type": "flat"}, "mm_patch_merge_type 'flat'"),
    ],
)
def test_bad_configs_are_refused(edit, message, llava_source, tokenizer, tmp_path):
    _, state, config = llava_source
    config = {**config, **edit}
    config = {key: value for key, value in config.items() if value is not None}
    source = write_original(tmp_path / "original", state, config, tokenizer)
    with pytest.raises(ValueError, match=message):
        convert_llava_checkpoint(source, tmp_path / "out")


def test_llava_hf_checkpoint_is_refused(sources, tmp_path):
    sources["llava"].save_pretrained(tmp_path / "hf")
    assert not is_original_llava_config(json.loads((tmp_path / "hf" / "config.json").read_text()))
    with pytest.raises(ValueError, match="already a llava-hf config"):
        convert_llava_checkpoint(tmp_path / "hf", tmp_path / "out")


def test_non_empty_output_is_refused(llava_source, tokenizer, tmp_path):
    _, state, config = llava_source
    source = write_original(tmp_path / "original", state, config, tokenizer)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        convert_llava_checkpoint(source, tmp_path / "out")
