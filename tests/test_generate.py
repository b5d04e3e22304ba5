"""python -m alignprop.generate on the built-in tiny Kontext model (CPU, seconds)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alignprop.generate import cli, target_size
from alignprop.lora import resolve_lora

STEPS = "2"


def _png(path, h, w, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(path)
    return path


def _arr(path):
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    _png(d / "wide.png", 40, 72, 0)     # 72x40 -> 64x32 (aspect 1.8 -> 2.0, nearest multiples)
    _png(d / "tall.jpg", 64, 48, 1)     # already multiples of 16
    (d / "broken.png").write_text("not an image")
    return d


def _save_lora(pipe, path, seed=1, b_scale=20.0):
    """peft LoRA with non-zero random A and B on the attention projections, diffusers format."""
    from diffusers import FluxKontextPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    pipe.transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                            target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    sd = get_peft_model_state_dict(pipe.transformer)
    sd = {k: v * b_scale if "lora_B" in k else v for k, v in sd.items()}
    FluxKontextPipeline.save_lora_weights(path, transformer_lora_layers=sd)
    return path


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    from alignprop.models import load_kontext_pipeline

    return _save_lora(load_kontext_pipeline("tiny"), tmp_path_factory.mktemp("lora"))


@pytest.fixture(scope="module")
def run_with_lora(inputs, lora_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    rc = cli(["--input_dir", str(inputs), "--output_dir", str(out), "--pretrained_model", "tiny",
              "--lora", str(lora_dir), "--prompt", "make it blue", "--num_steps", STEPS,
              "--batch_size", "2", "--seed", "3"])
    assert rc == 0
    return out


def test_target_size_keeps_aspect_and_multiples_of_16():
    assert target_size(40, 72) == (32, 64)
    assert target_size(64, 48) == (64, 48)
    assert target_size(3000, 4000, max_area=1024 * 1024) == (880, 1184)   # shrunk to ~1 MP
    h, w = target_size(3000, 4000, max_area=1024 * 1024)
    assert h * w <= 1024 * 1024 and abs(w / h - 4 / 3) < 0.02
    assert target_size(3000, 4000, max_side=512) == (384, 512)
    assert target_size(100, 100, max_area=1024 * 1024) == (96, 96)          # never upscaled ...
    assert target_size(100, 100, max_area=512 * 512, upscale=True) == (512, 512)  # ... unless asked
    assert target_size(5, 5) == (16, 16)                                      # at least one multiple
    for hw in [(33, 47), (1080, 1920), (17, 4000)]:
        h, w = target_size(*hw, max_area=768 * 768, max_side=1024)
        assert h % 16 == 0 and w % 16 == 0 and h * w <= 768 * 768 and max(h, w) <= 1024


def test_generate_writes_one_output_per_input_with_name_and_size(run_with_lora, inputs):
    out = run_with_lora
    assert sorted(p.name for p in out.glob("*.png") if p.stem != "contact_sheet") == ["tall.png", "wide.png"]
    assert sorted(p.name for p in (out / "base").iterdir()) == ["tall.png", "wide.png"]
    assert Image.open(out / "wide.png").size == (64, 32)
    assert Image.open(out / "tall.png").size == (48, 64)
    assert Image.open(out / "base" / "wide.png").size == (64, 32)
    log = json.loads((out / "generate_log.json").read_text())
    assert [Path(s["file"]).name for s in log["skipped"]] == ["broken.png"]
    assert log["lora_layers"] == 7 and log["generated"] == 4


def test_lora_changes_output_and_contact_sheet_written(run_with_lora):
    out = run_with_lora
    for name in ("wide.png", "tall.png"):
        diff = np.abs(_arr(out / name) - _arr(out / "base" / name)).mean()
        assert diff > 2.0, f"LoRA output equals base for {name} (mean |diff| {diff})"
    html = (out / "contact_sheet.html").read_text()
    for needle in ("<th>input</th>", "<th>base</th>", "<th>LoRA</th>", 'src="base/wide.png"',
                   'src="wide.png"', "wide.png", "tall.jpg"):
        assert needle in html
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.width > 3 * 48 and sheet.height > 2 * 200  # 3 columns, 2 rows of 256 px cells


def test_lora_scale_zero_reproduces_base_exactly(run_with_lora, inputs, lora_dir, tmp_path):
    # batch size 1 here vs 2 in the first run: seeds are per image, so noise is identical too
    rc = cli(["--input_dir", str(inputs), "--output_dir", str(tmp_path), "--pretrained_model", "tiny",
              "--lora", str(lora_dir / "pytorch_lora_weights.safetensors"), "--lora_scale", "0",
              "--prompt", "make it blue", "--num_steps", STEPS, "--seed", "3", "--no_base",
              "--contact_sheet", "none"])
    assert rc == 0
    assert not (tmp_path / "base").exists() and not (tmp_path / "contact_sheet.html").exists()
    for name in ("wide.png", "tall.png"):
        diff = np.abs(_arr(tmp_path / name) - _arr(run_with_lora / "base" / name)).max()
        assert diff <= 1, name  # equal up to float summation order across batch sizes


def test_num_seeds_writes_seed_suffixed_outputs(inputs, tmp_path):
    rc = cli(["--input_dir", str(inputs), "--output_dir", str(tmp_path), "--pretrained_model", "tiny",
              "--prompt", "x", "--num_steps", STEPS, "--num_seeds", "2", "--seed", "5",
              "--max_side", "32", "--contact_sheet", "html"])
    assert rc == 0
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert names == ["tall_seed5.png", "tall_seed6.png", "wide_seed5.png", "wide_seed6.png"]
    assert Image.open(tmp_path / "wide_seed5.png").size == (32, 16)  # --max_side 32
    assert np.abs(_arr(tmp_path / "wide_seed5.png") - _arr(tmp_path / "wide_seed6.png")).mean() > 1


def test_lora_for_another_model_is_a_clear_error(inputs, tmp_path, capsys):
    from diffusers import FluxTransformer2DModel
    from safetensors.torch import save_file

    # 1) a LoRA whose layers have other sizes (a different FLUX transformer)
    big = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                 attention_head_dim=24, num_attention_heads=2, joint_attention_dim=32,
                                 pooled_projection_dim=32, axes_dims_rope=[4, 8, 12],
                                 guidance_embeds=True)

    class _P:  # the save helper only needs .transformer
        transformer = big

    other = _save_lora(_P, tmp_path / "other")
    # 2) an SDXL-style LoRA: no key names a FLUX transformer layer
    sd_file = tmp_path / "sdxl_lora.safetensors"
    save_file({"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": torch.zeros(4, 320),
               "unet.down_blocks.0.attentions.0.proj_in.lora_B.weight": torch.zeros(320, 4)}, sd_file)
    for lora, pattern in ((other, "is 32->32 in this transformer but the LoRA expects 48"),
                          (sd_file, "none of its 2 tensors is a LoRA layer")):
        rc = cli(["--input_dir", str(inputs), "--output_dir", str(tmp_path / "o"), "--pretrained_model",
                  "tiny", "--lora", str(lora), "--prompt", "x", "--num_steps", "1"])
        err = capsys.readouterr().err
        assert rc == 2
        assert pattern in err and "another model" in err, err
        assert not (tmp_path / "o" / "wide.png").exists()


def test_resolve_lora_paths(lora_dir, tmp_path):
    assert resolve_lora(str(lora_dir)) == (str(lora_dir), None)
    (tmp_path / "named").mkdir()
    (tmp_path / "named" / "my_style.safetensors").write_bytes(b"")
    assert resolve_lora(str(tmp_path / "named")) == (str(tmp_path / "named"), "my_style.safetensors")
    (tmp_path / "pickle.bin").write_bytes(b"")
    for bad, msg in ((tmp_path / "pickle.bin", "safetensors"), (tmp_path, "no pytorch_lora_weights"),
                     (tmp_path / "missing", "no such file")):
        with pytest.raises(ValueError, match=msg):
            resolve_lora(str(bad))


@pytest.mark.parametrize("argv, msg", [
    (["--input_dir", "{missing}", "--prompt", "x"], "--input_dir {missing}: folder not found"),
    (["--input_dir", "{inputs}"], "--prompt or --prompt_file"),
    (["--input_dir", "{inputs}", "--prompt", "x", "--num_steps", "0"], "--num_steps must be >= 1"),
    (["--input_dir", "{inputs}", "--prompt", "x", "--max_area", "100"], "--max_area must be 0"),
    (["--input_dir", "{inputs}", "--prompt", "x", "--contact_sheet", "pdf"], "unknown format"),
    (["--input_dir", "{inputs}", "--prompt", "x", "--lora", "{missing}"],
     "--lora {missing}: not found"),
])
def test_user_errors_exit_2_with_one_line(argv, msg, inputs, tmp_path, capsys):
    argv = [a.format(missing=tmp_path / "missing", inputs=inputs) for a in argv]
    msg = msg.format(missing=tmp_path / "missing")
    rc = cli(argv + ["--output_dir", str(tmp_path / "o"), "--pretrained_model", "tiny"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and msg in err and len(err.splitlines()) == 1, err


def test_cli_subprocess_exit_code_and_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "alignprop.generate", "--input_dir",
                        str(tmp_path / "nope"), "--output_dir", str(tmp_path / "o"), "--prompt", "x",
                        "--pretrained_model", "tiny"], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "--input_dir" in r.stderr and "folder not found" in r.stderr


def test_prompt_file_json_per_image(inputs, tmp_path):
    from alignprop.generate import read_prompts

    pf = tmp_path / "p.json"
    pf.write_text(json.dumps({"wide": "blue sky", "tall.jpg": "red car"}))
    assert read_prompts(None, str(pf), ["wide.png", "tall.jpg"]) == {"wide.png": "blue sky",
                                                                     "tall.jpg": "red car"}
    with pytest.raises(ValueError, match="no prompt for 1 input"):
        read_prompts(None, str(pf), ["wide.png", "other.png"])
    assert read_prompts("default", str(pf), ["other.png"]) == {"other.png": "default"}
