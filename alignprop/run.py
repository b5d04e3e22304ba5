"""A training run's set-up, resume, description, checkpoints and export (the loop: trainer.py).

:func:`setup_run` builds everything one run needs -- accelerator, data, the Kontext pipeline
(prompts encoded once, text encoders freed), rewards placed on their device, the LoRA, AdamW,
the LR schedule, the sampler and the method's extra pieces -- into a :class:`Run`. The training
loop (:func:`alignprop.trainer.train`), the benchmarks and the tests all start from it, so what
they measure is what training runs.
"""
from __future__ import annotations

import gc
import json
import logging
import math
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from common.cli import CurrentStderrHandler, UserError
from common.images import load_image, resize_to
from common.original_flags import show
from rewards.perceptual import build_lpips_model

from . import models as kontext_models
from .attention import attention_phases
from .checkpoint import (CheckpointError, load_checkpoint, preflight, read_state, save_checkpoint,
                         set_aside_later_checkpoints)
from .compile import compile_regions
from .config import (LORA_SHAPE_FLAGS, MissingDependencyError, TrainConfig, config_dict,
                     flag_default, step_flags)
from .data import ImageFolder, SampleStream
from .distributed import find_modules, is_sharded, make_accelerator, trainable_parameters
from .logging_utils import (MetricsFile, check_tracker, configure_wandb, tracker_config,
                            truncate_metrics)
from .lora import add_lora, load_lora_into, lora_state_dict, save_lora
from .model_card import push, write_card
from .methods import GRADIENT_METHODS, SCORE_METHODS, Models
from .placement import place_reward, reward_device
from .reward_flags import RewardFlags, build_reward_from_flags
from .rollout import PreferencePairs, Rollouts
from .sampler import KontextSampler, encode_prompts

logger = logging.getLogger("alignprop")

RewardFn = Callable[[torch.Tensor, Optional[torch.Tensor], list], tuple]

# Prompt embeddings stay on the training device up to this size (T5-XXL at 512 tokens: 4 MB a
# prompt in bf16), on the host beyond it (a prompt file of thousands of instructions).
TEXT_ON_DEVICE_BYTES = 1024 ** 3
# The inputs' Kontext tokens kept on the device (128 KB an image at 512 px in bf16).
INPUT_TOKENS_BYTES = 512 * 1024 ** 2


class InputTokens:
    """The inputs' VAE latents (packed Kontext tokens), encoded once per micro-batch content.

    The VAE encode of an input is deterministic, so it is computed the first time a
    micro-batch of these images (in this order) is drawn and reused whenever it is drawn
    again: with one image per micro-batch (the README's runs) every image is encoded once.
    The key is the whole micro-batch, not each image, because a batched encode differs from
    a per-image one in the last bits; this keeps every number as before the cache. Bounded
    by ``limit`` bytes (later content is encoded each time, as before).
    """

    def __init__(self, limit: int = INPUT_TOKENS_BYTES):
        self.limit, self.used, self._tokens = limit, 0, {}

    def get(self, key: tuple, encode: Callable[[], torch.Tensor]) -> torch.Tensor:
        if key in self._tokens:
            return self._tokens[key]
        tokens = encode()
        size = tokens.numel() * tokens.element_size()
        if self.used + size <= self.limit:
            self._tokens[key] = tokens
            self.used += size
        return tokens


