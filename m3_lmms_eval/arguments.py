"""The plugin's arguments, read in one place: a model's ``--model_args`` (with lmms-eval's ``--batch_size``,
``--max_batch_size`` and ``--device``) when the model is built, a task's ``generation_kwargs`` before its first doc.

Each argument is one row of a table (a model class's ``MODEL_ARGS``, :data:`GENERATION_KWARGS`): an :class:`Arg`
saying its kind, range or choices and default. :func:`read_args` reads a whole table; a value that does not fit is
one ``ValueError`` line naming the argument, the value and what it must be. Values arrive as lmms-eval gives them:
strings, or what its parser made of them (``"true"`` -> True, ``"9"`` -> 9, ``"9.0"`` -> 9.0), or YAML values
(``do_sample: "false"`` is a string). A new argument joins a model with one row::

    MODEL_ARGS = {**M3Adaptive.MODEL_ARGS, "price": Arg(float, low=0)}
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

UNSET = ("", "none", "null")  # an empty value: the argument's default
TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")
AUTO = "auto"


@dataclass(frozen=True)
class Arg:
    """How one argument reads: ``kind`` (int, float, bool or str), an inclusive range ``[low, high]`` for numbers, the
    allowed strings (``choices``), the value when unset (``default``), whether it must be given (``required``) and
    whether ``auto`` (or lmms-eval's ``auto:N``) stands for itself (``auto``: a batch size)."""

    kind: type
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    default: object = None
    required: bool = False
    auto: bool = False

    def wanted(self) -> str:
        """What a value must be, in words (the end of the error message)."""
        if self.kind is bool:
            return "true or false"
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.kind is str:
            return "a string"
        noun = "a whole number" if self.kind is int else "a finite number"
        if self.low is not None and self.high is not None:
            noun += f" in [{self.low:g}, {self.high:g}]"
        elif self.low is not None:
            noun += f" >= {self.low:g}"
        elif self.high is not None:
            noun += f" <= {self.high:g}"
        return noun + (" or auto" if self.auto else "")


def _convert(value, arg: Arg):
    """``value`` as ``arg.kind``; raises ``ValueError`` (without a message: :func:`read_value` words it)."""
    text = value.strip() if isinstance(value, str) else None
    if arg.kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if text is not None and text.lower() in TRUE + FALSE:
            return text.lower() in TRUE
        raise ValueError
    if arg.kind is str:
        if text is None:
            raise ValueError
        if arg.choices and text not in arg.choices:
            raise ValueError
        return text
    if isinstance(value, bool):  # True is 1 to Python, never a scale or a count here
        raise ValueError
    number = float(text) if text is not None else value
    if not isinstance(number, (int, float)) or not math.isfinite(number):
        raise ValueError
    if arg.kind is int:
        if number != int(number):
            raise ValueError
        number = int(number)
    else:
        number = float(number)
    if (arg.low is not None and number < arg.low) or (arg.high is not None and number > arg.high):
        raise ValueError
    return number


def read_value(name: str, value, arg: Arg, what: str = "model arg"):
    """One argument's value (``arg.default`` when unset: None, ``""`` or ``none``); ``ValueError`` in one line,
    ``"{what} {name}={value!r} must be ..."``."""
    if value is None or (isinstance(value, str) and value.strip().lower() in UNSET):
        if arg.required:
            raise ValueError(f"{what} {name} is required")
        return arg.default
    if arg.auto and isinstance(value, str) and value.strip().lower().split(":")[0] == AUTO:
        return AUTO
    try:
        return _convert(value, arg)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{what} {name}={value!r} must be {arg.wanted()}") from None


def read_args(table: Mapping[str, Arg], values: Mapping, what: str = "model arg", owner: str = "") -> dict:
    """Every argument of ``table`` read from ``values`` (see :func:`read_value`); a name the table lacks is refused,
    naming the known ones (``owner``: who is reading, e.g. the model id)."""
    unknown = sorted(set(values) - set(table))
    if unknown:
        prefix = f"{owner}: " if owner else ""
        raise ValueError(f"{prefix}unknown {what}(s) {unknown}; known: {', '.join(sorted(table))}")
    return {name: read_value(name, values.get(name), arg, what) for name, arg in table.items()}


def check_arg_string(arg_string: str, what: str = "model arg") -> None:
    """``ValueError`` naming an argument given twice in ``--model_args`` (``scale=9,scale=36``): lmms-eval's parser
    keeps the last value without a word. Commas inside quotes or brackets (a JSON value) do not split."""
    names, depth, quote, start = [], 0, "", 0
    for index, char in enumerate(f"{arg_string or ''},"):
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth <= 0:
            names.append(arg_string[start:index].split("=", 1)[0].strip())
            start = index + 1
    repeated = sorted({name for name in names if name and names.count(name) > 1})
    if repeated:
        raise ValueError(f"{what}(s) {repeated} given more than once in {arg_string!r}; give each once")


DEFAULT_MAX_NEW_TOKENS = 1024  # lmms-eval's llava_hf and the official fork's llava, when a task sets none

# a task's generation_kwargs, read as lmms-eval's llava_hf reads them (any other key is ignored, as there, and logged)
GENERATION_KWARGS = {
    "max_new_tokens": Arg(int, low=1, default=DEFAULT_MAX_NEW_TOKENS),
    "temperature": Arg(float, low=0, default=0.0),
    "do_sample": Arg(bool, default=False),
    "top_p": Arg(float, low=0, high=1),
    "num_beams": Arg(int, low=1, default=1),
}


def read_until(value, what: str = "generation_kwargs") -> list[str]:
    """A task's stop strings (``until``): a string or a list of strings (empty ones dropped)."""
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, (list, tuple)) or not all(isinstance(stop, str) for stop in stops):
        raise ValueError(f"{what} until={value!r} must be a string or a list of strings")
    return [stop for stop in stops if stop]
