"""Cost of routing one query against the cost of answering it: predictor features + forward vs one ``generate``.

Per query (batch size 1, as a server routes them), over ``repeats`` rounds, two ways: interleaved (route a query,
answer it, next query) and each in its own loop (all routing calls, then all generate calls):

* ``image decode``: opening the image file (shared by routing and answering, reported apart);
* ``image features``: :func:`predictor.features.image_features` on the decoded image;
* per predictor, ``features``: the feature builder (question statistics, TF-IDF, standardisation) given the image
  features and the scale-1 embedding, and ``forward``: the model's probabilities and the threshold rule;
* ``generate``: the processor and one greedy ``model.generate`` at the largest scale, from the decoded image
  (vision tower included), with the oracle's ``max_new_tokens``.

The scale-1 embedding is taken from the oracle row: in an adaptive model it is the mean of the projected grid
that the vision pass computes anyway (and that the chosen scale's ``generate`` reuses), so it adds no model cost.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np

from .base import ScalePredictor, load_predictor, route_by_threshold
from .data import Queries, as_oracle_set
from .features import image_features


@dataclass
class RouterBenchResult:
    """Seconds per query and component (one entry per query and repeat) and the setup."""

    times: dict[str, list[float]]
    setup: dict = field(default_factory=dict)

    def median(self, key: str) -> float:
        return float(np.median(self.times[key]))

    def routing_seconds(self, name: str, own_loop: bool = False) -> float:
        """Median per-query routing cost of predictor ``name``: its image features (if used), features, forward.

        ``own_loop``: measured in a loop of routing calls only (steady state), instead of between generate calls."""
        if own_loop:
            return self.median(f"{name} routing, own loop")
        total = np.asarray(self.times[f"{name} features"]) + np.asarray(self.times[f"{name} forward"])
        if self.setup["uses_image"][name]:
            total = total + np.asarray(self.times["image features"])
        return float(np.median(total))

    def ratio(self, name: str, own_loop: bool = False) -> float:
        """Routing cost over the cost of one generate, both measured the same way (interleaved or own loop)."""
        return self.routing_seconds(name, own_loop) / self.median("generate, own loop" if own_loop else "generate")


def bench_router(
    model_dir: str | os.PathLike,
    oracle,
    predictors: dict[str, ScalePredictor | str | os.PathLike],
    num_queries: int = 32,
    repeats: int = 3,
    progress: bool = True,
) -> RouterBenchResult:
    """Time routing and answering for the first ``num_queries`` samples of the ``oracle`` folder."""
    import torch
    from tqdm.auto import tqdm

    from m3.loading import load_m3_model
    from m3.processing import M3Processor, llava_prompt
    from oracle_data.datasets import load_samples
    from oracle_data.generation import load_image

    if num_queries < 1 or repeats < 1:
        raise ValueError(f"num_queries and repeats must be >= 1, got {num_queries} and {repeats}")
    data = as_oracle_set(oracle)
    if data.manifest is None:
        raise ValueError("bench_router needs an oracle folder (its manifest names the data file and settings)")
    loaded = {
        name: p if isinstance(p, ScalePredictor) else load_predictor(p, oracle=data, model_config=model_dir)
        for name, p in predictors.items()
    }
    spec = data.manifest["data"]
    samples = load_samples(
        spec["path"], spec["image_root"], spec["format"], data.manifest["metric"], check_images=False
    )
    by_id = {sample.sample_id: sample for sample in samples.samples}
    rows = data.take(np.arange(min(num_queries, len(data))))
    queries = [by_id[sample_id] for sample_id in rows.column("sample_id")]
    embeddings = rows.embeddings()
    model = load_m3_model(model_dir).eval()
    processor = M3Processor.from_pretrained(model_dir, config=model.config)
    scale = data.scales[-1]
    max_new_tokens = int(data.manifest["settings"]["max_new_tokens"])
    times: dict[str, list[float]] = {
        key: [] for key in ("image decode", "image features", "generate", "generate, own loop")
    }
    for name in loaded:
        times[f"{name} features"], times[f"{name} forward"], times[f"{name} routing, own loop"] = [], [], []

    def timed(key, function):
        start = time.perf_counter()
        result = function()
        times[key].append(time.perf_counter() - start)
        return result

    with torch.inference_mode():
        # warm up every path once (first calls allocate and import)
        image = load_image(queries[0])
        for predictor in loaded.values():
            predictor.predict_proba(
                Queries([queries[0].question], embeddings[:1], image_features=image_features(image)[None])
            )

        def answer(sample, image):
            inputs = processor(llava_prompt(sample.prompt), image, m3_scale=scale)
            return model.generate(
                **inputs,
                m3_scale=scale,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=processor.tokenizer.pad_token_id,
            )

        def route(predictor, index, image):
            uses_image = predictor.feature_builder_.use_image
            features = image_features(image)[None] if uses_image else None
            batch = Queries([queries[index].question], embeddings[index : index + 1], image_features=features)
            proba = predictor.predict_proba_from_features(predictor.feature_builder_.transform(batch))
            return route_by_threshold(proba, predictor.scales_, predictor.threshold_)

        bar = tqdm(total=2 * repeats * len(queries), desc="bench", unit="query", disable=not progress)
        for _ in range(repeats):
            # interleaved, as a server runs: route a query, answer it, next query (caches are cold for routing)
            for index, sample in enumerate(queries):
                image = timed("image decode", lambda s=sample: load_image(s))
                features = timed("image features", lambda im=image: image_features(im))
                batch = Queries([sample.question], embeddings[index : index + 1], image_features=features[None])
                for name, predictor in loaded.items():
                    matrix = timed(f"{name} features", lambda p=predictor, b=batch: p.feature_builder_.transform(b))
                    timed(
                        f"{name} forward",
                        lambda p=predictor, m=matrix: route_by_threshold(
                            p.predict_proba_from_features(m), p.scales_, p.threshold_
                        ),
                    )
                timed("generate", lambda s=sample, im=image: answer(s, im))
                bar.update(1)
            # each in its own loop over the queries (steady state for both)
            images = [load_image(sample) for sample in queries]
            for name, predictor in loaded.items():
                for index, image in enumerate(images):
                    timed(f"{name} routing, own loop", lambda p=predictor, i=index, im=image: route(p, i, im))
            for sample, image in zip(queries, images):
                timed("generate, own loop", lambda s=sample, im=image: answer(s, im))
                bar.update(1)
        bar.close()
    parameters = sum(p.numel() for p in model.parameters()) / 1e6
    setup = {
        "model": f"{model_dir} ({model.config.model_type}, {parameters:.2f}M parameters)",
        "oracle": data.source,
        "queries": len(queries),
        "repeats": repeats,
        "scale": scale,
        "max_new_tokens": max_new_tokens,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "uses_image": {name: p.feature_builder_.use_image for name, p in loaded.items()},
        "kinds": {name: f"{type(p).__name__}(target={p.target!r})" for name, p in loaded.items()},
    }
    return RouterBenchResult(times, setup)


def format_bench(result: RouterBenchResult, goal: float = 0.02) -> str:
    """Setup, median per-query times and each predictor's routing / generate ratio against ``goal``."""
    s = result.setup
    lines = [
        f"model {s['model']}; {s['queries']} queries from {s['oracle']} x {s['repeats']} repeats, batch 1",
        f"generate at scale {s['scale']} with max_new_tokens {s['max_new_tokens']} (stops at EOS); threads "
        f"{s['threads']}, torch {s['torch']}; medians per query",
        "",
        "| component | median (ms) |",
        "|---|---:|",
        f"| image decode (shared by routing and answering; not counted) | {1e3 * result.median('image decode'):.3f} |",
        f"| image features | {1e3 * result.median('image features'):.3f} |",
    ]
    for name in s["kinds"]:
        lines.append(
            f"| {name}: features (question, TF-IDF, standardise) | {1e3 * result.median(name + ' features'):.3f} |"
        )
        lines.append(f"| {name}: forward + threshold rule | {1e3 * result.median(name + ' forward'):.3f} |")
    lines.append(
        f"| one generate at scale {s['scale']} (processor + vision + LLM) | {1e3 * result.median('generate'):.3f} |"
    )
    lines += [
        "",
        "Routing per query against one generate, measured two ways: interleaved (route, answer, next query: the "
        "routing runs on caches the generate just flushed) and each in its own loop (steady state for both).",
        "",
        "| predictor | interleaved (ms) | / generate | own loop (ms) | / generate (own loop) | goal |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, kind in s["kinds"].items():
        image = "incl. image features" if s["uses_image"][name] else "no image features"
        ratios = (result.ratio(name), result.ratio(name, own_loop=True))
        verdict = "met" if max(ratios) < goal else "met in own loop only" if min(ratios) < goal else "NOT met"
        lines.append(
            f"| {name} ({kind}, {image}) | {1e3 * result.routing_seconds(name):.3f} | {100 * ratios[0]:.2f} % | "
            f"{1e3 * result.routing_seconds(name, own_loop=True):.3f} | {100 * ratios[1]:.2f} % | "
            f"< {100 * goal:.0f} %: {verdict} |"
        )
    lines.append(
        f"\ngenerate at scale {s['scale']}: {1e3 * result.median('generate'):.3f} ms interleaved, "
        f"{1e3 * result.median('generate, own loop'):.3f} ms in its own loop"
    )
    return "\n".join(lines)
