import numpy as np
import pytest
import torch
from PIL import Image

from m3.processing import M3Processor, llava_prompt
from m3.tiny import build_tiny_tokenizer, tiny_image_processor, tiny_model

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Every test starts with one torch thread: training sets the preset's thread count for its process, which must
    not leak into the tests that run after it."""
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def tokenizer():
    return build_tiny_tokenizer()


def random_image(height: int, width: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(params=["llava", "llava_next"])
def family(request):
    return request.param


@pytest.fixture
def model_and_processor(family, tokenizer):
    model = tiny_model(family, tokenizer=tokenizer)
    return model, M3Processor(tiny_image_processor(family), tokenizer, model.config)


def training_batch(processor, images, questions, answers):
    """Compact (one image token per image) right-padded batch with labels on the answers only."""
    prompts = [llava_prompt(q) for q in questions]
    full = [f"{p} {a}</s>" for p, a in zip(prompts, answers)]
    encoded = processor(full, images, padding_side="right", expand=False)
    labels = encoded["input_ids"].clone()
    labels[encoded["attention_mask"] == 0] = -100
    for row, prompt in enumerate(prompts):
        prompt_len = len(processor.tokenizer(prompt)["input_ids"])
        labels[row, :prompt_len] = -100
    encoded["labels"] = labels
    return encoded
