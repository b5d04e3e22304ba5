"""Differentiable FLUX.1 Kontext sampling with truncated backpropagation.

This re-implements the denoising loop of diffusers' ``FluxKontextPipeline.__call__``
(diffusers 0.3x-0.4x) so that gradients can flow from the decoded image back into
the transformer's LoRA parameters. With gradients off it produces the same image
as the pipeline, bit for bit (tests/test_sampler.py: max |diff| 0.0 in fp32 and bf16):

* text: T5 sequence embeddings + CLIP pooled embedding, computed once under
  ``no_grad`` by :func:`encode_prompts` (the trainer then frees the encoders);
* Kontext conditioning: the input image is VAE-encoded (distribution mode, no
  grad), shifted/scaled, packed into 2x2 patches and appended to the noisy
  latent tokens; its position ids are the latent grid ids with the first axis
  set to 1;
* schedule: ``sigmas = linspace(1, 1/N, N)`` shifted by the scheduler with the
  resolution-dependent ``mu`` (dynamic shifting), Euler flow-matching steps
  ``x <- x + (sigma_next - sigma) * v`` with diffusers' arithmetic by default
  (``FlowMatchEulerDiscreteScheduler.step``: the product ``dt * v`` is taken in
  the model dtype, e.g. bf16, then added to the fp32 latents and rounded back),
  or the whole update in fp32 with ``euler_fp32=True`` (slightly more accurate
  in bf16, identical in fp32);
* the input image is mapped to [-1, 1] in fp32 and only then cast to the model
  dtype, as the pipeline's image processor does. With both, the bf16 sampler
  equals the bf16 pipeline too (tests/test_sampler.py);
* guidance-distilled sampling: FLUX.1 Kontext-dev embeds the guidance scale
  (one forward per step, no classifier-free guidance batch).

Only the last ``backprop_steps`` steps build an autograd graph; the earlier ones
run under ``torch.no_grad`` so memory does not grow with the number of steps
(DRaFT-K / AlignProp truncated backprop). The VAE decode keeps its graph.

One step function serves every path: :meth:`KontextSampler.step_velocity` is the only way
the transformer is fed a sampler step, :func:`euler_step` the only Euler arithmetic
(``sample``, ``denoise_to`` and the peers' single steps), and :func:`sde_step` -- Flow-GRPO's
stochastic step with its Gaussian log-prob, for GRPO and D3PO -- adds its terms after the
same arithmetic, so at noise level 0 it is the ODE sampler bit for bit.
:meth:`KontextSampler.sample_sde` returns an :class:`~alignprop.trajectory.Trajectory`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from common.profiling import GRAD, NOGRAD, VAE_DECODE, VAE_ENCODE, phase

from .attention import AttentionPhases
from .trajectory import Trajectory


@dataclass
class PromptEmbeds:
    """Text conditioning of a batch: T5 tokens (B,S,D), CLIP pooled (B,P), ids (S,3)."""

    prompt_embeds: torch.Tensor
    pooled_prompt_embeds: torch.Tensor
    text_ids: torch.Tensor

    def to(self, device=None, dtype=None) -> "PromptEmbeds":
        return PromptEmbeds(self.prompt_embeds.to(device=device, dtype=dtype),
                            self.pooled_prompt_embeds.to(device=device, dtype=dtype),
                            self.text_ids.to(device=device, dtype=dtype))


@torch.no_grad()
def encode_prompts(pipe, prompts: Sequence[str], device, max_sequence_length: int = 512
                   ) -> dict[str, PromptEmbeds]:
    """Encode each distinct prompt once (no grad); returns prompt -> embeds with batch 1.

    Uses the pipeline's own ``encode_prompt`` so the text path is exactly the
    one diffusers runs at inference.
    """
    cache: dict[str, PromptEmbeds] = {}
    for prompt in dict.fromkeys(prompts):  # unique, order kept
        embeds, pooled, text_ids = pipe.encode_prompt(
            prompt=[prompt], prompt_2=None, device=device, num_images_per_prompt=1,
            max_sequence_length=max_sequence_length)
        cache[prompt] = PromptEmbeds(embeds.detach(), pooled.detach(), text_ids.detach())
    return cache


def cat_prompt_embeds(parts: Sequence[PromptEmbeds]) -> PromptEmbeds:
    """Several batches' embeds as one batch (same sequence length; ids of the first)."""
    return PromptEmbeds(torch.cat([e.prompt_embeds for e in parts]),
                        torch.cat([e.pooled_prompt_embeds for e in parts]), parts[0].text_ids)


