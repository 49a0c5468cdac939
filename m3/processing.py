"""``M3Processor``: images + chat text -> model inputs with the right number of image tokens for a scale.

Wraps a tokenizer and an image processor the way ``LlavaProcessor`` does, but tokenizes each image as
ONE ``<image>`` token and expands it to the count the chosen scale needs (see ``m3.prompting``). It also holds the
model's conversation template (:mod:`m3.templates`), through which every prompt of the project is written.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoImageProcessor, AutoTokenizer, BatchFeature

from .loading import load_m3_config
from .prompting import expand_image_tokens, image_token_counts
from .templates import IMAGE_PLACEHOLDER, build_template, default_template_name, plain, read_chat_template


def check_question(question, what: str = "the question") -> str:
    """``question``, stripped, if it can be asked: text, not blank, free of the image marker (the image goes in
    separately) and of characters that are not valid UTF-8 (bytes a command line or a file could not decode, which
    Python keeps as lone surrogates); ``ValueError`` naming ``what`` otherwise. Every input path asks this."""
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"{what} must be a non-empty string, got {question!r}")
    undecodable = next((i for i, char in enumerate(question) if "\ud800" <= char <= "\udfff"), None)
    if undecodable is not None:
        raise ValueError(
            f"{what} holds bytes that are not valid UTF-8 (at character {undecodable}: {question!r}); give it as UTF-8"
        )
    if IMAGE_PLACEHOLDER in question:
        raise ValueError(
            f"{what} holds {IMAGE_PLACEHOLDER}: the image goes in separately and the prompt gets exactly one marker; "
            "give only the text"
        )
    return question.strip()


def llava_prompt(question: str, answer: str | None = None, num_images: int = 1) -> str:
    """The ``plain`` template's single-turn prompt (what the tiny models read); the answer is appended for training
    text. ``num_images`` > 1 puts one placeholder line per image before the question (multi-image prompts, e.g. the
    frames of a video). Other models' prompts: ``M3Processor.prompt``."""
    prompt = plain().prompt(question, num_images)
    return prompt if answer is None else f"{prompt} {answer}"


def check_same_pinpoints(config, image_processor) -> None:
    """Raise unless a LLaVA-NeXT config and its image processor cut the same anyres crop grids.

    The processor decides how many crops it cuts and the model how it stitches them; with other pinpoints the
    two disagree (token counts, unpadding), so a mismatch is refused here rather than answered wrongly."""
    model_pinpoints = getattr(config, "image_grid_pinpoints", None)
    processor_pinpoints = getattr(image_processor, "image_grid_pinpoints", None)
    if model_pinpoints is None or processor_pinpoints is None:
        return
    if [list(pair) for pair in model_pinpoints] != [list(pair) for pair in processor_pinpoints]:
        raise ValueError(
            f"the model's image_grid_pinpoints {model_pinpoints} differ from the image processor's "
            f"{processor_pinpoints}; pass the same list to both, e.g. load_m3_model(path, image_grid_pinpoints=P) "
            "and M3Processor.from_pretrained(path, config=model.config, image_grid_pinpoints=P)"
        )


