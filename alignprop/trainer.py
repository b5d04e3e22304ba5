"""The training loop on accelerate: reward backpropagation into a Kontext LoRA.

``train`` reads top to bottom: set up the run (alignprop/run.py), resume, describe it, then
one :func:`optimizer_step` per step -- log, checkpoint, stop on a signal -- and export::

    for each of P = A micro-batches (gradient accumulation; GRPO / D3PO: A x T transitions):
        inputs (B,3,H,W) + prompts          <- SampleStream (deterministic, resumable)
            grpo / d3po: B stored trajectories + one transition, from the round
            (alignprop/rollout.py samples and judges a new round when one is used up)
    alignprop: the N-K no-grad Euler steps of all A micro-batches in one batched pass
        (--batch_nograd_steps; on with a GPU)
    for each micro-batch:
        loss, outputs, reward[B], metrics = method(batch, models)   <- alignprop/methods.py
            alignprop: outputs = sampler(inputs, text, K) (last K Euler steps + VAE decode
            carry grad), loss = -mean(reward_fn(outputs, inputs, prompts)); draft-lv / refl /
            imagerefl: one grad step (see methods.py); + base consistency if asked;
            grpo / d3po: the transition's log-prob under the LoRA -> clipped-ratio / DPO loss
        backward(loss / P)                  <- LoRA parameters only
    one read of the step's metrics and finite flags from the device
    if any rank's loss was non-finite: skip the step (collective decision), weights unchanged
    else clip grad norm (read: a NaN norm skips the step) -> optimizer step -> LR schedule step

Nothing inside the step waits for the device: metrics stay tensors until those two reads, and
noise, ids, sigmas, prompt embeddings and the inputs' VAE latents are on the device already.

Everything that decides what a step sees (data order, noise, random K, rounds' seeds and
orders) is a pure function of (seed, step, micro-batch, rank), and an unfinished round is
saved with the checkpoint, so ``--resume_from`` continues exactly.
"""
from __future__ import annotations

import logging
import math
import random
import signal
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch

from common.profiling import BACKWARD, METRICS, OPTIMIZER, phase
from rewards.base import metrics_to_floats
from common.cli import UserError

from .config import ALIGNPROP_STEPS, TrainConfig
from .data import load_batch, seed_for
from .distributed import grad_norm as total_grad_norm
from .logging_utils import image_grid, log_image_grid
from .lora import LORA_FILE
from .methods import Batch, run_method, shared_nograd_pass
from .reward_flags import RewardFlags
from .run import (Run, checkpoint_run, count_lost_images, describe_run, export_lora, resume_run,
                  setup_run)
from .sampler import stack_prompt_embeds, to_device

logger = logging.getLogger("alignprop")


@dataclass
class TrainResult:
    """What a run did (returned by :func:`train`, mostly for tests and the demo)."""

    global_step: int
    skipped_steps: int
    interrupted: Optional[str]
    lora_path: Optional[Path]
    last_checkpoint: Optional[Path]
    history: list = field(default_factory=list)


@dataclass
class StepResult:
    """One optimizer step: averaged metrics, why it was skipped (if it was), images to log."""

    sums: dict
    grad_norm: float
    skip_reason: Optional[str]
    k: int
    inputs: torch.Tensor
    outputs: torch.Tensor


def choose_k(cfg: TrainConfig, step: int) -> int:
    """Number of backpropagated steps for ``step`` (same on every rank, resume-stable);
    --truncated_backprop per_step: the most steps that can carry gradients (the micro-batches
    draw theirs with :func:`choose_grad_steps`)."""
    lo, hi = cfg.k_range()
    if lo == hi or cfg.truncated_backprop in ("per_step", "alignprop"):
        return hi
    return random.Random(seed_for(cfg.seed, "K", step)).randint(lo, hi)


def alignprop_t_b(cfg: TrainConfig, rng: random.Random) -> int:
    """AlignProp's backprop_timestep (sd_pipeline.py, pipeline_with_grad), scaled from its 50
    steps to N: int(Normal(mean, std)) or randint(0, 50), redrawn until 1 <= t_b <= N-1."""
    n, scale = cfg.sample_num_steps, cfg.sample_num_steps / ALIGNPROP_STEPS
    for _ in range(100_000):
        if cfg.alignprop_backprop_strategy == "gaussian":
            t_b = int(rng.gauss(cfg.alignprop_backprop_mean * scale,
                                cfg.alignprop_backprop_std * scale))
        else:
            t_b = int(rng.random() * n)   # randint(0, 50) of 50 steps, scaled: [0, N)
        if 1 <= t_b <= n - 1:
            return t_b
    raise UserError(f"--truncated_backprop alignprop: no t_b in [1, {n - 1}] in 100000 draws "
                    f"from mean {cfg.alignprop_backprop_mean} std {cfg.alignprop_backprop_std} "
                    f"(steps of 50); move the mean inside the schedule")


