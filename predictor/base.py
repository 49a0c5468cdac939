"""What every scale predictor shares: targets, model-compatibility checks and save/load.

A scale predictor estimates, per query and per scale, the probability that the model answers correctly at that
scale (``predict_proba``: ``(n, scales)``). One of the two rules of :mod:`predictor.thresholds` turns that into a
routing: the threshold rule (the smallest scale whose probability reaches the threshold, the largest scale when
none does) or the priced rule (the scale maximising the probability minus a price per token). Raising the threshold
never picks a smaller scale, raising the price never a larger one, so one trained predictor traces the whole
accuracy / token trade-off either way.

Saved predictors are a folder: ``predictor.json`` (class, hyper-parameters, scales, the model fingerprint and the
operating point: ``rule`` with its ``threshold`` or ``price``; a folder saved before prices has only ``threshold``),
``features.json`` (:class:`predictor.features.FeatureBuilder`) and the model weights in a pickle-free format
(safetensors, or LightGBM's text model). :func:`predictor.registry.load_predictor` reads any
of them; ``SomeClass.from_pretrained`` reads a folder of that class.
"""

from __future__ import annotations

import inspect
import json
import os
import warnings
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from m3.files import DamagedFileError, dumps_json, read_json
from m3.fingerprint import same_weights

from .costs import routing_costs
from .data import ORACLE_COLUMNS, OracleSet, Queries, as_oracle_set, grouped_split, to_queries
from .features import FeatureBuilder
from .thresholds import (
    DEFAULT_THRESHOLD,
    RULES,
    check_price,
    check_threshold,
    clip_probabilities,
    operating_rule,
    route_by_rule,
)

FORMAT_VERSION = 2  # 2: ``oracle`` -> ``oracle_kind``, FeatureBuilder ``scale`` -> ``std``, thresholds in [0, 1]
CONFIG_NAME = "predictor.json"
FEATURES_NAME = "features.json"
TARGETS = ("correct", "oracle")
PROBES = ("none", "confidence", "hidden")  # what a probe predictor reads of the model's answer at ``probe_scale``
NOT_FITTED = "This %(name)s instance is not fitted yet; call fit(oracle_data) first."
REFIT = "fit and save the predictor again (scripts/evaluate_router.py --oracle-train ...)"
CONFIG_KEYS = ("class", "params", "scales", "fingerprint", "threshold", "n_features_in", "model")
CONFIG_TYPES = {  # what each entry of predictor.json must be: a hand-edited file is named, not a traceback
    "class": (str, "a class name"),
    "params": (dict, "an object of hyper-parameters"),
    "scales": (list, "a list of scales"),
    "fingerprint": ((dict, type(None)), "an object or null"),
    "threshold": ((int, float), "a number in [0, 1]"),
    "calibration": ((dict, type(None)), "an object or null"),
    "rule": ((str, type(None)), f"one of {list(RULES)} or absent"),  # absent: saved before prices, "threshold"
    "price": ((int, float, type(None)), "a number >= 0 or null"),
    "n_features_in": (int, "an integer"),
    "model": (dict, "an object describing the saved model"),
}


class PredictorMismatchError(ValueError):
    """A saved predictor was built for another model (scale set or embedding size) than the one it is used with."""


def model_requirements(model_config) -> tuple[list[int], int]:
    """``(scales, embedding size)`` of a model, from its config object, a config dict or a saved model folder."""
    if isinstance(model_config, (str, os.PathLike)):
        path = Path(model_config)
        path = path / "config.json" if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"no model config at {path}")
        model_config = read_json(path, "re-save or re-download the model")
    get = model_config.get if isinstance(model_config, dict) else lambda k, d=None: getattr(model_config, k, d)
    text = get("text_config")
    hidden = text.get("hidden_size") if isinstance(text, dict) else getattr(text, "hidden_size", None)
    scales = get("m3_scales")
    if scales is None or hidden is None:
        raise ValueError("the model config names no m3_scales or text_config.hidden_size: not an M3 model config")
    return sorted(int(s) for s in scales), int(hidden)


