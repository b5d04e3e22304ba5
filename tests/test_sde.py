"""The stochastic (Flow-GRPO) sampler step and the one Euler step every sampler path shares."""
import math

import pytest
import torch

from alignprop.sampler import (
    KontextSampler,
    PromptEmbeds,
    encode_prompts,
    euler_step,
    gaussian_log_prob,
    sde_std_scale,
    sde_step,
    stack_prompt_embeds,
)
from alignprop.tiny_kontext import build_tiny_pipeline

H = W = 32
STEPS = 4
PROMPTS = ["make it brighter", "add snow on the ground"]


def _inputs(b=2):
    return torch.rand(b, 3, H, W, generator=torch.Generator().manual_seed(5))


_PIPES = {}


def _setup(dtype=torch.float32, steps=STEPS):
    if dtype not in _PIPES:     # one tiny pipeline per dtype for the whole module
        pipe = build_tiny_pipeline(dtype=dtype)
        _PIPES[dtype] = pipe, stack_prompt_embeds(encode_prompts(pipe, PROMPTS, "cpu"), PROMPTS)
    pipe, text = _PIPES[dtype]
    sampler = KontextSampler(pipe.transformer, pipe.vae, pipe.scheduler, pipe.transformer.config,
                             H, W, steps, guidance_scale=2.5, dtype=dtype)
    return sampler, text


@pytest.fixture(scope="module")
def fp32():
    return _setup()


# ------------------------------------------------------------------ the step, by hand
@pytest.mark.parametrize("t, t_next, first", [(0.6, 0.35, False), (1.0, 0.8, True)])
def test_sde_log_prob_equals_a_hand_computation(t, t_next, first):
    a = 0.7
    x = torch.tensor([[[0.3, -1.2], [0.8, 0.05]]])          # (B=1, L=2, C=2)
    v = torch.tensor([[[-0.4, 0.9], [1.5, -0.25]]])
    y = torch.tensor([[[0.5, -1.6], [0.2, 0.3]]])            # the transition's end point
    sigmas = torch.tensor([t, t_next, 0.0])
    scale = sde_std_scale(sigmas, 0, a)
    # Flow-GRPO's noise scale; at t = 1 the denominator takes the next sigma
    s = a * math.sqrt(t / (1 - (t_next if first else t)))
    assert scale.item() == pytest.approx(s, rel=1e-6)
    out = sde_step(x, v, sigmas[0], sigmas[1], scale, next_latents=y, reduction="sum")
    dt = t_next - t
    std = s * math.sqrt(-dt)
    total = 0.0
    for xe, ve, ye in zip(x.flatten().tolist(), v.flatten().tolist(), y.flatten().tolist()):
        # Flow-GRPO's own arrangement of the mean (sd3_sde_with_logprob.py)
        mean = xe * (1 + s * s / (2 * t) * dt) + ve * (1 + s * s * (1 - t) / (2 * t)) * dt
        total += -(ye - mean) ** 2 / (2 * std * std) - math.log(std) - 0.5 * math.log(2 * math.pi)
    assert out.std.item() == pytest.approx(std, rel=1e-6)
    assert out.log_prob.item() == pytest.approx(total, rel=1e-5)
    per_dim = sde_step(x, v, sigmas[0], sigmas[1], scale, next_latents=y, reduction="mean")
    assert per_dim.log_prob.item() == pytest.approx(total / 4, rel=1e-5)
    assert torch.equal(per_dim.latents, y)


def test_sde_step_at_noise_zero_is_the_euler_step_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(2, 16, 4, generator=g).to(dtype)
        v = torch.randn(2, 16, 4, generator=g).to(dtype)
        sigma, sigma_next = torch.tensor(0.7), torch.tensor(0.45)
        noise = torch.randn(2, 16, 4, generator=g)
        out = sde_step(x, v, sigma, sigma_next, torch.tensor(0.0), noise)
        assert out.latents.dtype == dtype
        assert torch.equal(out.latents, euler_step(x, v, sigma_next - sigma))
        assert torch.isnan(out.log_prob).all()   # a deterministic step has no density
        noisy = sde_step(x, v, sigma, sigma_next, torch.tensor(0.5), noise)
        assert not torch.equal(noisy.latents, out.latents)


def test_log_prob_reduction_is_checked():
    with pytest.raises(ValueError, match="reduction 'max'"):
        gaussian_log_prob(torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor(1.0), "max")


