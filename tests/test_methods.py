"""Training methods (alignprop, draft-lv, refl, imagerefl), AlignProp's truncation draw and
base consistency: the pieces, on the tiny model. Training through `accelerate launch` with
resume: test_methods_e2e.py."""
import math
import random
import statistics

import pytest
import torch

from alignprop.config import TrainConfig
from alignprop.methods import (Batch, Models, base_model, imagerefl_start, refl_start,
                               refl_step, run_method)
from alignprop.trainer import alignprop_t_b, choose_alignprop_k, choose_k

METHOD_ARGS = {
    "alignprop": {},
    "draft-lv": {"method": "draft-lv"},
    "refl": {"method": "refl"},
    "imagerefl": {"method": "imagerefl"},
}


@pytest.fixture(scope="module")
def tiny():
    return _tiny_models()


@pytest.fixture
def fresh(tiny):
    """The module's tiny models with the LoRA back at its init (B = 0)."""
    models, text = tiny
    with torch.no_grad():
        for name, p in models.bare.named_parameters():
            if "lora_B" in name:
                p.zero_()
            p.grad = None
    return models, text


def _tiny_models():
    from alignprop.lora import add_lora
    from alignprop.models import load_kontext_pipeline
    from alignprop.sampler import KontextSampler, encode_prompts

    pipe = load_kontext_pipeline("tiny")
    text = encode_prompts(pipe, ["make it brighter", "keep it"], "cpu", 32)
    add_lora(pipe.transformer, 4, 4, ["attn.to_q", "attn.to_v", "proj_out"], 0.0)
    sampler = KontextSampler(pipe.transformer, pipe.vae, pipe.scheduler, pipe.transformer.config,
                             32, 32, 4)

    def reward(images, inputs, prompts):
        r = images.mean((1, 2, 3))
        return r, {"reward": r.mean().item()}

    return Models(sampler, reward, pipe.transformer), text


def _batch(text, step=0, seed=0):
    from alignprop.sampler import stack_prompt_embeds

    inputs = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    prompts = ["make it brighter"] * 2
    return Batch(inputs, prompts, stack_prompt_embeds(text, prompts),
                 torch.Generator().manual_seed(seed), seed, step, 4,
                 )


def test_single_step_pieces_reproduce_the_sampler(fresh):
    models, text = fresh
    s = models.sampler
    b = _batch(text)
    noise = s.initial_noise(2, torch.Generator().manual_seed(5), "cpu")
    with torch.no_grad():
        full = s.sample(b.inputs, b.text, noise=noise)
        pieces = s.decode(s.denoise_to(noise, s.encode_image(b.inputs), b.text, s.num_steps))
    assert (full - pieces).abs().max() == 0
    for i in range(s.num_steps):  # the model is fed timestep = sigma
        assert torch.isclose(s.step_sigma(i), s.sigmas[i], atol=1e-6)


def test_refl_step_is_late_uniform_and_deterministic():
    cfg = TrainConfig(data_dir="x", method="refl", refl_start_fraction=0.75)
    steps = [refl_step(cfg, 40, seed) for seed in range(400)]
    assert set(steps) == set(range(30, 40))
    assert steps == [refl_step(cfg, 40, seed) for seed in range(400)]


def _assert_loss_reaches_every_lora_tensor(loss, models):
    loss.backward()
    grads = [p.grad for n, p in models.bare.named_parameters() if "lora" in n]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("method", sorted(METHOD_ARGS))
def test_base_consistency_is_zero_at_init_and_grows_with_the_lora(method, fresh):
    models, text = fresh
    flags = TrainConfig(data_dir="x", base_consistency_weight=1.0, **METHOD_ARGS[method])
    batch = _batch(text)
    out = run_method(batch, models, flags)
    assert out.metrics["base_consistency"] == pytest.approx(0.0, abs=1e-12)  # LoRA B = 0
    _perturb_lora(models)
    out = run_method(_batch(text), models, flags)
    assert out.metrics["base_consistency"] > 1e-4
    _assert_loss_reaches_every_lora_tensor(out.loss, models)
    with torch.no_grad():  # the switch really removes the LoRA, and puts it back
        s, b = models.sampler, _batch(text)
        noise = s.initial_noise(2, torch.Generator().manual_seed(0), "cpu")
        lora = s.sample(b.inputs, b.text, noise=noise)
        with base_model(models.bare):
            base = s.sample(b.inputs, b.text, noise=noise)
        again = s.sample(b.inputs, b.text, noise=noise)
    assert (lora - base).abs().max() > 1e-4 and (lora - again).abs().max() == 0


