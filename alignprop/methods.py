"""Training methods: how one micro-batch becomes a loss. One function per method.

Every method has the signature ``method(batch, models, flags) -> MethodOutput`` and shares
the sampler, the reward stack, checkpoints and resume with the others; the trainer's loop
is the same for all of them (``--method`` picks the function from :data:`METHODS`).

``alignprop`` (default; AlignProp, Prabhudesai et al. 2023 / DRaFT-K, Clark et al. 2023)
    Sample all N Euler steps, gradient through the last K (``--backprop_steps`` /
    ``--truncated_backprop``) and the VAE decode; loss = -reward(output).
``draft-lv`` (DRaFT-LV, Clark et al. 2023, section 4.2)
    Sample the whole chain without grad to the clean latent x0; then ``--draft_lv_n`` times
    (paper: n = 2) re-noise x0 to the last step's noise level with a fresh draw,
    ``x_t = (1 - s) x0 + s eps``, take the last Euler step with grad and score the decode;
    loss = -mean over the n rewards. Gradient through one step only: cheap, low variance.
``refl`` (ReFL, Xu et al. 2023; THUDM/ImageReward ImageReward/ReFL.py)
    Denoise without grad to a step ``i`` drawn uniformly from the late range
    ``[ceil(--refl_start_fraction x N), N-1]`` (ReFL.py: randint(30, 39) of 40 steps,
    fraction 0.75), predict the velocity there with grad and score the closed-form clean
    image of flow matching, ``x0 = x_i - s_i v`` (x_s = (1-s) x0 + s eps, v = eps - x0);
    loss = -reward (``--refl_loss linear``) or ReFL.py's
    ``relu(--refl_threshold - reward) x --refl_grad_scale`` (``--refl_loss relu``, 2 and 1e-3).
``imagerefl`` (ImageReFL, ControlGenAI/ImageReFL src/trainer/image_refl_trainer.py)
    Starts from a REAL image: the latent z of the input photo (or of its paired target in
    ``--imagerefl_target_dir``) noised to step ``k = ceil(--refl_start_fraction x N)``,
    ``x_k = (1 - s_k) z + s_k eps``; no-grad Euler steps to ``m ~ U[k, N-1]``; one velocity
    prediction with grad at m, reward of ``x_m - s_m v``; the same-step regulariser
    ``mse(eps_hat, eps)`` at step k, ``eps_hat = x_k + (1 - s_k) v_theta(x_k)``; loss
    ``--imagerefl_loss_scale x (-reward + --imagerefl_mse_scale x mse)`` (published 1e-3,
    0.01).

``grpo`` (Flow-GRPO, Liu et al. 2025; yifan123/flow_grpo scripts/train_sd3.py)
    Learns from scores, no reward gradient. Rounds of G SDE samples per input are judged
    and stored (alignprop/rollout.py); each call trains one stored transition of a
    micro-batch: PPO-clipped ratio to the sampling policy times the group-normalised
    advantage, optional KL to the LoRA-off model.
``d3po`` (D3PO, Yang et al. 2024; yk7333/d3po scripts/rm/train_d3po.py)
    Learns from preferences: pairs sharing their starting noise, the better-scored (or
    people's chosen, ``--preferences``) sample preferred; each call trains one stored
    transition: -log sigmoid(beta (log r_a - log r_b) s), r the policy / LoRA-off ratio
    clamped to [1 - eps, 1 + eps]. Equations and differences: docs/methods.md.

Base consistency (gradient methods, ``--base_consistency_weight`` > 0): the distance between
the LoRA's prediction and the base model's (adapters disabled, no grad) for the same input,
noise and prompt -- the final latents for ``alignprop``, the one-step clean-latent
prediction for the others -- as mean squared error in latent space (``latent``), LPIPS of
the decoded images (``lpips``) or the fine detail of the decoded images' difference beyond a
global tone and colour edit (``detail``, rewards.grid.detail_beyond_edit: an edit of the
whole look is free, texture and grids the LoRA adds are not); added to the loss.
"""
from __future__ import annotations

import math
import random
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from rewards.base import batch_mean
from rewards.grid import detail_beyond_edit

from .sampler import cat_prompt_embeds
from .trajectory import replay

