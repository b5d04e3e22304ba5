"""Every user-facing command answers --help (argparse formats help strings with %, so a
stray percent sign in any flag's help text breaks --help for the whole command)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

COMMANDS = {
    "alignprop_fluxkontext.py": (["alignprop_fluxkontext.py"], ["--data_dir", "--grid_ratio_weight",
                                                                "--resume_from", "--style_reference"]),
    "internvl_scorer.py": (["internvl_scorer.py"], ["--task", "--viz_grads", "--prompt"]),
    "benchmark_anti_periodic.py": (["benchmark_anti_periodic.py"], ["--artifacts_dir",
                                                                    "--synthesize_from"]),
    "generate": (["-m", "alignprop.generate"], ["--lora_scale", "--input_dir"]),
    "evaluate": (["-m", "alignprop.evaluate"], ["--originals_dir", "--brightness_target"]),
    "demo": (["-m", "alignprop.demo"], ["--output_dir"]),
    "demo_vlm": (["-m", "alignprop.demo_vlm"], ["--output_dir", "--media_dir", "--seed"]),
    "pretrain_tiny_vlm": (["-m", "alignprop.pretrain_tiny_vlm"], ["--output_dir", "--route_heads",
                                                                  "--two_image_weight",
                                                                  "--question_weights"]),
    "tiny_vlm_table": (["-m", "alignprop.tiny_vlm_table"], ["--model_id", "--json"]),
    "annotate": (["-m", "alignprop.annotate"], ["--host", "--port", "--preferences"]),
    "sample_pairs": (["-m", "alignprop.sample_pairs"], ["--num_pairs", "--sde_noise",
                                                        "--output_dir", "--prompt_file"]),
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_lists_flags(name):
    args, flags = COMMANDS[name]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, *args, "--help"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for flag in flags:
        assert flag in proc.stdout, f"{name} --help does not mention {flag}"
