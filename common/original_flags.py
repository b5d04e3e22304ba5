"""The original project's flags: one table, read by the trainer, the scorer and the benchmark.

Users come from the original ``promptable-differentiable-rewards`` scripts (their trainer ran
on a TRL fork that can no longer be installed) with command lines and presets. Every flag
those scripts took is listed here once, per command, as one of

* ``same``    -- our flag has the same name and meaning (nothing to do),
* ``alias``   -- we renamed it: the original name sets our flag (``ours``) unchanged,
* ``convert`` -- accepted with the original meaning, translated to our flags by the
  command (``ours`` says into what),
* ``refused`` -- not supported; the command stops with one line that says why and what to
  use instead (``note``).

Aliases are added to a parser in their own ``--help`` group, so the main list stays
readable. ``docs/original_flags.md`` explains the table for users of the original;
``tests/test_original_flags.py`` runs every flag of the original through the three parsers.

This module answers "what happens to an original flag" for every command: the table, the
argparse plumbing, and the pure translation of the trainer's ``convert`` flags into our flag
values (:func:`original_changes`). It lives in the bottom package because the trainer, the
scorer and the benchmark all read it.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .cli import UserError, parse_bool

STATUSES = ("same", "alias", "convert", "refused")
HELP_GROUP = ("flags of the original promptable-differentiable-rewards scripts (accepted "
              "under their old names, or refused with the replacement; docs/original_flags.md)")


@dataclass(frozen=True)
class OriginalFlag:
    command: str            # "train" | "scorer" | "benchmark"
    name: str               # the original flag, e.g. "--crispness_anchor_weight"
    status: str             # one of STATUSES
    ours: str = ""          # our flag(s) it sets / the replacement
    note: str = ""          # meaning, or why it is refused and what to use instead
    default: str = ""       # the original's default (for docs)

    @property
    def dest(self) -> str:
        return self.name.lstrip("-")


def _t(name, status, ours="", note="", default=""):
    return OriginalFlag("train", name, status, ours, note, default)


def _s(name, status, ours="", note="", default=""):
    return OriginalFlag("scorer", name, status, ours, note, default)


def _b(name, status, ours="", note="", default=""):
    return OriginalFlag("benchmark", name, status, ours, note, default)


NO_HUB_UPLOAD = ("nothing is uploaded by the trainer; the LoRA is in --output_dir "
                 "(pytorch_lora_weights.safetensors): upload it with `huggingface-cli upload`")

TABLE: tuple[OriginalFlag, ...] = (
    # ------------------------------------------------------------- trainer: script flags
    _t("--pretrained_model", "same", "--pretrained_model", default="black-forest-labs/FLUX.1-Kontext-dev"),
    _t("--pretrained_revision", "alias", "--revision", default="main"),
    _t("--use_lora", "convert", "(LoRA is the only mode)",
       "true is accepted (it is what we train); false is refused: full fine-tuning of the 12B "
       "transformer is not offered", default="True"),
    _t("--lora_rank", "same", "--lora_rank", "our default is 16", default="8"),
    _t("--hf_hub_aesthetic_model_id", "alias", "--aesthetic_head",
       "hub repo (or local file/folder) of the LAION aesthetic MLP head",
       default="trl-lib/ddpo-aesthetic-predictor"),
    _t("--hf_hub_aesthetic_model_filename", "alias", "--aesthetic_head_filename",
       "file name of the head inside that repo", default="aesthetic-model.pth"),
    _t("--aesthetic_model_type", "same", "--aesthetic_model_type",
       "our default is none (no aesthetic term unless asked)", default="aesthetic_scorer"),
    _t("--aesthetic_reward_scale", "same", "--aesthetic_reward_scale",
       "with --style_reference and --aesthetic_model_type internvl it weights the style term, "
       "as in the original", default="0.4"),
    _t("--similarity_backend", "same", "--similarity_backend", "our default is none", default="lpips"),
    _t("--image_reward_scale", "same", "--image_reward_scale", default="0.5"),
    _t("--photo_backend", "same", "--photo_backend", default="none"),
    _t("--photo_reward_scale", "same", "--photo_reward_scale", default="0.0"),
    _t("--aide_repo", "same", "--aide_repo", default="./AIDE"),
    _t("--aide_resume", "same", "--aide_resume", default="None"),
    _t("--grid_ratio_weight", "same", "--grid_ratio_weight",
       "our grid penalty is a different measure on a different scale (docs/original_flags.md)",
       default="0.0"),
    _t("--grid_ratio_period", "same", "--grid_ratio_period", default="16"),
    _t("--grid_ratio_max_harm", "same", "--grid_ratio_max_harm", default="3"),
    _t("--grid_ratio_sigma_bins", "same", "--grid_ratio_sigma_bins", default="0.8"),
    _t("--grid_ratio_tau", "alias", "--grid_tau",
       "the original computed this hinge and never applied it; here it is the dead zone of our "
       "grid score (clean photos score 0.06-0.33, so 2e-4 changes nothing)", default="2e-4"),
    _t("--grid_eval_resize", "same", "--grid_eval_resize", default="512"),
    _t("--brightness_anchor_weight", "same", "--brightness_anchor_weight",
       "our default is 0 (off); the original's measure is --brightness_measure original",
       default="0.2"),
    _t("--brightness_target", "same", "--brightness_target", default="0.50"),
    _t("--brightness_band", "same", "--brightness_band", default="0.06"),
    _t("--crispness_anchor_weight", "alias", "--crispness_weight", default="0.2"),
    _t("--sharpness_backend", "same", "--sharpness_backend", default="none"),
    _t("--sharpness_reward_scale", "same", "--sharpness_reward_scale", default="0.0"),
    _t("--data_dir", "same", "--data_dir", default="./train_images"),
    _t("--prompt_list_file", "alias", "--prompt_file",
       "one instruction per line, one drawn at random (from --seed) per sample", default="None"),
    _t("--style_reference", "same", "--style_reference",
       "with --aesthetic_model_type internvl the aesthetic term becomes the style-similarity "
       "task at --aesthetic_reward_scale, as in the original", default="None"),
    _t("--debug_images", "convert", "--log_image_freq 1",
       "an input|output grid is written every step (<output_dir>/images)", default="False"),
    # ------------------------------------------------------------- trainer: TRL AlignProp config
    _t("--exp_name", "convert", "--tracker_run_name",
       "names the run in the tracker (unless --run_name is given)", default="script name"),
    _t("--run_name", "convert", "--tracker_run_name; with --logdir: --output_dir LOGDIR/RUN_NAME",
       "names the run in the tracker", default='""'),
    _t("--logdir", "convert", "--output_dir",
       "the run's folder (LOGDIR/RUN_NAME with --run_name); an explicit --output_dir wins",
       default="logs"),
    _t("--tracker_project_name", "same", "--tracker_project_name", default="trl"),
    _t("--tracker_kwargs", "same", "--tracker_kwargs",
       "JSON object of per-tracker init arguments, e.g. '{\"wandb\": {\"entity\": \"me\"}}'",
       default="{}"),
    _t("--accelerator_kwargs", "refused", "accelerate launch / accelerate config",
       "Accelerator options are taken from `accelerate config` and the `accelerate launch` "
       "flags (and --mixed_precision, --train_gradient_accumulation_steps here)", default="{}"),
    _t("--project_kwargs", "refused", "--output_dir, --save_freq, --checkpoints_total_limit",
       "checkpoint naming and rotation are ours: --output_dir, --save_freq and "
       "--checkpoints_total_limit", default="{}"),
    _t("--num_epochs", "same", "--num_epochs", default="100"),
    _t("--save_freq", "same", "--save_freq", "ours counts optimizer steps", default="1"),
    _t("--num_checkpoint_limit", "alias", "--checkpoints_total_limit", default="5"),
    _t("--mixed_precision", "same", "--mixed_precision", default="no"),
    _t("--allow_tf32", "same", "--allow_tf32", default="True"),
    _t("--resume_from", "same", "--resume_from", default='""'),
    _t("--seed", "same", "--seed", default="0"),
    _t("--log_with", "same", "--log_with", default="None"),
    _t("--log_image_freq", "same", "--log_image_freq", default="25"),
    _t("--sample_num_steps", "same", "--sample_num_steps", default="50"),
    _t("--sample_eta", "convert", "(refused unless 0)",
       "the Kontext flow-matching sampler is a deterministic Euler ODE: there is no DDIM eta. "
       "0 is accepted (it is what we do); for variety use --seed", default="1.0"),
    _t("--sample_guidance_scale", "alias", "--guidance_scale",
       "Kontext-dev is guidance-distilled: the scale is embedded, one forward per step",
       default="5.0"),
    _t("--train_batch_size", "same", "--train_batch_size", default="1"),
    _t("--train_learning_rate", "same", "--train_learning_rate", default="1e-3"),
    _t("--train_gradient_accumulation_steps", "same", "--train_gradient_accumulation_steps",
       default="1"),
    _t("--train_use_8bit_adam", "alias", "--use_8bit_adam", default="False"),
    _t("--train_adam_beta1", "alias", "--adam_beta1", default="0.9"),
    _t("--train_adam_beta2", "alias", "--adam_beta2", default="0.999"),
    _t("--train_adam_weight_decay", "alias", "--adam_weight_decay", default="1e-4"),
    _t("--train_adam_epsilon", "alias", "--adam_epsilon", default="1e-8"),
    _t("--train_max_grad_norm", "alias", "--max_grad_norm", default="1.0"),
    _t("--train_gradient_checkpointing", "alias", "--gradient_checkpointing",
       "our default is off", default="True"),
    _t("--truncated_backprop_rand", "convert", "--truncated_backprop random|fixed",
       "true: the number of final steps that carry gradients is drawn per optimizer step",
       default="True"),
    _t("--truncated_backprop_timestep", "convert", "--backprop_steps N-T",
       "gradients flow through the denoising steps from index T on, i.e. the last "
       "--sample_num_steps - T (at least 1)", default="49"),
    _t("--truncated_rand_backprop_minmax", "convert", "--backprop_steps_min/--backprop_steps_max",
       "T ~ U[min, max] -> the last N-T steps carry gradients: --backprop_steps_min "
       "max(1, N-max), --backprop_steps_max N-min", default="(0, 50)"),
    _t("--negative_prompts", "refused", "--prompt",
       "Kontext-dev is guidance-distilled (one forward per step, no classifier-free guidance), "
       "so there is no negative prompt; say what you want in --prompt", default="None"),
    _t("--push_to_hub", "convert", "(refused unless false)", NO_HUB_UPLOAD, default="False"),
    # ------------------------------------------------------------- internvl_scorer.py
    _s("inputs", "same", "paths", "image files and folders, in the order the task groups them"),
    _s("--task", "same", "--task", default="single"),
    _s("--objective", "same", "--objective", default="expected"),
    _s("--device", "same", "--device", default="auto"),
    _s("--dtype", "same", "--dtype", "fp32|fp16|bf16 accepted beside float32|float16|bfloat16",
       default="bf16"),
    _s("--batch_size", "same", "--batch_size", "our default is 8", default="4"),
    _s("--model_id", "same", "--model_id", default="OpenGVLab/InternVL3-14B-hf"),
    _s("--temperature", "same", "--temperature", default="1.0"),
    _s("--margin_temp", "same", "--margin_temp", "margin objective: sigmoid(margin / margin_temp)",
       default="1.0"),
    _s("--entropy_coef", "alias", "--entropy_bonus",
       "adds coef x the answer distribution's entropy (normalised by log K here)", default="0.0"),
    _s("--calibration", "same", "--calibration", default="none"),
    _s("--print_probs", "same", "--print_probs", default="off"),
    _s("--trace_layers", "same", "--trace_layers", default="off"),
    _s("--print_layer_logprobs", "same", "--print_layer_logprobs", default="off"),
    _s("--print_layer_probs", "same", "--print_layer_probs", default="off"),
    _s("--artifact_ref1", "same", "--artifact_ref1", default="None"),
    _s("--artifact_ref2", "same", "--artifact_ref2", default="None"),
    _s("--viz_grads", "same", "--viz_grads", "a switch (or the output folder)", default="off"),
    _s("--viz_outdir", "same", "--viz_outdir", default="debug_images"),
    _s("--viz_alpha", "same", "--viz_alpha", default="0.6"),
    _s("--viz_norm", "same", "--viz_norm", default="percentile"),
    _s("--viz_pmin", "same", "--viz_pmin", default="2"),
    _s("--viz_pmax", "same", "--viz_pmax", default="98"),
    _s("--viz_log_alpha", "same", "--viz_log_alpha", default="10"),
    _s("--viz_blur", "same", "--viz_blur", default="0"),
    # ------------------------------------------------------------- benchmark_anti_periodic.py
    _b("--artifacts_dir", "same", "--artifacts_dir", default="artifact"),
    _b("--clean_dir", "same", "--clean_dir", default="no_artifact"),
    _b("--resize", "alias", "--eval_resize",
       "long side the images are scaled to (never up); the comb follows the scale", default="512"),
    _b("--period", "same", "--period", default="16"),
    _b("--max_harm", "same", "--max_harm", "our default is 3", default="6"),
    _b("--sigma_bins", "same", "--sigma_bins", "our default is 0.5", default="2.0"),
    _b("--window", "alias", "--local_window", default="128"),
    _b("--hop", "alias", "--local_stride", "our default is 64", default="32"),
    _b("--edge_penalty", "same", "--edge_penalty", default="8.0"),
    _b("--template_16", "same", "--template_16", default="None"),
    _b("--tau", "same", "--tau", default="None"),
    _b("--combo_mode", "same", "--combo_mode", default="ratio"),
    _b("--w_local", "same", "--w_local", default="0.2"),
    _b("--tau_global", "same", "--tau_global", default="None"),
    _b("--tau_local", "same", "--tau_local", default="None"),
    _b("--selective_top_p", "same", "--selective_top_p", default="0.35"),
    _b("--selective_coverage_alpha", "same", "--selective_coverage_alpha", default="0.5"),
    _b("--proj_harmonics", "same", "--proj_harmonics", default='"1,2,3"'),
    _b("--proj_top_p", "same", "--proj_top_p", default="0.35"),
    _b("--no_proj_detach_norm", "same", "--no_proj_detach_norm", default="off"),
    _b("--out", "same", "--out", "written by default", default="anti_periodic_per_image.csv"),
    _b("--summary_out", "same", "--summary_out", "written by default",
       default="anti_periodic_summary.csv"),
)


def table(command: str) -> list[OriginalFlag]:
    """The original flags of one command ("train", "scorer" or "benchmark")."""
    return [f for f in TABLE if f.command == command]


# --------------------------------------------------------------------------- parser plumbing
class RefuseAction(argparse.Action):
    """Stops parsing with one line: the flag is not supported, why, and what to use."""

    def __init__(self, option_strings, dest, flag: OriginalFlag | None = None, **kw):
        self.flag = flag
        kw.setdefault("nargs", "*")
        kw["default"] = argparse.SUPPRESS
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        raise UserError(refusal(self.flag))


def refusal(flag: OriginalFlag) -> str:
    return (f"{flag.name} (from the original scripts) is not supported here: {flag.note}")


def _find_action(parser: argparse.ArgumentParser, dest: str) -> argparse.Action:
    for action in parser._actions:
        if action.dest == dest:
            return action
    raise KeyError(f"parser has no flag --{dest}")


def add_original_flags(parser: argparse.ArgumentParser, command: str,
                       converters: dict[str, Callable[[argparse._ArgumentGroup, OriginalFlag], None]]
                       | None = None) -> argparse._ArgumentGroup:
    """Add every original flag of ``command`` that is not already ours to ``parser``.

    ``alias`` flags clone our flag's type/choices/nargs under the old name and write to our
    flag's destination; ``refused`` flags stop with one line; ``convert`` flags are added by
    ``converters[name](group, flag)`` (the command knows how to translate them).
    """
    group = parser.add_argument_group(HELP_GROUP)
    converters = converters or {}
    for flag in table(command):
        if flag.status == "same":
            continue
        if flag.status == "alias":
            target = _find_action(parser, flag.ours.lstrip("-"))
            kw = dict(dest=target.dest, default=argparse.SUPPRESS,
                      help=f"= {flag.ours}" + (f" ({flag.note})" if flag.note else ""))
            if isinstance(target, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
                store = ("store_true" if isinstance(target, argparse._StoreTrueAction)
                         else "store_false")
                group.add_argument(flag.name, action=store, **kw)
                continue
            for key in ("type", "choices", "nargs", "const", "metavar"):
                value = getattr(target, key, None)
                if value is not None:
                    kw[key] = value
            group.add_argument(flag.name, **kw)
        elif flag.status == "refused":
            group.add_argument(flag.name, action=RefuseAction, flag=flag,
                               help=f"refused: {flag.note}")
        else:
            if flag.name not in converters:
                raise KeyError(f"no converter for {flag.name} ({command})")
            converters[flag.name](group, flag)
    return group


# --------------------------------------------------------------------------- trainer translations
# ``alias`` flags need nothing here. ``convert`` flags of the trainer are added by the functions
# below: those whose meaning depends on other flags (truncated backprop needs
# --sample_num_steps; --logdir/--run_name build --output_dir) are stored under ``original_*``
# names during parsing and translated by :func:`original_changes` once every flag is known.
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


def stored_original(extra: argparse.Namespace | None) -> dict[str, Any]:
    """The ``original_*`` values the parser stored, without the prefix."""
    return {k[len("original_"):]: v for k, v in vars(extra or argparse.Namespace()).items()
            if k.startswith("original_")}


def original_changes(got: dict[str, Any], *, sample_num_steps: int, tracker_run_name,
                     argv: Sequence[str], preset: dict[str, Any] | None = None) -> dict[str, Any]:
    """Our flag values that the original trainer's ``convert`` flags ask for (pure).

    ``got`` is :func:`stored_original`'s result; the caller applies the returned
    {our flag: value} (and re-validates).
    """
    changes: dict[str, Any] = {}
    preset = preset or {}
    if got.get("debug_images"):
        changes["log_image_freq"] = 1
    # --logdir / --run_name / --exp_name: the run folder and the tracker's run name.
    run_name = got.get("run_name") or got.get("exp_name")
    if run_name and not tracker_run_name:
        changes["tracker_run_name"] = run_name
    if "logdir" in got and not (_given(argv, "--output_dir") or "output_dir" in preset):
        changes["output_dir"] = os.path.join(got["logdir"], got.get("run_name") or "")
        changes["output_dir"] = changes["output_dir"].rstrip("/") or got["logdir"]
    # Truncated backprop: TRL detaches the denoising steps with index < T, so the last
    # N - T steps carry gradients (N = --sample_num_steps).
    n = sample_num_steps
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
    return changes


__all__ = ["OriginalFlag", "TABLE", "table", "add_original_flags", "RefuseAction", "refusal",
           "HELP_GROUP", "add_train_original_flags", "original_changes", "stored_original",
           "preset_tokens", "original_names"]
