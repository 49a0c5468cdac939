"""Speed-up of 2 processes over 1 for training steps and oracle builds, launched as users launch them.

Four designs run interleaved (``timing.interleave``), each a fresh launch of the repository's scripts:

* ``train, 1 process``: ``python scripts/train_m3.py`` with ``--gradient_accumulation_steps N`` (N = the number of
  processes), so that an optimizer step sees the same global batch as ...
* ``train, N processes``: ``torchrun --nproc_per_node N scripts/train_m3.py`` (batch per process unchanged);
* ``oracle, 1 process`` and ``oracle, N processes``: ``scripts/build_oracle.py`` on the same data and model.

Figures are what the scripts record, so interpreter start and imports are left out: seconds per optimizer step
from ``train_summary.json`` (its history's wall time, after ``--warmup-steps`` steps), and the oracle manifest's
build ``seconds`` (the whole ``build_oracle`` call, model loading included). The launch wall times are shown too.
Before timing means anything, the designs must compute the same thing: the report gives the largest parameter
difference between the last round's 1- and N-process models and whether their oracle tables are equal.

On CPU (``--device cpu``) the processes are joined over gloo with ``ACCELERATE_USE_CPU=true``, one thread each;
with ``--device cuda`` each process gets a GPU, so the same command gives the multi-GPU figure.

Example:
    python benchmarks/distributed.py --repeats 3
    python benchmarks/distributed.py --device cuda --hidden-size 512 --model checkpoints/tiny-m3
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from timing import Timings, interleave, machine

from m3.data.granularity import VOCABULARY, write_split
from m3.markdown import markdown_table
from m3.processing import M3Processor
from m3.tiny import build_tiny_tokenizer, tiny_image_processor, tiny_model
from oracle_data import compare_oracles, load_oracle, read_manifest

REPO = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = REPO / "scripts" / "train_m3.py"
ORACLE_SCRIPT = REPO / "scripts" / "build_oracle.py"
TASKS = ("train", "oracle")


def design_name(task: str, processes: int) -> str:
    return f"{task}, {processes} process{'es' if processes > 1 else ''}"


@dataclass
class DistributedBenchResult:
    """Launch wall times (``launches``) and the recorded figures (``recorded``: seconds per training step, seconds
    per oracle build) per design, the agreement checks and the setup."""

    launches: Timings
    recorded: Timings
    processes: int
    max_parameter_difference: float
    oracle_rows: int
    oracle_differing: list[str]
    oracle_float_difference: float
    setup: dict = field(default_factory=dict)

    def speedup(self, task: str) -> float:
        """Median 1-process figure over median N-process figure (the same run): above 1, N processes are faster."""
        return self.recorded.ratio(design_name(task, 1), design_name(task, self.processes))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_env(device: str, threads: int) -> dict[str, str]:
    """This checkout first on the path; on CPU, processes joined by accelerate over gloo with ``threads`` each."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    env.pop("ACCELERATE_USE_CPU", None)
    if device == "cpu":
        env.update(ACCELERATE_USE_CPU="true", OMP_NUM_THREADS=str(threads))
    return env


def launch(script: Path, args: list[str], processes: int, env: dict[str, str]) -> None:
    """``python script ...`` for one process, ``torchrun --nproc_per_node N script ...`` (a free port) for more."""
    if processes == 1:
        command = [sys.executable, str(script), *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                   "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(script), *args]  # fmt: skip
    result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:6])} ... failed ({result.returncode}):\n{result.stderr[-3000:]}")


def seconds_per_step(output_dir: Path, warmup_steps: int) -> float:
    """Mean wall time of the optimizer steps after the first ``warmup_steps`` (from the run's logged history)."""
    history = json.loads((output_dir / "train_summary.json").read_text())["history"]
    seconds = {row["step"]: row["seconds"] for row in history if "seconds" in row}
    last = max(seconds)
    if last <= warmup_steps:
        raise ValueError(f"{last} steps logged: need more than --warmup-steps ({warmup_steps})")
    return (seconds[last] - seconds.get(warmup_steps, 0.0)) / (last - warmup_steps)


