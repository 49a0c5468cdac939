"""The one timing helper every benchmark uses: interleaved rounds, warm-ups, medians, quartiles, ratios in one run.

:func:`interleave` runs the designs in turn within each round (A, B, A, B, ...), so that machine load, caches and
clock drift weigh on all of them alike; ratios are taken between medians of the SAME run, never across runs. Each
design is called with the round index, so designs can walk a list of inputs together (in a round every design
sees the same input, and they run in the order given, so one may hand its result to the next).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

Design = Callable[[int], object]


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """(25th percentile, median, 75th percentile), linear interpolation (numpy's default)."""
    if len(values) == 0:
        raise ValueError("no values to take quartiles of")
    q25, q50, q75 = np.percentile(np.asarray(values, dtype=float), [25, 50, 75])
    return float(q25), float(q50), float(q75)


@dataclass
class Timings:
    """Seconds per design in run order (warm-ups left out) and what each timed call returned."""

    seconds: dict[str, list[float]] = field(default_factory=dict)
    outputs: dict[str, list] = field(default_factory=dict)

    def add(self, name: str, seconds: float, output: object = None) -> None:
        self.seconds.setdefault(name, []).append(float(seconds))
        self.outputs.setdefault(name, []).append(output)

    def quartiles(self, name: str) -> tuple[float, float, float]:
        return quartiles(self.seconds[name])

    def median(self, name: str) -> float:
        return self.quartiles(name)[1]

    def iqr(self, name: str) -> float:
        """Interquartile range: the spread a ratio of medians should be read against."""
        q25, _, q75 = self.quartiles(name)
        return q75 - q25

    def ratio(self, name: str, baseline: str) -> float:
        """Median of ``name`` over median of ``baseline`` (both from this run)."""
        return self.median(name) / self.median(baseline)

    def per_round_sum(self, names: Iterable[str]) -> list[float]:
        """Seconds of several designs added round by round (e.g. the steps of one pipeline timed apart)."""
        columns = [self.seconds[name] for name in names]
        if not columns or len({len(column) for column in columns}) != 1:
            raise ValueError("per_round_sum needs designs timed in the same rounds")
        return [float(sum(row)) for row in zip(*columns)]


def interleave(
    designs: Mapping[str, Design],
    repeats: int,
    warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
    sync: Callable[[], None] | None = None,
) -> Timings:
    """Run ``warmup`` untimed rounds, then ``repeats`` timed ones; in each round every design once, in order.

    A design is called as ``design(index)`` with the round index (warm-up rounds first: 0 .. warmup-1, then the
    timed ones). ``sync`` (e.g. ``torch.cuda.synchronize``) runs before starting and before stopping the clock,
    so that asynchronous device work is counted where it was launched."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if not designs:
        raise ValueError("no designs to time")
    timings = Timings()
    for index in range(warmup + repeats):
        for name, design in designs.items():
            if sync is not None:
                sync()
            start = clock()
            output = design(index)
            if sync is not None:
                sync()
            seconds = clock() - start
            if index >= warmup:
                timings.add(name, seconds, output)
    return timings


def device_sync(device: str | torch.device) -> Callable[[], None] | None:
    """``torch.cuda.synchronize`` for a CUDA device (kernels run asynchronously), None on the CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return lambda: torch.cuda.synchronize(device)


def peak_memory_gib(run: Callable[[], object], device: str | torch.device) -> float | None:
    """Peak CUDA memory allocated (GiB, weights included) during one untimed call of ``run``; None off CUDA."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    run()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**30


def machine(device: str | torch.device = "cpu") -> str:
    """Where a figure came from (device, cores, threads, torch): benchmark output must say so to be comparable."""
    device = torch.device(device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    return f"{where}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}"