def choose_alignprop_k(cfg: TrainConfig, step: int, micro: int, rank: int) -> int | None:
    """--truncated_backprop alignprop: K = N - t_b for this micro-batch (AlignProp draws t_b
    once per sampling call, i.e. per micro-batch); resume-stable, each rank its own draw."""
    if cfg.truncated_backprop != "alignprop":
        return None
    rng = random.Random(seed_for(cfg.seed, "t_b", step, micro, rank))
    return cfg.sample_num_steps - alignprop_t_b(cfg, rng)


def choose_grad_steps(cfg: TrainConfig, step: int, micro: int, rank: int) -> list[bool] | None:
    """--truncated_backprop per_step (TRL's code): denoising step i carries gradients when
    i >= T_i, each T_i drawn from [t_min, t_max] (both included); resume-stable, and, like
    TRL's processes, every rank draws its own."""
    if cfg.truncated_backprop != "per_step":
        return None
    rng = random.Random(seed_for(cfg.seed, "T", step, micro, rank))
    return [i >= rng.randint(cfg.truncation_t_min, cfg.truncation_t_max)
            for i in range(cfg.sample_num_steps)]


class _StopFlag:
    """SIGINT/SIGTERM set a flag; the loop checkpoints and exits at the next step boundary."""

    def __init__(self):
        self.signal: Optional[str] = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. called from a worker thread)
                pass
        return self

    def _handle(self, signum, _frame):
        if self.signal is not None:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name
        logger.warning("%s received: saving a checkpoint after this step, then exiting "
                       "(press Ctrl-C again to abort without saving)", self.signal)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


# --------------------------------------------------------------------------- one step
def micro_batch(run: Run, micro: int, k: int) -> Batch:
    """Micro-batch ``micro`` of the current step: images, prompts, embeds, noise and seeds.

    GRPO / D3PO: stored trajectories and one transition instead (alignprop/rollout.py
    samples a new round at the first micro-batch of a round's first step)."""
    if run.rollouts is not None:
        return run.rollouts.micro_batch(run, micro, k)
    cfg, step = run.cfg, run.global_step
    picks = run.stream.take(run.micro_global, run.rank, run.per_device)
    inputs, prompts, used = load_batch(run.folder, picks, return_indices=True)
    inputs = to_device(inputs, run.device)  # asynchronous from pinned memory on a GPU
    grad_steps = choose_grad_steps(cfg, step, micro, run.rank)
    if grad_steps is not None:
        k = sum(grad_steps)
    k = choose_alignprop_k(cfg, step, micro, run.rank) or k
    sampler = run.models.sampler

    def encode():  # under autocast, as the methods encoded before the cache
        with run.accelerator.autocast():
            return sampler.encode_image(inputs)

    return Batch(inputs, prompts, stack_prompt_embeds(run.text_cache, prompts).to(run.device),
                 torch.Generator().manual_seed(seed_for(cfg.seed, "noise", step, micro, run.rank)),
                 seed_for(cfg.seed, "method", step, micro, run.rank), step, k,
                 targets=run.targets(picks) if run.targets else None, grad_steps=grad_steps,
                 image_tokens=run.input_tokens.get(tuple(used), encode))


