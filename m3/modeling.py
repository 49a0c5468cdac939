"""M3 model classes for LLaVA-1.5 and LLaVA-NeXT on transformers.

They subclass transformers' classes and keep every parameter name, so llava-hf checkpoints load as
they are. Three additions:

* ``get_image_features(..., m3_scale=s)`` pools every projected 24x24 grid to s tokens (per crop for
  NeXT) - ``generate(..., m3_scale=s)`` picks this up because transformers encodes images through it;
* ``forward(..., m3_scale=s)`` runs the LLM on s visual tokens per image;
* ``forward(..., labels=..., m3_scales=[...])`` is the multi-scale training forward: the vision tower
  runs once, its projected features are pooled to every scale, and the loss is the mean of the
  per-scale answer losses. ``input_ids`` then hold ONE image token per image (the compact form).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import LlavaForConditionalGeneration, LlavaNextForConditionalGeneration
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.llava.modeling_llava import LlavaModel, LlavaPreTrainedModel
from transformers.models.llava_next.modeling_llava_next import (
    LlavaNextModel,
    LlavaNextPreTrainedModel,
    image_size_to_num_patches,
)
from transformers.utils import ModelOutput

from .anyres import pack_anyres_features
from .configuration import M3LlavaConfig, M3LlavaNextConfig
from .pooling import check_scale, pool_tokens
from .prompting import expand_image_tokens


@dataclass
class M3CausalLMOutputWithPast(ModelOutput):
    """Output of a multi-scale training forward: the mean loss and the loss at every scale."""

    loss: torch.Tensor | None = None
    per_scale_loss: dict[int, torch.Tensor] | None = None
    logits: torch.Tensor | None = None


class M3ImageEncoderMixin:
    """Vision tower -> feature layer -> projector once, then pooling to any scale (base models)."""

    def resolve_scale(self, m3_scale: int | None) -> int:
        scale = self.config.m3_default_scale if m3_scale is None else m3_scale
        return check_scale(scale, self.config.grid_tokens)

    def pooled_image_features(
        self, pixel_values, image_sizes, vision_feature_layer, vision_feature_select_strategy, m3_scale
    ) -> BaseModelOutputWithPooling:
        """Encode once and pool to ``m3_scale``: the body of both families' ``get_image_features``."""
        scale = self.resolve_scale(m3_scale)
        grids = self.encode_images(pixel_values, image_sizes, vision_feature_layer, vision_feature_select_strategy)
        return BaseModelOutputWithPooling(pooler_output=self.features_at_scale(grids, scale, image_sizes))

    def project_grids(
        self,
        pixel_values: torch.Tensor,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
    ) -> torch.Tensor:
        """Projected patch tokens ``(num_grids, N, D)`` of ``(num_grids, C, H, W)`` pixels.

        The tower runs under ``no_grad`` unless ``config.m3_train_vision_tower`` (as the official code).
        """
        layer = self.config.vision_feature_layer if vision_feature_layer is None else vision_feature_layer
        strategy = vision_feature_select_strategy or self.config.vision_feature_select_strategy
        train_tower = self.config.m3_train_vision_tower and torch.is_grad_enabled()
        with torch.set_grad_enabled(train_tower):
            outputs = self.vision_tower(pixel_values, output_hidden_states=True, return_dict=True)
        layers = [layer] if isinstance(layer, int) else list(layer)
        hidden = torch.cat([outputs.hidden_states[index] for index in layers], dim=-1)
        if strategy == "default":
            hidden = hidden[:, 1:]
        return self.multi_modal_projector(hidden)


