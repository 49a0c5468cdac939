"""Conversation templates: how a question (and, for training, its answers) becomes the text the LLM reads.

Three named choices, one default per model (:func:`default_template_name`):

* ``plain``: ``USER: <image>\\n{question} ASSISTANT:`` with no system prompt; the tiny models are trained and
  evaluated with it (the default of a checkpoint that names no template and has no chat template);
* ``vicuna_v1``: the official LLaVA-1.5 / M3 template (``--version v1`` of the official fine-tune, ``conv_template``
  of its lmms-eval fork): the vicuna system prompt, then ``USER: ... ASSISTANT:``, answers closed by ``</s>``; the
  converter names it in the config of every checkpoint it converts from the original release;
* ``chat_template``: the checkpoint's own Hugging Face chat template (llava-hf checkpoints ship one), rendered with
  one ``{"type": "image"}`` item per image before the question's text.

The config field ``m3_conversation_template`` names the template of a checkpoint; unset, a checkpoint with a chat
template uses it and any other uses ``plain``. Training (:class:`m3.data.llava.M3Collator`), evaluation, the oracle
build, ``AdaptiveM3`` and the lmms-eval plugin all build their text through the processor's template
(``M3Processor.template``), so a model is always asked the way it was trained.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

IMAGE_PLACEHOLDER = "<image>"
VICUNA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
TEMPLATE_NAMES = ("plain", "vicuna_v1", "chat_template")


def with_placeholders(question: str, num_images: int) -> str:
    """``question`` with one ``<image>`` line per image in front, unless it already holds ``num_images`` of them
    (a prompt that places its images itself keeps them where they stand)."""
    found = question.count(IMAGE_PLACEHOLDER)
    if found == num_images and num_images:
        return question
    if found:
        raise ValueError(
            f"the question holds {found} {IMAGE_PLACEHOLDER} placeholder(s) but {num_images} image(s) come with it; "
            f"give one placeholder per image, or none (then one line per image goes in front)"
        )
    return f"{IMAGE_PLACEHOLDER}\n" * num_images + question


@dataclass(frozen=True)
class SeparatorTemplate:
    """A LLaVA ``SeparatorStyle.TWO`` template: ``{system} USER: {q} ASSISTANT: {a}{end}USER: ...``.

    Without a system prompt the text starts at ``USER:`` (the ``plain`` template)."""

    name: str
    system: str = ""
    roles: tuple[str, str] = ("USER", "ASSISTANT")
    end_of_turn: str = "</s>"

    def prompt(self, question: str, num_images: int = 1) -> str:
        """The single-turn generation prompt; ``num_images`` placeholders go in front of the question unless it
        already holds them."""
        return self.conversation([with_placeholders(question, num_images), None])[0]

    def conversation(self, turns: Sequence[str | None]) -> tuple[str, list[tuple[int, int]]]:
        """The text of alternating user / assistant turns (a final ``None`` answer leaves the generation prompt) and
        the character span of every answer: the space after the assistant role, the answer and its end token (what
        the training loss is computed on)."""
        text = f"{self.system} " if self.system else ""
        spans = []
        for index in range(0, len(turns), 2):
            text += f"{self.roles[0]}: {turns[index]} {self.roles[1]}:"
            answer = turns[index + 1] if index + 1 < len(turns) else None
            if answer is not None:
                start = len(text)
                text += f" {answer}{self.end_of_turn}"
                spans.append((start, len(text)))
        return text, spans


@dataclass(frozen=True)
class ChatTemplate:
    """A checkpoint's Hugging Face chat template (jinja), rendered through its tokenizer.

    Every ``<image>`` of a user turn becomes one ``{"type": "image"}`` item in front of the turn's text (llava-hf
    templates render these as ``<image>`` placeholders). A leading BOS the template writes is dropped when the
    tokenizer adds one itself, so the prompt is not opened twice."""

    name: str
    template: str
    tokenizer: object

    def _messages(self, turns: Sequence[str | None]) -> list[dict]:
        messages = []
        for index, turn in enumerate(turns):
            if turn is None:
                break
            if index % 2 == 0:
                images = turn.count(IMAGE_PLACEHOLDER)
                text = turn.replace(IMAGE_PLACEHOLDER, "").strip()
                content = [{"type": "image"}] * images + [{"type": "text", "text": text}]
                messages.append({"role": "user", "content": content})
            else:
                messages.append({"role": "assistant", "content": [{"type": "text", "text": turn}]})
        return messages

    def _render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        text = self.tokenizer.apply_chat_template(
            messages, chat_template=self.template, tokenize=False, add_generation_prompt=add_generation_prompt
        )
        bos = self.tokenizer.bos_token
        adds_bos = bos is not None and self.tokenizer("")["input_ids"][:1] == [self.tokenizer.bos_token_id]
        return text[len(bos) :] if adds_bos and text.startswith(bos) else text

    def prompt(self, question: str, num_images: int = 1) -> str:
        return self.conversation([with_placeholders(question, num_images), None])[0]

    def conversation(self, turns: Sequence[str | None]) -> tuple[str, list[tuple[int, int]]]:
        """As :meth:`SeparatorTemplate.conversation`: every answer's span is what the template adds for it after the
        generation prompt of the turns before it. A template that renders earlier turns differently once later turns
        follow cannot mark its answers and is refused."""
        messages = self._messages(turns)
        spans = []
        for end in range(2, len(messages) + 1, 2):
            before = self._render(messages[: end - 1], add_generation_prompt=True)
            upto = self._render(messages[:end], add_generation_prompt=False)
            if not upto.startswith(before):
                raise ValueError(
                    f"the chat template renders an answer without its generation prompt in front ({before[-40:]!r} "
                    f"is not a prefix of {upto[-60:]!r}); its answers cannot be marked for training: use another "
                    "template (m3_conversation_template)"
                )
            spans.append((len(before), len(upto)))
        open_prompt = len(messages) % 2 == 1
        text = self._render(messages, add_generation_prompt=open_prompt)
        if spans and not text.startswith(upto):
            raise ValueError("the chat template renders earlier turns differently once later turns follow")
        return text, spans


def plain() -> SeparatorTemplate:
    return SeparatorTemplate("plain")


def vicuna_v1() -> SeparatorTemplate:
    return SeparatorTemplate("vicuna_v1", system=VICUNA_V1_SYSTEM)


def read_chat_template(path: str | os.PathLike | None, tokenizer=None) -> str | None:
    """The chat template saved with a checkpoint: ``chat_template.jinja``, else the processor's legacy
    ``chat_template.json``, else the tokenizer's own; ``None`` when it has none."""
    if path is not None:
        folder = Path(path)
        if (folder / "chat_template.jinja").is_file():
            return (folder / "chat_template.jinja").read_text(encoding="utf-8")
        if (folder / "chat_template.json").is_file():
            template = json.loads((folder / "chat_template.json").read_text(encoding="utf-8")).get("chat_template")
            if template:
                return template
    template = getattr(tokenizer, "chat_template", None)
    return template if isinstance(template, str) and template else None


def default_template_name(config, chat_template: str | None) -> str:
    """The model's template: its config's ``m3_conversation_template``; unset, ``chat_template`` when the checkpoint
    has one, else ``plain``."""
    name = getattr(config, "m3_conversation_template", None)
    if name:
        return check_template_name(name)
    return "chat_template" if chat_template else "plain"


def check_template_name(name: str) -> str:
    if name not in TEMPLATE_NAMES:
        raise ValueError(f"unknown conversation template {name!r}; expected one of {list(TEMPLATE_NAMES)}")
    return name


def build_template(name: str, tokenizer=None, chat_template: str | None = None) -> SeparatorTemplate | ChatTemplate:
    """The template called ``name``; ``chat_template`` needs the checkpoint's template text and tokenizer."""
    check_template_name(name)
    if name == "plain":
        return plain()
    if name == "vicuna_v1":
        return vicuna_v1()
    if not chat_template or tokenizer is None:
        raise ValueError(
            "the chat_template conversation template needs the checkpoint's chat template, and this one has none "
            "(no chat_template.jinja / chat_template.json, no tokenizer chat_template); choose plain or vicuna_v1"
        )
    return ChatTemplate("chat_template", chat_template, tokenizer)
