"""The demo's model side: which AdaptiveM3 to load, and one question answered at every scale from one vision pass.

:meth:`DemoModel.ask` encodes the image once (:meth:`adaptive.AdaptiveM3.encode`), reads the predictor's P(correct)
from that pass's scale-1 token, and answers at every scale from the same grids
(:func:`m3.inference.answer_at_scales`), exactly as :meth:`AdaptiveM3.generate` would at a forced scale.
:meth:`DemoModel.route` then applies AdaptiveM3's own rule (:meth:`AdaptiveM3.choose_scales`) to the stored
probabilities, so moving the threshold (or, for a predictor saved with the priced rule, the price) or the token cap
re-routes without running the model again.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from adaptive import AdaptiveM3
from adaptive.model import load_rgb
from m3.fingerprint import model_fingerprint, same_weights
from m3.inference import answer_at_scales, compact_prompts
from predictor.risk_control import Certificate

from .router import load_certificates
from .views import model_input_pixels

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = Path("checkpoints/tiny-m3")
SHIPPED_PREDICTOR = Path("checkpoints/tiny-m3-router")
QUICKSTART_ADAPTIVE = Path("runs/quickstart/adaptive")
BUILD_COMMAND = "python scripts/build_demo_predictor.py --model {model} --out DIR"


@dataclass
class Asked:
    """One question about one image, answered at every scale of the model (scales in increasing order)."""

    question: str
    pixels: np.ndarray  # (H, W, 3) uint8: the image as the vision tower gets it
    scales: list[int]
    answers: list[str]
    confidences: list[float]  # mean log-probability of each answer's tokens
    visual_tokens: list[int]
    probabilities: list[float]  # the predictor's P(correct) per scale
    answer_of: dict[int, str] = field(init=False)

    def __post_init__(self) -> None:
        self.answer_of = dict(zip(self.scales, self.answers))


class DemoModel:
    """An :class:`AdaptiveM3` with what the page says about it: ``source`` (where model and predictor came from)
    and ``certificates`` (the certified thresholds it offers, by increasing epsilon; empty for a plain one)."""

    def __init__(self, adaptive: AdaptiveM3, source: str, certificates: list[Certificate] | None = None) -> None:
        self.adaptive = adaptive
        self.source = source
        self.certificates = list(certificates or [])

    @property
    def scales(self) -> list[int]:
        return list(self.adaptive.scales)

    @property
    def grid_tokens(self) -> int:
        return int(self.adaptive.model.config.grid_tokens)

    @property
    def rule(self) -> str:
        """The routing rule :meth:`AdaptiveM3.generate` uses when given no value: ``threshold`` or ``price``."""
        return self.adaptive.operating_point()[0]

    @property
    def default_value(self) -> float:
        """The threshold or price (:attr:`rule`) :meth:`AdaptiveM3.generate` routes at when given none."""
        return self.adaptive.operating_point()[1]

    def ask(self, image, question: str, max_new_tokens: int = 32) -> Asked:
        """Answer ``question`` about ``image`` (path, PIL image or uint8 array) at every scale, from ONE vision
        pass. Raises ``ValueError``/``OSError`` with a readable message for an empty question or a bad image."""
        if not isinstance(question, str) or not question.strip():
            raise ValueError("type a question first")
        question = question.strip()
        adaptive = self.adaptive
        pil, grids, sizes = adaptive.encode([image])
        probabilities = adaptive.probabilities(pil, grids, [question])[0]
        compact = compact_prompts(adaptive.processor, [question])
        if sizes is not None:
            compact["image_sizes"] = sizes
        outputs = answer_at_scales(
            adaptive.model, adaptive.processor, compact, grids, sizes, self.scales, max_new_tokens
        )
        return Asked(
            question=question,
            pixels=model_input_pixels(adaptive.processor, pil[0]),
            scales=self.scales,
            answers=[outputs[s].answers[0] for s in self.scales],
            confidences=[outputs[s].confidences[0] for s in self.scales],
            visual_tokens=[outputs[s].tokens[0] for s in self.scales],
            probabilities=[float(p) for p in probabilities],
        )

    def route(self, asked: Asked, value: float | None = None, max_tokens: int | None = None) -> int:
        """The scale :meth:`AdaptiveM3.generate` picks for this query by the model's :attr:`rule` at ``value`` (a
        threshold or a price; default: the model's own) under ``max_tokens``."""
        probabilities = np.asarray([asked.probabilities])
        tokens = np.asarray([asked.visual_tokens])
        at = {self.rule: value} if value is not None else {}
        return int(self.adaptive.choose_scales(probabilities, tokens, max_tokens=max_tokens, **at)[0])


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies under it (shorter on the page and in logs)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def predictor_matches(predictor_dir: str | os.PathLike, model_dir: str | os.PathLike) -> bool:
    """Whether a saved predictor may serve these model weights: not known to come from other weights
    (:func:`m3.fingerprint.same_weights`; a predictor whose fingerprint cannot be compared is taken on trust, and
    AdaptiveM3 warns about it; scales and sizes are checked at load)."""
    state = json.loads((Path(predictor_dir) / "predictor.json").read_text(encoding="utf-8"))
    recorded = (state.get("fingerprint") or {}).get("model_fingerprint")
    return same_weights(recorded, model_fingerprint(model_dir)) is not False


