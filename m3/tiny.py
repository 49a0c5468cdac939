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
MODEL_FAMILIES = ("llava", "llava_next")


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
    if family not in MODEL_FAMILIES:
        raise ValueError(f"unknown model family {family!r}; expected one of {MODEL_FAMILIES}")
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
    vision_feature_layer: int = -1,
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
    return m3_config(
        family, vision, text, tokenizer, TINY_GRID_PINPOINTS, vision_feature_layer=vision_feature_layer, **m3_kwargs
    )


def tiny_image_processor(family: str = "llava"):
    """A CLIP-style (or anyres) image processor for 96 px crops."""
    kwargs = dict(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    if family == "llava":
        return CLIPImageProcessorPil(**kwargs)
    return LlavaNextImageProcessorPil(image_grid_pinpoints=TINY_GRID_PINPOINTS, **kwargs)


def sincos_position_grid(side: int, dim: int) -> torch.Tensor:
    """2-D sine-cosine position codes (as in MAE), ``(side * side, dim)`` in row-major patch order.

    Half the channels code the row, half the column, at geometric frequencies, so low frequencies vary
    smoothly across the grid and survive average pooling."""
    if dim % 4:
        raise ValueError(f"sin-cos position codes need a hidden size divisible by 4, got {dim}")
    frequencies = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    coords = torch.arange(side, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")

    def code(values: torch.Tensor) -> torch.Tensor:
        angles = values.reshape(-1, 1) * frequencies
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([code(rows), code(cols)], dim=1).float()


def init_sincos_positions(model, amplitude: float = 1.0) -> None:
    """Start a from-scratch CLIP tower's position embeddings from smooth 2-D codes.

    A pretrained CLIP's learned position embeddings are spatially smooth, so a pooled token still knows
    where it came from. Random i.i.d. embeddings average to almost nothing under pooling (a 3x3-pooled
    token averages 64 of them), which leaves a tiny from-scratch model blind to layout at coarse scales.
    The class token's slot (index 0) is set to zero. The embeddings stay trainable."""
    embeddings = model.model.vision_tower.embeddings
    weight = embeddings.position_embedding.weight
    side = embeddings.image_size // embeddings.patch_size
    with torch.no_grad():
        weight.zero_()
        weight[1:] = amplitude * sincos_position_grid(side, weight.shape[1]).to(weight.dtype)


def tiny_model(
    family: str = "llava",
    seed: int = 0,
    tokenizer: PreTrainedTokenizerFast | None = None,
    sincos_positions: bool = True,
    **config_kwargs,
):
    """A randomly initialised tiny M3 model (deterministic for a seed); kwargs go to :func:`tiny_config`.

    ``sincos_positions`` starts the vision tower's position embeddings from smooth 2-D codes (see
    :func:`init_sincos_positions`)."""
    torch.manual_seed(seed)
    config = tiny_config(family, tokenizer, **config_kwargs)
    model_class = M3LlavaForConditionalGeneration if family == "llava" else M3LlavaNextForConditionalGeneration
    model = model_class(config).eval()
    if sincos_positions:
        init_sincos_positions(model)
    return model
