"""AlignProp training loop on accelerate: reward backpropagation into a Kontext LoRA.

One optimizer step reads top to bottom::

    for each of A micro-batches (gradient accumulation):
        inputs (B,3,H,W) + prompts          <- SampleStream (deterministic, resumable)
        loss, outputs, reward[B], metrics = method(batch, models)   <- alignprop/methods.py
            alignprop: outputs = sampler(inputs, text, K) (last K Euler steps + VAE decode
            carry grad), loss = -mean(reward_fn(outputs, inputs, prompts)); draft-lv / refl /
            imagerefl: one grad step (see methods.py); + base consistency if asked
        if any rank's loss is non-finite: skip the whole step (collective decision)
        backward(loss / A)                  <- LoRA parameters only
    clip grad norm -> optimizer step -> LR schedule step
    log scalars / image grid; checkpoint every --save_freq; stop on SIGINT/SIGTERM

Everything that decides what a step sees (data order, noise, random K) is a pure
function of (seed, step, rank), so ``--resume_from`` continues exactly.
"""
from __future__ import annotations

import gc
import hashlib
import json
import logging
import math
import os
import random
import signal
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from .checkpoint import load_checkpoint, preflight, save_checkpoint, set_aside_later_checkpoints
from .config import MissingDependencyError, TrainConfig, config_dict
from .data import ImageFolder, SampleStream, load_batch
from .distributed import grad_norm as total_grad_norm
from .distributed import is_sharded, make_accelerator, trainable_parameters
from .logging_utils import (MetricsFile, check_tracker, configure_wandb, image_grid,
                            log_image_grid, tracker_config, truncate_metrics)
from .lora import LORA_FILE, add_lora, load_lora_into, lora_state_dict, save_lora
from .methods import Batch, Models, run_method
from .reward_flags import RewardFlags, build_reward_from_flags
from .sampler import KontextSampler, encode_prompts, stack_prompt_embeds

logger = logging.getLogger("alignprop")

RewardFn = Callable[[torch.Tensor, Optional[torch.Tensor], list], tuple]


@dataclass
class TrainResult:
    """What a run did (returned by :func:`train`, mostly for tests and the demo)."""

    global_step: int
    skipped_steps: int
    interrupted: Optional[str]
    lora_path: Optional[Path]
    last_checkpoint: Optional[Path]
    history: list = field(default_factory=list)


def _seed_for(*parts) -> int:
    """Stable 63-bit seed from any parts (python's hash() is salted per process)."""
    return int(hashlib.sha256("-".join(map(str, parts)).encode()).hexdigest()[:15], 16)


def choose_k(cfg: TrainConfig, step: int) -> int:
    """Number of backpropagated steps for ``step`` (same on every rank, resume-stable)."""
    lo, hi = cfg.k_range()
    if lo == hi:
        return lo
    return random.Random(_seed_for(cfg.seed, "K", step)).randint(lo, hi)


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


def _weight_dtype(mixed_precision: str) -> torch.dtype:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision, torch.float32)


