"""Tests that need an optional extra: skipped, with the install command, where it is missing; REQUIRED where
M3_REQUIRE_EXTRAS=1.

The README's two commands (install ``.[dev]``, run ``python -m pytest -q``) must pass on a fresh machine, so a missing
extra skips. ``.ci/run`` installs every extra and sets M3_REQUIRE_EXTRAS=1, so there a missing piece fails the run
instead of passing it silently. Every extra-needing test goes through :func:`need`, :func:`installed` or
:func:`absent`; ``tests/test_extras.py`` checks both paths.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import NoReturn

import pytest

REQUIRE = "M3_REQUIRE_EXTRAS"
INSTALL = {
    "lmms-eval": 'pip install --no-deps lmms-eval==0.7.3 && pip install -e ".[lmms-eval]"',
    "demo": 'pip install -e ".[demo]"',
    "browser-test": 'pip install -e ".[browser-test]"',
    "chromium": "apt-get install chromium chromium-driver",
}


def required() -> bool:
    """Whether a missing extra fails the run (``.ci/run`` sets M3_REQUIRE_EXTRAS=1 after installing them all)."""
    return os.environ.get(REQUIRE) == "1"


def absent(what: str, extra: str) -> NoReturn:
    """Skip (the whole module when called at import time), or fail where extras are required."""
    __tracebackhide__ = True  # pytest reports the calling test's line, not this one
    reason = f"{what}; install it with: {INSTALL[extra]}"
    if required():
        pytest.fail(f"{REQUIRE}=1 but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def _import(module: str) -> ModuleType | str:
    try:
        return importlib.import_module(module)
    except ImportError as error:
        return str(error).splitlines()[0] if str(error) else type(error).__name__


def need(module: str, extra: str) -> ModuleType:
    """``module``, imported; skip or fail (see :func:`absent`) when it does not import."""
    __tracebackhide__ = True
    found = _import(module)
    if isinstance(found, str):
        absent(f"the {extra} extra is missing ({module} does not import: {found})", extra)
    return found


def installed(module: str, extra: str) -> bool:
    """For a test whose extra covers only part of it: whether ``module`` imports (fails where extras are required)."""
    __tracebackhide__ = True
    found = _import(module)
    if isinstance(found, str) and required():
        absent(f"the {extra} extra is missing ({module} does not import: {found})", extra)
    return not isinstance(found, str)