def optimizer_step(run: Run) -> StepResult:
    """Accumulate ``A`` micro-batches, clip, step; advances ``run.global_step``.

    ``run.phase`` says how far it got ("compute": weights untouched; "update": changing), so
    an emergency checkpoint after a failure saves only a consistent state.
    """
    acc = run.accelerator
    k = choose_k(run.cfg, run.global_step)
    passes = run.micro_steps   # accumulation steps (x trained transitions for GRPO / D3PO)
    batches = [micro_batch(run, micro, k) for micro in range(passes)]
    if run.nograd_batched:
        with acc.autocast():
            shared_nograd_pass(batches, run.models)
    # Everything below stays on the device until the one read after the last backward.
    sums: dict[str, torch.Tensor] = {}
    finite, out = None, None
    no_grad = 0
    for micro, batch in enumerate(batches):
        # Gradients are all-reduced only on the last micro-batch of the step.
        sync = micro == passes - 1 or run.world == 1
        with nullcontext() if sync else acc.no_sync(run.transformer):
            with acc.autocast():
                out = run_method(batch, run.models, run.cfg)
            checked = out.reward if out.reward is not None else out.loss
            ok = torch.isfinite(checked).all() & torch.isfinite(out.loss).all()
            finite = ok if finite is None else finite & ok
            # A non-finite loss is backpropagated too (its NaN gradients are discarded with
            # the step below): deciding here would make the host wait for the device.
            loss = out.loss / passes
            if not loss.requires_grad:   # --truncated_backprop per_step drew no step
                no_grad += 1
                if run.world > 1:   # every rank must join the gradient all-reduce: zeros
                    loss = loss + 0.0 * sum(p.sum() for p in run.lora_params)
            if loss.requires_grad:
                with phase(BACKWARD):
                    acc.backward(loss)
        # sums in float64, as Python floats summed them before
        for key, v in {"loss": loss.detach().double() * passes, **out.metrics}.items():
            v = v.detach().double() if isinstance(v, torch.Tensor) else torch.tensor(float(v))
            sums[key] = sums[key] + v / passes if key in sums else v / passes
    if run.cfg.truncated_backprop == "per_step":
        sums["no_grad_micro_batches"] = float(no_grad)
    if run.cfg.truncated_backprop == "alignprop":   # the micro-batches' K = N - t_b, averaged
        sums["backprop_steps_drawn"] = sum(b.k for b in batches) / passes

    # every rank sees the same decision, so DDP stays in step
    everywhere = acc.gather(finite.float().reshape(1)).min()
    with phase(METRICS):  # the step's metrics and finite flag: one device -> host transfer
        sums = metrics_to_floats({"finite": everywhere, **sums})
    skip_reason = None if sums.pop("finite") >= 1 else "non-finite reward"
    grad_norm = float("nan")
    with phase(OPTIMIZER):
        if skip_reason is None:
            if run.cfg.max_grad_norm > 0:
                norm = acc.clip_grad_norm_(run.lora_params, run.cfg.max_grad_norm)
            else:  # sharded LoRA: the norm of the whole gradient, not of this shard
                norm = total_grad_norm(run.lora_params)
            grad_norm = float(norm)  # the second (and last) read: AdamW must not take a NaN
            if acc.scaler is None and not math.isfinite(grad_norm):
                skip_reason = "non-finite gradient norm"
            else:
                run.phase = "update"  # weights change: no consistent state until the step ends
                run.optimizer.step()  # fp16: the grad scaler skips inf steps itself
                if getattr(run.optimizer, "step_was_skipped", False):
                    skip_reason = "fp16 overflow"
                else:
                    run.lr_scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
    if skip_reason is not None:
        run.skipped_total += 1
        warnings.warn(f"step {run.global_step}: {skip_reason}; step skipped, LoRA weights "
                      f"unchanged ({run.skipped_total} skipped so far)", RuntimeWarning)
    run.global_step += 1
    run.phase = "after"
    return StepResult(sums, grad_norm, skip_reason, k, batches[-1].inputs, out.outputs)


def log_step(run: Run, res: StepResult, seconds: float) -> dict:
    """Average the step's metrics over ranks; write metrics.jsonl, trackers, image grids."""
    local = {f"train/{k_}": v for k_, v in res.sums.items()}
    names = sorted(local)
    if names and run.world > 1:  # average over ranks (every rank has the same keys)
        vec = run.accelerator.reduce(torch.tensor([local[n] for n in names], device=run.device,
                                                  dtype=torch.float64), "mean")
        local = dict(zip(names, vec.tolist()))
    log = {**local, "train/grad_norm": res.grad_norm,
           "train/lr": run.lr_scheduler.get_last_lr()[0],
           # AlignProp's truncation: the micro-batches' drawn K (averaged), not the largest
           "train/backprop_steps": (res.sums.get("backprop_steps_drawn", res.k)
                                    if run.cfg.method == "alignprop" else
                                    run.rollouts.transitions if run.rollouts else 1),
           "train/sec_per_step": seconds, "train/epoch": run.stream.position / len(run.folder),
           "train/skipped_steps": run.skipped_total,
           "train/skipped_images": count_lost_images(run)}
    step = run.global_step
    run.history.append({"step": step, **log})
    if run.main and (step % run.cfg.log_freq == 0 or step == run.total_steps):
        run.metrics_file.write(step, log)
        run.accelerator.log({k_: v for k_, v in log.items() if math.isfinite(v)}, step=step)
    if (run.main and run.cfg.log_image_freq and res.skip_reason is None
            and (step % run.cfg.log_image_freq == 0 or step == 1)):
        log_image_grid(run.accelerator, image_grid([res.inputs, res.outputs]), step, run.out_dir)
    return log


