"""--semantics original (issue 22): defaults from the table, step counting, TRL's truncation,
the original's texts from a clone, the one-line hints; values themselves are compared with the
original's own in tests/test_original_reference.py."""
import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignprop.config import (BUILTIN_PRESETS, DEFAULT_PROMPT, TrainConfig, parse_config,
                              startup_notes)
from alignprop.reward_flags import RewardFlags, reward_specs
from alignprop.trainer import choose_grad_steps, train
from common.cli import UserError
from common.images import save_image
from common.original_flags import (NO_DEFAULT, ORIGINAL_DEFAULTS, our_dest, parse_default,
                                   semantics_hint, table)
from common.original_repo import OriginalRepoError, read_original_texts

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def data(tmp_path):
    for i in range(3):
        save_image(torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(i)),
                   tmp_path / "data" / f"{i}.png")
    return str(tmp_path / "data")


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b))
    return a == b


# --------------------------------------------------------------------------- the table
@pytest.mark.parametrize("command", ["train", "scorer", "benchmark"])
def test_every_original_default_is_the_tables(command):
    """Every row of the table either names its default among ORIGINAL_DEFAULTS (equal to the
    table's default column) or says why it has none."""
    for flag in table(command):
        if flag.name in NO_DEFAULT:
            continue
        dest = our_dest(flag)
        assert dest in ORIGINAL_DEFAULTS[command], (flag.name, dest)
        want = parse_default(flag.default)
        got = ORIGINAL_DEFAULTS[command][dest]
        if isinstance(got, str) and isinstance(want, (int, float)):
            got = parse_default(got)
        assert _same(got, want), (flag.name, got, want)


def test_original_mode_parses_to_the_original_defaults(data):
    train_cfg, rewards = parse_config(["--semantics", "original", "--data_dir", data])
    for dest, want in ORIGINAL_DEFAULTS["train"].items():
        if dest == "data_dir":    # given
            continue
        if dest == "num_epochs":  # TRL's epoch is one optimizer update
            assert train_cfg.max_train_steps == want
            continue
        obj = train_cfg if hasattr(train_cfg, dest) else rewards
        assert _same(getattr(obj, dest), want), dest
    # --config original is the same switch
    again = parse_config(["--config", "original", "--data_dir", data])
    assert again == (train_cfg, rewards) and BUILTIN_PRESETS["original"] == {
        "semantics": "original"}
    # a flag given on the command line still wins
    t2, r2 = parse_config(["--semantics", "original", "--data_dir", data, "--lora_rank", "4",
                           "--num_epochs", "2"])
    assert (t2.lora_rank, t2.max_train_steps) == (4, 2)
    t3, _ = parse_config(["--semantics", "original", "--data_dir", data, "--num_epochs", "2",
                          "--max_train_steps", "7"])
    assert t3.max_train_steps == 7


def test_scorer_and_benchmark_original_defaults():
    import benchmark_anti_periodic as bench
    import internvl_scorer

    args = internvl_scorer.build_parser("original").parse_args(["a.png"])
    for dest, want in ORIGINAL_DEFAULTS["scorer"].items():
        assert _same(getattr(args, dest), want), dest
    assert args.format == "original"
    args = bench.build_parser("original").parse_args([])
    for dest, want in ORIGINAL_DEFAULTS["benchmark"].items():
        got = getattr(args, dest)
        assert _same(str(got) if isinstance(got, Path) else got, want), dest
    assert args.tau is None


# --------------------------------------------------------------------------- reward terms
def test_original_mode_builds_the_original_terms(data, tmp_path):
    ref = tmp_path / "ref.png"
    save_image(torch.rand(3, 16, 16), ref)
    argv = ["--semantics", "original", "--data_dir", data, "--grid_ratio_weight", "1",
            "--aesthetic_model_type", "internvl", "--style_reference", str(ref),
            "--similarity_backend", "internvl-content", "--image_reward_scale", "1.5",
            "--sharpness_backend", "internvl", "--sharpness_reward_scale", "2",
            "--aesthetic_reward_scale", "6", "--internvl_model_id", "tiny"]
    _, rewards = parse_config(argv)
    specs = {s["term"]: s for s in reward_specs(rewards)}
    assert {t: (s["name"], s["weight"]) for t, s in specs.items()} == {
        "grid": ("original_grid", 1.0), "brightness": ("original_brightness", 0.2),
        "crispness": ("original_crispness", 0.2), "style": ("original_vlm", 6.0),
        "similarity": ("original_vlm", 1.5), "sharpness": ("original_vlm", 2.0)}
    assert specs["style"]["task"] == "similarity" and specs["style"]["reference"] == str(ref)
    # no clone: our presets for the original's use cases, and one line saying so
    assert (specs["style"]["prompt"], specs["sharpness"]["prompt"]) == ("photoshoot", "eyes_skin")
    train_cfg, _ = parse_config(argv)
    notes = startup_notes(argv, train_cfg, rewards)
    assert any("our presets" in n for n in notes)
    assert any("carry no gradient" in n for n in notes)   # TRL's truncation, said up front