METHOD_NAMES = ("alignprop", "draft-lv", "refl", "imagerefl", "grpo", "d3po")
# Methods that learn from scores alone (the reward runs without gradient) ...
SCORE_METHODS = ("grpo", "d3po")
# ... and those that backpropagate the reward into the sampler: they need its gradient.
GRADIENT_METHODS = tuple(m for m in METHOD_NAMES if m not in SCORE_METHODS)
BASE_METRICS = ("latent", "lpips", "detail")
REFL_LOSSES = ("linear", "relu")
RL_TIMESTEPS = ("all", "window")
GRPO_STD = ("group", "batch")
PREFERENCE_MODES = ("majority", "every")   # = alignprop.preferences.MODES (a test checks)


def _f(default: Any, help: str, choices=None):
    meta: dict[str, Any] = {"help": help}
    if choices is not None:
        meta["choices"] = list(choices)
    return field(default=default, metadata=meta)


@dataclass
class MethodFlags:
    """Flags of the training method and the base-consistency term (mixed into TrainConfig)."""

    method: str = _f(
        "alignprop",
        "Training method: 'alignprop' (reward of the full sample, gradient through the last K "
        "steps: AlignProp / DRaFT-K), 'draft-lv' (DRaFT-LV: n re-noised copies of the final "
        "sample, one grad step each), 'refl' (ReFL: no-grad denoising to a random late step, "
        "one grad step, reward on the closed-form clean image) or 'imagerefl' (ImageReFL: ReFL "
        "started from the noised input photo, plus the same-step noise-MSE regulariser). See "
        "alignprop/methods.py and docs/methods.md.", METHOD_NAMES)
    draft_lv_n: int = _f(2, "DRaFT-LV: noise re-draws at the last step (published default 2).")
    refl_start_fraction: float = _f(
        0.75, "ReFL / ImageReFL: the grad step is drawn uniformly from steps "
              "[ceil(f x N), N-1] of the N sampler steps (published: steps 30-39 of 40, f=0.75; "
              "at N=8 that is {6, 7}); ImageReFL also starts there, at step ceil(f x N).")
    refl_loss: str = _f(
        "linear", "ReFL: 'linear' = -reward (ImageReFL's reimplementation of ReFL, without its "
                  "scale); 'relu' = relu(--refl_threshold - reward) x --refl_grad_scale "
                  "(ImageReward's ReFL.py). They differ only where a reward passes the "
                  "threshold: there relu gives no gradient.", REFL_LOSSES)
    refl_threshold: float = _f(2.0, "ReFL --refl_loss relu: the hinge (ReFL.py: 2).")
    refl_grad_scale: float = _f(1e-3, "ReFL --refl_loss relu: the loss scale (ReFL.py "
                                      "--grad_scale 1e-3).")
    imagerefl_loss_scale: float = _f(
        1e-3, "ImageReFL: the whole loss is scaled by this (published loss_scale 1e-3).")
    imagerefl_mse_scale: float = _f(
        0.01, "ImageReFL: weight of the same-step regulariser mse(eps_hat, eps) at the start "
              "step (published mse_loss_scale 0.01).")
    imagerefl_target_dir: Optional[str] = _f(
        None, "ImageReFL: folder of paired target images (same file names as --data_dir): the "
              "real image that is noised and regularised toward is the target, not the input.")
    base_consistency_weight: float = _f(
        0.0, "Weight of the base-consistency term (every method): distance of the LoRA's "
             "prediction from the base model's for the same input, noise and prompt; 0 = off.")
    base_consistency_metric: str = _f(
        "latent", "Base-consistency distance: 'latent' (mean squared error of latents), "
                  "'lpips' (LPIPS of the decoded images; uses --lpips_net/--lpips_backbone) "
                  "or 'detail' (fine detail the LoRA changes beyond a global tone/colour "
                  "edit of the base model's image: texture, grids; the edit itself is free).",
        BASE_METRICS)

    # ---------------------------------------------------------------- grpo / d3po
    sde_noise: float = _f(
        0.7, "GRPO / D3PO: noise level a of the stochastic sampler (Flow-GRPO's SDE: per-step "
             "std a sqrt(t/(1-t)) sqrt(-dt); published a = 0.7). Must be > 0: a deterministic "
             "step has no log-probability.")
    rl_inputs_per_round: int = _f(
        1, "GRPO / D3PO: input images per process per sampling round. Each gives "
           "--grpo_group_size samples (GRPO) or one pair (D3PO); the round's samples (pairs) "
           "are then trained on in micro-batches of --train_batch_size for --rl_inner_epochs "
           "passes, so a round lasts inputs x G / (batch x accumulation) x epochs optimizer "
           "steps (printed before step 0).")
    rl_inner_epochs: int = _f(
        1, "GRPO / D3PO: passes over a round's stored trajectories before sampling again "
           "(Flow-GRPO / D3PO num_inner_epochs; published 1).")
    rl_timesteps: str = _f(
        "all", "GRPO / D3PO: which transitions of each stored trajectory are trained: 'all' "
               "(the published setting) or 'window' (--rl_window consecutive steps, the window "
               "drawn per round from the seed).", RL_TIMESTEPS)
    rl_window: int = _f(2, "GRPO / D3PO: transitions per sample with --rl_timesteps window.")
    grpo_group_size: int = _f(
        4, "GRPO: samples per input (same image and instruction, different noise); advantages "
           "are normalised within each group.")
    grpo_clip_range: float = _f(
        1e-4, "GRPO: PPO clip range of the probability ratio (Flow-GRPO's default 1e-4; the "
              "log-probs are per-dimension means).")
    grpo_adv_clip: float = _f(5.0, "GRPO: advantages are clipped to [-c, c] (Flow-GRPO: 5).")
    grpo_kl_beta: float = _f(
        0.0, "GRPO: weight of the KL term to the base model (the LoRA switched off: no second "
             "copy), Flow-GRPO's ||mean - mean_ref||^2 / (2 std^2); 0 = off (Flow-GRPO's "
             "configs use 0.01-0.04).")
    grpo_std: str = _f(
        "group", "GRPO: the std that divides the advantages: 'group' (within each group, as the "
                 "mean) or 'batch' (over the whole round on every process, Flow-GRPO's "
                 "global_std).", GRPO_STD)
    dpo_beta: float = _f(
        0.1, "D3PO: beta of the DPO loss -log sigmoid(beta (log r_w - log r_l)), r = clamped "
             "policy / reference ratio of a transition (D3PO's default 0.1).")
    d3po_eps: float = _f(
        0.1, "D3PO: the ratios are clamped to [1 - eps, 1 + eps] (D3PO's default 0.1).")
    preferences: Optional[str] = _f(
        None, "D3PO: train on people's choices instead of a reward: the preferences.jsonl in a "
              "pairs folder (python -m alignprop.sample_pairs, then python -m alignprop.annotate);"
              " the stored trajectories of the chosen pairs are the training data (no "
              "--data_dir, no reward flags).")
    preference_mode: str = _f(
        "majority", "D3PO with --preferences: 'majority' (one example per pair, the edit most "
                    "people chose; ties left out) or 'every' (one example per choice).",
        PREFERENCE_MODES)

    def validate_method(self) -> None:
        for name, valid in (("method", METHOD_NAMES), ("base_consistency_metric", BASE_METRICS),
                            ("refl_loss", REFL_LOSSES),
                            ("rl_timesteps", RL_TIMESTEPS), ("grpo_std", GRPO_STD),
                            ("preference_mode", PREFERENCE_MODES)):
            if getattr(self, name) not in valid:
                raise ValueError(f"--{name} {getattr(self, name)!r} is not valid; choose one of: "
                                 f"{', '.join(valid)}")
        if self.draft_lv_n < 1:
            raise ValueError(f"--draft_lv_n must be >= 1, got {self.draft_lv_n}")
        if not 0.0 <= self.refl_start_fraction < 1.0:
            raise ValueError(f"--refl_start_fraction must be in [0, 1), got "
                             f"{self.refl_start_fraction}")
        for name in ("imagerefl_mse_scale", "base_consistency_weight"):
            v = getattr(self, name)
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"--{name} must be a finite number >= 0, got {v}")
        for name in ("imagerefl_loss_scale", "refl_grad_scale"):
            v = getattr(self, name)
            if not math.isfinite(v) or v <= 0:
                raise ValueError(f"--{name} must be a finite number > 0, got {v}")
        if not math.isfinite(self.refl_threshold):
            raise ValueError(f"--refl_threshold must be a finite number, got "
                             f"{self.refl_threshold}")
        if self.refl_loss != "linear" and self.method != "refl":
            raise ValueError(f"--refl_loss {self.refl_loss} is ReFL's loss (--method refl); "
                             f"--method {self.method} has its own")
        if self.imagerefl_target_dir is not None:
            if self.method != "imagerefl":
                raise ValueError("--imagerefl_target_dir is used only with --method imagerefl")
            if not Path(self.imagerefl_target_dir).expanduser().is_dir():
                raise ValueError(f"--imagerefl_target_dir: folder not found: "
                                 f"{self.imagerefl_target_dir}")
        self._validate_score_methods()

    def _validate_score_methods(self) -> None:
        """GRPO / D3PO flags (their batch arithmetic is checked in TrainConfig.validate)."""
        for name in ("rl_inputs_per_round", "rl_inner_epochs", "rl_window", "grpo_group_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        for name in ("sde_noise", "grpo_clip_range", "grpo_adv_clip", "grpo_kl_beta", "dpo_beta",
                     "d3po_eps"):
            v = getattr(self, name)
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"--{name} must be a finite number >= 0, got {v}")
        if self.method in SCORE_METHODS:
            if self.sde_noise == 0:
                raise ValueError(f"--method {self.method} needs --sde_noise > 0 (at 0 the sampler "
                                 f"is deterministic and its steps have no log-probability)")
            positive = (("grpo_clip_range", "grpo_adv_clip") if self.method == "grpo"
                        else ("dpo_beta",))
            for name in positive:
                if getattr(self, name) == 0:
                    raise ValueError(f"--{name} must be > 0 with --method {self.method}")
            if self.method == "d3po" and not 0 < self.d3po_eps < 1:
                raise ValueError(f"--d3po_eps must be in (0, 1), got {self.d3po_eps}")
        if self.method in SCORE_METHODS and self.base_consistency_weight > 0:
            raise ValueError(f"--base_consistency_weight is for the gradient methods; --method "
                             f"{self.method} stays near the base model through "
                             + ("--grpo_kl_beta" if self.method == "grpo" else
                                "its reference ratio (--d3po_eps, --dpo_beta)"))
        if self.method == "grpo" and self.grpo_group_size < 2:
            raise ValueError("--grpo_group_size must be >= 2 (advantages compare the samples of "
                             "a group)")
        if self.preferences is not None:
            if self.method != "d3po":
                raise ValueError(f"--preferences trains with --method d3po, not --method "
                                 f"{self.method}")
            p = Path(self.preferences).expanduser()
            if not p.is_file():
                raise ValueError(f"--preferences: file not found: {self.preferences} (python -m "
                                 f"alignprop.annotate DIR writes DIR/preferences.jsonl)")

    def transitions(self, num_steps: int) -> int:
        """GRPO / D3PO: transitions of each stored trajectory trained per update."""
        return num_steps if self.rl_timesteps == "all" else min(self.rl_window, num_steps)