def test_detail_consistency_sees_what_the_lora_changes_beyond_a_global_edit(fresh):
    """--base_consistency_metric detail: 0 at init, > 0 once the LoRA moves, gradient reaches
    the LoRA; its measure (rewards.grid.detail_beyond_edit) ignores a global tone/colour
    edit of the base image (tests/test_demo_checks.py checks it on photos)."""
    models, text = fresh
    flags = TrainConfig(data_dir="x", base_consistency_weight=1.0,
                        base_consistency_metric="detail")
    out = run_method(_batch(text), models, flags)
    assert out.metrics["base_consistency"] == pytest.approx(0.0, abs=1e-12)
    _perturb_lora(models)
    out = run_method(_batch(text), models, flags)
    assert out.metrics["base_consistency"] > 1e-6
    _assert_loss_reaches_every_lora_tensor(out.loss, models)


def _sampler8(models):
    """The tiny models with an N=8 sampler: the late range [6, 7] has two steps."""
    from alignprop.sampler import KontextSampler

    s = models.sampler
    s8 = KontextSampler(s.transformer, s.vae, s.scheduler, s.transformer.config, 32, 32, 8)
    return Models(s8, models.reward_fn, models.bare)


def _lora_grads(models):
    return {n: p.grad.clone() for n, p in models.bare.named_parameters()
            if "lora" in n and p.grad is not None}


def _zero_grads(models):
    for p in models.bare.parameters():
        p.grad = None


def _perturb_lora(models):
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for name, p in models.bare.named_parameters():
            if "lora_B" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))


def test_imagerefl_starts_from_the_noised_input_not_pure_noise(fresh, tmp_path):
    models, text = fresh
    m8 = _sampler8(models)
    s = m8.sampler
    flags = TrainConfig(data_dir="x", method="imagerefl")
    b = _batch(text, seed=3)
    x_k, eps, k = imagerefl_start(b, m8, flags)
    assert k == refl_start(flags, 8) == 6
    z = s.encode_image(b.inputs)
    noise = s.initial_noise(2, torch.Generator().manual_seed(3), "cpu")
    assert torch.equal(eps, noise)   # the batch's noise draw, resume-stable
    sk = s.sigmas[6]
    torch.testing.assert_close(x_k.float(), (1 - sk) * z.float() + sk * noise.float())
    # s_6 ~ 0.35 at N = 8 (shifted schedule): mostly the input
    assert (x_k - z).norm() < (x_k - noise).norm()   # nearer the input than the noise
    # with paired targets the real image is the target's latent, not the input's
    b = _batch(text, seed=3)   # (a fresh generator: the batch's draw is consumed)
    b.targets = 1 - b.inputs
    x_t, _, _ = imagerefl_start(b, m8, flags)
    zt = s.encode_image(b.targets)
    torch.testing.assert_close(x_t.float(), (1 - sk) * zt.float() + sk * noise.float())


def test_imagerefl_gradient_is_the_reward_at_m_plus_the_regulariser_at_k(fresh):
    """The whole loss's gradient equals the gradient of loss_scale x (-r(x_m - s_m v(x_m)) +
    mse_scale x mse(x_k + (1 - s_k) v(x_k), eps)) written out here, with m drawn in [k, N-1]
    and the steps k..m-1 without grad; each part alone carries gradient."""
    models, text = fresh
    _perturb_lora(models)
    m8 = _sampler8(models)
    s = m8.sampler
    seed = next(i for i in range(100) if refl_step(TrainConfig(data_dir="x"), 8, i) == 7)
    calls = []
    inner = s.step_velocity

    def spy(latents, i, cond, transformer=None):
        calls.append((i, torch.is_grad_enabled()))
        return inner(latents, i, cond, transformer)

    s.step_velocity = spy
    try:
        for mse_scale in (0.01, 0.0):
            flags = TrainConfig(data_dir="x", method="imagerefl", imagerefl_mse_scale=mse_scale,
                                imagerefl_loss_scale=1e-3)
            _zero_grads(models)
            calls.clear()
            b = _batch(text, seed=seed)
            out = run_method(b, m8, flags)
            assert out.metrics["refl_step"] == 7 and out.metrics["imagerefl_start"] == 6
            assert calls == [(6, True), (6, False), (7, True)]   # reg at k, no-grad k, grad m
            out.loss.backward()
            got = _lora_grads(models)
            # by hand
            _zero_grads(models)
            b = _batch(text, seed=seed)   # the same noise draw again
            x_k, eps, k = imagerefl_start(b, m8, flags)
            tokens = s.encode_image(b.inputs)
            cond = s.condition(tokens, b.text)
            with torch.no_grad():
                x_m = s.ode_step(x_k, 6, cond)
            v_m = inner(x_m, 7, cond)
            r, _ = m8.reward_fn(s.decode(x_m - s.sigmas[7] * v_m), b.inputs, b.prompts)
            reward_part = 1e-3 * -r.mean()
            v_k = inner(x_k, 6, cond)
            mse = torch.nn.functional.mse_loss(x_k + (1 - s.sigmas[6]) * v_k, eps)
            lora = [p for n_, p in models.bare.named_parameters() if "lora" in n_]
            alone = [torch.autograd.grad(part, lora, retain_graph=True, allow_unused=True)
                     for part in (reward_part, mse)]   # each part carries gradient
            assert all(any(g is not None and g.abs().sum() > 0 for g in gs) for gs in alone)
            (reward_part + 1e-3 * mse_scale * mse).backward()
            want = _lora_grads(models)
            assert got.keys() == want.keys() and got
            for n in got:
                torch.testing.assert_close(got[n], want[n], rtol=1e-3, atol=1e-9)
    finally:
        s.step_velocity = inner


