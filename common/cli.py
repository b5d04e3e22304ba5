"""One way for every command to turn an expected failure into one line and exit code 2.

Used by ``alignprop_fluxkontext.py``, ``internvl_scorer.py``,
``benchmark_anti_periodic.py`` and the ``python -m alignprop.*`` commands. It lives in the
bottom package so the scorer and the benchmark need nothing from ``alignprop/``.

A user mistake (a missing folder, a bad flag value, a model that cannot be loaded, a
reward that cannot be built) ends the program with ONE line on stderr,
``<prog>: error: <message>``, and exit code 2 — the same status argparse uses for
unknown flags. Programming errors keep their traceback (exit code 1).
``ALIGNPROP_DEBUG=1`` shows the traceback of an expected failure too.

Errors raised inside ``alignprop/`` that mean "the user asked for something
impossible" subclass :class:`UserError`, so this module needs no list of them.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import warnings
from typing import Callable, Sequence

from .hub import ModelUnavailableError

EXIT_USER_ERROR = 2
DEBUG_ENV = "ALIGNPROP_DEBUG"


class UserError(ValueError):
    """A problem the user can fix from the command line; printed as one line, exit code 2."""


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exception types that mean "the user asked for something impossible"."""
    # ValueError covers UserError, common.images.ImageLoadError and every validation error
    # of the flag dataclasses; NotImplementedError is what the reward registry raises for a
    # missing module.
    return (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
            PermissionError, ModelUnavailableError, NotImplementedError)


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (multi-line messages are joined)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _close_progress_bars() -> None:
    """End any open tqdm bar so the error starts on a fresh line, not after the bar."""
    tqdm_module = sys.modules.get("tqdm")
    bars = getattr(getattr(tqdm_module, "tqdm", None), "_instances", None) if tqdm_module else None
    for bar in list(bars or ()):
        try:
            bar.close()
        except Exception:  # a bar that cannot close must not hide the error itself
            pass


def report(prog: str, exc: BaseException) -> int:
    """Print ``prog: error: message`` on stderr; return the exit code for it."""
    _close_progress_bars()
    print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
    return EXIT_USER_ERROR


def _one_line_warnings() -> None:
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"warning: {' '.join(str(message).split())}", file=file or sys.stderr)

    warnings.showwarning = show


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None,
            prog: str) -> int:
    """Call ``main(argv)``; turn expected failures into one line and exit code 2.

    ``main`` returns its exit code (None counts as 0). Warnings are printed as one
    ``warning: ...`` line each unless debugging.
    """
    debug = debug_enabled()
    if not debug:
        _one_line_warnings()
    try:
        rc = main(argv)
    except user_error_types() as exc:
        if debug:  # developers: see where it came from
            raise
        return report(prog, exc)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `... | head`: the reader left; not an error of ours
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    return 0 if rc is None else int(rc)


class CurrentStderrHandler(logging.StreamHandler):
    """A log handler that writes to whatever ``sys.stderr`` is when a record is emitted.

    ``logging.basicConfig`` binds the stream object of its first call for the life of the
    process; when that was a replaced stderr (a caller capturing output, a test), later
    records went to a closed file as "--- Logging error ---" tracebacks."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):   # StreamHandler.__init__ assigns it; the property decides
        pass


def command_line(prog: str, args: dict, skip: Sequence[str] = ()) -> str:
    """The command line that re-runs parsed ``args`` (recorded in manifests): a switch is
    written bare when on and left out when off (``--force True`` is not a command argparse
    accepts); the flags in ``skip`` are left out."""
    parts = [prog]
    for k, v in args.items():
        if k in skip:
            continue
        if isinstance(v, bool):
            parts += [f"--{k}"] if v else []
        else:
            parts.append(f"--{k} {v}")
    return " ".join(parts)


def parse_bool(value: str | bool) -> bool:
    """argparse ``type=`` for true/false flags written as values (``--x false``)."""
    if isinstance(value, bool):
        return value
    v = value.strip().lower()
    if v in ("1", "true", "yes", "y", "on"):
        return True
    if v in ("0", "false", "no", "n", "off"):
        return False
    raise UserError(f"expected true or false, got {value!r}")


# --------------------------------------------------------------------------- argparse types
# ``type=`` functions for numeric flags: argparse turns their ArgumentTypeError into its own
# one-line usage error naming the flag.
def positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return v


def nonneg_int(s: str) -> int:
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {s}")
    return v


def int_at_least(low: int) -> Callable[[str], int]:
    """A ``type=`` for an integer flag with a lower bound other than 0 or 1 (the demos'
    ``--steps``, which need two optimizer steps)."""
    def parse(s: str) -> int:
        v = int(s)
        if v < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {s}")
        return v

    parse.__name__ = "int"  # argparse names it in "invalid int value"
    return parse


def positive_float(s: str) -> float:
    v = float(s)
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {s}")
    return v


def finite_float(s: str) -> float:
    v = float(s)
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be finite, got {s}")
    return v


def nonneg_float(s: str) -> float:
    v = float(s)
    if not (v >= 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be >= 0, got {s}")
    return v


def fraction(s: str) -> float:
    v = float(s)
    if not (0 < v <= 1):
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {s}")
    return v


def amplitude(s: str) -> float:
    v = float(s)
    if not (0 < v <= 1):
        raise argparse.ArgumentTypeError(f"amplitude must be in (0, 1] ([0,1] pixel units), got {s}")
    return v


def unit_float(s: str) -> float:
    v = finite_float(s)
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {s}")
    return v


def jpeg_quality(s: str) -> int:
    v = int(s)
    if not (0 <= v <= 100):
        raise argparse.ArgumentTypeError(f"JPEG quality must be 0 (PNG) or 1..100, got {s}")
    return v


__all__ = ["CurrentStderrHandler", "positive_int", "nonneg_int", "int_at_least", "positive_float",
           "finite_float", "nonneg_float", "fraction", "amplitude", "unit_float", "jpeg_quality",
           "UserError", "run_cli", "report", "one_line", "user_error_types", "parse_bool",
           "debug_enabled", "EXIT_USER_ERROR"]