# ------------------------------------------------------------------ what a method sees
@dataclass
class Models:
    """The trained and frozen pieces a method uses."""

    sampler: Any                    # alignprop.sampler.KontextSampler (holds the LoRA model)
    reward_fn: Callable             # composite reward: (images, inputs, prompts) -> (r[B], m)
    bare: Any                       # unwrapped transformer (toggles the adapter)
    lpips: Any = None               # LPIPS model for --base_consistency_metric lpips


@dataclass
class Batch:
    """One micro-batch."""

    inputs: torch.Tensor            # (B,3,H,W) in [0,1]
    prompts: list
    text: Any                       # PromptEmbeds of the prompts
    generator: torch.Generator      # noise of this micro-batch (resume-stable)
    seed: int                       # other draws of this micro-batch (resume-stable)
    step: int                       # optimizer step
    k: int                          # backpropagated steps (alignprop)
    targets: Optional[torch.Tensor] = None   # imagerefl paired targets (B,3,H,W)
    grad_steps: Optional[list] = None        # --truncated_backprop per_step: bool per step
    image_tokens: Optional[torch.Tensor] = None  # the inputs' Kontext tokens (trainer's cache)
    # alignprop, set by the step's shared no-grad pass (shared_nograd_pass): the initial
    # noise and the latents entering step N-K
    noise: Optional[torch.Tensor] = None
    start: Optional[torch.Tensor] = None

    def tokens(self, sampler) -> torch.Tensor:
        """The inputs' Kontext tokens: cached by the trainer, or encoded now."""
        return self.image_tokens if self.image_tokens is not None \
            else sampler.encode_image(self.inputs)
    rollout: Optional[RolloutSlice] = None   # grpo / d3po: stored trajectories to train on


