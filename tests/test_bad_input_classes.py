"""Issue 23's classes of bad input, each tested from its description (not from its examples).

* checked late or not at all -- every file or folder a flag names is checked (exists, readable,
  right kind, safe to load) before any model loads, in one line naming the flag and the file;
* one bad file sinks a folder -- an image a model refuses is skipped, counted and reported;
* tracebacks instead of one line -- truncated, pickled or mislabelled weight files;
* nothing shipped is replaced by a command -- pretraining, generate's own files, the manifest;
* benchmarks are commands too.
"""
from __future__ import annotations

import ast
import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from common.checks import PathCheckError, check_path
from common.hub import ModelUnavailableError, WeightFileError, load_state_dict_file
from rewards import REGISTRY, file_options

ROOT = Path(__file__).resolve().parents[1]


def _one_line(err: str, prog: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), err
    assert "Traceback" not in err and "weights_only=False" not in err
    return lines[0]


# --------------------------------------------------------------------------- bad files
class Evil:
    """Unpickling this would call print: a stand-in for code in a weight file."""

    def __reduce__(self):
        return (print, ("ran code",))


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    """One file or folder of every way a path can be wrong, and a good weight file."""
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("bad")
    save_file({"w": torch.zeros(256)}, str(d / "good.safetensors"))
    torch.save({"w": torch.zeros(256)}, d / "good.pt")
    raw = (d / "good.safetensors").read_bytes()
    out = {
        "missing": d / "missing.pt",
        "folder": d,
        "not an image": d / "noise.png",
        "truncated safetensors": d / "cut.safetensors",
        "truncated torch": d / "cut.pt",
        "pickled objects": d / "evil.pt",
        "not weights": d / "text.pt",
    }
    out["not an image"].write_bytes(b"\x89PNG not really")
    out["truncated safetensors"].write_bytes(raw[:-64])
    out["truncated torch"].write_bytes((d / "good.pt").read_bytes()[:-300])
    torch.save({"w": torch.zeros(2), "x": Evil()}, out["pickled objects"])
    out["not weights"].write_text("hello")
    (d / "mislabelled.pt").write_bytes(raw)       # a safetensors file named .pt
    Image.new("RGB", (2000, 8)).save(d / "thin.png")
    Image.new("RGB", (48, 40), (120, 90, 60)).save(d / "ok.png")
    return out


WEIGHT_FAULTS = ["truncated safetensors", "truncated torch", "pickled objects", "not weights"]


def test_every_file_option_of_every_reward_is_checked_with_its_flag(bad):
    """Checked late or not at all: the registry's file options ARE the list -- a new reward's
    files are checked without a line elsewhere. Each bad value is refused naming the flag that
    reaches the option (a VLM term's own model / prompt-file flag) and the path."""
    from alignprop.validate import check_reward_specs

    seen = 0
    for name, rec in REGISTRY.items():
        for option, fo in rec.files.items():
            spec = {"name": name, "term": "t", "task": "similarity",
                    "model_flag": "--qwen_model_id", option: str(bad["missing"])}
            ((flag, _, value),) = [f for f in file_options(spec) if f[2] == str(bad["missing"])]
            with pytest.raises(PathCheckError) as err:
                check_reward_specs([spec])
            assert str(err.value).startswith(f"{flag} {bad['missing']}:"), err.value
            # the wrong kind of thing is refused too (a folder where a file or image goes, ...)
            wrong = {"dir": bad["not weights"], "model": bad["not weights"]}.get(
                fo.kind, bad["folder"] if fo.kind in ("file", "image") else bad["not weights"])
            with pytest.raises(PathCheckError, match=flag):
                check_reward_specs([{**spec, option: str(wrong)}])
            seen += 1
    assert seen >= 15   # every model-backed reward has its files in the registry


@pytest.mark.parametrize("fault", WEIGHT_FAULTS)
def test_unsafe_or_broken_weight_files_are_one_line_before_and_at_load(bad, fault):
    """Tracebacks instead of one line: the validation pass and the loaders themselves both
    say it in one line naming the flag and the file, and never advise unpickling."""
    path = bad[fault]
    with pytest.raises(PathCheckError) as err:
        check_path("--face_weights", "weights", str(path))
    msg = str(err.value)
    assert msg.startswith(f"--face_weights {path}:") and "\n" not in msg
    assert "weights_only=False" not in msg
    with pytest.raises(WeightFileError) as err:
        load_state_dict_file(str(path), flag="weights_path=")
    assert str(path) in str(err.value) and "weights_only=False" not in str(err.value)
    if fault == "pickled objects":
        assert "could run code" in msg


