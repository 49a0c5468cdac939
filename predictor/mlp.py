"""MLP scale predictor: a small torch MLP on the scale-1 embedding plus question (optionally image) features.

The embedding is the model's own scale-1 visual token, a by-product of the vision pass that answering needs
anyway, so this predictor costs one tiny MLP forward per query. Trained with Adam on the per-scale correctness
(binary cross-entropy per scale) or on the oracle label (cross-entropy), with early stopping on a grouped
held-out split; the weights are saved as safetensors.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from m3.files import DamagedFileError, safetensors_header

from .base import REFIT, ScalePredictor

WEIGHTS_NAME = "model.safetensors"


def build_network(n_features: int, n_outputs: int, hidden_sizes, dropout: float) -> nn.Sequential:
    """Linear -> ReLU -> Dropout blocks, then a linear layer with one logit per scale."""
    layers: list[nn.Module] = []
    width = n_features
    for hidden in hidden_sizes:
        layers += [nn.Linear(width, int(hidden)), nn.ReLU(), nn.Dropout(dropout)]
        width = int(hidden)
    layers.append(nn.Linear(width, n_outputs))
    return nn.Sequential(*layers)


class MLPScalePredictor(ScalePredictor):
    """Torch MLP on the 1-token embedding plus question features (see :class:`predictor.base.ScalePredictor`).

    ``use_image`` adds the cheap image statistics; ``tfidf_max_features`` caps the question vocabulary;
    ``probe="confidence"`` / ``"hidden"`` reads the model's answer at ``probe_scale`` first (a probe predictor).
    Training stops after ``patience`` epochs without a better held-out loss (``validation_fraction`` of the
    images, or ``eval_set``) and keeps the best epoch's weights.
    """

    def __init__(
        self,
        target: str = "correct",
        oracle_kind: str = "monotone",
        hidden_sizes: tuple[int, ...] = (256,),
        dropout: float = 0.1,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-4,
        batch_size: int = 128,
        max_epochs: int = 100,
        patience: int = 10,
        validation_fraction: float = 0.15,
        use_question: bool = True,
        use_image: bool = False,
        tfidf_max_features: int = 256,
        probe: str = "none",
        probe_scale: int = 1,
        seed: int = 0,
    ) -> None:
        self.target = target
        self.oracle_kind = oracle_kind
        self.hidden_sizes = hidden_sizes
        self.dropout = dropout
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.use_question = use_question
        self.use_image = use_image
        self.tfidf_max_features = tfidf_max_features
        self.probe = probe
        self.probe_scale = probe_scale
        self.seed = seed

    def _feature_flags(self) -> dict:
        return dict(
            use_embedding=True,
            use_question=self.use_question,
            use_image=self.use_image,
            tfidf_max_features=self.tfidf_max_features,
            **self._probe_flags(),
        )

    def _loss(self) -> nn.Module:
        return nn.BCEWithLogitsLoss() if self.target == "correct" else nn.CrossEntropyLoss()

    def _fit_model(self, features, targets, evaluation, callback: Callable[[int, float], None] | None) -> None:
        if self.max_epochs < 1 or self.batch_size < 1:
            raise ValueError(f"max_epochs and batch_size must be >= 1, got {self.max_epochs} and {self.batch_size}")
        x = torch.from_numpy(features)
        y = torch.from_numpy(targets)
        loss_fn = self._loss()
        with torch.random.fork_rng(devices=[]):  # seeded init and shuffling without touching the caller's RNG
            torch.manual_seed(self.seed)
            network = build_network(x.shape[1], len(self.scales_), self.hidden_sizes, self.dropout)
            optimizer = torch.optim.AdamW(network.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)
            generator = torch.Generator().manual_seed(self.seed)
            eval_x = eval_y = None
            if evaluation is not None:
                eval_x, eval_y = torch.from_numpy(evaluation[0]), torch.from_numpy(evaluation[1])
            best = (float("inf"), 0, None)
            self.history_: list[dict] = []
            for epoch in range(1, self.max_epochs + 1):
                network.train()
                total = 0.0
                for batch in torch.randperm(len(x), generator=generator).split(self.batch_size):
                    optimizer.zero_grad()
                    loss = loss_fn(network(x[batch]), y[batch])
                    loss.backward()
                    optimizer.step()
                    total += loss.item() * len(batch)
                record = {"epoch": epoch, "train_loss": total / len(x)}
                if eval_x is not None:
                    network.eval()
                    with torch.no_grad():
                        val_loss = loss_fn(network(eval_x), eval_y).item()
                    record["validation_loss"] = val_loss
                    self.history_.append(record)
                    if callback is not None:
                        callback(epoch, val_loss)
                    if val_loss < best[0] - 1e-6:
                        best = (val_loss, epoch, {k: v.clone() for k, v in network.state_dict().items()})
                    elif epoch - best[1] >= self.patience:
                        break
                else:
                    self.history_.append(record)
            if best[2] is not None:
                network.load_state_dict(best[2])
        self.best_epoch_ = best[1] if best[2] is not None else self.max_epochs
        self.network_ = network.eval()
        self._layers = None

    def _model_proba(self, features: np.ndarray) -> np.ndarray:
        """The network's forward in numpy: for one query, torch's per-operation overhead (tens of microseconds per
        layer) would cost more than the arithmetic; the weights are the trained ones, dropout is off at inference."""
        x = features.astype(np.float32, copy=False)
        layers = self._numpy_layers()
        for index, (weight, bias) in enumerate(layers):
            x = x @ weight + bias
            if index < len(layers) - 1:
                x = np.maximum(x, 0.0)
        logits = x.astype(np.float64)
        if self.target == "correct":
            return np.exp(-np.logaddexp(0.0, -logits))  # the sigmoid, without overflow at large -logits
        logits -= logits.max(axis=1, keepdims=True)
        odds = np.exp(logits)
        return odds / odds.sum(axis=1, keepdims=True)

    def _numpy_layers(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(weight.T, bias)`` of each linear layer as numpy arrays (cached after fit / load)."""
        if getattr(self, "_layers", None) is None:
            linears = [m for m in self.network_ if isinstance(m, nn.Linear)]
            self._layers = [(m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy()) for m in linears]
        return self._layers

    def _save_model(self, path: Path) -> dict:
        save_file({k: v.contiguous() for k, v in self.network_.state_dict().items()}, str(path / WEIGHTS_NAME))
        return {"weights": WEIGHTS_NAME, "best_epoch": self.best_epoch_, "history": self.history_}

    def _load_model(self, path: Path, state: dict) -> None:
        network = build_network(self.n_features_in_, len(self.scales_), self.hidden_sizes, self.dropout)
        weights = path / state["weights"]
        safetensors_header(weights, REFIT)
        try:
            network.load_state_dict(load_file(str(weights)))
        except RuntimeError as error:  # missing keys or other shapes: not the network predictor.json describes
            problem = str(error).splitlines()[-1].strip() if str(error).strip() else type(error).__name__
            raise DamagedFileError(
                weights, f"its tensors do not fit the network in predictor.json: {problem}", REFIT
            ) from None
        self.network_ = network.eval()
        self._layers = None
        self.best_epoch_ = state["best_epoch"]
        self.history_ = state["history"]
