"""The small scale predictor shipped for the demo, and the certificates it carries.

The demo needs a predictor that matches ``checkpoints/tiny-m3`` without running the quickstart's 9 minutes.
:func:`build_demo_predictor` fits the quickstart's best cheap predictor kind (``mlp-image``: the scale-1 embedding,
question and image features) on the tiny model's oracle of granularity *train* images, then certifies thresholds
on the oracle of the *validation* images with :class:`predictor.CertifiedRouter`, once per tolerated accuracy drop
epsilon (the demo's eps control). The default epsilon's router is saved as an ordinary predictor folder (it loads
with :func:`predictor.load_predictor` and routes at its certified threshold); ``certificates.json`` beside it lists
the certificate of every epsilon. The *test* images, which the demo offers as examples, are never seen.

Each certificate holds on its own (probability ``1 - delta`` over the calibration draw); choosing among several
after the fact does not keep all of them at once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from m3.data.granularity import ensure_split
from predictor import CertifiedRouter, MLPScalePredictor, saved_certificate
from predictor.calibration import check_risk_levels
from predictor.risk_control import Certificate

CERTIFICATES_NAME = "certificates.json"
DEFAULT_EPSILONS = (0.01, 0.02, 0.05, 0.1)
DEFAULT_EPSILON = 0.02
DEFAULT_DELTA = 0.1


def build_demo_predictor(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    work_dir: str | os.PathLike,
    train_images: int = 500,
    calibration_images: int = 200,
    epsilons: Sequence[float] = DEFAULT_EPSILONS,
    default_epsilon: float = DEFAULT_EPSILON,
    delta: float = DEFAULT_DELTA,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> Path:
    """Fit, certify and save the demo's predictor for ``model_dir``; intermediate data go to ``work_dir``.

    Returns ``out_dir``: a predictor folder certified at ``default_epsilon`` plus ``certificates.json``.
    """
    from oracle_data import build_oracle  # pyarrow and the model loaders: only when a predictor is built

    if default_epsilon not in epsilons:
        raise ValueError(f"default_epsilon {default_epsilon} is not one of the epsilons {list(epsilons)}")
    for epsilon in epsilons:  # before the oracle builds, not after them
        check_risk_levels(epsilon, delta)
    work = Path(work_dir)
    data = work / "granularity"
    train_json = ensure_split(data / "train.json", "train", train_images, seed=seed)
    calibration_json = ensure_split(data / "validation.json", "validation", calibration_images, seed=seed)
    log(f"oracle of {model_dir} on {train_json} and {calibration_json}")
    build_oracle(model_dir, train_json, work / "oracle-train", max_new_tokens=4, progress=False)
    build_oracle(model_dir, calibration_json, work / "oracle-calibration", max_new_tokens=4, progress=False)
    predictor = MLPScalePredictor(use_image=True, seed=seed).fit(work / "oracle-train")
    routers = {}
    for epsilon in epsilons:
        routers[epsilon] = CertifiedRouter(predictor, max_drop=epsilon, delta=delta).fit(work / "oracle-calibration")
        certificate = routers[epsilon].certificate_
        log(f"epsilon {epsilon}: threshold {certificate.threshold}, {certificate.calibration_tokens} tokens on average")
    out = routers[default_epsilon].save_pretrained(out_dir)
    record = {
        "default_epsilon": default_epsilon,
        "certificates": [routers[epsilon].certificate_.to_dict() for epsilon in epsilons],
    }
    (Path(out) / CERTIFICATES_NAME).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return Path(out)


def load_certificates(predictor, predictor_dir: str | os.PathLike | None = None) -> list[Certificate]:
    """The certificates a predictor offers, by increasing epsilon: ``certificates.json`` in its folder when
    present (the demo predictor's menu), else the one it was saved with, else none (a plain threshold)."""
    if predictor_dir is not None and (Path(predictor_dir) / CERTIFICATES_NAME).is_file():
        record = json.loads((Path(predictor_dir) / CERTIFICATES_NAME).read_text(encoding="utf-8"))
        certificates = [Certificate.from_dict(state) for state in record["certificates"]]
        return sorted(certificates, key=lambda c: c.epsilon)
    certificate = saved_certificate(predictor)
    return [] if certificate is None else [certificate]
