"""GPU check: the figures a CPU cannot give, in one prepared run (a few minutes on one H200-class GPU).

    python benchmarks/gpu_check.py                      # on a CUDA machine; refuses (exit 2) without one
    python benchmarks/gpu_check.py --device cpu --tiny  # dry run: every section end to end on tiny models

Sections (each reports its own error and the others still run; exit 1 if any failed):

a. training step: one 5-scale step, ours (one vision pass, pooled 5 ways) against the official design (vision tower
   re-run per scale) at the random-weight ~1B config in bf16 (``train_step.py``), after checking in float32 that
   the two give the same losses and gradients;
b. prefill: latency and peak memory (``torch.cuda.max_memory_allocated``, weights included) at every scale for a
   LLaVA-1.5-7B-shaped random-weight model in bf16 (``m3.flops.llava_15_config("7b")``, no download), next to
   ``m3.flops.estimate_prefill``'s FLOPs;
c. routing share: AdaptiveM3 on that model with an ``MLPScalePredictor`` fitted on a synthetic oracle of the 7B
   embedding size (``adaptive_latency.py``): the predictor's time (features + forward) as a share of one
   576-token prefill + short generate.

Every model has random weights: the figures are speed and memory, not quality. The dry run times in float32 (the
CPU's bf16 kernels are slow); its figures only show that every section runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SCALES = (1, 9, 36, 144, 576)
QUESTION = "what color is the small square in the top left of the image ?"
NO_GPU = (
    "gpu_check: no CUDA device (torch.cuda.is_available() is False); run it on a GPU machine, "
    "or pass --device cpu --tiny for a dry run"
)


def say(text: str = "") -> None:
    print(text, flush=True)  # flushed: a run cut short by a time limit still shows what it measured


# ----------------------------------------------------------------------------------------------------
# a. the training step


def timing_dtype(device: str) -> str:
    """bf16 on the GPU (what the figures are for); float32 in the CPU dry run, whose bf16 kernels are slow."""
    return "bfloat16" if device == "cuda" else "float32"


def section_train_step(device: str, tiny: bool) -> None:
    from train_step import format_report, run_benchmark

    result = run_benchmark(
        config_name="tiny" if tiny else "1b",
        family="llava",
        batch_size=2 if tiny else 4,
        repeats=1 if tiny else 5,
        warmup=0 if tiny else 2,
        device=device,
        dtype=timing_dtype(device),
        check_dtype="float32",
        loss_atol=1e-5 if tiny else 1e-3,
    )
    say(format_report(result))


# ----------------------------------------------------------------------------------------------------
# b. prefill at every scale of a LLaVA-1.5-7B-shaped model


def llava_7b_shaped(device: str, dtype: torch.dtype, tiny: bool):
    """``(model, processor)``: LLaVA-1.5-7B's shapes with random weights, eval mode. ``tiny``: the same construction
    with two tiny layers per tower (vocabulary and 24x24 grid kept), for the dry run.

    The word-level tiny tokenizer stands in for Vicuna's: it gives the special ids, and prompts only need to hold
    the right number of tokens."""
    from train_step import image_processor_336
    from transformers import CLIPVisionConfig, LlamaConfig

    from m3.flops import llava_15_config
    from m3.modeling import M3LlavaForConditionalGeneration
    from m3.processing import IMAGE_PLACEHOLDER, M3Processor
    from m3.tiny import build_tiny_tokenizer, tiny_image_processor

    tokenizer = build_tiny_tokenizer()
    image_token = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    config = llava_15_config("7b", image_token_index=image_token, image_seq_length=576)
    if tiny:
        layers = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
        config.text_config = LlamaConfig(**layers, num_key_value_heads=4, vocab_size=config.text_config.vocab_size)
        config.vision_config = CLIPVisionConfig(**layers, image_size=96, patch_size=4)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(config.text_config, name, getattr(tokenizer, name))
    torch.manual_seed(0)
    with torch.device(device):  # initialised on the GPU: no 28 GB float32 copy on the host
        model = M3LlavaForConditionalGeneration(config)
    model = model.to(dtype=dtype).eval()
    model.generation_config.max_new_tokens = None  # set per call
    image_processor = tiny_image_processor("llava") if tiny else image_processor_336("llava")
    return model, M3Processor(image_processor, tokenizer, model.config)


def random_images(count: int, size: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(count)]


def section_prefill(model, processor, device: str, tiny: bool) -> None:
    from PIL import Image
    from timing import device_sync, interleave, machine, peak_memory_gib

    from m3.flops import estimate_prefill
    from m3.markdown import markdown_table
    from m3.processing import llava_prompt

    image = Image.fromarray(random_images(1, model.config.vision_config.image_size)[0])
    inputs = {}
    for scale in SCALES:
        batch = processor(llava_prompt(QUESTION), image, m3_scale=scale).to(device)
        batch["pixel_values"] = batch["pixel_values"].to(model.dtype)
        inputs[scale] = batch

    def prefill(scale: int) -> None:
        with torch.inference_mode():  # vision tower + projector + pooling + LLM over the prompt, last logits only
            model(**inputs[scale], m3_scale=scale, logits_to_keep=1)  # the output (KV cache) is not kept

    designs = {str(s): lambda _, s=s: prefill(s) for s in SCALES}
    timings = interleave(designs, 2 if tiny else 10, 1 if tiny else 3, sync=device_sync(device))
    # resident: the weights and the prepared inputs, allocated before any prefill runs
    resident = torch.cuda.memory_allocated(device) / 2**30 if torch.device(device).type == "cuda" else None
    peaks = {s: peak_memory_gib(lambda s=s: prefill(s), device) for s in SCALES}
    parameters = sum(p.numel() for p in model.parameters())
    shape = "tiny LLaVA" if tiny else "LLaVA-1.5-7B-shaped"
    say(f"model: {shape}, random weights, {parameters:,} parameters, "
        f"{str(model.dtype).removeprefix('torch.')}; machine: {machine(device)}")  # fmt: skip
    say(f"batch 1, one {image.width} px image, prompt {QUESTION!r}; {len(timings.seconds['1'])} interleaved "
        "repeats per scale (medians)")  # fmt: skip
    say()
    rows = []
    for scale in SCALES:
        prompt_tokens = int(inputs[scale]["input_ids"].shape[1])
        cost = estimate_prefill(model.config, scale, text_tokens=prompt_tokens - scale)
        median, iqr = timings.median(str(scale)), timings.iqr(str(scale))
        peak = "n/a" if peaks[scale] is None else f"{peaks[scale]:.2f}"
        above = "n/a" if peaks[scale] is None else f"{peaks[scale] - resident:.3f}"
        rows.append([scale, prompt_tokens, f"{1e3 * median:.2f}", f"{1e3 * iqr:.2f}", peak, above,
                     f"{cost.llm_flops / 1e12:.3f}", f"{cost.total_flops / 1e12:.3f}",
                     f"{cost.total_flops / median / 1e12:.1f}", f"{cost.kv_cache_bytes / 2**20:.1f}"])  # fmt: skip
    headers = ["scale", "prompt tokens", "median prefill (ms)", "IQR (ms)", "peak memory (GiB)", "above resident (GiB)",
               "est. LLM TFLOPs", "est. total TFLOPs", "achieved TFLOP/s", "est. KV cache (MiB)"]  # fmt: skip
    say(markdown_table(headers, rows, "r" * 10))
    flops = {s: estimate_prefill(model.config, s).total_flops for s in (1, 576)}
    say(f"\nprefill 576 / 1 (medians): {timings.ratio('576', '1'):.2f}x; estimated total FLOPs 576 / 1: "
        f"{flops[576] / flops[1]:.2f}x")  # fmt: skip


# ----------------------------------------------------------------------------------------------------
# c. AdaptiveM3's routing share at that size


def section_routing(model, processor, tiny: bool) -> None:
    from adaptive_latency import format_summary, format_table, measure_latency
    from timing import machine

    from adaptive import AdaptiveM3
    from oracle_data.synthetic import QUESTIONS, write_synthetic_oracle
    from predictor import MLPScalePredictor

    hidden = model.config.text_config.hidden_size
    with tempfile.TemporaryDirectory() as tmp:
        oracle = write_synthetic_oracle(tmp, num_images=40, embedding_dim=hidden, scales=SCALES)
        predictor = MLPScalePredictor(hidden_sizes=(64,), max_epochs=3, use_image=True).fit(oracle)
    adaptive = AdaptiveM3(model, processor, predictor)
    queries = 4 if tiny else 12
    warmup = 1 if tiny else 2
    images = random_images(queries, model.config.vision_config.image_size, seed=1)
    questions = [list(QUESTIONS.values())[i % len(QUESTIONS)] for i in range(queries)]
    max_new_tokens = 8
    timings = measure_latency(adaptive, images, questions, max_new_tokens=max_new_tokens, warmup=warmup)
    say(f"predictor: MLPScalePredictor(hidden_sizes=(64,), use_image=True) fitted on a synthetic oracle "
        f"(embedding size {hidden}), on the CPU; answers: greedy, max_new_tokens={max_new_tokens}")  # fmt: skip
    say(f"{queries} queries, batch 1, first {warmup} warm-up; machine: {machine(model.device)}")
    say()
    say(format_table(timings))
    say(format_summary(timings, max(adaptive.scales)))


# ----------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny models instead of the ~1B and 7B-shaped ones")
    parser.add_argument("--sections", default="abc", help="which sections to run (default: abc)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(NO_GPU, file=sys.stderr)
        return 2
    if args.device == "cpu" and not args.tiny:
        parser.error("the full-size sections need a GPU; on the CPU pass --tiny (a dry run)")
    if str(REPO) not in sys.path:  # this checkout's library, whether or not (or wherever) it is installed
        sys.path.insert(1, str(REPO))
    if args.device == "cpu":
        torch.set_num_threads(1)
    failed = []
    start = time.perf_counter()

    def run(label: str, section, *section_args) -> None:
        say(f"\n## {label}\n")
        began = time.perf_counter()
        try:
            section(*section_args)
        except Exception:  # report and go on: one failed section must not cost the others' figures
            failed.append(label)
            say(f"FAILED:\n{traceback.format_exc()}")
        say(f"\n({time.perf_counter() - began:.1f} s)")

    if "a" in args.sections:
        run("a. training step, ours vs official", section_train_step, args.device, args.tiny)
        if args.device == "cuda":
            torch.cuda.empty_cache()
    if "b" in args.sections or "c" in args.sections:
        built = []

        def build() -> None:
            dtype = timing_dtype(args.device)
            built.extend(llava_7b_shaped(args.device, getattr(torch, dtype), args.tiny))
            say(f"{sum(p.numel() for p in built[0].parameters()):,} parameters, {dtype}, {args.device}")

        run(f"the {'tiny' if args.tiny else 'LLaVA-1.5-7B-shaped'} model for b and c", build)
        if built and "b" in args.sections:
            run("b. prefill latency and memory per scale", section_prefill, *built, args.device, args.tiny)
        if built and "c" in args.sections:
            run("c. AdaptiveM3 routing share", section_routing, *built, args.tiny)
    say(f"\ntotal {time.perf_counter() - start:.1f} s; " + (f"FAILED: {', '.join(failed)}" if failed else "all passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