@dataclass
class RolloutSlice:
    """GRPO / D3PO: one micro-batch of a round's stored trajectories and the transition
    ``x_step -> x_{step+1}`` trained on it (built by alignprop/rollout.py)."""

    traj: Any                       # Trajectory: GRPO B samples; D3PO 2B rows, a's then b's
    step: int                       # the transition's index j in the sampler's schedule
    advantages: Optional[torch.Tensor] = None   # GRPO (B,) group-normalised
    prefer: Optional[torch.Tensor] = None       # D3PO (B,): +1 a preferred, -1 b, 0 tie
    rewards: Optional[torch.Tensor] = None      # (rows,) the judge's scores (None: people)
    images: Optional[torch.Tensor] = None       # (B,3,H,W) decoded samples (logging)
    metrics: dict = field(default_factory=dict)  # the round's judge statistics


@dataclass
class MethodOutput:
    loss: torch.Tensor              # scalar to minimise (before accumulation scaling)
    outputs: torch.Tensor           # (B,3,H,W) images for logging
    metrics: dict = field(default_factory=dict)
    reward: Optional[torch.Tensor] = None    # (B,) when a reward was computed


@contextmanager
def base_model(bare):
    """The base model: LoRA adapters disabled inside the block (peft's switch)."""
    bare.disable_adapters()
    try:
        yield
    finally:
        bare.enable_adapters()


