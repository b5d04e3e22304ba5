"""Differentiable FLUX.1 Kontext sampling with truncated backpropagation.

This re-implements the denoising loop of diffusers' ``FluxKontextPipeline.__call__``
(diffusers 0.3x-0.4x) so that gradients can flow from the decoded image back into
the transformer's LoRA parameters. With gradients off it produces the same image
as the pipeline (tests/test_sampler.py checks max |diff| <= 1e-4 in fp32):

* text: T5 sequence embeddings + CLIP pooled embedding, computed once under
  ``no_grad`` by :func:`encode_prompts` (the trainer then frees the encoders);
* Kontext conditioning: the input image is VAE-encoded (distribution mode, no
  grad), shifted/scaled, packed into 2x2 patches and appended to the noisy
  latent tokens; its position ids are the latent grid ids with the first axis
  set to 1;
* schedule: ``sigmas = linspace(1, 1/N, N)`` shifted by the scheduler with the
  resolution-dependent ``mu`` (dynamic shifting), Euler flow-matching steps
  ``x <- x + (sigma_next - sigma) * v`` computed in fp32;
* guidance-distilled sampling: FLUX.1 Kontext-dev embeds the guidance scale
  (one forward per step, no classifier-free guidance batch).

Only the last ``backprop_steps`` steps build an autograd graph; the earlier ones
run under ``torch.no_grad`` so memory does not grow with the number of steps
(DRaFT-K / AlignProp truncated backprop). The VAE decode keeps its graph.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch


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


def stack_prompt_embeds(cache: dict[str, PromptEmbeds], prompts: Sequence[str]) -> PromptEmbeds:
    """Batch the cached embeds of ``prompts`` (every prompt must have been encoded)."""
    missing = [p for p in prompts if p not in cache]
    if missing:
        raise KeyError(f"prompts were not encoded before training: {missing[:3]}")
    items = [cache[p] for p in prompts]
    return PromptEmbeds(torch.cat([e.prompt_embeds for e in items]),
                        torch.cat([e.pooled_prompt_embeds for e in items]),
                        items[0].text_ids)


def calculate_shift(image_seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096,
                    base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """Resolution-dependent ``mu`` of FLUX's dynamic shifting (linear in token count)."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * m + (base_shift - m * base_seq_len)


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


