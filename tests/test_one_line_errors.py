"""Expected failures end in one line naming the file or flag, early (before models load)."""
import errno
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import alignprop_fluxkontext as train_cli

TRAIN = ["--pretrained_model", "tiny", "--brightness_anchor_weight", "1", "--max_train_steps", "1"]


def _photos(d: Path, n=2) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((24, 32, 3), 40 * i, np.uint8)).save(d / f"p{i}.png")
    return d


def _err(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


# ---------------------------------------------------------------- presets
@pytest.mark.parametrize("name, text, needle", [
    ("bad.yaml", "max_train_steps: [1\nlora_rank: 4\n", "not valid YAML at line"),
    ("bad.json", '{"max_train_steps": 3,}', "not valid JSON at line 1"),
    ("float.yaml", "max_train_steps: 1.7\n", "max_train_steps must be an integer, got 1.7"),
    ("list.yaml", "lora_rank: [4, 8]\n", "lora_rank takes one value, got a list"),
    ("choice.yaml", "log_with: mlflow\n", "log_with must be one of"),
    ("word.json", '{"train_learning_rate": "fast"}', "train_learning_rate: invalid value 'fast'"),
])
def test_bad_preset_is_one_line_naming_the_file(tmp_path, capsys, name, text, needle):
    preset = tmp_path / name
    preset.write_text(text)
    argv = ["--config", str(preset), "--data_dir", str(_photos(tmp_path / "p")),
            "--output_dir", str(tmp_path / "o"), "--brightness_anchor_weight", "1"]
    assert train_cli.main(argv) == 2
    _err(capsys, str(preset), needle)


def test_good_preset_values_still_convert_and_the_command_line_wins(tmp_path):
    from alignprop.config import parse_config

    preset = tmp_path / "ok.yaml"
    preset.write_text("max_train_steps: 3\ntrain_learning_rate: 1e-3\ngradient_checkpointing: true\n"
                      "brightness_anchor_weight: 2\n")
    cfg, rewards = parse_config(["--config", str(preset), "--data_dir", str(tmp_path),
                                 "--max_train_steps", "5"])
    assert cfg.max_train_steps == 5 and cfg.train_learning_rate == 1e-3
    assert cfg.gradient_checkpointing is True and rewards.brightness_anchor_weight == 2.0


# ---------------------------------------------------------------- checkpoints (before models load)
def _fake_checkpoint(d: Path, rank=4) -> Path:
    from safetensors.torch import save_file

    d.mkdir(parents=True)
    save_file({"transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight":
               torch.zeros(rank, 8)}, str(d / "pytorch_lora_weights.safetensors"))
    for name in ("optimizer.json", "scheduler.json"):
        (d / name).write_text('{"format": 1, "state": {"__dict__": []}}')
    (d / "trainer_state.json").write_text(json.dumps({"global_step": 2, "samples_seen": 4}))
    return d


def test_resume_with_another_lora_rank_names_both_ranks(tmp_path, capsys):
    ckpt = _fake_checkpoint(tmp_path / "ckpt", rank=4)
    argv = ["--data_dir", str(_photos(tmp_path / "p")), "--output_dir", str(tmp_path / "o"),
            "--resume_from", str(ckpt), "--lora_rank", "8"] + TRAIN
    assert train_cli.main(argv) == 2
    _err(capsys, "rank 4", "--lora_rank is 8", "pytorch_lora_weights.safetensors")


@pytest.mark.parametrize("name", ["trainer_state.json", "pytorch_lora_weights.safetensors"])
def test_resume_from_a_corrupt_checkpoint_file_names_it(tmp_path, capsys, name):
    ckpt = _fake_checkpoint(tmp_path / "ckpt")
    f = ckpt / name
    f.write_bytes(f.read_bytes()[:9])
    argv = ["--data_dir", str(_photos(tmp_path / "p")), "--output_dir", str(tmp_path / "o"),
            "--resume_from", str(ckpt), "--lora_rank", "4"] + TRAIN
    assert train_cli.main(argv) == 2
    _err(capsys, str(f), "corrupt or truncated")


def test_full_disk_while_saving_keeps_the_earlier_checkpoints(tmp_path, monkeypatch):
    import alignprop.checkpoint as ck
    from test_checkpoint import FakeAccelerator, _checkpoint

    first, params, opt, sched = _checkpoint(tmp_path, steps=2)
    before = {p.name: p.read_bytes() for p in first.iterdir()}
    real = ck.write_state_files

    def full(directory, name, state):
        if name == "optimizer":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(directory, name, state)

    monkeypatch.setattr(ck, "write_state_files", full)
    with pytest.raises(ck.CheckpointError, match="No space left on device.*checkpoint-000002"):
        ck.save_checkpoint(FakeAccelerator(), tmp_path, 4, {"global_step": 4, "samples_seen": 8},
                           total_limit=1, optimizer=opt, scheduler=sched)
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["checkpoint-000002"]
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


# ---------------------------------------------------------------- folders and files
def test_folder_of_unsupported_files_names_the_types(tmp_path, capsys):
    d = tmp_path / "gifs"
    d.mkdir()
    for n in ("a.gif", "b.gif", "c.heic"):
        (d / n).write_bytes(b"x")
    assert train_cli.main(["--data_dir", str(d), "--output_dir", str(tmp_path / "o")] + TRAIN) == 2
    _err(capsys, ".gif (2)", ".heic (1)")
    from alignprop.generate import cli as generate

    assert generate(["--input_dir", str(d), "--output_dir", str(tmp_path / "g"),
                     "--pretrained_model", "tiny", "--prompt", "x"]) == 2
    _err(capsys, ".gif (2)", ".heic (1)")


def test_scorer_skips_unreadable_files_and_lists_them(tmp_path, capsys):
    import internvl_scorer

    d = _photos(tmp_path / "imgs", n=2)
    (d / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    rc = internvl_scorer.main([str(d), "--model_id", "tiny", "--format", "json",
                               "--device", "cpu"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    rows = json.loads(captured.out)
    assert [Path(r["image"]).name for r in rows] == ["p0.png", "p1.png"]
    assert "skipped" in captured.err and "zz_broken.png" in captured.err


def test_error_after_a_progress_bar_starts_on_a_fresh_line(capsys):
    from tqdm import tqdm

    from common.cli import report

    bar = tqdm(total=4, file=sys.stderr, desc="steps")
    bar.update(1)
    report("prog", ValueError("boom"))
    err = capsys.readouterr().err
    assert "\nprog: error: boom" in err, repr(err)


# ---------------------------------------------------------------- model errors
def test_offline_error_for_a_local_dir_suggests_downloading_into_it(tmp_path):
    from alignprop.models import load_kontext_pipeline
    from common.hub import ModelUnavailableError

    local = tmp_path / "models" / "kontext"
    local.mkdir(parents=True)  # exists, but is not a diffusers pipeline
    with pytest.raises(ModelUnavailableError) as exc:
        load_kontext_pipeline(str(local))
    msg = str(exc.value)
    assert (f"huggingface-cli download black-forest-labs/FLUX.1-Kontext-dev --local-dir {local}"
            in msg), msg
    assert f"huggingface-cli download {local}`" not in msg


def test_long_reasons_are_shortened_at_a_word_boundary():
    from common.hub import brief, model_unavailable

    long = "word " * 100
    short = brief(long, 50)
    assert short.endswith(" ...") and len(short) <= 54
    assert all(w == "word" for w in short[:-4].split())
    msg = str(model_unavailable("X", "owner/name", "--flag", OSError("abcdefghij " * 40)))
    reason = msg[msg.index("(OSError: ") + 10:msg.index(")")]
    assert all(w == "abcdefghij" for w in reason.replace(" ...", "").split()), reason