@dataclass
class Run:
    """Everything one training run holds; the loop reads and advances it."""

    cfg: TrainConfig
    reward_flags: RewardFlags
    accelerator: Any
    out_dir: Path
    resume_dir: Optional[Path]
    log_with: Optional[str]
    folder: ImageFolder
    total_steps: int
    weight_dtype: torch.dtype
    transformer: Any                # prepared (DDP / FSDP) transformer with the LoRA
    bare: Any                       # the unwrapped transformer (save/load, adapter switch)
    lora_params: list
    optimizer: Any
    lr_scheduler: Any
    sampler: KontextSampler
    models: Models
    reward_fn: RewardFn
    text_cache: dict                # prompt -> PromptEmbeds (on the device when small)
    targets: Optional[Callable] = None      # --imagerefl_target_dir loader
    nograd_batched: bool = False            # --batch_nograd_steps resolved (alignprop)
    input_tokens: InputTokens = field(default_factory=InputTokens)
    rollouts: Optional[Rollouts] = None     # grpo / d3po: rounds of stored trajectories
    # progress (what a checkpoint stores)
    global_step: int = 0
    skipped_total: int = 0
    stream: Optional[SampleStream] = None
    last_checkpoint: Optional[Path] = None
    metrics_file: Optional[MetricsFile] = None
    history: list = field(default_factory=list)
    phase: str = "after"            # "compute" | "update" | "after" (see trainer.optimizer_step)
    # which steps ran under which flags: [{from_step, to_step, config, changed}] (resume_segments)
    segments: list = field(default_factory=list)
    info: dict = field(default_factory=dict)   # run_config.json, less the segments

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def per_device(self) -> int:
        return self.cfg.train_batch_size

    @property
    def accum(self) -> int:
        return self.cfg.train_gradient_accumulation_steps

    @property
    def micro_steps(self) -> int:
        """Backward passes per optimizer step: the accumulation steps, times the trained
        transitions for GRPO / D3PO (one transition per pass)."""
        return self.accum * (self.rollouts.transitions if self.rollouts is not None else 1)

    @property
    def micro_global(self) -> int:
        """Images per micro-batch over all processes."""
        return self.per_device * self.world

    @property
    def step_global(self) -> int:
        """Images per optimizer step over all processes."""
        return self.micro_global * self.accum

    @property
    def sharded(self) -> bool:
        return is_sharded(self.accelerator)


# --------------------------------------------------------------------------- set-up pieces
def weight_dtype(mixed_precision: str) -> torch.dtype:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision, torch.float32)


def make_optimizer(cfg: TrainConfig, params):
    kwargs = dict(lr=cfg.train_learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                  weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon)
    if cfg.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise MissingDependencyError("--use_8bit_adam needs bitsandbytes: `pip install "
                                         "bitsandbytes` (CUDA only), or drop the flag") from None
        return bnb.optim.AdamW8bit(params, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


def consistency_lpips(cfg: TrainConfig, reward_flags: RewardFlags, device):
    """LPIPS model of --base_consistency_metric lpips (None otherwise)."""
    if cfg.base_consistency_weight <= 0 or cfg.base_consistency_metric != "lpips":
        return None
    return build_lpips_model(reward_flags.lpips_net, backbone_path=reward_flags.lpips_backbone
                             ).to(device)


def paired_targets(cfg: TrainConfig, folder: ImageFolder):
    """Loader of --imagerefl_target_dir images for a batch's picks (None without the flag).

    Every training image must have its target (same file name): checked before training.
    """
    if cfg.method != "imagerefl" or cfg.imagerefl_target_dir is None:
        return None
    root = Path(cfg.imagerefl_target_dir).expanduser()
    paths = [root / item.path.name for item in folder.items]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise ValueError(f"--imagerefl_target_dir {root}: no target for {len(missing)} training "
                         f"image(s), e.g. {missing[:3]} (targets need the same file names)")

    def load(picks):
        return torch.stack([resize_to(load_image(paths[i]), cfg.image_height, cfg.image_width,
                                      mode="crop") for _, i in picks])

    return load


def describe_reward(reward_fn) -> list:
    """JSON-able description of the reward terms, including VLM prompts when exposed."""
    if not hasattr(reward_fn, "terms"):
        return [{"name": getattr(reward_fn, "__name__", type(reward_fn).__name__)}]
    out = []
    for term in reward_fn.terms:
        d = {"term": term.name, "weight": term.weight}
        d.update({k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v))
                  for k, v in term.options.items()})
        describe = getattr(term.fn, "describe", None)
        if callable(describe):  # e.g. InternVL rewards: the resolved question and answer scale
            d["resolved"] = describe()
        out.append(d)
    return out


