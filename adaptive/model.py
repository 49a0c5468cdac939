"""``AdaptiveM3``: an M3 model plus a scale predictor; each query is answered at the scale the predictor picks.

Each query is routed by the predictor's rule (:mod:`predictor.thresholds`): the threshold rule (the smallest scale
whose P(correct) reaches a threshold) or the priced rule (the scale maximising P(correct) minus a price per share of
the largest scale's tokens), at the saved threshold or price unless ``threshold=`` or ``price=`` is passed.

Per batch the vision tower runs once per image. The scale-1 token of the projected grid (the predictor's
input, the oracle's ``embedding`` column) and the tokens of the chosen scale are both pooled from that one
pass, so routing adds only the predictor's own cost (features + a small model) to the answer.

A probe predictor (``predictor.probe_scale_`` set) reads the model's own answer at a cheap scale: the batch is
first answered there (keeping the answer's confidence and the LLM's last hidden state), the predictor routes, and
queries routed to the probe scale keep that answer; the others are answered again at their scale. Every answer
reports the visual tokens it processed, probe included. With ``budget=``, the scales of a batch maximise the
expected number of correct answers under a mean visual-token budget (a knapsack on the predictor's probabilities).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from m3.files import read_json
from m3.fingerprint import model_fingerprint, same_weights, short
from m3.inference import ScaleOutput, compact_prompts, encode_images, generate_at_scale, scale_one_embedding
from m3.loading import load_m3_model
from m3.pooling import check_scale
from m3.processing import M3Processor, check_question
from m3.prompting import check_context, compact_text_tokens, image_token_counts
from predictor import (
    CalibratedRouter,
    PredictorMismatchError,
    Queries,
    ScalePredictor,
    certificate_at,
    check_compatible,
    load_predictor,
    saved_certificate,
)
from predictor.budget import budget_routing
from predictor.calibration import operating_point_of
from predictor.costs import probe_scale_of, routing_costs
from predictor.risk_control import Certificate
from predictor.thresholds import check_price, check_threshold, operating_rule, route_by_rule

from .frames import FramesMixin
from .inputs import as_integer, load_rgb

CONFIG_NAME = "adaptive_config.json"
MODEL_DIR, PREDICTOR_DIR = "model", "predictor"


@dataclass
class AdaptiveAnswer:
    """One routed answer."""

    answer: str
    scale: int  # the scale it was answered at
    visual_tokens: int  # visual tokens the LLM saw (the scale, or the anyres count for LLaVA-NeXT)
    probabilities: dict[int, float]  # the predictor's P(correct) per scale
    confidence: float  # mean log-probability of the answer's tokens
    forced: bool = False  # the scale came from ``scale=``, not from the predictor
    processed_tokens: int = 0  # visual tokens processed for this answer: ``visual_tokens`` plus a probe's, if any
    probe_scale: int | None = None  # the scale a probe predictor answered at first (None: no probe)
    reused_probe: bool = False  # the answer is the probe's own (the routed scale is the probe scale)
    threshold: float | None = None  # the threshold routed at (None: the priced rule, a forced scale or a budget)
    certificate: dict | None = None  # the certificate that holds for this routing (None: not certified)
    rule: str | None = None  # the routing rule, "threshold" or "price" (None: a forced scale or a budget)
    price: float | None = None  # the price routed at (None: the threshold rule, a forced scale or a budget)

    def __post_init__(self) -> None:
        self.processed_tokens = self.processed_tokens or self.visual_tokens


def check_generation_options(
    config, threshold=None, max_tokens=None, scale=None, max_new_tokens: int = 32, price=None
) -> int | None:
    """Refuse :meth:`AdaptiveM3.generate` options that cannot work, from the model's config alone, so that a script
    can ask before the model loads (``generate`` asks the same). Returns ``scale`` as an int (or None)."""
    if scale is not None and any(value is not None for value in (threshold, price, max_tokens)):
        given = [name for name, value in (("threshold", threshold), ("price", price), ("max_tokens", max_tokens))
                 if value is not None]  # fmt: skip
        raise ValueError(
            f"scale={scale} forces a scale, so the router's {' and '.join(given)} would be ignored (a forced scale may "
            "spend more than max_tokens): give a scale or routing options, not both"
        )
    if threshold is not None or price is not None:
        operating_rule("threshold", threshold, price, at_threshold=threshold, at_price=price)
    if max_tokens is not None and as_integer(max_tokens, "max_tokens") < 1:
        raise ValueError(f"max_tokens={max_tokens} is below the smallest scale (1 visual token or more)")
    if as_integer(max_new_tokens, "max_new_tokens") < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    return None if scale is None else check_scale(as_integer(scale, "scale"), config.grid_tokens)


class WeightsMismatchError(PredictorMismatchError):
    """A predictor was fitted on the oracle of a model with other weights than the one it is paired with."""


def check_same_weights(fingerprint: dict, model_fp: dict | None, model_dir, allow_other_weights: bool) -> None:
    """Refuse (or, with ``allow_other_weights``, warn about) a predictor whose oracle came from other weights than
    ``model_fp`` (a :func:`m3.fingerprint.model_fingerprint`); silent when either side's weights are unknown."""
    theirs = fingerprint.get("model_fingerprint")
    same = same_weights(theirs, model_fp)
    if same is None and (theirs or {}).get("weights_sha256") and model_fp:
        warnings.warn(
            f"the predictor's oracle records an older model fingerprint ({fingerprint.get('model_path')}), which "
            "cannot be compared with these weights; rebuild the oracle and refit the predictor to have it checked",
            stacklevel=3,
        )
    if same is not False:
        return
    message = (
        f"the predictor was fitted on the oracle of {fingerprint.get('model_path')} ({short(theirs)}), but the model "
        f"{model_dir} has other weights ({short(model_fp)}); its probabilities need not hold for this model"
    )
    if not allow_other_weights:
        raise WeightsMismatchError(
            f"{message}. Fit a predictor on an oracle of this model, or pass allow_other_weights=True "
            "(scripts/ask.py: --allow-other-weights) to use it anyway"
        )
    warnings.warn(message, stacklevel=3)