def to_device(x: torch.Tensor, device) -> torch.Tensor:
    """``x.to(device)`` without a host sync: a CPU tensor goes to a GPU from pinned memory,
    asynchronously (a copy from pageable memory makes the host wait for the device)."""
    device = torch.device(device)
    if x.device.type == "cpu" and device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def stack_prompt_embeds(cache: dict[str, PromptEmbeds], prompts: Sequence[str]) -> PromptEmbeds:
    """Batch the cached embeds of ``prompts`` (every prompt must have been encoded)."""
    missing = [p for p in prompts if p not in cache]
    if missing:
        raise KeyError(f"prompts were not encoded before training: {missing[:3]}")
    items = [cache[p] for p in prompts]
    return PromptEmbeds(torch.cat([e.prompt_embeds for e in items]),
                        torch.cat([e.pooled_prompt_embeds for e in items]),
                        items[0].text_ids)


# exp(mu) of the schedule's time shift overflows float32 (the scheduler's sigmas) past
# mu ~ 88: ~520k image tokens, between 8192 and 16384 px a side for FLUX.1. Such sizes are
# refused in one line.
MAX_SHIFT = 88.0


def calculate_shift(image_seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096,
                    base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """Resolution-dependent ``mu`` of FLUX's dynamic shifting (linear in token count)."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * m + (base_shift - m * base_seq_len)


def schedule_shift(image_seq_len: int, config: Any) -> float:
    """:func:`calculate_shift` with a scheduler config's own constants (diffusers' defaults
    where it has none): what training and ``--estimate`` both check against MAX_SHIFT."""
    return calculate_shift(image_seq_len, config.get("base_image_seq_len", 256),
                           config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                           config.get("max_shift", 1.15))


def _pack(latents: torch.Tensor) -> torch.Tensor:
    """(B,C,h,w) -> (B, h/2*w/2, C*4): 2x2 patches become tokens."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def _unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`_pack` for a latent grid of h x w."""
    b, _, ch = tokens.shape
    x = tokens.view(b, h // 2, w // 2, ch // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, ch // 4, h, w)


def _grid_ids(h2: int, w2: int, first: float, device, dtype) -> torch.Tensor:
    """Position ids (h2*w2, 3): (first, row, col) for each packed token."""
    ids = torch.zeros(h2, w2, 3)
    ids[..., 0] = first
    ids[..., 1] = torch.arange(h2)[:, None]
    ids[..., 2] = torch.arange(w2)[None, :]
    return ids.reshape(h2 * w2, 3).to(device=device, dtype=dtype)


# ------------------------------------------------------------------ the step functions
LOG_PROB_REDUCTIONS = ("mean", "sum")
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def euler_step(latents: torch.Tensor, velocity: torch.Tensor, dt: torch.Tensor,
               fp32: bool = False) -> torch.Tensor:
    """One Euler step of the flow ODE, ``x + dt v`` (dt = sigma_next - sigma < 0).

    The only Euler arithmetic in the project: every sampler path (``sample``, ``denoise_to``,
    the SDE step at noise level 0) goes through it, so they give the same bits in any dtype.
    ``fp32=False`` is ``FlowMatchEulerDiscreteScheduler.step``: the latents are upcast to
    fp32, the 0-dim fp32 ``dt`` times the velocity stays in the velocity's dtype (bf16 under
    bf16), the sum is taken in fp32 and cast back. ``fp32=True`` takes the product in fp32 too.
    """
    step = dt * (velocity.float() if fp32 else velocity)
    return (latents.float() + step).to(velocity.dtype)


def sde_std_scale(sigmas: torch.Tensor, i: int, noise_level: float) -> torch.Tensor:
    """Flow-GRPO's noise scale s_t = a sqrt(t / (1 - t)) of step ``i`` (0-dim fp32).

    At t = 1 (the first step) the denominator uses the next sigma, as Flow-GRPO does
    (``sigma_max = sigmas[1]``), so the first step's noise stays finite.
    """
    t = sigmas[i].float()
    denom_t = sigmas[i + 1].float() if float(t) == 1.0 else t
    return noise_level * torch.sqrt(t / (1 - denom_t))


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                      reduction: str = "mean") -> torch.Tensor:
    """log N(x; mean, std^2 I) per sample (B,), in fp32: the mean or the sum over dimensions.

    ``"mean"`` (Flow-GRPO's choice) is the per-dimension average: a sum over every latent
    dimension (4096 at 64 px on tiny-photo) makes a PPO ratio explode after one update.
    """
    if reduction not in LOG_PROB_REDUCTIONS:
        raise ValueError(f"unknown log-prob reduction {reduction!r}; choose one of: "
                         f"{', '.join(LOG_PROB_REDUCTIONS)}")
    x, mean, std = x.float(), mean.float(), std.float()
    lp = -((x - mean) ** 2) / (2 * std ** 2) - torch.log(std) - _LOG_SQRT_2PI
    dims = tuple(range(1, lp.ndim))
    return lp.mean(dims) if reduction == "mean" else lp.sum(dims)