def _encode_and_free_text(pipe, prompts, device, max_sequence_length) -> dict:
    """Text embeddings of every prompt once; then free the text encoders.

    Kept on the device (no copy in the step) up to ``TEXT_ON_DEVICE_BYTES``, else on the CPU.
    """
    for enc in (pipe.text_encoder, pipe.text_encoder_2):
        enc.to(device).requires_grad_(False)
    # The loop variable would keep T5-XXL (9.5 GB in bf16) alive for the whole run after the
    # pipeline lets go of it below (measured on an H200: docs/scale.md).
    del enc
    cache = encode_prompts(pipe, prompts, device, max_sequence_length)
    size = sum(t.numel() * t.element_size() for e in cache.values()
               for t in (e.prompt_embeds, e.pooled_prompt_embeds, e.text_ids))
    if size > TEXT_ON_DEVICE_BYTES:
        cache = {p: e.to(device="cpu") for p, e in cache.items()}
    pipe.text_encoder = pipe.text_encoder_2 = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return cache


def batch_nograd(cfg: TrainConfig, device) -> bool:
    """--batch_nograd_steps resolved: alignprop only; 'auto' = on with a GPU (on a CPU a
    batched matmul gains nothing and would change the last bits of the numbers)."""
    if cfg.method != "alignprop" or cfg.batch_nograd_steps == "off":
        return False
    return cfg.batch_nograd_steps == "on" or torch.device(device).type == "cuda"


def count_steps(cfg: TrainConfig, n_items: int, world: int) -> int:
    """Optimizer steps of the run: --max_train_steps, or --num_epochs passes over the data.

    GRPO / D3PO with a reward: a pass is ``n_items / (inputs per round x processes)``
    rounds of ``updates per round`` steps each; otherwise ``n_items / images (or preference
    examples) per optimizer step``.
    """
    if cfg.max_train_steps is not None:
        return cfg.max_train_steps
    if cfg.method in SCORE_METHODS and not cfg.preferences:
        rounds = max(1, math.ceil(cfg.num_epochs * n_items / (cfg.rl_inputs_per_round * world)))
        return rounds * cfg.rl_updates_per_round()
    step_global = cfg.train_batch_size * world * cfg.train_gradient_accumulation_steps
    return max(1, math.ceil(cfg.num_epochs * n_items / step_global))


class RewardWithoutGradientError(UserError):
    """A gradient method was given a reward that gives no gradient."""


def check_reward_fits_method(method: str, reward_fn) -> None:
    """Gradient methods backpropagate the reward: refuse one without a gradient (one line).

    The reward flags are checked before any model loads (config.check_combination); this
    covers a reward given as a function (tests, the demo, benchmarks).
    """
    if method not in GRADIENT_METHODS or getattr(reward_fn, "differentiable", True):
        return
    names = getattr(reward_fn, "terms_without_gradient", None) or [
        getattr(reward_fn, "__name__", type(reward_fn).__name__)]
    raise RewardWithoutGradientError(
        f"--method {method} backpropagates the reward, but {', '.join(names)} gives no "
        f"gradient; use --method grpo|d3po, which learn from scores alone")


