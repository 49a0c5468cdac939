"""Wall time of one M3 multi-scale training step: one vision pass (ours) against one per scale (official).

Both designs run on the SAME batch (built by ``m3.data.llava.M3Collator``, as training builds it) and the SAME
weights, forward + backward:

* ``ours``: ``model(compact_ids, ..., m3_scales=scales).loss.backward()``: the vision tower and the projector run
  once, the projected grids are pooled to every scale inside the model;
* ``official``: for every scale, expand the image tokens to that scale and call ``model(..., m3_scale=s)`` (the
  vision tower runs again each time); the losses are summed, divided by the number of scales and back-propagated
  once, as github mu-cai/matryoshka-mm does.

:func:`check_designs_agree` first shows that the two are the same computation (equal losses, near-equal
gradients); :func:`run_benchmark` then times them interleaved (ours, official, ours, ...) with ``timing.interleave``.

Example:
    python benchmarks/train_step.py --family llava_next --threads 1
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from timing import Timings, device_sync, interleave, machine, peak_memory_gib
from transformers import CLIPImageProcessorPil, CLIPVisionConfig, LlamaConfig, LlavaNextImageProcessorPil

from m3.convert import KNOWN_VISION_TOWERS
from m3.data.llava import M3Collator
from m3.markdown import markdown_table
from m3.modeling import M3LlavaForConditionalGeneration, M3LlavaNextForConditionalGeneration
from m3.processing import IMAGE_PLACEHOLDER, M3Processor
from m3.prompting import expand_image_tokens, image_token_counts
from m3.tiny import MODEL_FAMILIES, build_tiny_tokenizer, m3_config, tiny_image_processor, tiny_model

CONFIGS = ("tiny", "1b")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
DEFAULT_SCALES = (1, 9, 36, 144, 576)
DESIGNS = ("ours", "official")

# Short question / answer pairs written with the tiny tokenizer's word list (no unknown tokens).
QA_PAIRS = (
    ("what color is the circle ?", "the circle is red ."),
    ("how many dots are there ?", "3"),
    ("where is the square in the image ?", "top left"),
    ("is there a green triangle on the left ?", "yes , there is a green triangle ."),
    ("which shape is in the center ?", "a blue square"),
    ("what is the background color ?", "white"),
)

# (height, width) of the LLaVA-NeXT benchmark images, as fractions of the crop size: they give 2 to 4 grid crops
# each, and the last one needs unpadding.
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
MAX_LENGTH = 8192  # the collator's cut: above any benchmark sequence (an anyres image alone can need ~2,900 tokens)


# ----------------------------------------------------------------------------------------------------
# model and batch


def config_1b(family: str, tokenizer, **m3_kwargs):
    """Random-weight ~1B M3 config: CLIP ViT-L/14-336 + Llama (hidden 2048, 16 layers), vocab 32064."""
    return m3_config(
        family, CLIPVisionConfig(**VISION_1B), LlamaConfig(**TEXT_1B), tokenizer, PINPOINTS_336, **m3_kwargs
    )


def image_processor_336(family: str):
    """A CLIP-style (or anyres) image processor for 336 px crops (PIL variants: no torchvision needed)."""
    kwargs = dict(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    if family == "llava":
        return CLIPImageProcessorPil(**kwargs)
    return LlavaNextImageProcessorPil(image_grid_pinpoints=PINPOINTS_336, **kwargs)


def benchmark_model(
    config_name: str = "tiny",
    family: str = "llava",
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    train_vision_tower: bool = False,
    seed: int = 0,
) -> tuple[torch.nn.Module, M3Processor]:
    """``(model in train mode, processor)`` of the ``tiny`` or random-weight ``1b`` preset (no download)."""
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
        image_processor = image_processor_336(family)
    model = model.to(device=device, dtype=dtype).train()
    return model, M3Processor(image_processor, tokenizer, model.config)


def image_shapes(family: str, crop_size: int, batch_size: int) -> list[tuple[int, int]]:
    """(height, width) of every benchmark image: square crops for LLaVA, multi-crop shapes for NeXT."""
    if family == "llava":
        return [(crop_size, crop_size)] * batch_size
    return [
        (round(h * crop_size), round(w * crop_size))
        for h, w in (NEXT_IMAGE_SHAPES[i % len(NEXT_IMAGE_SHAPES)] for i in range(batch_size))
    ]


def benchmark_items(family: str, crop_size: int, batch_size: int, seed: int = 0) -> list[dict]:
    """``batch_size`` LLaVA-format items (random-pixel images, one question and answer each) for ``M3Collator``."""
    rng = np.random.default_rng(seed)
    items = []
    for index, (height, width) in enumerate(image_shapes(family, crop_size, batch_size)):
        question, answer = QA_PAIRS[index % len(QA_PAIRS)]
        items.append(
            {
                "id": str(index),
                "image": Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)),
                "conversations": [
                    {"from": "human", "value": f"{IMAGE_PLACEHOLDER}\n{question}"},
                    {"from": "gpt", "value": answer},
                ],
            }
        )
    return items


def benchmark_batch(
    processor: M3Processor, batch_size: int = 4, seed: int = 0, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """A compact training batch (ONE image token per image) from :class:`M3Collator`, on ``device``; pixel values
    in the model's ``dtype``."""
    family = "llava" if getattr(processor.config, "image_grid_pinpoints", None) is None else "llava_next"
    items = benchmark_items(family, processor.config.vision_config.image_size, batch_size, seed)
    batch = {key: value.to(device) for key, value in M3Collator(processor, MAX_LENGTH)(items).items()}
    batch["pixel_values"] = batch["pixel_values"].to(dtype)
    return batch


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