def check_compatible(fingerprint: dict, oracle_data=None, model_config=None, where: str = "this predictor") -> None:
    """Raise :class:`PredictorMismatchError` if the predictor's scales or embedding size differ from those of the
    oracle data (folder, table or :class:`OracleSet`) or model config (object, dict or model folder) given."""
    checks = []
    if oracle_data is not None:
        data = as_oracle_set(oracle_data)
        checks.append((f"the oracle data from {data.source}", list(data.scales), data.embedding_dim))
        theirs, ours = data.fingerprint().get("model_fingerprint"), fingerprint.get("model_fingerprint")
        if same_weights(theirs, ours) is False:
            warnings.warn(
                f"{where} was trained on oracle labels of model {fingerprint.get('model_path')}, the oracle data from "
                f"{data.source} comes from a model with other weights ({data.fingerprint().get('model_path')}); its "
                "correctness estimates may not carry over",
                stacklevel=3,
            )
    if model_config is not None:
        scales, hidden = model_requirements(model_config)
        checks.append(("the model config", scales, hidden))
    for what, scales, dim in checks:
        problems = []
        if list(scales) != list(fingerprint["scales"]):
            problems.append(f"scales {list(fingerprint['scales'])} (it has {list(scales)})")
        if dim is not None and fingerprint.get("embedding_dim") is not None and dim != fingerprint["embedding_dim"]:
            problems.append(f"embedding size {fingerprint['embedding_dim']} (it has {dim})")
        if problems:
            raise PredictorMismatchError(
                f"{where} was built for {' and '.join(problems)}; it does not match {what}. Train a predictor on "
                "oracle data of this model."
            )


