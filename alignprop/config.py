"""Every training flag, documented and validated; presets from YAML/JSON.

Flags live in two dataclasses parsed together by :class:`transformers.HfArgumentParser`:
:class:`TrainConfig` (this module: model, data, sampling, LoRA, optimisation,
checkpoints, logging) and :class:`alignprop.reward_flags.RewardFlags` (reward
terms, shared with evaluation). Each validates itself in ``__post_init__``;
:func:`check_combination` refuses combinations that span both.

Presets: ``--config preset.yaml`` (or .json) holds ``flag: value`` pairs; flags
given on the command line override the preset, whatever name either uses (the rule:
:func:`parse_config`). Unknown keys in a preset are refused (a typo must not silently fall
back to a default). ``--preset NAME`` reads a shipped one (``alignprop/presets/NAME.yaml``,
e.g. ``edit_specialist``) under --config.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Sequence

from common.cli import UserError
from common.original_flags import (ORIGINAL_DEFAULTS, Setting, add_train_original_flags,
                                   in_preset, original_names, preset_tokens, record_given,
                                   resolve_source, semantics_hint, semantics_of, show,
                                   translate_train)
from rewards import is_differentiable
from common.original_repo import read_original_texts

from .methods import GRADIENT_METHODS, SCORE_METHODS, MethodFlags
from .placement import check_reward_device
from .reward_flags import RewardFlags, require_reward, reward_specs

DEFAULT_PROMPT = "Make this photo sharper and more beautiful; keep the same scene."
# Same default as diffusers' train_dreambooth_lora_flux_kontext.py: every
# attention projection of the double- and single-stream blocks plus the MLPs.
DEFAULT_LORA_TARGETS = ("attn.to_k,attn.to_q,attn.to_v,attn.to_out.0,attn.add_k_proj,"
                        "attn.add_q_proj,attn.add_v_proj,attn.to_add_out,ff.net.0.proj,"
                        "ff.net.2,ff_context.net.0.proj,ff_context.net.2")
LOG_BACKENDS = ("tensorboard", "wandb", "none")
MIXED_PRECISION = ("no", "fp16", "bf16")
TRUNCATION = ("fixed", "random", "per_step", "alignprop")
ALIGNPROP_STRATEGIES = ("gaussian", "uniform")
# AlignProp's draws are in steps of its 50-step DDIM schedule (config/alignprop_config.py);
# they are scaled to --sample_num_steps by N / 50.
ALIGNPROP_STEPS = 50
NOGRAD_BATCHING = ("auto", "on", "off")
LR_SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine")
# Far past any schedule in use (FLUX: 28-50): a bound so a typo cannot ask for a schedule of
# billions of steps.
MAX_SAMPLE_STEPS = 1_000_000
# The original's crispness_anchor_weight default (see resolve_defaults).
TRAIN_CRISPNESS_DEFAULT = 0.2
# --config original: the built-in preset that switches the original's semantics on.
BUILTIN_PRESETS = {"original": {"semantics": "original"}}


class MissingDependencyError(UserError):
    """A flag needs an optional package that is not installed (wandb, bitsandbytes)."""


def _f(default: Any, help: str, choices: Sequence | None = None, aliases: Sequence[str] = ()):
    meta: dict[str, Any] = {"help": help}
    if choices is not None:
        meta["choices"] = list(choices)
    if aliases:
        meta["aliases"] = list(aliases)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig(MethodFlags):
    """Training flags (see ``python alignprop_fluxkontext.py --help``); the method flags
    (``--method``, ``--draft_lv_n``, ``--base_consistency_weight`` ...) come from
    :class:`alignprop.methods.MethodFlags`."""

    # ---------------------------------------------------------------- model
    pretrained_model: str = _f(
        "black-forest-labs/FLUX.1-Kontext-dev",
        "FLUX.1 Kontext pipeline: a hub id, a local diffusers directory, 'tiny' (built-in "
        "random-weight model with the same classes, for speed tests) or 'tiny-photo' (the same "
        "tiny model pretrained on bundled photos: keeps and edits photos; the CPU demo).",
        aliases=["--pretrained_model_name_or_path"])
    revision: Optional[str] = _f(None, "Hub revision of --pretrained_model.")
    variant: Optional[str] = _f(None, "Weights variant of --pretrained_model (e.g. 'fp16').")
    # ---------------------------------------------------------------- data
    data_dir: Optional[str] = _f(
        None, "Folder of input images to edit (jpg/png/webp/bmp/tiff; unreadable files are "
              "skipped with a warning). Required.")
    prompt: str = _f(DEFAULT_PROMPT, "Edit instruction used for every image (unless "
                                     "--prompt_file is given).")
    prompt_file: Optional[str] = _f(
        None, "Prompts: a .txt file with one instruction per line (each sample draws one, "
              "deterministically from the seed) or a .json object {image file name: "
              "instruction} (images not listed use --prompt).")
    recursive: bool = _f(
        True, "Search --data_dir's sub-folders too (as the original did); the images found per "
              "sub-folder are logged. --no_recursive: the top level only.")
    image_height: int = _f(512, "Training resolution (height); images are resized to cover "
                                "and centre-cropped. Multiple of 16 for FLUX.")
    image_width: int = _f(512, "Training resolution (width). Multiple of 16 for FLUX.")
    max_sequence_length: int = _f(512, "T5 token length of the prompt embeddings (<= 512).")
    # ---------------------------------------------------------------- sampling
    sample_num_steps: int = _f(28, "Euler flow-matching steps of the sampler during training.")
    guidance_scale: float = _f(
        2.5, "Embedded guidance of the guidance-distilled Kontext-dev transformer (one "
             "forward per step, no CFG batch).")
    truncated_backprop: str = _f(
        "fixed", "Which denoising steps carry gradients: 'fixed' = the last --backprop_steps "
                 "(DRaFT-K; K=1 is DRaFT-1); 'random' = randomised DRaFT-K: the last K, K ~ "
                 "U[--backprop_steps_min, --backprop_steps_max] once per optimizer step; "
                 "'alignprop' = AlignProp's code (sd_pipeline.py): every micro-batch draws t_b "
                 "(--alignprop_backprop_strategy, scaled from 50 steps to N) and the last N - "
                 "t_b steps carry gradients as a block; 'per_step' = TRL's code (the "
                 "original's): every step i of every micro-batch draws T ~ "
                 "U{--truncation_t_min..--truncation_t_max} and carries gradients when i >= T "
                 "(a micro-batch where none does adds no gradient).", TRUNCATION)
    backprop_steps: int = _f(
        1, "K, the number of final denoising steps that carry gradients (-1 = all steps). "
           "Earlier steps run without a graph.")
    backprop_steps_min: int = _f(1, "Smallest K for --truncated_backprop random.")
    backprop_steps_max: int = _f(
        -1, "Largest K for --truncated_backprop random (-1 = --sample_num_steps).")
    alignprop_backprop_strategy: str = _f(
        "gaussian", "--truncated_backprop alignprop: t_b ~ int(Normal(mean, std)) ('gaussian', "
                    "AlignProp's default) or uniform on [0, 50) ('uniform'), in steps of 50 "
                    "scaled by N/50, redrawn until 1 <= t_b <= N-1.", ALIGNPROP_STRATEGIES)
    alignprop_backprop_mean: float = _f(
        42.0, "--truncated_backprop alignprop gaussian: mean of t_b in steps of 50 (AlignProp: "
              "42, so K = N - t_b is about 8 of 50 steps).")
    alignprop_backprop_std: float = _f(
        5.0, "--truncated_backprop alignprop gaussian: std of t_b in steps of 50 (AlignProp: 5).")
    truncation_t_min: int = _f(0, "Smallest T for --truncated_backprop per_step.")
    truncation_t_max: int = _f(50, "Largest T for --truncated_backprop per_step (TRL's default "
                                   "(0, 50) was made for 50 sampler steps).")
    gradient_checkpointing: bool = _f(
        False, "Recompute transformer block activations in backward (less memory, ~30%% "
               "more time per backpropagated step).")
    batch_nograd_steps: str = _f(
        "auto", "alignprop: run the N-K no-grad sampler steps of all micro-batches of an "
                "optimizer step as one batched pass ('on'), or per micro-batch ('off'); 'auto' = "
                "on with a GPU. It does not raise the peak: those steps keep no activations, and "
                "one image's transient activations there (0.18 GB at 512 px) are small next to a "
                "grad step's. Results equal per-micro-batch sampling up to the last bits of "
                "batched matmuls.", NOGRAD_BATCHING)
    compile: bool = _f(
        False, "torch.compile the repeated regions: the transformer's double/single blocks, the "
               "VAE decoder, the reward models' repeated layers (a VLM's vision and language "
               "layers). Compiles during the first step, then no recompiles (docs/scale.md).")
    reward_device: str = _f(
        "replicate",
        "Where the frozen reward models live: 'replicate' (a copy on every process's device), "
        "'shard' (split across the processes with FSDP2, like the transformer; needs an FSDP "
        "launch), 'dedicated' (process r of P on a machine scores on GPU P + r: launch P "
        "processes on 2P GPUs), or a device name such as 'cuda:1'. Generated pixels cross "
        "devices with their gradients.")
    # ---------------------------------------------------------------- LoRA
    lora_rank: int = _f(16, "LoRA rank (width of the low-rank update).")
    lora_alpha: Optional[float] = _f(None, "LoRA alpha (scale = alpha / rank); default = rank.")
    lora_dropout: float = _f(0.0, "Dropout on the LoRA branch.")
    lora_target_modules: str = _f(
        DEFAULT_LORA_TARGETS, "Comma-separated module name suffixes of the transformer that "
                              "get LoRA adapters (default as diffusers' Kontext LoRA script).")
    # ---------------------------------------------------------------- optimisation
    train_learning_rate: float = _f(1e-4, "AdamW learning rate.", aliases=["--learning_rate"])
    lr_scheduler: str = _f("constant", "Learning-rate schedule.", LR_SCHEDULES)
    lr_warmup_steps: int = _f(0, "Warm-up steps of the learning-rate schedule.")
    adam_beta1: float = _f(0.9, "AdamW beta1.")
    adam_beta2: float = _f(0.999, "AdamW beta2.")
    adam_weight_decay: float = _f(1e-4, "AdamW weight decay.")
    adam_epsilon: float = _f(1e-8, "AdamW epsilon.")
    use_8bit_adam: bool = _f(False, "bitsandbytes 8-bit AdamW (needs `pip install "
                                    "bitsandbytes` and a CUDA GPU).")
    train_batch_size: int = _f(1, "Images per process per micro-batch.")
    train_gradient_accumulation_steps: int = _f(
        1, "Micro-batches accumulated per optimizer step.",
        aliases=["--gradient_accumulation_steps"])
    max_grad_norm: float = _f(1.0, "Gradient clipping norm (0 disables clipping).")
    mixed_precision: Optional[str] = _f(
        None, "Mixed precision; default: what `accelerate config` / `accelerate launch` "
              "says. bf16 keeps frozen weights in bf16, LoRA weights in fp32.", MIXED_PRECISION)
    allow_tf32: bool = _f(False, "Allow TF32 matmuls on Ampere+ GPUs.")
    seed: int = _f(42, "Seed of LoRA init, data order, noise and random K.")
    num_epochs: int = _f(1, "Passes over the data folder (bounded by --max_train_steps).")
    max_train_steps: Optional[int] = _f(
        None, "Stop after this many optimizer steps (overrides --num_epochs).",
        aliases=["--max_steps"])
    # ---------------------------------------------------------------- output
    output_dir: str = _f("outputs/alignprop", "Where the LoRA, checkpoints, logs, image grids "
                                              "and metrics.jsonl are written. A folder that "
                                              "already holds a run is refused unless "
                                              "--resume_from continues it (one run per folder).")
    save_freq: int = _f(100, "Checkpoint every this many optimizer steps (0 = only at the end).")
    push_to_hub: bool = _f(
        False, "After training, upload the run folder (LoRA, README.md model card, "
               "run_config.json, metrics, sample grid; not checkpoints) to the Hugging Face Hub "
               "(needs `hf auth login` or HF_TOKEN). Offline or not logged in: one line says "
               "why nothing was uploaded; the run still succeeds.")
    hub_model_id: Optional[str] = _f(
        None, "Hub repository for --push_to_hub (default: <your user>/<output folder name>).")
    checkpoints_total_limit: Optional[int] = _f(
        None, "Keep at most this many checkpoints (oldest deleted first).")
    resume_from: Optional[str] = _f(
        None, "Resume from a checkpoint folder or 'latest' (newest in "
              "<output_dir>/checkpoints). Resuming from an older checkpoint drops the "
              "metrics.jsonl rows past it and moves later checkpoints to "
              "checkpoints/superseded-<step>/. A flag that changes what a step computes "
              "(method, reward terms, weights and questions, sampler, K, LoRA, resolution, "
              "optimizer) must be the checkpoint's unless --allow_changed_config.",
        aliases=["--resume_from_checkpoint"])
    allow_changed_config: bool = _f(
        False, "With --resume_from: continue under flags that change what a step computes "
               "(run_config.json then records each segment: which steps ran under which "
               "flags). The LoRA's rank and target modules stay the checkpoint's.")
    log_with: str = _f("tensorboard", "Experiment tracker: tensorboard (offline, "
                                      "<output_dir>/logs), wandb, or none.", LOG_BACKENDS)
    tracker_project_name: str = _f("alignprop-fluxkontext", "Project name for the tracker.")
    tracker_run_name: Optional[str] = _f(None, "Run name shown by the tracker (wandb run name).")
    tracker_kwargs: Optional[str] = _f(
        None, "JSON object of extra tracker init arguments per tracker, e.g. "
              "'{\"wandb\": {\"entity\": \"me\", \"tags\": [\"kontext\"]}}'.")
    log_image_freq: int = _f(
        50, "Every this many steps, write an input|output grid PNG and log it (0 = never).")
    log_freq: int = _f(1, "Log scalars every this many steps.")
    # ---------------------------------------------------------------- dry run
    estimate: bool = _f(
        False, "Do not train: build every model of this run at its real size without weights "
               "(no download, no GPU), trace one optimizer step and print parameters, FLOPs, time "
               "on H100/A100/L40S/RTX 4090 (rates measured on an H200; 40%% of peak beside it), "
               "peak memory by part and a verdict for "
               "24/40/48/80/141 GB GPUs (see docs/scale.md).")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Refuse missing/invalid values with a message naming the flag (ValueError)."""
        self.validate_method()
        if self.preferences and self.data_dir:
            raise ValueError("give --data_dir or --preferences, not both: with --preferences the "
                             "inputs are the stored pairs' (their trajectories are the data)")
        if not self.data_dir and not self.preferences:
            raise ValueError("--data_dir is required: a folder of input images to edit")
        for name in ("image_height", "image_width"):
            v = getattr(self, name)
            if v < 16 or v % 16:
                raise ValueError(f"--{name} must be a positive multiple of 16 (FLUX VAE x 2x2 "
                                 f"packing), got {v}")
        positive = ("sample_num_steps", "lora_rank", "train_batch_size",
                    "train_gradient_accumulation_steps", "num_epochs", "max_sequence_length",
                    "log_freq")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.sample_num_steps > MAX_SAMPLE_STEPS:
            raise ValueError(f"--sample_num_steps must be <= {MAX_SAMPLE_STEPS}, got "
                             f"{self.sample_num_steps}")
        if self.max_sequence_length > 512:
            raise ValueError(f"--max_sequence_length must be <= 512, got {self.max_sequence_length}")
        n = self.sample_num_steps
        if self.backprop_steps != -1 and not 1 <= self.backprop_steps <= n:
            raise ValueError(f"--backprop_steps must be in [1, --sample_num_steps={n}] or -1 "
                             f"(all), got {self.backprop_steps}")
        if self.truncated_backprop == "random":
            hi = n if self.backprop_steps_max == -1 else self.backprop_steps_max
            if not 1 <= self.backprop_steps_min <= hi <= n:
                raise ValueError(
                    f"--truncated_backprop random needs 1 <= --backprop_steps_min "
                    f"({self.backprop_steps_min}) <= --backprop_steps_max ({hi}) <= "
                    f"--sample_num_steps ({n})")
        if self.truncated_backprop == "per_step":
            if not 0 <= self.truncation_t_min <= self.truncation_t_max:
                raise ValueError(f"--truncated_backprop per_step needs 0 <= --truncation_t_min "
                                 f"({self.truncation_t_min}) <= --truncation_t_max "
                                 f"({self.truncation_t_max})")
            if self.method != "alignprop":
                raise ValueError("--truncated_backprop per_step is AlignProp's (TRL's) truncation;"
                                 f" --method {self.method} takes its own gradient steps")
        if self.truncated_backprop == "alignprop":
            if self.method != "alignprop":
                raise ValueError("--truncated_backprop alignprop is AlignProp's truncation; "
                                 f"--method {self.method} takes its own gradient steps")
            if n < 2:
                raise ValueError("--truncated_backprop alignprop needs --sample_num_steps >= 2 "
                                 "(t_b is drawn from [1, N-1])")
            if self.alignprop_backprop_strategy not in ALIGNPROP_STRATEGIES:
                raise ValueError(f"--alignprop_backprop_strategy must be one of "
                                 f"{list(ALIGNPROP_STRATEGIES)}, got "
                                 f"{self.alignprop_backprop_strategy!r}")
            if not 1 <= self.alignprop_backprop_mean <= ALIGNPROP_STEPS - 1:
                raise ValueError(f"--alignprop_backprop_mean must be in [1, {ALIGNPROP_STEPS - 1}]"
                                 f" (steps of 50), got {self.alignprop_backprop_mean}")
            if not 0 < self.alignprop_backprop_std <= ALIGNPROP_STEPS:
                raise ValueError(f"--alignprop_backprop_std must be in (0, {ALIGNPROP_STEPS}] "
                                 f"(steps of 50), got {self.alignprop_backprop_std}")
        for name in ("train_learning_rate", "guidance_scale", "max_grad_norm", "adam_epsilon",
                     "adam_weight_decay", "lora_dropout"):
            v = getattr(self, name)
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"--{name} must be a finite number >= 0, got {v}")
        if self.train_learning_rate == 0:
            raise ValueError("--train_learning_rate must be > 0")
        if not (0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1):
            raise ValueError("--adam_beta1 and --adam_beta2 must be in [0, 1)")
        if self.lora_dropout >= 1:
            raise ValueError(f"--lora_dropout must be < 1, got {self.lora_dropout}")
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            raise ValueError(f"--lora_alpha must be > 0, got {self.lora_alpha}")

        if self.batch_nograd_steps not in NOGRAD_BATCHING:
            raise ValueError(f"--batch_nograd_steps must be one of {list(NOGRAD_BATCHING)}, got "
                             f"{self.batch_nograd_steps!r}")
        check_reward_device(self.reward_device)
        if not self.target_modules():
            raise ValueError("--lora_target_modules is empty")
        for name in ("save_freq", "log_image_freq", "lr_warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")
        if self.max_train_steps is not None and self.max_train_steps < 1:
            raise ValueError(f"--max_train_steps must be >= 1, got {self.max_train_steps}")
        if self.hub_model_id is not None and not re.fullmatch(r"([\w.-]+/)?[\w.-]+",
                                                               self.hub_model_id):
            raise ValueError(f"--hub_model_id must look like user/name, got {self.hub_model_id!r}")
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < 1:
            raise ValueError(f"--checkpoints_total_limit must be >= 1, got "
                             f"{self.checkpoints_total_limit}")
        if self.prompt_file is not None:
            p = Path(self.prompt_file).expanduser()
            if not p.is_file():
                raise ValueError(f"--prompt_file: file not found: {self.prompt_file}")
            if p.suffix.lower() not in (".txt", ".json"):
                raise ValueError(f"--prompt_file must be a .txt (one prompt per line) or .json "
                                 f"(image name -> prompt) file, got {p.name}")
        if not self.prompt.strip():
            raise ValueError("--prompt must not be empty")
        if self.tracker_kwargs is not None:
            self.tracker_init_kwargs()  # refuse bad JSON before step 0
        if (self.resume_from not in (None, "latest")
                and not Path(self.resume_from).expanduser().is_dir()):
            raise ValueError(f"--resume_from: checkpoint folder not found: {self.resume_from}")
        if self.method in SCORE_METHODS:
            self._validate_rounds()

    def _validate_rounds(self) -> None:
        """GRPO / D3PO: a round's units must split into whole optimizer steps."""
        if self.estimate:
            raise ValueError(f"--estimate traces AlignProp's step; it does not model --method "
                             f"{self.method} yet (sampling rounds, stored trajectories)")
        if self.rl_timesteps == "window" and self.rl_window > self.sample_num_steps:
            raise ValueError(f"--rl_window ({self.rl_window}) must be <= --sample_num_steps "
                             f"({self.sample_num_steps})")
        if self.preferences:
            return
        per_step = self.train_batch_size * self.train_gradient_accumulation_steps
        units = self.rl_units_per_round()
        if units % per_step:
            what = (f"--rl_inputs_per_round {self.rl_inputs_per_round} x --grpo_group_size "
                    f"{self.grpo_group_size} = {units} samples" if self.method == "grpo" else
                    f"--rl_inputs_per_round {self.rl_inputs_per_round} = {units} pairs")
            raise ValueError(f"--method {self.method}: a round's {what} per process must split "
                             f"into whole optimizer steps of --train_batch_size "
                             f"{self.train_batch_size} x --train_gradient_accumulation_steps "
                             f"{self.train_gradient_accumulation_steps} = {per_step}")

    def rl_units_per_round(self) -> int:
        """GRPO: samples per process per round; D3PO: pairs."""
        return self.rl_inputs_per_round * (self.grpo_group_size if self.method == "grpo" else 1)

    def rl_updates_per_round(self) -> int:
        """Optimizer steps one GRPO / D3PO round lasts (1 with --preferences)."""
        if self.preferences:
            return 1
        per_step = self.train_batch_size * self.train_gradient_accumulation_steps
        return self.rl_units_per_round() // per_step * self.rl_inner_epochs

    # ------------------------------------------------------------------ derived values
    def tracker_init_kwargs(self) -> dict[str, dict]:
        """--tracker_kwargs as {tracker name: {argument: value}} (ValueError when malformed)."""
        if not self.tracker_kwargs:
            return {}
        try:
            data = json.loads(self.tracker_kwargs)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--tracker_kwargs is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise ValueError("--tracker_kwargs must be a JSON object {tracker: {argument: value}}"
                             ", e.g. '{\"wandb\": {\"entity\": \"me\"}}'")
        return data

    def target_modules(self) -> list[str]:
        return [m.strip() for m in self.lora_target_modules.split(",") if m.strip()]

    def k_range(self) -> tuple[int, int]:
        """(min K, max K) of truncated backprop, with -1 resolved to all steps (per_step: the
        fewest and most steps that can carry gradients)."""
        n = self.sample_num_steps
        if self.truncated_backprop == "per_step":
            return 0, max(0, min(n, n - self.truncation_t_min))
        if self.truncated_backprop == "alignprop":   # K = N - t_b, 1 <= t_b <= N-1
            return 1, n - 1
        if self.truncated_backprop == "fixed":
            k = n if self.backprop_steps == -1 else self.backprop_steps
            return k, k
        hi = n if self.backprop_steps_max == -1 else self.backprop_steps_max
        return self.backprop_steps_min, hi


