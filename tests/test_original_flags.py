"""Every flag of the original scripts (../shared/SEED_INTERFACE.md) through our three parsers.

Each flag is either accepted with the original meaning (checked on the parsed values) or
refused with one line that names what to use instead. The lists below are written from the
facts file, independently of common/original_flags.py; a test checks the two agree.
"""
import pytest
import torch

from common.cli import UserError
from common.original_flags import table

# ---------------------------------------------------------------------------- trainer
# original flag -> (values, {attribute: expected}) or (values, "refused: <needle>")
TRAIN = {
    "--pretrained_model": (["tiny"], {"pretrained_model": "tiny"}),
    "--pretrained_revision": (["main"], {"revision": "main"}),
    "--use_lora": (["True"], {"lora_rank": 16}),
    "--lora_rank": (["8"], {"lora_rank": 8}),
    "--hf_hub_aesthetic_model_id": (["trl-lib/ddpo-aesthetic-predictor"],
                                    {"aesthetic_head": "trl-lib/ddpo-aesthetic-predictor"}),
    "--hf_hub_aesthetic_model_filename": (["aesthetic-model.pth"],
                                          {"aesthetic_head_filename": "aesthetic-model.pth"}),
    "--aesthetic_model_type": (["v2.5"], {"aesthetic_model_type": "v2.5"}),
    "--aesthetic_reward_scale": (["0.4"], {"aesthetic_reward_scale": 0.4}),
    "--similarity_backend": (["lpips"], {"similarity_backend": "lpips"}),
    "--image_reward_scale": (["0.5"], {"image_reward_scale": 0.5}),
    "--photo_backend": (["none"], {"photo_backend": "none"}),
    "--photo_reward_scale": (["0.0"], {"photo_reward_scale": 0.0}),
    "--aide_repo": (["./AIDE"], {"aide_repo": "./AIDE"}),
    "--aide_resume": (["ckpt.pth"], {"aide_resume": "ckpt.pth"}),
    "--grid_ratio_weight": (["0.5"], {"grid_ratio_weight": 0.5}),
    "--grid_ratio_period": (["16"], {"grid_ratio_period": 16}),
    "--grid_ratio_max_harm": (["3"], {"grid_ratio_max_harm": 3}),
    "--grid_ratio_sigma_bins": (["0.8"], {"grid_ratio_sigma_bins": 0.8}),
    "--grid_ratio_tau": (["2e-4"], {"grid_tau": 2e-4}),
    "--grid_eval_resize": (["512"], {"grid_eval_resize": 512}),
    "--brightness_anchor_weight": (["0.2"], {"brightness_anchor_weight": 0.2}),
    "--brightness_target": (["0.5"], {"brightness_target": 0.5}),
    "--brightness_band": (["0.06"], {"brightness_band": 0.06}),
    "--crispness_anchor_weight": (["0.3"], {"crispness_weight": 0.3}),
    "--sharpness_backend": (["none"], {"sharpness_backend": "none"}),
    "--sharpness_reward_scale": (["0.0"], {"sharpness_reward_scale": 0.0}),
    "--data_dir": (None, {}),  # given in every call
    "--prompt_list_file": (["{prompts}"], {"prompt_file": "{prompts}"}),
    "--style_reference": (["{ref}"], {"style_reference": "{ref}"}),
    "--debug_images": ([], {"log_image_freq": 1}),
    "--exp_name": (["exp"], {"tracker_run_name": "exp"}),
    "--run_name": (["run1"], {"tracker_run_name": "run1"}),
    "--logdir": (["{tmp}/logs"], {"output_dir": "{tmp}/logs"}),
    "--tracker_project_name": (["trl"], {"tracker_project_name": "trl"}),
    "--tracker_kwargs": (['{"wandb": {"entity": "me"}}'],
                         {"tracker_kwargs": '{"wandb": {"entity": "me"}}'}),
    "--accelerator_kwargs": (["{}"], "refused: accelerate config"),
    "--project_kwargs": (["{}"], "refused: --checkpoints_total_limit"),
    "--num_epochs": (["100"], {"num_epochs": 100}),
    "--save_freq": (["1"], {"save_freq": 1}),
    "--num_checkpoint_limit": (["5"], {"checkpoints_total_limit": 5}),
    "--mixed_precision": (["no"], {"mixed_precision": "no"}),
    "--allow_tf32": (["True"], {"allow_tf32": True}),
    "--resume_from": (["latest"], {"resume_from": "latest"}),
    "--seed": (["0"], {"seed": 0}),
    "--log_with": (["none"], {"log_with": "none"}),
    "--log_image_freq": (["25"], {"log_image_freq": 25}),
    "--sample_num_steps": (["50"], {"sample_num_steps": 50}),
    "--image_height": (["256"], {"image_height": 256}),
    "--image_width": (["256"], {"image_width": 256}),
    "--sample_eta": (["1.0"], {"sample_num_steps": 28}),   # never read by a flow sampler
    "--sample_guidance_scale": (["5.0"], {"guidance_scale": 5.0}),
    "--train_batch_size": (["1"], {"train_batch_size": 1}),
    "--train_learning_rate": (["1e-3"], {"train_learning_rate": 1e-3}),
    "--train_gradient_accumulation_steps": (["2"], {"train_gradient_accumulation_steps": 2}),
    "--train_use_8bit_adam": (["False"], {"use_8bit_adam": False}),
    "--train_adam_beta1": (["0.8"], {"adam_beta1": 0.8}),
    "--train_adam_beta2": (["0.99"], {"adam_beta2": 0.99}),
    "--train_adam_weight_decay": (["1e-2"], {"adam_weight_decay": 1e-2}),
    "--train_adam_epsilon": (["1e-6"], {"adam_epsilon": 1e-6}),
    "--train_max_grad_norm": (["0.5"], {"max_grad_norm": 0.5}),
    "--train_gradient_checkpointing": (["True"], {"gradient_checkpointing": True}),
    # TRL detaches steps with index < T: with 28 steps, T=26 leaves the last 2 with gradients;
    # random: T drawn again for every denoising step
    "--truncated_backprop_rand": (["False"], {"truncated_backprop": "fixed", "backprop_steps": 1}),
    "--truncated_backprop_timestep": (["26"], {"truncated_backprop": "fixed", "backprop_steps": 2}),
    "--truncated_rand_backprop_minmax": (["20", "26"], {"truncated_backprop": "per_step",
                                                        "truncation_t_min": 20,
                                                        "truncation_t_max": 26}),
    "--negative_prompts": (["blurry"], "refused: --prompt"),
    "--push_to_hub": (["True"], {"push_to_hub": True}),   # uploads (tests/test_model_card.py)
}