class ScalePredictor(BaseEstimator):
    """Base of the scale predictors (scikit-learn style: ``__init__`` stores hyper-parameters, ``fit`` learns
    attributes ending in ``_`` and returns self).

    ``target="correct"`` learns one probability of a correct answer per scale. ``target="oracle"`` classifies the
    oracle label (``oracle_kind="monotone"`` or ``"paper"``) directly; its ``predict_proba`` is then the cumulative
    class probability P(label <= s), the probability that scale s is enough, so the same threshold rule applies,
    and ``predict(X)`` without a threshold returns the most probable label.

    ``probe="confidence"`` or ``"hidden"`` makes a *probe predictor*: it also reads the model's own answer at
    ``probe_scale`` (its confidence; and its last hidden state), so the model answers there first, and that answer
    is reused when the router picks ``probe_scale``. Its cost per query is then the probe's tokens plus the routed
    scale's when they differ (:func:`predictor.costs.routing_costs`); ``probe_scale_`` is None for other predictors.
    """

    @property
    def probe_scale_(self) -> int | None:
        """The scale the model answers at before routing (probe predictors), else None."""
        return None if getattr(self, "probe", "none") == "none" else int(self.probe_scale)

    def _probe_inputs(self) -> dict:
        """The probe part of :meth:`predictor.data.OracleSet.queries`' arguments."""
        return {"probe_scale": self.probe_scale_, "probe_hidden": getattr(self, "probe", "none") == "hidden"}

    def _probe_flags(self) -> dict:
        """The probe part of the :class:`FeatureBuilder` flags."""
        probe = getattr(self, "probe", "none")
        return {"use_probe_confidence": probe != "none", "use_probe_hidden": probe == "hidden"}

    # which FeatureBuilder blocks a subclass uses; set from its hyper-parameters
    def _feature_flags(self) -> dict:
        raise NotImplementedError

    # the learner: fitted on the feature matrix; ``evaluation`` is (features, targets) held out or None
    def _fit_model(self, features, targets, evaluation, callback) -> None:
        raise NotImplementedError

    def _model_proba(self, features: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _save_model(self, path: Path) -> dict:
        raise NotImplementedError

    def _load_model(self, path: Path, state: dict) -> None:
        raise NotImplementedError

    # ---- targets
    def _check_params(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")
        if self.oracle_kind not in ORACLE_COLUMNS:
            raise ValueError(f"oracle_kind must be one of {sorted(ORACLE_COLUMNS)}, got {self.oracle_kind!r}")
        if getattr(self, "probe", "none") not in PROBES:
            raise ValueError(f"probe must be one of {PROBES}, got {self.probe!r}")

    def _targets(self, data: OracleSet, y=None) -> np.ndarray:
        """``(n, scales)`` 0/1 correctness for ``target="correct"``, ``(n,)`` label indices for ``"oracle"``."""
        scales = np.asarray(data.scales)
        if self.target == "correct":
            targets = data.correct() if y is None else np.asarray(y)
            if targets.shape != (len(data), len(scales)):
                raise ValueError(f"y must be (n, {len(scales)}) correctness for target='correct', got {targets.shape}")
            return targets.astype(np.float32)
        labels = data.oracle_labels(self.oracle_kind) if y is None else np.asarray(y)
        unknown = sorted(set(labels.tolist()) - set(scales.tolist()))
        if labels.shape != (len(data),) or unknown:
            raise ValueError(
                f"y must be (n,) oracle scales among {scales.tolist()}; got shape {labels.shape}, {unknown}"
            )
        return np.searchsorted(scales, labels).astype(np.int64)

    # ---- fitting
    def fit(self, X, y=None, *, eval_set=None, callback=None, image_root=None) -> ScalePredictor:
        """Learn from oracle data ``X`` (an oracle folder, a pyarrow Table, a pandas DataFrame or an OracleSet).

        The targets come from ``X``'s columns unless ``y`` is given. ``eval_set`` (oracle data of other images)
        is used for early stopping instead of an internal grouped split; ``callback(step, validation_loss)`` is
        called after every epoch / boosting round that is evaluated (optuna pruning raises from it).
        """
        self._check_params()
        data = as_oracle_set(X, image_root)
        if len(data) == 0:
            raise ValueError(f"cannot fit on 0 samples (from {data.source})")
        flags = self._feature_flags()
        if self.probe_scale_ is not None and self.probe_scale_ not in data.scales:
            raise ValueError(f"probe_scale {self.probe_scale_} is not among the oracle's scales {data.scales}")
        queries = data.queries(flags["use_embedding"], flags["use_image"], **self._probe_inputs())
        self.feature_builder_ = FeatureBuilder(**flags).fit(queries)
        self.scales_ = list(data.scales)
        self.fingerprint_ = data.fingerprint()
        self.rule_, self.threshold_, self.price_ = "threshold", DEFAULT_THRESHOLD, None
        targets = self._targets(data, y)
        features = self.feature_builder_.transform(queries)
        self.n_features_in_ = features.shape[1]
        if eval_set is not None:
            eval_data = as_oracle_set(eval_set, image_root)
            if list(eval_data.scales) != self.scales_:
                raise ValueError(f"eval_set has scales {eval_data.scales}, the training data {self.scales_}")
            evaluation = (self._features(eval_data), self._targets(eval_data))
        elif (split := self._validation_split(data)) is not None:
            train, held_out = split
            evaluation = (features[held_out], targets[held_out])
            features, targets = features[train], targets[train]
        else:
            evaluation = None
        self._fit_model(features, targets, evaluation, callback)
        return self

    def _validation_split(self, data: OracleSet):
        """Inner grouped split (train, held-out indices) for early stopping; None when ``validation_fraction`` is 0
        or there are fewer than 5 images."""
        if not self.validation_fraction or len(set(data.groups.tolist())) < 5:
            return None
        return grouped_split(data, self.validation_fraction, self.seed)

    def _features(self, data) -> np.ndarray:
        flags = self._feature_flags()
        queries = to_queries(data, flags["use_embedding"], flags["use_image"], **self._probe_inputs())
        return self.feature_builder_.transform(queries)

    # ---- predicting
    def _check_fitted(self) -> None:
        """scikit-learn's ``NotFittedError`` unless :meth:`fit` (or loading) has run; one attribute lookup when
        fitted (``check_is_fitted`` alone costs microseconds, a noticeable share of routing one query)."""
        if not hasattr(self, "feature_builder_"):
            check_is_fitted(self, "feature_builder_", msg=NOT_FITTED)

    def predict_proba(self, X, image_root=None) -> np.ndarray:
        """``(n, scales)``: per scale, the probability that the model answers correctly there (for
        ``target="oracle"``: that the scale is enough, P(label <= s)). ``X``: :class:`Queries` or oracle data."""
        self._check_fitted()
        data = X if isinstance(X, Queries) else as_oracle_set(X, image_root)
        return self.predict_proba_from_features(self._features(data))

    def predict_proba_from_features(self, features: np.ndarray) -> np.ndarray:
        """:meth:`predict_proba` on a feature matrix already built by ``feature_builder_.transform(queries)``
        (lets a caller time or reuse the two steps apart). Scales below the largest stay under 1
        (:func:`predictor.thresholds.clip_probabilities`), so threshold 1 routes every query to the largest."""
        self._check_fitted()
        proba = self._model_proba(features)
        if self.target == "oracle":
            proba = np.cumsum(proba, axis=1)
            proba[:, -1] = 1.0  # the largest scale is always "enough" (no rounding below 1)
        return clip_probabilities(proba)

    def predict_label_proba(self, X, image_root=None) -> np.ndarray:
        """``(n, scales)`` class probabilities of the oracle label (``target="oracle"`` only)."""
        self._check_fitted()
        if self.target != "oracle":
            raise ValueError("predict_label_proba needs target='oracle'; this predictor estimates correctness")
        return self._model_proba(self._features(X if isinstance(X, Queries) else as_oracle_set(X, image_root)))

    def predict(self, X, threshold: float | None = None, image_root=None, price: float | None = None) -> np.ndarray:
        """``(n,)`` scales at the predictor's operating point (``rule_``: the threshold rule at ``threshold_``, 0.5
        unless a calibrated one was saved, or the priced rule at ``price_``), or by the threshold rule at
        ``threshold`` (in [0, 1]: the smallest scale whose probability reaches it, the largest when none does), or
        by the priced rule at ``price`` (>= 0; each scale's nominal tokens, a probe's included). For
        ``target="oracle"`` without either, at the threshold rule: the most probable oracle label (direct
        classification)."""
        self._check_fitted()
        rule = getattr(self, "rule_", "threshold")
        if threshold is None and price is None and rule == "threshold" and self.target == "oracle":
            return np.asarray(self.scales_)[self.predict_label_proba(X, image_root).argmax(axis=1)]
        rule, value = operating_rule(
            rule, self.threshold_, getattr(self, "price_", None), at_threshold=threshold, at_price=price
        )
        tokens = routing_costs(np.asarray(self.scales_, dtype=np.float64), self.scales_, self.probe_scale_)
        return route_by_rule(self.predict_proba(X, image_root), self.scales_, rule, value, tokens)

    # ---- save / load
    def save_pretrained(
        self,
        directory: str | os.PathLike,
        *,
        threshold: float | None = None,
        calibration: dict | None = None,
        price: float | None = None,
    ) -> Path:
        """Write the predictor to ``directory`` (JSON + safetensors / LightGBM text; no pickle).

        The operating point saved: the priced rule at ``price`` when given, else the threshold rule at ``threshold``
        (default ``threshold_``); ``calibration`` records how it was chosen (a
        :class:`predictor.calibration.CalibratedRouter` passes them; when none is given, the operating point and
        record a loaded predictor came with, so re-saving one, e.g. in an AdaptiveM3 folder, keeps its rule and
        certificate)."""
        self._check_fitted()
        rule = "threshold" if threshold is not None else "price" if price is not None else None
        if rule is None and calibration is None:
            calibration = getattr(self, "calibration_", None)
            rule, price = getattr(self, "rule_", "threshold"), getattr(self, "price_", None)
        rule = rule or "threshold"
        threshold = check_threshold(self.threshold_ if threshold is None else threshold)  # kept: the threshold rule's
        price = check_price(price) if rule == "price" else None
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.feature_builder_.save(directory / FEATURES_NAME)
        state = self._save_model(directory)
        config = {
            "format_version": FORMAT_VERSION,
            "class": type(self).__name__,
            "params": _jsonable(self.get_params()),
            "scales": self.scales_,
            "fingerprint": self.fingerprint_,
            "rule": rule,
            "threshold": threshold,
            "price": price,
            "calibration": calibration,
            "n_features_in": self.n_features_in_,
            "model": state,
        }
        (directory / CONFIG_NAME).write_text(dumps_json(config, indent=2) + "\n", encoding="utf-8")
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, oracle_data=None, model_config=None) -> ScalePredictor:
        """Load a predictor of this class; with ``oracle_data`` (folder, table or OracleSet) or ``model_config``
        (config object, dict or model folder), refuse it with :class:`PredictorMismatchError` if it was built for
        other scales or embedding size. :func:`predictor.registry.load_predictor` loads any class."""
        directory = Path(directory)
        config, path = read_config(directory), directory / CONFIG_NAME
        if config["class"] != cls.__name__:
            raise TypeError(f"{directory} holds a {config['class']}, not a {cls.__name__}; use load_predictor()")
        check_compatible(config["fingerprint"], oracle_data, model_config, where=f"the predictor in {directory}")
        unknown = sorted(set(config["params"]) - set(cls._get_param_names()))
        if unknown:
            raise DamagedFileError(path, f"unknown parameters {unknown} for a {cls.__name__}", REFIT)
        predictor = cls(**_from_jsonable(cls, config["params"]))
        predictor.feature_builder_ = FeatureBuilder.load(directory / FEATURES_NAME)
        predictor.scales_ = list(config["scales"])
        predictor.fingerprint_ = config["fingerprint"]
        predictor.threshold_ = check_threshold(config["threshold"])
        predictor.rule_, predictor.price_ = _saved_rule(config, path)
        predictor.calibration_ = config.get("calibration")  # how the operating point was chosen (its certificate)
        certificate = (predictor.calibration_ or {}).get("certificate")
        if certificate is not None:
            from .risk_control import Certificate

            try:
                Certificate.from_dict(certificate)
            except TypeError as error:
                raise DamagedFileError(path, f"its certificate is malformed ({error})", REFIT) from None
        predictor.n_features_in_ = int(config["n_features_in"])
        try:
            predictor._load_model(directory, config["model"])
        except (KeyError, TypeError) as error:  # an entry missing from, or of another type in, "model"
            raise DamagedFileError(path, f"its 'model' entry is malformed ({error!r})", REFIT) from None
        return predictor


def read_config(directory: str | os.PathLike) -> dict:
    """The ``predictor.json`` of a saved predictor folder; clear errors for a missing file or an older format."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{Path(directory)} holds no saved predictor ({CONFIG_NAME} is missing)")
    config = read_json(path, REFIT)
    if not isinstance(config, dict):
        raise DamagedFileError(path, f"a JSON {type(config).__name__}, not an object", REFIT)
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        hint = " (format 1 predates the oracle -> oracle_kind rename: refit and save it again)" if version == 1 else ""
        raise ValueError(f"{path}: format version {version!r}, this code reads {FORMAT_VERSION}{hint}")
    missing = [key for key in CONFIG_KEYS if key not in config]
    if missing:
        raise DamagedFileError(path, f"the entries {missing} are missing", REFIT)
    for key, (kinds, what) in CONFIG_TYPES.items():
        value = config.get(key)
        if not isinstance(value, kinds) or isinstance(value, bool):
            raise DamagedFileError(path, f"{key!r} should be {what}, not {json.dumps(value)[:60]}", REFIT)
    scales = config["scales"]
    if not scales or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in scales):
        raise DamagedFileError(path, f"'scales' should be a list of whole numbers >= 1, not {scales}", REFIT)
    if any(a >= b for a, b in zip(scales, scales[1:])):  # the model's outputs are one per scale, in this order
        raise DamagedFileError(path, f"'scales' should be increasing, each scale once, not {scales}", REFIT)
    saved_for = (config["fingerprint"] or {}).get("scales")
    if saved_for is not None and list(saved_for) != list(scales):
        raise DamagedFileError(path, f"'scales' {scales} differ from the fingerprint's scales {saved_for}", REFIT)
    if not 0 <= config["threshold"] <= 1:  # NaN included
        raise DamagedFileError(path, f"'threshold' should be a number in [0, 1], not {config['threshold']}", REFIT)
    return config


def _saved_rule(config: dict, path: Path) -> tuple[str, float | None]:
    """``(rule, price)`` of a ``predictor.json``: the threshold rule when it names none (saved before prices)."""
    rule = config.get("rule") or "threshold"
    if rule not in RULES:
        raise DamagedFileError(path, f"'rule' should be one of {list(RULES)}, not {rule!r}", REFIT)
    if rule == "threshold":
        return rule, None
    try:
        return rule, check_price(config.get("price"))
    except ValueError as error:
        raise DamagedFileError(path, f"its price is not valid ({error})", REFIT) from None


def _jsonable(params: dict) -> dict:
    return {key: list(value) if isinstance(value, tuple) else value for key, value in params.items()}


def _from_jsonable(klass, params: dict) -> dict:
    """Lists back to tuples where the constructor's default is a tuple (JSON has no tuples)."""
    defaults = {name: p.default for name, p in inspect.signature(klass.__init__).parameters.items()}
    return {
        key: tuple(value) if isinstance(value, list) and isinstance(defaults.get(key), tuple) else value
        for key, value in params.items()
    }
