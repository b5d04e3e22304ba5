"""End to end through `accelerate launch` on the tiny model (CPU, gloo for 2 ranks)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

# Settings under which the reward reliably rises within a few steps on the tiny model:
# a brightness target well above the tiny model's output (~0.42) and LoRA on the output
# projections too, so a handful of AdamW steps visibly moves the image.
COMMON = ["--pretrained_model", "tiny", "--image_height", "32", "--image_width", "32",
          "--sample_num_steps", "4", "--backprop_steps", "-1", "--train_batch_size", "2",
          "--train_learning_rate", "3e-2", "--lora_rank", "4",
          "--lora_target_modules", "attn.to_q,attn.to_k,attn.to_v,attn.to_out.0,proj_out",
          "--brightness_anchor_weight", "10", "--brightness_target", "0.65",
          "--brightness_band", "0", "--log_image_freq", "4", "--seed", "3"]


def _env(**extra):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", MPLBACKEND="Agg", **extra)
    return env


def _launch(args, processes=1, timeout=240, env=None):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd += (["--multi_gpu", "--num_processes", str(processes)] if processes > 1
            else ["--num_processes", "1"])
    cmd += [str(ROOT / "alignprop_fluxkontext.py")] + args
    proc = subprocess.run(cmd, cwd=ROOT, env=env or _env(), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from alignprop.demo import PHOTOS
    from common.photos import write_photos

    d = tmp_path_factory.mktemp("photos")
    write_photos(d, PHOTOS)
    for p in sorted(d.iterdir())[4:]:
        p.unlink()  # 4 photos are enough
    return d


@pytest.fixture(scope="module")
def run_a(photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("run_a")
    proc = _launch(["--data_dir", str(photos), "--output_dir", str(out), "--max_train_steps", "8",
                    "--save_freq", "2", "--checkpoints_total_limit", "2"] + COMMON)
    return out, proc


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_reward_rises_and_outputs_are_written(run_a):
    out, proc = run_a
    assert "batch arithmetic: 2 image(s) per device x 1 process(es) x 1 accumulation" in proc.stdout
    rows = _rows(out)
    assert [r["step"] for r in rows] == list(range(1, 9))
    first = sum(r["train/reward"] for r in rows[:2]) / 2
    last = sum(r["train/reward"] for r in rows[-2:]) / 2
    assert last > first + 0.01, [r["train/reward"] for r in rows]
    for key in ("train/loss", "train/brightness", "train/brightness/mean_luma", "train/grad_norm",
                "train/lr", "train/sec_per_step"):
        assert key in rows[-1]
    assert (out / "images" / "step_000004.png").is_file()
    assert list((out / "logs").rglob("events.out.tfevents*"))
    run = json.loads((out / "run_config.json").read_text())
    assert run["rewards"][0]["term"] == "brightness" and run["config"]["lora_rank"] == 4


def test_checkpoints_rotate_and_are_complete(run_a):
    out, _ = run_a
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["checkpoint-000006", "checkpoint-000008"]  # limit 2, no temp folders
    for name in ckpts:
        files = {p.name for p in (out / "checkpoints" / name).iterdir()}
        assert files == {"pytorch_lora_weights.safetensors", "optimizer.safetensors",
                         "optimizer.json", "scheduler.json", "trainer_state.json",
                         "rng_state_0.json"}  # safetensors/JSON only: nothing to unpickle
        assert "model.safetensors" not in files  # LoRA only, never the frozen transformer
    state = json.loads((out / "checkpoints" / "checkpoint-000006" / "trainer_state.json").read_text())
    assert state["global_step"] == 6 and state["samples_seen"] == 12


def test_lora_reloads_into_fresh_pipeline_and_changes_output(run_a, photos):
    """diffusers' load_lora_weights gives the trained model: same image as our sampler."""
    from alignprop.data import ImageFolder
    from alignprop.lora import add_lora, load_lora_into
    from alignprop.tiny_kontext import build_tiny_pipeline
    from alignprop.sampler import KontextSampler, encode_prompts, stack_prompt_embeds

    out, _ = run_a
    sd = load_file(out / "pytorch_lora_weights.safetensors")
    assert sd and all(k.startswith("transformer.") for k in sd)
    images = torch.stack([ImageFolder(photos, 32, 32, "x").load(i) for i in (0, 1)])
    prompts = ["make it brighter"] * 2
    pipe = build_tiny_pipeline()
    kw = dict(image=images, prompt=prompts, height=32, width=32, num_inference_steps=4,
              guidance_scale=2.5,
              output_type="pt", max_area=32 * 32, _auto_resize=False)
    base = pipe(generator=torch.Generator().manual_seed(0), **kw).images
    pipe.load_lora_weights(str(out))
    tuned = pipe(generator=torch.Generator().manual_seed(0), **kw).images
    assert (tuned - base).abs().max() > 1e-2

    ours = build_tiny_pipeline()
    add_lora(ours.transformer, 4, None, ["attn.to_q", "attn.to_k", "attn.to_v",
                                          "attn.to_out.0", "proj_out"])
    load_lora_into(ours.transformer, out)
    text = stack_prompt_embeds(encode_prompts(ours, prompts, "cpu"), prompts)
    sampler = KontextSampler(ours.transformer, ours.vae, ours.scheduler,
                             ours.transformer.config, 32, 32, 4)
    with torch.no_grad():
        mine = sampler.sample(images, text, generator=torch.Generator().manual_seed(0))
    assert (mine - tuned).abs().max() <= 1e-4


