"""Cost of routing one query against the cost of answering it: predictor features + forward vs one ``generate``.

Per query (batch size 1, as a server routes them), over ``repeats`` rounds of the queries, two ways: interleaved
(route a query, answer it, next query: routing runs on caches the answer just flushed) and each in its own loop
(all routing calls, then all answers: steady state for both). Timed apart, in this order per query:

* ``image decode``: opening the image file, reported only (answering decodes it too, see ``generate``);
* ``image features``: :func:`predictor.image_features` on the decoded image;
* per predictor, ``features``: ``feature_builder_.transform`` (question statistics, TF-IDF, standardisation) given
  the image features and the scale-1 embedding, and ``forward``: ``predict_proba_from_features`` and the threshold
  rule (``predictor.route_by_threshold``);
* ``generate``: the oracle's own answer path at the largest scale: ``oracle_data.generation.encode_batch`` (image
  decode, vision tower, compact prompt) and ``m3.inference.generate_at_scale`` with the oracle's
  ``max_new_tokens`` (stops at EOS).
* probe predictors (``probe_scale_`` set) also pay their probe, timed in two steps: ``probe vision`` (the
  vision pass, shared with the answer in ``AdaptiveM3``, so reported but not counted in routing) and ``probe at
  scale p`` (the LLM answering at the probe scale with its hidden state, counted); their features use that probe's
  real confidence and hidden state. When the router then picks the probe scale, the probe's answer is the answer.

The scale-1 embedding is taken from the oracle row: in an adaptive model it is the mean of the projected grid that
the vision pass computes anyway (and that the chosen scale's ``generate`` reuses), so it adds no model cost.

Example:
    python benchmarks/router_cost.py --model runs/tiny-m3 --oracle runs/oracle-test \\
        --predictor runs/router/predictors/mlp --predictor runs/router/predictors/lgbm
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from timing import Timings, interleave, machine, quartiles

from m3.inference import generate_at_scale
from m3.loading import load_m3_model
from m3.markdown import markdown_table
from m3.processing import M3Processor
from oracle_data.datasets import load_samples
from oracle_data.generation import encode_batch, load_image
from predictor import Queries, ScalePredictor, as_oracle_set, image_features, load_predictor, route_by_threshold
from predictor.costs import probe_scale_of


@dataclass
class RouterBenchResult:
    """Seconds per query and step, interleaved (``timings``) and each in its own loop (``own_loop``)."""

    timings: Timings
    own_loop: Timings
    setup: dict = field(default_factory=dict)

    def routing_seconds(self, name: str, own_loop: bool = False) -> float:
        """Median per-query routing cost of predictor ``name``: its image features (if used), its probe's LLM pass
        (probe predictors), features, forward."""
        if own_loop:
            return self.own_loop.median(f"{name} routing")
        steps = [f"{name} features", f"{name} forward"]
        if self.setup["probes"].get(name) is not None:
            steps.insert(0, f"probe at scale {self.setup['probes'][name]}")
        if self.setup["uses_image"][name]:
            steps.insert(0, "image features")
        return quartiles(self.timings.per_round_sum(steps))[1]

    def generate_seconds(self, own_loop: bool = False) -> float:
        return self.own_loop.median("generate") if own_loop else self.timings.median("generate")

    def ratio(self, name: str, own_loop: bool = False) -> float:
        """Routing cost over the cost of one generate, both measured the same way (interleaved or own loop)."""
        return self.routing_seconds(name, own_loop) / self.generate_seconds(own_loop)


def bench_router(
    model_dir: str | os.PathLike,
    oracle,
    predictors: dict[str, ScalePredictor | str | os.PathLike],
    num_queries: int = 32,
    repeats: int = 3,
) -> RouterBenchResult:
    """Time routing and answering for the first ``num_queries`` samples of the ``oracle`` folder."""
    if num_queries < 1 or repeats < 1:
        raise ValueError(f"num_queries and repeats must be >= 1, got {num_queries} and {repeats}")
    data = as_oracle_set(oracle)
    if data.manifest is None:
        raise ValueError("bench_router needs an oracle folder (its manifest names the data file and settings)")
    loaded = {
        name: p if isinstance(p, ScalePredictor) else load_predictor(p, oracle_data=data, model_config=model_dir)
        for name, p in predictors.items()
    }
    spec = data.manifest["data"]
    metric = data.manifest["metric"]
    samples = load_samples(spec["path"], spec["image_root"], spec["format"], metric, check_images=False)
    by_id = {sample.sample_id: sample for sample in samples.samples}
    rows = data.take(np.arange(min(num_queries, len(data))))
    queries = [by_id[sample_id] for sample_id in rows.column("sample_id")]
    embeddings = rows.embeddings()
    model = load_m3_model(model_dir).eval()
    processor = M3Processor.from_pretrained(model_dir, config=model.config)
    scale = data.scales[-1]
    max_new_tokens = int(data.manifest["settings"]["max_new_tokens"])
    n = len(queries)

    def answer(index: int):
        compact, grids, sizes = encode_batch(model, processor, [queries[index]])
        return generate_at_scale(model, processor, compact, grids, sizes, scale, max_new_tokens)

    probes = {name: probe_scale_of(p) for name, p in loaded.items()}

    def probe_answer(encoded, probe_scale: int):
        compact, grids, sizes = encoded
        return generate_at_scale(
            model, processor, compact, grids, sizes, probe_scale, max_new_tokens, return_hidden=True
        )

    def queries_of(index: int, features: np.ndarray | None, probe=None) -> Queries:
        batch_features = None if features is None else features[None]
        queries_ = Queries([queries[index].question], embeddings[index : index + 1], image_features=batch_features)
        if probe is not None:
            queries_.probe_confidence, queries_.probe_hidden = np.asarray(probe.confidences), probe.hidden
        return queries_

    # interleaved: the steps of one query in order, each handing its result to the next through ``state``
    state: dict = {}

    def decode(r: int) -> None:
        state["image"] = load_image(queries[r % n])

    def describe(r: int) -> None:
        state["image features"] = image_features(state["image"])

    def features_step(name: str, p: ScalePredictor):
        def step(r: int) -> None:
            probe = None if probes[name] is None else state[f"probe at scale {probes[name]}"]
            state[name] = p.feature_builder_.transform(queries_of(r % n, state["image features"], probe))

        return step

    def probe_vision(r: int) -> None:
        state["probe vision"] = encode_batch(model, processor, [queries[r % n]])

    def probe_step(probe_scale: int):
        def step(r: int) -> None:
            state[f"probe at scale {probe_scale}"] = probe_answer(state["probe vision"], probe_scale)

        return step

    def forward_step(name: str, p: ScalePredictor):
        return lambda r: route_by_threshold(p.predict_proba_from_features(state[name]), p.scales_, p.threshold_)

    designs = {"image decode": decode, "image features": describe}
    if any(value is not None for value in probes.values()):
        designs["probe vision"] = probe_vision
    for probe_scale in sorted({value for value in probes.values() if value is not None}):
        designs[f"probe at scale {probe_scale}"] = probe_step(probe_scale)
    for name, p in loaded.items():
        designs[f"{name} features"] = features_step(name, p)
        designs[f"{name} forward"] = forward_step(name, p)
    designs["generate"] = lambda r: answer(r % n)

    def route(p: ScalePredictor, index: int, image, encoded) -> np.ndarray:
        """The whole routing of one query from its decoded image (and vision pass), as a server runs it."""
        features = image_features(image) if p.feature_builder_.use_image else None
        probe = None if probe_scale_of(p) is None else probe_answer(encoded, probe_scale_of(p))
        proba = p.predict_proba_from_features(p.feature_builder_.transform(queries_of(index, features, probe)))
        return route_by_threshold(proba, p.scales_, p.threshold_)

    with torch.inference_mode():
        timings = interleave(designs, repeats * n, warmup=1)
        images = [load_image(sample) for sample in queries]
        encoded = [encode_batch(model, processor, [sample]) for sample in queries]
        own_loop = Timings()
        for name, p in loaded.items():
            alone = interleave(
                {f"{name} routing": lambda r, p=p: route(p, r % n, images[r % n], encoded[r % n])}, repeats * n
            )
            own_loop.seconds.update(alone.seconds)
        own_loop.seconds.update(interleave({"generate": lambda r: answer(r % n)}, repeats * n).seconds)
    parameters = sum(p.numel() for p in model.parameters()) / 1e6
    setup = {
        "model": f"{model_dir} ({model.config.model_type}, {parameters:.2f}M parameters)",
        "oracle": data.source,
        "queries": n,
        "repeats": repeats,
        "scale": scale,
        "max_new_tokens": max_new_tokens,
        "machine": machine(),
        "uses_image": {name: p.feature_builder_.use_image for name, p in loaded.items()},
        "probes": probes,
        "kinds": {name: f"{type(p).__name__}(target={p.target!r})" for name, p in loaded.items()},
    }
    return RouterBenchResult(timings, own_loop, setup)


def format_bench(result: RouterBenchResult, goal: float = 0.02) -> str:
    """Setup, median per-query times and each predictor's routing / generate ratio against ``goal``."""
    s, t = result.setup, result.timings
    lines = [
        f"model {s['model']}; {s['queries']} queries from {s['oracle']} x {s['repeats']} repeats, batch 1",
        f"generate at scale {s['scale']} with max_new_tokens {s['max_new_tokens']} (stops at EOS); machine: "
        f"{s['machine']}; medians per query",
        "",
    ]
    steps = {
        "image decode": "image decode (answering decodes it too; not counted in routing)",
        "image features": "image features",
    }
    if "probe vision" in t.seconds:
        steps["probe vision"] = "probe: vision pass (shared with the answer; not counted in routing)"
    for key in t.seconds:
        if key.startswith("probe at scale"):
            steps[key] = f"{key}: the LLM's answer there, with its hidden state (counted in probe routing)"
    for name in s["kinds"]:
        steps[f"{name} features"] = f"{name}: features (question, TF-IDF, standardise)"
        steps[f"{name} forward"] = f"{name}: forward + threshold rule"
    steps["generate"] = f"one generate at scale {s['scale']} (image decode + vision + LLM)"
    times = [[label, f"{1e3 * t.median(key):.3f}", f"{1e3 * t.iqr(key):.3f}"] for key, label in steps.items()]
    lines += [
        markdown_table(["step", "median (ms)", "IQR (ms)"], times, "lrr"),
        "",
        "Routing per query against one generate, measured two ways: interleaved (route, answer, next query: the "
        "routing runs on caches the generate just flushed) and each in its own loop (steady state for both).",
        "",
    ]
    rows = []
    for name, kind in s["kinds"].items():
        image = "incl. image features" if s["uses_image"][name] else "no image features"
        if s["probes"].get(name) is not None:
            image += f", incl. its probe at scale {s['probes'][name]}"
        ratios = (result.ratio(name), result.ratio(name, own_loop=True))
        verdict = "met" if max(ratios) < goal else "met in own loop only" if min(ratios) < goal else "NOT met"
        rows.append(
            [
                f"{name} ({kind}, {image})", f"{1e3 * result.routing_seconds(name):.3f}", f"{100 * ratios[0]:.2f} %",
                f"{1e3 * result.routing_seconds(name, own_loop=True):.3f}", f"{100 * ratios[1]:.2f} %",
                f"< {100 * goal:.0f} %: {verdict}",
            ]
        )  # fmt: skip
    headers = ["predictor", "interleaved (ms)", "/ generate", "own loop (ms)", "/ generate (own loop)", "goal"]
    lines.append(markdown_table(headers, rows, "lrrrrl"))
    lines.append(
        f"\ngenerate at scale {s['scale']}: {1e3 * result.generate_seconds():.3f} ms interleaved, "
        f"{1e3 * result.generate_seconds(own_loop=True):.3f} ms in its own loop"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the saved M3 model the oracle was built with")
    parser.add_argument("--oracle", required=True, help="an oracle folder (queries, images, max_new_tokens)")
    parser.add_argument("--predictor", action="append", required=True, help="a saved predictor folder (repeatable)")
    parser.add_argument("--num-queries", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="rounds over the queries")
    parser.add_argument("--goal", type=float, default=0.02, help="routing / generate ratio to report against")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    predictors = {Path(directory).name: directory for directory in args.predictor}
    result = bench_router(args.model, args.oracle, predictors, args.num_queries, args.repeats)
    print(format_bench(result, args.goal))


if __name__ == "__main__":
    main()
