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
argparse plumbing, the pure translation of the trainer's ``convert`` flags into our flag
values (:func:`translate_train`), the one rule for which value wins when several names or
sources set one flag (:func:`resolve_source`), the original's defaults that ``--semantics
original`` puts in place of ours (:data:`ORIGINAL_DEFAULTS`, checked against the table's ``default`` column by
a test) and the one line that suggests that mode (:func:`semantics_hint`). It lives in the
bottom package because the trainer, the scorer and the benchmark all read it.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .cli import UserError, parse_bool

STATUSES = ("same", "alias", "convert", "refused")
# ours: our measures and defaults; original: the original scripts' (docs/original_mode.md)
SEMANTICS = ("ours", "original")
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
    # convert flags: our flags (destinations) the translation sets; aliases set ``ours``
    sets: tuple[str, ...] = ()

    @property
    def dest(self) -> str:
        return self.name.lstrip("-")

    @property
    def targets(self) -> tuple[str, ...]:
        """Our flags (destinations) this flag sets with our semantics: the pairs that the
        precedence rule (:func:`resolve_source`) keeps apart."""
        if self.status == "alias":
            return (self.ours.lstrip("-"),)
        return self.sets


def _t(name, status, ours="", note="", default="", sets=()):
    return OriginalFlag("train", name, status, ours, note, default, tuple(sets))


def _s(name, status, ours="", note="", default="", sets=()):
    return OriginalFlag("scorer", name, status, ours, note, default, tuple(sets))


def _b(name, status, ours="", note="", default=""):
    return OriginalFlag("benchmark", name, status, ours, note, default)


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
       "an input|output grid is written every step (<output_dir>/images)", default="False",
       sets=["log_image_freq"]),
    # ------------------------------------------------------------- trainer: TRL AlignProp config
    _t("--exp_name", "convert", "--tracker_run_name",
       "names the run in the tracker (unless --run_name is given)", default="script name",
       sets=["tracker_run_name"]),
    _t("--run_name", "convert", "--tracker_run_name; with --logdir: --output_dir LOGDIR/RUN_NAME",
       "names the run in the tracker", default='""', sets=["tracker_run_name"]),
    _t("--logdir", "convert", "--output_dir",
       "the run's folder (LOGDIR/RUN_NAME with --run_name)", default="logs",
       sets=["output_dir"]),
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
    _t("--num_epochs", "same", "--num_epochs",
       "the original counted optimizer updates (one TRL epoch = one update); ours counts passes "
       "over the data; with --semantics original it means the original's (= --max_train_steps)",
       default="100"),
    _t("--save_freq", "same", "--save_freq", "ours counts optimizer steps", default="1"),
    _t("--num_checkpoint_limit", "alias", "--checkpoints_total_limit", default="5"),
    _t("--mixed_precision", "same", "--mixed_precision", default="no"),
    _t("--allow_tf32", "same", "--allow_tf32", default="True"),
    _t("--resume_from", "same", "--resume_from", default='""'),
    _t("--seed", "same", "--seed", default="0"),
    _t("--log_with", "same", "--log_with", default="None"),
    _t("--log_image_freq", "same", "--log_image_freq", default="25"),
    _t("--sample_num_steps", "same", "--sample_num_steps", default="50"),
    _t("--image_height", "same", "--image_height", default="512"),
    _t("--image_width", "same", "--image_width", default="512"),
    _t("--sample_eta", "convert", "(ignored)",
       "the original's flow sampler never read it (a deterministic Euler ODE has no DDIM eta): "
       "accepted and ignored, with one line; for variety use --seed", default="1.0"),
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
    _t("--truncated_backprop_rand", "convert", "--truncated_backprop per_step|fixed",
       "true (TRL's code): every denoising step i draws T in [min, max] and carries gradients "
       "when i >= T (--truncated_backprop per_step); false: fixed truncation", default="True",
       sets=["truncated_backprop"]),
    _t("--truncated_backprop_timestep", "convert", "--backprop_steps N-T",
       "gradients flow through the denoising steps from index T on, i.e. the last "
       "--sample_num_steps - T (at least 1)", default="49",
       sets=["backprop_steps", "truncated_backprop"]),
    _t("--truncated_rand_backprop_minmax", "convert", "--truncation_t_min/--truncation_t_max",
       "the range T is drawn from, per denoising step (both ends included)", default="(0, 50)",
       sets=["truncation_t_min", "truncation_t_max", "truncated_backprop"]),
    _t("--negative_prompts", "refused", "--prompt",
       "Kontext-dev is guidance-distilled (one forward per step, no classifier-free guidance), "
       "so there is no negative prompt; say what you want in --prompt", default="None"),
    _t("--push_to_hub", "same", "--push_to_hub",
       "uploads the run folder (LoRA, model card) with huggingface_hub to --hub_model_id; "
       "offline or not logged in, one line says why nothing was uploaded", default="False"),
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
    _s("--entropy_coef", "convert", "--entropy_bonus coef x ln K",
       "adds coef x the entropy in nats of the answer distribution (rating tasks; the original "
       "added none to pair/triplet); our --entropy_bonus divides the entropy by ln K",
       default="0.0", sets=["entropy_bonus"]),
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
    _b("--resize", "convert", "--semantics original",
       "the original resized every image to a resize x resize SQUARE (aspect not kept); with "
       "--semantics original it does that; ours is --eval_resize (long side, never up)",
       default="512"),
    _b("--period", "same", "--period", default="16"),
    _b("--max_harm", "same", "--max_harm", "our default is 3", default="6"),
    _b("--sigma_bins", "same", "--sigma_bins", "our default is 0.5", default="2.0"),
    _b("--window", "alias", "--local_window", default="128"),
    _b("--hop", "alias", "--local_stride", "our default is 128", default="32"),
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
# names during parsing and translated by :func:`translate_train` once every flag is known.
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
                           help=f"ignored: {flag.note}")

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


