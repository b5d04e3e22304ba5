"""Training methods (alignprop, draft-lv, refl, imagerefl) and base consistency: the pieces,
on the tiny model. Training through `accelerate launch` with resume: test_methods_e2e.py."""
import pytest
import torch

from alignprop.config import TrainConfig
from alignprop.methods import (Batch, Models, base_model, flow_matching_loss, refl_step,
                               run_method)

METHOD_ARGS = {
    "alignprop": {},
    "draft-lv": {"method": "draft-lv"},
    "refl": {"method": "refl"},
    "imagerefl": {"method": "imagerefl", "imagerefl_schedule": "mix"},
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


def _batch(text, step=0, seed=0, identity=False):
    from alignprop.sampler import stack_prompt_embeds

    inputs = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    prompts = ["make it brighter"] * 2
    return Batch(inputs, prompts, stack_prompt_embeds(text, prompts),
                 torch.Generator().manual_seed(seed), seed, step, 4,
                 identity_text=text["keep it"] if identity else None)


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


@pytest.mark.parametrize("method", sorted(METHOD_ARGS))
def test_base_consistency_is_zero_at_init_and_grows_with_the_lora(method, fresh):
    models, text = fresh
    flags = TrainConfig(data_dir="x", base_consistency_weight=1.0, **METHOD_ARGS[method])
    batch = _batch(text, identity=True)
    out = run_method(batch, models, flags)
    assert out.metrics["base_consistency"] == pytest.approx(0.0, abs=1e-12)  # LoRA B = 0
    for name, p in models.bare.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    out = run_method(_batch(text, identity=True), models, flags)
    assert out.metrics["base_consistency"] > 1e-4
    out.loss.backward()
    grads = [p.grad for n, p in models.bare.named_parameters() if "lora" in n]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    with torch.no_grad():  # the switch really removes the LoRA, and puts it back
        s, b = models.sampler, _batch(text)
        noise = s.initial_noise(2, torch.Generator().manual_seed(0), "cpu")
        lora = s.sample(b.inputs, b.text, noise=noise)
        with base_model(models.bare):
            base = s.sample(b.inputs, b.text, noise=noise)
        again = s.sample(b.inputs, b.text, noise=noise)
    assert (lora - base).abs().max() > 1e-4 and (lora - again).abs().max() == 0

def test_imagerefl_schedule_and_flow_matching_target(fresh):
    models, text = fresh
    alt = TrainConfig(data_dir="x", method="imagerefl")
    even = run_method(_batch(text, step=0, identity=True), models, alt)
    odd = run_method(_batch(text, step=1, identity=True), models, alt)
    assert even.reward is not None and "flow_matching" not in even.metrics
    assert odd.reward is None and odd.metrics["flow_matching"] > 0
    # Paired target: the loss measures input -> target, so it differs from the identity's.
    b = _batch(text, identity=True)
    ident = flow_matching_loss(b, models, alt, {})
    b.targets = 1 - b.inputs
    paired = flow_matching_loss(b, models, alt, {})
    assert abs(paired.item() - ident.item()) > 1e-4


def test_bad_method_flags_are_refused(tmp_path):
    with pytest.raises(ValueError, match="--method 'ppo' is not valid"):
        TrainConfig(data_dir="x", method="ppo")
    with pytest.raises(ValueError, match="--draft_lv_n must be >= 1"):
        TrainConfig(data_dir="x", draft_lv_n=0)
    with pytest.raises(ValueError, match="--refl_start_fraction"):
        TrainConfig(data_dir="x", refl_start_fraction=1.0)
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
                   "published default 2", "steps 30-39 of 40, f=0.75", "--imagerefl_fm_weight",
                   "--base_consistency_weight", "--base_consistency_metric {latent,lpips}",
                   "published a = 0.7", "default 1e-4;", "D3PO's default 0.1",
                   "--preference_mode {majority,every}", "--reward_command"):
        assert needle in text, needle
