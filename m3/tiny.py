"""Tiny, random-weight LLaVA / LLaVA-NeXT models for CPU tests and the CPU preset.

The vision grid is the real 24x24 (96 px images, 4 px patches), so the real scale set
{1, 9, 36, 144, 576} is used; the tokenizer is a word-level one built with the ``tokenizers`` library.
"""

from __future__ import annotations

import string
from collections.abc import Iterable

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaNextImageProcessorPil,
    PreTrainedTokenizerFast,
)

from .configuration import M3LlavaConfig, M3LlavaNextConfig
from .modeling import M3LlavaForConditionalGeneration, M3LlavaNextForConditionalGeneration

IMAGE_SIZE = 96
PATCH_SIZE = 4
TINY_GRID_PINPOINTS = [[96, 192], [192, 96], [192, 192], [96, 288], [288, 96]]
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
BASE_WORDS = """
    USER ASSISTANT what is the a an of in on how many which where color shape number yes no image picture
    background left right top bottom center red green blue yellow black white circle square triangle answer
    with word single there are dots digit this
""".split()
FAMILIES = ("llava", "llava_next")


def build_tiny_tokenizer(extra_words: Iterable[str] = ()) -> PreTrainedTokenizerFast:
    """Word-level tokenizer: special tokens, letters, digits, punctuation and a small word list."""
    vocab: dict[str, int] = {}
    for token in [
        *SPECIAL_TOKENS,
        *string.ascii_letters,
        *string.digits,
        *string.punctuation,
        *BASE_WORDS,
        *extra_words,
    ]:
        vocab.setdefault(token, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return tokenizer


def m3_config(
    family: str,
    vision: CLIPVisionConfig,
    text: LlamaConfig,
    tokenizer: PreTrainedTokenizerFast,
    grid_pinpoints: list | None = None,
    **kwargs,
):
    """An M3 config of either family from a vision and a text config; the tokenizer gives the special ids."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; expected one of {FAMILIES}")
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(text, name, getattr(tokenizer, name))
    common = dict(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(vision.image_size // vision.patch_size) ** 2,
        **kwargs,
    )
    if family == "llava":
        return M3LlavaConfig(**common)
    return M3LlavaNextConfig(image_grid_pinpoints=grid_pinpoints, **common)


def tiny_config(
    family: str = "llava",
    tokenizer: PreTrainedTokenizerFast | None = None,
    hidden_size: int = 64,
    vision_layers: int = 2,
    text_layers: int = 2,
    **m3_kwargs,
):
    """Config of a tiny LLaVA (``family='llava'``) or LLaVA-NeXT (``'llava_next'``); 0.2M parameters by default."""
    tokenizer = tokenizer or build_tiny_tokenizer()
    vision = CLIPVisionConfig(
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=vision_layers,
        num_attention_heads=4,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=text_layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=4096,
    )
    # with only a few random vision layers, use them all (vision_feature_layer=-1)
    return m3_config(family, vision, text, tokenizer, TINY_GRID_PINPOINTS, vision_feature_layer=-1, **m3_kwargs)


def tiny_image_processor(family: str = "llava"):
    """A CLIP-style (or anyres) image processor for 96 px crops."""
    kwargs = dict(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    if family == "llava":
        return CLIPImageProcessorPil(**kwargs)
    return LlavaNextImageProcessorPil(image_grid_pinpoints=TINY_GRID_PINPOINTS, **kwargs)


def tiny_model(family: str = "llava", seed: int = 0, tokenizer: PreTrainedTokenizerFast | None = None, **config_kwargs):
    """A randomly initialised tiny M3 model (deterministic for a seed); kwargs go to :func:`tiny_config`."""
    torch.manual_seed(seed)
    config = tiny_config(family, tokenizer, **config_kwargs)
    model_class = M3LlavaForConditionalGeneration if family == "llava" else M3LlavaNextForConditionalGeneration
    return model_class(config).eval()