def preset_tokens(preset: dict[str, Any], also: Sequence[str] = ()
                  ) -> tuple[dict[str, Any], list[str]]:
    """Split a preset into (our flags, command-line tokens for the original's flags and the
    other names ``also`` lists: our flags' aliases), so that the parser's own actions read
    them and the one rule sees the name each used."""
    ours, tokens = {}, []
    names = original_names() | set(also)
    for key, value in preset.items():
        if key not in names:
            ours[key] = value
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        tokens.append(f"--{key}")
        tokens += [str(v).lower() if isinstance(v, bool) else str(v) for v in values]
    return ours, tokens


# --------------------------------------------------------------------------- which value wins
# ONE rule for every command, its presets and --semantics original (docs/original_flags.md,
# "Which value wins"; tests/test_precedence.py runs every pair of names the table gives):
# * Sources rank, lowest first: our defaults, the defaults of --semantics original, a shipped
#   --preset, a --config preset, the command line. For each of our flags the highest source
#   that sets it wins, whatever name it used there: our flag, one of its aliases, or an
#   original flag that translates into it.
# * Within one source, every name that sets the same flag of ours must agree (an original flag
#   beside ours, two spellings of ours, an original flag's translation beside the flag it sets);
#   otherwise the command stops with one line naming both. One name given twice: the last wins
#   (argparse's rule).
# * What a flag brings along -- the original's default T = 49 for --truncated_backprop_rand
#   false; --max_train_steps N for --num_epochs N under --semantics original (our
#   --max_train_steps always bounds --num_epochs) -- is *implied*: a flag of the same source
#   decides instead.
TRL_TIMESTEP = 49  # TRL's truncated_backprop_timestep default


@dataclass(frozen=True)
class Setting:
    """One value that one source gives one of our flags, and how the user said it."""

    dest: str               # our flag (the argparse destination)
    value: Any
    name: str               # the name used, e.g. "--crispness_anchor_weight"
    said: str               # what the user wrote, for messages
    implied: bool = False   # an original default a convert flag brings along


def show(value: Any) -> str:
    """A value as a user types it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return " ".join(show(v) for v in value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def same_value(a: Any, b: Any) -> bool:
    """Do two names agree? Floats to 1e-4 relative (0.2303 = 0.1 x ln 10 as printed)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(map(same_value, a, b))
    if (isinstance(a, float) or isinstance(b, float)) and not isinstance(a, bool) \
            and not isinstance(b, bool) and isinstance(a, (int, float)) \
            and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-12)
    return a == b or (a is not None and b is not None and str(a) == str(b))