# --------------------------------------------------------------------------- setup_run
def setup_run(cfg: TrainConfig, reward_flags: RewardFlags, reward_fn: RewardFn | None = None,
              accelerator=None) -> Run:
    """Build a run: paths checked first, then data, models, rewards, LoRA and optimizer.

    ``reward_fn`` overrides the flags' reward (tests, demo); ``accelerator`` an existing one.
    """
    from accelerate.utils import ProjectConfiguration, set_seed
    from diffusers.optimization import get_scheduler

    out_dir = Path(cfg.output_dir)
    # Before anything slow: which checkpoint (if any), whether --output_dir can take this run
    # (writable, and not another run's folder unless resuming it), and the data (every image
    # decoded once, so an unreadable one is found now, not at step 10,000).
    resume_dir = preflight(cfg)
    segments = resume_segments(resume_dir, config_dict(cfg, reward_flags), cfg.allow_changed_config,
                               out_dir)
    # The data stream runs over the input images, or (D3PO on people's choices) over the
    # preference examples, whose stored pairs are read and checked here.
    folder = (PreferencePairs(cfg.preferences, cfg.preference_mode, cfg) if cfg.preferences
              else ImageFolder(cfg.data_dir, cfg.image_height, cfg.image_width, cfg.prompt,
                               cfg.prompt_file, seed=cfg.seed, recursive=cfg.recursive))
    targets = paired_targets(cfg, folder)
    log_with = check_tracker(cfg.log_with)
    if accelerator is None:
        # DDP, FSDP2 (accelerate config) or one process; gloo when there is no GPU.
        accelerator = make_accelerator(
            mixed_precision=cfg.mixed_precision, log_with=log_with,
            project_config=ProjectConfiguration(project_dir=str(out_dir),
                                                logging_dir=str(out_dir / "logs")))
    logging.basicConfig(level=logging.INFO if accelerator.is_main_process else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=[CurrentStderrHandler()])
    device = accelerator.device
    if cfg.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
    if torch.cuda.is_available():
        # cuDNN's attention kernel failed in the backward pass of the full-size transformer
        # (torch 2.11, H200: "mha_graph.execute(...).is_good()"); the flash and
        # memory-efficient kernels run the same shapes, so SDPA picks one of those instead.
        # The sampler's no-grad steps switch it back on (alignprop/attention.py).
        torch.backends.cuda.enable_cudnn_sdp(False)
    # Same seed on every rank: identical LoRA init (DDP also broadcasts rank 0's weights).
    set_seed(cfg.seed)

    # ---------------------------------------------------------------- steps
    total_steps = count_steps(cfg, len(folder), accelerator.num_processes)

    # ---------------------------------------------------------------- models
    dtype = weight_dtype(accelerator.mixed_precision)
    pipe = kontext_models.load_kontext_pipeline(cfg.pretrained_model, dtype=dtype,
                                                revision=cfg.revision, variant=cfg.variant)
    pipe.vae.to(device).requires_grad_(False)
    if not is_sharded(accelerator):
        pipe.transformer.to(device)
    # else it stays in host RAM: FSDP2 moves each block's shard to the card as it wraps
    # it, so no card ever holds the whole 24 GB transformer.
    text_cache = _encode_and_free_text(pipe, folder.all_prompts(), device,
                                       cfg.max_sequence_length)

    # --reward_device: the reward models on this process's device, another one, or sharded.
    r_device = reward_device(cfg.reward_device, device, accelerator.local_process_index,
                             int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    if cfg.preferences:   # people are the judge: no reward model
        reward_fn = None
    else:
        if reward_fn is None:
            reward_fn = build_reward_from_flags(reward_flags, device=r_device,
                                                ranking=cfg.method in SCORE_METHODS)
        check_reward_fits_method(cfg.method, reward_fn)
        reward_fn = place_reward(reward_fn, cfg.reward_device, r_device, device,
                                 sharded_run=is_sharded(accelerator))

    # ---------------------------------------------------------------- LoRA + optimizer
    transformer = pipe.transformer
    lora_params = add_lora(transformer, cfg.lora_rank, cfg.lora_alpha, cfg.target_modules(),
                           cfg.lora_dropout)
    if cfg.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    transformer.train()
    optimizer = make_optimizer(cfg, lora_params)
    # Stepped by us once per optimizer step (not prepared, so not once per process) and saved
    # by our checkpoint code, never registered with accelerate: accelerate pickles registered
    # objects and unpickles them on load_state, which would let a crafted checkpoint run code.
    lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                                 num_training_steps=total_steps)
    transformer, optimizer = accelerator.prepare(transformer, optimizer)
    # FSDP2 swaps every parameter for a sharded DTensor one: take the LoRA again.
    lora_params = trainable_parameters(transformer)
    bare = accelerator.unwrap_model(transformer)

    sampler = KontextSampler(transformer, pipe.vae, pipe.scheduler, bare.config,
                             cfg.image_height, cfg.image_width, cfg.sample_num_steps,
                             cfg.guidance_scale, dtype=dtype)
    # cuDNN attention only in the no-grad steps, FA3 there when installed (attention.py)
    sampler.attention = attention_phases(device, dtype)
    if sampler.attention.names != ("default", "default"):
        logger.info(sampler.attention.describe())
    if cfg.compile:
        compile_regions(bare, pipe.vae, find_modules(reward_fn))
        sampler.grad_start_leaf = True  # one graph for every K (sampler.py)
    models = Models(sampler, reward_fn, bare, consistency_lpips(cfg, reward_flags, device))
    rollouts = (Rollouts(cfg, folder if cfg.preferences else None)
                if cfg.method in SCORE_METHODS else None)
    return Run(cfg=cfg, reward_flags=reward_flags, accelerator=accelerator, out_dir=out_dir,
               resume_dir=resume_dir, log_with=log_with, folder=folder, total_steps=total_steps,
               weight_dtype=dtype, transformer=transformer, bare=bare, lora_params=lora_params,
               optimizer=optimizer, lr_scheduler=lr_scheduler, sampler=sampler, models=models,
               reward_fn=reward_fn, text_cache=text_cache, targets=targets,
               nograd_batched=batch_nograd(cfg, device),
               rollouts=rollouts, segments=segments)