class M3Processor:
    """Builds ``input_ids``/``attention_mask``/``pixel_values`` (and ``image_sizes`` for NeXT) at a scale.

    ``template`` names the conversation template (:data:`m3.templates.TEMPLATE_NAMES`); default: the model's
    (:func:`m3.templates.default_template_name`). ``chat_template``: the checkpoint's chat template text, when it is
    not the tokenizer's own (``from_pretrained`` reads it from the folder)."""

    def __init__(
        self, image_processor, tokenizer, config, template: str | None = None, chat_template: str | None = None
    ) -> None:
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.config = config
        self.chat_template = chat_template or read_chat_template(None, tokenizer)
        name = template or default_template_name(config, self.chat_template)
        self.template = build_template(name, tokenizer, self.chat_template)
        token_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
        if token_id != config.image_token_id:
            raise ValueError(
                f"the tokenizer maps {IMAGE_PLACEHOLDER} to id {token_id} but the model's image_token_id is "
                f"{config.image_token_id}; use the tokenizer saved with the model"
            )
        check_same_pinpoints(config, image_processor)

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, config=None, image_grid_pinpoints: list | None = None, template: str | None = None
    ) -> M3Processor:
        """Load tokenizer, image processor, chat template and (unless given) the M3 config from a model directory.

        ``image_grid_pinpoints`` (LLaVA-NeXT) replaces the saved ones of the image processor (and of the config
        when it is loaded here): cut other crop grids than the model was trained with. A given ``config`` must
        hold the same pinpoints (``load_m3_model(path, image_grid_pinpoints=...)``). ``template`` overrides the
        model's conversation template."""
        overrides = {} if image_grid_pinpoints is None else {"image_grid_pinpoints": image_grid_pinpoints}
        config = config or load_m3_config(path, **overrides)
        image_processor = AutoImageProcessor.from_pretrained(path, **overrides)
        tokenizer = AutoTokenizer.from_pretrained(path)
        return cls(image_processor, tokenizer, config, template, read_chat_template(path, tokenizer))

    def save_pretrained(self, path: str | os.PathLike) -> None:
        self.tokenizer.save_pretrained(path)
        self.image_processor.save_pretrained(path)
        if self.chat_template and not (Path(path) / "chat_template.jinja").is_file():
            (Path(path) / "chat_template.jinja").write_text(self.chat_template, encoding="utf-8")

    def prompt(self, question: str, num_images: int = 1) -> str:
        """The model's single-turn generation prompt for ``question`` about ``num_images`` images (one placeholder
        line per image in front, unless the question already holds them)."""
        return self.template.prompt(question, num_images)

    def __call__(
        self,
        text: str | Sequence[str],
        images=None,
        m3_scale: int | Sequence[int] | None = None,
        padding_side: str = "left",
        expand: bool = True,
    ) -> BatchFeature:
        """Tokenize ``text`` (one ``<image>`` per image) and expand image tokens for ``m3_scale``: one scale for all
        images, or one per image in ``images`` order (the images of every text in turn, as the placeholders read).

        Left padding by default, as batched generation needs. ``expand=False`` keeps ONE image token per
        image: the compact form that the multi-scale training forward (``m3_scales=...``) expects.
        """
        texts = [text] if isinstance(text, str) else list(text)
        scale = self.config.m3_default_scale if m3_scale is None else m3_scale
        encoded = self.tokenizer(texts, padding=True, padding_side=padding_side, return_tensors="pt")
        data = {}
        if images is not None:
            images = images if isinstance(images, (list, tuple)) else [images]
            data.update(self.image_processor(images, return_tensors="pt"))
        data.update(encoded)
        if expand:
            num_images = 0 if images is None else len(images)
            data.update(self.expand_to_scale(data, scale, num_images, padding_side))
        return BatchFeature(data=data, tensor_type="pt")

    def expand_to_scale(
        self, compact, scale: int | Sequence[int], num_images: int, padding_side: str = "left"
    ) -> dict[str, torch.Tensor]:
        """``input_ids``/``attention_mask`` of a compact encoding (one image token per image) at ``scale`` (one
        for all images, or one per image in placeholder order).

        Lets a caller encode texts and images once and build the prompts of every scale from them.
        """
        image_sizes = compact.get("image_sizes")
        counts = []
        if num_images:  # a text-only batch needs no image sizes
            counts = image_token_counts(self.config, scale, image_sizes=image_sizes, num_images=num_images)
        input_ids, attention_mask, _ = expand_image_tokens(
            compact["input_ids"],
            self.config.image_token_id,
            counts,
            compact["attention_mask"],
            pad_token_id=self.tokenizer.pad_token_id,
            padding_side=padding_side,
        )
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def batch_decode(self, token_ids: torch.Tensor, **kwargs) -> list[str]:
        kwargs.setdefault("skip_special_tokens", True)
        return self.tokenizer.batch_decode(token_ids, **kwargs)
