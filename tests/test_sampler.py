"""The differentiable Kontext sampler: parity with diffusers, gradients, truncation."""
import pytest
import torch

from alignprop.lora import add_lora
from alignprop.tiny_kontext import build_tiny_pipeline
from alignprop.sampler import KontextSampler, encode_prompts, stack_prompt_embeds

H = W = 32
STEPS = 4
PROMPTS = ["make it brighter", "add snow on the ground"]


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_pipeline()


def _inputs(b=2):
    g = torch.Generator().manual_seed(5)
    return torch.rand(b, 3, H, W, generator=g)


def _sampler(pipe, transformer=None, steps=STEPS):
    t = transformer if transformer is not None else pipe.transformer
    return KontextSampler(t, pipe.vae, pipe.scheduler, pipe.transformer.config, H, W, steps,
                          guidance_scale=2.5)


@pytest.fixture(scope="module", params=["tiny", "tiny-photo"])
def any_pipe(request, pipe):
    # the random model and the pretrained one (different configs, trained weights)
    if request.param == "tiny":
        return pipe
    from alignprop.models import load_kontext_pipeline

    return load_kontext_pipeline(request.param)


def test_parity_with_diffusers_pipeline(any_pipe):
    pipe = any_pipe
    images = _inputs()
    ref = pipe(image=images, prompt=PROMPTS, height=H, width=W, num_inference_steps=STEPS,
               guidance_scale=2.5, generator=torch.Generator().manual_seed(3), output_type="pt",
               max_area=H * W, _auto_resize=False).images
    text = stack_prompt_embeds(encode_prompts(pipe, PROMPTS, "cpu"), PROMPTS)
    with torch.no_grad():
        ours = _sampler(pipe).sample(images, text, generator=torch.Generator().manual_seed(3))
    assert ours.shape == ref.shape == (2, 3, H, W)
    assert (ours - ref).abs().max().item() == 0.0
    # and the image is not trivially constant: the comparison means something
    assert ref.std().item() > 1e-3


def test_schedule_matches_pipeline_scheduler(pipe):
    s = _sampler(pipe, steps=5)
    pipe(image=_inputs(1), prompt="x", height=H, width=W, num_inference_steps=5,
         output_type="pt", max_area=H * W, _auto_resize=False)
    assert torch.allclose(s.sigmas, pipe.scheduler.sigmas.float())
    assert torch.allclose(s.timesteps, pipe.scheduler.timesteps)
    assert s.sigmas[0] == 1.0 and s.sigmas[-1] == 0.0


def _lora_pipe(seed=0):
    pipe = build_tiny_pipeline()
    torch.manual_seed(seed)
    params = add_lora(pipe.transformer, rank=4, alpha=4,
                      target_modules=["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
                                      "ff.net.2"])
    # LoRA B starts at zero, which makes A's gradient exactly zero by construction;
    # give B small values (as after a few updates) so the path into A is checked too.
    with torch.no_grad():
        for name, p in pipe.transformer.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    return pipe, params


@pytest.mark.parametrize("k", [1, STEPS])
def test_gradients_reach_every_lora_parameter_only(k):
    pipe, params = _lora_pipe()
    text = stack_prompt_embeds(encode_prompts(pipe, PROMPTS, "cpu"), PROMPTS)
    out = _sampler(pipe).sample(_inputs(), text, backprop_steps=k,
                                generator=torch.Generator().manual_seed(0))
    out.mean().backward()
    assert params, "no LoRA parameters"
    for p in params:
        assert p.grad is not None and torch.isfinite(p.grad).all()
        assert p.grad.abs().sum() > 0
    lora_ids = {id(p) for p in params}
    for name, p in pipe.transformer.named_parameters():
        if id(p) not in lora_ids:
            assert p.grad is None, name
    for module in (pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        assert all(p.grad is None for p in module.parameters())


@pytest.mark.parametrize("k", [1, 2, STEPS])
def test_only_last_k_steps_build_a_graph(k):
    pipe, _ = _lora_pipe()
    grad_modes = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda m, a: grad_modes.append(torch.is_grad_enabled()))
    text = stack_prompt_embeds(encode_prompts(pipe, PROMPTS, "cpu"), PROMPTS)
    out = _sampler(pipe).sample(_inputs(), text, backprop_steps=k,
                                generator=torch.Generator().manual_seed(0))
    hook.remove()
    assert grad_modes == [False] * (STEPS - k) + [True] * k
    assert out.requires_grad