def record_given(parser: argparse.ArgumentParser) -> list[Setting]:
    """From now on ``parser`` notes every optional flag it parses, as a :class:`Setting`, in the
    list returned (clear it between parses). The parser's own actions do the parsing (types,
    choices, nargs, abbreviations stay argparse's); they only report what they stored."""
    given: list[Setting] = []
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        if not getattr(action, "_records", False):
            action.__class__ = _recording(type(action))
        action.given = given
    return given


@functools.lru_cache(maxsize=None)
def _recording(base: type) -> type:
    def __call__(self, parser, namespace, values, option_string=None):
        base.__call__(self, parser, namespace, values, option_string)
        value = getattr(namespace, self.dest, None)
        said = option_string if self.nargs == 0 else f"{option_string} {show(value)}"
        self.given.append(Setting(self.dest, value, option_string, said))

    return type(base.__name__, (base,), {"__call__": __call__, "_records": True})


def in_preset(settings: Sequence[Setting]) -> list[Setting]:
    """Settings parsed from a preset's keys, said as the preset says them (``key: value``)."""
    return [dataclasses.replace(s, said=f"{s.name.lstrip('-')}: {show(s.value)}")
            for s in settings]


def resolve_source(settings: Sequence[Setting], where: str = "") -> dict[str, Setting]:
    """One source's value for each flag it sets; two names that disagree stop the command in
    one line (``where`` names the source in it, e.g. "--config p.yaml: ")."""
    latest: dict[str, dict[str, Setting]] = {}
    for s in settings:
        if not s.implied:
            latest.setdefault(s.dest, {})[s.name] = s   # one name twice: the last wins
    out: dict[str, Setting] = {}
    for dest, by_name in latest.items():
        first, *others = by_name.values()
        for other in others:
            if not same_value(first.value, other.value):
                raise UserError(
                    f"{where}conflicting flags: {first.said} and {other.said} both set "
                    f"--{dest} ({show(first.value)} vs {show(other.value)}); give only one of "
                    f"them (docs/original_flags.md, 'Which value wins')")
        out[dest] = list(by_name.values())[-1]
    for s in settings:
        if s.implied and s.dest not in out:
            out[s.dest] = s
    return out


def _backprop_steps(n: int, t: int) -> int:
    """TRL detaches the steps with index i < T: the last N - T of N carry gradients (>= 1)."""
    return max(1, min(n, n - t))


def translate_train(settings: Sequence[Setting], *, sample_num_steps: int,
                    semantics: str = "ours") -> list[Setting]:
    """One source's settings with the original trainer's ``convert`` flags translated (pure).

    ``settings`` hold what the source gave, the convert flags under their ``original_*``
    destinations; the result holds our flags only, each translation said as "<original flag>
    (= --our_flag value)" so that a conflict names both. With ``semantics="original"``
    ``--num_epochs`` counts optimizer updates (TRL's epoch is one update): it implies
    ``--max_train_steps`` (which, given in the same source, bounds the run as it always does).
    """
    got = {s.dest[len("original_"):]: s for s in settings if s.dest.startswith("original_")}
    out = [s for s in settings if not s.dest.startswith("original_")]

    def add(dest, value, *srcs: Setting, how: str = "", implied: bool = False) -> None:
        said = " ".join(x.said for x in srcs) + f" (= --{dest} {show(value)}{how})"
        out.append(Setting(dest, value, srcs[0].name, said, implied))

    if semantics == "original":
        for s in [s for s in out if s.dest == "num_epochs"]:
            add("max_train_steps", s.value, s, how=" with --semantics original", implied=True)
    debug = got.get("debug_images")
    if debug is not None and debug.value:
        add("log_image_freq", 1, debug)
    # --logdir / --run_name / --exp_name: the run folder and the tracker's run name
    # (--run_name names the run; --exp_name only when it is not given).
    run = got.get("run_name") or got.get("exp_name")
    if run is not None and run.value:
        add("tracker_run_name", run.value, run)
    if "logdir" in got:
        logdir, named = got["logdir"], got.get("run_name")
        path = os.path.join(logdir.value, named.value if named else "").rstrip("/") or logdir.value
        add("output_dir", path, *([logdir, named] if named else [logdir]))
    # Truncated backprop as TRL's code did it: a step's prediction is detached when its index
    # i < T. Random: T is drawn again for every denoising step (--truncated_backprop per_step);
    # fixed: the last N - T steps carry gradients (N = --sample_num_steps).
    n = sample_num_steps
    rand = got.get("truncated_backprop_rand")
    timestep = got.get("truncated_backprop_timestep")
    minmax = got.get("truncated_rand_backprop_minmax")
    with_n = f" with --sample_num_steps {n}"
    if rand is not None:
        add("truncated_backprop", "per_step" if rand.value else "fixed", rand)
        if not rand.value and timestep is None:   # TRL's default T
            add("backprop_steps", _backprop_steps(n, TRL_TIMESTEP), rand,
                how=f"{with_n} and TRL's default T = {TRL_TIMESTEP}", implied=True)
    if timestep is not None:
        add("backprop_steps", _backprop_steps(n, timestep.value), timestep, how=with_n)
        if rand is None:
            add("truncated_backprop", "fixed", timestep)
    if minmax is not None:
        lo, hi = minmax.value
        add("truncation_t_min", lo, minmax)
        add("truncation_t_max", hi, minmax)
        if rand is None:
            add("truncated_backprop", "per_step", minmax)
    return out