@pytest.fixture
def files(tmp_path):
    from common.images import save_image

    save_image(torch.rand(3, 32, 32), tmp_path / "data" / "a.png")
    save_image(torch.rand(3, 32, 32), tmp_path / "ref.png")
    (tmp_path / "prompts.txt").write_text("make it warmer\nmake it brighter\n")
    return {"tmp": str(tmp_path), "ref": str(tmp_path / "ref.png"),
            "prompts": str(tmp_path / "prompts.txt"), "data": str(tmp_path / "data")}


def _fill(value, files):
    if not isinstance(value, str):
        return value
    for key, path in files.items():
        value = value.replace("{" + key + "}", path)
    return value


def test_train_list_matches_the_table():
    assert set(TRAIN) == {f.name for f in table("train")}


@pytest.mark.parametrize("flag", sorted(TRAIN))
def test_every_original_training_flag(flag, files):
    from alignprop.config import parse_config

    values, expect = TRAIN[flag]
    argv = ["--data_dir", files["data"], "--grid_ratio_weight", "1"]
    if values is not None:
        argv += [flag, *[_fill(v, files) for v in values]]
    if isinstance(expect, str):
        needle = expect.removeprefix("refused: ")
        with pytest.raises(UserError) as err:
            parse_config(argv)
        msg = str(err.value)
        assert flag in msg and needle in msg and "\n" not in msg, msg
        return
    train, rewards = parse_config(argv)
    for attr, want in expect.items():
        obj = train if hasattr(train, attr) else rewards
        assert getattr(obj, attr) == _fill(want, files), (flag, attr)


def test_refusals_that_accept_the_harmless_value(files):
    from alignprop.config import parse_config

    base = ["--data_dir", files["data"], "--grid_ratio_weight", "1"]
    parse_config(base + ["--push_to_hub", "false", "--sample_eta", "0", "--use_lora", "true"])
    with pytest.raises(UserError, match="--use_lora .*full fine-tuning"):
        parse_config(base + ["--use_lora", "false"])