class M3LlavaModel(M3ImageEncoderMixin, LlavaModel):
    config_class = M3LlavaConfig

    def encode_images(
        self,
        pixel_values: torch.Tensor,
        image_sizes: torch.Tensor | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
    ) -> list[torch.Tensor]:
        """Full-resolution projected grids, one ``(1, N, D)`` tensor per image."""
        grids = self.project_grids(pixel_values, vision_feature_layer, vision_feature_select_strategy)
        return list(grids.unsqueeze(1))

    def features_at_scale(
        self, grids: list[torch.Tensor], scale: int, image_sizes: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """The ``(scale, D)`` token sequence of every image."""
        return [pool_tokens(grid[0], scale) for grid in grids]

    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        image_sizes: torch.Tensor | None = None,
        m3_scale: int | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """Image features pooled to ``m3_scale`` (default: ``config.m3_default_scale``).

        The signature mirrors transformers' (generate passes the arguments it finds in it).
        """
        return self.pooled_image_features(
            pixel_values, image_sizes, vision_feature_layer, vision_feature_select_strategy, m3_scale
        )


class M3LlavaNextModel(M3ImageEncoderMixin, LlavaNextModel):
    config_class = M3LlavaNextConfig

    def encode_images(
        self,
        pixel_values: torch.Tensor,
        image_sizes: torch.Tensor | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
    ) -> list[torch.Tensor]:
        """Full-resolution projected crops, one ``(1 + rows*cols, N, D)`` tensor per image."""
        if image_sizes is None:
            raise ValueError("LLaVA-NeXT needs image_sizes (height, width of every image)")
        crop_size = self.config.vision_config.image_size
        num_crops = [
            image_size_to_num_patches(size, self.config.image_grid_pinpoints, crop_size) for size in image_sizes
        ]
        if pixel_values.dim() == 5:
            pixel_values = torch.cat([pixels[:count] for pixels, count in zip(pixel_values, num_crops)], dim=0)
        elif pixel_values.dim() != 4:
            raise ValueError(f"pixel_values of shape {tuple(pixel_values.shape)}: expected 4 or 5 dimensions")
        grids = self.project_grids(pixel_values, vision_feature_layer, vision_feature_select_strategy)
        return list(torch.split(grids, num_crops, dim=0))

    def features_at_scale(
        self, grids: list[torch.Tensor], scale: int, image_sizes: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Every crop pooled to ``scale``, then unpadded and closed with newline tokens per row."""
        crop_size = self.config.vision_config.image_size
        return [
            pack_anyres_features(
                pool_tokens(crops, scale), size, self.config.image_grid_pinpoints, crop_size, self.image_newline
            )
            for crops, size in zip(grids, image_sizes)
        ]

    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        image_sizes: torch.Tensor,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        m3_scale: int | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """Image features with every crop pooled to ``m3_scale`` (default: ``config.m3_default_scale``)."""
        return self.pooled_image_features(
            pixel_values, image_sizes, vision_feature_layer, vision_feature_select_strategy, m3_scale
        )


class M3ForConditionalGenerationMixin:
    """Scale-controlled and multi-scale forward shared by both model families."""

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        image_sizes: torch.Tensor | None = None,
        mm_encoder_outputs: dict | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        m3_scale: int | None = None,
        m3_scales: Sequence[int] | None = None,
        **kwargs,
    ):
        """``m3_scale``: visual tokens per image (per crop for NeXT); ``m3_scales``: multi-scale loss."""
        vision_kwargs = {
            "vision_feature_layer": vision_feature_layer,
            "vision_feature_select_strategy": vision_feature_select_strategy,
        }
        if m3_scales is not None:
            if m3_scale is not None:
                raise ValueError("pass either m3_scale (one scale) or m3_scales (multi-scale loss), not both")
            return self._multiscale_forward(
                input_ids, pixel_values, attention_mask, labels, image_sizes, m3_scales, vision_kwargs, kwargs
            )
        if pixel_values is not None:
            if mm_encoder_outputs is not None:
                raise ValueError("pass either pixel_values or mm_encoder_outputs, not both")
            features = self.model.get_image_features(
                pixel_values, image_sizes=image_sizes, m3_scale=m3_scale, **vision_kwargs
            )
            mm_encoder_outputs = {"image": features}
        if mm_encoder_outputs is not None and input_ids is not None:
            self._check_image_tokens(input_ids, mm_encoder_outputs["image"].pooler_output, m3_scale)
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            labels=labels,
            image_sizes=image_sizes,
            mm_encoder_outputs=mm_encoder_outputs,
            **kwargs,
        )

    def _check_image_tokens(self, input_ids: torch.Tensor, features: list[torch.Tensor], m3_scale: int | None):
        found = int((input_ids == self.config.image_token_id).sum())
        needed = sum(feature.shape[0] for feature in features)
        if found != needed:
            scale = self.config.m3_default_scale if m3_scale is None else m3_scale
            raise ValueError(
                f"input_ids hold {found} image tokens but {len(features)} image(s) at scale {scale} need "
                f"{needed}; build the prompt for this scale with M3Processor(..., m3_scale={scale})"
            )

    def _multiscale_forward(
        self, input_ids, pixel_values, attention_mask, labels, image_sizes, scales, vision_kwargs, kwargs
    ) -> M3CausalLMOutputWithPast:
        if labels is None:
            raise ValueError("the multi-scale forward (m3_scales=...) computes a loss and needs labels")
        scales = [check_scale(scale, self.config.grid_tokens) for scale in scales]
        if pixel_values is None:  # text only: every scale sees the same input, so one forward serves all
            loss = super().forward(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs).loss
            return M3CausalLMOutputWithPast(loss=loss, per_scale_loss=dict.fromkeys(scales, loss.detach()))
        grids = self.model.encode_images(pixel_values, image_sizes, **vision_kwargs)
        pad_token_id = self.config.text_config.pad_token_id or 0
        per_scale_loss = {}
        for scale in scales:
            features = self.model.features_at_scale(grids, scale, image_sizes)
            counts = [feature.shape[0] for feature in features]
            scale_ids, scale_mask, scale_labels = expand_image_tokens(
                input_ids, self.config.image_token_id, counts, attention_mask, labels, pad_token_id, "right"
            )
            outputs = super().forward(
                input_ids=scale_ids,
                attention_mask=scale_mask,
                labels=scale_labels,
                image_sizes=image_sizes,
                mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=features)},
                **kwargs,
            )
            per_scale_loss[scale] = outputs.loss
        loss = torch.stack(list(per_scale_loss.values())).mean()
        return M3CausalLMOutputWithPast(loss=loss, per_scale_loss={s: v.detach() for s, v in per_scale_loss.items()})


class M3LlavaForConditionalGeneration(M3ForConditionalGenerationMixin, LlavaForConditionalGeneration):
    """LLaVA-1.5 with Matryoshka visual tokens; loads any llava-hf LLaVA-1.5 checkpoint."""

    config_class = M3LlavaConfig

    def __init__(self, config: M3LlavaConfig):
        LlavaPreTrainedModel.__init__(self, config)
        self.model = M3LlavaModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()


class M3LlavaNextForConditionalGeneration(M3ForConditionalGenerationMixin, LlavaNextForConditionalGeneration):
    """LLaVA-NeXT (anyres) with Matryoshka visual tokens; every crop is pooled to the scale."""

    config_class = M3LlavaNextConfig

    def __init__(self, config: M3LlavaNextConfig):
        LlavaNextPreTrainedModel.__init__(self, config)
        self.model = M3LlavaNextModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()


def _register_checkpoint_conversions() -> None:
    """transformers skips key conversion for classes defined outside it unless they are registered;
    reuse the llava / llava_next rules so llava-hf checkpoints (legacy key layout) load and save alike."""
    pairs = {
        "M3LlavaForConditionalGeneration": "llava",
        "M3LlavaModel": "LlavaModel",
        "M3LlavaNextForConditionalGeneration": "llava_next",
        "M3LlavaNextModel": "LlavaNextModel",
    }
    for ours, theirs in pairs.items():
        mapping = get_checkpoint_conversion_mapping(theirs)
        if mapping is not None:
            register_checkpoint_conversion_mapping(ours, mapping, overwrite=True)


_register_checkpoint_conversions()