# --------------------------------------------------------------------------- --semantics original
# The original scripts' defaults, by OUR flag name: what --semantics original puts in place of
# our defaults (a preset or the command line still wins). tests/test_original_flags.py checks
# every value against the table's ``default`` column and against what parse_config returns.
ORIGINAL_DEFAULTS: dict[str, dict[str, Any]] = {
    "train": {
        "pretrained_model": "black-forest-labs/FLUX.1-Kontext-dev", "lora_rank": 8,
        "aesthetic_model_type": "aesthetic_scorer", "aesthetic_reward_scale": 0.4,
        "similarity_backend": "lpips", "image_reward_scale": 0.5,
        "photo_backend": "none", "photo_reward_scale": 0.0, "aide_repo": "./AIDE",
        "grid_ratio_weight": 0.0, "grid_ratio_period": 16, "grid_ratio_max_harm": 3,
        "grid_ratio_sigma_bins": 0.8, "grid_tau": 2e-4, "grid_eval_resize": 512,
        "brightness_anchor_weight": 0.2, "brightness_target": 0.50, "brightness_band": 0.06,
        "brightness_measure": "original", "crispness_weight": 0.2,
        "sharpness_backend": "none", "sharpness_reward_scale": 0.0,
        "data_dir": "./train_images",
        "tracker_project_name": "trl", "num_epochs": 100, "save_freq": 1,
        "checkpoints_total_limit": 5, "mixed_precision": "no", "allow_tf32": True, "seed": 0,
        "log_with": "none", "log_image_freq": 25, "sample_num_steps": 50, "guidance_scale": 5.0,
        "image_height": 512, "image_width": 512,
        "train_batch_size": 1, "train_learning_rate": 1e-3,
        "train_gradient_accumulation_steps": 1, "use_8bit_adam": False, "adam_beta1": 0.9,
        "adam_beta2": 0.999, "adam_weight_decay": 1e-4, "adam_epsilon": 1e-8,
        "max_grad_norm": 1.0, "gradient_checkpointing": True,
        "truncated_backprop": "per_step", "truncation_t_min": 0, "truncation_t_max": 50,
        "internvl_model_id": "OpenGVLab/InternVL3-14B-hf", "internvl_objective": "expected",
        "internvl_calibration": "pmi_null", "internvl_temperature": 1.0,
    },
    "scorer": {
        "task": "single", "objective": "expected", "device": "auto", "dtype": "bfloat16",
        "batch_size": 4, "model_id": "OpenGVLab/InternVL3-14B-hf", "temperature": 1.0,
        "margin_temp": 1.0, "calibration": "none", "viz_outdir": "debug_images",
        "viz_alpha": 0.6, "viz_norm": "percentile", "viz_pmin": 2.0, "viz_pmax": 98.0,
        "viz_log_alpha": 10.0, "viz_blur": 0.0,
    },
    "benchmark": {
        "artifacts_dir": "artifact", "clean_dir": "no_artifact", "period": 16.0, "max_harm": 6,
        "sigma_bins": 2.0, "local_window": 128, "local_stride": 32, "edge_penalty": 8.0,
        "combo_mode": "ratio", "w_local": 0.2, "selective_top_p": 0.35,
        "selective_coverage_alpha": 0.5, "proj_harmonics": "1,2,3", "proj_top_p": 0.35,
    },
}
# Table rows whose original default has no counterpart among our defaults, and why.
NO_DEFAULT = {
    "--pretrained_revision": "main is what no revision means",
    "--hf_hub_aesthetic_model_id": "our aesthetic factory's default is the same repository",
    "--hf_hub_aesthetic_model_filename": "our aesthetic factory's default is the same file",
    "--use_lora": "LoRA is the only mode", "--aide_resume": "no default checkpoint",
    "--prompt_list_file": "none", "--style_reference": "none", "--debug_images": "off",
    "--exp_name": "a tracker name", "--run_name": "a tracker name",
    "--logdir": "--output_dir is ours", "--tracker_kwargs": "none",
    "--accelerator_kwargs": "refused", "--project_kwargs": "refused",
    "--resume_from": "none", "--log_with": "None is our 'none'",
    "--sample_eta": "ignored", "--truncated_backprop_rand": "= --truncated_backprop per_step",
    "--truncated_backprop_timestep": "used only with --truncated_backprop_rand false",
    "--truncated_rand_backprop_minmax": "= --truncation_t_min 0 --truncation_t_max 50",
    "--negative_prompts": "refused", "--push_to_hub": "off",
    "inputs": "positional", "--print_probs": "off", "--trace_layers": "off",
    "--print_layer_logprobs": "off", "--print_layer_probs": "off", "--artifact_ref1": "none",
    "--artifact_ref2": "none", "--viz_grads": "off", "--entropy_coef": "0",
    "--resize": "the square resize of --semantics original", "--template_16": "none",
    "--tau": "none", "--tau_global": "none", "--tau_local": "none",
    "--no_proj_detach_norm": "off", "--out": "file name", "--summary_out": "file name",
    "--dtype": "bf16 = bfloat16",
}


