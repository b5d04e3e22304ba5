"""Same seeds, same numbers: a few optimizer steps of the tiny trainer, written as JSON.

Run it with two code trees on the same machine and compare the files: metrics.jsonl rows (all
but the timings) and a checksum of the final LoRA. Used to check that issue 26's changes leave
CPU numbers as they were (docs/scale.md, "Speed")::

    bash benchmarks/gpu_speed_check.sh --prepare        # the code before, in .speed_before/
    PYTHONPATH=.speed_before python benchmarks/same_numbers.py before.json
    PYTHONPATH=. python benchmarks/same_numbers.py after.json
    cmp before.json after.json && echo identical

The run: the built-in tiny Kontext and InternVL at 32 px, N=4, random K in [1, 3], 2 images
per micro-batch x 2 micro-batches, the README's reward terms (content and aesthetic questions,
grid, brightness, crispness), 3 steps, fp32, one thread. Extra arguments are passed to the
trainer (e.g. ``--batch_nograd_steps on``, which changes the last bits: see docs/scale.md).
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from alignprop.config import parse_config
from alignprop.demo import PHOTOS
from alignprop.trainer import train
from common.photos import write_photos


def main(argv: list[str]) -> None:
    out_path, extra = Path(argv[0]), argv[1:]
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "photos"
        data.mkdir()
        write_photos(data, PHOTOS)
        for p in sorted(data.iterdir())[3:]:
            p.unlink()
        cfg, flags = parse_config(
            ["--pretrained_model", "tiny", "--data_dir", str(data), "--output_dir",
             str(tmp / "run"), "--image_height", "32", "--image_width", "32",
             "--sample_num_steps", "4", "--truncated_backprop", "random",
             "--backprop_steps_min", "1", "--backprop_steps_max", "3", "--train_batch_size", "2",
             "--train_gradient_accumulation_steps", "2", "--lora_rank", "4",
             "--max_train_steps", "3", "--log_with", "none", "--save_freq", "0",
             "--log_image_freq", "0", "--mixed_precision", "no", "--train_learning_rate", "1e-2",
             "--brightness_anchor_weight", "10", "--brightness_target", "0.65",
             "--grid_ratio_weight", "1", "--aesthetic_model_type", "internvl",
             "--internvl_model_id", "tiny", "--internvl_dtype", "float32",
             "--similarity_backend", "internvl-content", "--image_reward_scale", "1.5"] + extra)
        train(cfg, flags)
        rows = [json.loads(line)
                for line in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
        lora = load_file(str(tmp / "run" / "pytorch_lora_weights.safetensors"))
    result = {"rows": [{k: v for k, v in r.items() if "sec" not in k} for r in rows],
              "lora_sum": sum(float(v.double().sum()) for v in lora.values()),
              "lora_abs_sum": sum(float(v.double().abs().sum()) for v in lora.values())}
    out_path.write_text(json.dumps(result, indent=1, sort_keys=True))
    print(f"{out_path}: {len(rows)} steps, LoRA sum {result['lora_sum']!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
