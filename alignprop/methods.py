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
``refl`` (ReFL, Xu et al. 2023, ImageReward paper)
    Denoise without grad to a step ``i`` drawn uniformly from the late range
    ``[ceil(--refl_start_fraction x N), N-1]`` (paper: steps 30-39 of 40, fraction 0.75),
    predict the velocity there with grad and score the closed-form clean image of flow
    matching, ``x0 = x_i - s_i v`` (x_s = (1-s) x0 + s eps, v = eps - x0); loss = -reward.
``imagerefl`` (ImageReFL-style regularised ReFL)
    The ReFL reward loss on generated images plus the flow-matching loss on real images:
    ``|v(x_s) - (eps - z)|^2`` with ``x_s = (1-s) z + s eps``, s ~ U(0,1), z the latent of the
    target -- the input image itself under ``--imagerefl_identity_prompt`` (the Kontext
    edit of the image to itself), or the paired image of ``--imagerefl_target_dir`` (same
    file name) under the sample's own prompt. ``--imagerefl_schedule alternate`` (default)
    takes reward steps on even optimizer steps and flow-matching steps on odd ones; ``mix``
    adds both every step; the flow-matching term is weighted by ``--imagerefl_fm_weight``
    (default 1.0).

Base consistency (every method, ``--base_consistency_weight`` > 0): the distance between
the LoRA's prediction and the base model's (adapters disabled, no grad) for the same input,
noise and prompt -- the final latents for ``alignprop``, the one-step clean-latent
prediction for the others -- as mean squared error in latent space (``latent``) or LPIPS of
the decoded images (``lpips``); added to the loss.
"""
from __future__ import annotations

import math
import random
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from rewards.base import batch_mean

from .sampler import cat_prompt_embeds

METHOD_NAMES = ("alignprop", "draft-lv", "refl", "imagerefl")
BASE_METRICS = ("latent", "lpips")
IMAGEREFL_SCHEDULES = ("alternate", "mix")
DEFAULT_IDENTITY_PROMPT = "Keep this photo exactly as it is."


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
        "one grad step, reward on the closed-form clean image) or 'imagerefl' (ReFL plus a "
        "flow-matching loss on the training images). See alignprop/methods.py.", METHOD_NAMES)
    draft_lv_n: int = _f(2, "DRaFT-LV: noise re-draws at the last step (published default 2).")
    refl_start_fraction: float = _f(
        0.75, "ReFL / ImageReFL: the grad step is drawn uniformly from steps "
              "[ceil(f x N), N-1] of the N sampler steps (published: steps 30-39 of 40, f=0.75).")
    imagerefl_schedule: str = _f(
        "alternate", "ImageReFL: 'alternate' = reward step on even, flow-matching step on odd "
                     "optimizer steps; 'mix' = both every step.", IMAGEREFL_SCHEDULES)
    imagerefl_fm_weight: float = _f(1.0, "ImageReFL: weight of the flow-matching loss.")
    imagerefl_target_dir: Optional[str] = _f(
        None, "ImageReFL: folder of paired target images (same file names as --data_dir); the "
              "flow-matching loss then learns input -> target under the sample's prompt. "
              "Default: the input itself under --imagerefl_identity_prompt.")
    imagerefl_identity_prompt: str = _f(
        DEFAULT_IDENTITY_PROMPT, "ImageReFL: prompt of the identity edit (input -> itself).")
    base_consistency_weight: float = _f(
        0.0, "Weight of the base-consistency term (every method): distance of the LoRA's "
             "prediction from the base model's for the same input, noise and prompt; 0 = off.")
    base_consistency_metric: str = _f(
        "latent", "Base-consistency distance: 'latent' (mean squared error of latents) or "
                  "'lpips' (LPIPS of the decoded images; uses --lpips_net/--lpips_backbone).",
        BASE_METRICS)

    def validate_method(self) -> None:
        for name, valid in (("method", METHOD_NAMES), ("base_consistency_metric", BASE_METRICS),
                            ("imagerefl_schedule", IMAGEREFL_SCHEDULES)):
            if getattr(self, name) not in valid:
                raise ValueError(f"--{name} {getattr(self, name)!r} is not valid; choose one of: "
                                 f"{', '.join(valid)}")
        if self.draft_lv_n < 1:
            raise ValueError(f"--draft_lv_n must be >= 1, got {self.draft_lv_n}")
        if not 0.0 <= self.refl_start_fraction < 1.0:
            raise ValueError(f"--refl_start_fraction must be in [0, 1), got "
                             f"{self.refl_start_fraction}")
        for name in ("imagerefl_fm_weight", "base_consistency_weight"):
            v = getattr(self, name)
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"--{name} must be a finite number >= 0, got {v}")
        if self.imagerefl_target_dir is not None:
            from pathlib import Path

            if self.method != "imagerefl":
                raise ValueError("--imagerefl_target_dir is used only with --method imagerefl")
            if not Path(self.imagerefl_target_dir).expanduser().is_dir():
                raise ValueError(f"--imagerefl_target_dir: folder not found: "
                                 f"{self.imagerefl_target_dir}")

    def extra_prompts(self) -> list[str]:
        """Prompts the method needs encoded besides the data's (the identity edit)."""
        if self.method == "imagerefl" and self.imagerefl_target_dir is None:
            return [self.imagerefl_identity_prompt]
        return []


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
    identity_text: Any = None                # imagerefl identity prompt embeds (batch 1)
    image_tokens: Optional[torch.Tensor] = None  # the inputs' Kontext tokens (trainer's cache)
    # alignprop, set by the step's shared no-grad pass (shared_nograd_pass): the initial
    # noise and the latents entering step N-K
    noise: Optional[torch.Tensor] = None
    start: Optional[torch.Tensor] = None

    def tokens(self, sampler) -> torch.Tensor:
        """The inputs' Kontext tokens: cached by the trainer, or encoded now."""
        return self.image_tokens if self.image_tokens is not None \
            else sampler.encode_image(self.inputs)


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
                   metrics: dict):
    """Velocity with grad at sampler step ``i`` from x_t -> clean latent -> reward (+ base
    consistency). The model is fed step i exactly as the sampler feeds it."""
    sampler = models.sampler
    cond = sampler.condition(image_tokens, batch.text)
    sigma = sampler.sigmas[i].to(x_t.device)
    x0 = _x0(x_t, sigma, sampler.step_velocity(x_t, i, cond))
    images = sampler.decode(x0)
    loss, reward = _reward_loss(models, images, batch, metrics)
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


