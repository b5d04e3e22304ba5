"""Test-wide settings: never touch the network, keep CPU threads modest."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


def _log_to_current_stderr() -> None:
    """diffusers and transformers give their library loggers a StreamHandler bound to the
    sys.stderr of the moment they first log; when that was a test's capsys stream (closed
    after that test), every later message became a "--- Logging error ---" traceback in
    another test's stderr. Their handlers write to the current sys.stderr instead."""
    import logging

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from common.cli import CurrentStderrHandler

    for lib in (diffusers_logging, transformers_logging):
        root = lib._get_library_root_logger()
        for h in list(root.handlers):
            if type(h) is logging.StreamHandler:
                new = CurrentStderrHandler()
                new.setLevel(h.level)
                new.setFormatter(h.formatter)
                root.removeHandler(h)
                root.addHandler(new)
                if getattr(lib, "_default_handler", None) is h:   # enable_default_handler()
                    lib._default_handler = new


_log_to_current_stderr()