def load_demo_model(
    adaptive_dir: str | os.PathLike | None = None,
    model_dir: str | os.PathLike | None = None,
    predictor_dir: str | os.PathLike | None = None,
    root: str | os.PathLike = ROOT,
) -> DemoModel:
    """The AdaptiveM3 the demo shows: ``adaptive_dir`` (a saved AdaptiveM3), or ``model_dir`` (default: the
    committed tiny model) with ``predictor_dir``. Without a predictor: the one shipped for the demo when it was
    fitted on this model's weights, else the quickstart's AdaptiveM3 (with the default model only), else an error
    that says how to build one. Relative defaults are under ``root`` (the repository)."""
    root = Path(root)
    if adaptive_dir is not None:
        if model_dir is not None or predictor_dir is not None:
            raise ValueError("pass either an AdaptiveM3 folder, or a model folder with a predictor folder, not both")
        return _from_adaptive_folder(Path(adaptive_dir), f"the AdaptiveM3 folder {adaptive_dir}")
    model = Path(model_dir) if model_dir is not None else root / DEFAULT_MODEL
    if not (model / "config.json").is_file():
        raise FileNotFoundError(f"{model} is not a model folder (no config.json)")
    if predictor_dir is not None:
        adaptive = AdaptiveM3.from_pretrained(model, predictor_dir)
        certificates = load_certificates(adaptive.predictor, predictor_dir)
        return DemoModel(adaptive, f"model {model} with the predictor {predictor_dir}", certificates)
    shipped, quickstart = root / SHIPPED_PREDICTOR, root / QUICKSTART_ADAPTIVE
    stale = ""
    if (shipped / "predictor.json").is_file():
        if predictor_matches(shipped, model):
            adaptive = AdaptiveM3.from_pretrained(model, shipped)
            source = f"model {_shown(model)} with the demo predictor {_shown(shipped)} (MLP, certified thresholds)"
            return DemoModel(adaptive, source, load_certificates(adaptive.predictor, shipped))
        stale = f"the shipped predictor {_shown(shipped)} was fitted on other weights than {_shown(model)}; "
    if model_dir is None and (quickstart / "adaptive_config.json").is_file():
        source = f"the quickstart's AdaptiveM3 {_shown(quickstart)}" + (f" ({stale.rstrip('; ')})" if stale else "")
        return _from_adaptive_folder(quickstart, source)
    raise FileNotFoundError(
        f"{stale}no scale predictor for {model}: pass --predictor DIR or --adaptive DIR, run the quickstart, "
        f"or build one with `{BUILD_COMMAND.format(model=model)}`"
    )


def _from_adaptive_folder(folder: Path, source: str) -> DemoModel:
    adaptive = AdaptiveM3.from_pretrained(folder)
    return DemoModel(adaptive, source, load_certificates(adaptive.predictor, folder / "predictor"))


def open_image(path: str | os.PathLike) -> Image.Image:
    """An uploaded file as an RGB image, or ``ValueError`` saying why it is not one (never a traceback)."""
    name = Path(path).name
    try:
        return load_rgb(path)
    except (OSError, ValueError) as error:
        reason = str(error.__cause__ or error).replace(str(path), name)
        raise ValueError(f"{name} is not an image the demo can read ({reason})") from error
