"""Conversation templates: the committed tiny checkpoint still reads exactly the prompts its oracles were built with,
vicuna_v1 is the official M3 template word for word, a checkpoint's chat template is used when it has one, and
training, evaluation, the oracle build and inference all write the model's template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from m3.data.llava import M3Collator, normalize_conversations
from m3.evaluation import _prompts
from m3.inference import compact_prompts
from m3.loading import load_m3_config
from m3.processing import M3Processor, llava_prompt
from m3.templates import VICUNA_V1_SYSTEM, build_template, default_template_name
from m3.tiny import tiny_config, tiny_image_processor

from .conftest import random_image

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "checkpoints" / "tiny-m3"
QUESTIONS = ["what color is the circle ?", "how many dots are there ?", "Which shape is on the left?"]
# A chat template in the style of llava-hf's (images first, then the text; the generation prompt "ASSISTANT:").
LLAVA_HF_STYLE = (
    "{% for message in messages %}{{ message['role'].upper() + ': ' }}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}{{ '<image>\\n' }}{% endif %}{% endfor %}"
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] + ' ' }}{% endif %}{% endfor %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def test_the_committed_tiny_checkpoint_reads_exactly_the_prompts_its_oracles_were_built_with():
    """Its config names no template and it has no chat template: ``plain``, i.e. the literal prompt of every oracle
    and figure so far, token for token, in every path that builds prompts."""
    from oracle_data.build import PROMPT_FORMAT, prompt_format

    processor = M3Processor.from_pretrained(TINY)
    assert processor.template.name == "plain"
    assert json.loads((TINY / "config.json").read_text()).get("m3_conversation_template") is None
    literal = [f"USER: <image>\n{question} ASSISTANT:" for question in QUESTIONS]
    assert [processor.prompt(question) for question in QUESTIONS] == literal
    assert [llava_prompt(question) for question in QUESTIONS] == literal
    assert processor.prompt("q", num_images=2) == "USER: <image>\n<image>\nq ASSISTANT:"
    compact = compact_prompts(processor, QUESTIONS)
    expected = processor.tokenizer(literal, padding=True, padding_side="left", return_tensors="pt")
    assert torch.equal(compact["input_ids"], expected["input_ids"])
    items = [item(question, "red", index) for index, question in enumerate(QUESTIONS)]
    assert _prompts(processor, items)[0] == literal
    batch = M3Collator(processor)(items[:1])
    training = processor.tokenizer(literal[0] + " red</s>")["input_ids"]
    assert batch["input_ids"][0].tolist() == training
    assert prompt_format(processor) == PROMPT_FORMAT  # the oracle manifests' settings: old builds still resume


def turns(question: str, answer: str) -> list[dict]:
    return [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]


def item(question: str, answer: str, seed: int = 0) -> dict:
    return {"id": str(seed), "image": random_image(96, 96, seed), "conversations": turns(question, answer)}


def test_vicuna_v1_is_the_official_template_word_for_word():
    """``conv_vicuna_v1`` (SeparatorStyle.TWO, sep " ", sep2 "</s>"): system + sep, then ``role: message`` + the
    separator of its turn, and ``ASSISTANT:`` left open for generation."""
    template = build_template("vicuna_v1")
    system = (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions."
    )
    assert VICUNA_V1_SYSTEM == system
    assert template.prompt("What is shown?") == f"{system} USER: <image>\nWhat is shown? ASSISTANT:"
    text, spans = template.conversation(["<image>\nq1", "a1", "q2", "a2"])
    assert text == f"{system} USER: <image>\nq1 ASSISTANT: a1</s>USER: q2 ASSISTANT: a2</s>"
    assert [text[a:b] for a, b in spans] == [" a1</s>", " a2</s>"]
    assert template.prompt("<image>\nalready placed") == f"{system} USER: <image>\nalready placed ASSISTANT:"
    assert template.prompt("text only", num_images=0) == f"{system} USER: text only ASSISTANT:"
    with pytest.raises(ValueError, match="1 <image> placeholder.*2 image"):
        template.prompt("<image> one placeholder", num_images=2)


@pytest.fixture
def chat_checkpoint(tokenizer, tmp_path) -> Path:
    """A tiny checkpoint folder saved with a llava-hf style chat template and no template in its config."""
    config = tiny_config("llava", tokenizer)
    config.save_pretrained(tmp_path)
    processor = M3Processor(tiny_image_processor("llava"), tokenizer, config, chat_template=LLAVA_HF_STYLE)
    processor.save_pretrained(tmp_path)
    return tmp_path


def test_a_checkpoint_with_a_chat_template_uses_it(chat_checkpoint, tokenizer):
    processor = M3Processor.from_pretrained(chat_checkpoint)
    assert processor.template.name == "chat_template"
    assert processor.prompt("what color ?") == "USER: <image>\nwhat color ? ASSISTANT:"
    assert processor.prompt("two", num_images=2) == "USER: <image>\n<image>\ntwo ASSISTANT:"
    text, spans = processor.template.conversation(["<image>\nwhat color ?", "red", "and now ?", "blue"])
    assert text == "USER: <image>\nwhat color ? ASSISTANT: red USER: and now ? ASSISTANT: blue "
    assert [text[a:b] for a, b in spans] == [" red ", " blue "]
    # the collator marks exactly the answers of the template's text
    batch = M3Collator(processor)([item("what color ?", "red")])
    labelled = batch["input_ids"][0][batch["labels"][0] != -100]
    assert processor.tokenizer.decode(labelled) == "red"
    # the config's template wins over the chat template; an unknown name is refused
    assert M3Processor.from_pretrained(chat_checkpoint, template="vicuna_v1").template.name == "vicuna_v1"
    config = load_m3_config(chat_checkpoint, m3_conversation_template="plain")
    assert default_template_name(config, LLAVA_HF_STYLE) == "plain"
    with pytest.raises(ValueError, match="unknown conversation template 'vicuna'"):
        load_m3_config(chat_checkpoint, m3_conversation_template="vicuna")
    with pytest.raises(ValueError, match="has none"):
        M3Processor(tiny_image_processor("llava"), tokenizer, config, template="chat_template")


def test_training_evaluation_oracle_and_inference_write_the_models_template(tokenizer, tmp_path):
    """A model whose config names vicuna_v1: the collator's training text, the evaluation and oracle prompts and the
    compact inference prompts (AdaptiveM3, the lmms-eval plugin, the demo) all open with the official prompt."""
    from m3.training import TrainConfig, build_model_and_processor
    from oracle_data.build import prompt_format

    model, processor = build_model_and_processor(TrainConfig(conversation_template="vicuna_v1", max_steps=1))
    assert model.config.m3_conversation_template == "vicuna_v1" and processor.template.name == "vicuna_v1"
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    processor = M3Processor.from_pretrained(tmp_path)  # the saved model keeps its template
    assert processor.template.name == "vicuna_v1"
    prompt = f"{VICUNA_V1_SYSTEM} USER: <image>\nwhat color is the circle ? ASSISTANT:"
    record = item("what color is the circle ?", "red")
    record["conversations"] = normalize_conversations(record["conversations"], 1, "x")
    assert _prompts(processor, [record])[0] == [prompt]
    recorded = VICUNA_V1_SYSTEM + " USER: <image>\n{question} ASSISTANT:"
    assert prompt_format(processor) == f"vicuna_v1 single turn: {recorded!r}"
    compact = compact_prompts(processor, ["what color is the circle ?"])
    assert compact["input_ids"][0].tolist() == processor.tokenizer(prompt)["input_ids"]
    batch = M3Collator(processor)([record])
    assert batch["input_ids"][0].tolist() == processor.tokenizer(prompt + " red</s>")["input_ids"]