# --------------------------------------------------------------------------- segments
# Flags whose change never starts a segment: how this start was asked for, not what it runs.
_NOT_SEGMENT = ("resume_from", "allow_changed_config", "estimate")


def _json(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def resume_segments(resume_dir: Optional[Path], config: dict, allow: bool,
                    out_dir: Path) -> list[dict]:
    """The run's segments -- ``{from_step, to_step, config, changed}``: which steps ran under
    which flags -- with this start added; read from the checkpoint, so resuming from an older
    one never describes steps that are about to be redone.

    A resume that changes a flag of :func:`alignprop.config.step_flags` is refused in one line
    naming each flag with its old and new value, before anything slow, unless ``allow``
    (``--allow_changed_config``); the LoRA's shape can never change.
    """
    config = _json(config)
    if resume_dir is None:
        return [{"from_step": 0, "to_step": None, "config": config}]
    state = read_state(resume_dir)
    step = state["global_step"]
    segments = [dict(s) for s in state.get("segments") or [] if isinstance(s, dict)]
    if not segments:   # written before segments were: the run's own record, if there is one
        segments = [{"from_step": 0, "to_step": None, "config": _recorded_config(out_dir)}]
    before = segments[-1]["config"]
    if not isinstance(before, dict):
        logger.warning("%s does not record the flags it was trained with; changed flags "
                       "cannot be checked", resume_dir)
        before = config
    changed = {k: (before.get(k, _json(flag_default(k))), v) for k, v in config.items()
               if k not in _NOT_SEGMENT and before.get(k, _json(flag_default(k))) != v}
    step_changes = {k: d for k, d in changed.items() if k in step_flags()}
    fixed = [k for k in LORA_SHAPE_FLAGS if k in step_changes]
    if step_changes and (fixed or not allow):
        listing = ", ".join(f"--{k} {_show(a)} -> {_show(b)}" for k, (a, b) in
                            step_changes.items())
        fix = (f"the checkpoint's LoRA has that shape: resume with its --{fixed[0]}" if fixed
               else "resume with its flags, or add --allow_changed_config to continue under "
                    "the new ones (run_config.json then records which steps ran under which)")
        raise CheckpointError(f"--resume_from {resume_dir}: step {step} was trained with other "
                              f"flags that change what a step computes: {listing}; {fix}")
    if not changed:   # the same flags: the segment goes on
        segments[-1]["to_step"] = None
        return segments
    if step_changes:
        logger.warning("resuming at step %d under changed flags (--allow_changed_config): %s",
                       step, ", ".join(step_changes))
    segments[-1]["to_step"] = step
    return segments + [{"from_step": step, "to_step": None, "config": config,
                        "changed": {k: list(d) for k, d in changed.items()}}]


def _recorded_config(out_dir: Path) -> Optional[dict]:
    """``config`` of ``<out_dir>/run_config.json`` (a run from before segments), or None."""
    try:
        return json.loads((out_dir / "run_config.json").read_text()).get("config")
    except (OSError, ValueError, AttributeError):
        return None


def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) and (not value or " " in value) \
        else show(value)