def _reward_loss(models: Models, images, batch: Batch, metrics: dict):
    reward, m = models.reward_fn(images.float(), batch.inputs, batch.prompts)
    metrics.update(m)
    return -reward.mean(), reward


def _consistency(models: Models, flags: MethodFlags, lora_latents, base_latents,
                 metrics: dict) -> torch.Tensor:
    """Distance of the LoRA's latents from the base model's (weighted), logged unweighted."""
    if flags.base_consistency_metric == "latent":
        d = F.mse_loss(lora_latents.float(), base_latents.float().detach())
    elif flags.base_consistency_metric == "detail":
        sampler = models.sampler
        a = sampler.decode(lora_latents)
        with torch.no_grad():
            b = sampler.decode(base_latents)
        d = detail_beyond_edit(a.float(), b.float()).mean()
    else:
        sampler = models.sampler
        a = sampler.decode(lora_latents)
        with torch.no_grad():
            b = sampler.decode(base_latents)
        d = models.lpips(a.float(), b.float(), normalize=True).mean()
    metrics["base_consistency"] = batch_mean(d)
    return flags.base_consistency_weight * d


def _x0(latents, sigma, velocity):
    """Clean latent of flow matching: x_s = (1-s) x0 + s eps and v = eps - x0."""
    return (latents.float() - sigma * velocity.float()).to(velocity.dtype)


def _one_step_loss(batch: Batch, models: Models, flags: MethodFlags, x_t, i: int, image_tokens,
                   metrics: dict, velocity=None, loss_of=None):
    """Velocity with grad at sampler step ``i`` from x_t -> clean latent -> reward (+ base
    consistency). The model is fed step i exactly as the sampler feeds it. ``velocity``:
    that prediction, already made; ``loss_of``: reward (B,) -> loss (default -mean)."""
    sampler = models.sampler
    cond = sampler.condition(image_tokens, batch.text)
    sigma = sampler.sigmas[i].to(x_t.device)
    if velocity is None:
        velocity = sampler.step_velocity(x_t, i, cond)
    x0 = _x0(x_t, sigma, velocity)
    images = sampler.decode(x0)
    loss, reward = _reward_loss(models, images, batch, metrics)
    if loss_of is not None:
        loss = loss_of(reward)
    if flags.base_consistency_weight > 0:
        with torch.no_grad(), base_model(models.bare):
            x0_base = _x0(x_t, sigma, sampler.step_velocity(x_t, i, cond))
        loss = loss + _consistency(models, flags, x0, x0_base, metrics)
    return loss, reward, images