def test_a_weight_file_is_read_by_its_content_not_its_name(bad):
    check_path("--face_weights", "weights", str(bad["folder"] / "mislabelled.pt"))
    state = load_state_dict_file(str(bad["folder"] / "mislabelled.pt"))
    assert state["w"].shape == (256,)


def test_training_checks_every_path_before_any_model_loads(bad, tmp_path, monkeypatch, capsys):
    """The training command (and --estimate) refuses each bad path in one line, and no model
    is loaded first (the loaders fail the test if they are reached)."""
    import alignprop.models
    import alignprop.run
    import rewards.vlm_model
    from alignprop_fluxkontext import main

    def no_load(*a, **k):
        raise AssertionError("a model was loaded before the paths were checked")

    monkeypatch.setattr(alignprop.run.kontext_models, "load_kontext_pipeline", no_load)
    monkeypatch.setattr(rewards.vlm_model, "_load_pretrained", no_load)
    data = tmp_path / "data"
    data.mkdir()
    Image.new("RGB", (40, 40)).save(data / "a.png")
    base = ["--data_dir", str(data), "--pretrained_model", "tiny", "--brightness_anchor_weight",
            "1", "--log_with", "none", "--output_dir", str(tmp_path / "out")]
    cases = [
        (["--data_dir", str(bad["missing"])], "--data_dir"),
        (["--prompt_file", str(bad["folder"])], "--prompt_file"),
        (["--pretrained_model", str(bad["not weights"])], "--pretrained_model"),
        (["--similarity_backend", "face", "--face_weights", str(bad["pickled objects"])],
         "--face_weights"),
        (["--preference_backend", "imagereward", "--preference_model",
          str(bad["truncated torch"])], "--preference_model"),
        (["--aesthetic_model_type", "internvl", "--style_reference",
          str(bad["folder"] / "thin.png")], "--style_reference"),
        (["--aesthetic_model_type", "qwen", "--qwen_model_id", str(bad["missing"])],
         "--qwen_model_id"),
        (["--similarity_backend", "dreamsim", "--dreamsim_dir", str(bad["not weights"])],
         "--dreamsim_dir"),
        (["--method", "imagerefl", "--imagerefl_target_dir", str(bad["folder"])],
         "--imagerefl_target_dir"),
    ]
    for extra, flag in cases:
        for estimate in ([], ["--estimate"]):
            if estimate and flag in ("--data_dir", "--imagerefl_target_dir"):
                continue   # --estimate reads no data
            argv = base + extra + estimate
            assert main(argv) == 2, argv
            line = _one_line(capsys.readouterr().err, "alignprop_fluxkontext.py")
            assert flag in line, line
    assert not (tmp_path / "out").exists()


def test_other_commands_check_their_paths_first(bad, tmp_path, capsys):
    import benchmark_anti_periodic
    import internvl_scorer
    from alignprop import evaluate, generate

    ok = str(bad["folder"] / "ok.png")
    cases = [
        (generate.cli, ["--input_dir", str(bad["folder"]), "--output_dir", str(tmp_path / "g"),
                        "--prompt", "x", "--pretrained_model", "tiny", "--lora",
                        str(bad["missing"])], "alignprop.generate", "--lora"),
        (evaluate.cli, ["--lora_dir", str(bad["not weights"]), "--output_dir",
                        str(tmp_path / "e")], "alignprop.evaluate", "--lora_dir"),
        (evaluate.cli, ["--lora_dir", str(bad["folder"]), "--output_dir", str(tmp_path / "e"),
                        "--similarity_backend", "face", "--face_weights",
                        str(bad["truncated safetensors"])], "alignprop.evaluate", "--face_weights"),
        (internvl_scorer.main, [ok, "--model_id", str(bad["not weights"])],
         "internvl_scorer.py", "--model_id"),
        (internvl_scorer.main, [ok, "--model_id", "tiny", "--task", "similarity", "--reference",
                                str(bad["not an image"])], "internvl_scorer.py", "--reference"),
        (benchmark_anti_periodic.main, ["--artifacts_dir", str(bad["not weights"]),
                                        "--clean_dir", str(bad["folder"])],
         "benchmark_anti_periodic.py", "--artifacts_dir"),
    ]
    for main, argv, prog, flag in cases:
        assert main(argv) == 2, argv
        assert flag in _one_line(capsys.readouterr().err, prog)


