"""Wall time of one M3 multi-scale training step: one vision pass (ours) against one per scale (official).

Both designs run on the SAME batch and the SAME weights:

* ``ours``: ``model(compact_ids, ..., m3_scales=scales).loss.backward()`` - the vision tower and the
  projector run once, the projected grids are pooled to every scale inside the model;
* ``official``: for every scale, expand the image tokens to that scale and call
  ``model(..., m3_scale=s)`` (the vision tower runs again each time); the losses are summed, divided by
  the number of scales and back-propagated once - what github mu-cai/matryoshka-mm does.

:func:`check_designs_agree` first shows that the two are the same computation (equal losses, near-equal
gradients); :func:`run_benchmark` then times them interleaved (ours, official, ours, ...).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaNextImageProcessor,
    PreTrainedTokenizerFast,
)

from .convert import KNOWN_VISION_TOWERS
from .modeling import M3LlavaForConditionalGeneration, M3LlavaNextForConditionalGeneration
from .processing import llava_prompt
from .prompting import IGNORE_INDEX, expand_image_tokens, image_token_counts
from .tiny import build_tiny_tokenizer, m3_config, tiny_image_processor, tiny_model

CONFIGS = ("tiny", "1b")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
DEFAULT_SCALES = (1, 9, 36, 144, 576)

# Short question / answer pairs written with the tiny tokenizer's word list (no unknown tokens).
QA_PAIRS = (
    ("what color is the circle ?", "the circle is red ."),
    ("how many dots are there ?", "3"),
    ("where is the square in the image ?", "top left"),
    ("is there a green triangle on the left ?", "yes , there is a green triangle ."),
    ("which shape is in the center ?", "a blue square"),
    ("what is the background color ?", "white"),
)

# (height, width) of the LLaVA-NeXT benchmark images, as fractions of the crop size: they give 2 to 4
# grid crops each, and the last one needs unpadding.
NEXT_IMAGE_SHAPES = ((1.0, 2.0), (2.0, 2.0), (1.0, 3.0), (1.5625, 2.0833))

# CLIP ViT-L/14-336 tower + a ~1B Llama (about 1.26B parameters in all).
VISION_1B = KNOWN_VISION_TOWERS["openai/clip-vit-large-patch14-336"]
TEXT_1B = dict(
    vocab_size=32064,
    hidden_size=2048,
    intermediate_size=5632,
    num_hidden_layers=16,
    num_attention_heads=16,
    num_key_value_heads=16,
    max_position_embeddings=4096,
)
PINPOINTS_336 = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


# ----------------------------------------------------------------------------------------------------
# model and batch


def config_1b(family: str, tokenizer: PreTrainedTokenizerFast, **m3_kwargs):
    """Random-weight ~1B M3 config: CLIP ViT-L/14-336 + Llama (hidden 2048, 16 layers), vocab 32064."""
    return m3_config(
        family, CLIPVisionConfig(**VISION_1B), LlamaConfig(**TEXT_1B), tokenizer, PINPOINTS_336, **m3_kwargs
    )


def build_model_and_processor(
    config_name: str = "tiny",
    family: str = "llava",
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    train_vision_tower: bool = False,
    seed: int = 0,
):
    """``(model, tokenizer, image_processor)`` for the ``tiny`` or ``1b`` preset, in train mode."""
    if config_name not in CONFIGS:
        raise ValueError(f"unknown config {config_name!r}; expected one of {CONFIGS}")
    tokenizer = build_tiny_tokenizer()
    if config_name == "tiny":
        model = tiny_model(family, seed=seed, tokenizer=tokenizer, m3_train_vision_tower=train_vision_tower)
        image_processor = tiny_image_processor(family)
    else:
        config = config_1b(family, tokenizer, m3_train_vision_tower=train_vision_tower)
        model_class = M3LlavaForConditionalGeneration if family == "llava" else M3LlavaNextForConditionalGeneration
        torch.manual_seed(seed)
        with torch.device(device):  # initialise in place: no 5 GB float32 copy on the host first
            model = model_class(config)
        size = config.vision_config.image_size
        kwargs = dict(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
        image_processor = (
            CLIPImageProcessor(**kwargs)
            if family == "llava"
            else LlavaNextImageProcessor(image_grid_pinpoints=PINPOINTS_336, **kwargs)
        )
    model = model.to(device=device, dtype=dtype).train()
    return model, tokenizer, image_processor


def image_shapes(family: str, crop_size: int, batch_size: int) -> list[tuple[int, int]]:
    """(height, width) of every benchmark image: square crops for LLaVA, multi-crop shapes for NeXT."""
    if family == "llava":
        return [(crop_size, crop_size)] * batch_size
    return [
        (round(h * crop_size), round(w * crop_size))
        for h, w in (NEXT_IMAGE_SHAPES[i % len(NEXT_IMAGE_SHAPES)] for i in range(batch_size))
    ]


def build_batch(
    tokenizer: PreTrainedTokenizerFast,
    image_processor,
    config,
    batch_size: int = 4,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A right-padded training batch in the compact form (ONE ``<image>`` token per image).

    Keys: ``input_ids``, ``attention_mask``, ``labels`` (-100 everywhere but the answer and its EOS),
    ``pixel_values`` and, for LLaVA-NeXT, ``image_sizes``.
    """
    family = "llava" if getattr(config, "image_grid_pinpoints", None) is None else "llava_next"
    rng = np.random.default_rng(seed)
    images = [
        Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))
        for height, width in image_shapes(family, config.vision_config.image_size, batch_size)
    ]
    rows_ids, rows_labels = [], []
    for i in range(batch_size):
        question, answer = QA_PAIRS[i % len(QA_PAIRS)]
        prompt_ids = tokenizer(llava_prompt(question))["input_ids"]
        full_ids = tokenizer(llava_prompt(question, answer))["input_ids"] + [tokenizer.eos_token_id]
        if full_ids[: len(prompt_ids)] != prompt_ids:
            raise ValueError("the tokenized prompt is not a prefix of the tokenized prompt + answer")
        rows_ids.append(full_ids)
        rows_labels.append([IGNORE_INDEX] * len(prompt_ids) + full_ids[len(prompt_ids) :])
    length = max(len(ids) for ids in rows_ids)
    input_ids = torch.full((batch_size, length), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((batch_size, length), dtype=torch.long)
    labels = torch.full((batch_size, length), IGNORE_INDEX, dtype=torch.long)
    for row, (ids, row_labels) in enumerate(zip(rows_ids, rows_labels)):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
        labels[row, : len(ids)] = torch.tensor(row_labels)
    batch = dict(image_processor(images, return_tensors="pt"))
    batch.update(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    return batch


def move_batch(batch: dict[str, torch.Tensor], device: str | torch.device, dtype: torch.dtype):
    """Batch on ``device``; pixel values in the model's ``dtype`` (integer tensors unchanged)."""
    moved = {key: value.to(device) for key, value in batch.items()}
    moved["pixel_values"] = moved["pixel_values"].to(dtype)
    return moved


# ----------------------------------------------------------------------------------------------------
# the two designs


def loss_ours(model, batch: dict[str, torch.Tensor], scales: Sequence[int]) -> tuple[torch.Tensor, dict]:
    """One vision pass pooled to every scale: ``(mean loss, {scale: detached loss})``."""
    outputs = model(**batch, m3_scales=list(scales))
    return outputs.loss, outputs.per_scale_loss


def loss_official(model, batch: dict[str, torch.Tensor], scales: Sequence[int]) -> tuple[torch.Tensor, dict]:
    """One full forward (vision tower included) per scale: ``(sum of losses / #scales, {scale: detached loss})``.

    Per-scale losses stay tensors (no host sync inside a timed step)."""
    config = model.config
    image_sizes = batch.get("image_sizes")
    pad_token_id = config.text_config.pad_token_id or 0
    total, per_scale = 0.0, {}
    for scale in scales:
        counts = image_token_counts(
            config,
            scale,
            image_sizes=None if image_sizes is None else image_sizes.tolist(),
            num_images=batch["pixel_values"].shape[0],
        )
        ids, mask, labels = expand_image_tokens(
            batch["input_ids"], config.image_token_id, counts, batch["attention_mask"], batch["labels"], pad_token_id
        )
        outputs = model(
            input_ids=ids,
            attention_mask=mask,
            labels=labels,
            pixel_values=batch["pixel_values"],
            image_sizes=image_sizes,
            m3_scale=scale,
        )
        total = total + outputs.loss
        per_scale[scale] = outputs.loss.detach()
    return total / len(scales), per_scale


DESIGNS = {"ours": loss_ours, "official": loss_official}


def train_step(model, batch: dict[str, torch.Tensor], scales: Sequence[int], design: str):
    """Forward + backward of one design (gradients are set to None first); returns its loss outputs."""
    model.zero_grad(set_to_none=True)
    loss, per_scale = DESIGNS[design](model, batch, scales)
    loss.backward()
    return loss.detach(), per_scale


def _gradients(model, clone: bool = True) -> dict[str, torch.Tensor]:
    grads = {name: p.grad.detach() for name, p in model.named_parameters() if p.grad is not None}
    return {name: grad.clone() for name, grad in grads.items()} if clone else grads


@dataclass
class Agreement:
    """Losses of both designs and how far their gradients are apart."""

    loss_ours: float
    loss_official: float
    per_scale_ours: dict[int, float]
    per_scale_official: dict[int, float]
    max_grad_diff: float
    max_grad_abs: float
    num_grads: int
    same_grad_params: bool

    @property
    def loss_diff(self) -> float:
        return abs(self.loss_ours - self.loss_official)


def check_designs_agree(model, batch, scales: Sequence[int], loss_atol: float = 1e-5) -> Agreement:
    """Run both designs once on the same batch and weights; raise if their losses (mean or any per-scale
    one) differ by more than ``loss_atol`` or they do not give gradients to the same parameters."""
    loss_a, per_scale_a = train_step(model, batch, scales, "ours")
    grads_a = _gradients(model)
    loss_b, per_scale_b = train_step(model, batch, scales, "official")
    grads_b = _gradients(model, clone=False)  # only read below: no second copy of every gradient
    model.zero_grad(set_to_none=True)
    per_scale_a = {scale: float(loss) for scale, loss in per_scale_a.items()}
    per_scale_b = {scale: float(loss) for scale, loss in per_scale_b.items()}
    same_params = grads_a.keys() == grads_b.keys()
    shared = grads_a.keys() & grads_b.keys()
    diffs = [float((grads_a[name].float() - grads_b[name].float()).abs().max()) for name in shared]
    agreement = Agreement(
        loss_ours=float(loss_a),
        loss_official=float(loss_b),
        per_scale_ours=per_scale_a,
        per_scale_official=per_scale_b,
        max_grad_diff=max(diffs, default=0.0),
        max_grad_abs=max((float(g.float().abs().max()) for g in grads_a.values()), default=0.0),
        num_grads=len(grads_a),
        same_grad_params=same_params,
    )
    same_scales = per_scale_a.keys() == per_scale_b.keys() == set(scales)
    gaps = [abs(per_scale_a[s] - per_scale_b[s]) for s in scales] if same_scales else [math.inf]
    worst = max([agreement.loss_diff, *gaps])
    if worst > loss_atol or not same_params:
        raise RuntimeError(
            f"the two designs disagree (loss {agreement.loss_ours:.8f} vs {agreement.loss_official:.8f}, "
            f"largest per-scale gap {worst:.3g} > {loss_atol:g}, same gradient parameters: {same_params}); "
            "the timings would not compare equal computations"
        )
    return agreement


# ----------------------------------------------------------------------------------------------------
# timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(model, batch, scales: Sequence[int], design: str) -> tuple[float, float | None]:
    """Seconds of one forward + backward (and peak CUDA memory in GiB, None on CPU)."""
    device = next(model.parameters()).device
    model.zero_grad(set_to_none=True)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    loss, _ = DESIGNS[design](model, batch, scales)
    loss.backward()
    _sync(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return seconds, peak


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """(25th percentile, median, 75th percentile), linear interpolation (numpy's default)."""
    q25, q50, q75 = np.percentile(np.asarray(values, dtype=float), [25, 50, 75])
    return float(q25), float(q50), float(q75)


@dataclass
class BenchResult:
    """Per-design step times (seconds, in run order) plus the agreement check and the setup."""

    times: dict[str, list[float]]
    peak_memory_gib: dict[str, float | None]
    agreement: Agreement
    setup: dict = field(default_factory=dict)

    def median(self, design: str) -> float:
        return quartiles(self.times[design])[1]

    def iqr(self, design: str) -> float:
        q25, _, q75 = quartiles(self.times[design])
        return q75 - q25

    @property
    def ratio(self) -> float:
        """Median official step time / median ours (> 1: the one-pass design is faster)."""
        return self.median("official") / self.median("ours")


def run_benchmark(
    config_name: str = "tiny",
    family: str = "llava",
    batch_size: int = 4,
    repeats: int = 10,
    warmup: int = 2,
    train_vision_tower: bool = False,
    device: str = "cpu",
    dtype: str = "float32",
    scales: Sequence[int] = DEFAULT_SCALES,
    loss_atol: float = 1e-5,
    seed: int = 0,
) -> BenchResult:
    """Build the model and batch, check both designs agree, then time ``repeats`` interleaved steps each."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    torch_dtype = DTYPES[dtype]
    model, tokenizer, image_processor = build_model_and_processor(
        config_name, family, device, torch_dtype, train_vision_tower, seed
    )
    batch = move_batch(build_batch(tokenizer, image_processor, model.config, batch_size, seed), device, torch_dtype)
    agreement = check_designs_agree(model, batch, scales, loss_atol)
    for _ in range(warmup):
        for design in DESIGNS:
            time_step(model, batch, scales, design)
    times = {design: [] for design in DESIGNS}
    peaks = {design: None for design in DESIGNS}
    for _ in range(repeats):
        for design in DESIGNS:
            seconds, peak = time_step(model, batch, scales, design)
            times[design].append(seconds)
            if peak is not None:
                peaks[design] = max(peak, peaks[design] or 0.0)
    model.zero_grad(set_to_none=True)
    setup = dict(
        config=config_name,
        family=family,
        batch_size=batch_size,
        repeats=repeats,
        warmup=warmup,
        train_vision_tower=train_vision_tower,
        device=str(device),
        dtype=dtype,
        scales=list(scales),
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        parameters=sum(p.numel() for p in model.parameters()),
        sequence_length_compact=int(batch["input_ids"].shape[1]),
        device_name=torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else None,
    )
    return BenchResult(times=times, peak_memory_gib=peaks, agreement=agreement, setup=setup)


def format_report(result: BenchResult) -> str:
    """Markdown: setup line, agreement line, and a table of median / IQR per design and the ratio."""
    s, a = result.setup, result.agreement
    where = s["device"] if s["device_name"] is None else f"{s['device']} ({s['device_name']})"
    lines = [
        f"config={s['config']} family={s['family']} params={s['parameters'] / 1e6:.2f}M batch={s['batch_size']} "
        f"scales={s['scales']} train_vision_tower={s['train_vision_tower']} dtype={s['dtype']}",
        f"device={where} threads={s['threads']} torch={s['torch']} repeats={s['repeats']} (interleaved, "
        f"after {s['warmup']} warm-up steps each)",
        f"loss ours={a.loss_ours:.6f} official={a.loss_official:.6f} |diff|={a.loss_diff:.2e}; "
        f"max |grad diff|={a.max_grad_diff:.2e} (max |grad|={a.max_grad_abs:.2e}, {a.num_grads} tensors)",
        "",
    ]
    with_memory = any(value is not None for value in result.peak_memory_gib.values())
    header = "| design | median step (s) | IQR (s) |" + (" peak memory (GiB) |" if with_memory else "")
    lines += [header, "|---|---:|---:|" + ("---:|" if with_memory else "")]
    n = len(s["scales"])
    labels = {
        "ours": f"ours (1 vision pass, pooled {n} ways)",
        "official": f"official ({n} full forwards, 1 per scale)",
    }
    for design, label in labels.items():
        row = f"| {label} | {result.median(design):.4f} | {result.iqr(design):.4f} |"
        if with_memory:
            row += f" {result.peak_memory_gib[design]:.2f} |"
        lines.append(row)
    lines += ["", f"ratio official / ours (medians): **{result.ratio:.2f}x**"]
    return "\n".join(lines)