# --------------------------------------------------------------------------- resume
def resume_run(run: Run) -> None:
    """Continue from ``run.resume_dir`` (if any): weights, optimizer, schedule, data position."""
    position = 0
    if run.resume_dir is not None:
        state = load_checkpoint(run.accelerator, run.resume_dir, optimizer=run.optimizer,
                                scheduler=run.lr_scheduler,
                                load_model=lambda d: load_lora_into(run.bare, d))
        run.global_step, position = state["global_step"], state["samples_seen"]
        run.skipped_total = state.get("skipped_steps", 0)
        changed = run.segments[-1].get("changed", {}) if run.segments else {}
        if set(changed) & set(OPTIMIZER_FLAGS):   # --allow_changed_config: the new ones rule
            apply_optimizer_flags(run)
        if run.rollouts is not None and set(changed) & set(ROUND_FLAGS):
            # --allow_changed_config under another method or round shape: the checkpoint's
            # unfinished round (if any) is not one of these; a fresh round starts
            logger.warning("resuming at step %d with other round flags (%s): a fresh round "
                           "starts", run.global_step,
                           ", ".join(sorted(set(changed) & set(ROUND_FLAGS))))
        elif run.rollouts is not None:   # a round interrupted mid-way continues as it was
            run.rollouts.load(run.resume_dir, run.rank, run.global_step)
        if state.get("world_size", run.world) * state.get("train_batch_size", run.per_device) \
                != run.micro_global:
            warnings.warn("resuming with a different global batch size: the data order "
                          "continues from the same sample but batches are grouped differently")
        logger.info("resumed from %s at step %d (%d samples seen)", run.resume_dir,
                    run.global_step, position)
        if run.main:  # an older checkpoint: the steps after it are about to be redone
            dropped = truncate_metrics(run.out_dir / "metrics.jsonl", run.global_step)
            moved = set_aside_later_checkpoints(run.out_dir, run.global_step)
            if dropped or moved:
                logger.info("resuming at step %d: dropped %d metrics.jsonl row(s) past it; moved "
                            "%d later checkpoint(s) to %s", run.global_step, dropped, len(moved),
                            moved[0].parent if moved else "-")
        run.accelerator.wait_for_everyone()
    run.stream = SampleStream(len(run.folder), run.cfg.seed, position,
                              shuffle=run.reward_flags.semantics != "original")


# The flags that shape a GRPO / D3PO round: a checkpoint's unfinished round under others is not
# this run's.
ROUND_FLAGS = ("method", "rl_inputs_per_round", "rl_inner_epochs", "grpo_group_size",
               "train_batch_size", "train_gradient_accumulation_steps")
# The flags a checkpoint's optimizer and LR schedule state would otherwise bring back.
OPTIMIZER_FLAGS = ("train_learning_rate", "lr_scheduler", "lr_warmup_steps", "adam_beta1",
                   "adam_beta2", "adam_weight_decay", "adam_epsilon")


def apply_optimizer_flags(run: Run) -> None:
    """After loading a checkpoint: this run's learning rate, betas, weight decay and epsilon in
    place of the checkpoint's (its moments and step count stay), the LR at the step reached
    from this run's schedule."""
    cfg, sched = run.cfg, run.lr_scheduler
    sched.base_lrs = [cfg.train_learning_rate] * len(run.optimizer.param_groups)
    for group, lam in zip(run.optimizer.param_groups, sched.lr_lambdas):
        group.update(initial_lr=cfg.train_learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                     weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon,
                     lr=cfg.train_learning_rate * lam(sched.last_epoch))
    sched._last_lr = [g["lr"] for g in run.optimizer.param_groups]