@dataclass
class SdeStep:
    """One stochastic transition x_i -> x_{i+1} and its Gaussian density."""

    latents: torch.Tensor       # x_{i+1} in the model dtype (drawn, or the one given)
    mean: torch.Tensor          # (B, L, C) fp32 mean of the transition (carries grad)
    std: torch.Tensor           # 0-dim fp32 standard deviation s_t sqrt(-dt)
    log_prob: torch.Tensor      # (B,) fp32 log-density of ``latents`` (NaN when std = 0)


def sde_step(latents: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor,
             sigma_next: torch.Tensor, std_scale: torch.Tensor, noise: torch.Tensor | None = None,
             next_latents: torch.Tensor | None = None, fp32: bool = False,
             reduction: str = "mean") -> SdeStep:
    """The stochastic step of Flow-GRPO with its Gaussian log-prob.

    In this project's convention (x_t = (1-t) x0 + t eps, v = eps - x0, dt = sigma_next -
    sigma < 0), the marginal-preserving SDE of the flow ODE, discretised by Euler-Maruyama:

        mean = x + dt [v + s_t^2 / (2t) (x + (1-t) v)],    std = s_t sqrt(-dt)

    (Flow-GRPO's ``sd3_sde_with_logprob.py`` writes the same mean as
    ``x (1 + s^2 dt / 2t) + v (1 + s^2 (1-t) / 2t) dt``). The ODE part ``x + dt v`` is
    :func:`euler_step`'s arithmetic and the correction is added after it, so with
    ``std_scale = 0`` the step is the ODE sampler's bit for bit. ``next_latents`` given: the
    log-prob of that transition (replay under the current model); otherwise x_{i+1} =
    mean + std * noise, rounded to the model dtype, and the log-prob is of the rounded value
    (the one stored and replayed).
    """
    dt = sigma_next - sigma
    drift = dt * (velocity.float() if fp32 else velocity)
    x, v = latents.float(), velocity.float()
    correction = dt * std_scale ** 2 / (2 * sigma) * (x + (1 - sigma) * v)
    mean = x + drift + correction
    std = std_scale * torch.sqrt(-dt)
    if next_latents is None:
        if noise is None:
            raise ValueError("sde_step needs noise (to draw x_{i+1}) or next_latents (to score it)")
        next_latents = (mean + std * noise.float()).to(velocity.dtype)
    lp = gaussian_log_prob(next_latents.detach(), mean, std, reduction)
    return SdeStep(next_latents, mean, std, lp)