def test_resume_continues_exactly(run_a, tmp_path):
    """Resuming from step 6 reproduces steps 7-8: same step count, optimizer, data, noise.

    The run is resumed in a copy of its own folder, which holds metrics rows 1-8 and a
    later checkpoint (8): the redone steps replace their rows instead of repeating them,
    and checkpoint 8 of the abandoned line is set aside. The checkpoint also carries the
    pickle files accelerate's load_state would have unpickled, crafted to create a file
    when unpickled: resuming must not run them.
    """
    import io

    out, _ = run_a
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    ckpt = resumed / "checkpoints" / "checkpoint-000006"
    marker = tmp_path / "code_ran"
    buf = io.BytesIO()
    torch.save(_Plant(marker), buf)  # a torch pickle, as accelerate writes them
    for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin",
                 "scheduler.bin"):
        (ckpt / name).write_bytes(buf.getvalue())
    proc = _launch(["--data_dir", _photos_of(out), "--output_dir", str(resumed),
                    "--max_train_steps", "8", "--save_freq", "0", "--resume_from", str(ckpt)]
                   + COMMON)
    assert "resumed from" in proc.stderr + proc.stdout
    assert not marker.exists(), "a pickle in the checkpoint was unpickled"
    b = _rows(resumed)
    assert [r["step"] for r in b] == list(range(1, 9))  # 7 and 8 redone once, not appended
    assert (resumed / "checkpoints" / "superseded-000006" / "checkpoint-000008").is_dir()
    a = _rows(out)
    for ra, rb in zip(a[6:], b[6:]):
        assert rb["train/reward"] == pytest.approx(ra["train/reward"], rel=1e-4, abs=1e-6)
    wa = load_file(out / "pytorch_lora_weights.safetensors")
    wb = load_file(resumed / "pytorch_lora_weights.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-6)


class _Plant:
    """Unpickling this creates ``path`` (a stand-in for any code a crafted pickle runs)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def _photos_of(out):
    return json.loads((out / "run_config.json").read_text())["config"]["data_dir"]


def test_two_processes_keep_identical_lora(photos, tmp_path):
    out = tmp_path / "ddp"
    proc = _launch(["--data_dir", str(photos), "--output_dir", str(out), "--max_train_steps", "2",
                    "--save_freq", "2"] + COMMON + ["--train_batch_size", "1",
                                                    "--backprop_steps", "2"],
                   processes=2, timeout=300)
    assert "x 2 process(es)" in proc.stdout
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_step"] == 2
    assert summary["lora_max_rank_difference"] == 0.0
    ckpt = out / "checkpoints" / "checkpoint-000002"
    assert (ckpt / "rng_state_0.json").is_file() and (ckpt / "rng_state_1.json").is_file()
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["samples_seen"] == 4  # 1 per rank x 2 ranks x 2 steps


def test_sigterm_saves_a_checkpoint_before_exit(photos, tmp_path):
    out = tmp_path / "sig"
    cmd = [sys.executable, str(ROOT / "alignprop_fluxkontext.py"), "--data_dir", str(photos),
           "--output_dir", str(out), "--max_train_steps", "1000", "--save_freq", "0",
           "--log_with", "none"] + COMMON
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().strip()):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["interrupted"] == "SIGTERM"
    step = summary["global_step"]
    assert 1 <= step < 1000
    state = json.loads((out / "checkpoints" / f"checkpoint-{step:06d}" / "trainer_state.json")
                       .read_text())
    assert state["global_step"] == step


# The command of the original project, verbatim from issue 3 (DATA and REF filled in).
ORIGINAL_COMMAND = (
    "--data_dir DATA --mixed_precision bf16 --lora_rank 32 --log_with wandb --log_image_freq 16 "
    "--save_freq 100 --num_epochs 1000000 --image_height 512 --image_width 512 "
    "--sample_num_steps 5 --image_reward_scale 1.5 --sharpness_reward_scale 2 "
    "--sharpness_backend internvl --aesthetic_reward_scale 6 --similarity_backend internvl-content "
    "--aesthetic_model_type internvl --train_learning_rate 1e-4 --style_reference REF "
    "--grid_ratio_weight 1 --grid_ratio_period 16 --grid_ratio_max_harm 3 "
    "--grid_ratio_sigma_bins 0.8 --grid_eval_resize 512 --brightness_target 0.45 "
    "--brightness_band 0.08 --brightness_anchor_weight 10 --train_gradient_accumulation_steps 4")


def test_original_command_runs_with_wandb_offline(photos, tmp_path):
    """The issue's exact command (tiny models, 1 step, 64 px) trains and logs to wandb offline."""
    pytest.importorskip("wandb")
    out = tmp_path / "orig"
    ref = sorted(photos.iterdir())[0]
    args = ORIGINAL_COMMAND.replace("DATA", str(photos)).replace("REF", str(ref)).split()
    args += ["--pretrained_model", "tiny", "--internvl_model_id", "tiny", "--max_train_steps", "1",
             "--image_height", "64", "--image_width", "64", "--output_dir", str(out)]
    env = _env(WANDB_MODE="offline", WANDB_CONFIG_DIR=str(tmp_path / "wandb_config"),
               WANDB_CACHE_DIR=str(tmp_path / "wandb_cache"), WANDB_SILENT="true")
    env.pop("WANDB_DIR", None)  # the trainer must put wandb's files under --output_dir
    proc = _launch(args, env=env)
    assert "x 4 accumulation step(s) = 4 images per optimizer step" in proc.stdout
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["global_step"] == 1 and summary["skipped_steps"] == 0
    lora = load_file(out / "pytorch_lora_weights.safetensors")
    assert lora and all(k.startswith("transformer.") for k in lora)
    run = json.loads((out / "run_config.json").read_text())
    # the original's objective: the style question in place of the aesthetic one (issue 10)
    assert {t["term"] for t in run["rewards"]} == {"grid", "brightness", "crispness",
                                                   "similarity", "sharpness", "style"}
    assert run["config"]["mixed_precision"] == "bf16" and run["config"]["lora_rank"] == 32
    # wandb's offline run: the binary history file and the logged image grid.
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((out / "wandb").iterdir())
    assert list(runs[0].glob("run-*.wandb"))
    assert list((runs[0] / "files" / "media" / "images").glob("*.png"))
    row = _rows(out)[0]
    assert all(f"train/{t}" in row for t in ("grid", "brightness", "crispness", "style"))
