# Copyright 2026 The m3-adaptive authors. All rights reserved.
# Licensed under the Apache License, Version 2.0.
"""M3 model classes for LLaVA-1.5 and LLaVA-NeXT on transformers.

They subclass transformers' classes and keep every parameter name and the parents' call contracts (explicit
``forward`` parameters, ``get_image_features`` outputs, text-only turns), so llava-hf checkpoints load as they
are and the classes drop in where the parents are used. Three additions:

* ``get_image_features(..., m3_scale=s)`` pools every projected 24x24 grid to s tokens (per crop for
  NeXT) - ``generate(..., m3_scale=s)`` picks this up because transformers encodes images through it;
  ``config.m3_token_selection`` swaps average pooling for the paper's spatial or sequential sampling;
* ``forward(..., m3_scale=s)`` runs the LLM on s visual tokens per image; ``m3_scale=[s0, s1, ...]`` gives every
  image its own scale (images in batch and prompt order), e.g. the frames of a video under one token budget;
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
from transformers.cache_utils import Cache
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.llava.modeling_llava import LlavaModel, LlavaPreTrainedModel
from transformers.models.llava_next.modeling_llava_next import (
    LlavaNextModel,
    LlavaNextPreTrainedModel,
    image_size_to_num_patches,
)
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import select_hidden_states, selected_hidden_states

from .anyres import pack_anyres_features
from .configuration import M3LlavaConfig, M3LlavaNextConfig
from .fingerprint import weights_fingerprint
from .pooling import check_scale, select_tokens
from .prompting import expand_image_tokens, image_token_mismatch, per_image_scales


@dataclass
class M3CausalLMOutputWithPast(ModelOutput):
    """Output of a multi-scale training forward: the mean loss and the loss at every scale."""

    loss: torch.Tensor | None = None
    per_scale_loss: dict[int, torch.Tensor] | None = None
    logits: torch.Tensor | None = None


class M3LibraryCodeMixin:
    """What transformers must not treat as custom (hub or user) code in the M3 classes: they define no
    ``_init_weights`` and tie no modules, so a weight missing from a checkpoint starts as in the parent class (the
    custom-code path marks a module with no direct weights, e.g. CLIP's attention, as initialized once its
    ``nn.Linear`` children are, and skips CLIP's own scaled init), and transformers' own test
    ``test_can_init_all_missing_weights`` holds for them. Checkpoint key conversion is registered for them by name
    (:func:`_register_checkpoint_conversions`), so it does not depend on this."""

    @classmethod
    def is_custom_code(cls) -> bool:
        return False


class M3ImageEncoderMixin(M3LibraryCodeMixin):
    """Vision tower -> feature layer -> projector once, then pooling to any scale (base models)."""

    def resolve_scales(self, m3_scale: int | Sequence[int] | None, num_images: int) -> list[int]:
        """One checked scale per image; ``None`` means ``config.m3_default_scale`` for every image."""
        scale = self.config.m3_default_scale if m3_scale is None else m3_scale
        return per_image_scales(scale, num_images, self.config.grid_tokens)

    def pooled_image_features(
        self, pixel_values, image_sizes, vision_feature_layer, vision_feature_select_strategy, m3_scale, **tower_kwargs
    ) -> BaseModelOutputWithPooling:
        """The body of both families' ``get_image_features``: the vision tower's output (``last_hidden_state``,
        ``hidden_states`` and ``attentions`` as the tower returns them) whose ``pooler_output`` is the list of
        per-image feature sequences at ``m3_scale`` (one scale, or one per image) - the parent's output contract,
        pooled. The per-image scales also ride along as the attribute ``m3_scales`` (not a field, so the keys and
        the tuple form stay the parent's): ``forward`` names them when the prompt does not fit."""
        outputs, grids = self.encode_images_with_outputs(
            pixel_values, image_sizes, vision_feature_layer, vision_feature_select_strategy, **tower_kwargs
        )
        scales = self.resolve_scales(m3_scale, len(grids))
        outputs.pooler_output = self.features_at_scale(grids, scales, image_sizes)
        outputs.m3_scales = scales
        return outputs

    def project_grids(
        self,
        pixel_values: torch.Tensor,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        **tower_kwargs,
    ) -> tuple[BaseModelOutputWithPooling, torch.Tensor]:
        """The vision tower's output and the projected patch tokens ``(num_grids, N, D)`` of
        ``(num_grids, C, H, W)`` pixels.

        The tower runs under ``no_grad`` unless ``config.m3_train_vision_tower`` (as the official code). Unless the
        caller asks for hidden states, only the selected feature layer(s) are kept (as transformers does).
        """
        layer = self.config.vision_feature_layer if vision_feature_layer is None else vision_feature_layer
        strategy = vision_feature_select_strategy or self.config.vision_feature_select_strategy
        layers = [layer] if isinstance(layer, int) else list(layer)
        requested = tower_kwargs.get("output_hidden_states")
        if requested is not True:  # capture the feature layer(s) and any the caller selected, as a list: a bare
            # index 0 (the embedding output, which the tiny preset reads) would read as "no hidden states"
            tower_kwargs["output_hidden_states"] = [*(selected_hidden_states(requested) or []), *layers]
        train_tower = self.config.m3_train_vision_tower and torch.is_grad_enabled()
        with torch.set_grad_enabled(train_tower):
            outputs = self.vision_tower(pixel_values, return_dict=True, **tower_kwargs)
        hidden = torch.cat([outputs.hidden_states[index] for index in layers], dim=-1)
        if strategy == "default":
            hidden = hidden[:, 1:]
        return outputs, self.multi_modal_projector(hidden)

    def encode_images(
        self,
        pixel_values: torch.Tensor,
        image_sizes: torch.Tensor | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
    ) -> list[torch.Tensor]:
        """Full-resolution projected grids, one tensor per image: ``(1, N, D)`` (LLaVA-1.5) or
        ``(1 + rows*cols, N, D)`` crops (LLaVA-NeXT). Pool them with :meth:`features_at_scale`."""
        return self.encode_images_with_outputs(
            pixel_values, image_sizes, vision_feature_layer, vision_feature_select_strategy
        )[1]


class M3LlavaModel(M3ImageEncoderMixin, LlavaModel):
    config_class = M3LlavaConfig

    def encode_images_with_outputs(
        self,
        pixel_values: torch.Tensor,
        image_sizes: torch.Tensor | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        **tower_kwargs,
    ) -> tuple[BaseModelOutputWithPooling, list[torch.Tensor]]:
        """The tower's output and one ``(1, N, D)`` full-resolution projected grid per image."""
        outputs, grids = self.project_grids(
            pixel_values, vision_feature_layer, vision_feature_select_strategy, **tower_kwargs
        )
        return outputs, list(grids.unsqueeze(1))

    def features_at_scale(
        self, grids: list[torch.Tensor], scale: int | Sequence[int], image_sizes: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """The ``(scale, D)`` token sequence of every image (``scale``: one for all, or one per image), reduced by
        ``config.m3_token_selection``."""
        scales = per_image_scales(scale, len(grids), self.config.grid_tokens)
        method = self.config.m3_token_selection
        return [select_tokens(grid[0], value, method) for grid, value in zip(grids, scales)]

    @merge_with_config_defaults
    @can_return_tuple
    @select_hidden_states("vision_feature_layer")
    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        image_sizes: torch.Tensor | None = None,
        m3_scale: int | Sequence[int] | None = None,
        **kwargs,
    ) -> tuple | BaseModelOutputWithPooling:
        """Image features pooled to ``m3_scale`` (default: ``config.m3_default_scale``; a sequence gives one scale
        per image), in the parent's output contract: the vision tower's output with ``pooler_output`` = one
        ``(scale, D)`` tensor per image;
        ``return_dict=False`` gives a tuple, ``output_hidden_states`` / ``output_attentions`` reach the tower.

        The signature mirrors transformers' (generate passes the arguments it finds in it).
        """
        return self.pooled_image_features(
            pixel_values, image_sizes, vision_feature_layer, vision_feature_select_strategy, m3_scale, **kwargs
        )


def crops_match(pixel_values: torch.Tensor, num_crops: list[int]) -> bool:
    """Whether anyres ``pixel_values`` hold the crops the model's ``image_grid_pinpoints`` expect: ``sum(num_crops)``
    of them (4-D), or per image its crops then only zero padding (5-D, as the image processors pad a batch).
    A processor with other pinpoints cuts other crop counts, which would otherwise be stitched silently wrong."""
    if pixel_values.dim() == 4:
        return pixel_values.shape[0] == sum(num_crops)
    if pixel_values.shape[1] < max(num_crops):
        return False
    return not any(bool(pixels[count:].any()) for pixels, count in zip(pixel_values, num_crops))


class M3LlavaNextModel(M3ImageEncoderMixin, LlavaNextModel):
    config_class = M3LlavaNextConfig

    def encode_images_with_outputs(
        self,
        pixel_values: torch.Tensor,
        image_sizes: torch.Tensor | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        **tower_kwargs,
    ) -> tuple[BaseModelOutputWithPooling, list[torch.Tensor]]:
        """The tower's output and one ``(1 + rows*cols, N, D)`` tensor of full-resolution projected crops per image."""
        if image_sizes is None:
            raise ValueError("LLaVA-NeXT needs image_sizes (height, width of every image)")
        crop_size = self.config.vision_config.image_size
        num_crops = [
            image_size_to_num_patches(size, self.config.image_grid_pinpoints, crop_size) for size in image_sizes
        ]
        if pixel_values.dim() not in (4, 5):
            raise ValueError(f"pixel_values of shape {tuple(pixel_values.shape)}: expected 4 or 5 dimensions")
        if not crops_match(pixel_values, num_crops):
            given = pixel_values.shape[1] if pixel_values.dim() == 5 else pixel_values.shape[0]
            raise ValueError(
                f"pixel_values hold {given} crops but config.image_grid_pinpoints give {num_crops} crops for image "
                f"sizes {[list(map(int, size)) for size in image_sizes]}: the image processor's image_grid_pinpoints "
                "differ from the model's; pass the same image_grid_pinpoints to both"
            )
        if pixel_values.dim() == 5:
            pixel_values = torch.cat([pixels[:count] for pixels, count in zip(pixel_values, num_crops)], dim=0)
        outputs, grids = self.project_grids(
            pixel_values, vision_feature_layer, vision_feature_select_strategy, **tower_kwargs
        )
        return outputs, list(torch.split(grids, num_crops, dim=0))

    def features_at_scale(
        self, grids: list[torch.Tensor], scale: int | Sequence[int], image_sizes: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Every crop reduced to its image's scale (one for all, or one per image) by ``config.m3_token_selection``
        and laid out as a k x k grid, then unpadded (by ``config.m3_unpad_rule``) and closed with newline tokens per
        row."""
        scales = per_image_scales(scale, len(grids), self.config.grid_tokens)
        crop_size = self.config.vision_config.image_size
        method = self.config.m3_token_selection
        return [
            pack_anyres_features(
                select_tokens(crops, value, method),
                size,
                self.config.image_grid_pinpoints,
                crop_size,
                self.image_newline,
                self.config.m3_unpad_rule,
            )
            for crops, size, value in zip(grids, image_sizes, scales)
        ]

    @merge_with_config_defaults
    @can_return_tuple
    @select_hidden_states("vision_feature_layer")
    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        image_sizes: torch.Tensor,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        m3_scale: int | Sequence[int] | None = None,
        **kwargs,
    ) -> tuple | BaseModelOutputWithPooling:
        """Image features with every crop pooled to ``m3_scale`` (default: ``config.m3_default_scale``; a sequence
        gives one scale per image), in the parent's output contract (see :meth:`M3LlavaModel.get_image_features`)."""
        return self.pooled_image_features(
            pixel_values, image_sizes, vision_feature_layer, vision_feature_select_strategy, m3_scale, **kwargs
        )


class M3ForConditionalGenerationMixin(M3LibraryCodeMixin):
    """Scale-controlled and multi-scale forward shared by both model families.

    Each family's ``forward`` spells out the parent's parameters (transformers inspects the signature: e.g.
    ``generate`` passes ``logits_to_keep`` only to a forward that names it) and hands them to :meth:`m3_forward`.
    """

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        """The parent's ``save_pretrained``, then the weights fingerprint beside the files (``m3_fingerprint.json``,
        see :mod:`m3.fingerprint`): computed while the files are fresh, so later runs need not hash them."""
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            weights_fingerprint(save_directory, recompute=True)

    def m3_forward(
        self,
        input_ids: torch.LongTensor | None,
        pixel_values: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        labels: torch.LongTensor | None,
        image_sizes: torch.Tensor | None,
        mm_encoder_outputs: dict | None,
        vision_feature_layer: int | list[int] | None,
        vision_feature_select_strategy: str | None,
        m3_scale: int | Sequence[int] | None,
        m3_scales: Sequence[int] | None,
        **kwargs,
    ):
        """``m3_scale``: visual tokens per image (per crop for NeXT), or a sequence with one scale per image in batch
        and prompt order; ``m3_scales``: multi-scale loss, the mean over its passes; a pass is one scale for every
        image, or a sequence of one scale per image (mixed-scale prompts, e.g. :func:`m3.training.mixed_scale_passes`).

        Everything else (``position_ids``, ``past_key_values``, ``inputs_embeds``, ``logits_to_keep``, ``use_cache``
        ...) goes to the parent's forward unchanged. Without images (a text-only turn, or decoding from a cache)
        this is the parent's forward.
        """
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
            if mm_encoder_outputs:
                raise ValueError("pass either pixel_values or mm_encoder_outputs, not both")
            features = self.model.get_image_features(
                pixel_values, image_sizes=image_sizes, m3_scale=m3_scale, **vision_kwargs
            )
            mm_encoder_outputs = {"image": features}
        image_features = (mm_encoder_outputs or {}).get("image")
        if image_features is not None and input_ids is not None:
            scales = getattr(image_features, "m3_scales", None)
            if scales is None and m3_scale is not None:
                scales = per_image_scales(m3_scale, len(image_features.pooler_output), self.config.grid_tokens)
            self._check_image_tokens(input_ids, image_features.pooler_output, scales)
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            labels=labels,
            image_sizes=image_sizes,
            mm_encoder_outputs=mm_encoder_outputs,
            **kwargs,
        )

    def _check_image_tokens(
        self, input_ids: torch.Tensor, features: list[torch.Tensor], scales: list[int] | None
    ) -> None:
        """Every image's features must meet a run of image tokens of their length (transformers only checks the
        total, so with per-image scales a prompt built for other scales could silently misplace features)."""
        counts = [feature.shape[0] for feature in features]
        problem = image_token_mismatch(input_ids, self.config.image_token_id, counts, scales)
        if problem is None:
            return
        found, needed = int((input_ids == self.config.image_token_id).sum()), sum(counts)
        if scales is None:
            images, fix = f"{len(features)} image(s)", "with one image token per feature token of each image"
        else:
            uniform = len(set(scales)) == 1
            scale = scales[0] if uniform else scales
            images = f"{len(features)} image(s) at scale{'' if uniform else 's'} {scale}"
            fix = f"for {'this scale' if uniform else 'these scales'} with M3Processor(..., m3_scale={scale})"
        raise ValueError(
            f"Image features and image tokens do not match, tokens: {found}, features: {needed}. input_ids hold "
            f"{found} image tokens but {images} need {needed}: {problem}; build the prompt {fix}"
        )

    def _check_pass(self, scale: int | Sequence[int]) -> int | tuple[int, ...]:
        """One pass of the multi-scale loss: a scale for every image, or (a sequence) one scale per image in batch
        order, kept as a tuple (the pass's key in ``per_scale_loss``)."""
        if isinstance(scale, Sequence) or hasattr(scale, "tolist"):
            values = scale.tolist() if hasattr(scale, "tolist") else scale
            return tuple(check_scale(value, self.config.grid_tokens) for value in values)
        return check_scale(scale, self.config.grid_tokens)

    def _multiscale_forward(
        self, input_ids, pixel_values, attention_mask, labels, image_sizes, scales, vision_kwargs, kwargs
    ) -> M3CausalLMOutputWithPast:
        if labels is None:
            raise ValueError("the multi-scale forward (m3_scales=...) computes a loss and needs labels")
        if input_ids is None:
            raise ValueError("the multi-scale forward (m3_scales=...) needs input_ids with one image token per image")
        kwargs = {key: value for key, value in kwargs.items() if value is not None}
        logits_to_keep = kwargs.pop("logits_to_keep", 0)
        if not (isinstance(logits_to_keep, int) and logits_to_keep == 0):
            raise ValueError("the multi-scale loss needs the logits of every position; do not pass logits_to_keep")
        scales = [self._check_pass(scale) for scale in scales]
        if pixel_values is None:  # text only: every scale sees the same input, so one forward serves all
            loss = super().forward(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs).loss
            return M3CausalLMOutputWithPast(loss=loss, per_scale_loss=dict.fromkeys(scales, loss.detach()))
        grids = self.model.encode_images(pixel_values, image_sizes, **vision_kwargs)
        pad_token_id = self.config.text_config.pad_token_id or 0
        per_scale_loss = {}
        for scale in scales:
            per_image = list(scale) if isinstance(scale, tuple) else scale
            features = self.model.features_at_scale(grids, per_image, image_sizes)
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

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        image_sizes: torch.Tensor | None = None,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        m3_scale: int | Sequence[int] | None = None,
        m3_scales: Sequence[int] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ):
        """The parent's forward, plus ``m3_scale`` (visual tokens per image, or one scale per image) or ``m3_scales``
        (the multi-scale loss of compact inputs: one image token per image); see
        :meth:`M3ForConditionalGenerationMixin.m3_forward`."""
        return self.m3_forward(
            input_ids,
            pixel_values,
            attention_mask,
            labels,
            image_sizes,
            mm_encoder_outputs,
            vision_feature_layer,
            vision_feature_select_strategy,
            m3_scale,
            m3_scales,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )


class M3LlavaNextForConditionalGeneration(M3ForConditionalGenerationMixin, LlavaNextForConditionalGeneration):
    """LLaVA-NeXT (anyres) with Matryoshka visual tokens; every crop is pooled to the scale."""

    config_class = M3LlavaNextConfig

    def __init__(self, config: M3LlavaNextConfig):
        LlavaNextPreTrainedModel.__init__(self, config)
        self.model = M3LlavaNextModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        m3_scale: int | Sequence[int] | None = None,
        m3_scales: Sequence[int] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ):
        """The parent's forward, plus ``m3_scale`` / ``m3_scales`` (see :class:`M3LlavaForConditionalGeneration`)."""
        return self.m3_forward(
            input_ids,
            pixel_values,
            attention_mask,
            labels,
            image_sizes,
            mm_encoder_outputs,
            vision_feature_layer,
            vision_feature_select_strategy,
            m3_scale,
            m3_scales,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )


MODEL_CLASSES = {"llava": M3LlavaForConditionalGeneration, "llava_next": M3LlavaNextForConditionalGeneration}
"""The one family table, like transformers' auto mappings: ``model_type`` -> M3 class; its config class is the
class's ``config_class``."""


def _register_checkpoint_conversions() -> None:
    """transformers skips key conversion for classes defined outside it unless they are registered;
    reuse the llava / llava_next rules so llava-hf checkpoints (legacy key layout) load and save alike."""
    pairs = {model_class.__name__: model_type for model_type, model_class in MODEL_CLASSES.items()}
    for inner in (M3LlavaModel, M3LlavaNextModel):
        pairs[inner.__name__] = inner.__bases__[-1].__name__  # the transformers model it extends
    for ours, theirs in pairs.items():
        mapping = get_checkpoint_conversion_mapping(theirs)
        if mapping is not None:
            register_checkpoint_conversion_mapping(ours, mapping, overwrite=True)


_register_checkpoint_conversions()