# ------------------------------------------------------------------ the methods
def shared_nograd_pass(batches: list[Batch], models: Models) -> None:
    """alignprop: the N-K no-grad Euler steps of every micro-batch of an optimizer step as
    one batched pass (one transformer call per step instead of one per micro-batch).

    Sets each batch's ``noise`` (drawn from its own generator, as :func:`alignprop` draws it)
    and ``start`` (the latents entering step N-K); the grad steps stay per micro-batch. The
    result equals per-micro-batch sampling up to the last bits of the batched matmuls.
    """
    sampler = models.sampler
    if any(b.grad_steps is not None or b.k != batches[0].k for b in batches):
        return  # --truncated_backprop per_step: each micro-batch has its own steps
    n = sampler.num_steps
    stop = n - max(0, min(batches[0].k, n))
    for b in batches:
        b.noise = sampler.initial_noise(len(b.inputs), b.generator, b.inputs.device)
    if stop == 0:
        return
    starts = sampler.denoise_to(torch.cat([b.noise for b in batches]),
                                torch.cat([b.tokens(sampler) for b in batches]),
                                cat_prompt_embeds([b.text for b in batches]), stop)
    for b, start in zip(batches, starts.split([len(b.inputs) for b in batches])):
        b.start = start


def alignprop(batch: Batch, models: Models, flags: MethodFlags) -> MethodOutput:
    sampler, metrics = models.sampler, {}
    noise = batch.noise if batch.noise is not None else sampler.initial_noise(
        len(batch.inputs), batch.generator, batch.inputs.device)
    images, latents = sampler.sample(batch.inputs, batch.text, backprop_steps=batch.k,
                                     noise=noise, return_latents=True,
                                     grad_steps=batch.grad_steps,
                                     image_tokens=batch.image_tokens, start=batch.start)
    loss, reward = _reward_loss(models, images, batch, metrics)
    if flags.base_consistency_weight > 0:
        with torch.no_grad(), base_model(models.bare):
            tokens = batch.tokens(sampler)
            base = sampler.denoise_to(noise, tokens, batch.text, sampler.num_steps)
        loss = loss + _consistency(models, flags, latents, base, metrics)
    return MethodOutput(loss, images, metrics, reward)


def draft_lv(batch: Batch, models: Models, flags: MethodFlags) -> MethodOutput:
    sampler, metrics = models.sampler, {}
    b, device = len(batch.inputs), batch.inputs.device
    noise = sampler.initial_noise(b, batch.generator, device)
    tokens = batch.tokens(sampler)
    n = sampler.num_steps
    x0 = sampler.denoise_to(noise, tokens, batch.text, n)  # no grad
    sigma = sampler.sigmas[n - 1].to(device)
    loss, rewards, images = 0.0, [], None
    for _ in range(flags.draft_lv_n):
        eps = sampler.initial_noise(b, batch.generator, device)
        x_t = ((1 - sigma) * x0.float() + sigma * eps.float()).to(x0.dtype)
        step_loss, reward, images = _one_step_loss(batch, models, flags, x_t, n - 1, tokens,
                                                   metrics)
        loss = loss + step_loss / flags.draft_lv_n
        rewards.append(reward)
    metrics["reward"] = batch_mean(torch.stack(rewards))
    return MethodOutput(loss, images, metrics, torch.stack(rewards).mean(0))


def refl_start(flags: MethodFlags, num_steps: int) -> int:
    """First step of the late range, ceil(f N) (ReFL.py: 30 of 40), at most N-1."""
    return min(num_steps - 1, math.ceil(flags.refl_start_fraction * num_steps))