# --------------------------------------------------------------------------- per item
def test_an_image_the_vlm_refuses_is_skipped_alone(bad, tmp_path, capsys):
    """One bad file sinks a folder: no more. A 2000x8 image among good ones is skipped and
    named; the others are scored. As a fixed reference it is refused before the model loads,
    and an absurd pixel budget is refused in one line."""
    import internvl_scorer

    folder = tmp_path / "imgs"
    folder.mkdir()
    shutil.copy(bad["folder"] / "thin.png", folder / "thin.png")
    shutil.copy(bad["folder"] / "ok.png", folder / "ok.png")
    assert internvl_scorer.main([str(folder), "--model_id", "tiny-qwen2.5-vl",
                                 "--format", "json"]) == 0
    out, err = capsys.readouterr()
    rows = json.loads(out)
    assert [Path(r["image"]).name for r in rows] == ["ok.png"]
    assert "skipped" in err and "thin.png" in err and "2000x8" in err
    for extra, flag in (([ "--task", "similarity", "--reference", str(folder / "thin.png")],
                         "--reference"), (["--min_pixels", "10000000000"], "--min_pixels")):
        assert internvl_scorer.main([str(folder / "ok.png"), "--model_id", "tiny-qwen2.5-vl",
                                     *extra]) == 2
        assert flag in _one_line(capsys.readouterr().err, "internvl_scorer.py")


