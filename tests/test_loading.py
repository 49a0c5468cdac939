import json

import pytest

from m3.loading import load_m3_config, load_m3_model


def test_original_llava_checkpoint_is_refused_with_a_pointer_to_the_converter(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "llava", "architectures": ["LlavaLlamaForCausalLM"], "mm_vision_tower": "clip"})
    )
    with pytest.raises(ValueError, match="convert_llava_checkpoint"):
        load_m3_model(tmp_path)
    with pytest.raises(ValueError, match="original LLaVA"):
        load_m3_config(tmp_path)


def test_unsupported_or_missing_configs_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_m3_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "blip_2"}))
    with pytest.raises(ValueError, match="model_type 'blip_2'"):
        load_m3_config(tmp_path)