class AdaptiveM3(FramesMixin):
    """Answer each (image, question) at the fewest visual tokens the predictor expects to be enough.

    ``predictor``: a fitted scale predictor or a :class:`predictor.CalibratedRouter`; it routes at its own operating
    point (its ``rule_`` at its ``threshold_`` or ``price_``: the calibrated or certified one it was saved with)
    unless ``threshold`` (the probability a scale must reach, in [0, 1]) or ``price`` (accuracy per share of the
    largest scale's tokens, >= 0) sets another default. ``certificate`` is the predictor's certificate, if it has
    one; it holds at the certified rule and value only (:meth:`certificate_at`). ``model_fingerprint``
    (:func:`m3.fingerprint.model_fingerprint` of the model's folder; :meth:`from_pretrained` fills it in) lets a
    predictor fitted on other weights be refused, unless ``allow_other_weights`` (then it is a warning).
    """

    def __init__(
        self,
        model,
        processor: M3Processor,
        predictor: ScalePredictor | CalibratedRouter,
        threshold: float | None = None,
        model_fingerprint: dict | None = None,
        allow_other_weights: bool = False,
        price: float | None = None,
    ) -> None:
        check_compatible(predictor.fingerprint_, model_config=model.config, where="the predictor")
        where = model.config.name_or_path or "the model"
        check_same_weights(predictor.fingerprint_, model_fingerprint, where, allow_other_weights)
        self.model_fingerprint = model_fingerprint
        self.model = model.eval()
        self.processor = processor
        self.predictor = predictor
        if threshold is not None and price is not None:
            raise ValueError("pass a threshold or a price, not both: they are two routing rules")
        self.threshold = None if threshold is None else check_threshold(threshold)
        self.price = None if price is None else check_price(price)
        self.scales = list(predictor.scales_)
        self.probe_scale = probe_scale_of(predictor)
        if self.probe_scale is not None:
            check_scale(self.probe_scale, model.config.grid_tokens)

    @property
    def certificate(self) -> Certificate | None:
        """The predictor's certificate (eps, delta, n, threshold, p-value, calibration data hash), or None."""
        return saved_certificate(self.predictor)

    def certificate_at(
        self, threshold: float | None = None, max_tokens: int | None = None, price: float | None = None
    ) -> Certificate | None:
        """The certificate that holds for routing at ``threshold`` or ``price`` (default: the operating point
        :meth:`generate` uses) without a token cap; None when such routing is not certified (another rule or value,
        or a cap, which changes the routing the certificate was computed for)."""
        if max_tokens is not None:
            return None
        rule, value = self.operating_point(threshold, price)
        return certificate_at(self.certificate, value, rule)

    # ---- loading and saving
    @classmethod
    def from_pretrained(
        cls,
        m3_dir: str | os.PathLike,
        predictor_dir: str | os.PathLike | None = None,
        allow_other_weights: bool = False,
        **model_kwargs,
    ) -> AdaptiveM3:
        """Load an M3 model folder and a predictor folder, or (``predictor_dir=None``) a folder that
        :meth:`save_pretrained` wrote. A predictor built for other scales or embedding size is refused, and so
        (before the model loads) is one fitted on the oracle of other weights, unless ``allow_other_weights``."""
        threshold = price = None
        if predictor_dir is None:
            root = Path(m3_dir)
            config_path = root / CONFIG_NAME
            if not config_path.is_file():
                raise FileNotFoundError(
                    f"{root} is not a saved AdaptiveM3 ({CONFIG_NAME} is missing): pass the M3 model folder and the "
                    "predictor folder"
                )
            saved = read_json(config_path, "save the AdaptiveM3 again")
            threshold, price = saved.get("threshold"), saved.get("price")
            m3_dir, predictor_dir = root / MODEL_DIR, root / PREDICTOR_DIR
        predictor = load_predictor(predictor_dir, model_config=m3_dir)
        fingerprint = model_fingerprint(m3_dir)
        if not allow_other_weights:
            check_same_weights(predictor.fingerprint_, fingerprint, m3_dir, allow_other_weights)
        model = load_m3_model(m3_dir, **model_kwargs)
        processor = M3Processor.from_pretrained(m3_dir, config=model.config)
        return cls(model, processor, predictor, threshold, fingerprint, allow_other_weights, price)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``model/`` (weights, tokenizer, image processor), ``predictor/`` and ``adaptive_config.json``."""
        directory = Path(directory)
        self.model.save_pretrained(directory / MODEL_DIR)
        self.processor.save_pretrained(directory / MODEL_DIR)
        self.predictor.save_pretrained(directory / PREDICTOR_DIR)
        config = {"threshold": self.threshold, "price": self.price, "scales": self.scales}
        (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        return directory

    # ---- the shared vision pass
    def encode(self, images: Sequence) -> tuple[list[Image.Image], list[torch.Tensor], torch.Tensor | None]:
        """PIL images, their projected grids (ONE vision pass) and image sizes (LLaVA-NeXT) or None."""
        pil = [load_rgb(image) for image in images]
        grids, sizes = encode_images(self.model, self.processor, pil)
        return pil, grids, sizes

    def _token_counts(self, sizes: torch.Tensor | None, num_images: int) -> np.ndarray:
        """``(images, scales)`` visual tokens of each image at each predictor scale."""
        per_scale = [
            image_token_counts(
                self.model.config, scale, None if sizes is None else sizes.tolist(), num_images=num_images
            )
            for scale in self.scales
        ]
        return np.asarray(per_scale, dtype=np.int64).T

    def probabilities(
        self,
        pil: list[Image.Image],
        grids: list[torch.Tensor],
        questions: list[str],
        probe: ScaleOutput | None = None,
    ) -> np.ndarray:
        """``(n, scales)`` P(correct) per scale from the scale-1 embeddings of ``grids`` (and, for a probe
        predictor, the ``probe`` answers at its probe scale: :meth:`probe`)."""
        embeddings = scale_one_embedding(grids)
        queries = Queries(questions=questions, embeddings=embeddings, images=pil)
        if self.probe_scale is not None:
            if probe is None or probe.hidden is None:
                raise ValueError(f"this predictor reads a probe answer at scale {self.probe_scale}: pass probe=")
            queries.probe_confidence = np.asarray(probe.confidences, dtype=np.float64)
            queries.probe_hidden = np.asarray(probe.hidden, dtype=np.float32)
        return self.predictor.predict_proba(queries)

    def probe(
        self, compact: dict, grids: list[torch.Tensor], sizes, max_new_tokens: int, **generation_kwargs
    ) -> ScaleOutput | None:
        """The batch answered at the probe scale with the LLM's last hidden state (None without a probe)."""
        if self.probe_scale is None:
            return None
        batch = dict(compact) if sizes is None else dict(compact, image_sizes=sizes)
        return generate_at_scale(
            self.model, self.processor, batch, grids, sizes, self.probe_scale, max_new_tokens, return_hidden=True,
            **generation_kwargs,
        )  # fmt: skip

    def costs(self, token_counts: np.ndarray) -> np.ndarray:
        """``(n, scales)`` visual tokens each query processes if routed to each scale (a probe's included)."""
        return routing_costs(token_counts, self.scales, self.probe_scale)

    def choose_scales(
        self,
        probabilities: np.ndarray,
        token_counts: np.ndarray,
        threshold: float | None = None,
        max_tokens: int | None = None,
        price: float | None = None,
    ) -> list[int]:
        """Per query, the routing rule at the operating point (:meth:`operating_point`;
        :func:`predictor.thresholds.route_by_rule`) over the scales within ``max_tokens`` visual tokens
        (``token_counts``: ``(n, scales)``): the threshold rule's smallest scale that reaches the threshold (the
        largest such scale when none does), or the priced rule's best scale, its tokens being those processed
        (:meth:`costs`)."""
        rule, value = self.operating_point(threshold, price)
        allowed = None
        if max_tokens is not None:
            allowed = np.asarray(token_counts) <= max_tokens
            if not allowed.any(axis=1).all():
                smallest = int(np.asarray(token_counts)[~allowed.any(axis=1)].min())
                raise ValueError(f"max_tokens={max_tokens} is below the smallest scale's {smallest} visual tokens")
        return route_by_rule(probabilities, self.scales, rule, value, self.costs(token_counts), allowed).tolist()

    def route(
        self,
        pil: list[Image.Image],
        grids: list[torch.Tensor],
        sizes: torch.Tensor | None,
        questions: list[str],
        threshold: float | None = None,
        max_tokens: int | None = None,
        price: float | None = None,
    ) -> list[int]:
        """The scale the routing rule picks for each encoded (image, question) (:meth:`encode`), without
        answering: what :meth:`generate` would answer at. A probe predictor routes on a generated answer and is
        refused here."""
        if self.probe_scale is not None:
            raise ValueError(
                f"this predictor reads the model's answer at scale {self.probe_scale} before it routes; route with "
                "generate(), or use a predictor without a probe"
            )
        probabilities = self.probabilities(pil, grids, questions)
        return self.choose_scales(probabilities, self._token_counts(sizes, len(pil)), threshold, max_tokens, price)

    def operating_point(self, threshold: float | None = None, price: float | None = None) -> tuple[str, float]:
        """``(rule, value)`` a query is routed at: ``threshold`` or ``price`` when given, else this model's own
        default (``self.threshold`` or ``self.price``), else the predictor's saved operating point."""
        if threshold is not None or price is not None:
            return operating_rule("threshold", None, None, at_threshold=threshold, at_price=price)
        if self.threshold is not None or self.price is not None:
            return operating_rule("threshold", None, None, at_threshold=self.threshold, at_price=self.price)
        return operating_point_of(self.predictor)

    def check_context(
        self,
        compact: dict,
        scales: Sequence,
        visual_tokens: Sequence[int],
        max_new_tokens: int,
        what: str = "question",
        remedy: str = "Shorten the question",
    ) -> None:
        """Refuse a prompt of ``compact`` whose text, visual tokens (``visual_tokens``, at ``scales``: one entry per
        row) and ``max_new_tokens`` overrun the model's context (:func:`m3.prompting.check_context`)."""
        text = compact_text_tokens(compact, self.model.config.image_token_id)
        names = [f"{what} {row}" for row in range(len(text))]
        check_context(self.model.config, text, visual_tokens, max_new_tokens, names, scales, remedy)

    # ---- answering
    def generate(
        self,
        image,
        question,
        threshold: float | None = None,
        max_tokens: int | None = None,
        scale: int | None = None,
        budget: float | None = None,
        max_new_tokens: int = 32,
        price: float | None = None,
        **generation_kwargs,
    ) -> AdaptiveAnswer | list[AdaptiveAnswer]:
        """Answer one (image, question), or lists of them (one vision pass per image, then one ``generate`` per
        chosen scale). Each query is routed on its own at the operating point (:meth:`operating_point`):
        ``threshold=`` routes by the threshold rule there, ``price=`` by the priced rule. ``scale=`` forces a scale;
        ``max_tokens=`` caps the visual tokens the router may pick; ``budget=`` (mean visual tokens per query,
        probes included) routes the batch by a knapsack on the predictor's probabilities instead (it never spends
        more)."""
        single = not isinstance(question, (list, tuple))
        images, questions = ([image], [question]) if single else (list(image), list(question))
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images for {len(questions)} questions")
        questions = [check_question(q) for q in questions]
        scale = check_generation_options(self.model.config, threshold, max_tokens, scale, max_new_tokens, price)
        if budget is not None and any(v is not None for v in (scale, threshold, max_tokens, price)):
            raise ValueError(
                "budget= routes the batch by itself: do not combine it with scale, threshold, price or max_tokens"
            )
        pil, grids, sizes = self.encode(images)
        compact = compact_prompts(self.processor, questions)
        size_list = None if sizes is None else sizes.tolist()
        if self.probe_scale is not None:  # the probe answers first, at its scale
            probes = [self.probe_scale] * len(pil)
            probe_visual = image_token_counts(self.model.config, probes, size_list)
            self.check_context(compact, probes, probe_visual, max_new_tokens)
        probe = self.probe(compact, grids, sizes, max_new_tokens, **generation_kwargs)
        probabilities = self.probabilities(pil, grids, questions, probe)
        counts = self._token_counts(sizes, len(pil))
        if scale is not None:
            chosen = [scale] * len(pil)
        elif budget is not None:
            chosen = self.budget_scales(probabilities, counts, budget)
        else:
            chosen = self.choose_scales(probabilities, counts, threshold, max_tokens, price)
        forced = scale is not None or budget is not None
        rule, routed_at = (None, None) if forced else self.operating_point(threshold, price)
        certificate = None if rule is None else self.certificate_at(threshold, max_tokens, price)
        self.check_context(compact, chosen, image_token_counts(self.model.config, chosen, size_list), max_new_tokens)
        outputs = self._answer(compact, grids, sizes, chosen, probe, max_new_tokens, **generation_kwargs)
        answers = []
        for row, (value, (output, position)) in enumerate(zip(chosen, outputs)):
            reused = probe is not None and output is probe
            probe_tokens = 0 if probe is None or reused else probe.tokens[row]
            answers.append(
                AdaptiveAnswer(
                    answer=output.answers[position],
                    scale=value,
                    visual_tokens=output.tokens[position],
                    probabilities=dict(zip(self.scales, probabilities[row].tolist())),
                    confidence=output.confidences[position],
                    forced=scale is not None,
                    processed_tokens=output.tokens[position] + probe_tokens,
                    probe_scale=self.probe_scale,
                    reused_probe=reused,
                    threshold=routed_at if rule == "threshold" else None,
                    certificate=None if certificate is None else certificate.to_dict(),
                    rule=rule,
                    price=routed_at if rule == "price" else None,
                )
            )
        return answers[0] if single else answers

    def _answer(
        self, compact, grids, sizes, chosen: list[int], probe: ScaleOutput | None, max_new_tokens, **generation_kwargs
    ) -> list[tuple[ScaleOutput, int]]:
        """Per query, the output holding its answer and its position there: one ``generate`` per chosen scale, and
        the probe's own answers for queries routed to the probe scale."""
        found: list[tuple[ScaleOutput, int] | None] = [None] * len(chosen)
        for value in sorted(set(chosen)):
            rows = [i for i, s in enumerate(chosen) if s == value]
            if probe is not None and value == self.probe_scale:
                for row in rows:
                    found[row] = (probe, row)
                continue
            subset = {key: tensor[rows] for key, tensor in compact.items()}
            subset_sizes = None if sizes is None else sizes[rows]
            if subset_sizes is not None:
                subset["image_sizes"] = subset_sizes
            output = generate_at_scale(
                self.model, self.processor, subset, [grids[i] for i in rows], subset_sizes, value,
                max_new_tokens, **generation_kwargs,
            )  # fmt: skip
            for position, row in enumerate(rows):
                found[row] = (output, position)
        return found

    def budget_scales(self, probabilities: np.ndarray, token_counts: np.ndarray, budget: float) -> list[int]:
        """Scales for a batch maximising the summed P(correct) with at most ``budget`` visual tokens per query on
        average (probes included): :func:`predictor.budget.budget_routing` on the whole batch."""
        costs = self.costs(token_counts)
        chosen = budget_routing(probabilities, costs, self.scales, float(budget))
        if chosen is None:
            cheapest = float(costs.min(axis=1).mean())
            raise ValueError(
                f"budget={budget} mean visual tokens is below the cheapest routing of this batch ({cheapest:g} per "
                "query)"
            )
        return chosen.tolist()
