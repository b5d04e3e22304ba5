"""Command-line plumbing of the ``python -m alignprop.*`` commands.

The implementation is :mod:`rewards.cli` (shared with ``internvl_scorer.py`` and
``benchmark_anti_periodic.py``); this module re-exports it so ``alignprop`` code
keeps one import path.
"""
from __future__ import annotations

from rewards.cli import UserError, parse_bool, report, run_cli, user_error_types

__all__ = ["UserError", "run_cli", "report", "parse_bool", "user_error_types"]