def _make_optimizer(cfg: TrainConfig, params):
    kwargs = dict(lr=cfg.train_learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                  weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon)
    if cfg.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise MissingDependencyError("--use_8bit_adam needs bitsandbytes: `pip install bitsandbytes` "
                               "(CUDA only), or drop the flag") from None
        return bnb.optim.AdamW8bit(params, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


def _describe_reward(reward_fn) -> list:
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


def lora_rank_difference(accelerator, params) -> float:
    """Max over ranks of |checksum - rank 0's checksum| of every LoRA tensor (0 = identical).

    Checksums are the float64 sum and sum of squares of each tensor, so one gather of
    2 x n_params numbers checks data-parallel consistency without moving the weights.
    """
    sums = torch.stack([torch.stack([p.detach().double().sum(), p.detach().double().square().sum()])
                        for p in params]).flatten().to(accelerator.device)
    everyone = accelerator.gather(sums[None]).reshape(accelerator.num_processes, -1)
    return float((everyone - everyone[0]).abs().max())


def _consistency_lpips(cfg: TrainConfig, reward_flags: RewardFlags, device):
    """LPIPS model of --base_consistency_metric lpips (None otherwise)."""
    if cfg.base_consistency_weight <= 0 or cfg.base_consistency_metric != "lpips":
        return None
    from rewards.perceptual import build_lpips_model

    return build_lpips_model(reward_flags.lpips_net, backbone_path=reward_flags.lpips_backbone
                             ).to(device)


def _paired_targets(cfg: TrainConfig, folder: ImageFolder):
    """Loader of --imagerefl_target_dir images for a batch's picks (None without the flag).

    Every training image must have its target (same file name): checked before training.
    """
    if cfg.method != "imagerefl" or cfg.imagerefl_target_dir is None:
        return None
    from rewards.images import load_image, resize_to

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


def train(cfg: TrainConfig, reward_flags: RewardFlags, reward_fn: RewardFn | None = None,
          accelerator=None) -> TrainResult:
    """Run AlignProp training; ``reward_fn`` overrides the flags' reward (tests, demo)."""
    from accelerate.utils import ProjectConfiguration, set_seed
    from diffusers.optimization import get_scheduler

    from .models import load_kontext_pipeline, place_reward, reward_device

    out_dir = Path(cfg.output_dir)
    # Before anything slow: which checkpoint (if any), and whether --output_dir can take
    # this run (writable, and not another run's folder unless resuming it).
    resume_dir = preflight(cfg)
    log_with = check_tracker(cfg.log_with)
    if accelerator is None:
        # DDP, FSDP2 (accelerate config) or one process; gloo when there is no GPU.
        accelerator = make_accelerator(
            mixed_precision=cfg.mixed_precision, log_with=log_with,
            project_config=ProjectConfiguration(project_dir=str(out_dir),
                                                logging_dir=str(out_dir / "logs")))
    main = accelerator.is_main_process
    logging.basicConfig(level=logging.INFO if main else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    device, world, rank = accelerator.device, accelerator.num_processes, accelerator.process_index
    if cfg.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
    if torch.cuda.is_available():
        # cuDNN's attention kernel failed in the backward pass of the full-size transformer
        # (torch 2.11, H200: "mha_graph.execute(...).is_good()"); the flash and
        # memory-efficient kernels run the same shapes, so SDPA picks one of those instead.
        torch.backends.cuda.enable_cudnn_sdp(False)
    # Same seed on every rank: identical LoRA init (DDP also broadcasts rank 0's weights).
    set_seed(cfg.seed)

    # ---------------------------------------------------------------- data
    folder = ImageFolder(cfg.data_dir, cfg.image_height, cfg.image_width, cfg.prompt,
                         cfg.prompt_file, seed=cfg.seed)
    per_device, accum = cfg.train_batch_size, cfg.train_gradient_accumulation_steps
    micro_global = per_device * world
    step_global = micro_global * accum
    if cfg.max_train_steps is not None:
        total_steps = cfg.max_train_steps
    else:
        total_steps = max(1, math.ceil(cfg.num_epochs * len(folder) / step_global))

    # ---------------------------------------------------------------- models
    weight_dtype = _weight_dtype(accelerator.mixed_precision)
    pipe = load_kontext_pipeline(cfg.pretrained_model, dtype=weight_dtype,
                                 revision=cfg.revision, variant=cfg.variant)
    pipe.vae.to(device).requires_grad_(False)
    if not is_sharded(accelerator):
        pipe.transformer.to(device)
    # else it stays in host RAM: FSDP2 moves each block's shard to the card as it wraps
    # it, so no card ever holds the whole 24 GB transformer.
    for enc in (pipe.text_encoder, pipe.text_encoder_2):
        enc.to(device).requires_grad_(False)
    # The loop variable would keep T5-XXL (9.5 GB in bf16) alive for the whole run after the
    # pipeline lets go of it below (measured on an H200: docs/scale.md).
    del enc
    # Text embeddings once, then free the encoders (T5-XXL alone is ~9 GB in bf16).
    text_cache = encode_prompts(pipe, folder.all_prompts() + cfg.extra_prompts(), device,
                                cfg.max_sequence_length)
    text_cache = {p: e.to(device="cpu") for p, e in text_cache.items()}
    pipe.text_encoder = pipe.text_encoder_2 = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

    # --reward_device: the reward models on this process's device, another one, or sharded.
    r_device = reward_device(cfg.reward_device, device, accelerator.local_process_index,
                             int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    if reward_fn is None:
        reward_fn = build_reward_from_flags(reward_flags, device=r_device)
    reward_fn = place_reward(reward_fn, cfg.reward_device, r_device, device,
                             sharded_run=is_sharded(accelerator))

    transformer = pipe.transformer
    lora_params = add_lora(transformer, cfg.lora_rank, cfg.lora_alpha, cfg.target_modules(),
                           cfg.lora_dropout)
    if cfg.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    transformer.train()
    optimizer = _make_optimizer(cfg, lora_params)
    lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                                 num_training_steps=total_steps)
    transformer, optimizer = accelerator.prepare(transformer, optimizer)
    # FSDP2 swaps every parameter for a sharded DTensor one: take the LoRA again.
    lora_params = trainable_parameters(transformer)
    sharded = is_sharded(accelerator)
    # The LR scheduler is stepped by us once per optimizer step (not prepared, so it
    # is not stepped once per process). It is saved by our checkpoint code, never
    # registered with accelerate: accelerate pickles registered objects and unpickles
    # them on load_state, which would let a crafted checkpoint run code.
    bare = accelerator.unwrap_model(transformer)

    def save_model(ckpt_dir):  # checkpoints hold the LoRA, not the whole transformer
        state = lora_state_dict(bare)  # every rank calls it: gathers the shards under FSDP
        if main:
            save_lora(bare, ckpt_dir, state=state)

    def load_model(ckpt_dir):
        load_lora_into(bare, ckpt_dir)

    sampler = KontextSampler(transformer, pipe.vae, pipe.scheduler, bare.config,
                             cfg.image_height, cfg.image_width, cfg.sample_num_steps,
                             cfg.guidance_scale, dtype=weight_dtype)
    models = Models(sampler, reward_fn, bare, _consistency_lpips(cfg, reward_flags, device))
    targets = _paired_targets(cfg, folder)
    identity_text = (text_cache[cfg.imagerefl_identity_prompt].to(device)
                     if cfg.extra_prompts() else None)

    # ---------------------------------------------------------------- resume
    global_step, skipped_total, position = 0, 0, 0
    if resume_dir is not None:
        state = load_checkpoint(accelerator, resume_dir, optimizer=optimizer,
                                scheduler=lr_scheduler, load_model=load_model)
        global_step, position = state["global_step"], state["samples_seen"]
        skipped_total = state.get("skipped_steps", 0)
        if state.get("world_size", world) * state.get("train_batch_size", per_device) != micro_global:
            warnings.warn("resuming with a different global batch size: the data order "
                          "continues from the same sample but batches are grouped differently")
        logger.info("resumed from %s at step %d (%d samples seen)", resume_dir, global_step, position)
        if main:  # an older checkpoint: the steps after it are about to be redone
            dropped = truncate_metrics(out_dir / "metrics.jsonl", global_step)
            moved = set_aside_later_checkpoints(out_dir, global_step)
            if dropped or moved:
                logger.info("resuming at step %d: dropped %d metrics.jsonl row(s) past it; moved "
                            "%d later checkpoint(s) to %s", global_step, dropped, len(moved),
                            moved[0].parent if moved else "-")
        accelerator.wait_for_everyone()
    stream = SampleStream(len(folder), cfg.seed, position)

    # ---------------------------------------------------------------- run description
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        run = {"config": config_dict(cfg, reward_flags), "rewards": _describe_reward(reward_fn),
               "world_size": world, "sharded": sharded, "images": len(folder),
               "skipped_unreadable": [str(p) for p in folder.skipped]}
        (out_dir / "run_config.json").write_text(json.dumps(run, indent=2, default=str))
        if log_with:
            init_kwargs = cfg.tracker_init_kwargs()  # --tracker_kwargs (the original's too)
            if log_with == "wandb":
                wandb_kw = {**configure_wandb(out_dir), **init_kwargs.get("wandb", {})}
                if cfg.tracker_run_name:
                    wandb_kw.setdefault("name", cfg.tracker_run_name)
                init_kwargs["wandb"] = wandb_kw
            accelerator.init_trackers(cfg.tracker_project_name,
                                      config=tracker_config(config_dict(cfg, reward_flags)),
                                      init_kwargs=init_kwargs)
    metrics_file = MetricsFile(out_dir / "metrics.jsonl") if main else None
    k_lo, k_hi = cfg.k_range()
    accelerator.print(
        f"batch arithmetic: {per_device} image(s) per device x {world} process(es) x "
        f"{accum} accumulation step(s) = {step_global} images per optimizer step; "
        f"{len(folder)} training images -> {len(folder) / step_global:.2f} steps per epoch; "
        f"{total_steps} steps in total; sampler {cfg.sample_num_steps} steps, "
        + (f"gradient through the last {k_lo if k_lo == k_hi else f'U[{k_lo},{k_hi}]'}"
           if cfg.method == "alignprop" else f"method {cfg.method} (one grad step)"))

    # ---------------------------------------------------------------- loop
    from tqdm.auto import tqdm

    progress = tqdm(total=total_steps, initial=global_step, disable=not main, desc="steps")
    history, last_ckpt, result_signal = [], None, None

    def count_lost_images() -> int:
        """Input files that became unreadable during the run (skipped), over all ranks."""
        n = len(folder.failed_during_run)
        if world > 1:
            n = int(accelerator.gather(torch.tensor([n], device=device)).max().item())
        return n

    def checkpoint_now(barrier: bool = True) -> Path:
        state = {"global_step": global_step, "samples_seen": stream.position,
                 "epoch": stream.epoch, "skipped_steps": skipped_total, "world_size": world,
                 "train_batch_size": per_device, "seed": cfg.seed, "lora_rank": cfg.lora_rank}
        return save_checkpoint(accelerator, out_dir, global_step, state,
                               cfg.checkpoints_total_limit, optimizer=optimizer,
                               scheduler=lr_scheduler, save_model=save_model, barrier=barrier)

    with _StopFlag() as stop:
        phase, step_start = "after", (stream.position, skipped_total)
        try:
            while global_step < total_steps:
                t0 = time.perf_counter()
                # What an emergency checkpoint restores if this step fails before it
                # changes the weights (the step is then redone on resume).
                phase, step_start = "compute", (stream.position, skipped_total)
                k = choose_k(cfg, global_step)
                sums: dict[str, float] = {}
                skip_reason = None
                for micro in range(accum):
                    picks = stream.take(micro_global, rank, per_device)
                    inputs, prompts = load_batch(folder, picks)
                    inputs = inputs.to(device)
                    text = stack_prompt_embeds(text_cache, prompts)
                    noise_gen = torch.Generator().manual_seed(
                        _seed_for(cfg.seed, "noise", global_step, micro, rank))
                    # Gradients are all-reduced only on the last micro-batch of the step.
                    sync = micro == accum - 1 or world == 1
                    batch = Batch(inputs, prompts, text, noise_gen,
                                  _seed_for(cfg.seed, "method", global_step, micro, rank),
                                  global_step, k, identity_text=identity_text,
                                  targets=targets(picks) if targets else None)
                    with nullcontext() if sync else accelerator.no_sync(transformer):
                        with accelerator.autocast():
                            out = run_method(batch, models, cfg)
                        outputs, metrics = out.outputs, out.metrics
                        checked = out.reward if out.reward is not None else out.loss
                        finite = torch.tensor([float(torch.isfinite(checked).all()
                                                     and torch.isfinite(out.loss).all())],
                                              device=device)
                        if accelerator.gather(finite).min().item() < 1:
                            skip_reason = "non-finite reward"
                            break  # every rank sees the same decision, so DDP stays in step
                        loss = out.loss / accum
                        accelerator.backward(loss)
                    for key, v in {"loss": loss.item() * accum, **metrics}.items():
                        sums[key] = sums.get(key, 0.0) + float(v) / accum

                grad_norm = float("nan")
                if skip_reason is None:
                    if cfg.max_grad_norm > 0:
                        grad_norm = float(accelerator.clip_grad_norm_(lora_params, cfg.max_grad_norm))
                    else:  # sharded LoRA: the norm of the whole gradient, not of this shard
                        grad_norm = total_grad_norm(lora_params)
                    if accelerator.scaler is None and not math.isfinite(grad_norm):
                        skip_reason = "non-finite gradient norm"
                    else:
                        phase = "update"  # weights change: no consistent state until the step ends
                        optimizer.step()  # fp16: the grad scaler skips inf steps itself
                        if getattr(optimizer, "step_was_skipped", False):
                            skip_reason = "fp16 overflow"
                        else:
                            lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                if skip_reason is not None:
                    skipped_total += 1
                    warnings.warn(f"step {global_step}: {skip_reason}; step skipped, LoRA weights "
                                  f"unchanged ({skipped_total} skipped so far)", RuntimeWarning)
                global_step += 1
                phase = "after"
                progress.update(1)

                # ------------------------------------------------------------ logging
                local = {f"train/{k_}": v for k_, v in sums.items()}
                names = sorted(local)
                if names:  # average over ranks (every rank has the same keys)
                    vec = accelerator.reduce(torch.tensor([local[n] for n in names], device=device,
                                                          dtype=torch.float64), "mean")
                    local = dict(zip(names, vec.tolist()))
                log = {**local, "train/grad_norm": grad_norm,
                       "train/lr": lr_scheduler.get_last_lr()[0],
                       "train/backprop_steps": k if cfg.method == "alignprop" else 1,
                       "train/sec_per_step": time.perf_counter() - t0,
                       "train/epoch": stream.position / len(folder),
                       "train/skipped_steps": skipped_total,
                       "train/skipped_images": count_lost_images()}
                history.append({"step": global_step, **log})
                if main and (global_step % cfg.log_freq == 0 or global_step == total_steps):
                    metrics_file.write(global_step, log)
                    accelerator.log({k_: v for k_, v in log.items() if math.isfinite(v)},
                                    step=global_step)
                    progress.set_postfix(reward=f"{log.get('train/reward', float('nan')):.4f}",
                                         K=k)
                if (main and cfg.log_image_freq and skip_reason is None
                        and (global_step % cfg.log_image_freq == 0 or global_step == 1)):
                    log_image_grid(accelerator, image_grid([inputs, outputs]), global_step, out_dir)

                # ------------------------------------------------------------ checkpoint / stop
                flag = torch.tensor([1.0 if stop.signal else 0.0], device=device)
                stop_now = accelerator.gather(flag).max().item() > 0
                if (cfg.save_freq and global_step % cfg.save_freq == 0) or stop_now \
                        or global_step == total_steps:
                    last_ckpt = checkpoint_now()
                if stop_now:
                    result_signal = stop.signal or "signal on another rank"
                    accelerator.print(f"stopped by {result_signal} at step {global_step}; "
                                      f"checkpoint saved to {last_ckpt}")
                    break
        except Exception as exc:
            # As on SIGTERM: keep the work done so far, then let the error surface.
            if phase == "compute":  # the failed step had not touched the weights
                stream.position, skipped_total = step_start
            if phase == "update" or global_step == 0 or not main:
                if main:
                    logger.error("unexpected %s at step %d; no checkpoint saved (%s)",
                                 type(exc).__name__, global_step + 1,
                                 "nothing trained yet" if global_step == 0 else
                                 "it happened while the weights were being updated")
            else:
                try:
                    saved = checkpoint_now(barrier=False)
                    logger.error("unexpected %s at step %d: checkpoint of step %d saved to %s; "
                                 "continue with --resume_from latest once it is fixed",
                                 type(exc).__name__, global_step + 1, global_step, saved)
                except Exception as save_exc:  # e.g. the disk is full too
                    logger.error("unexpected %s at step %d, and the checkpoint could not be "
                                 "saved (%s)", type(exc).__name__, global_step + 1, save_exc)
            progress.close()
            raise
    progress.close()

    # ---------------------------------------------------------------- export
    accelerator.wait_for_everyone()
    # Sharded: one copy of each weight exists, there is nothing to compare.
    rank_diff = 0.0 if sharded else lora_rank_difference(accelerator, lora_params)
    if rank_diff > 0:
        warnings.warn(f"LoRA weights differ across processes (max |diff| of checksums "
                      f"{rank_diff:.3g}); the run is not data-parallel consistent", RuntimeWarning)
    lora_path = None
    lora_state = lora_state_dict(bare)  # gathers the shards under FSDP: every rank calls
    if main:
        lora_path = save_lora(bare, out_dir, state=lora_state)
        # Prove the file loads the way users will load it (diffusers' own reader).
        from diffusers import FluxKontextPipeline

        loaded = FluxKontextPipeline.lora_state_dict(str(out_dir))
        expected = len(lora_params)
        if len(loaded) != expected:
            raise RuntimeError(f"{lora_path}: expected {expected} LoRA tensors, read back "
                               f"{len(loaded)}")
        accelerator.print(f"LoRA written to {lora_path} ({expected} tensors); load it with "
                          f"FluxKontextPipeline.load_lora_weights({str(out_dir)!r})")
        summary = {"global_step": global_step, "skipped_steps": skipped_total,
                   "interrupted": result_signal, "lora": str(lora_path),
                   "last_checkpoint": str(last_ckpt) if last_ckpt else None,
                   "world_size": world, "lora_max_rank_difference": rank_diff,
                   "images_unreadable_during_run": folder.failed_during_run}
        (out_dir / "run_summary.json").write_text(json.dumps(summary, indent=2))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(global_step, skipped_total, result_signal, lora_path, last_ckpt, history)


__all__ = ["train", "TrainResult", "choose_k", "LORA_FILE"]
