"""What every granularity generator version shares: the image size, the log-uniform draw and the config's
stored form."""

from __future__ import annotations

import math
from dataclasses import asdict, fields
from typing import TypeVar

import numpy as np

IMAGE_SIZE = 96  # the tiny model's 24x24 grid of 4 px patches


def log_uniform_int(rng: np.random.Generator, low: int, high: int) -> int:
    """An integer in ``[low, high]`` whose log is about uniform (each integer covers its +-0.5 interval)."""
    value = math.exp(rng.uniform(math.log(low - 0.5), math.log(high + 0.5)))
    return int(min(high, max(low, round(value))))


ConfigT = TypeVar("ConfigT", bound="StoredConfig")


class StoredConfig:
    """Base of every version's config dataclass: its dict form (stored in ``{split}.meta.json``), reading that back
    and one ``ValueError`` naming every broken bound, each message naming the version's class."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls: type[ConfigT], values: dict) -> ConfigT:
        """The config a ``.meta.json`` stores; unknown keys are refused (they come from another version)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; known: {sorted(known)}")
        return cls(**values)

    def refuse(self, problems: list[str]) -> None:
        """Raise one ``ValueError`` listing ``problems`` (the bounds ``__post_init__`` found broken), if any."""
        if problems:
            raise ValueError(f"invalid {type(self).__name__} {self.to_dict()}: " + "; ".join(problems))