def refl_step(flags: MethodFlags, num_steps: int, seed: int) -> int:
    """The step ReFL takes its grad step at: uniform on [ceil(f N), N-1], from ``seed``."""
    lo = min(num_steps - 1, math.ceil(flags.refl_start_fraction * num_steps))
    return random.Random(seed).randint(lo, num_steps - 1)


def refl(batch: Batch, models: Models, flags: MethodFlags) -> MethodOutput:
    sampler, metrics = models.sampler, {}
    device = batch.inputs.device
    noise = sampler.initial_noise(len(batch.inputs), batch.generator, device)
    tokens = batch.tokens(sampler)
    i = refl_step(flags, sampler.num_steps, batch.seed)
    x_i = sampler.denoise_to(noise, tokens, batch.text, i)  # no grad
    loss, reward, images = _one_step_loss(batch, models, flags, x_i, i, tokens, metrics)
    metrics["refl_step"] = float(i)
    return MethodOutput(loss, images, metrics, reward)


def flow_matching_loss(batch: Batch, models: Models, flags: MethodFlags, metrics: dict):
    """Flow-matching loss of the LoRA model on real (input -> target) pairs."""
    sampler = models.sampler
    b, device = len(batch.inputs), batch.inputs.device
    cond = batch.tokens(sampler)
    if batch.targets is not None:
        z, text = sampler.encode_image(batch.targets.to(device)), batch.text
    else:  # the Kontext edit of the image to itself
        z = cond
        text = batch.identity_text
        text = type(text)(text.prompt_embeds.expand(b, -1, -1),
                          text.pooled_prompt_embeds.expand(b, -1), text.text_ids)
    g = torch.Generator().manual_seed(batch.seed + 1)
    eps = torch.randn(z.shape, generator=g).to(device=device, dtype=z.dtype)
    s = torch.rand(b, generator=g).to(device)
    x_s = ((1 - s[:, None, None]) * z.float() + s[:, None, None] * eps.float()).to(z.dtype)
    v = sampler.velocity_at(x_s, s, cond, text)
    fm = F.mse_loss(v.float(), (eps - z).float())
    metrics["flow_matching"] = batch_mean(fm)
    return fm


def imagerefl(batch: Batch, models: Models, flags: MethodFlags) -> MethodOutput:
    reward_step = flags.imagerefl_schedule == "mix" or batch.step % 2 == 0
    fm_step = flags.imagerefl_schedule == "mix" or batch.step % 2 == 1
    out = refl(batch, models, flags) if reward_step else MethodOutput(
        torch.zeros((), device=batch.inputs.device), batch.inputs, {})
    if fm_step:
        out.loss = out.loss + flags.imagerefl_fm_weight * flow_matching_loss(
            batch, models, flags, out.metrics)
    return out


METHODS: dict[str, Callable[[Batch, Models, MethodFlags], MethodOutput]] = {
    "alignprop": alignprop, "draft-lv": draft_lv, "refl": refl, "imagerefl": imagerefl}


def run_method(batch: Batch, models: Models, flags: MethodFlags) -> MethodOutput:
    try:
        fn = METHODS[flags.method]
    except KeyError:
        raise ValueError(f"unknown --method {flags.method!r}; choose one of: "
                         f"{', '.join(METHODS)}") from None
    return fn(batch, models, flags)


__all__ = ["MethodFlags", "Models", "Batch", "MethodOutput", "METHODS", "METHOD_NAMES",
           "run_method", "shared_nograd_pass", "base_model", "refl_step", "flow_matching_loss"]
