"""Our values against the original system's own, measure by measure (issue 22).

``tests/data/original_reference.json`` was written by ``benchmarks/original_reference.py``
running the original ``promptable-differentiable-rewards`` code (imported from a clone, never
copied) on inputs rebuilt from scikit-image's bundled photos. The first two tests check that
those inputs and the tiny InternVL are still the ones measured; the others compare
``--semantics original`` (docs/original_mode.md) with the recorded values, measure by measure:
the trainer's anchors and grid term, the InternVL scorer (function and command line) and the
benchmark's files.
"""
from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import original_reference as ref  # noqa: E402  (build_image: the fixture's inputs)

FIXTURE = json.loads((ROOT / "tests" / "data" / "original_reference.json").read_text())

# The README command's anchor and grid flags (the settings named "readme" in the fixture).
README_FLAGS = ["--grid_ratio_weight", "1", "--grid_ratio_period", "16", "--grid_ratio_max_harm",
                "3", "--grid_ratio_sigma_bins", "0.8", "--grid_eval_resize", "512",
                "--brightness_target", "0.45", "--brightness_band", "0.08",
                "--brightness_anchor_weight", "10"]
SETTINGS_FLAGS = {"readme": README_FLAGS, "defaults": []}


def image(name: str) -> torch.Tensor:
    """(3, H, W) in [0, 1]: the fixture's input ``name``, rebuilt."""
    return ref.to_tensor(ref.build_image(FIXTURE["images"][name]))


def close(a: float, b: float, rel: float = 1e-4, abs_: float = 1e-6) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=abs_)


# --------------------------------------------------------------------------- the inputs
def test_fixture_inputs_rebuild_bit_for_bit():
    for name, spec in FIXTURE["images"].items():
        arr = ref.build_image({k: v for k, v in spec.items() if k not in ("sha256", "shape")})
        assert list(arr.shape) == spec["shape"], name
        assert ref.image_sha256(arr) == spec["sha256"], name


def test_tiny_internvl_is_the_model_measured():
    from rewards.vlm_families.internvl import build_tiny_internvl

    model, _ = build_tiny_internvl()
    want = FIXTURE["tiny_internvl"]
    assert sum(p.numel() for p in model.parameters()) == want["num_parameters"]
    total = float(sum(p.detach().double().abs().sum() for p in model.parameters()))
    assert math.isclose(total, want["param_abs_sum"], rel_tol=1e-12)


# --------------------------------------------------------------------------- anchors and grid
COMBINED = [r for r in FIXTURE["anchors_and_grid"]
            if r["source"] == "alignprop_fluxkontext.py::combined_reward"]


def _original_mode_reward(settings: str, tmp_path):
    from alignprop.config import parse_config
    from alignprop.reward_flags import build_reward_from_flags
    from common.images import save_image

    data = tmp_path / "train_images"
    save_image(torch.rand(3, 16, 16), data / "a.png")
    # the learned terms the original switches on by default are weighted 0 (not loaded)
    argv = ["--data_dir", str(data), "--semantics", "original", "--aesthetic_reward_scale", "0",
            "--image_reward_scale", "0", *SETTINGS_FLAGS[settings]]
    _, flags = parse_config(argv)
    return build_reward_from_flags(flags, device="cpu")


@pytest.mark.parametrize("row", COMBINED, ids=lambda r: f"{r['settings']}-{'+'.join(r['images'])}")
def test_anchors_and_grid_equal_the_original(row, tmp_path):
    """Brightness, crispness and grid terms of original mode = combined_reward's, per batch."""
    reward = _original_mode_reward(row["settings"], tmp_path)
    x = torch.stack([image(n) for n in row["images"]])
    total, metrics = reward(x)
    want = row["values"]
    cfg = FIXTURE["settings"][row["settings"]]
    expected_terms = {"brightness": cfg["brightness_config"]["weight"],
                      "crispness": cfg["brightness_config"]["crisp_weight"],
                      "grid": cfg["grid_config"]["weight"]}
    assert {t.name: t.weight for t in reward.terms} == {
        k: v for k, v in expected_terms.items() if v}
    assert close(metrics["brightness"], -want["brightness_penalty"])
    assert close(metrics["crispness"], -want["crispness_penalty"], abs_=1e-8)
    if cfg["grid_config"]["weight"]:
        assert close(metrics["grid"], -want["grid_penalty"], rel=2e-4)
    for got, exp in zip(total.tolist(), want["reward"]):
        assert close(got, exp, rel=2e-4)


# --------------------------------------------------------------------------- VLM scorer
def _slots(entry) -> list[torch.Tensor]:
    xs = []
    for n in entry["images"]:
        x = image(n)[None]
        if entry["resize"]:
            x = F.interpolate(x, size=tuple(entry["resize"]["size"]), mode="bilinear",
                              align_corners=False)
        xs.append(x)
    return xs