def parse_default(text: str) -> Any:
    """The table's ``default`` text as a value ("True" -> True, "(0, 50)" -> (0, 50), ...)."""
    if text in ("True", "False"):
        return text == "True"
    if text in ("None", ""):
        return None
    t = text.strip()
    if t.startswith("(") and t.endswith(")"):
        return tuple(parse_default(v.strip()) for v in t[1:-1].split(","))
    if t.startswith('"') and t.endswith('"'):
        return t[1:-1]
    try:
        return int(t)
    except ValueError:
        pass
    try:
        return float(t)
    except ValueError:
        return t


def our_dest(flag: OriginalFlag) -> str:
    """Our flag (destination) an original flag's default belongs to."""
    if flag.status == "alias" or (flag.status == "same" and flag.ours.startswith("--")):
        return flag.ours.lstrip("-").split()[0]
    return flag.dest


def semantics_of(argv: Sequence[str], preset: dict[str, Any] | None = None) -> str:
    """--semantics from the command line (last one wins), else the preset's, else "ours"."""
    value = (preset or {}).get("semantics", "ours")
    for i, a in enumerate(argv):
        if a == "--semantics" and i + 1 < len(argv):
            value = argv[i + 1]
        elif a.startswith("--semantics="):
            value = a.split("=", 1)[1]
    if value not in SEMANTICS:
        raise UserError(f"--semantics must be one of {', '.join(SEMANTICS)}, got {value!r}")
    return value


def semantics_hint(argv: Sequence[str], command: str) -> str | None:
    """One line when every flag of a command line is one of the original scripts' (and
    neither --semantics nor --config is given): they run with OUR measures and defaults here,
    and --semantics original gives the original's."""
    names = {f.name for f in table(command)}
    given = [a.split("=", 1)[0] for a in argv if a.startswith("--")]
    if not given or "--semantics" in given or "--config" in given:
        return None
    if any(g not in names for g in given):
        return None
    extra = ("; --num_epochs counts passes over the data here, optimizer updates there"
             if "--num_epochs" in given else "")
    return ("every flag given is also the original scripts': they run with our measures and "
            "defaults; add --semantics original for the original's objective, measures and "
            f"defaults (docs/original_mode.md){extra}")


__all__ = ["OriginalFlag", "TABLE", "table", "add_original_flags", "RefuseAction", "refusal",
           "HELP_GROUP", "add_train_original_flags", "Setting", "record_given", "in_preset",
           "resolve_source", "translate_train", "show", "same_value", "preset_tokens",
           "original_names", "SEMANTICS", "ORIGINAL_DEFAULTS", "NO_DEFAULT",
           "parse_default", "our_dest", "semantics_of", "semantics_hint"]
