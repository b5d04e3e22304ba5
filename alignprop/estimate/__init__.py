"""``--estimate``: will a run fit on a GPU, and what will one optimizer step cost?

Every model of the run is built at its real size WITHOUT weights (torch ``FakeTensorMode``:
no download, no GPU, no large RAM) and one optimizer step of the training code is traced
(:mod:`.trace`: the method, sampler, LoRA, rewards and AdamW training runs). The parts:

* :mod:`.configs` -- the real configurations (shipped, a local folder's, ``tiny`` /
  ``tiny-photo``) and :func:`build_kontext`, which builds the pipeline's models from them;
* :mod:`.trace` -- the traced step (training and ``alignprop.generate``);
* :mod:`.report` -- :class:`Estimate`: parameters, FLOPs, time at 40% of the bf16 peak of
  four GPUs, peak memory by part, verdicts per GPU size and what to change (docs/scale.md).
"""
from __future__ import annotations

from .configs import (CONFIG_DIR, EstimateError, build_kontext, internvl_config, kontext_configs,
                      vlm_config)
from .report import GPU_PEAKS, GPU_SIZES_GB, MEASURED_RATES, Estimate, measured_rate_seconds
from .trace import estimate_generate, estimate_training

__all__ = ["CONFIG_DIR", "Estimate", "EstimateError", "GPU_PEAKS", "GPU_SIZES_GB", "MEASURED_RATES",
           "build_kontext", "estimate_generate", "estimate_training", "internvl_config",
           "kontext_configs", "measured_rate_seconds", "vlm_config"]