LOSSES = {"ours": loss_ours, "official": loss_official}


def train_step(model, batch: dict[str, torch.Tensor], scales: Sequence[int], design: str):
    """Forward + backward of one design (gradients are set to None first); returns its loss outputs."""
    model.zero_grad(set_to_none=True)
    loss, per_scale = LOSSES[design](model, batch, scales)
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
    dtype: str = "float32"

    @property
    def loss_diff(self) -> float:
        return abs(self.loss_ours - self.loss_official)


def check_designs_agree(model, batch, scales: Sequence[int], loss_atol: float = 1e-5) -> Agreement:
    """Run both designs once on the same batch and weights; raise if their losses (mean or any per-scale one)
    differ by more than ``loss_atol`` or they do not give gradients to the same parameters."""
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
        dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
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


@dataclass
class BenchResult:
    """Step times per design (``timings``, interleaved), peak CUDA memory, the agreement check and the setup."""

    timings: Timings
    peak_memory_gib: dict[str, float | None]
    agreement: Agreement
    setup: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """Median official step time / median ours (> 1: the one-pass design is faster)."""
        return self.timings.ratio("official", "ours")


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
    check_dtype: str | None = None,
    seed: int = 0,
) -> BenchResult:
    """Build the model and batch, check both designs agree (in ``check_dtype``, default ``dtype``: a float32
    check is exact where a bfloat16 one is only approximate), then time ``repeats`` interleaved steps each."""
    first_dtype = DTYPES[check_dtype or dtype]
    model, processor = benchmark_model(config_name, family, device, first_dtype, train_vision_tower, seed)
    batch = benchmark_batch(processor, batch_size, seed, device, first_dtype)
    agreement = check_designs_agree(model, batch, scales, loss_atol)
    if check_dtype is not None and check_dtype != dtype:
        model = model.to(DTYPES[dtype])
        batch["pixel_values"] = batch["pixel_values"].to(DTYPES[dtype])
    designs = {design: lambda _, d=design: train_step(model, batch, scales, d) for design in DESIGNS}
    timings = interleave(designs, repeats, warmup, sync=device_sync(device))
    peaks = {d: peak_memory_gib(lambda d=d: train_step(model, batch, scales, d), device) for d in DESIGNS}
    model.zero_grad(set_to_none=True)
    setup = dict(
        config=config_name,
        family=family,
        batch_size=batch_size,
        repeats=repeats,
        warmup=warmup,
        train_vision_tower=train_vision_tower,
        dtype=dtype,
        scales=list(scales),
        machine=machine(device),
        parameters=sum(p.numel() for p in model.parameters()),
        sequence_length_compact=int(batch["input_ids"].shape[1]),
    )
    return BenchResult(timings=timings, peak_memory_gib=peaks, agreement=agreement, setup=setup)


def format_report(result: BenchResult) -> str:
    """Markdown: setup line, agreement line, and a table of median / IQR per design and the ratio."""
    s, a, t = result.setup, result.agreement, result.timings
    lines = [
        f"config={s['config']} family={s['family']} params={s['parameters'] / 1e6:.2f}M batch={s['batch_size']} "
        f"scales={s['scales']} train_vision_tower={s['train_vision_tower']} dtype={s['dtype']}",
        f"machine: {s['machine']}; repeats={s['repeats']} (interleaved, after {s['warmup']} warm-up steps each)",
        f"check ({a.dtype}): loss ours={a.loss_ours:.6f} official={a.loss_official:.6f} |diff|={a.loss_diff:.2e}; "
        f"max |grad diff|={a.max_grad_diff:.2e} (max |grad|={a.max_grad_abs:.2e}, {a.num_grads} tensors)",
        "",
    ]
    with_memory = any(value is not None for value in result.peak_memory_gib.values())
    n = len(s["scales"])
    labels = {
        "ours": f"ours (1 vision pass, pooled {n} ways)",
        "official": f"official ({n} full forwards, 1 per scale)",
    }
    rows = [
        [label, f"{t.median(design):.4f}", f"{t.iqr(design):.4f}"]
        + ([f"{result.peak_memory_gib[design]:.2f}"] if with_memory else [])
        for design, label in labels.items()
    ]
    headers = ["design", "median step (s)", "IQR (s)"] + (["peak memory (GiB)"] if with_memory else [])
    lines += [
        markdown_table(headers, rows, "lrr" + ("r" if with_memory else "")),
        "",
        f"ratio official / ours (medians): **{result.ratio:.2f}x**",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=CONFIGS, default="tiny", help="tiny (CPU) or a random ~1B LLaVA (GPU)")
    parser.add_argument("--family", choices=MODEL_FAMILIES, default="llava")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per design, interleaved")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per design before timing")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--train-vision-tower", action="store_true", help="set config.m3_train_vision_tower=True")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    parser.add_argument("--check-dtype", choices=tuple(DTYPES), help="dtype of the agreement check (default: --dtype)")
    parser.add_argument("--scales", type=int, nargs="+", default=list(DEFAULT_SCALES))
    parser.add_argument("--loss-atol", type=float, default=1e-5, help="largest loss gap allowed between designs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = run_benchmark(
        config_name=args.config,
        family=args.family,
        batch_size=args.batch_size,
        repeats=args.repeats,
        warmup=args.warmup,
        train_vision_tower=args.train_vision_tower,
        device=args.device,
        dtype=args.dtype,
        scales=args.scales,
        loss_atol=args.loss_atol,
        check_dtype=args.check_dtype,
        seed=args.seed,
    )
    print(format_report(result))


if __name__ == "__main__":
    main()