def max_parameter_difference(first: Path, second: Path) -> float:
    a, b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    if a.keys() != b.keys():
        raise RuntimeError(f"{first} and {second} hold different parameters")
    return max((a[name] - b[name]).abs().max().item() for name in a)


def run_distributed_benchmark(
    processes: int = 2,
    device: str = "cpu",
    threads: int = 1,
    train_images: int = 16,
    steps: int = 12,
    warmup_steps: int = 2,
    batch_size: int = 4,
    hidden_size: int = 64,
    oracle_images: int = 16,
    oracle_batch_size: int = 8,
    max_new_tokens: int = 8,
    model_dir: str | Path | None = None,
    repeats: int = 3,
    warmup: int = 0,
    seed: int = 0,
    work_dir: str | Path | None = None,
) -> DistributedBenchResult:
    """Write the data (and a tiny random model unless ``model_dir``), then launch the four designs ``repeats``
    times each, interleaved; every launch writes into a fresh folder, all removed at the end."""
    if processes < 2:
        raise ValueError(f"processes must be >= 2 (compared with 1), got {processes}")
    if steps <= warmup_steps:
        raise ValueError(f"steps ({steps}) must exceed warmup_steps ({warmup_steps})")
    env = launch_env(device, threads)
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        tmp = Path(tmp)
        train_data = write_split(tmp / "data", "train", train_images, seed)
        oracle_data = write_split(tmp / "data", "validation", oracle_images, seed)
        if model_dir is None:
            tokenizer = build_tiny_tokenizer(extra_words=VOCABULARY)
            model = tiny_model("llava", seed=seed, tokenizer=tokenizer, hidden_size=hidden_size)
            model_dir = tmp / "model"
            model.save_pretrained(model_dir)
            M3Processor(tiny_image_processor("llava"), tokenizer, model.config).save_pretrained(model_dir)
            oracle_model = f"tiny llava, hidden_size={hidden_size}"
        else:
            oracle_model = str(model_dir)
        last: dict[str, Path] = {}

        def train(count: int, index: int) -> float:
            out = tmp / f"train-{count}-{index}"
            flags = dict(output_dir=out, data_path=train_data, generate_data=False, eval_steps=0, seed=seed,
                         tiny_hidden_size=hidden_size, batch_size=batch_size, max_steps=steps, warmup_ratio=0.0,
                         gradient_accumulation_steps=processes // count, logging_steps=1, save_steps=0,
                         num_threads=threads)  # fmt: skip
            launch(TRAIN_SCRIPT, [part for k, v in flags.items() for part in (f"--{k}", str(v))], count, env)
            last[design_name("train", count)] = out
            return seconds_per_step(out, warmup_steps)

        def oracle(count: int, index: int) -> float:
            out = tmp / f"oracle-{count}-{index}"
            flags = ["--model", str(model_dir), "--data", str(oracle_data), "--out", str(out), "--batch-size",
                     str(oracle_batch_size), "--shard-size", str(oracle_batch_size), "--max-new-tokens",
                     str(max_new_tokens), "--threads", str(threads), "--no-progress"]  # fmt: skip
            launch(ORACLE_SCRIPT, flags, count, env)
            last[design_name("oracle", count)] = out
            return float(read_manifest(out)["build"]["seconds"])

        tasks = {"train": train, "oracle": oracle}
        designs = {
            design_name(task, count): (lambda index, run=tasks[task], count=count: run(count, index))
            for task in TASKS
            for count in (1, processes)
        }
        launches = interleave(designs, repeats, warmup=warmup)
        recorded = Timings()
        for name, figures in launches.outputs.items():
            for figure in figures:
                recorded.add(name, figure)
        differing, float_difference = compare_oracles(
            last[design_name("oracle", 1)], last[design_name("oracle", processes)]
        )
        rows = load_oracle(last[design_name("oracle", 1)]).num_rows
        difference = max_parameter_difference(last[design_name("train", 1)], last[design_name("train", processes)])
    setup = dict(
        training=f"tiny llava, hidden_size={hidden_size}, granularity train split of {train_images} images; "
        f"{steps} steps ({warmup_steps} untimed), batch {batch_size} per process, global batch "
        f"{batch_size * processes} (1 process: {processes} accumulation steps)",
        oracle=f"{oracle_model}; granularity validation split of {oracle_images} images = {rows} questions; "
        f"batch {oracle_batch_size}, shards of {oracle_batch_size}, max_new_tokens {max_new_tokens}",
        machine=f"{machine(device)}; {threads} thread(s) per process"
        + (f"; load average {os.getloadavg()[0]:.1f} at the end" if hasattr(os, "getloadavg") else ""),
        repeats=repeats,
        device=device,
    )
    return DistributedBenchResult(
        launches=launches,
        recorded=recorded,
        processes=processes,
        max_parameter_difference=difference,
        oracle_rows=rows,
        oracle_differing=differing,
        oracle_float_difference=float_difference,
        setup=setup,
    )


