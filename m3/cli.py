"""The one rule every script follows for a user error: one ``error: ...`` line on stderr and exit code 2.

A user error is what the library raises about its inputs: ``ValueError`` (bad values, damaged files, mismatched
models or oracles, non-finite numbers) and ``OSError`` (missing files, unreadable images). Anything else is a bug
and keeps its traceback. A message of several lines (a list of differences) is joined into one.
``M3_TRACEBACK=1`` shows the traceback of a user error too.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

USER_ERRORS = (ValueError, OSError)


def one_line(message) -> str:
    return " ".join(line.strip() for line in str(message).splitlines() if line.strip())


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {one_line(message)}", file=sys.stderr, flush=True)


@contextmanager
def user_errors() -> Iterator[None]:
    """Run a script's body; a user error becomes ``error: MESSAGE`` on stderr and ``SystemExit(2)``, and a warning
    one ``warning: MESSAGE`` line (not Python's two lines with the source)."""
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            yield
        except USER_ERRORS as error:
            if os.environ.get("M3_TRACEBACK"):
                raise
            print(f"error: {one_line(error) or type(error).__name__}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