def refl_step(flags: MethodFlags, num_steps: int, seed: int) -> int:
    """The step ReFL takes its grad step at: uniform on [ceil(f N), N-1], from ``seed``."""
    return random.Random(seed).randint(refl_start(flags, num_steps), num_steps - 1)


def refl_loss(flags: MethodFlags):
    """ReFL's loss of the rewards (B,): linear -mean(r), or ReFL.py's hinge
    mean(relu(threshold - r)) x grad_scale (no gradient from a sample above the threshold)."""
    if flags.refl_loss == "relu":
        return lambda r: F.relu(flags.refl_threshold - r).mean() * flags.refl_grad_scale
    return lambda r: -r.mean()


def refl(batch: Batch, models: Models, flags: MethodFlags) -> MethodOutput:
    sampler, metrics = models.sampler, {}
    device = batch.inputs.device
    noise = sampler.initial_noise(len(batch.inputs), batch.generator, device)
    tokens = batch.tokens(sampler)
    i = refl_step(flags, sampler.num_steps, batch.seed)
    x_i = sampler.denoise_to(noise, tokens, batch.text, i)  # no grad
    loss, reward, images = _one_step_loss(batch, models, flags, x_i, i, tokens, metrics,
                                          loss_of=refl_loss(flags))
    metrics["refl_step"] = float(i)
    return MethodOutput(loss, images, metrics, reward)


def imagerefl_start(batch: Batch, models: Models, flags: MethodFlags):
    """ImageReFL's starting latents: the real image's latent z (the input photo's, or its
    paired target's) noised to step k = ceil(f N), ``x_k = (1 - s_k) z + s_k eps``.
    Returns (x_k, eps, k)."""
    sampler = models.sampler
    device = batch.inputs.device
    z = (sampler.encode_image(batch.targets.to(device)) if batch.targets is not None
         else batch.tokens(sampler))
    eps = sampler.initial_noise(len(batch.inputs), batch.generator, device)
    k = refl_start(flags, sampler.num_steps)
    s = sampler.sigmas[k].to(device)
    return ((1 - s) * z.float() + s * eps.float()).to(sampler.dtype), eps, k


def imagerefl(batch: Batch, models: Models, flags: MethodFlags) -> MethodOutput:
    """ImageReFL (image_refl_trainer.py) in the flow translation (docs/methods.md)."""
    sampler, metrics = models.sampler, {}
    tokens = batch.tokens(sampler)
    x_k, eps, k = imagerefl_start(batch, models, flags)
    m = refl_step(flags, sampler.num_steps, batch.seed)
    cond = sampler.condition(tokens, batch.text)
    # The regulariser: the model's noise prediction at the start step, with grad. In flow
    # matching eps_hat = x_s + (1 - s) v, so eps_hat - eps = (1 - s)(v - (eps - z)).
    v_k = sampler.step_velocity(x_k, k, cond)
    s_k = sampler.sigmas[k].to(x_k.device)
    eps_hat = x_k.float() + (1 - s_k) * v_k.float()
    mse = F.mse_loss(eps_hat, eps.float())
    # The reward: no-grad Euler steps k..m-1, one prediction with grad at m (at m = k the
    # regulariser's prediction is that prediction: same input, same step).
    x_m = x_k if m == k else sampler.denoise_to(x_k, tokens, batch.text, m, first=k)
    scale, mse_scale = flags.imagerefl_loss_scale, flags.imagerefl_mse_scale
    loss, reward, images = _one_step_loss(   # (+ base consistency, not scaled)
        batch, models, flags, x_m, m, tokens, metrics, velocity=v_k if m == k else None,
        loss_of=lambda r: scale * (-r.mean() + mse_scale * mse))
    metrics.update(refl_step=float(m), imagerefl_start=float(k), imagerefl_mse=batch_mean(mse))
    return MethodOutput(loss, images, metrics, reward)


