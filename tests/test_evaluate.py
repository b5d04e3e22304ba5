"""python -m alignprop.evaluate and the diversity measure, on constructed images."""
import csv
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from alignprop.evaluate import cli, win_rate

# brightness anchor defaults: target 0.45, band 0.08 -> luminance in [0.37, 0.53] costs nothing
IN_BAND, TOO_BRIGHT, TOO_DARK = 0.45, 0.9, 0.05


def _flat(path, value, h=48, w=64, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    arr = np.clip(value + rng.normal(0, noise, (h, w, 3)), 0, 1) if noise else np.full((h, w, 3), value)
    Image.fromarray((arr * 255 + 0.5).astype(np.uint8)).save(path)
    return path


@pytest.fixture()
def folders(tmp_path):
    """Known answer: LoRA in the brightness band on 3 of 4 images where base is not; 1 tie."""
    d = {k: tmp_path / k for k in ("orig", "base", "lora")}
    for p in d.values():
        p.mkdir()
    cases = {"a": (TOO_BRIGHT, IN_BAND), "b": (TOO_DARK, IN_BAND), "c": (TOO_BRIGHT, IN_BAND),
             "d": (IN_BAND, IN_BAND)}
    for i, (name, (base, lora)) in enumerate(cases.items()):
        _flat(d["orig"] / f"{name}.jpg", 0.5, seed=i)  # originals pair by stem: a.jpg <-> a.png
        _flat(d["base"] / f"{name}.png", base)
        _flat(d["lora"] / f"{name}.png", lora)
    _flat(d["lora"] / "only_in_lora.png", 0.5)           # unpaired
    (d["base"] / "e.png").write_text("broken")             # unreadable in one folder
    for k in ("orig", "lora"):
        _flat(d[k] / "e.png", 0.5)
    (d["lora"] / "contact_sheet.png").write_bytes(b"")    # what generate writes: ignored
    return d


def _run(folders, out, *extra):
    return cli(["--originals_dir", str(folders["orig"]), "--base_dir", str(folders["base"]),
                "--lora_dir", str(folders["lora"]), "--output_dir", str(out), *extra])


def test_brightness_win_rate_known_answer_and_files(folders, tmp_path, capsys):
    out = tmp_path / "eval"
    assert _run(folders, out, "--rewards", "brightness", "--batch_size", "3") == 0
    captured = capsys.readouterr()
    assert "unpaired: only_in_lora only in lora" in captured.err
    assert "unreadable (base)" in captured.err and "e.png" in captured.err
    for f in ("scores.csv", "scores.json", "summary.json", "summary.csv", "win_rates.csv",
              "distributions.png", "paired_scatter.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    summary = json.loads((out / "summary.json").read_text())
    w = summary["win_rates"]["lora_vs_base"]["brightness"]
    # 3 wins (base out of band, LoRA in band) + 1 tie (both in band) over 4 pairs
    assert (w["wins"], w["ties"], w["losses"], w["n"]) == (3, 1, 0, 4)
    assert w["win_rate"] == pytest.approx(3.5 / 4)
    assert summary["win_rates"]["lora_vs_original"]["brightness"]["win_rate"] == pytest.approx(0.5)
    assert summary["win_rates"]["base_vs_original"]["brightness"]["win_rate"] == pytest.approx(0.5 / 4)
    assert summary["stats"]["lora"]["brightness"]["mean"] == pytest.approx(0.0, abs=1e-6)
    assert summary["stats"]["base"]["brightness"]["mean"] < -0.05
    assert summary["unpaired"] == {"only_in_lora": ["lora"]}
    assert [u["folder"] for u in summary["unreadable"]] == ["base"]
    assert summary["n_scored"] == 4                      # e is dropped: unreadable in base
    roles = {t["term"]: t["role"] for t in summary["terms"]}
    assert roles["brightness"] == "target"
    # grid is added as a hacking check (or, if the grid reward cannot be built, said so)
    assert roles.get("grid") == "check" or "hacking-check reward term 'grid'" in captured.err
    with open(out / "scores.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert set(rows[0]) == {"name", "folder", "file", "total"} | set(roles)
    assert {(r["name"], r["folder"]) for r in rows} >= {("a", "original"), ("a", "base"), ("a", "lora")}
    assert not any(r["name"] == "contact_sheet" for r in rows)
    a_base = next(r for r in rows if r["name"] == "a" and r["folder"] == "base")
    assert float(a_base["total"]) == pytest.approx(float(a_base["brightness"]))  # total = targets
    with open(out / "win_rates.csv") as fh:
        wr = {(r["comparison"], r["term"]): r for r in csv.DictReader(fh)}
    assert float(wr[("lora_vs_base", "brightness")]["win_rate"]) == pytest.approx(0.875)


def test_training_flags_select_rewards_and_lpips_uses_originals(folders, tmp_path):
    # --brightness_anchor_weight is the training flag; lpips via a spec file (random backbone)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps([{"name": "lpips", "term": "similarity", "pretrained": False,
                                 "resolution": 32, "device": "cpu"}]))
    out = tmp_path / "eval"
    assert _run(folders, out, "--brightness_anchor_weight", "2", "--brightness_target", "0.9",
                "--reward_spec", str(spec), "--no_hacking_check", "--no_plots") == 0
    summary = json.loads((out / "summary.json").read_text())
    terms = {t["term"]: t for t in summary["terms"]}
    assert set(terms) == {"brightness", "similarity"} and terms["brightness"]["weight"] == 2.0
    assert terms["brightness"]["options"]["target"] == 0.9 and terms["similarity"]["uses_input"]
    # target 0.9: now base's too-bright images are the good ones
    assert summary["win_rates"]["lora_vs_base"]["brightness"]["win_rate"] == pytest.approx(1.5 / 4)
    # similarity to the input is not scored on the originals themselves ...
    assert "similarity" not in summary["win_rates"]["lora_vs_original"]
    assert summary["stats"]["original"]["similarity"] == {"n": 0}
    # ... and a LoRA output identical to its input has LPIPS reward exactly 1 (distance 0)
    with open(out / "scores.csv") as fh:
        rows = {(r["name"], r["folder"]): r for r in csv.DictReader(fh)}
    assert rows[("a", "original")]["similarity"] == ""
    assert not (out / "distributions.png").exists()
    assert float(rows[("a", "lora")]["total"]) == pytest.approx(
        2 * float(rows[("a", "lora")]["brightness"]) + float(rows[("a", "lora")]["similarity"]))


