"""The original trainer's flags on our training parser (table: ``rewards/original_flags.py``).

``alias`` flags need nothing here. ``convert`` flags are added by the functions below:
those whose meaning depends on other flags (truncated backprop needs --sample_num_steps;
--logdir/--run_name build --output_dir) are stored under ``original_*`` names during
parsing and translated by :func:`apply_original` once every flag is known.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any, Sequence

from rewards.cli import UserError, parse_bool
from rewards.original_flags import OriginalFlag, add_original_flags, refusal, table

# The original's crispness_anchor_weight default: the crispness floor guards every training
# run that has another reward term (alone it is no objective, so "no reward" stays an error).
TRAIN_CRISPNESS_DEFAULT = 0.2
_ORIGINAL_MINMAX = (0, 50)  # TRL's truncated_rand_backprop_minmax default


class _Store(argparse.Action):
    """Parse the value with ``convert`` and store it under ``original_<name>``."""

    def __init__(self, option_strings, dest, convert=None, check=None, **kw):
        self.convert, self.check = convert, check
        kw["default"] = argparse.SUPPRESS
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        value = self.convert(values) if self.convert else values
        if self.check:
            self.check(value)
        setattr(namespace, self.dest, value)


def _bool_flag(group, flag: OriginalFlag, check=None, dest=None):
    group.add_argument(flag.name, dest=dest or f"original_{flag.dest}", action=_Store,
                       nargs="?", const="true", convert=lambda v: parse_bool(v), check=check,
                       metavar="BOOL", help=f"-> {flag.ours}: {flag.note}")


def _minmax(values: Sequence[str]) -> tuple[int, int]:
    text = " ".join(values).replace("(", " ").replace(")", " ").replace(",", " ")
    try:
        lo, hi = (int(float(v)) for v in text.split())
    except ValueError:
        raise UserError(f"--truncated_rand_backprop_minmax takes two integers (min max), got "
                        f"{' '.join(values)!r}") from None
    if not 0 <= lo <= hi:
        raise UserError(f"--truncated_rand_backprop_minmax needs 0 <= min <= max, got {lo} {hi}")
    return lo, hi


def _refuse_when(bad, flag: OriginalFlag):
    """A check for _Store: refuse ``flag`` (one line, its reason) when ``bad(value)``."""
    def check(value):
        if bad(value):
            raise UserError(refusal(flag))
    return check


def _converters() -> dict:
    """Original flag -> function(group, flag) adding it to the parser's original-flags group."""
    def harmless_value(bad):  # e.g. --use_lora true is what we do; false is refused
        return lambda group, flag: _bool_flag(group, flag, check=_refuse_when(bad, flag))

    def sample_eta(group, flag):
        group.add_argument(flag.name, dest="original_sample_eta", action=_Store, type=float,
                           check=_refuse_when(lambda eta: eta != 0, flag),
                           help=f"refused unless 0: {flag.note}")

    def text(group, flag):
        group.add_argument(flag.name, dest=f"original_{flag.dest}", action=_Store,
                           metavar="DIR" if flag.name == "--logdir" else "NAME",
                           help=f"-> {flag.ours}" + (f": {flag.note}" if flag.note else ""))

    def trunc_timestep(group, flag):
        group.add_argument(flag.name, dest="original_truncated_backprop_timestep", action=_Store,
                           type=int, metavar="T", help=f"-> {flag.ours}: {flag.note}")

    def trunc_minmax(group, flag):
        group.add_argument(flag.name, dest="original_truncated_rand_backprop_minmax",
                           action=_Store, nargs="+", convert=_minmax, metavar="N",
                           help=f"-> {flag.ours}: {flag.note}")

    return {"--use_lora": harmless_value(lambda on: not on),
            "--push_to_hub": harmless_value(lambda on: on),
            "--sample_eta": sample_eta, "--debug_images": _bool_flag,
            "--exp_name": text, "--run_name": text, "--logdir": text,
            "--truncated_backprop_rand": _bool_flag,
            "--truncated_backprop_timestep": trunc_timestep,
            "--truncated_rand_backprop_minmax": trunc_minmax}


def add_train_original_flags(parser: argparse.ArgumentParser) -> None:
    add_original_flags(parser, "train", _converters())


def original_names() -> set[str]:
    """Original trainer flag names (without dashes) that are not ours."""
    return {f.dest for f in table("train") if f.status != "same"}


def preset_tokens(preset: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Split a preset into (our flags, command-line tokens for the original's flags)."""
    ours, tokens = {}, []
    names = original_names()
    for key, value in preset.items():
        if key not in names:
            ours[key] = value
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        tokens.append(f"--{key}")
        tokens += [str(v).lower() if isinstance(v, bool) else str(v) for v in values]
    return ours, tokens


def _given(argv: Sequence[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def apply_original(train, rewards, extra: argparse.Namespace | None, argv: Sequence[str],
                   preset: dict[str, Any] | None = None):
    """Translate the stored original flags into our dataclasses; return (train, rewards)."""
    got = {k[len("original_"):]: v for k, v in vars(extra or argparse.Namespace()).items()
           if k.startswith("original_")}
    changes: dict[str, Any] = {}
    preset = preset or {}
    if got.get("debug_images"):
        changes["log_image_freq"] = 1
    # --logdir / --run_name / --exp_name: the run folder and the tracker's run name.
    run_name = got.get("run_name") or got.get("exp_name")
    if run_name and not train.tracker_run_name:
        changes["tracker_run_name"] = run_name
    if "logdir" in got and not (_given(argv, "--output_dir") or "output_dir" in preset):
        changes["output_dir"] = os.path.join(got["logdir"], got.get("run_name") or "")
        changes["output_dir"] = changes["output_dir"].rstrip("/") or got["logdir"]
    # Truncated backprop: TRL detaches the denoising steps with index < T, so the last
    # N - T steps carry gradients (N = --sample_num_steps).
    n = train.sample_num_steps
    rand = got.get("truncated_backprop_rand")
    if rand is None and "truncated_rand_backprop_minmax" in got:
        rand = True
    if rand is None and "truncated_backprop_timestep" in got:
        rand = False
    if rand is True:
        lo, hi = got.get("truncated_rand_backprop_minmax", _ORIGINAL_MINMAX)
        k_lo, k_hi = max(1, min(n, n - hi)), max(1, min(n, n - lo))
        changes.update(truncated_backprop="random", backprop_steps_min=k_lo,
                       backprop_steps_max=k_hi)
    elif rand is False:
        t = got.get("truncated_backprop_timestep", 49)
        changes.update(truncated_backprop="fixed", backprop_steps=max(1, min(n, n - t)))
    if changes:
        train = dataclasses.replace(train, **changes)  # re-validated in __post_init__
    if rewards.crispness_weight is None:
        from .reward_flags import reward_specs

        others = reward_specs(rewards)
        rewards = dataclasses.replace(
            rewards, crispness_weight=TRAIN_CRISPNESS_DEFAULT if others else 0.0)
    return train, rewards


__all__ = ["add_train_original_flags", "apply_original", "preset_tokens", "original_names",
           "TRAIN_CRISPNESS_DEFAULT"]