class KontextSampler:
    """Euler flow-matching sampler for FLUX Kontext with gradients through the last K steps.

    ``transformer`` may be wrapped (DDP, peft); the model config is read from
    ``transformer_config``. ``scheduler`` is only used to build the sigma schedule.
    """

    def __init__(self, transformer, vae, scheduler, transformer_config, height: int, width: int,
                 num_steps: int, guidance_scale: float = 2.5, dtype: torch.dtype = torch.float32):
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
        self.timesteps, self.sigmas = self._schedule()

    # ------------------------------------------------------------------ schedule
    def _schedule(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Timesteps (N,) and sigmas (N+1,) exactly as the pipeline sets them."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        sched = FlowMatchEulerDiscreteScheduler.from_config(self.scheduler.config)
        cfg = sched.config
        n = self.num_steps
        seq_len = (self.latent_h // 2) * (self.latent_w // 2)
        mu = calculate_shift(seq_len, cfg.get("base_image_seq_len", 256),
                             cfg.get("max_image_seq_len", 4096), cfg.get("base_shift", 0.5),
                             cfg.get("max_shift", 1.15))
        sched.set_timesteps(sigmas=np.linspace(1.0, 1 / n, n), mu=mu, device="cpu")
        return sched.timesteps.clone(), sched.sigmas.clone().float()

    # ------------------------------------------------------------------ conditioning
    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Input images (B,3,H,W) in [0,1] -> packed Kontext tokens (B, L, C*4), no grad."""
        if images.shape[-2:] != (self.height, self.width):
            raise ValueError(f"input images are {tuple(images.shape[-2:])}, expected "
                             f"{(self.height, self.width)}; resize them first (data.py does)")
        x = images.to(device=self.vae.device, dtype=self.dtype) * 2.0 - 1.0
        latents = self.vae.encode(x).latent_dist.mode()
        latents = (latents - self.vae.config.shift_factor) * self.vae.config.scaling_factor
        return _pack(latents)

    def initial_noise(self, batch_size: int, generator: torch.Generator | None, device
                      ) -> torch.Tensor:
        """Packed Gaussian noise drawn exactly like the pipeline (same generator order)."""
        from diffusers.utils.torch_utils import randn_tensor

        shape = (batch_size, self.in_channels // 4, self.latent_h, self.latent_w)
        return _pack(randn_tensor(shape, generator=generator, device=torch.device(device),
                                  dtype=self.dtype))

    # ------------------------------------------------------------------ sampling
    def sample(self, images: torch.Tensor, text: PromptEmbeds, backprop_steps: int | None = None,
               generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
               image_tokens: torch.Tensor | None = None, return_latents: bool = False):
        """Edit ``images`` (B,3,H,W in [0,1]) following ``text``; returns (B,3,H,W) in [0,1].

        ``backprop_steps`` = K: only the last K Euler steps (and the VAE decode) build
        a graph; None or K >= N means all steps. Called under ``torch.no_grad()``
        nothing builds a graph (parity tests, evaluation, image logging).
        """
        device = images.device
        b = images.shape[0]
        n = self.num_steps
        k = n if backprop_steps is None else max(0, min(int(backprop_steps), n))
        if image_tokens is None:
            image_tokens = self.encode_image(images)
        latents = noise if noise is not None else self.initial_noise(b, generator, device)
        latents = latents.to(device=device, dtype=self.dtype)
        image_tokens = image_tokens.to(device=device, dtype=self.dtype)
        text = text.to(device=device, dtype=self.dtype)
        h2, w2 = self.latent_h // 2, self.latent_w // 2
        img_ids = torch.cat([_grid_ids(h2, w2, 0.0, device, self.dtype),
                             _grid_ids(h2, w2, 1.0, device, self.dtype)])
        guidance = (torch.full([1], self.guidance_scale, device=device, dtype=torch.float32)
                    .expand(b) if self.guidance_embeds else None)
        timesteps = self.timesteps.to(device)
        sigmas = self.sigmas.to(device)

        grad_on = torch.is_grad_enabled()
        for i in range(n):
            # Steps before the last K run without a graph: the latents entering the
            # first backpropagated step are a constant, so memory is O(K) not O(N).
            with torch.set_grad_enabled(grad_on and i >= n - k):
                timestep = timesteps[i].expand(b).to(self.dtype)
                velocity = self.transformer(
                    hidden_states=torch.cat([latents, image_tokens], dim=1),
                    timestep=timestep / 1000, guidance=guidance,
                    pooled_projections=text.pooled_prompt_embeds,
                    encoder_hidden_states=text.prompt_embeds, txt_ids=text.text_ids,
                    img_ids=img_ids, return_dict=False)[0]
                velocity = velocity[:, : latents.shape[1]]
                # Euler step in fp32 like FlowMatchEulerDiscreteScheduler.step.
                latents = (latents.float() + (sigmas[i + 1] - sigmas[i]) * velocity.float()
                           ).to(velocity.dtype)
        with torch.set_grad_enabled(grad_on and k > 0):
            out = self.decode(latents)
        return (out, latents) if return_latents else out

    # ------------------------------------------------------------------ single steps
    # The peers' methods (alignprop/methods.py) need the sampler's pieces one at a time:
    # the no-grad denoising up to a step, one velocity prediction with grad, the closed
    # form of the clean latent. They call the transformer exactly as ``sample`` does.
    def _ids_and_guidance(self, b: int, device):
        h2, w2 = self.latent_h // 2, self.latent_w // 2
        img_ids = torch.cat([_grid_ids(h2, w2, 0.0, device, self.dtype),
                             _grid_ids(h2, w2, 1.0, device, self.dtype)])
        guidance = (torch.full([1], self.guidance_scale, device=device, dtype=torch.float32)
                    .expand(b) if self.guidance_embeds else None)
        return img_ids, guidance

    def velocity_at(self, latents: torch.Tensor, sigma: torch.Tensor | float,
                    image_tokens: torch.Tensor, text: PromptEmbeds, transformer=None
                    ) -> torch.Tensor:
        """Flow velocity (B, L, C) predicted at noise level ``sigma`` (scalar or (B,)).

        The model input is ``timestep = sigma`` (the sampler's ``timesteps / 1000``);
        grad follows the caller's grad mode. ``transformer`` overrides the sampler's.
        """
        b, device = latents.shape[0], latents.device
        img_ids, guidance = self._ids_and_guidance(b, device)
        text = text.to(device=device, dtype=self.dtype)
        sigma = torch.as_tensor(sigma, device=device, dtype=torch.float32)
        timestep = sigma.expand(b) if sigma.ndim == 0 else sigma
        v = (transformer or self.transformer)(
            hidden_states=torch.cat([latents.to(self.dtype), image_tokens.to(self.dtype)], dim=1),
            timestep=timestep.to(self.dtype), guidance=guidance,
            pooled_projections=text.pooled_prompt_embeds, encoder_hidden_states=text.prompt_embeds,
            txt_ids=text.text_ids, img_ids=img_ids, return_dict=False)[0]
        return v[:, : latents.shape[1]]

    def step_sigma(self, i: int) -> torch.Tensor:
        """Noise level entering Euler step ``i`` (the sigma its timestep is made from)."""
        return self.timesteps[i].float() / 1000

    @torch.no_grad()
    def denoise_to(self, noise: torch.Tensor, image_tokens: torch.Tensor, text: PromptEmbeds,
                   stop: int) -> torch.Tensor:
        """Run Euler steps 0..stop-1 without grad; returns the latents entering step ``stop``
        (``stop = N``: the final clean latents, as ``sample`` would decode them)."""
        latents = noise.to(dtype=self.dtype)
        for i in range(stop):
            v = self.velocity_at(latents, self.step_sigma(i), image_tokens, text)
            latents = (latents.float() + (self.sigmas[i + 1] - self.sigmas[i]) * v.float()
                       ).to(v.dtype)
        return latents

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Packed latents -> images (B,3,H,W) in [0,1] (differentiable)."""
        latents = _unpack(tokens, self.latent_h, self.latent_w)
        latents = latents / self.vae.config.scaling_factor + self.vae.config.shift_factor
        image = self.vae.decode(latents.to(self.vae.dtype), return_dict=False)[0]
        return (image / 2 + 0.5).clamp(0, 1)


__all__ = ["KontextSampler", "PromptEmbeds", "encode_prompts", "stack_prompt_embeds",
           "calculate_shift"]