# What a training step computes. Resuming under other values of these is refused unless
# --allow_changed_config (alignprop/run.py: resume_segments). Every method and reward flag
# counts, a new one too, except the few below that change only precision or permission.
STEP_TRAIN_FLAGS = (
    "pretrained_model", "revision", "variant", "prompt", "prompt_file", "image_height",
    "image_width", "max_sequence_length", "sample_num_steps", "guidance_scale",
    "truncated_backprop", "backprop_steps", "backprop_steps_min", "backprop_steps_max",
    "truncation_t_min", "truncation_t_max", "alignprop_backprop_strategy",
    "alignprop_backprop_mean", "alignprop_backprop_std", "lora_rank", "lora_alpha",
    "lora_dropout", "lora_target_modules", "train_learning_rate", "lr_scheduler", "lr_warmup_steps",
    "adam_beta1", "adam_beta2", "adam_weight_decay", "adam_epsilon", "use_8bit_adam",
    "max_grad_norm")
# The run's, not the step's: free to change on resume (each segment records them). The
# batch size changes how many images a step averages, not what it computes (a resume on
# other hardware may need it); the data folder may grow. Speed switches (--compile,
# --batch_nograd_steps) run the same arithmetic, up to the last bits of a batched matmul.
RUN_TRAIN_FLAGS = (
    "data_dir", "recursive", "gradient_checkpointing", "compile", "batch_nograd_steps", "reward_device", "train_batch_size",
    "train_gradient_accumulation_steps", "mixed_precision", "allow_tf32", "seed", "num_epochs",
    "max_train_steps", "output_dir", "save_freq", "push_to_hub", "hub_model_id",
    "checkpoints_total_limit", "resume_from", "allow_changed_config", "log_with",
    "tracker_project_name", "tracker_run_name", "tracker_kwargs", "log_image_freq", "log_freq",
    "estimate")