@dataclass
class Conditioning:
    """What every transformer call of a batch shares: Kontext tokens, text, ids, guidance."""

    image_tokens: torch.Tensor      # (B, L, C*4) packed input-image latents, model dtype
    text: PromptEmbeds              # on the device, model dtype
    img_ids: torch.Tensor           # (2L, 3): output tokens (first axis 0) then input tokens (1)
    guidance: torch.Tensor | None   # (B,) fp32 embedded guidance scale, None without guidance


class KontextSampler:
    """Euler flow-matching sampler for FLUX Kontext with gradients through the last K steps.

    ``transformer`` may be wrapped (DDP, peft); the model config is read from
    ``transformer_config``. ``scheduler`` is only used to build the sigma schedule.
    """

    def __init__(self, transformer, vae, scheduler, transformer_config, height: int, width: int,
                 num_steps: int, guidance_scale: float = 2.5, dtype: torch.dtype = torch.float32,
                 euler_fp32: bool = False):
        self.transformer = transformer
        self.vae = vae.requires_grad_(False)  # decoded with grad, never trained
        self.scheduler = scheduler
        self.in_channels = int(transformer_config.in_channels)
        self.guidance_embeds = bool(transformer_config.guidance_embeds)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        multiple = self.vae_scale_factor * 2
        if height % multiple or width % multiple:
            raise ValueError(f"image size {height}x{width} must be a multiple of {multiple} "
                             f"(VAE factor {self.vae_scale_factor} x 2x2 packing)")
        self.height, self.width = height, width
        self.latent_h = height // self.vae_scale_factor
        self.latent_w = width // self.vae_scale_factor
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        self.num_steps = num_steps
        self.guidance_scale = guidance_scale
        self.dtype = dtype
        # False: diffusers' Euler arithmetic (parity with FluxKontextPipeline in any dtype);
        # True: dt * v in fp32 too (differs from the pipeline only when dtype is not fp32).
        self.euler_fp32 = bool(euler_fp32)
        self.timesteps, self.sigmas = self._schedule()
        # Attention kernels per phase (alignprop/attention.py); the default changes nothing.
        self.attention = AttentionPhases()
        # --compile: the latents entering the first grad step become a leaf that requires
        # grad, so every grad step feeds the transformer the same kind of input whatever K is
        # (compiled graphs are guarded on requires_grad; K=1 would otherwise get one graph
        # and a later K>1 another). It adds only the gradient of that leaf; LoRA gradients
        # are unchanged.
        self.grad_start_leaf = False
        # Device copies of the schedule and of the position ids, made once: a CPU tensor
        # copied to a GPU inside every step makes the host wait for the device.
        self._on_device: dict = {}

    # ------------------------------------------------------------------ schedule
    def _schedule(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Timesteps (N,) and sigmas (N+1,) exactly as the pipeline sets them."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        sched = FlowMatchEulerDiscreteScheduler.from_config(self.scheduler.config)
        cfg = sched.config
        n = self.num_steps
        seq_len = (self.latent_h // 2) * (self.latent_w // 2)
        mu = schedule_shift(seq_len, cfg)
        if mu > MAX_SHIFT:
            raise ValueError(f"image size {self.height}x{self.width} is {seq_len} image tokens: "
                             f"the schedule's resolution shift exp({mu:.0f}) overflows (FLUX.1 "
                             f"Kontext was trained around 1 MP: 4096 tokens)")
        sched.set_timesteps(sigmas=np.linspace(1.0, 1 / n, n), mu=mu, device="cpu")
        return sched.timesteps.clone(), sched.sigmas.clone().float()

    def _device_tables(self, device, dtype=None) -> dict:
        """Timesteps, sigmas, Euler dt and position ids on ``device`` (cached; same values)."""
        device = torch.device(device)
        key = (device, dtype or self.dtype)
        if key not in self._on_device:
            h2, w2 = self.latent_h // 2, self.latent_w // 2
            self._on_device[key] = {
                "timesteps": to_device(self.timesteps, device),
                "sigmas": to_device(self.sigmas, device),
                # sigma[i+1] - sigma[i] computed on the CPU as before, so the same bits
                "dt": to_device(self.sigmas[1:] - self.sigmas[:-1], device),
                "img_ids": torch.cat([_grid_ids(h2, w2, 0.0, "cpu", key[1]),
                                      _grid_ids(h2, w2, 1.0, "cpu", key[1])]).to(device)}
        return self._on_device[key]

    # ------------------------------------------------------------------ conditioning
    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Input images (B,3,H,W) in [0,1] -> packed Kontext tokens (B, L, C*4), no grad."""
        if images.shape[-2:] != (self.height, self.width):
            raise ValueError(f"input images are {tuple(images.shape[-2:])}, expected "
                             f"{(self.height, self.width)}; resize them first (data.py does)")
        # [0,1] -> [-1,1] in fp32, then cast: the pipeline's image processor does the same.
        with phase(VAE_ENCODE):
            x = (images.to(device=self.vae.device, dtype=torch.float32) * 2.0 - 1.0).to(self.dtype)
            latents = self.vae.encode(x).latent_dist.mode()
            latents = (latents - self.vae.config.shift_factor) * self.vae.config.scaling_factor
            return _pack(latents)

    def initial_noise(self, batch_size: int, generator, device) -> torch.Tensor:
        """Packed Gaussian noise drawn exactly like the pipeline (same generator order).

        ``generator``: None, one generator, or a list of one per sample (diffusers'
        ``randn_tensor`` then draws each sample from its own)."""
        from diffusers.utils.torch_utils import randn_tensor

        shape = (batch_size, self.in_channels // 4, self.latent_h, self.latent_w)
        gens = generator if isinstance(generator, (list, tuple)) else [generator]
        if device is not None and all(g is not None and g.device.type == "cpu" for g in gens):
            # randn_tensor draws a CPU generator's noise on the CPU and copies it over with
            # a host sync; the same draw, copied asynchronously from pinned memory:
            noise = randn_tensor(shape, generator=generator, device=torch.device("cpu"),
                                 dtype=self.dtype)
            return _pack(to_device(noise, device))
        return _pack(randn_tensor(shape, generator=generator, device=torch.device(device),
                                  dtype=self.dtype))

    # ------------------------------------------------------------------ one step
    # Every path (the sampling loop, denoising to a step, the peers' single steps, the SDE)
    # calls the transformer through ``step_velocity`` and integrates with ``euler_step`` /
    # ``sde_step``: one model input and one arithmetic, so two paths never disagree in bf16.
    def condition(self, image_tokens: torch.Tensor, text: PromptEmbeds) -> Conditioning:
        """The per-batch pieces of every transformer call (ids and guidance built once)."""
        device, b = image_tokens.device, image_tokens.shape[0]
        img_ids = self._device_tables(device)["img_ids"]
        guidance = (torch.full([1], self.guidance_scale, device=device, dtype=torch.float32)
                    .expand(b) if self.guidance_embeds else None)
        return Conditioning(image_tokens.to(self.dtype), text.to(device=device, dtype=self.dtype),
                            img_ids, guidance)

    def _velocity(self, latents: torch.Tensor, timestep: torch.Tensor, cond: Conditioning,
                  transformer=None) -> torch.Tensor:
        latents = latents.to(self.dtype)
        v = (transformer or self.transformer)(
            hidden_states=torch.cat([latents, cond.image_tokens], dim=1), timestep=timestep,
            guidance=cond.guidance, pooled_projections=cond.text.pooled_prompt_embeds,
            encoder_hidden_states=cond.text.prompt_embeds, txt_ids=cond.text.text_ids,
            img_ids=cond.img_ids, return_dict=False)[0]
        return v[:, : latents.shape[1]]

    def step_velocity(self, latents: torch.Tensor, i: int, cond: Conditioning,
                      transformer=None) -> torch.Tensor:
        """Velocity (B, L, C) at sampler step ``i``; grad follows the caller's grad mode.

        The model is fed the timestep as the pipeline feeds it: ``timesteps[i]`` cast to the
        model dtype, then divided by 1000. ``transformer`` overrides the sampler's.
        """
        b = latents.shape[0]
        timestep = self._device_tables(latents.device)["timesteps"][i].expand(b).to(self.dtype)
        return self._velocity(latents, timestep / 1000, cond, transformer)

    def _dt(self, i: int, device) -> torch.Tensor:
        return self._device_tables(device)["dt"][i]

    def ode_step(self, latents: torch.Tensor, i: int, cond: Conditioning,
                 transformer=None) -> torch.Tensor:
        """Euler step ``i`` of the ODE sampler: latents entering step i -> entering step i+1."""
        v = self.step_velocity(latents, i, cond, transformer)
        return euler_step(latents, v, self._dt(i, latents.device), self.euler_fp32)

    def sde_step(self, latents: torch.Tensor, i: int, cond: Conditioning, noise_level: float,
                 generator=None, next_latents: torch.Tensor | None = None,
                 reduction: str = "mean", transformer=None) -> SdeStep:
        """Stochastic step ``i`` (Flow-GRPO's SDE, noise level ``a`` = ``noise_level``).

        Draws x_{i+1} from ``generator`` (a generator or one per sample) or, given
        ``next_latents``, scores that transition under the (current) model. The noise is
        drawn whatever the level, so a seed gives the same stream at every level.
        """
        device = latents.device
        v = self.step_velocity(latents, i, cond, transformer)
        noise = None
        if next_latents is None:
            from diffusers.utils.torch_utils import randn_tensor

            noise = randn_tensor(tuple(latents.shape), generator=generator, device=device,
                                 dtype=torch.float32)
        else:
            next_latents = next_latents.to(device)
        scale = sde_std_scale(self.sigmas, i, noise_level).to(device)
        return sde_step(latents, v, self.sigmas[i].to(device), self.sigmas[i + 1].to(device),
                        scale, noise, next_latents, self.euler_fp32, reduction)

    # ------------------------------------------------------------------ sampling
    def sample(self, images: torch.Tensor, text: PromptEmbeds, backprop_steps: int | None = None,
               generator=None, noise: torch.Tensor | None = None,
               image_tokens: torch.Tensor | None = None, return_latents: bool = False,
               grad_steps: Sequence[bool] | None = None, start: torch.Tensor | None = None):
        """Edit ``images`` (B,3,H,W in [0,1]) following ``text``; returns (B,3,H,W) in [0,1].

        ``backprop_steps`` = K: only the last K Euler steps (and the VAE decode) build
        a graph; None or K >= N means all steps. Called under ``torch.no_grad()``
        nothing builds a graph (parity tests, evaluation, image logging).
        ``grad_steps`` (one bool per step, replaces K) is TRL's truncation: step i's velocity
        carries gradients only where ``grad_steps[i]``; elsewhere it is a constant, but the
        Euler step still passes the gradient of the latents through (TRL detaches the
        prediction, not the latents).
        ``start``: the latents entering step N-K, already computed without grad (the
        trainer's batched no-grad pass over every micro-batch of a step): only the last K
        steps run here (not with ``grad_steps``).
        """
        if grad_steps is not None:
            if start is not None:
                raise ValueError("sample: start (the batched no-grad pass) goes with K, not "
                                 "with grad_steps")
            return self._sample_masked(images, text, list(grad_steps), generator, noise,
                                       image_tokens, return_latents)
        device = images.device
        b = images.shape[0]
        n = self.num_steps
        k = n if backprop_steps is None else max(0, min(int(backprop_steps), n))
        if image_tokens is None:
            image_tokens = self.encode_image(images)
        first = 0
        if start is not None:
            latents, first = start, n - k
        else:
            latents = noise if noise is not None else self.initial_noise(b, generator, device)
        latents = latents.to(device=device, dtype=self.dtype)
        cond = self.condition(image_tokens.to(device), text)

        grad_on = torch.is_grad_enabled()
        # Steps before the last K run without a graph: the latents entering the first
        # backpropagated step are a constant, so memory is O(K) not O(N).
        if first < n - k:
            with phase(NOGRAD), torch.no_grad(), self.attention.nograd():
                for i in range(first, n - k):
                    latents = self.ode_step(latents, i, cond)
        if k > 0:
            if grad_on and self.grad_start_leaf:
                latents = latents.detach().requires_grad_(True)
            with phase(GRAD), self.attention.grad() if grad_on else self.attention.nograd():
                for i in range(max(first, n - k), n):
                    latents = self.ode_step(latents, i, cond)
        with torch.set_grad_enabled(grad_on and k > 0):
            out = self.decode(latents)
        return (out, latents) if return_latents else out

    def _sample_masked(self, images, text, grad_steps: list[bool], generator, noise,
                       image_tokens, return_latents):
        n = self.num_steps
        if len(grad_steps) != n:
            raise ValueError(f"grad_steps has {len(grad_steps)} entries for {n} sampler steps")
        device, b = images.device, images.shape[0]
        if image_tokens is None:
            image_tokens = self.encode_image(images)
        latents = noise if noise is not None else self.initial_noise(b, generator, device)
        latents = latents.to(device=device, dtype=self.dtype)
        cond = self.condition(image_tokens.to(device), text)
        grad_on = torch.is_grad_enabled()
        first = next((i for i, g in enumerate(grad_steps) if g), n) if grad_on else n
        for i in range(n):
            if i < first:   # nothing before the first gradient step can carry one
                with torch.no_grad():
                    latents = self.ode_step(latents, i, cond)
            elif grad_steps[i]:
                latents = self.ode_step(latents, i, cond)
            else:           # the velocity is a constant; the latents keep their graph
                with torch.no_grad():
                    v = self.step_velocity(latents, i, cond)
                latents = euler_step(latents, v, self._dt(i, device), self.euler_fp32)
        with torch.set_grad_enabled(grad_on and first < n):
            out = self.decode(latents)
        return (out, latents) if return_latents else out

    @torch.no_grad()
    def sample_sde(self, images: torch.Tensor, text: PromptEmbeds, noise_level: float,
                   seeds: Sequence[int], image_tokens: torch.Tensor | None = None,
                   reduction: str = "mean", prompts: Sequence[str] = (),
                   initial_noise: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, Trajectory]:
        """Sample with Flow-GRPO's SDE; returns the images and the stored trajectory.

        Sample b draws its initial noise, then each step's noise, from its own generator
        seeded with ``seeds[b]`` (so a sample does not depend on its batch neighbours and
        the initial noise is the pipeline's for that seed). ``initial_noise`` (B, L, C)
        given: the samples start there and their generators draw only the steps' noise
        (D3PO's pairs share the starting point and differ by the steps' noise).
        ``noise_level`` 0 gives the ODE sampler's latents bit for bit (its log-probs are
        NaN: a deterministic step has no density). No gradient: training recomputes
        log-probs with :func:`alignprop.trajectory.replay_log_probs`.
        """
        if noise_level < 0 or not math.isfinite(noise_level):
            raise ValueError(f"the SDE noise level must be a finite number >= 0, got {noise_level}")
        device, b = images.device, images.shape[0]
        if len(seeds) != b:
            raise ValueError(f"sample_sde needs one seed per image: {len(seeds)} seeds, {b} images")
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        if image_tokens is None:
            image_tokens = self.encode_image(images)
        cond = self.condition(image_tokens.to(device), text)
        if initial_noise is None:
            latents = self.initial_noise(b, generators, device).to(self.dtype)
        else:
            latents = initial_noise.to(device=device, dtype=self.dtype)
        states, log_probs = [latents], []
        for i in range(self.num_steps):
            step = self.sde_step(latents, i, cond, noise_level, generators, reduction=reduction)
            latents = step.latents
            states.append(latents)
            log_probs.append(step.log_prob)
        traj = Trajectory(latents=torch.stack(states, dim=1), log_probs=torch.stack(log_probs, 1),
                          timesteps=self.timesteps.clone(), sigmas=self.sigmas.clone(),
                          seeds=torch.tensor([int(s) for s in seeds], dtype=torch.int64),
                          image_tokens=cond.image_tokens, prompts=list(prompts),
                          noise_level=float(noise_level), reduction=reduction)
        return self.decode(latents), traj

    # ------------------------------------------------------------------ single steps
    # The peers' methods (alignprop/methods.py) need the sampler's pieces one at a time:
    # the no-grad denoising up to a step, one velocity prediction with grad, the closed
    # form of the clean latent. They go through the same step functions as ``sample``.
    def velocity_at(self, latents: torch.Tensor, sigma: torch.Tensor | float,
                    image_tokens: torch.Tensor, text: PromptEmbeds, transformer=None
                    ) -> torch.Tensor:
        """Flow velocity (B, L, C) at any noise level ``sigma`` (scalar or (B,)).

        For noise levels off the schedule (the flow-matching loss); at a sampler step use
        :meth:`step_velocity`, which feeds the model exactly what ``sample`` does. The model
        input is ``timestep = sigma`` in the model dtype; grad follows the caller's grad mode.
        """
        device = latents.device
        cond = self.condition(image_tokens.to(device), text)
        sigma = torch.as_tensor(sigma, device=device, dtype=torch.float32)
        timestep = sigma.expand(latents.shape[0]) if sigma.ndim == 0 else sigma
        return self._velocity(latents, timestep.to(self.dtype), cond, transformer)

    def step_sigma(self, i: int) -> torch.Tensor:
        """Noise level entering Euler step ``i`` (the sigma its timestep is made from)."""
        return self.timesteps[i].float() / 1000

    @torch.no_grad()
    def denoise_to(self, noise: torch.Tensor, image_tokens: torch.Tensor, text: PromptEmbeds,
                   stop: int, first: int = 0) -> torch.Tensor:
        """Run Euler steps first..stop-1 without grad; returns the latents entering step
        ``stop`` (``stop = N``: the final clean latents, as ``sample`` would decode them, same
        bits). ``first`` > 0: ``noise`` is the latents entering step ``first`` (ImageReFL
        starts from a noised real image there)."""
        latents = noise.to(dtype=self.dtype)
        cond = self.condition(image_tokens.to(latents.device), text)
        with phase(NOGRAD), self.attention.nograd():
            for i in range(first, stop):
                latents = self.ode_step(latents, i, cond)
        return latents

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Packed latents -> images (B,3,H,W) in [0,1] (differentiable)."""
        with phase(VAE_DECODE):
            latents = _unpack(tokens, self.latent_h, self.latent_w)
            latents = latents / self.vae.config.scaling_factor + self.vae.config.shift_factor
            image = self.vae.decode(latents.to(self.vae.dtype), return_dict=False)[0]
            return (image / 2 + 0.5).clamp(0, 1)


__all__ = ["KontextSampler", "PromptEmbeds", "Conditioning", "SdeStep", "encode_prompts",
           "stack_prompt_embeds", "cat_prompt_embeds", "to_device", "calculate_shift", "schedule_shift", "MAX_SHIFT", "euler_step", "sde_step", "sde_std_scale",
           "gaussian_log_prob", "LOG_PROB_REDUCTIONS"]
