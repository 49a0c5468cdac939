"""Per-query latency of AdaptiveM3 against always answering at the largest scale and at the oracle's scale.

All three paths answer the same queries one at a time (batch 1, the interactive case), interleaved per query so
that machine load affects them alike:

- ``adaptive``: image -> one vision pass -> predictor (features + model) -> generate at the chosen scale;
- ``full``: image -> one vision pass -> generate at the largest scale (no predictor);
- ``oracle``: the same at the oracle's scale for that sample (needs an oracle build of the same samples).

The routing overhead is the predictor's share (features + model) of the adaptive path.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from m3.inference import compact_prompts, generate_at_scale

from .model import AdaptiveM3


@dataclass
class LatencyReport:
    """Seconds per query, per path; ``routing`` is the predictor's part of ``adaptive``."""

    seconds: dict[str, list[float]] = field(default_factory=dict)
    visual_tokens: dict[str, list[int]] = field(default_factory=dict)

    def add(self, path: str, seconds: float, tokens: int) -> None:
        self.seconds.setdefault(path, []).append(seconds)
        self.visual_tokens.setdefault(path, []).append(tokens)

    def median(self, path: str) -> float:
        return statistics.median(self.seconds[path])

    def table(self) -> str:
        lines = [
            "| path | queries | median ms / query | mean ms / query | mean visual tokens |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for path, values in self.seconds.items():
            tokens = self.visual_tokens[path]
            lines.append(
                f"| {path} | {len(values)} | {1e3 * statistics.median(values):.2f} | "
                f"{1e3 * statistics.fmean(values):.2f} | {statistics.fmean(tokens):.1f} |"
            )
        return "\n".join(lines)


def _answer_at(adaptive: AdaptiveM3, image, question: str, scale: int, max_new_tokens: int) -> int:
    """Vision pass + generate at ``scale`` without the predictor; returns the visual tokens used."""
    pil, grids, sizes = adaptive.encode([image])
    compact = compact_prompts(adaptive.processor, [question], sizes)
    output = generate_at_scale(adaptive.model, adaptive.processor, compact, grids, sizes, scale, max_new_tokens)
    return output.tokens[0]


def measure_latency(
    adaptive: AdaptiveM3,
    images: Sequence,
    questions: Sequence[str],
    oracle_scales: Sequence[int] | None = None,
    threshold: float | None = None,
    max_new_tokens: int = 4,
    warmup: int = 2,
) -> LatencyReport:
    """Time the adaptive, full-scale and (if ``oracle_scales``) oracle paths on every query, interleaved."""
    report = LatencyReport()
    full = max(adaptive.scales)
    for index, (image, question) in enumerate(zip(images, questions)):
        record = index >= warmup
        start = time.perf_counter()
        result = adaptive.generate(image, question, threshold=threshold, max_new_tokens=max_new_tokens)
        adaptive_seconds = time.perf_counter() - start

        pil, grids, _ = adaptive.encode([image])
        routing_start = time.perf_counter()
        adaptive.probabilities(pil, grids, [question])
        routing_seconds = time.perf_counter() - routing_start

        start = time.perf_counter()
        tokens = _answer_at(adaptive, image, question, full, max_new_tokens)
        full_seconds = time.perf_counter() - start
        if record:
            report.add("adaptive", adaptive_seconds, result.visual_tokens)
            report.add("routing (features + predictor)", routing_seconds, 0)
            report.add(f"always {full}", full_seconds, tokens)
        if oracle_scales is not None:
            start = time.perf_counter()
            tokens = _answer_at(adaptive, image, question, int(oracle_scales[index]), max_new_tokens)
            if record:
                report.add("oracle scale", time.perf_counter() - start, tokens)
    return report