RUN_REWARD_FLAGS = ("internvl_dtype", "qwen_dtype", "trust_remote_code")
# The checkpoint's LoRA has this shape: no flag can change it on resume.
LORA_SHAPE_FLAGS = ("lora_rank", "lora_target_modules")


def step_flags() -> list[str]:
    """Every flag that changes what a training step computes (see STEP_TRAIN_FLAGS)."""
    return (list(STEP_TRAIN_FLAGS) + [f.name for f in fields(MethodFlags)]
            + [f.name for f in fields(RewardFlags) if f.name not in RUN_REWARD_FLAGS])


def flag_default(name: str) -> Any:
    """A flag's default (what a config written before the flag existed ran with)."""
    for dc in (TrainConfig, RewardFlags):
        f = dc.__dataclass_fields__.get(name)
        if f is not None:
            return f.default if f.default is not dataclasses.MISSING else f.default_factory()
    return None


def check_combination(train: TrainConfig, rewards: RewardFlags) -> None:
    """Refuse flag combinations that involve both dataclasses (before any model loads)."""
    if train.preferences:
        specs = reward_specs(rewards)
        if specs:
            raise ValueError(f"--preferences trains on people's choices; the reward term(s) "
                             f"{', '.join(s['term'] for s in specs)} would not be used: drop "
                             f"their flags")
        return
    specs = require_reward(rewards)
    without = [s["term"] for s in specs if not is_differentiable(s["name"])]
    if train.method in GRADIENT_METHODS and without:
        raise ValueError(f"--method {train.method} backpropagates the reward, but "
                         f"{', '.join(without)} gives no gradient; use --method grpo|d3po, "
                         f"which learn from scores alone")