def format_report(result: DistributedBenchResult) -> str:
    s, n = result.setup, result.processes
    units = {"train": "s per step", "oracle": "s per build"}
    lines = [
        f"training: {s['training']}",
        f"oracle build: {s['oracle']}",
        f"machine: {s['machine']}; {s['repeats']} interleaved repeats per design (medians)",
        f"check, 1 process vs {n}: largest parameter difference {result.max_parameter_difference:.3g} (1 process with "
        f"accumulation); oracle: {result.oracle_rows} rows, {len(result.oracle_differing)} cells differ outside "
        f"floats{' (' + ', '.join(result.oracle_differing[:3]) + ')' if result.oracle_differing else ''}, largest "
        f"float difference {result.oracle_float_difference:.3g}",
        "",
    ]
    rows = []
    for task in TASKS:
        for count in (1, n):
            name = design_name(task, count)
            runs = ", ".join(f"{value:.3f}" for value in result.recorded.seconds[name])
            rows.append(
                [
                    name, f"{result.recorded.median(name):.3f} {units[task]}", f"{result.recorded.iqr(name):.3f}",
                    f"{result.launches.median(name):.1f}", runs,
                ]
            )  # fmt: skip
    headers = ["design", "recorded median", "IQR", "launch wall median (s)", "recorded runs"]
    lines += [
        markdown_table(headers, rows, "lrrrl"),
        "",
        f"speed-up with {n} processes (1-process median / {n}-process median): training steps "
        f"{result.speedup('train'):.2f}x, oracle build {result.speedup('oracle'):.2f}x",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=2, help="processes of the many-process designs")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: one GPU per process")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--train-images", type=int, default=16, help="granularity images in the training split")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per training run")
    parser.add_argument("--warmup-steps", type=int, default=2, help="first steps of each run left out of its figure")
    parser.add_argument("--batch-size", type=int, default=4, help="training batch per process")
    parser.add_argument("--hidden-size", type=int, default=64, help="tiny model width (training, and the oracle's)")
    parser.add_argument("--oracle-images", type=int, default=16, help="granularity images of the oracle build")
    parser.add_argument("--oracle-batch-size", type=int, default=8, help="oracle batch and shard size")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="cap on the oracle's generated tokens")
    parser.add_argument("--model", help="a saved M3 model for the oracle build instead of a random tiny one")
    parser.add_argument("--repeats", type=int, default=3, help="launches per design, interleaved")
    parser.add_argument("--warmup", type=int, default=0, help="untimed rounds of launches first")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.device == "cuda" and torch.cuda.device_count() < args.processes:
        parser.error(f"--device cuda needs {args.processes} GPUs, this machine has {torch.cuda.device_count()}")
    torch.set_num_threads(args.threads)
    result = run_distributed_benchmark(
        processes=args.processes,
        device=args.device,
        threads=args.threads,
        train_images=args.train_images,
        steps=args.steps,
        warmup_steps=args.warmup_steps,
        batch_size=args.batch_size,
        hidden_size=args.hidden_size,
        oracle_images=args.oracle_images,
        oracle_batch_size=args.oracle_batch_size,
        max_new_tokens=args.max_new_tokens,
        model_dir=args.model,
        repeats=args.repeats,
        warmup=args.warmup,
        seed=args.seed,
    )
    print(format_report(result))


if __name__ == "__main__":
    main()
