"""LightGBM scale predictor: gradient-boosted trees on image and question features (optionally the embedding).

``target="correct"``: one binary booster over (query, scale) pairs, with ``log2(scale)`` as the last feature. It
shares what it learns across scales, and routing a query is ONE ``predict`` call on its ``len(scales)`` rows
(five calls to five per-scale boosters cost about five times as much per query). ``target="oracle"``: one
multiclass booster over the scales. Training labels that are all equal give a constant instead of a booster.
Early stopping uses a grouped held-out split of the images; models are saved in LightGBM's text format
(``booster.save_model``) and read back with ``lgb.Booster(model_file=...)``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from m3.files import DamagedFileError

from .base import REFIT, ScalePredictor

BOOSTER_NAME = "booster.txt"


def check_booster_text(text: str, path: Path) -> None:
    """Refuse a LightGBM text model that is not complete before LightGBM parses it: its C++ parser crashes the
    process (segfault or abort) on a truncated file, or silently loads the trees that survived.

    A complete ``booster.save_model`` file starts with ``tree``, lists the byte size of every tree in
    ``tree_sizes=``, holds exactly those trees, then ``end of trees``, the feature importances, the parameters up to
    ``end of parameters``, and ends with a ``pandas_categorical:`` line."""
    if not text.startswith("tree\n"):
        raise DamagedFileError(path, "it does not start like a LightGBM text model", REFIT)
    for marker in ("end of trees", "end of parameters"):
        if f"\n{marker}\n" not in text:
            raise DamagedFileError(path, f"its '{marker}' line is missing (the file is cut short)", REFIT)
    if not text.rstrip().rsplit("\n", 1)[-1].startswith("pandas_categorical:"):
        raise DamagedFileError(path, "it does not end with LightGBM's pandas_categorical line", REFIT)
    sizes = re.search(r"^tree_sizes=(.*)$", text, re.MULTILINE)
    first = re.search(r"^Tree=0$", text, re.MULTILINE)
    if sizes is None or first is None:
        raise DamagedFileError(path, "its tree_sizes line or its first tree is missing", REFIT)
    expected = [int(size) for size in sizes.group(1).split()]
    trees = text[first.start() : text.index("\nend of trees\n") + 1]
    found = len(re.findall(r"^Tree=\d+$", trees, re.MULTILINE))
    size = len(trees.encode())
    if found != len(expected) or size != sum(expected):
        problem = f"{found} trees in {size} bytes, its header lists {len(expected)} in {sum(expected)}"
        raise DamagedFileError(path, problem, REFIT)


class LGBMScalePredictor(ScalePredictor):
    """LightGBM on cheap image + question features; ``use_embedding=True`` adds the scale-1 embedding.

    Without the embedding the predictor needs no model forward at all: it can route before the vision tower runs.
    ``probe="confidence"`` / ``"hidden"`` reads the model's answer at ``probe_scale`` first (a probe predictor).
    """

    def __init__(
        self,
        target: str = "correct",
        oracle_kind: str = "monotone",
        use_embedding: bool = False,
        use_image: bool = True,
        use_question: bool = True,
        n_estimators: int = 300,
        learning_rate: float = 0.05,
        num_leaves: int = 15,
        min_child_samples: int = 20,
        feature_fraction: float = 0.9,
        bagging_fraction: float = 0.9,
        lambda_l2: float = 1.0,
        early_stopping_rounds: int = 30,
        validation_fraction: float = 0.15,
        tfidf_max_features: int = 256,
        probe: str = "none",
        probe_scale: int = 1,
        seed: int = 0,
        n_jobs: int = 1,
    ) -> None:
        self.target = target
        self.oracle_kind = oracle_kind
        self.use_embedding = use_embedding
        self.use_image = use_image
        self.use_question = use_question
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.feature_fraction = feature_fraction
        self.bagging_fraction = bagging_fraction
        self.lambda_l2 = lambda_l2
        self.early_stopping_rounds = early_stopping_rounds
        self.validation_fraction = validation_fraction
        self.tfidf_max_features = tfidf_max_features
        self.probe = probe
        self.probe_scale = probe_scale
        self.seed = seed
        self.n_jobs = n_jobs

    def _feature_flags(self) -> dict:
        return dict(
            use_embedding=self.use_embedding,
            use_question=self.use_question,
            use_image=self.use_image,
            tfidf_max_features=self.tfidf_max_features,
            **self._probe_flags(),
        )

    def _params(self, objective: str) -> dict:
        params = {
            "objective": objective,
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_child_samples,
            "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction,
            "bagging_freq": 1 if self.bagging_fraction < 1 else 0,
            "lambda_l2": self.lambda_l2,
            "seed": self.seed,
            "deterministic": True,
            "force_row_wise": True,
            "num_threads": self.n_jobs,
            "verbose": -1,
        }
        if objective == "multiclass":
            params["num_class"] = len(self.scales_)
        return params

    def _train(self, objective: str, features, labels, evaluation):
        """One booster, early-stopped on ``evaluation`` when given, cut to its best round."""
        import lightgbm as lgb

        train_set = lgb.Dataset(np.ascontiguousarray(features), np.ascontiguousarray(labels), free_raw_data=True)
        valid_sets, callbacks = [], []
        if evaluation is not None:
            held_x, held_y = (np.ascontiguousarray(a) for a in evaluation)
            valid_sets = [lgb.Dataset(held_x, held_y, reference=train_set)]
            callbacks = [lgb.early_stopping(self.early_stopping_rounds, verbose=False)]
        booster = lgb.train(
            self._params(objective), train_set, self.n_estimators, valid_sets=valid_sets, callbacks=callbacks
        )
        rounds = booster.best_iteration if evaluation is not None and booster.best_iteration > 0 else -1
        # re-read from text: the in-memory model is then exactly the one save_pretrained writes
        return lgb.Booster(model_str=booster.model_to_string(num_iteration=rounds)), booster.best_score

    def _stack(self, features: np.ndarray) -> np.ndarray:
        """``(n * scales, features + 1)``: each query once per scale, with ``log2(scale)`` appended."""
        n, scales = len(features), np.log2(np.asarray(self.scales_, dtype=np.float32))
        stacked = np.repeat(features, len(scales), axis=0)
        return np.concatenate([stacked, np.tile(scales, n)[:, None]], axis=1)

    def _fit_model(self, features, targets, evaluation, callback) -> None:
        if self.n_estimators < 1:
            raise ValueError(f"n_estimators must be >= 1, got {self.n_estimators}")
        if self.target == "correct":
            objective, x, y = "binary", self._stack(features), targets.ravel()
            if evaluation is not None:
                evaluation = (self._stack(evaluation[0]), evaluation[1].ravel())
        else:
            objective, x, y = "multiclass", features, targets
        self.booster_ = self.constant_ = None
        if y.min() == y.max():  # one class only: nothing to learn
            self.constant_ = float(y[0]) if self.target == "correct" else np.eye(len(self.scales_))[y[0]].tolist()
            return
        self.booster_, score = self._train(objective, x, y, evaluation)
        losses = list(score.get("valid_0", {}).values())
        if callback is not None and losses:
            callback(1, float(losses[0]))

    def _model_proba(self, features: np.ndarray) -> np.ndarray:
        n, k = len(features), len(self.scales_)
        if self.booster_ is None:
            if self.target == "correct":
                return np.full((n, k), self.constant_)
            return np.tile(np.asarray(self.constant_, dtype=np.float64), (n, 1))
        x = self._stack(features) if self.target == "correct" else features
        return np.asarray(self.booster_.predict(x, num_threads=self.n_jobs), dtype=np.float64).reshape(n, k)

    def _save_model(self, path: Path) -> dict:
        if self.booster_ is None:
            return {"booster": None, "constant": self.constant_}
        self.booster_.save_model(str(path / BOOSTER_NAME))
        return {"booster": BOOSTER_NAME, "constant": None}

    def _load_model(self, path: Path, state: dict) -> None:
        import lightgbm as lgb

        self.booster_, self.constant_ = None, state["constant"]
        if state["booster"] is None:
            return
        file = path / state["booster"]
        text = file.read_text(encoding="utf-8", errors="replace")
        check_booster_text(text, file)
        self.booster_ = lgb.Booster(model_str=text)
        expected = self.n_features_in_ + (self.target == "correct")  # the stacked log2(scale) column
        if self.booster_.num_feature() != expected:
            raise DamagedFileError(
                file, f"{self.booster_.num_feature()} features, predictor.json describes {expected}", REFIT
            )