def test_original_mode_refuses_qwen_and_lpips_is_exp(data):
    with pytest.raises(ValueError, match="InternVL only"):
        parse_config(["--semantics", "original", "--data_dir", data, "--aesthetic_model_type",
                      "qwen"])
    _, rewards = parse_config(["--semantics", "original", "--data_dir", data])
    lp = next(s for s in reward_specs(rewards) if s["term"] == "similarity")
    assert (lp["name"], lp["form"], lp["resolution"], lp["weight"]) == ("lpips", "exp", None, 0.5)

    from rewards.perceptual import make_lpips_reward

    x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    torch.manual_seed(0)   # the same random trunk for both
    lin = make_lpips_reward(pretrained=False, resolution=None, device="cpu")
    torch.manual_seed(0)
    exp = make_lpips_reward(pretrained=False, resolution=None, device="cpu", form="exp")
    d = 1 - lin(x, y)[0]
    torch.testing.assert_close(exp(x, y)[0], torch.exp(-5 * d).clamp_min(1e-4))
    assert exp(x, x)[0].allclose(torch.ones(2))


# --------------------------------------------------------------------------- truncation
def test_per_step_truncation_draws_t_for_every_step():
    cfg = TrainConfig(data_dir="x", sample_num_steps=4, truncated_backprop="per_step",
                      truncation_t_min=2, truncation_t_max=2)
    assert choose_grad_steps(cfg, 0, 0, 0) == [False, False, True, True]
    cfg = TrainConfig(data_dir="x", sample_num_steps=5, truncated_backprop="per_step")
    draws = [choose_grad_steps(cfg, s, m, 0) for s in range(400) for m in range(5)]
    assert draws[:10] == [choose_grad_steps(cfg, 0, m, 0) for m in range(5)] + [
        choose_grad_steps(cfg, 1, m, 0) for m in range(5)]           # resume-stable
    for i in range(5):  # TRL: step i carries gradients with probability (i + 1) / 51
        share = sum(d[i] for d in draws) / len(draws)
        assert abs(share - (i + 1) / 51) < 0.015, (i, share)
    none = sum(not any(d) for d in draws) / len(draws)
    assert abs(none - math.prod(1 - (i + 1) / 51 for i in range(5))) < 0.03


def test_masked_sampling_matches_fixed_k_and_keeps_the_latents_path():
    from alignprop.sampler import KontextSampler, encode_prompts, stack_prompt_embeds
    from alignprop.tiny_kontext import build_tiny_pipeline

    pipe = build_tiny_pipeline()
    sampler = KontextSampler(pipe.transformer, pipe.vae, pipe.scheduler, pipe.transformer.config,
                             32, 32, 3, guidance_scale=5.0)
    text = stack_prompt_embeds(encode_prompts(pipe, ["a"], "cpu"), ["a"])
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    noise = sampler.initial_noise(1, torch.Generator().manual_seed(0), "cpu")
    params = [p for p in pipe.transformer.parameters()][:4]
    for p in pipe.transformer.parameters():
        p.requires_grad_(True)

    def grads(**kw):
        pipe.transformer.zero_grad()
        out = sampler.sample(images, text, noise=noise.clone(), **kw)
        if not out.requires_grad:
            return out, None
        out.sum().backward()
        return out, [p.grad.clone() for p in params]

    fixed, g_fixed = grads(backprop_steps=1)
    masked, g_masked = grads(grad_steps=[False, False, True])
    torch.testing.assert_close(masked, fixed, rtol=0, atol=0)
    for a, b in zip(g_fixed, g_masked):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    off, g_off = grads(grad_steps=[False] * 3)
    assert g_off is None
    torch.testing.assert_close(off, fixed, rtol=0, atol=0)
    first, g_first = grads(grad_steps=[True, False, False])
    torch.testing.assert_close(first, fixed, rtol=0, atol=0)
    assert any(g.abs().sum() > 0 for g in g_first)   # through the later steps' latents