def test_truncation_changes_gradient_not_image():
    """K only decides where the graph starts: same image, different gradients."""
    pipe, params = _lora_pipe()
    text = stack_prompt_embeds(encode_prompts(pipe, PROMPTS, "cpu"), PROMPTS)
    grads, images = [], []
    for k in (1, STEPS):
        out = _sampler(pipe).sample(_inputs(), text, backprop_steps=k,
                                    generator=torch.Generator().manual_seed(0))
        out.mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in params]).clone())
        images.append(out.detach())
        for p in params:
            p.grad = None
    assert torch.allclose(images[0], images[1], atol=1e-6)
    assert not torch.allclose(grads[0], grads[1])


def test_gradient_checkpointing_gives_same_gradients():
    pipe, params = _lora_pipe()
    text = stack_prompt_embeds(encode_prompts(pipe, PROMPTS, "cpu"), PROMPTS)
    grads = []
    for ckpt in (False, True):
        if ckpt:
            pipe.transformer.enable_gradient_checkpointing()
        out = _sampler(pipe).sample(_inputs(), text, backprop_steps=2,
                                    generator=torch.Generator().manual_seed(0))
        out.mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in params]).clone())
        for p in params:
            p.grad = None
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-7)


def test_size_must_fit_the_latent_grid(pipe):
    with pytest.raises(ValueError, match="multiple of 4"):
        KontextSampler(pipe.transformer, pipe.vae, pipe.scheduler, pipe.transformer.config,
                       30, 32, 2)


def _bf16_pair(steps, euler_fp32=False):
    """(ours, pipeline) images of the tiny pipeline run entirely in bf16."""
    pipe = build_tiny_pipeline(dtype=torch.bfloat16)
    images = _inputs()
    ref = pipe(image=images, prompt=PROMPTS, height=H, width=W, num_inference_steps=steps,
               guidance_scale=2.5, generator=torch.Generator().manual_seed(3), output_type="pt",
               max_area=H * W, _auto_resize=False).images
    text = stack_prompt_embeds(encode_prompts(pipe, PROMPTS, "cpu"), PROMPTS)
    sampler = KontextSampler(pipe.transformer, pipe.vae, pipe.scheduler, pipe.transformer.config,
                             H, W, steps, guidance_scale=2.5, dtype=torch.bfloat16,
                             euler_fp32=euler_fp32)
    with torch.no_grad():
        ours = sampler.sample(images, text, generator=torch.Generator().manual_seed(3))
    return ours.float(), ref.float()


@pytest.mark.parametrize("steps", [4, 8])
def test_bf16_parity_with_diffusers_pipeline(steps):
    """Default arithmetic = the pipeline's (fp32 image mapping, dt * v in bf16): same bits."""
    ours, ref = _bf16_pair(steps)
    assert ref.std().item() > 1e-3
    assert (ours - ref).abs().max().item() == 0.0


def test_bf16_euler_fp32_switch_differs_from_the_pipeline_only_slightly():
    """euler_fp32=True keeps the update in fp32: not bit-equal to diffusers in bf16, but close."""
    ours, ref = _bf16_pair(8, euler_fp32=True)
    diff = (ours - ref).abs().max().item()
    assert 0.0 < diff < 0.1


def test_euler_fp32_is_the_identity_switch_in_fp32(pipe):
    text = stack_prompt_embeds(encode_prompts(pipe, PROMPTS, "cpu"), PROMPTS)
    outs = []
    for flag in (False, True):
        s = KontextSampler(pipe.transformer, pipe.vae, pipe.scheduler, pipe.transformer.config,
                           H, W, STEPS, euler_fp32=flag)
        with torch.no_grad():
            outs.append(s.sample(_inputs(), text, generator=torch.Generator().manual_seed(3)))
    assert torch.equal(outs[0], outs[1])
