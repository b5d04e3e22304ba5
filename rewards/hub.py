"""One clear error for models that cannot be found (offline, wrong path, no weights).

Every loader in the project (Kontext pipeline, InternVL, LPIPS, FaceNet, aesthetic
heads, AIDE) turns "could not load" into :class:`ModelUnavailableError`, whose
message names the model, where we looked, and the flag that takes a local path.
"""
from __future__ import annotations

import os


class ModelUnavailableError(RuntimeError):
    """A model or weight file could not be loaded; the message says how to fix it."""


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def model_unavailable(what: str, source: str, flag: str, exc: BaseException | None = None,
                      hint: str = "") -> ModelUnavailableError:
    """Build the error raised when ``what`` could not be loaded from ``source``.

    ``flag`` is the command-line flag (or keyword) that accepts a local path.
    """
    reason = f" ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})" if exc else ""
    mode = " HF_HUB_OFFLINE=1 is set, so nothing is downloaded." if offline() else ""
    msg = (
        f"Could not load {what} from {source!r}{reason}.{mode} "
        f"Download it on a machine with network access (e.g. `huggingface-cli download "
        f"{source}`) and pass the local directory or file with {flag}."
    )
    if hint:
        msg += " " + hint
    return ModelUnavailableError(msg)