# --------------------------------------------------------------------------- description
def batch_arithmetic(run: Run) -> str:
    cfg = run.cfg
    if run.rollouts is not None:
        return run.rollouts.describe(run.world, len(run.folder), run.total_steps)
    k_lo, k_hi = cfg.k_range()
    grad = (f"gradient through the last {k_lo if k_lo == k_hi else f'U[{k_lo},{k_hi}]'}"
            if cfg.method == "alignprop" else f"method {cfg.method} (one grad step)")
    return (f"batch arithmetic: {run.per_device} image(s) per device x {run.world} process(es) x "
            f"{run.accum} accumulation step(s) = {run.step_global} images per optimizer step; "
            f"{len(run.folder)} training images -> {len(run.folder) / run.step_global:.2f} steps "
            f"per epoch; {run.total_steps} steps in total; sampler {cfg.sample_num_steps} steps, "
            + grad)


def describe_run(run: Run, notes: Sequence[str] = ()) -> None:
    """run_config.json, the trackers, the metrics file and the batch arithmetic line; the
    command's one-line ``notes`` go to stderr (after the set-up, so a failing command still
    prints one line) and into run_config.json."""
    cfg = run.cfg
    if run.main:
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        run.out_dir.mkdir(parents=True, exist_ok=True)
        run.info = {"config": config_dict(cfg, run.reward_flags),
                    "rewards": describe_reward(run.reward_fn), "world_size": run.world,
                    "sharded": run.sharded, "images": len(run.folder),
                    "skipped_unreadable": [str(p) for p in run.folder.skipped],
                    "notes": list(notes)}
        write_run_config(run)
        if run.log_with:
            init_kwargs = cfg.tracker_init_kwargs()  # --tracker_kwargs (the original's too)
            if run.log_with == "wandb":
                wandb_kw = {**configure_wandb(run.out_dir), **init_kwargs.get("wandb", {})}
                if cfg.tracker_run_name:
                    wandb_kw.setdefault("name", cfg.tracker_run_name)
                init_kwargs["wandb"] = wandb_kw
            run.accelerator.init_trackers(
                cfg.tracker_project_name, config=tracker_config(config_dict(cfg, run.reward_flags)),
                init_kwargs=init_kwargs)
        run.metrics_file = MetricsFile(run.out_dir / "metrics.jsonl")
    run.accelerator.print(batch_arithmetic(run))


def write_run_config(run: Run) -> None:
    """run_config.json: every flag, the reward terms, and the segments (which steps ran under
    which flags; the open one ends at the step the run stopped)."""
    info = {**run.info, "segments": run.segments}
    (run.out_dir / "run_config.json").write_text(json.dumps(info, indent=2, default=str))


# --------------------------------------------------------------------------- checkpoints
def checkpoint_run(run: Run, barrier: bool = True) -> Path:
    """Save LoRA, optimizer, schedule, RNG and position (every rank calls it)."""
    bare = run.bare

    def save_model(ckpt_dir):  # checkpoints hold the LoRA, not the whole transformer
        state = lora_state_dict(bare)  # every rank calls it: gathers the shards under FSDP
        if run.main:
            save_lora(bare, ckpt_dir, state=state)

    save_rank = None
    if run.rollouts is not None:   # GRPO / D3PO: each process's unfinished round
        def save_rank(ckpt_dir):
            run.rollouts.save(ckpt_dir, run.rank, run.global_step)

    state = {"global_step": run.global_step, "samples_seen": run.stream.position,
             "epoch": run.stream.epoch, "skipped_steps": run.skipped_total,
             "world_size": run.world, "train_batch_size": run.per_device, "seed": run.cfg.seed,
             "lora_rank": run.cfg.lora_rank, "segments": run.segments}
    run.last_checkpoint = save_checkpoint(run.accelerator, run.out_dir, run.global_step, state,
                                          run.cfg.checkpoints_total_limit,
                                          optimizer=run.optimizer, scheduler=run.lr_scheduler,
                                          save_model=save_model, save_rank=save_rank,
                                          barrier=barrier)
    return run.last_checkpoint