def test_original_names_work_in_presets(files, tmp_path):
    from alignprop.config import parse_config

    preset = tmp_path / "orig.yaml"
    preset.write_text(f"data_dir: {files['data']}\ngrid_ratio_weight: 1\n"
                      "crispness_anchor_weight: 0.3\ntrain_adam_beta1: 0.8\n"
                      "truncated_rand_backprop_minmax: [20, 26]\n")
    train, rewards = parse_config(["--config", str(preset), "--train_adam_beta1", "0.7"])
    assert rewards.crispness_weight == 0.3 and train.adam_beta1 == 0.7  # command line wins
    assert (train.truncated_backprop, train.truncation_t_min, train.truncation_t_max) == (
        "per_step", 20, 26)
    preset.write_text(f"data_dir: {files['data']}\nnegative_prompts: blurry\n")
    with pytest.raises(UserError, match="--negative_prompts"):
        parse_config(["--config", str(preset)])


def test_help_groups_the_original_flags_apart(capsys):
    from alignprop.config import parse_config

    with pytest.raises(SystemExit):
        parse_config(["--help"])
    out = capsys.readouterr().out
    assert len(out.split("\n\n")[0].splitlines()) <= 3  # a short usage line, not 150 flags
    head, _, tail = out.partition("flags of the original promptable-differentiable-rewards")
    assert tail and "--crispness_anchor_weight" in tail and "--negative_prompts" in tail
    assert "--crispness_anchor_weight" not in head and "--crispness_weight" in head


# The original README's training command, verbatim (its Quick start).
ORIGINAL_README_TRAIN = r"""
accelerate launch  alignprop_fluxkontext.py \
--data_dir ./train_images \
--mixed_precision bf16 \
--lora_rank 32 \
--log_with wandb \
--log_image_freq 16 \
--save_freq 100 \
--num_epochs 1000000 \
--image_height 512 \
--image_width 512 \
--sample_num_steps 5 \
--image_reward_scale 1.5 \
--sharpness_reward_scale 2 \
--sharpness_backend "internvl" \
--aesthetic_reward_scale 6 \
--similarity_backend "internvl-content" \
--aesthetic_model_type "internvl" \
--train_learning_rate 1e-4 \
--style_reference "$REFERENCE" \
--grid_ratio_weight 1 \
--grid_ratio_period 16 \
--grid_ratio_max_harm 3 \
--grid_ratio_sigma_bins 0.8 \
--grid_eval_resize 512 \
--brightness_target 0.45 \
--brightness_band 0.08 \
--brightness_anchor_weight 10 \
--train_gradient_accumulation_steps 4
"""
# Tiny models instead of the 12B/14B ones, a CPU-sized image, and one step instead of 1e6 epochs.
TINY_OVERRIDES = ["--pretrained_model", "tiny", "--internvl_model_id", "tiny",
                  "--image_height", "32", "--image_width", "32", "--max_train_steps", "1"]


