"""Issue 26 on the CPU: no host syncs inside a step, the batched no-grad pass, one vision pass per
image for the VLM terms, the inputs' latents cached, profiler ranges, attention per phase.
(--compile: tests/test_compile.py; the GPU figures: benchmarks/gpu_speed_check.sh.)"""
import collections
import traceback
from pathlib import Path

import pytest
import torch

from alignprop.attention import AttentionPhases, attention_phases, flash3_available
from alignprop.config import parse_config
from alignprop.methods import Batch, Models, run_method, shared_nograd_pass
from alignprop.reward_flags import RewardFlags, build_reward_from_flags
from alignprop.run import batch_nograd, resume_run, setup_run
from alignprop.trainer import optimizer_step
from common.profiling import (BACKWARD, GRAD, METRICS, NOGRAD, OPTIMIZER, REWARD, VAE_DECODE,
                              phase, phase_table)
from rewards.base import metrics_to_floats

# The README's reward flags on the tiny InternVL: content, style (the reference) and sharpness
# questions, the grid, brightness and (by default) crispness terms.
README_REWARDS = ["--aesthetic_model_type", "internvl", "--aesthetic_reward_scale", "6",
                  "--similarity_backend", "internvl-content", "--image_reward_scale", "1.5",
                  "--sharpness_backend", "internvl", "--sharpness_reward_scale", "2",
                  "--grid_ratio_weight", "1", "--grid_ratio_period", "16",
                  "--brightness_target", "0.45", "--brightness_band", "0.08",
                  "--brightness_anchor_weight", "10",
                  "--internvl_model_id", "tiny", "--internvl_dtype", "float32"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from alignprop.demo import PHOTOS
    from common.photos import write_photos

    d = tmp_path_factory.mktemp("photos")
    write_photos(d, PHOTOS)
    for p in sorted(d.iterdir())[2:]:
        p.unlink()
    return d


@pytest.fixture(scope="module")
def run(photos, tmp_path_factory):
    """The README's reward on the tiny models: 2 images, 1 per micro-batch, accumulation 2."""
    out = tmp_path_factory.mktemp("run")
    cfg, flags = parse_config(
        ["--pretrained_model", "tiny", "--data_dir", str(photos), "--output_dir", str(out),
         "--image_height", "32", "--image_width", "32", "--sample_num_steps", "3",
         "--train_gradient_accumulation_steps", "2", "--lora_rank", "2", "--log_with", "none",
         "--save_freq", "0", "--log_image_freq", "0", "--batch_nograd_steps", "on",
         "--style_reference", str(sorted(photos.iterdir())[0])] + README_REWARDS)
    r = setup_run(cfg, flags)
    resume_run(r)
    return r


# --------------------------------------------------------------------------- host syncs
HOST_READS = ("item", "tolist", "numpy", "__float__", "__bool__", "__int__", "__index__")


def _count_host_reads(fn):
    """Calls that read a tensor's value on the host, by caller, while ``fn`` runs.

    On a GPU each one makes the host wait for the device. Left out: callers inside torch
    (AdamW reads its step counters, which live on the host) and the data order (a CPU
    generator's permutation in alignprop/data.py): neither touches the device.
    """
    calls = collections.Counter()
    saved = {n: getattr(torch.Tensor, n) for n in HOST_READS}

    def counted(name):
        def read(self, *args, **kwargs):
            caller = traceback.extract_stack(limit=2)[0]
            if "/torch/" not in caller.filename and not caller.filename.endswith(
                    "alignprop/data.py"):
                calls[f"{Path(caller.filename).name}:{caller.lineno} {name}"] += 1
            return saved[name](self, *args, **kwargs)
        return read

    for name in HOST_READS:
        setattr(torch.Tensor, name, counted(name))
    try:
        fn()
    finally:
        for name, f in saved.items():
            setattr(torch.Tensor, name, f)
    return calls


def test_one_optimizer_step_reads_the_device_twice(run):
    """The README's reward (3 VLM questions + grid + brightness + crispness), 2 micro-batches:
    the step's metrics and finite flags in one read, the gradient norm in another. Before
    issue 26 every term's metrics, every finite check and the loss were read one by one."""
    optimizer_step(run)  # first step: caches filled (pmi-free here, but latents and ids)
    calls = _count_host_reads(lambda: optimizer_step(run))
    assert sum(calls.values()) <= 2, dict(calls)


def test_metrics_are_read_in_one_transfer_and_keep_floats():
    out = metrics_to_floats({"a": torch.tensor(0.25), "b": 3.0, "c": torch.tensor([1.5])})
    assert out == {"a": 0.25, "b": 3.0, "c": 1.5} and list(out) == ["a", "b", "c"]
    assert all(type(v) is float for v in out.values())


# --------------------------------------------------------------------------- cached latents
def test_inputs_are_vae_encoded_once_per_image(run, monkeypatch):
    seen = []
    encode = run.models.sampler.encode_image
    monkeypatch.setattr(run.models.sampler, "encode_image",
                        lambda images: seen.append(len(images)) or encode(images))
    optimizer_step(run)  # both images were drawn by the earlier steps: no encode at all
    assert seen == [] and len(run.input_tokens._tokens) == 2


def test_batched_nograd_steps_follow_the_flag(photos, tmp_path):
    base = ["--pretrained_model", "tiny", "--data_dir", str(photos), "--brightness_anchor_weight",
            "1", "--output_dir", str(tmp_path)]
    for value, cpu, gpu in (("auto", False, True), ("on", True, True), ("off", False, False)):
        cfg, _ = parse_config(base + ["--batch_nograd_steps", value])
        assert (batch_nograd(cfg, "cpu"), batch_nograd(cfg, "cuda")) == (cpu, gpu)
    cfg, _ = parse_config(base + ["--batch_nograd_steps", "on", "--method", "refl"])
    assert not batch_nograd(cfg, "cuda")  # alignprop's pass only
    with pytest.raises(SystemExit):
        parse_config(base + ["--batch_nograd_steps", "sometimes"])


# --------------------------------------------------------------------------- batched no-grad pass
@pytest.fixture(scope="module")
def tiny():
    from alignprop.lora import add_lora
    from alignprop.models import load_kontext_pipeline
    from alignprop.sampler import KontextSampler, encode_prompts

    pipe = load_kontext_pipeline("tiny")
    text = encode_prompts(pipe, ["make it brighter", "add snow"], "cpu", 32)
    add_lora(pipe.transformer, 4, 4, ["attn.to_q", "attn.to_v", "proj_out"], 0.0)
    sampler = KontextSampler(pipe.transformer, pipe.vae, pipe.scheduler, pipe.transformer.config,
                             32, 32, 4)

    def reward(images, inputs, prompts):
        r = images.mean((1, 2, 3))
        return r, {"reward": r.mean()}

    return Models(sampler, reward, pipe.transformer), text


def _batches(text, k, sizes=(1, 2)):
    from alignprop.sampler import stack_prompt_embeds

    out = []
    for i, b in enumerate(sizes):
        prompts = [["make it brighter", "add snow"][(i + j) % 2] for j in range(b)]
        inputs = torch.rand(b, 3, 32, 32, generator=torch.Generator().manual_seed(10 + i))
        out.append(Batch(inputs, prompts, stack_prompt_embeds(text, prompts),
                         torch.Generator().manual_seed(20 + i), i, 0, k))
    return out


def test_batched_nograd_pass_equals_per_micro_batch_sampling(tiny, k=2):
    """All micro-batches' N-K no-grad steps in one pass = each micro-batch on its own.

    Tolerance 1e-5 (fp32, latents of magnitude ~4): a batched matmul sums in another order
    than the same rows alone, so the last bits differ (measured here up to 3e-6 after 3
    steps); the noise is the same draw exactly. (K=2 of N=4.)"""
    models, text = tiny
    shared = _batches(text, k)
    shared_nograd_pass(shared, models)
    alone = _batches(text, k)
    sampler = models.sampler
    for s, a in zip(shared, alone):
        noise = sampler.initial_noise(len(a.inputs), a.generator, "cpu")
        assert torch.equal(s.noise, noise)
        start = sampler.denoise_to(noise, sampler.encode_image(a.inputs), a.text, 4 - k)
        torch.testing.assert_close(s.start, start, rtol=1e-5, atol=1e-5)
    # the method's loss and LoRA gradients: the same within the same tolerance
    grads = []
    for batches in (shared, _batches(text, k)):
        for b in batches:
            out = run_method(b, models, _flags())
            out.loss.backward()
        grads.append([p.grad.clone() for p in models.bare.parameters() if p.requires_grad])
        for p in models.bare.parameters():
            p.grad = None
    for g_shared, g_alone in zip(*grads):
        torch.testing.assert_close(g_shared, g_alone, rtol=1e-4, atol=1e-7)


def _flags():
    from alignprop.methods import MethodFlags

    return MethodFlags()


# --------------------------------------------------------------------------- one vision pass
def _readme_vlm_terms(style: Path):
    flags = RewardFlags(aesthetic_model_type="internvl", aesthetic_reward_scale=6,
                        similarity_backend="internvl-content", image_reward_scale=1.5,
                        sharpness_backend="internvl", sharpness_reward_scale=2,
                        internvl_model_id="tiny", internvl_dtype="float32",
                        style_reference=str(style), crispness_weight=0.0)
    return build_reward_from_flags(flags, device="cpu")


def test_vlm_terms_share_one_vision_pass_and_score_as_before(photos, monkeypatch):
    from rewards.base import CompositeReward, RewardTerm
    from rewards.vlm import make_vlm_reward

    style = sorted(photos.iterdir())[0]
    readme = _readme_vlm_terms(style)
    triplet = make_vlm_reward("triplet", model_id="tiny", dtype="float32", device="cpu",
                              reference=style)  # both orders of a comparison too
    composite = CompositeReward(list(readme.terms) + [RewardTerm("triplet", 0.5, triplet)])
    vlm = [t.fn for t in composite.terms if hasattr(t.fn, "vision_passes")]
    assert [t.task for t in vlm] == ["similarity", "sharpness", "similarity", "triplet"] or \
        {t.task for t in vlm} == {"content-similarity", "similarity", "sharpness", "triplet"}
    g = torch.Generator().manual_seed(3)
    x, inputs = torch.rand(2, 3, 48, 48, generator=g), torch.rand(2, 3, 48, 48, generator=g)

    def score():
        images = x.clone().requires_grad_(True)
        total, metrics = composite(images, inputs, ["edit"] * 2)
        total.sum().backward()
        return total.detach(), images.grad, metrics_to_floats(metrics)

    shared = [score(), score()]
    passes = sum(t.vision_passes for t in vlm)
    # per call: the output and the input (shared by 4 questions and both orders); once per
    # run: each reward's reference
    assert passes == 2 + 2 + 2
    for t in vlm:  # the model's own forward on pixels, as before
        monkeypatch.setattr(t, "_share", False)
    before = score()
    assert sum(t.vision_passes for t in vlm) == passes
    for now in shared:
        torch.testing.assert_close(now[0], before[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(now[1], before[1], rtol=1e-4, atol=1e-7)
        for key, value in before[2].items():
            assert now[2][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_a_no_grad_question_does_not_take_the_gradient_from_a_differentiable_one(photos):
    composite = _readme_vlm_terms(sorted(photos.iterdir())[0])
    fn = next(t.fn for t in composite.terms if getattr(t.fn, "task", "") == "sharpness")
    from rewards.base import shared_call

    images = torch.rand(1, 3, 48, 48, requires_grad=True)
    with shared_call():
        with torch.no_grad():
            fn(images, None, None)
        scores, _ = fn(images, None, None)
    scores.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


# --------------------------------------------------------------------------- profiler ranges
def test_profile_ranges_split_one_step(run):
    assert phase("a") is phase("b")  # no profiler: one shared no-op context, nothing recorded
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        optimizer_step(run)
    rows = {r["range"]: r for r in phase_table(prof.key_averages())}
    for name in (NOGRAD, GRAD, VAE_DECODE, REWARD, BACKWARD, OPTIMIZER, METRICS,
                 "backward/autograd", f"{REWARD}/style", f"{REWARD}/similarity",
                 f"{REWARD}/sharpness", f"{REWARD}/grid", f"{REWARD}/brightness"):
        assert name in rows, sorted(rows)
    assert rows[NOGRAD]["calls"] == 1            # one batched pass for both micro-batches
    assert rows[GRAD]["calls"] == 2 and rows[REWARD]["calls"] == 2
    assert rows[REWARD]["cpu_s"] >= rows[f"{REWARD}/style"]["cpu_s"] > 0


# --------------------------------------------------------------------------- attention
def test_attention_kernels_change_nothing_on_a_cpu():
    phases = attention_phases("cpu", torch.bfloat16)
    assert isinstance(phases, AttentionPhases) and phases.names == ("default", "default")
    assert not flash3_available("cpu", torch.bfloat16)
    before = (torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.cudnn_sdp_enabled())
    with phases.nograd(), phases.grad():
        assert (torch.backends.cuda.flash_sdp_enabled(),
                torch.backends.cuda.cudnn_sdp_enabled()) == before