def test_lpips_similarity_is_one_for_identical_images(tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "l").mkdir()
    _flat(tmp_path / "o" / "x.png", 0.3, noise=0.2, seed=1)
    _flat(tmp_path / "l" / "x.png", 0.3, noise=0.2, seed=1)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"name": "lpips", "pretrained": False, "resolution": 32, "device": "cpu"}))
    assert cli(["--originals_dir", str(tmp_path / "o"), "--lora_dir", str(tmp_path / "l"),
                "--output_dir", str(tmp_path / "e"), "--reward_spec", str(spec), "--no_plots"]) == 0
    s = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert s["stats"]["lora"]["lpips"]["mean"] == pytest.approx(1.0, abs=1e-5)


def test_win_rate_ties_count_half():
    w = win_rate([1.0, 2.0, 3.0, 5.0, math.nan], [0.0, 2.0, 4.0, 5.0 + 1e-9, 1.0])
    assert (w["wins"], w["ties"], w["losses"], w["n"]) == (1, 2, 1, 4)
    assert w["win_rate"] == pytest.approx(0.5)
    assert 0.0 <= w["ci95"][0] < 0.5 < w["ci95"][1] <= 1.0
    assert win_rate([1.0] * 10, [0.0] * 10)["win_rate"] == 1.0
    assert win_rate([], [])["n"] == 0


@pytest.mark.parametrize("extra, msg", [
    (["--rewards", "nonsense"], "unknown reward 'nonsense'"),
    (["--brightness_target", "2"], "--brightness_target must be in [0, 1]"),
    (["--batch_size", "0"], "--batch_size must be >= 1"),
    (["--reward_spec", "{tmp}/missing.json"], "--reward_spec {tmp}/missing.json: file not found"),
    (["--rewards", "brightness", "--reward_spec", "{tmp}/dup.json"], "requested twice"),
])
def test_user_errors_exit_2_one_line(folders, tmp_path, capsys, extra, msg):
    (tmp_path / "dup.json").write_text(json.dumps([{"name": "brightness"}]))
    extra = [e.format(tmp=tmp_path) for e in extra]
    msg = msg.format(tmp=tmp_path)
    assert _run(folders, tmp_path / "e", *extra) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and len(err.splitlines()) == 1, err