# --------------------------------------------------------------------------- parsing
def _parser():
    from transformers import HfArgumentParser

    parser = HfArgumentParser((TrainConfig, RewardFlags),
                              usage="alignprop_fluxkontext.py --data_dir DIR [reward flags] "
                                    "[training flags] [--config PRESET]  (all listed below)",
                              description="AlignProp: fine-tune a FLUX.1 Kontext LoRA by "
                                          "backpropagating differentiable rewards through the "
                                          "sampler.")
    parser.add_argument("--config", default=None,
                        help="YAML or JSON preset of flag: value pairs; command-line flags "
                             "override it.")
    parser.add_argument("--preset", default=None, choices=shipped_presets(),
                        help="A shipped preset (alignprop/presets/NAME.yaml): 'edit_specialist' "
                             "= the Image-Editing Specialists objective (structural + score_alpha "
                             "x semantic, rec_lambda) trained with D3PO (--method grpo or "
                             "alignprop also run it). --config and command-line flags override "
                             "it.")
    return parser


PRESETS_DIR = Path(__file__).resolve().parent / "presets"


def shipped_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    """The file of ``--preset NAME`` (one-line error naming the shipped ones)."""
    path = PRESETS_DIR / f"{name}.yaml"
    if name not in shipped_presets():
        raise ValueError(f"--preset {name!r} is not shipped; choose one of: "
                         f"{', '.join(shipped_presets())}")
    return path