def test_refl_relu_loss_is_hinge_times_grad_scale(fresh):
    """--refl_loss relu: relu(threshold - r) x grad_scale; no gradient above the threshold,
    grad_scale x the linear loss's gradient below it."""
    models, text = fresh
    _perturb_lora(models)

    def shifted(offset):
        def reward(images, inputs, prompts):
            r = images.mean((1, 2, 3)) + offset
            return r, {"reward": r.mean().item()}
        return Models(models.sampler, reward, models.bare)

    above = shifted(5.0)   # rewards ~5.5 > 2
    flags = TrainConfig(data_dir="x", method="refl", refl_loss="relu")
    _zero_grads(models)
    out = run_method(_batch(text), above, flags)
    assert out.loss.item() == 0.0
    out.loss.backward()
    assert all(g.abs().max() == 0 for g in _lora_grads(models).values())
    below = shifted(-5.0)   # ~ -4.5 < 2: relu(2 - r) = 2 - r, the linear loss + 2
    _zero_grads(models)
    out = run_method(_batch(text), below, flags)
    assert out.loss.item() == pytest.approx(1e-3 * (2 - out.reward.mean().item()), rel=1e-5)
    out.loss.backward()
    relu = _lora_grads(models)
    _zero_grads(models)
    run_method(_batch(text), below, TrainConfig(data_dir="x", method="refl")).loss.backward()
    linear = _lora_grads(models)
    assert relu and any(g.abs().max() > 0 for g in relu.values())
    for n in relu:
        torch.testing.assert_close(relu[n], 1e-3 * linear[n], rtol=1e-4, atol=1e-12)


def _t_b_law(n, mean, std):
    """P(t_b = t) of AlignProp's draw: int(X), X ~ Normal(mean, std) (int() truncates toward
    zero: t <= X < t + 1 for t >= 1), redrawn until 1 <= t <= n - 1."""
    cdf = lambda x: 0.5 * (1 + math.erf((x - mean) / (std * math.sqrt(2))))
    p = {t: cdf(t + 1) - cdf(t) for t in range(1, n)}
    total = sum(p.values())
    return {t: v / total for t, v in p.items()}


def test_alignprop_draw_follows_the_authors_distribution_scaled_to_n():
    cfg = TrainConfig(data_dir="x", sample_num_steps=50, truncated_backprop="alignprop")
    rng = random.Random(0)
    t = [alignprop_t_b(cfg, rng) for _ in range(4000)]
    assert all(1 <= x <= 49 for x in t)
    law = _t_b_law(50, 42, 5)
    mean = sum(k * v for k, v in law.items())
    sd = math.sqrt(sum((k - mean) ** 2 * v for k, v in law.items()))
    assert 40.5 < mean < 41.2   # truncation toward 0 and the rejection of t_b >= 50
    assert abs(statistics.mean(t) - mean) < 4 * sd / math.sqrt(len(t))
    assert abs(statistics.stdev(t) - sd) < 0.3
    # scaled to N = 8: Normal(6.72, 0.8), t_b in [1, 7], K = 8 - t_b
    cfg8 = TrainConfig(data_dir="x", sample_num_steps=8, truncated_backprop="alignprop")
    ks = [choose_alignprop_k(cfg8, step, micro, 0) for step in range(500) for micro in range(4)]
    law8 = _t_b_law(8, 42 * 8 / 50, 5 * 8 / 50)
    for k in range(1, 8):
        p = law8[8 - k]
        assert abs(ks.count(k) / len(ks) - p) < 4 * math.sqrt(p * (1 - p) / len(ks)) + 1e-3, k
    assert law8[5] + law8[6] + law8[7] > 0.97 and law8[6] > 0.4   # K in {1, 2, 3}, mode 2
    uni = TrainConfig(data_dir="x", sample_num_steps=8, truncated_backprop="alignprop",
                      alignprop_backprop_strategy="uniform")
    ku = [choose_alignprop_k(uni, step, 0, 0) for step in range(1400)]
    assert set(ku) == set(range(1, 8))
    assert max(ku.count(k) for k in range(1, 8)) < 1.4 * min(ku.count(k) for k in range(1, 8))


