"""Shared command-line plumbing for ``alignprop.generate`` and ``alignprop.evaluate``.

User mistakes (a missing folder, a bad flag value, a model that cannot be
loaded) end the program with exit code 2 and ONE line on stderr, never a
traceback; programming errors still show their traceback (exit code 1).
"""
from __future__ import annotations

import sys
from typing import Callable, Sequence


class UserError(ValueError):
    """A problem the user can fix from the command line; printed as one line."""


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exception types that mean "the user asked for something impossible"."""
    from rewards.hub import ModelUnavailableError
    from rewards.images import ImageLoadError

    types: list[type[BaseException]] = [UserError, ValueError, FileNotFoundError,
                                        NotADirectoryError, ModelUnavailableError, ImageLoadError,
                                        NotImplementedError]
    try:
        from alignprop.reward_flags import RewardBuildError

        types.append(RewardBuildError)
    except ImportError:  # reward_flags is optional for generate
        pass
    return tuple(types)


def run_cli(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None, prog: str) -> int:
    """Call ``main(argv)``; turn user errors into ``prog: error: ...`` and exit code 2."""
    import os

    try:
        return main(argv)
    except user_error_types() as exc:
        if os.environ.get("ALIGNPROP_DEBUG"):  # developers: see where it came from
            raise
        msg = " ".join(str(exc).split()) or type(exc).__name__
        print(f"{prog}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


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