# ------------------------------------------------------------------ the sampler
def _ode_latents(sampler, text, seeds):
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    noise = sampler.initial_noise(len(seeds), gens, "cpu")
    with torch.no_grad():
        return sampler.sample(_inputs(len(seeds)), text, noise=noise, return_latents=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_noise_level_zero_reproduces_the_ode_sampler_exactly(dtype, fp32):
    sampler, text = fp32 if dtype == torch.float32 else _setup(torch.bfloat16)
    images, traj = sampler.sample_sde(_inputs(), text, 0.0, seeds=[3, 4])
    ode_images, ode_latents = _ode_latents(sampler, text, [3, 4])
    assert ode_images.std() > 1e-3
    assert torch.equal(traj.latents[:, -1], ode_latents)
    assert torch.equal(images, ode_images)
    assert traj.latents.dtype == dtype and traj.latents.shape[:2] == (2, STEPS + 1)


def test_sde_is_deterministic_given_the_seed_and_per_sample(fp32):
    sampler, text = fp32
    _, a = sampler.sample_sde(_inputs(), text, 0.7, seeds=[3, 4])
    _, b = sampler.sample_sde(_inputs(), text, 0.7, seeds=[3, 4])
    assert torch.equal(a.latents, b.latents) and torch.equal(a.log_probs, b.log_probs)
    # sample 2 alone with its seed: its noise does not depend on its batch neighbour
    second = PromptEmbeds(text.prompt_embeds[1:], text.pooled_prompt_embeds[1:], text.text_ids)
    _, alone = sampler.sample_sde(_inputs()[1:], second, 0.7, seeds=[4])
    # (the noise is the same draw; the batched matmuls may differ in the last bits)
    assert torch.equal(alone.latents[0, 0], a.latents[1, 0])
    assert torch.allclose(alone.latents[0], a.latents[1], atol=1e-4)
    _, c = sampler.sample_sde(_inputs(), text, 0.7, seeds=[5, 4])
    assert not torch.equal(c.latents[0], a.latents[0]) and torch.equal(c.latents[1], a.latents[1])
    # the noise really moves the chain away from the ODE's
    _, ode = _ode_latents(sampler, text, [3, 4])
    assert (a.latents[:, -1] - ode).abs().max() > 1e-2


def test_stored_log_probs_are_those_of_the_drawn_noise(fp32):
    """(x_{i+1} - mean) / std is the standard normal draw: its log-density is the stored one."""
    sampler, text = fp32
    _, traj = sampler.sample_sde(_inputs(), text, 0.7, seeds=[3, 4])
    assert torch.isfinite(traj.log_probs).all()
    cond = sampler.condition(traj.image_tokens, text)
    for i in range(STEPS):
        step = sampler.sde_step(traj.latents[:, i], i, cond, 0.7, next_latents=traj.latents[:, i + 1])
        z = (traj.latents[:, i + 1] - step.mean) / step.std
        assert z.pow(2).mean().item() == pytest.approx(1.0, abs=0.15)     # 256 dims x 2
        expected = (-0.5 * z.pow(2) - torch.log(step.std) - 0.5 * math.log(2 * math.pi)).mean((1, 2))
        assert torch.allclose(traj.log_probs[:, i], expected, atol=1e-5)


def test_sample_sde_refuses_bad_arguments(fp32):
    sampler, text = fp32
    with pytest.raises(ValueError, match="one seed per image"):
        sampler.sample_sde(_inputs(), text, 0.7, seeds=[1])
    with pytest.raises(ValueError, match="noise level"):
        sampler.sample_sde(_inputs(), text, -0.1, seeds=[1, 2])


# ------------------------------------------------------------------ one integrator everywhere
def test_denoise_to_and_single_steps_are_the_sampler_in_bf16():
    """Base consistency compares latents from the same integrator (issue 19): in bf16 too."""
    sampler, text = _setup(torch.bfloat16, steps=6)
    noise = sampler.initial_noise(2, torch.Generator().manual_seed(1), "cpu")
    tokens = sampler.encode_image(_inputs())
    with torch.no_grad():
        _, full = sampler.sample(_inputs(), text, noise=noise, return_latents=True)
        assert torch.equal(sampler.denoise_to(noise, tokens, text, 6), full)
        half = sampler.denoise_to(noise, tokens, text, 3)
        cond = sampler.condition(tokens, text)
        x = half
        for i in range(3, 6):
            x = sampler.ode_step(x, i, cond)
    assert torch.equal(x, full)
