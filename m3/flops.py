"""Analytic prefill cost of a LLaVA / LLaVA-NeXT M3 model at a scale: FLOPs and memory, without weights.

The count is the usual roofline one (as LLM-Viewer, which the paper's Table 9 uses): 2 FLOPs per
multiply-add of every linear layer, plus the attention score and weighted-sum products (``QK^T`` and
``AV``, counted for the full square, as the paper's tool does), for every prompt token. Norms,
activations, softmax and rotary embeddings are ignored (well under 1 %). The LLM part is what changes
with the scale; the vision tower and projector cost the same at every scale (M3 pools after the
projector), so they are reported separately. The paper's Table 9 (LLaVA-1.5-7B, 30 text tokens: 8.0 /
2.2 / 0.9 / 0.5 / 0.4 TFLOPs at 576 / 144 / 36 / 9 / 1 tokens) counts the LLM only, which
:func:`estimate_prefill` reproduces within 5 % (``tests/test_flops.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from transformers import CLIPVisionConfig, LlamaConfig

from .configuration import M3LlavaConfig
from .markdown import markdown_table
from .prompting import image_token_counts

# LLaVA-1.5-7B: Vicuna-7B (LLaMA-7B shape) and CLIP ViT-L/14 at 336 px. Used by the script and the tests.
LLAVA_15_7B_TEXT = dict(
    hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
    vocab_size=32064,
)  # fmt: skip
LLAVA_15_13B_TEXT = dict(
    hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40, num_key_value_heads=40,
    vocab_size=32064,
)  # fmt: skip
CLIP_VIT_L14_336 = dict(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, patch_size=14,
    image_size=336,
)  # fmt: skip


def transformer_prefill_flops(
    num_tokens: int,
    hidden_size: int,
    intermediate_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    gated_mlp: bool = True,
) -> int:
    """FLOPs of a pre-norm transformer stack on ``num_tokens`` tokens at once (no LM head).

    ``gated_mlp``: LLaMA's SwiGLU MLP has three matrices, CLIP's MLP two.
    """
    head_dim = hidden_size // num_heads
    kv_width = num_kv_heads * head_dim
    projections = hidden_size * (2 * hidden_size + 2 * kv_width)  # q, o + k, v
    mlp = (3 if gated_mlp else 2) * hidden_size * intermediate_size
    linear = 2 * num_tokens * (projections + mlp)
    attention = 2 * 2 * num_tokens * num_tokens * hidden_size  # QK^T and AV over all heads
    return num_layers * (linear + attention)


@dataclass(frozen=True)
class PrefillCost:
    """Prefill cost of one prompt. FLOPs are counts (divide by 1e12 for TFLOPs); memory in bytes."""

    scale: int
    visual_tokens: int
    text_tokens: int
    llm_flops: int
    lm_head_flops: int
    vision_flops: int
    projector_flops: int
    weight_bytes: int
    kv_cache_bytes: int

    @property
    def prompt_tokens(self) -> int:
        return self.visual_tokens + self.text_tokens

    @property
    def total_flops(self) -> int:
        """Everything a prefill computes: vision tower, projector, LLM and the last token's LM head."""
        return self.llm_flops + self.lm_head_flops + self.vision_flops + self.projector_flops

    def as_dict(self) -> dict:
        return {**asdict(self), "prompt_tokens": self.prompt_tokens, "total_flops": self.total_flops}


def _vision_flops(vision: CLIPVisionConfig, num_crops: int) -> int:
    patches = (vision.image_size // vision.patch_size) ** 2
    embed = 2 * patches * vision.hidden_size * vision.num_channels * vision.patch_size**2
    tower = transformer_prefill_flops(
        patches + 1,  # the class token
        vision.hidden_size,
        vision.intermediate_size,
        vision.num_hidden_layers,
        vision.num_attention_heads,
        vision.num_attention_heads,
        gated_mlp=False,
    )
    return num_crops * (embed + tower)


def _num_crops(config, image_size: Sequence[int] | None) -> int:
    if getattr(config, "image_grid_pinpoints", None) is None:
        return 1
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    return image_size_to_num_patches(image_size, config.image_grid_pinpoints, config.vision_config.image_size)


def check_prefill_inputs(config, text_tokens: int, image_size: Sequence[int] | None) -> None:
    """``ValueError`` unless ``text_tokens`` is a whole number >= 0 and an ``image_size`` is two whole numbers >= 1
    (height, width) of a LLaVA-NeXT model, whose token count depends on it; a LLaVA-1.5 model's does not, so a size
    given for it would be ignored and is refused instead."""
    if isinstance(text_tokens, bool) or not isinstance(text_tokens, int) or text_tokens < 0:
        raise ValueError(f"text tokens must be a whole number >= 0, got {text_tokens!r}")
    if image_size is None:  # a LLaVA-NeXT model without one: image_token_counts names what is missing
        return
    if getattr(config, "image_grid_pinpoints", None) is None:
        raise ValueError(
            f"an image size ({'x'.join(map(str, image_size))}) applies to LLaVA-NeXT models only: a LLaVA-1.5 model "
            "reads every image at one size"
        )
    if len(image_size) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in image_size):
        raise ValueError(f"an image size must be two whole numbers >= 1 (height, width), got {tuple(image_size)}")


