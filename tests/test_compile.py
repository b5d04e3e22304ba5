"""--compile on the CPU (inductor, gcc): compiled = eager, and no recompiles after step 1.

The tiny trainer with LoRA, gradient checkpointing, random K (1 at the first step, 2 later),
the batched no-grad pass and a VLM reward term runs 3 optimizer steps eagerly and with
``--compile`` (transformer blocks, VAE decoder, the VLM's vision and language layers). Its own
process: torch.compile's state and counters stay out of the other tests.

Cost: inductor builds C++ kernels on the first run (about a minute of CPU time on this 2-core
machine when quiet; measured 65 s of CPU); the kernels are kept in
``.pytest_cache/torchinductor`` and later runs take ~20 s. ``TORCHINDUCTOR_VEC_ISA_OK=0``
builds scalar kernels, a quarter less to compile; the code paths compiled are the same.
Autocast (bf16 on a GPU) is exercised by ``benchmarks/gpu_speed_check.sh``.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.compile


def test_compiled_training_matches_eager_and_never_recompiles():
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               TORCHINDUCTOR_VEC_ISA_OK="0",
               TORCHINDUCTOR_CACHE_DIR=str(ROOT / ".pytest_cache" / "torchinductor"))
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "_compile_check.py")], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    steps = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(steps) == 3
    ks = [s["k"][0] for s in steps]
    assert all(s["k"][0] == s["k"][1] for s in steps) and len(set(ks)) == 2 and ks[0] == 1
    for s in steps:
        eager, compiled = s["loss"]
        assert compiled == pytest.approx(eager, rel=1e-5, abs=1e-7)
        assert s["grad_diff"] <= 1e-4 * s["grad_scale"] + 1e-8, s
    # every graph is made during the first step; a new K, the other micro-batch, gradient
    # checkpointing's recompute and the VLM's second question reuse them
    assert steps[0]["graphs"] > 0
    assert steps[1]["graphs"] == steps[2]["graphs"] == steps[0]["graphs"]