# ------------------------------------------------------------------ learning from scores
# Both replay one stored transition per call (the trainer accumulates over the trained
# transitions and the micro-batches, as Flow-GRPO and D3PO accumulate over timesteps), so a
# backward pass holds one transformer step whatever the number of steps.
def grpo(batch: Batch, models: Models, flags: MethodFlags) -> MethodOutput:
    """Flow-GRPO's loss on transition j of B stored samples (scripts/train_sd3.py):
    ratio = exp(log p_theta - log p_old), loss = mean(max(-A ratio, -A clip(ratio, 1 -+ c)))
    (+ beta KL to the LoRA-off model)."""
    r = batch.rollout
    (step,) = replay(models.sampler, r.traj, batch.text, [r.step])
    old = r.traj.log_probs[:, r.step].to(step.log_prob.device)
    ratio = torch.exp(step.log_prob - old)
    adv = r.advantages.to(ratio.device).clamp(-flags.grpo_adv_clip, flags.grpo_adv_clip)
    c = flags.grpo_clip_range
    policy = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - c, 1 + c)).mean()
    metrics = {**r.metrics, "policy_loss": policy.item(),
               "ratio_dev": (ratio - 1).abs().mean().item(),
               "clip_fraction": ((ratio - 1).abs() > c).float().mean().item()}
    loss = policy
    if flags.grpo_kl_beta > 0:
        with torch.no_grad(), base_model(models.bare):
            (ref,) = replay(models.sampler, r.traj, batch.text, [r.step])
        dims = tuple(range(1, step.mean.ndim))
        kl = ((step.mean - ref.mean) ** 2).mean(dims) / (2 * step.std ** 2)
        loss = loss + flags.grpo_kl_beta * kl.mean()
        metrics["kl"] = kl.mean().item()
    return MethodOutput(loss, r.images, metrics, r.rewards)


def d3po(batch: Batch, models: Models, flags: MethodFlags) -> MethodOutput:
    """D3PO's loss on transition j of B stored pairs (yk7333/d3po scripts/rm/train_d3po.py):
    r = clamp(p_theta / p_ref, 1 - eps, 1 + eps) per sample, the reference being the LoRA
    switched off; loss = -mean log sigmoid(beta (log r_a - log r_b) s), s = +1 when a is
    preferred, -1 when b is, 0 for a tie."""
    r = batch.rollout
    (step,) = replay(models.sampler, r.traj, batch.text, [r.step])
    with torch.no_grad(), base_model(models.bare):
        (ref,) = replay(models.sampler, r.traj, batch.text, [r.step])
    log_ratio = step.log_prob - ref.log_prob
    # D3PO clamps the ratio itself: outside the band the pair gives no gradient.
    eps = flags.d3po_eps
    clamped = torch.log(torch.exp(log_ratio).clamp(1 - eps, 1 + eps))
    b = len(r.prefer)
    prefer = r.prefer.to(clamped.device)
    logits = flags.dpo_beta * (clamped[:b] - clamped[b:]) * prefer
    loss = -F.logsigmoid(logits).mean()   # = D3PO's -log(sigmoid(.)), without its underflow
    decided = prefer != 0
    metrics = {**r.metrics, "dpo_loss": loss.item(),
               "log_ratio": log_ratio.detach().abs().mean().item(),
               "clamped_fraction": ((log_ratio.detach().exp() - 1).abs() > eps).float()
               .mean().item(),
               "implicit_accuracy": ((logits.detach() > 0) & decided).float().sum().item()
               / max(int(decided.sum()), 1)}
    return MethodOutput(loss, r.images, metrics, r.rewards)


METHODS: dict[str, Callable[[Batch, Models, MethodFlags], MethodOutput]] = {
    "alignprop": alignprop, "draft-lv": draft_lv, "refl": refl, "imagerefl": imagerefl,
    "grpo": grpo, "d3po": d3po}


def run_method(batch: Batch, models: Models, flags: MethodFlags) -> MethodOutput:
    try:
        fn = METHODS[flags.method]
    except KeyError:
        raise ValueError(f"unknown --method {flags.method!r}; choose one of: "
                         f"{', '.join(METHODS)}") from None
    return fn(batch, models, flags)


__all__ = ["MethodFlags", "Models", "Batch", "MethodOutput", "RolloutSlice", "METHODS",
           "METHOD_NAMES", "SCORE_METHODS", "GRADIENT_METHODS", "run_method", "shared_nograd_pass",
           "base_model", "refl_step", "refl_start", "refl_loss", "imagerefl_start",
           "REFL_LOSSES"]
