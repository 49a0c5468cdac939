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


def _close_progress_bars() -> None:
    """Close the progress bars a failed loop left open (tqdm tracks them in ``tqdm._instances``): the error line
    then starts a line of its own instead of trailing the bar."""
    try:
        from tqdm import tqdm
    except ImportError:
        return
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def use_threads(threads: int) -> None:
    """Set torch's CPU threads from a script's ``--threads`` (0: leave torch's default); a negative count is a user
    error (``ValueError``), found before any work, instead of torch's ``RuntimeError`` traceback."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise ValueError(f"--threads must be a whole number >= 0 (0: torch's default), got {threads!r}")
    if threads:
        import torch

        torch.set_num_threads(threads)


@contextmanager
def user_errors() -> Iterator[None]:
    """Run a script's body; a user error becomes ``error: MESSAGE`` on stderr and ``SystemExit(2)``, Ctrl-C the line
    ``interrupted (Ctrl-C)`` and ``SystemExit(130)``, and a warning one ``warning: MESSAGE`` line (not Python's two
    lines with the source)."""
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            yield
        except USER_ERRORS as error:
            if os.environ.get("M3_TRACEBACK"):
                raise
            _close_progress_bars()
            print(f"error: {one_line(error) or type(error).__name__}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        except KeyboardInterrupt:  # Ctrl-C: one line and the shell's code for SIGINT, not a traceback of where it hit
            if os.environ.get("M3_TRACEBACK"):
                raise
            _close_progress_bars()
            print("interrupted (Ctrl-C)", file=sys.stderr, flush=True)
            raise SystemExit(130) from None