def estimate_prefill(
    config,
    scale: int,
    text_tokens: int = 30,
    image_size: Sequence[int] | None = None,
    bytes_per_value: int = 2,
) -> PrefillCost:
    """Prefill cost of one image and ``text_tokens`` text tokens at ``scale`` for an M3 config.

    ``image_size`` (height, width) is needed for LLaVA-NeXT, whose token count depends on it.
    ``bytes_per_value``: 2 for fp16/bf16 weights and KV cache.
    """
    check_prefill_inputs(config, text_tokens, image_size)
    text = config.text_config
    visual = image_token_counts(config, scale, None if image_size is None else [image_size], num_images=1)[0]
    tokens = visual + text_tokens
    num_kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    llm = transformer_prefill_flops(
        tokens, text.hidden_size, text.intermediate_size, text.num_hidden_layers, text.num_attention_heads,
        num_kv_heads,
    )  # fmt: skip
    vision = config.vision_config
    num_crops = _num_crops(config, image_size)
    layers = config.vision_feature_layer
    projector_in = vision.hidden_size * (len(layers) if isinstance(layers, (list, tuple)) else 1)
    grid = (vision.image_size // vision.patch_size) ** 2
    projector = 2 * num_crops * grid * (projector_in * text.hidden_size + text.hidden_size * text.hidden_size)
    head_dim = text.hidden_size // text.num_attention_heads
    kv_cache = 2 * text.num_hidden_layers * tokens * num_kv_heads * head_dim * bytes_per_value
    return PrefillCost(
        scale=scale,
        visual_tokens=visual,
        text_tokens=text_tokens,
        llm_flops=llm,
        lm_head_flops=2 * text.hidden_size * text.vocab_size,
        vision_flops=_vision_flops(vision, num_crops),
        projector_flops=projector,
        weight_bytes=parameter_count(config) * bytes_per_value,
        kv_cache_bytes=kv_cache,
    )


def parameter_count(config) -> int:
    """Parameters of the LLM (with embeddings and LM head), the vision tower and the projector."""
    text, vision = config.text_config, config.vision_config
    num_kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    kv_width = num_kv_heads * (text.hidden_size // text.num_attention_heads)
    llm_layer = text.hidden_size * (2 * text.hidden_size + 2 * kv_width) + 3 * text.hidden_size * text.intermediate_size
    llm = text.num_hidden_layers * llm_layer + 2 * text.vocab_size * text.hidden_size
    vit_layer = 4 * vision.hidden_size**2 + 2 * vision.hidden_size * vision.intermediate_size
    patches = (vision.image_size // vision.patch_size) ** 2
    vit = vision.num_hidden_layers * vit_layer + vision.hidden_size * (3 * vision.patch_size**2 + patches + 1)
    projector = vision.hidden_size * text.hidden_size + text.hidden_size**2
    return llm + vit + projector


def llava_15_config(size: str = "7b", **m3_kwargs):
    """The config of LLaVA-1.5-7B or -13B (no weights, no tokenizer needed), for cost estimates."""
    shapes = {"7b": LLAVA_15_7B_TEXT, "13b": LLAVA_15_13B_TEXT}
    if size not in shapes:
        raise ValueError(f"unknown LLaVA-1.5 size {size!r}; expected one of {sorted(shapes)}")
    return M3LlavaConfig(
        vision_config=CLIPVisionConfig(**CLIP_VIT_L14_336),
        text_config=LlamaConfig(**shapes[size]),
        vision_feature_layer=-2,
        **m3_kwargs,
    )


def cost_table(config, text_tokens: int = 30, image_size: Sequence[int] | None = None) -> str:
    """A markdown table of :func:`estimate_prefill` at every scale of ``config.m3_scales``, largest first."""
    rows = [estimate_prefill(config, s, text_tokens, image_size) for s in sorted(config.m3_scales, reverse=True)]
    full = rows[0]
    headers = [
        "scale", "visual tokens", "LLM prefill TFLOPs", "total TFLOPs (+ vision, projector, LM head)", "LLM vs full",
        "KV cache (MiB, 16-bit)",
    ]  # fmt: skip
    cells = [
        [
            row.scale, row.visual_tokens, f"{row.llm_flops / 1e12:.3f}", f"{row.total_flops / 1e12:.3f}",
            f"{row.llm_flops / full.llm_flops:.3f}", f"{row.kv_cache_bytes / 2**20:.1f}",
        ]
        for row in rows
    ]  # fmt: skip
    return markdown_table(headers, cells, "rrrrrr", spaced=True)