def test_a_micro_batch_without_gradient_is_counted_not_fatal(tmp_path, data):
    cfg = TrainConfig(pretrained_model="tiny", data_dir=data, output_dir=str(tmp_path / "out"),
                      image_height=16, image_width=16, sample_num_steps=2, max_train_steps=1,
                      save_freq=0, log_image_freq=0, log_with="none", lora_rank=2,
                      mixed_precision="no", truncated_backprop="per_step", truncation_t_min=9,
                      truncation_t_max=9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train(cfg, RewardFlags(brightness_anchor_weight=1.0, semantics="original"))
    assert result.global_step == 1 and result.skipped_steps == 0
    assert result.history[-1]["train/no_grad_micro_batches"] == 1.0
    lora = load_file(tmp_path / "out" / "pytorch_lora_weights.safetensors")
    assert all(torch.count_nonzero(v) == 0 for k, v in lora.items() if "lora_B" in k)


def test_original_mode_cycles_the_folder_in_order():
    from alignprop.data import SampleStream

    s = SampleStream(3, seed=0, shuffle=False)
    assert [i for _, i in s.take(7, 0, 7)] == [0, 1, 2, 0, 1, 2, 0]


# --------------------------------------------------------------------------- --original_repo
def _fake_clone(root: Path, single: str = "Rate it 0 to 9.") -> Path:
    """A folder laid out like the original's files, with texts of ours."""
    root.mkdir(parents=True, exist_ok=True)
    fns = "\n".join(
        f"    def {name}():\n        return (\n            {text!r}\n        )\n"
        for name, text in [("prompt_single", single), ("prompt_sharpness", "Sharp? 0 to 9."),
                           ("prompt_pair_choice", "Which? 1 or 2."),
                           ("prompt_similarity", "Same style? 0 to 9."),
                           ("prompt_content_similarity", "Same content? 0 to 9."),
                           ("prompt_triplet", "Closer? 1 or 2.")])
    artifact = ("    def prompt_artifact():\n        if artifact_refs is not None:\n"
                "            return 'With refs: 0 to 9.'\n        else:\n"
                "            return 'Grid? 0 to 9.'\n")
    (root / "internvl_scorer.py").write_text(
        "def make_reward_fn(artifact_refs=None):\n" + fns + artifact + "    return None\n")
    (root / "alignprop_fluxkontext.py").write_text(
        "def load_prompts(path):\n    if path is None:\n        return ['make it nicer']\n"
        "    return []\n")
    return root


def test_original_repo_texts_are_read_without_running_code(tmp_path, data):
    clone = _fake_clone(tmp_path / "clone")
    texts = read_original_texts(clone)
    assert texts.questions["single"] == "Rate it 0 to 9."
    assert (texts.questions["artifact_refs"], texts.questions["artifact"]) == (
        "With refs: 0 to 9.", "Grid? 0 to 9.")
    assert texts.instruction == "make it nicer"
    assert set(texts.changed) == set(texts.questions) | {"instruction"}
    assert "changed since commit" in texts.summary()
    train_cfg, rewards = parse_config(["--semantics", "original", "--data_dir", data,
                                       "--original_repo", str(clone), "--aesthetic_model_type",
                                       "internvl", "--aesthetic_reward_scale", "1",
                                       "--internvl_model_id", "tiny"])
    assert train_cfg.prompt == "make it nicer"
    spec = next(s for s in reward_specs(rewards) if s["term"] == "aesthetic")
    assert spec["prompt"] == "Rate it 0 to 9."
    t2, _ = parse_config(["--semantics", "original", "--data_dir", data, "--original_repo",
                          str(clone), "--prompt", "mine"])
    assert t2.prompt == "mine"
    t3, _ = parse_config(["--data_dir", data, "--grid_ratio_weight", "1"])
    assert t3.prompt == DEFAULT_PROMPT


def test_original_repo_errors_are_one_line(tmp_path):
    with pytest.raises(OriginalRepoError, match="no internvl_scorer.py"):
        read_original_texts(tmp_path)
    clone = _fake_clone(tmp_path / "c")
    text = (clone / "internvl_scorer.py").read_text().replace("def prompt_single", "def other")
    (clone / "internvl_scorer.py").write_text(text)
    with pytest.raises(OriginalRepoError, match="prompt_single"):
        read_original_texts(clone)
    assert issubclass(OriginalRepoError, UserError)


# --------------------------------------------------------------------------- hints
def test_original_command_lines_get_one_hint_line():
    readme = ["--data_dir", "./train_images", "--num_epochs", "1000000", "--grid_ratio_weight",
              "1", "--crispness_anchor_weight", "0.2"]
    hint = semantics_hint(readme, "train")
    assert "--semantics original" in hint and "--num_epochs" in hint
    assert semantics_hint(readme + ["--semantics", "ours"], "train") is None
    assert semantics_hint(readme + ["--max_train_steps", "3"], "train") is None   # ours only
    assert semantics_hint(["--task", "pair"], "scorer") is not None
    assert semantics_hint(["--artifacts_dir", "a", "--out", "r.csv"], "benchmark") is not None
    from tests.test_original_flags import ORIGINAL_README_TRAIN

    words = ORIGINAL_README_TRAIN.replace("\\\n", " ").split()[3:]   # after the script name
    assert semantics_hint(words, "train") is not None   # the original README's command


def test_original_readme_training_command_in_original_mode(tmp_path):
    """The original README's command + --semantics original trains the original's objective
    (tiny models, one step)."""
    import os
    import shlex
    import subprocess
    import sys

    from tests.test_original_flags import ORIGINAL_README_TRAIN, TINY_OVERRIDES

    save_image(torch.rand(3, 32, 32), tmp_path / "train_images" / "sub" / "a.png")
    save_image(torch.rand(3, 32, 32), tmp_path / "reference.png")
    words = shlex.split(ORIGINAL_README_TRAIN.replace("\\\n", " ").replace("$REFERENCE",
                                                                            "reference.png"))
    cmd = [sys.executable, str(ROOT / words[2]), *words[3:], *TINY_OVERRIDES,
           "--output_dir", "out", "--semantics", "original"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads((tmp_path / "out" / "run_config.json").read_text())
    terms = {t["term"]: t for t in run["rewards"]}
    assert {k: (v["reward"], v["weight"]) for k, v in terms.items()} == {
        "grid": ("original_grid", 1.0), "brightness": ("original_brightness", 10.0),
        "crispness": ("original_crispness", 0.2), "similarity": ("original_vlm", 1.5),
        "sharpness": ("original_vlm", 2.0), "style": ("original_vlm", 6.0)}
    cfg = run["config"]
    assert (cfg["guidance_scale"], cfg["truncated_backprop"], cfg["sample_num_steps"],
            cfg["lora_rank"], cfg["semantics"]) == (5.0, "per_step", 5, 32, "original")
    assert "our presets" in proc.stderr and "carry no gradient" in proc.stderr


# --------------------------------------------------------------------------- --recursive
def test_every_tool_searches_sub_folders_by_default(tmp_path, capsys):
    """Folders are searched recursively (the original's rglob), with a count per sub-folder;
    --no_recursive / --no-recursive keeps the top level only."""
    import internvl_scorer

    from alignprop.data import ImageFolder

    tree = tmp_path / "ffhq"
    for rel in ("00000/a.png", "00000/b.png", "01000/c.png", "d.png"):
        save_image(torch.rand(3, 16, 16), tree / rel)
    assert len(ImageFolder(tree, 16, 16, "p")) == 4
    assert len(ImageFolder(tree, 16, 16, "p", recursive=False)) == 1
    train_cfg, _ = parse_config(["--data_dir", str(tree), "--grid_ratio_weight", "1"])
    assert train_cfg.recursive
    train_cfg, _ = parse_config(["--data_dir", str(tree), "--grid_ratio_weight", "1",
                                 "--no_recursive"])
    assert not train_cfg.recursive
    assert internvl_scorer.main([str(tree), "--model_id", "tiny", "--device", "cpu",
                                 "--format", "csv"]) == 0
    out = capsys.readouterr()
    rows = out.out.strip().splitlines()[1:]
    assert len(rows) == 4 and any("00000/a.png" in r for r in rows)   # relative paths kept
    assert "4 image(s)" in out.err and "00000 (2)" in out.err and "01000 (1)" in out.err
    assert internvl_scorer.main([str(tree), "--model_id", "tiny", "--device", "cpu",
                                 "--format", "csv", "--no-recursive"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2