def count_lost_images(run: Run) -> int:
    """Input files that became unreadable during the run (skipped), over all ranks."""
    n = len(run.folder.failed_during_run)
    if run.world > 1:
        n = int(run.accelerator.gather(torch.tensor([n], device=run.device)).max().item())
    return n


# --------------------------------------------------------------------------- export
def lora_rank_difference(accelerator, params) -> float:
    """Max over ranks of |checksum - rank 0's checksum| of every LoRA tensor (0 = identical).

    Checksums are the float64 sum and sum of squares of each tensor, so one gather of
    2 x n_params numbers checks data-parallel consistency without moving the weights.
    """
    sums = torch.stack([torch.stack([p.detach().double().sum(), p.detach().double().square().sum()])
                        for p in params]).flatten().to(accelerator.device)
    everyone = accelerator.gather(sums[None]).reshape(accelerator.num_processes, -1)
    return float((everyone - everyone[0]).abs().max())


def export_lora(run: Run, interrupted: Optional[str]) -> Optional[Path]:
    """Write the final LoRA (diffusers format), prove it loads, write run_summary.json."""
    accelerator = run.accelerator
    accelerator.wait_for_everyone()
    # Sharded: one copy of each weight exists, there is nothing to compare.
    rank_diff = 0.0 if run.sharded else lora_rank_difference(accelerator, run.lora_params)
    if rank_diff > 0:
        warnings.warn(f"LoRA weights differ across processes (max |diff| of checksums "
                      f"{rank_diff:.3g}); the run is not data-parallel consistent", RuntimeWarning)
    lora_path = None
    lora_state = lora_state_dict(run.bare)  # gathers the shards under FSDP: every rank calls
    if run.main:
        lora_path = save_lora(run.bare, run.out_dir, state=lora_state)
        # Prove the file loads the way users will load it (diffusers' own reader).
        from diffusers import FluxKontextPipeline

        loaded = FluxKontextPipeline.lora_state_dict(str(run.out_dir))
        expected = len(run.lora_params)
        if len(loaded) != expected:
            raise RuntimeError(f"{lora_path}: expected {expected} LoRA tensors, read back "
                               f"{len(loaded)}")
        accelerator.print(f"LoRA written to {lora_path} ({expected} tensors); load it with "
                          f"FluxKontextPipeline.load_lora_weights({str(run.out_dir)!r})")
        summary = {"global_step": run.global_step, "skipped_steps": run.skipped_total,
                   "interrupted": interrupted, "lora": str(lora_path),
                   "last_checkpoint": str(run.last_checkpoint) if run.last_checkpoint else None,
                   "world_size": run.world, "lora_max_rank_difference": rank_diff,
                   "images_unreadable_during_run": run.folder.failed_during_run}
        if run.info:
            run.segments[-1]["to_step"] = run.global_step
            write_run_config(run)
        card = write_card(run.out_dir, config_dict(run.cfg, run.reward_flags),
                          describe_reward(run.reward_fn), run.cfg.hub_model_id)
        summary["model_card"] = str(card)
        if run.cfg.push_to_hub:
            summary["hub_url"], line = push(run.out_dir, run.cfg.hub_model_id)
            if summary["hub_url"] is None:
                logger.warning(line)
            else:
                accelerator.print(line)
        (run.out_dir / "run_summary.json").write_text(json.dumps(summary, indent=2))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return lora_path


__all__ = ["Run", "setup_run", "resume_run", "describe_run", "checkpoint_run", "export_lora",
           "count_lost_images", "lora_rank_difference", "describe_reward", "make_optimizer",
           "weight_dtype", "batch_arithmetic", "batch_nograd", "InputTokens", "count_steps",
           "check_reward_fits_method", "RewardWithoutGradientError"]