def _known_flags() -> set[str]:
    return {f.name for dc in (TrainConfig, RewardFlags) for f in fields(dc)} | _aliases()


def _aliases() -> set[str]:
    """Our flags' other names (``learning_rate`` for ``train_learning_rate``), without dashes:
    a preset may use them as the command line does."""
    return {a.lstrip("-") for dc in (TrainConfig, RewardFlags) for f in fields(dc)
            for a in f.metadata.get("aliases", ())}


def load_preset(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML/JSON preset (or a built-in one by name: ``original``); refuse unknown keys
    and non-mapping files."""
    if str(path) in BUILTIN_PRESETS:
        return dict(BUILTIN_PRESETS[str(path)])
    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"--config: preset file not found: {path}")
    try:
        text = p.read_text()
        if p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # yaml.YAMLError, JSONDecodeError, UnicodeDecodeError, OSError
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        elif isinstance(exc, json.JSONDecodeError):
            where = f" at line {exc.lineno}, column {exc.colno}"
        what = getattr(exc, "problem", None) or getattr(exc, "msg", None) or type(exc).__name__
        raise ValueError(f"--config {path}: not valid {'JSON' if p.suffix.lower() == '.json' else 'YAML'}"
                         f"{where} ({' '.join(str(what).split())})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"--config {path}: expected a mapping of flag: value, got "
                         f"{type(data).__name__}")
    data = {str(k).lstrip("-"): v for k, v in data.items()}
    unknown = sorted(set(data) - _known_flags() - original_names())
    if unknown:
        raise ValueError(f"--config {path}: unknown flag(s) {unknown}; see --help for the list")
    return data


def _typed_preset(parser, preset: dict[str, Any], path) -> dict[str, Any]:
    """Check and convert preset values the way the command line converts them.

    argparse applies ``type=`` only to strings it parses, never to defaults, so without
    this ``max_train_steps: 1.7`` or a list where one value belongs would slip through.
    """
    actions = {a.dest: a for a in parser._actions}
    out = {}
    for key, value in preset.items():
        action = actions.get(key)
        if action is None or value is None:
            out[key] = value
            continue
        many = action.nargs in ("+", "*") or isinstance(action.nargs, int)
        if isinstance(value, dict) or (isinstance(value, list) and not many):
            raise ValueError(f"--config {path}: {key} takes one value, got a "
                             f"{type(value).__name__} ({value!r})")
        values = value if isinstance(value, list) else [value]
        converted = []
        for v in values:
            if action.type is not None:
                if isinstance(v, float) and action.type is int:
                    raise ValueError(f"--config {path}: {key} must be an integer, got {v!r}")
                if isinstance(v, bool) and action.type in (int, float):
                    raise ValueError(f"--config {path}: {key} must be a number, got {v!r}")
                try:
                    v = action.type(v if isinstance(v, str) else str(v))
                except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
                    raise ValueError(f"--config {path}: {key}: invalid value {v!r} "
                                     f"({' '.join(str(exc).split())})") from None
            if action.choices is not None and v not in action.choices:
                raise ValueError(f"--config {path}: {key} must be one of "
                                 f"{list(action.choices)}, got {v!r}")
            converted.append(v)
        out[key] = converted if isinstance(value, list) else converted[0]
    return out


# A truncation flag is read by one --truncated_backprop mode only.
TRUNCATION_FLAGS = {"backprop_steps": "fixed", "backprop_steps_min": "random",
                    "backprop_steps_max": "random", "truncation_t_min": "per_step",
                    "truncation_t_max": "per_step", "alignprop_backprop_strategy": "alignprop",
                    "alignprop_backprop_mean": "alignprop", "alignprop_backprop_std": "alignprop"}
# Sources of a flag's value, lowest first (docs/original_flags.md, "Which value wins").
ORIGINAL_SOURCE = "the defaults of --semantics original"


def parse_config(argv: Sequence[str] | None = None) -> tuple[TrainConfig, RewardFlags]:
    """Parse command-line flags (plus an optional preset) into validated dataclasses.

    Which value wins (one rule, common/original_flags.py): the command line over
    ``--config``, ``--config`` over a shipped ``--preset``, both over the defaults of
    ``--semantics original``, those over ours; within one source, names that set the same flag
    must agree. Validation errors are ``ValueError`` with
    the flag named; argparse itself exits with status 2 for unknown flags and bad choices.
    """
    args = list(argv) if argv is not None else sys.argv[1:]
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    pre.add_argument("--preset", default=None)
    known, _ = pre.parse_known_args(args)
    parser = _parser()
    add_train_original_flags(parser)  # the original trainer's flags, in their own --help group
    given = record_given(parser)
    # a shipped --preset first, then --config over it: two sources, each its own level
    loaded = ([(f"--preset {known.preset}", preset_path(known.preset))] if known.preset else []
              ) + ([(f"--config {known.config}", known.config)] if known.config else [])
    loaded = [(label, path, load_preset(path)) for label, path in loaded]
    semantics = semantics_of(args, {k: v for _, _, values in loaded for k, v in values.items()})
    sources: list[tuple[str, list[Setting]]] = []
    if semantics == "original":
        sources.append((ORIGINAL_SOURCE, [
            Setting(k, v, "--semantics original", f"--semantics original (--{k} {show(v)})")
            for k, v in ORIGINAL_DEFAULTS["train"].items()]))
    for label, path, values in loaded:
        # Our keys are checked and converted as the command line would convert them; the
        # original's names go through their parser actions (aliases, conversions, refusals).
        ours, tokens = preset_tokens(values, also=_aliases())
        settings = [Setting(k, v, f"--{k}", f"{k}: {show(v)}")
                    for k, v in _typed_preset(parser, ours, path).items()]
        given.clear()
        parser.parse_known_args(tokens)
        sources.append((label, settings + in_preset(given)))
    # lower sources as argparse defaults, so that --help shows them
    parser.set_defaults(**{s.dest: s.value for _, settings in sources for s in settings
                           if not s.dest.startswith("original_")})
    given.clear()
    namespace, rest = parser.parse_known_args(args)
    if rest:
        raise ValueError(f"Some specified arguments are not used by the HfArgumentParser: {rest}")
    sources.append(("the command line", [s for s in given
                                         if s.dest not in ("config", "preset")]))
    # Convert flags need --sample_num_steps, which no convert flag sets: the highest source's.
    n = next((s.value for _, settings in reversed(sources) for s in reversed(settings)
              if s.dest == "sample_num_steps"), _default("sample_num_steps"))
    final: dict[str, tuple[int, str, Setting]] = {}
    for level, (label, settings) in enumerate(sources, start=1):
        resolved = resolve_source(translate_train(settings, sample_num_steps=n,
                                                  semantics=semantics), _where(label))
        final.update({dest: (level, label, s) for dest, s in resolved.items()})
    _check_truncation_flags(final)
    values = {**vars(namespace), **{dest: s.value for dest, (_, _, s) in final.items()}}
    train = TrainConfig(**{f.name: values[f.name] for f in fields(TrainConfig) if f.init})
    rewards = RewardFlags(**{f.name: values[f.name] for f in fields(RewardFlags) if f.init})
    rewards = resolve_defaults(rewards, people_judge=bool(train.preferences))
    if (rewards.semantics == "original" and rewards.original_repo and not train.prompt_file
            and final.get("prompt", (0, ORIGINAL_SOURCE))[1] == ORIGINAL_SOURCE):
        # the original's built-in edit instruction, read from the user's clone
        train = dataclasses.replace(train,
                                    prompt=read_original_texts(rewards.original_repo).instruction)
    check_combination(train, rewards)
    return train, rewards


def _default(name: str) -> Any:
    return TrainConfig.__dataclass_fields__[name].default


def _where(label: str) -> str:
    """The prefix of a message about a setting of this source ("--config p.yaml: ")."""
    return f"{label}: " if label.startswith(("--config", "--preset")) else ""


def _check_truncation_flags(final: dict[str, tuple[int, str, Setting]]) -> None:
    """Refuse a truncation flag that the --truncated_backprop in force does not read, unless a
    higher source chose that mode (a preset's K under the command line's per_step is moot)."""
    mode_level, mode_label, mode = final.get("truncated_backprop", (0, "", None))
    value = mode.value if mode else _default("truncated_backprop")
    chosen = ("our default" if mode is None else mode_label if mode_label == ORIGINAL_SOURCE
              else _where(mode_label) + mode.said)
    for dest, needs in TRUNCATION_FLAGS.items():
        level, label, s = final.get(dest, (0, "", None))
        if s is None or s.implied or level < mode_level or needs == value:
            continue
        why = "" if chosen == f"--truncated_backprop {value}" else f" ({chosen})"
        raise ValueError(f"{_where(label)}{s.said} is not read by --truncated_backprop {value}"
                         f"{why}; add --truncated_backprop {needs}, or drop it")


def resolve_defaults(rewards: RewardFlags, people_judge: bool = False) -> RewardFlags:
    """Defaults that depend on other flags, resolved in one visible place.

    ``--crispness_weight`` left unset: the original's crispness floor (0.2) guards every run
    that has another reward term; alone it is no objective, so "no reward" stays an error.
    Training on people's choices (``--preferences``) has no reward, so no floor either.
    """
    if rewards.crispness_weight is None:
        floor = TRAIN_CRISPNESS_DEFAULT if reward_specs(rewards) and not people_judge else 0.0
        rewards = dataclasses.replace(rewards, crispness_weight=floor)
    return rewards


def startup_notes(argv: Sequence[str], train: TrainConfig, rewards: RewardFlags) -> list[str]:
    """One-line notes the training command prints before it starts (what the original's flags
    and semantics do here, so nothing differs silently)."""
    notes = []
    hint = semantics_hint(list(argv), "train")
    if hint:
        notes.append(hint)
    if any(a == "--sample_eta" or a.startswith("--sample_eta=") for a in argv):
        notes.append("--sample_eta is ignored, as in the original (its flow sampler never read "
                     "it)")
    if rewards.semantics != "original":
        return notes
    if rewards.original_repo:
        notes.append(read_original_texts(rewards.original_repo).summary())
    elif rewards.uses_internvl():
        notes.append("--semantics original without --original_repo: the InternVL terms ask our "
                     "presets for the original's use cases (studio, eyes_skin, photoshoot, "
                     "same_subject), not its questions")
    if not rewards.original_repo and train.prompt == DEFAULT_PROMPT and not train.prompt_file:
        notes.append("--semantics original without --original_repo: the edit instruction is ours "
                     "(--prompt), not the original's built-in one")
    if (rewards.style_reference is not None
            and rewards.aesthetic_model_type != "internvl"):
        notes.append("--style_reference is ignored: the original read it only with "
                     "--aesthetic_model_type internvl")
    if train.truncated_backprop == "per_step":
        n, lo, hi = train.sample_num_steps, train.truncation_t_min, train.truncation_t_max
        share = math.prod(1.0 - min(1.0, max(0.0, (i - lo + 1) / (hi - lo + 1)))
                          for i in range(n))
        notes.append(f"truncated backprop as TRL did it: each of the {n} steps draws T in "
                     f"[{lo}, {hi}] and carries gradients when its index >= T; "
                     f"{100 * share:.0f}% of micro-batches will carry no gradient "
                     f"(counted in train/no_grad_micro_batches)")
    return notes


def config_dict(train: TrainConfig, rewards: RewardFlags) -> dict[str, Any]:
    """Every flag in one flat JSON-able dict (saved with the run)."""
    return {**asdict(train), **asdict(rewards)}


__all__ = ["MissingDependencyError", "TrainConfig", "RewardFlags", "parse_config", "load_preset", "check_combination",
           "config_dict", "step_flags", "flag_default", "STEP_TRAIN_FLAGS", "RUN_TRAIN_FLAGS",
           "RUN_REWARD_FLAGS", "LORA_SHAPE_FLAGS", "DEFAULT_PROMPT", "DEFAULT_LORA_TARGETS",
           "startup_notes", "BUILTIN_PRESETS"]
