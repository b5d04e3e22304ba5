"""Run by tests/test_compile.py in its own process: the tiny trainer eager and with --compile.

Same flags, same seeds: per optimizer step it prints K, the losses, the largest LoRA-gradient
difference and the number of graphs torch.compile has made so far (one JSON line each).
"""
import json
import sys
import tempfile
from pathlib import Path

import torch

from alignprop.compile import graphs_compiled
from alignprop.config import parse_config
from alignprop.demo import PHOTOS
from alignprop.run import resume_run, setup_run
from alignprop.trainer import optimizer_step
from common.photos import write_photos

STEPS = 3


def build(tmp: Path, compiled: bool):
    data = tmp / "photos"
    if not data.exists():
        data.mkdir()
        write_photos(data, PHOTOS)
        for p in sorted(data.iterdir())[2:]:
            p.unlink()
    cfg, flags = parse_config(
        ["--pretrained_model", "tiny", "--data_dir", str(data),
         "--output_dir", str(tmp / ("compiled" if compiled else "eager")),
         "--image_height", "32", "--image_width", "32", "--sample_num_steps", "3",
         # random K: 1 at step 0, 2 later (seed 42), so a new K after the first step
         "--truncated_backprop", "random", "--backprop_steps_min", "1",
         "--backprop_steps_max", "2", "--gradient_checkpointing",
         "--train_gradient_accumulation_steps", "2", "--batch_nograd_steps", "on",
         "--lora_rank", "2", "--train_learning_rate", "1e-2", "--log_with", "none",
         "--save_freq", "0", "--log_image_freq", "0",
         "--brightness_anchor_weight", "10", "--brightness_target", "0.65",
         # a VLM term: its vision and language layers are compiled too
         "--aesthetic_model_type", "internvl", "--internvl_model_id", "tiny",
         "--internvl_dtype", "float32"] + (["--compile"] if compiled else []))
    run = setup_run(cfg, flags)
    resume_run(run)
    grads = []
    step = run.optimizer.step

    def keep_grads(*args, **kwargs):
        grads.append([p.grad.detach().clone() for p in run.lora_params])
        return step(*args, **kwargs)

    run.optimizer.step = keep_grads
    return run, grads


def main():
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        eager, eager_grads = build(Path(tmp), False)
        compiled, compiled_grads = build(Path(tmp), True)
        for _ in range(STEPS):
            a, b = optimizer_step(eager), optimizer_step(compiled)
            diff = max(float((x - y).abs().max()) for x, y in zip(eager_grads[-1],
                                                                   compiled_grads[-1]))
            scale = max(float(x.abs().max()) for x in eager_grads[-1])
            print(json.dumps({"k": [a.k, b.k], "loss": [a.sums["loss"], b.sums["loss"]],
                              "grad_diff": diff, "grad_scale": scale,
                              "graphs": graphs_compiled()}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
