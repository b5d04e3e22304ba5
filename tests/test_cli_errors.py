"""One way to fail for every command: one line naming a CLI flag, exit code 2 (common/cli.py)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _one_error_line(err: str, prog: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_every_command_fails_the_same_way(tmp_path, capsys):
    import benchmark_anti_periodic
    import internvl_scorer
    from alignprop import evaluate, generate
    from alignprop_fluxkontext import main as train_main

    missing = str(tmp_path / "missing")
    cases = [
        (train_main, ["--data_dir", missing, "--grid_ratio_weight", "1",
                      "--pretrained_model", "tiny"], "alignprop_fluxkontext.py", "--data_dir"),
        (internvl_scorer.main, [missing, "--model_id", "tiny"], "internvl_scorer.py", "no such file"),
        (benchmark_anti_periodic.main, ["--artifacts_dir", missing, "--clean_dir", missing],
         "benchmark_anti_periodic.py", "--artifacts_dir"),
        (generate.cli, ["--input_dir", missing, "--output_dir", str(tmp_path / "o"),
                         "--prompt", "x", "--pretrained_model", "tiny"], "alignprop.generate",
         "--input_dir " + missing + ": folder not found"),
        (evaluate.cli, ["--lora_dir", missing, "--output_dir", str(tmp_path / "e")],
         "alignprop.evaluate", missing),
    ]
    for main, argv, prog, needle in cases:
        assert main(argv) == 2, prog
        line = _one_error_line(capsys.readouterr().err, prog)
        assert needle in line, line


def test_debug_env_shows_the_traceback(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "benchmark_anti_periodic.py", "--artifacts_dir", str(tmp_path / "x"),
            "--clean_dir", str(tmp_path / "y")]
    loud = subprocess.run(argv, cwd=ROOT, env={**env, "ALIGNPROP_DEBUG": "1"},
                          capture_output=True, text=True, timeout=120)
    assert loud.returncode == 1 and "Traceback" in loud.stderr


@pytest.mark.parametrize("flags, cli_flag, factory_kw", [
    ({"similarity_backend": "lpips"}, "--lpips_backbone", "backbone_path="),
    ({"aesthetic_model_type": "aesthetic_scorer", "aesthetic_clip_model": "./no/clip"},
     "--aesthetic_clip_model", "clip_model="),
    ({"aesthetic_model_type": "v2.5", "aesthetic_encoder": "./no/siglip"},
     "--aesthetic_encoder", "encoder="),
])
def test_missing_models_name_the_cli_flag_not_the_factory_argument(tmp_path, monkeypatch, flags,
                                                                   cli_flag, factory_kw):
    from alignprop.reward_flags import RewardBuildError, RewardFlags, build_reward_from_flags

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty torch hub cache
    with pytest.raises(RewardBuildError) as err:
        build_reward_from_flags(RewardFlags(**flags), device="cpu")
    msg = str(err.value)
    assert cli_flag in msg and factory_kw not in msg, msg


def test_lpips_backbone_flag_reaches_the_factory(tmp_path, monkeypatch):
    """--lpips_backbone is a real path flag, not just a name in an error message."""
    import torch
    import torchvision

    from alignprop.reward_flags import RewardFlags, build_reward_from_flags

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    weights = tmp_path / "squeezenet1_1-b8a52dc0.pth"  # the smallest LPIPS trunk
    torch.save(torchvision.models.squeezenet1_1().state_dict(), weights)
    reward = build_reward_from_flags(RewardFlags(similarity_backend="lpips", lpips_net="squeeze",
                                                 lpips_backbone=str(weights),
                                                 lpips_resolution=32), device="cpu")
    x = torch.rand(1, 3, 32, 32)
    score, _ = reward(x, x, None)
    assert torch.allclose(score, torch.ones(1), atol=1e-5)  # identical images: 1 - 0


def test_scorer_names_model_id_for_a_missing_model(tmp_path, capsys):
    import internvl_scorer
    from common.images import save_image

    import torch

    save_image(torch.rand(3, 32, 32), tmp_path / "a.png")
    assert internvl_scorer.main([str(tmp_path / "a.png"), "--model_id", "./no/model",
                                 "--device", "auto"]) == 2
    line = _one_error_line(capsys.readouterr().err, "internvl_scorer.py")
    assert "--model_id" in line and "--internvl_model_id" not in line, line


def test_prompt_file_means_the_same_in_training_and_generate(tmp_path):
    """One instruction per line (drawn per sample from the seed) or a JSON name -> instruction."""
    import torch

    from alignprop.data import ImageFolder
    from alignprop.generate import read_prompts
    from common.images import save_image

    data = tmp_path / "data"
    for name in ("a.png", "b.png", "c.png"):
        save_image(torch.rand(3, 16, 16), data / name)
    names = ["a.png", "b.png", "c.png"]
    lines = ["make it warmer", "make it brighter", "# a comment", "", "remove the haze"]
    txt = tmp_path / "prompts.txt"
    txt.write_text("\n".join(lines))
    expected = {"make it warmer", "make it brighter", "remove the haze"}
    folder = ImageFolder(data, 16, 16, "default", prompt_file=txt, seed=3)
    assert set(folder.all_prompts()) == expected
    drawn_train = {folder.prompt_for(0, j) for j in range(40)}
    gen = read_prompts(None, str(txt), names, seed=3)
    assert drawn_train == expected and set(gen.values()) <= expected
    # the same draw for the same (seed, sample number) in both commands
    assert [gen[n] for n in names] == [folder.prompt_for(0, j) for j in range(3)]

    table = tmp_path / "prompts.json"
    table.write_text(json.dumps({"a": "stem key", "b.png": "name key"}))
    folder = ImageFolder(data, 16, 16, "default", prompt_file=table)
    train_map = {it.path.name: it.prompt for it in folder.items}
    assert train_map == {"a.png": "stem key", "b.png": "name key", "c.png": "default"}
    assert read_prompts("default", str(table), names) == train_map


def test_one_reader_refuses_empty_files_the_same_way(tmp_path):
    from alignprop.data import ImageFolder
    from alignprop.generate import read_prompts
    from common.cli import UserError
    from common.images import save_image

    import torch

    save_image(torch.rand(3, 16, 16), tmp_path / "d" / "a.png")
    empty = tmp_path / "p.txt"
    empty.write_text("# only a comment\n\n")
    for call in (lambda: ImageFolder(tmp_path / "d", 16, 16, "x", prompt_file=empty),
                 lambda: read_prompts(None, str(empty), ["a.png"])):
        with pytest.raises(UserError, match="--prompt_file .* holds no prompt"):
            call()
