"""Configs of the M3 models: the llava-hf configs plus the M3 settings stored in config.json.

``model_type`` stays ``llava`` / ``llava_next`` so that plain transformers can still load an M3
checkpoint (it then simply runs at full scale) and checkpoint conversions keyed on the model type apply.
"""

from __future__ import annotations

from transformers import LlavaConfig, LlavaNextConfig

from .anyres import check_unpad_rule
from .pooling import check_scale, check_token_selection, nested_scales
from .templates import check_template_name


class M3ConfigMixin:
    """Validates and fills in the M3 fields shared by both model families.

    m3_scales: the scales (visual tokens per image grid) trained by the multi-scale loss; default: the
        grid's nested chain, e.g. (1, 9, 36, 144, 576) for a 24x24 grid.
    m3_default_scale: the scale used when a call names none; default: the finest.
    m3_train_vision_tower: train the vision tower too (the official recipe keeps it frozen in effect).
    m3_token_selection: how a 24x24 grid becomes s tokens: ``avg_pool`` (M3, the default; also what a config
        without the field means), ``spatial`` or ``sequential`` (the paper's ablations; see
        :func:`m3.pooling.select_tokens`). Used by forward, generate, the multi-scale loss and get_image_features.
    m3_conversation_template: the conversation template the model is trained and asked with (``plain``,
        ``vicuna_v1`` or ``chat_template``, see :mod:`m3.templates`); unset: the checkpoint's chat template when it
        has one, else ``plain``. The converter sets ``vicuna_v1`` (the official M3 fine-tune's).
    m3_unpad_rule (LLaVA-NeXT only): how the letterbox padding of the anyres grid is removed (``transformers``, the
        default, or ``official``; see :data:`m3.anyres.UNPAD_RULES`), for the model's packing, the token counts and
        the processor alike. The converter sets ``official`` for checkpoints of the original release.
    """

    @property
    def grid_tokens(self) -> int:
        """Visual tokens per image grid (per crop for LLaVA-NeXT) before pooling."""
        return (self.vision_config.image_size // self.vision_config.patch_size) ** 2

    def _init_m3_fields(self) -> None:
        grid = self.grid_tokens
        scales = nested_scales(grid) if self.m3_scales is None else list(self.m3_scales)
        if not scales:
            raise ValueError("m3_scales must name at least one scale")
        for scale in scales:
            check_scale(scale, grid)
        self.m3_scales = sorted(set(scales))
        if self.m3_default_scale is None:
            self.m3_default_scale = self.m3_scales[-1]
        check_scale(self.m3_default_scale, grid)
        check_token_selection(self.m3_token_selection)
        if self.m3_conversation_template is not None:
            check_template_name(self.m3_conversation_template)
        if hasattr(self, "m3_unpad_rule"):
            check_unpad_rule(self.m3_unpad_rule)


class M3LlavaConfig(M3ConfigMixin, LlavaConfig):
    """LLaVA-1.5 config with M3 settings."""

    m3_scales: list[int] | None = None
    m3_default_scale: int | None = None
    m3_train_vision_tower: bool = False
    m3_token_selection: str = "avg_pool"
    m3_conversation_template: str | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self._init_m3_fields()


class M3LlavaNextConfig(M3ConfigMixin, LlavaNextConfig):
    """LLaVA-NeXT (anyres) config with M3 settings; every crop is pooled to the scale."""

    m3_scales: list[int] | None = None
    m3_default_scale: int | None = None
    m3_train_vision_tower: bool = False
    m3_token_selection: str = "avg_pool"
    m3_conversation_template: str | None = None
    m3_unpad_rule: str = "transformers"

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self._init_m3_fields()