def test_evaluate_scores_the_rest_when_a_term_refuses_one_image(bad, tmp_path, capsys):
    from alignprop import evaluate

    lora = tmp_path / "lora"
    lora.mkdir()
    shutil.copy(bad["folder"] / "thin.png", lora / "thin.png")
    shutil.copy(bad["folder"] / "ok.png", lora / "ok.png")
    rc = evaluate.cli(["--lora_dir", str(lora), "--output_dir", str(tmp_path / "e"),
                       "--aesthetic_model_type", "qwen", "--qwen_model_id", "tiny-qwen2.5-vl",
                       "--qwen_dtype", "float32", "--no_hacking_check", "--no_plots",
                       "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    summary = json.dumps(json.loads((tmp_path / "e" / "summary.json").read_text()))
    assert "thin.png" in summary and "2000x8" in summary      # reported, with the reason
    scores = (tmp_path / "e" / "scores.csv").read_text()
    assert "ok" in scores and "thin" in scores                  # the folder was scored


# --------------------------------------------------------------------------- nothing shipped
def test_pretraining_never_writes_into_the_shipped_assets(tmp_path, capsys):
    """Refused before any training, however the folder is named (a symlink, '..')."""
    from alignprop import pretrain_tiny
    from alignprop.tiny_photo import ASSET_DIR

    link = tmp_path / "assets-link"
    link.symlink_to(ASSET_DIR)
    before = {p.name: p.read_bytes() for p in ASSET_DIR.iterdir()}
    for out in (ASSET_DIR, link, ASSET_DIR / ".." / "tiny-photo", ASSET_DIR / "new"):
        with pytest.raises(ValueError, match="models the project ships"):
            pretrain_tiny.main(["--output_dir", str(out), "--vae_steps", "1"])
    assert {p.name: p.read_bytes() for p in ASSET_DIR.iterdir()} == before


def test_pretraining_writes_only_when_checks_pass_and_keeps_earlier_files(tmp_path,
                                                                          monkeypatch):
    """The slow parts are stand-ins: what is tested is what gets written, not training."""
    from alignprop import pretrain_tiny

    verdict = {"ok": False}
    monkeypatch.setattr(pretrain_tiny, "crop_bank", lambda n, seed: torch.randint(
        0, 255, (4, 3, 64, 64), dtype=torch.uint8))
    monkeypatch.setattr(pretrain_tiny, "train_vae", lambda *a, **k: None)
    monkeypatch.setattr(pretrain_tiny, "train_transformer", lambda *a, **k: None)
    monkeypatch.setattr(pretrain_tiny, "held_out_photos", lambda: torch.rand(1, 3, 64, 64))
    monkeypatch.setattr(pretrain_tiny, "evaluate", lambda pipe, held: {})
    monkeypatch.setattr(pretrain_tiny, "checks", lambda report: {"identity": verdict["ok"]})
    out = tmp_path / "model"
    argv = ["--output_dir", str(out), "--crops", "4"]
    assert pretrain_tiny.main(argv) == 1
    assert not any(out.glob("*.safetensors")) and not (out / "manifest.json").exists()
    assert pretrain_tiny.main(argv + ["--force"]) == 1          # written, still reported
    first = (out / "manifest.json").read_bytes()
    verdict["ok"] = True
    assert pretrain_tiny.main(argv) == 0
    kept = list(out.glob("replaced-*/manifest.json"))
    assert len(kept) == 1 and kept[0].read_bytes() == first     # the earlier model, beside


@pytest.mark.parametrize("wrong", [
    [], {"files": []}, {"files": {}}, {"files": {"transformer.safetensors": "abc"}},
    "__no_vae_factors__", "__string_factor__"])
def test_a_wrong_tiny_photo_manifest_is_one_line(tmp_path, wrong):
    from alignprop.tiny_photo import ASSET_DIR, MANIFEST, verify_assets

    shutil.copytree(ASSET_DIR, tmp_path / "a")
    good = json.loads((ASSET_DIR / MANIFEST).read_text())
    if wrong == "__no_vae_factors__":
        wrong = {k: v for k, v in good.items() if k != "vae_factors"}
    elif wrong == "__string_factor__":
        wrong = {**good, "vae_factors": {"shift_factor": "0.1", "scaling_factor": 1.0}}
    (tmp_path / "a" / MANIFEST).write_text(json.dumps(wrong))
    with pytest.raises(ModelUnavailableError) as err:
        verify_assets(tmp_path / "a")
    assert "\n" not in str(err.value) and "manifest" in str(err.value)


def test_generate_never_writes_one_of_its_files_over_another(bad, tmp_path, capsys):
    """An input named like the contact sheet would have its output replaced by the sheet."""
    from alignprop import generate

    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(bad["folder"] / "ok.png", inputs / "contact_sheet.png")
    argv = ["--input_dir", str(inputs), "--output_dir", str(tmp_path / "g"), "--prompt", "x",
            "--pretrained_model", "tiny", "--num_steps", "1", "--estimate"]
    assert generate.cli(argv) == 2
    line = _one_line(capsys.readouterr().err, "alignprop.generate")
    assert "contact_sheet.png" in line and "contact sheet" in line
    assert generate.cli(argv + ["--contact_sheet", "html"]) == 0   # no PNG sheet: no clash


# --------------------------------------------------------------------------- benchmarks
def test_every_numeric_flag_of_every_benchmark_is_validated():
    """Benchmarks are commands too: no flag takes a bare int or float (a 0 or a negative
    would reach the code as a traceback); the project's argparse types refuse them in one
    line, as fsdp_memory.py --lora_rank 0 shows."""
    bare = []
    for script in sorted((ROOT / "benchmarks").glob("*.py")):
        for node in ast.walk(ast.parse(script.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
                for kw in node.keywords:
                    if kw.arg == "type" and isinstance(kw.value, ast.Name) \
                            and kw.value.id in ("int", "float"):
                        flag = node.args[0].value if node.args else "?"
                        if flag not in ("--seed", "--timeout", "--budget", "--steps"):
                            bare.append(f"{script.name} {flag}")
    assert not bare, bare
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fsdp_memory.py"),
                        "--lora_rank", "0"], capture_output=True, text=True, timeout=120,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "--lora_rank" in r.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("flag,value", [("--seeds", "0,-1"), ("--lrs", "1e-2,0"),
                                        ("--eval_at", "0"), ("--noise_draws", "0"),
                                        ("--eval_at", "50")])
def test_bench_methods_list_flags_are_one_line(flag, value):
    """bench_methods.py's list flags take the project's types item by item: a bad item is one
    line naming the flag, before anything trains."""
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_methods.py"), flag,
                        value, "--out_dir", "/nonexistent/never"], capture_output=True,
                       text=True, timeout=120,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-800:]
    assert flag in r.stderr.strip().splitlines()[-1]


def test_registry_records_say_what_each_reward_reads():
    """reads_input follows the record: DreamSim and a VLM similarity question compare with
    the input unless a reference image is given (evaluate used to miss DreamSim)."""
    from rewards import reads_input, reads_reference

    assert reads_input({"name": "dreamsim"}) and not reads_input({"name": "dreamsim",
                                                                   "reference": "r.png"})
    assert reads_reference({"name": "dreamsim", "reference": "r.png"})
    for task, expect in (("single", False), ("content-similarity", True), ("pair", True),
                         ("similarity", True), ("sharpness", False)):
        assert reads_input({"name": "internvl", "task": task}) == expect, task
    assert not reads_input({"name": "internvl", "task": "similarity", "reference": "r.png"})
    assert reads_input({"name": "lpips"}) and not reads_input({"name": "grid"})
    for name, rec in REGISTRY.items():   # one record says everything
        assert rec.module.startswith("rewards.") and rec.factory and rec.description
        assert rec.weightless is not None or rec.weightless_note, name
        assert dataclasses.is_dataclass(rec)
