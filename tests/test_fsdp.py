"""Sharded training (FSDP2 through accelerate) on 2 CPU processes, and reward placement.

accelerate runs its own FSDP2 code here on gloo (alignprop.distributed.make_accelerator);
the same tiny run under DDP is the reference the sharded LoRA must equal.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
FSDP_CONFIG = ROOT / "configs" / "accelerate" / "fsdp2_2gpu.yaml"
TARGETS = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "proj_out"]
# 2 steps at 32 px; a model-backed reward (tiny InternVL) so that --reward_device shard
# has a model to shard, and a brightness anchor that moves the LoRA visibly.
COMMON = ["--pretrained_model", "tiny", "--image_height", "32", "--image_width", "32",
          "--sample_num_steps", "2", "--backprop_steps", "-1", "--train_batch_size", "1",
          "--train_learning_rate", "3e-2", "--lora_rank", "4",
          "--lora_target_modules", ",".join(TARGETS), "--brightness_anchor_weight", "10",
          "--brightness_target", "0.65", "--brightness_band", "0",
          "--aesthetic_model_type", "internvl", "--internvl_model_id", "tiny",
          "--log_image_freq", "0", "--log_with", "none", "--seed", "3", "--max_train_steps", "2"]


def _launch(args, mode, timeout=300):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no"]
    if mode == "fsdp":
        cmd += ["--config_file", str(FSDP_CONFIG), "--num_processes", "2"]
    elif mode == "ddp":
        cmd += ["--multi_gpu", "--num_processes", "2"]
    else:
        cmd += ["--num_processes", "1"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(ROOT),
               OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", MPLBACKEND="Agg")
    proc = subprocess.run(cmd + [str(ROOT / "alignprop_fluxkontext.py")] + args, cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from alignprop.demo import PHOTOS
    from common.photos import write_photos

    d = tmp_path_factory.mktemp("photos")
    write_photos(d, PHOTOS)
    for p in sorted(d.iterdir())[4:]:
        p.unlink()
    return d


@pytest.fixture(scope="module")
def fsdp_run(photos, tmp_path_factory):
    """2 processes, FSDP2, gradient checkpointing, reward model sharded too."""
    out = tmp_path_factory.mktemp("fsdp")
    proc = _launch(["--data_dir", str(photos), "--output_dir", str(out), "--save_freq", "1",
                    "--gradient_checkpointing", "--reward_device", "shard"] + COMMON, "fsdp")
    return out, proc


@pytest.fixture(scope="module")
def ddp_run(photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    _launch(["--data_dir", str(photos), "--output_dir", str(out), "--save_freq", "0"] + COMMON,
            "ddp")
    return out


def _lora_tensor_count() -> int:
    from alignprop.lora import add_lora
    from alignprop.tiny_kontext import build_tiny_pipeline

    return len(add_lora(build_tiny_pipeline().transformer, 4, None, TARGETS))


@pytest.mark.slow
def test_fsdp_lora_equals_ddp_lora(fsdp_run, ddp_run):
    out, proc = fsdp_run
    run = json.loads((out / "run_config.json").read_text())
    assert run["sharded"] is True and run["world_size"] == 2
    assert "1 reward model(s) sharded across the processes" in proc.stderr
    sharded = load_file(out / "pytorch_lora_weights.safetensors")
    reference = load_file(ddp_run / "pytorch_lora_weights.safetensors")
    # one complete file: every LoRA tensor whole (not a shard), same keys as DDP
    assert sharded.keys() == reference.keys() and len(sharded) == _lora_tensor_count()
    for key in reference:
        assert sharded[key].shape == reference[key].shape
        torch.testing.assert_close(sharded[key], reference[key], rtol=1e-5, atol=1e-6)
    # the run trained: the LoRA up-projections (zero at init) moved
    assert max(v.abs().max().item() for k, v in sharded.items() if "lora_B" in k) > 1e-3
    a = [json.loads(r)["train/reward"] for r in (out / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(r)["train/reward"] for r in (ddp_run / "metrics.jsonl").read_text().splitlines()]
    assert a == pytest.approx(b, rel=1e-5)


@pytest.mark.slow
def test_sharded_lora_loads_in_diffusers(fsdp_run, photos):
    from alignprop.data import ImageFolder
    from alignprop.tiny_kontext import build_tiny_pipeline

    out, _ = fsdp_run
    images = torch.stack([ImageFolder(photos, 32, 32, "x").load(i) for i in (0, 1)])
    pipe = build_tiny_pipeline()
    kw = dict(image=images, prompt=["brighter"] * 2, height=32, width=32, num_inference_steps=2,
              guidance_scale=2.5, output_type="pt", max_area=32 * 32, _auto_resize=False)
    base = pipe(generator=torch.Generator().manual_seed(0), **kw).images
    pipe.load_lora_weights(str(out))
    tuned = pipe(generator=torch.Generator().manual_seed(0), **kw).images
    assert (tuned - base).abs().max() > 1e-3



@pytest.mark.slow
def test_sharded_checkpoint_resumes_exactly(fsdp_run, photos, tmp_path):
    """FSDP2 run resumed from its step-1 checkpoint reproduces step 2 (LoRA, AdamW, data)."""
    out, _ = fsdp_run
    resumed = tmp_path / "resumed"
    shutil.copytree(out / "checkpoints" / "checkpoint-000001",
                    resumed / "checkpoints" / "checkpoint-000001")
    proc = _launch(["--data_dir", str(photos), "--output_dir", str(resumed), "--save_freq", "0",
                    "--gradient_checkpointing", "--reward_device", "shard",
                    "--resume_from", "latest"] + COMMON, "fsdp")
    assert "resumed from" in proc.stdout + proc.stderr
    rows = [json.loads(r) for r in (resumed / "metrics.jsonl").read_text().splitlines()]
    first = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2]
    assert rows[0]["train/reward"] == pytest.approx(first[1]["train/reward"], rel=1e-5)
    a = load_file(out / "pytorch_lora_weights.safetensors")
    b = load_file(resumed / "pytorch_lora_weights.safetensors")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_sharded_checkpoint_loads_into_one_process(fsdp_run):
    """The sharded run's checkpoint holds whole tensors: a one-process (non-sharded) model
    and AdamW take its LoRA and optimizer state as they are."""
    from alignprop.checkpoint import read_state_files
    from alignprop.distributed import load_optimizer_state_full
    from alignprop.lora import add_lora, load_lora_into, lora_state_dict
    from alignprop.tiny_kontext import build_tiny_pipeline

    out, _ = fsdp_run
    ckpt = out / "checkpoints" / "checkpoint-000001"
    assert {"rng_state_0.json", "rng_state_1.json", "optimizer.json", "optimizer.safetensors",
            "pytorch_lora_weights.safetensors"} <= {p.name for p in ckpt.iterdir()}
    assert not [p for p in ckpt.iterdir() if p.suffix in (".bin", ".pkl", ".pt")]
    transformer = build_tiny_pipeline().transformer
    params = add_lora(transformer, 4, None, TARGETS)
    load_lora_into(transformer, ckpt)
    saved = load_file(ckpt / "pytorch_lora_weights.safetensors")
    mine = lora_state_dict(transformer)
    assert len(mine) == len(saved)
    for key, value in mine.items():
        torch.testing.assert_close(value, saved["transformer." + key])
    opt = torch.optim.AdamW(params, lr=3e-2)
    load_optimizer_state_full(opt, read_state_files(ckpt, "optimizer"))
    for p in params:  # whole moments (not one rank's half), stepped once
        assert opt.state[p]["exp_avg"].shape == p.shape and float(opt.state[p]["step"]) == 1
    assert any(opt.state[p]["exp_avg"].abs().max() > 0 for p in params)

# --------------------------------------------------------------------------- reward placement
def test_placed_reward_gives_the_same_scores_and_gradients():
    """The wrapper moves pixels with Tensor.to and scores back; gradients reach the pixels.

    This machine has one device, so the copy is cpu -> cpu here; on GPUs the same
    ``Tensor.to`` crosses devices (autograd copies the gradient back).
    """
    from alignprop.placement import PlacedReward

    weights = torch.nn.Linear(3, 1)

    def reward(images, inputs=None, prompts=None):
        return weights(images.mean((2, 3))).squeeze(1), {"m": 1.0}

    reward.terms = ["kept"]
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    direct, _ = reward(x)
    (g_direct,) = torch.autograd.grad(direct.sum(), x)
    placed = PlacedReward(reward, "cpu", "cpu")
    scores, metrics = placed(x, x.detach(), ["p", "q"])
    (g_placed,) = torch.autograd.grad(scores.sum(), x)
    assert metrics == {"m": 1.0} and placed.terms == ["kept"]
    torch.testing.assert_close(scores, direct)
    torch.testing.assert_close(g_placed, g_direct)
    assert g_placed.abs().sum() > 0


def test_reward_device_values_are_checked():
    from alignprop.placement import check_reward_device, reward_device

    for ok in ("replicate", "shard", "dedicated", "cpu", "cuda:1"):
        check_reward_device(ok)
    for bad in ("gpu2", "tpu", "sharded", ""):
        with pytest.raises(ValueError, match="--reward_device"):
            check_reward_device(bad)
    assert reward_device("replicate", torch.device("cpu")) == torch.device("cpu")
    if torch.cuda.device_count() < 2:
        with pytest.raises(ValueError, match="need 2 GPUs .* launch at most"):
            reward_device("dedicated", torch.device("cpu"), 0, 1)


def test_shard_placement_needs_an_fsdp_launch():
    from alignprop.placement import place_reward

    with pytest.raises(ValueError, match="needs an FSDP launch"):
        place_reward(lambda *a: None, "shard", torch.device("cpu"), torch.device("cpu"))


def test_find_modules_sees_models_in_closures_and_attributes():
    from alignprop.distributed import find_modules
    from rewards.base import CompositeReward, RewardTerm

    inner, held = torch.nn.Linear(2, 2), torch.nn.Conv2d(3, 3, 1)

    def make():
        def fn(images, inputs=None, prompts=None):
            return inner(images), {}
        return fn

    class Holder:
        def __init__(self):
            self.bundle = type("B", (), {})()
            self.bundle.model = held

        def __call__(self, images, inputs=None, prompts=None):
            return images, {}

    composite = CompositeReward([RewardTerm("a", 1.0, make()), RewardTerm("b", 1.0, Holder())])
    found = find_modules(composite)
    assert any(m is inner for m in found) and any(m is held for m in found)
