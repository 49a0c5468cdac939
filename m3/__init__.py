"""M3: Matryoshka Multimodal Models on Hugging Face LLaVA-1.5 and LLaVA-NeXT."""

from .configuration import M3LlavaConfig, M3LlavaNextConfig
from .loading import load_m3_config, load_m3_model
from .modeling import (
    M3CausalLMOutputWithPast,
    M3LlavaForConditionalGeneration,
    M3LlavaModel,
    M3LlavaNextForConditionalGeneration,
    M3LlavaNextModel,
)
from .pooling import TOKEN_SELECTIONS, check_scale, nested_scales, pool_tokens, select_tokens, valid_scales
from .processing import M3Processor, llava_prompt
from .prompting import expand_image_tokens, image_token_counts

__all__ = [
    "M3CausalLMOutputWithPast",
    "M3LlavaConfig",
    "M3LlavaForConditionalGeneration",
    "M3LlavaModel",
    "M3LlavaNextConfig",
    "M3LlavaNextForConditionalGeneration",
    "M3LlavaNextModel",
    "M3Processor",
    "TOKEN_SELECTIONS",
    "check_scale",
    "expand_image_tokens",
    "image_token_counts",
    "llava_prompt",
    "load_m3_config",
    "load_m3_model",
    "nested_scales",
    "pool_tokens",
    "select_tokens",
    "valid_scales",
]