def test_original_readme_training_command_trains_the_original_objective(tmp_path):
    import json
    import os
    import shlex
    import subprocess
    import sys
    from pathlib import Path

    from common.images import save_image

    root = Path(__file__).resolve().parents[1]
    save_image(torch.rand(3, 32, 32), tmp_path / "train_images" / "a.png")
    save_image(torch.rand(3, 32, 32), tmp_path / "reference.png")
    text = ORIGINAL_README_TRAIN.replace("\\\n", " ").replace("$REFERENCE", "reference.png")
    words = shlex.split(text)
    assert words[:2] == ["accelerate", "launch"]
    cmd = [sys.executable, str(root / words[2]), *words[3:], *TINY_OVERRIDES,
           "--output_dir", "out"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(root)}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads((tmp_path / "out" / "run_config.json").read_text())
    terms = {t["term"]: t for t in run["rewards"]}
    # the style reference in place of the aesthetic term, at the aesthetic scale
    assert {k: v["weight"] for k, v in terms.items()} == {
        "grid": 1.0, "brightness": 10.0, "crispness": 0.2, "similarity": 1.5, "sharpness": 2.0,
        "style": 6.0}
    assert terms["style"]["resolved"]["task"] == "similarity"
    assert terms["style"]["reference"] == "reference.png"
    for name in ("similarity", "sharpness", "style"):
        r = terms[name]["resolved"]
        assert (r["calibration"], r["objective"], r["temperature"]) == ("pmi_null", "expected", 1.0)
    assert run["config"]["crispness_weight"] == 0.2
    assert run["config"]["internvl_calibration"] == "pmi_null"
    metrics = (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
    assert "train/style" in json.loads(metrics[-1])


def test_original_brightness_measure_is_linear_light_with_linear_hinge():
    from alignprop.reward_flags import RewardFlags, build_reward_from_flags

    flags = RewardFlags(brightness_anchor_weight=1.0, brightness_target=0.5, brightness_band=0.06,
                        brightness_measure="original")
    reward = build_reward_from_flags(flags, device="cpu")
    gray = torch.full((1, 3, 16, 16), 0.5)  # sRGB 0.5 is 0.214 in linear light
    lin = ((0.5 + 0.055) / 1.055) ** 2.4
    score, metrics = reward(gray, gray, None)
    assert score.item() == pytest.approx(-(0.5 - 0.06 - lin), abs=1e-5)  # linear hinge
    ours = build_reward_from_flags(RewardFlags(brightness_anchor_weight=1.0, brightness_target=0.5,
                                               brightness_band=0.06), device="cpu")
    assert ours(gray, gray, None)[0].item() == 0.0  # gamma luma 0.5 is inside the band


# ---------------------------------------------------------------------------- benchmark
BENCH = {
    "--artifacts_dir": (["A"], {"artifacts_dir": "A"}),
    "--clean_dir": (["C"], {"clean_dir": "C"}),
    "--resize": (["256"], {"original_resize": 256}),   # a square: --semantics original only
    "--period": (["16"], {"period": 16.0}),
    "--max_harm": (["6"], {"max_harm": 6}),
    "--sigma_bins": (["2.0"], {"sigma_bins": 2.0}),
    "--window": (["128"], {"local_window": 128}),
    "--hop": (["32"], {"local_stride": 32}),
    "--edge_penalty": (["8.0"], {"edge_penalty": 8.0}),
    "--template_16": (["t.png"], {"template_16": "t.png"}),
    "--tau": (["0.1"], {"tau": 0.1}),
    "--combo_mode": (["abs"], {"combo_mode": "abs"}),
    "--w_local": (["0.2"], {"w_local": 0.2}),
    "--tau_global": (["0.1"], {"tau_global": 0.1}),
    "--tau_local": (["0.2"], {"tau_local": 0.2}),
    "--selective_top_p": (["0.35"], {"selective_top_p": 0.35}),
    "--selective_coverage_alpha": (["0.5"], {"selective_coverage_alpha": 0.5}),
    "--proj_harmonics": (["1,2,3"], {"proj_harmonics": "1,2,3"}),
    "--proj_top_p": (["0.35"], {"proj_top_p": 0.35}),
    "--no_proj_detach_norm": ([], {"no_proj_detach_norm": True}),
    "--out": (["x.csv"], {"out": "x.csv"}),
    "--summary_out": (["s.csv"], {"summary_out": "s.csv"}),
}


def test_bench_list_matches_the_table():
    assert set(BENCH) == {f.name for f in table("benchmark")}


@pytest.mark.parametrize("flag", sorted(BENCH))
def test_every_original_benchmark_flag(flag):
    from pathlib import Path

    import benchmark_anti_periodic as bench

    values, expect = BENCH[flag]
    args = bench.build_parser().parse_args([flag, *values])
    for attr, want in expect.items():
        got = getattr(args, attr)
        assert (str(got) if isinstance(got, Path) else got) == want, (flag, attr, got)


def test_original_readme_benchmark_command_writes_both_files_with_baselines(tmp_path, monkeypatch,
                                                                            capsys):
    """`python benchmark_anti_periodic.py --artifacts_dir ./artifacts --clean_dir ./clean_images
    --out results.csv` (the original README's): per-image CSV + the summary, old and new columns."""
    import csv

    import benchmark_anti_periodic as bench
    from common.images import save_image

    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    tile = (((xx % 16) < 2) | ((yy % 16) < 2)).float() * 0.1
    for i in range(3):
        base = torch.rand(3, 8, 8, generator=g).repeat_interleave(8, 1).repeat_interleave(8, 2)
        save_image(base, tmp_path / "clean_images" / f"c{i}.png")
        save_image((base * 0.9 + tile).clamp(0, 1), tmp_path / "artifacts" / f"a{i}.png")
    monkeypatch.chdir(tmp_path)
    assert bench.main(["--artifacts_dir", "./artifacts", "--clean_dir", "./clean_images",
                       "--out", "results.csv", "--no_progress"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    # our columns go to our file name; the original's name holds only its own columns
    # (--semantics original, tests/test_original_reference.py)
    assert not (tmp_path / "anti_periodic_summary.csv").exists()
    summary = {r["penalty"]: r
               for r in csv.DictReader(open(tmp_path / "grid_benchmark_summary.csv"))}
    baselines = ["fft_global", "local", "local_adaptive", "combo", "guard_dc_safe",
                 "selective_local", "proj_cosine", "amp_hinge", "original_trainer"]
    assert len(rows) == 6 and all(c in rows[0] for c in ["grid"] + baselines)
    for name in ["grid"] + baselines:
        assert 0.0 <= float(summary[name]["auc"]) <= 1.0, name
    assert float(summary["grid"]["auc"]) == 1.0
    assert float(summary["fft_global"]["auc"]) > 0.5  # the old measure sees this strong grid too


# ---------------------------------------------------------------------------- scorer
SCORER = {
    "inputs": (None, {"paths": ["a.png"]}),
    "--task": (["artifact"], {"task": "artifact"}),
    "--objective": (["margin"], {"objective": "margin"}),
    "--device": (["auto"], {"device": "auto"}),
    "--dtype": (["bf16"], {"dtype": "bf16"}),
    "--batch_size": (["4"], {"batch_size": 4}),
    "--model_id": (["tiny"], {"model_id": "tiny"}),
    "--temperature": (["0.5"], {"temperature": 0.5}),
    "--margin_temp": (["2.0"], {"margin_temp": 2.0}),
    "--entropy_coef": (["0.1"], {"original_entropy_coef": 0.1}),   # in nats: see below
    "--calibration": (["pmi_null"], {"calibration": "pmi_null"}),
    "--print_probs": ([], {"print_probs": True}),
    "--trace_layers": ([], {"trace_layers": True}),
    "--print_layer_logprobs": ([], {"print_layer_logprobs": True}),
    "--print_layer_probs": ([], {"print_layer_probs": True}),
    "--artifact_ref1": (["g1.png"], {"artifact_ref1": "g1.png"}),
    "--artifact_ref2": (["g2.png"], {"artifact_ref2": "g2.png"}),
    "--viz_grads": ([], {"viz_grads": True}),
    "--viz_outdir": (["debug_images"], {"viz_outdir": "debug_images"}),
    "--viz_alpha": (["0.6"], {"viz_alpha": 0.6}),
    "--viz_norm": (["log"], {"viz_norm": "log"}),
    "--viz_pmin": (["2"], {"viz_pmin": 2.0}),
    "--viz_pmax": (["98"], {"viz_pmax": 98.0}),
    "--viz_log_alpha": (["10"], {"viz_log_alpha": 10.0}),
    "--viz_blur": (["1.5"], {"viz_blur": 1.5}),
}


def test_scorer_list_matches_the_table():
    assert set(SCORER) == {f.name for f in table("scorer")}


@pytest.mark.parametrize("flag", sorted(SCORER))
def test_every_original_scorer_flag(flag):
    import internvl_scorer

    values, expect = SCORER[flag]
    argv = ["a.png"] + ([flag, *values] if values is not None else [])
    args = internvl_scorer.build_parser().parse_args(argv)
    for attr, want in expect.items():
        assert getattr(args, attr) == want, (flag, attr)


@pytest.fixture(scope="module")
def tiny_vlm_pics(tmp_path_factory):
    from common.images import save_image

    d = tmp_path_factory.mktemp("pics")
    g = torch.Generator().manual_seed(1)
    for name in ("a", "b", "g1", "g2"):
        save_image(torch.rand(3, 32, 32, generator=g), d / f"{name}.png")
    return d


def test_layer_trace_ends_at_the_distribution_that_is_scored(tiny_vlm_pics):
    from common.images import load_image
    from rewards.vlm import make_vlm_reward

    x = torch.stack([load_image(tiny_vlm_pics / n) for n in ("a.png", "b.png")])
    single = make_vlm_reward("single", model_id="tiny", dtype="float32", device="cpu")
    (trace,) = single.trace_layers([x])
    out = single.score_slots([x])
    n_layers = single.bundle.model.config.text_config.num_hidden_layers
    assert trace.shape == (2, n_layers + 1, 10)
    torch.testing.assert_close(trace[:, -1], out.logprobs[0].log_softmax(-1), atol=1e-5, rtol=1e-4)
    pair = make_vlm_reward("pair", model_id="tiny", dtype="float32", device="cpu")
    assert [t.shape for t in pair.trace_layers([x[:1], x[1:]])] == [(1, n_layers + 1, 2)] * 2


def test_margin_temp_divides_the_margin(tiny_vlm_pics):
    from common.images import load_image
    from rewards.vlm import make_vlm_reward

    x = load_image(tiny_vlm_pics / "a.png")[None]
    s = [make_vlm_reward("single", model_id="tiny", dtype="float32", device="cpu",
                         objective="margin", margin_temp=t).score_slots([x]).scores for t in (1, 4)]
    torch.testing.assert_close(torch.logit(s[1]), torch.logit(s[0]) / 4, atol=1e-5, rtol=1e-4)


def test_artifact_task_with_two_example_images(tiny_vlm_pics, capsys):
    import internvl_scorer
    from rewards.vlm import make_vlm_reward

    with_refs = make_vlm_reward("artifact", model_id="tiny", dtype="float32", device="cpu",
                                calibration="pmi_null",
                                artifact_refs=[tiny_vlm_pics / "g1.png", tiny_vlm_pics / "g2.png"])
    assert with_refs.n_images == 3 and "Image 3" in with_refs.prompt
    assert with_refs.prompt_template.count("Image 1:") == 1
    assert with_refs.describe()["artifact_refs"] == [str(tiny_vlm_pics / "g1.png"),
                                                      str(tiny_vlm_pics / "g2.png")]
    with pytest.raises(ValueError, match="artifact"):
        make_vlm_reward("single", model_id="tiny", dtype="float32", device="cpu",
                        artifact_refs=[tiny_vlm_pics / "g1.png", tiny_vlm_pics / "g2.png"])
    argv = [str(tiny_vlm_pics / "a.png"), "--model_id", "tiny", "--task", "artifact",
            "--artifact_ref1", str(tiny_vlm_pics / "g1.png"), "--artifact_ref2",
            str(tiny_vlm_pics / "g2.png"), "--format", "csv", "--print_layer_probs"]
    assert internvl_scorer.main(argv) == 0
    captured = capsys.readouterr()
    header, row = captured.out.strip().splitlines()
    assert header == "image,score,layers,answer_from_layer"
    assert "answer probabilities per layer" in captured.err  # csv stays clean on stdout
    assert internvl_scorer.main(argv[:5] + ["--artifact_ref1", "x.png"]) == 2
    assert "go together" in capsys.readouterr().err


def test_prompt_presets_by_name_in_training_and_scorer(tiny_vlm_pics, capsys, files):
    import internvl_scorer
    from alignprop.config import parse_config
    from alignprop.reward_flags import build_reward_from_flags
    from rewards.prompt_presets import PRESETS

    assert internvl_scorer.main(["--list_prompts"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in ("studio", "eyes_skin", "photoshoot", "same_subject"))
    assert "0 to 9" in PRESETS["studio"].prompt  # each preset states its answer scale
    _, flags = parse_config(["--data_dir", files["data"], "--aesthetic_model_type", "internvl",
                             "--aesthetic_prompt", "studio", "--internvl_model_id", "tiny",
                             "--crispness_weight", "0"])
    reward = build_reward_from_flags(flags, device="cpu")
    assert reward.terms[0].fn.prompt == PRESETS["studio"].prompt
    assert internvl_scorer.main([str(tiny_vlm_pics / "a.png"), "--model_id", "tiny",
                                 "--prompt", "photoshoot"]) == 2
    assert "written for task 'similarity'" in capsys.readouterr().err


def test_original_readme_scorer_commands(tiny_vlm_pics, capsys, monkeypatch):
    """The original README's four scorer examples, unchanged but for --model_id tiny."""
    import shlex

    import internvl_scorer

    monkeypatch.chdir(tiny_vlm_pics)
    for name in ("image1.jpg", "img1.jpg", "img2.jpg", "ref.jpg", "test.jpg", "blurry.jpg"):
        (tiny_vlm_pics / name).write_bytes((tiny_vlm_pics / "a.png").read_bytes())
    examples = ["python internvl_scorer.py image1.jpg --task single",
                "python internvl_scorer.py img1.jpg img2.jpg --task pair",
                "python internvl_scorer.py ref.jpg test.jpg --task similarity",
                "python internvl_scorer.py blurry.jpg --task sharpness"]
    for line in examples:
        argv = shlex.split(line)[2:] + ["--model_id", "tiny"]
        assert internvl_scorer.main(argv) == 0, line
        out = capsys.readouterr().out.strip().splitlines()
        assert len(out) == 2 and 0.0 <= float(out[1].split()[-1]) <= 1.0, out