def _emergency_checkpoint(run: Run, exc: BaseException, step_start) -> None:
    """As on SIGTERM: keep the work done so far when a step fails, then let the error surface."""
    if run.phase == "compute":  # the failed step had not touched the weights
        run.stream.position, run.skipped_total = step_start
    if run.global_step == 0 and isinstance(exc, UserError):
        return  # nothing trained, nothing lost: the one-line error says it all
    if run.phase == "update" or run.global_step == 0 or not run.main:
        if run.main:
            logger.error("unexpected %s at step %d; no checkpoint saved (%s)",
                         type(exc).__name__, run.global_step + 1,
                         "nothing trained yet" if run.global_step == 0 else
                         "it happened while the weights were being updated")
        return
    try:
        saved = checkpoint_run(run, barrier=False)
        logger.error("unexpected %s at step %d: checkpoint of step %d saved to %s; continue "
                     "with --resume_from latest once it is fixed", type(exc).__name__,
                     run.global_step + 1, run.global_step, saved)
    except Exception as save_exc:  # e.g. the disk is full too
        logger.error("unexpected %s at step %d, and the checkpoint could not be saved (%s)",
                     type(exc).__name__, run.global_step + 1, save_exc)


# --------------------------------------------------------------------------- the loop
def train(cfg: TrainConfig, reward_flags: RewardFlags, reward_fn=None,
          accelerator=None, notes: Sequence[str] = ()) -> TrainResult:
    """Train a LoRA; ``reward_fn`` overrides the flags' reward (tests, demo). ``notes``: one-line
    notes of the command (alignprop.config.startup_notes), printed once the run is set up and
    kept in run_config.json."""
    from tqdm.auto import tqdm

    run = setup_run(cfg, reward_flags, reward_fn, accelerator)
    resume_run(run)
    describe_run(run, notes)
    progress = tqdm(total=run.total_steps, initial=run.global_step, disable=not run.main,
                    desc="steps")
    interrupted, step_start = None, (run.stream.position, run.skipped_total)
    with _StopFlag() as stop:
        try:
            while run.global_step < run.total_steps:
                t0 = time.perf_counter()
                # What an emergency checkpoint restores if this step fails before it
                # changes the weights (the step is then redone on resume).
                run.phase, step_start = "compute", (run.stream.position, run.skipped_total)
                res = optimizer_step(run)
                log = log_step(run, res, time.perf_counter() - t0)
                progress.update(1)
                progress.set_postfix(reward=f"{log.get('train/reward', float('nan')):.4f}",
                                     K=res.k)
                if run.world > 1:  # a signal on any rank stops every rank
                    flag = torch.tensor([1.0 if stop.signal else 0.0], device=run.device)
                    stop_now = run.accelerator.gather(flag).max().item() > 0
                else:
                    stop_now = stop.signal is not None
                if (cfg.save_freq and run.global_step % cfg.save_freq == 0) or stop_now \
                        or run.global_step == run.total_steps:
                    checkpoint_run(run)
                if stop_now:
                    interrupted = stop.signal or "signal on another rank"
                    run.accelerator.print(f"stopped by {interrupted} at step {run.global_step}; "
                                          f"checkpoint saved to {run.last_checkpoint}")
                    break
        except Exception as exc:
            _emergency_checkpoint(run, exc, step_start)
            progress.close()
            raise
    progress.close()
    lora_path = export_lora(run, interrupted)
    return TrainResult(run.global_step, run.skipped_total, interrupted, lora_path,
                       run.last_checkpoint, run.history)


__all__ = ["train", "TrainResult", "StepResult", "optimizer_step", "micro_batch", "log_step",
           "choose_k", "choose_grad_steps", "choose_alignprop_k", "alignprop_t_b", "LORA_FILE"]
