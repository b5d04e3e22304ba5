"""How the demo's texture and grid checks respond to a clean global edit (no artifact at all).

    PYTHONPATH=. python benchmarks/demo_check_sensitivity.py

The base model (tiny-photo) edits the second held-out set as `make demo` does; then a pure
global brightness gain and a pure global saturation gain are applied to those outputs, and the
demo's measures are printed: texture added over the input (rewards.grid.texture_added, x1e-5)
and the grid penalty (the demo's grid term). A clean edit the demo asks for should leave both
where the base model has them; where they rise, the check measures the edit, not an artifact
(docs/anti_grid.md, issue 21).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]
import alignprop.demo as demo  # noqa: E402
from alignprop.config import DEFAULT_PROMPT  # noqa: E402
from alignprop.data import ImageFolder  # noqa: E402
from alignprop.models import TINY_PHOTO, load_kontext_pipeline  # noqa: E402
from alignprop.photo_sets import SECOND_SET_DIR  # noqa: E402
from alignprop.reward_flags import build_reward_from_flags  # noqa: E402
from rewards.base import metrics_to_floats  # noqa: E402
from rewards.grid import luminance  # noqa: E402


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    torch.set_num_threads(1)
    reward = demo.demo_reward(build_reward_from_flags(demo.demo_reward_flags()))
    folder = ImageFolder(SECOND_SET_DIR, demo.SIZE, demo.SIZE, DEFAULT_PROMPT)
    inputs = torch.stack([folder.load(i) for i in range(len(folder))])
    base = demo.edit_with_pipeline(load_kontext_pipeline(TINY_PHOTO), inputs, DEFAULT_PROMPT,
                                    demo.SAMPLE_STEPS, seed=1)
    grey = luminance(base)
    grey = grey if grey.dim() == 4 else grey[:, None]
    print(f"second held-out set ({len(inputs)} photos), base model outputs, then a global edit:")
    print("| saturation x | brightness x | mean luma | colourfulness | texture added (x1e-5) "
          "| grid penalty |")
    print("|---|---|---|---|---|---|")
    for sat in (1.0, 1.45):
        for gain in (1.0, 1.1, 1.2):
            y = ((grey + sat * (base - grey)) * gain).clamp(0, 1)
            with torch.no_grad():
                m = metrics_to_floats(reward(y, inputs, None)[1])
                tex = float(demo.texture_added(y, inputs, demo.GRID_PERIOD, demo.TEXTURE_GAIN,
                                               demo.TEXTURE_FLOOR).mean())
            print(f"| {sat:g} | {gain:g} | {float(luminance(y).mean()):.3f} | "
                  f"{m['colourfulness/value']:.3f} | {tex * 1e5:.2f} | "
                  f"{m['grid/grid_penalty']:.3f} |")


if __name__ == "__main__":
    main()
