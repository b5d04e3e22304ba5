"""Score a trained LoRA against its base model on held-out photos (same inputs, noise, prompt).

What the GRPO / D3PO tests and ``benchmarks/bench_judges.py`` measure: the ODE sampler (what
a user gets at inference, not the SDE the methods train with), fixed noise per photo, the
base model with the LoRA switched off and the LoRA on, both scored by the same judge.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch

from common.images import resize_to
from common.photos import photo_tensor

from .lora import add_lora, load_lora_into
from .methods import base_model
from .models import load_kontext_pipeline
from .sampler import KontextSampler, encode_prompts, stack_prompt_embeds


class HeldOut:
    """A pipeline, held-out inputs and fixed noise; scores the base model and LoRA folders."""

    def __init__(self, pretrained: str, photos: Sequence[str] | torch.Tensor, prompt: str,
                 size: int, num_steps: int, lora_rank: int, lora_targets: Sequence[str],
                 max_sequence_length: int = 512, seed: int = 1234, guidance_scale: float = 2.5,
                 draws: int = 1):
        """``photos``: scikit-image names or a (B,3,size,size) tensor; ``draws``: noise draws
        per photo (each photo repeated, rows ``i * draws ... i * draws + draws - 1``)."""
        self.pipe = load_kontext_pipeline(pretrained)
        inputs = photos if isinstance(photos, torch.Tensor) else torch.stack(
            [resize_to(photo_tensor(p), size, size, mode="crop") for p in photos])
        self.inputs = inputs.repeat_interleave(draws, 0)
        self.draws = draws
        self.prompts = [prompt] * len(self.inputs)
        self.text = stack_prompt_embeds(encode_prompts(self.pipe, [prompt], "cpu",
                                                       max_sequence_length), self.prompts)
        # every adapter name a trained LoRA may hold, at zero: the LoRA loads into it
        add_lora(self.pipe.transformer, lora_rank, None, list(lora_targets), 0.0)
        self.sampler = KontextSampler(self.pipe.transformer, self.pipe.vae, self.pipe.scheduler,
                                      self.pipe.transformer.config, size, size, num_steps,
                                      guidance_scale)
        self.noise = self.sampler.initial_noise(len(self.inputs),
                                                torch.Generator().manual_seed(seed), "cpu")

    @torch.no_grad()
    def images(self, lora: str | Path | None) -> torch.Tensor:
        """(B,3,H,W) outputs of the base model (``lora`` None) or of a LoRA folder."""
        if lora is None:
            with base_model(self.pipe.transformer):
                return self.sampler.sample(self.inputs, self.text, noise=self.noise)
        load_lora_into(self.pipe.transformer, Path(lora))
        return self.sampler.sample(self.inputs, self.text, noise=self.noise)

    def score(self, lora: str | Path | None, judge: Callable) -> torch.Tensor:
        """(B,) scores of ``judge(images, inputs, prompts)`` for the base model or a LoRA."""
        out = judge(self.images(lora), self.inputs, self.prompts)
        return (out[0] if isinstance(out, tuple) else out).detach().float()


__all__ = ["HeldOut"]