def test_alignprop_draw_is_per_micro_batch_independent_and_resume_stable():
    cfg = TrainConfig(data_dir="x", sample_num_steps=8, truncated_backprop="alignprop",
                      alignprop_backprop_strategy="uniform", seed=5)
    a = [choose_alignprop_k(cfg, step, 0, 0) for step in range(500)]
    b = [choose_alignprop_k(cfg, step, 1, 0) for step in range(500)]
    c = [choose_alignprop_k(cfg, step, 0, 1) for step in range(500)]
    assert a == [choose_alignprop_k(cfg, step, 0, 0) for step in range(500)]  # a pure function
    assert sum(x == y for x, y in zip(a, b)) < 0.25 * len(a)   # P(equal) = 1/7 if independent
    assert sum(x == y for x, y in zip(a, c)) < 0.25 * len(a)
    corr = statistics.correlation(a, b)
    assert abs(corr) < 0.15
    # the optimizer step's K is the largest possible (the estimate, the logged maximum)
    assert choose_k(cfg, 3) == 7
    other = TrainConfig(data_dir="x", sample_num_steps=8, truncated_backprop="alignprop",
                        alignprop_backprop_strategy="uniform", seed=6)
    assert a != [choose_alignprop_k(other, step, 0, 0) for step in range(500)]
    assert choose_alignprop_k(TrainConfig(data_dir="x"), 0, 0, 0) is None   # fixed: no draw


def test_bad_method_flags_are_refused(tmp_path):
    with pytest.raises(ValueError, match="--method 'ppo' is not valid"):
        TrainConfig(data_dir="x", method="ppo")
    with pytest.raises(ValueError, match="--draft_lv_n must be >= 1"):
        TrainConfig(data_dir="x", draft_lv_n=0)
    with pytest.raises(ValueError, match="--refl_start_fraction"):
        TrainConfig(data_dir="x", refl_start_fraction=1.0)
    with pytest.raises(ValueError, match="--refl_loss relu is ReFL's loss"):
        TrainConfig(data_dir="x", method="imagerefl", refl_loss="relu")
    with pytest.raises(ValueError, match="--imagerefl_loss_scale must be a finite number > 0"):
        TrainConfig(data_dir="x", method="imagerefl", imagerefl_loss_scale=0)
    with pytest.raises(ValueError, match="--truncated_backprop alignprop is AlignProp's"):
        TrainConfig(data_dir="x", method="refl", truncated_backprop="alignprop")
    with pytest.raises(ValueError, match="--alignprop_backprop_mean must be in"):
        TrainConfig(data_dir="x", truncated_backprop="alignprop", alignprop_backprop_mean=60)
    with pytest.raises(ValueError, match="needs --sample_num_steps >= 2"):
        TrainConfig(data_dir="x", truncated_backprop="alignprop", sample_num_steps=1)
    with pytest.raises(ValueError, match="only with --method imagerefl"):
        TrainConfig(data_dir="x", imagerefl_target_dir=str(tmp_path))
    with pytest.raises(ValueError, match="folder not found"):
        TrainConfig(data_dir="x", method="imagerefl", imagerefl_target_dir=str(tmp_path / "no"))


def test_help_states_the_published_defaults():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "alignprop_fluxkontext.py"), "--help"],
                         capture_output=True, text=True, cwd=root,
                         env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
                              "PYTHONPATH": str(root)}).stdout
    text = " ".join(out.split())
    for needle in ("--method {alignprop,draft-lv,refl,imagerefl,grpo,d3po}",
                   "published default 2", "steps 30-39 of 40, f=0.75", "--imagerefl_mse_scale",
                   "mse_loss_scale 0.01",
                   "published loss_scale 1e-3", "--refl_loss {linear,relu}", "ReFL.py: 2",
                   "--truncated_backprop {fixed,random,per_step,alignprop}", "AlignProp: 42",
                   "--base_consistency_weight", "--base_consistency_metric {latent,lpips,detail}",
                   "published a = 0.7", "default 1e-4;", "D3PO's default 0.1",
                   "--preference_mode {majority,every}", "--reward_command"):
        assert needle in text, needle