def _entry_id(e) -> str:
    size = "native" if e["resize"] is None else "x".join(map(str, e["resize"]["size"]))
    refs = "-refs" if e["artifact_refs"] else ""
    return (f"{e['task']}{refs}-{e['objective']}-{e['calibration']}-T{e['temperature']}"
            f"-m{e['margin_temp']}-H{e['entropy_coef']}-{size}")


@pytest.mark.parametrize("entry", FIXTURE["scorer_function"], ids=_entry_id)
def test_vlm_scores_equal_the_original(entry):
    from rewards.vlm_original import make_original_vlm_reward

    refs = [image(n) for n in entry["artifact_refs"]] if entry["artifact_refs"] else ()
    reward = make_original_vlm_reward(
        entry["task"], model_id="tiny", dtype="float32", device="cpu", prompt=entry["question"],
        objective=entry["objective"], calibration=entry["calibration"],
        temperature=entry["temperature"], margin_temp=entry["margin_temp"],
        entropy_bonus=entry["entropy_coef"], artifact_refs=refs)
    slots = _slots(entry)
    if refs:  # the reward shows its two example images (resized to the image) first
        slots = reward.slots_for(slots[0], None)
    with torch.no_grad():
        out = reward.score_slots(slots)
    assert abs(out.scores[0].item() - entry["score"]) < 2e-5
    if "grade_probs" in entry:
        torch.testing.assert_close(out.probs[0][0], torch.tensor(entry["grade_probs"]),
                                   atol=2e-5, rtol=0)


def _cli_id(e) -> str:
    flags = " ".join(e["argv"][len(e["files"]):])
    return flags.replace("--model_id TINY_INTERNVL --device cpu", "").strip()


@pytest.mark.parametrize("entry", FIXTURE["scorer_cli"], ids=_cli_id)
def test_scorer_cli_prints_the_original_lines(entry, tmp_path, capsys):
    import internvl_scorer

    for fname, name in entry["files"].items():
        ref.save_png(ref.build_image(FIXTURE["images"][name]), tmp_path / fname)
    flags = entry["argv"][len(entry["files"]):]
    flags = [("tiny" if f == "TINY_INTERNVL" else f) for f in flags]
    argv = [str(tmp_path / f) for f in entry["files"]] + flags + [
        "--semantics", "original", "--prompt", entry["question"]]
    assert internvl_scorer.main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    want = entry["stdout"]
    assert lines[0] == want[0]
    assert len(lines) == len(want)
    for got, exp in zip(lines[1:], want[1:]):
        g, e = got.split("\t"), exp.split("\t")
        assert g[0] == e[0]
        assert abs(float(g[1]) - float(e[1])) <= 1.5e-4
        assert [c.split(":")[0] for c in g[2:]] == [c.split(":")[0] for c in e[2:]]


# --------------------------------------------------------------------------- benchmark
FAST_RUNS = [r for r in FIXTURE["benchmark"] if r["name"].startswith("small")]


def _read(path: Path) -> tuple[list[str], list[list]]:
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def _same_table(got_path: Path, want: dict) -> None:
    header, rows = _read(got_path)
    assert header == want["header"]
    assert len(rows) == len(want["rows"])
    for g_row, w_row in zip(rows, want["rows"]):
        for g, w in zip(g_row, w_row):
            if w is None:
                assert g == ""
            elif isinstance(w, str):
                assert g == w
            else:
                assert close(float(g), w, rel=2e-4, abs_=1e-9), (g_row[:2], g, w)


@pytest.mark.parametrize("run", FAST_RUNS, ids=lambda r: r["name"])
def test_benchmark_writes_the_original_files(run, tmp_path, monkeypatch):
    """Original mode: the original's folders (recursive), file names, columns and values."""
    import benchmark_anti_periodic

    for rel, name in run["cwd_layout"].items():
        ref.save_png(ref.build_image(FIXTURE["images"][name]), tmp_path / rel)
    ref.save_png(ref.template_png(), tmp_path / run["template_16"]["file"])
    before = {p for p in tmp_path.rglob("*") if p.is_file()}
    monkeypatch.chdir(tmp_path)
    argv = run["command"].split()[2:]
    assert benchmark_anti_periodic.main(["--semantics", "original", *argv]) == 0
    written = sorted(p.relative_to(tmp_path).as_posix()
                     for p in set(tmp_path.rglob("*")) - before if p.is_file())
    assert written == run["files_written"]
    _same_table(tmp_path / run["per_image_file"], run["per_image"])
    _same_table(tmp_path / run["summary_file"], run["summary"])