def test_folders_without_common_names_and_missing_inputs(tmp_path, capsys):
    for d, name in (("x", "a.png"), ("y", "b.png")):
        (tmp_path / d).mkdir()
        _flat(tmp_path / d / name, 0.5)
    assert cli(["--base_dir", str(tmp_path / "x"), "--lora_dir", str(tmp_path / "y"),
                "--output_dir", str(tmp_path / "e")]) == 2
    assert "no file name is present in every folder" in capsys.readouterr().err
    spec = tmp_path / "s.json"
    spec.write_text(json.dumps([{"name": "lpips", "pretrained": False}]))
    assert cli(["--lora_dir", str(tmp_path / "y"), "--output_dir", str(tmp_path / "e"),
                "--reward_spec", str(spec)]) == 2
    assert "give the inputs with --originals_dir" in capsys.readouterr().err
    assert cli(["--output_dir", str(tmp_path / "e")]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err


# --------------------------------------------------------------------------- diversity
def _seed_images(folder, values_by_name, layout):
    """Write one image per (name, seed); layout 'flat' (<name>_seed<k>) or 'subdirs' (seed<k>/)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, values in values_by_name.items():
        for k, v in enumerate(values):
            if layout == "flat":
                _flat(folder / f"{name}_seed{k}.png", v, h=32, w=32)
            else:
                (folder / f"seed{k}").mkdir(exist_ok=True)
                _flat(folder / f"seed{k}" / f"{name}.png", v, h=32, w=32)


@pytest.mark.parametrize("layout", ["flat", "subdirs"])
def test_diversity_l2_known_values(tmp_path, layout):
    # collapsed: every seed identical -> 0; varied: values 0, 0, 1 -> pair distances 0, 1, 1
    _seed_images(tmp_path / "lora", {"cat": [0.5, 0.5, 0.5]}, layout)
    _seed_images(tmp_path / "base", {"cat": [0.0, 0.0, 1.0]}, layout)
    assert cli(["--diversity_dir", f"lora={tmp_path / 'lora'}", f"base={tmp_path / 'base'}",
                "--diversity_metric", "l2", "--output_dir", str(tmp_path / "e")]) == 0
    d = json.loads((tmp_path / "e" / "summary.json").read_text())["diversity"]
    assert d["lora"]["mean"] == pytest.approx(0.0, abs=1e-6)
    assert d["base"]["mean"] == pytest.approx(2 / 3, abs=1e-3)
    assert d["base"]["per_input"]["cat"]["n_samples"] == 3
    with open(tmp_path / "e" / "diversity.csv") as fh:
        assert {r["label"] for r in csv.DictReader(fh)} == {"lora", "base"}


def test_diversity_lpips_random_backbone_and_ssim(tmp_path):
    from alignprop.diversity import build_metric, pairwise_diversity

    rng = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 40, 40, generator=rng), torch.rand(3, 40, 40, generator=rng)
    for metric, kw in (("lpips", {"pretrained": False}), ("ssim", {}), ("l2", {})):
        dist = build_metric(metric, **kw)
        assert pairwise_diversity([a, a.clone()], dist, 64) == pytest.approx(0.0, abs=1e-5), metric
        assert pairwise_diversity([a, b], dist, 64) > 0.01, metric
    with pytest.raises(ValueError, match="unknown diversity metric"):
        build_metric("psnr")


def test_diversity_folder_layout_errors(tmp_path, capsys):
    (tmp_path / "plain").mkdir()
    _flat(tmp_path / "plain" / "cat.png", 0.5)
    assert cli(["--diversity_dir", str(tmp_path / "plain"), "--output_dir", str(tmp_path / "e")]) == 2
    assert "neither files named <name>_seed<k>" in capsys.readouterr().err


def test_seed_suffixed_outputs_pair_with_their_original(tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "l").mkdir()
    _flat(tmp_path / "o" / "cat.jpg", 0.5)
    for k, v in enumerate((0.45, 0.95)):
        _flat(tmp_path / "l" / f"cat_seed{k}.png", v)
    assert cli(["--originals_dir", str(tmp_path / "o"), "--lora_dir", str(tmp_path / "l"),
                "--output_dir", str(tmp_path / "e"), "--rewards", "brightness", "--no_plots",
                "--no_hacking_check"]) == 0
    s = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert s["unpaired"] == {} and s["n_scored"] == 2
    # seed 0 in band (tie with the in-band original), seed 1 too bright (loss)
    assert s["win_rates"]["lora_vs_original"]["brightness"]["win_rate"] == pytest.approx(0.25)


def test_json_config_file_as_only_argument(folders, tmp_path):
    cfg = tmp_path / "eval.json"
    cfg.write_text(json.dumps({"originals_dir": str(folders["orig"]), "lora_dir": str(folders["lora"]),
                               "base_dir": str(folders["base"]), "output_dir": str(tmp_path / "e"),
                               "brightness_anchor_weight": 1.0, "hacking_check": False,
                               "plots": False}))
    assert cli([str(cfg)]) == 0
    s = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert [t["term"] for t in s["terms"]] == ["brightness"]
    assert s["win_rates"]["lora_vs_base"]["brightness"]["win_rate"] == pytest.approx(0.875)
