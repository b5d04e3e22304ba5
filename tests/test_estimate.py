"""``--estimate``: the dry run of training and generate (tiny models; real sizes are in
tests/test_full_size_shapes.py, the check against a measured step in benchmarks/bench_estimate.py)."""
import json

import pytest
import torch

import alignprop_fluxkontext
from alignprop import generate
from alignprop.estimate import GPU_SIZES_GB, Estimate, estimate_training, kontext_configs


@pytest.fixture()
def data_dir(tmp_path):
    from PIL import Image

    d = tmp_path / "images"
    d.mkdir()
    Image.new("RGB", (48, 40), (120, 90, 60)).save(d / "a.png")
    return d


def _train_flags(data_dir, tmp_path, *extra):
    return ["--data_dir", str(data_dir), "--pretrained_model", "tiny", "--internvl_model_id",
            "tiny", "--image_height", "32", "--image_width", "32", "--sample_num_steps", "3",
            "--aesthetic_model_type", "internvl", "--grid_ratio_weight", "1",
            # the crispness floor (on by default beside another term) at the images' own size:
            # resized to 512 px it would dominate a 32 px step
            "--crispness_eval_resize", "0",
            "--output_dir", str(tmp_path / "out"), "--log_with", "none", *extra]


def test_training_estimate_prints_breakdown_and_verdicts_and_writes_nothing(
        data_dir, tmp_path, capsys):
    rc = alignprop_fluxkontext.main(_train_flags(data_dir, tmp_path, "--backprop_steps", "3",
                                                 "--estimate"))
    out = capsys.readouterr().out
    assert rc == 0
    for text in ("parameters (total / frozen / trainable)", "FLOPs per optimizer step",
                 "H100 SXM", "A100", "L40S", "RTX 4090", "peak device memory",
                 "weights: transformer", "activations: VAE decode",
                 "activations: reward aesthetic (internvl)", "AdamW state",
                 "--use_8bit_adam", "K=3: 2 backpropagated steps traced, the other 1 add"):
        assert text in out, text
    for gb in GPU_SIZES_GB:
        assert f"{gb} GB: fits" in out
    assert not (tmp_path / "out").exists()


def test_estimate_grows_with_k_and_shrinks_with_checkpointing(data_dir, tmp_path):
    from alignprop.config import parse_config

    def est(*extra):
        return estimate_training(*parse_config(_train_flags(data_dir, tmp_path, *extra)))

    k1, k3 = est("--backprop_steps", "1"), est("--backprop_steps", "3")
    assert k3.peak_bytes > k1.peak_bytes
    assert k3.flops["backward"] == pytest.approx(3 * k1.flops["backward"], rel=0.15)
    assert k1.flops.get("recompute", 0) == 0
    ck = est("--backprop_steps", "1", "--gradient_checkpointing")
    assert ck.flops["recompute"] > 0
    act = lambda e: sum(v for k, v in e.breakdown.items() if "transformer (backprop" in k)
    assert act(ck) < act(k1)


def test_reward_device_splits_the_peak_between_two_cards(data_dir, tmp_path):
    from alignprop.config import parse_config

    flags = _train_flags(data_dir, tmp_path, "--similarity_backend", "internvl-content")
    one = estimate_training(*parse_config(flags))
    two = estimate_training(*parse_config(flags + ["--reward_device", "cuda:1"]))
    assert not one.cards and set(two.cards) == {"training", "reward"}
    assert two.peak_bytes == one.peak_bytes  # the same step, traced the same way
    train_b, reward_b = two.card_breakdown["training"], two.card_breakdown["reward"]
    # each card's peak holds only its own models; together they cover the one-card peak
    assert any(k.startswith("weights: InternVL") for k in reward_b)
    assert not any("InternVL" in k or "reward" in k for k in train_b)
    assert not any("transformer" in k or "VAE" in k for k in reward_b)
    assert max(two.cards.values()) < one.peak_bytes <= sum(two.cards.values())
    assert two.device_peak_bytes == max(two.cards["training"], two.setup_peak_bytes)
    report = two.report()
    assert "peak of the reward card (--reward_device cuda:1)" in report
    assert "verdict for the reward card" in report
    # the same card as training, or sharded (benchmarks/fsdp_memory.py): one peak
    for same in ("cuda:0", "replicate"):
        assert not estimate_training(*parse_config(flags + ["--reward_device", same])).cards


def test_rewards_it_cannot_trace_are_named_never_silently_dropped(data_dir, tmp_path):
    from alignprop.config import parse_config

    flags = _train_flags(data_dir, tmp_path)
    flags[flags.index("--aesthetic_model_type") + 1] = "qwen"
    (tmp_path / "dreamsim").mkdir()
    est = estimate_training(*parse_config(flags + [
        "--qwen_model_id", "tiny-qwen2.5-vl", "--preference_backend", "pickscore",
        "--similarity_backend", "dreamsim", "--dreamsim_dir", str(tmp_path / "dreamsim")]))
    # the Qwen term must not be estimated as the (default) InternVL model
    assert not any("InternVL" in k for k in est.breakdown) and not any(
        "InternVL" in k for k in est.params)
    assert len(est.not_counted) == 2
    assert "'aesthetic' (internvl: Qwen2.5-VL (tiny-qwen2.5-vl)" in est.not_counted[0]
    assert "DreamSim" in est.not_counted[1]
    assert any(k.startswith("weights: pickscore") for k in est.breakdown)  # traced
    report = est.report()
    assert "NOT COUNTED" in report and "a lower bound" in report
    assert "NOT COUNTED" not in estimate_training(*parse_config(_train_flags(data_dir, tmp_path))).report()


def test_verdict_thresholds():
    e = Estimate("x")
    e.peak_bytes = int(20e9)
    assert e.verdict(24) == "fits" and e.verdict(141) == "fits"
    e.peak_bytes = int(23.5e9)
    assert e.verdict(24) == "tight"
    e.peak_bytes = int(30e9)
    assert e.verdict(24) == "no" and e.verdict(40) == "fits"


def test_generate_estimate(data_dir, tmp_path, capsys):
    rc = generate.cli(["--input_dir", str(data_dir), "--output_dir", str(tmp_path / "gen"),
                       "--pretrained_model", "tiny", "--prompt", "brighter", "--num_steps", "3",
                       "--estimate"])
    out = capsys.readouterr().out
    assert rc == 0 and "generate, built-in tiny model, 48x32" in out and "141 GB:" in out
    assert not (tmp_path / "gen").exists()


def test_a_local_directory_config_is_read(tmp_path):
    from alignprop.tiny_kontext import build_tiny_pipeline

    pipe = build_tiny_pipeline()
    root = tmp_path / "kontext"
    for part in ("transformer", "vae", "scheduler"):
        getattr(pipe, part).save_config(root / part)
    for part in ("text_encoder", "text_encoder_2"):
        (root / part).mkdir(parents=True)
        (root / part / "config.json").write_text(getattr(pipe, part).config.to_json_string())
    cfg, source = kontext_configs(str(root))
    assert cfg["transformer"]["num_layers"] == 1 and str(root) in source


def test_unknown_model_is_one_clear_error(data_dir, tmp_path, capsys):
    flags = _train_flags(data_dir, tmp_path, "--estimate")
    flags[flags.index("tiny")] = "someone/other-kontext"
    rc = alignprop_fluxkontext.main(flags)
    err = capsys.readouterr().err
    assert rc == 2 and "--pretrained_model 'someone/other-kontext': no shipped configuration" in err
    assert len(err.strip().splitlines()) == 1


def test_shipped_kontext_config_builds_the_published_size():
    cfg, _ = kontext_configs("black-forest-labs/FLUX.1-Kontext-dev")
    from diffusers import FluxTransformer2DModel

    from alignprop.fakemem import fake_mode, param_counts

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with fake_mode():
            t = FluxTransformer2DModel.from_config(
                {k: v for k, v in cfg["transformer"].items() if not k.startswith("_")})
    finally:
        torch.set_default_dtype(old)
    assert param_counts(t)["total"] == pytest.approx(11.9e9, rel=0.01)
    assert json.dumps(cfg)  # plain JSON


def test_cuda_autocast_policy_gives_cpu_traces_cudas_fp32_ops():
    """CPU autocast keeps layer/group norms and softmax in bf16; CUDA's runs them in fp32 (what
    an H200 measured). Under the policy the trace gets CUDA's dtypes, also in a checkpoint's
    recompute (run inside backward)."""
    import torch.nn.functional as F

    from alignprop.estimate.trace import _checkpoint_with_cuda_policy
    from alignprop.fakemem import CudaAutocastPolicy

    x = torch.randn(2, 4, 8, dtype=torch.bfloat16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert F.layer_norm(x, (8,)).dtype == torch.bfloat16     # CPU's rule
        with CudaAutocastPolicy():
            assert F.layer_norm(x, (8,)).dtype == torch.float32  # CUDA's rule
            assert F.group_norm(x, 2).dtype == torch.float32
            assert x.softmax(-1).dtype == torch.float32
            assert F.linear(x.float(), torch.randn(3, 8)).dtype == torch.bfloat16  # matmuls stay
    with CudaAutocastPolicy():
        assert F.layer_norm(x, (8,)).dtype == torch.bfloat16     # no autocast: untouched
    lin = torch.nn.Linear(8, 8).bfloat16()
    with CudaAutocastPolicy():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = _checkpoint_with_cuda_policy(lambda t: lin(F.layer_norm(t, (8,))), x)
        y.float().sum().backward()   # recompute with other dtypes would raise CheckpointError
    assert x.grad is not None and torch.isfinite(x.grad.float()).all()


def test_time_model_reproduces_every_measured_h200_step():
    """The time --estimate prints comes from the rates measured on an H200: with the
    estimator's FLOPs by phase for each measured case (media/full_size_estimates.json, from
    `benchmarks/full_size_step.py --estimate_only`), every measured s/step is within 5%."""
    from pathlib import Path

    from alignprop.estimate import GPU_PEAKS, measured_rate_seconds

    root = Path(__file__).resolve().parents[1]
    measured = json.loads((root / "media" / "full_size_step_h200.json").read_text())["rows"]
    estimates = {e["case"]: e for e in
                 json.loads((root / "media" / "full_size_estimates.json").read_text())}
    assert len(measured) == 7
    for row in measured:
        est = estimates[row["case"]]
        assert sum(est["flops_by_phase"].values()) == pytest.approx(est["flops"])
        seconds = measured_rate_seconds(est["flops_by_phase"], est["pixels"])
        assert seconds["H100 SXM"] == pytest.approx(row["sec_per_step"], rel=0.05), row["case"]
        # 40% of the peak was the optimistic model this replaces
        assert est["flops"] / (0.4 * GPU_PEAKS["H100 SXM"]) < 0.85 * row["sec_per_step"]
        assert seconds["A100"] / seconds["H100 SXM"] == pytest.approx(989 / 312)


# --------------------------------------------------------------------------- issue 23, item 5
def _est(data_dir, tmp_path, *extra):
    from alignprop.config import parse_config

    flags = _train_flags(data_dir, tmp_path)
    flags[flags.index("--aesthetic_model_type") + 1] = "none"   # the step's own parts only
    extra = list(extra)
    if "--sample_num_steps" in extra:   # one value per flag
        i = extra.index("--sample_num_steps")
        flags[flags.index("--sample_num_steps") + 1] = extra[i + 1]
        del extra[i:i + 2]
    flags += extra
    return estimate_training(*parse_config(flags))


def test_every_option_that_changes_the_step_changes_the_estimate(data_dir, tmp_path):
    """The estimate traces training's own method code: --method, DRaFT-LV's n, base
    consistency and K each change what is traced, as they change what training runs."""
    align = _est(data_dir, tmp_path)
    n1 = _est(data_dir, tmp_path, "--method", "draft-lv", "--draft_lv_n", "1")
    n4 = _est(data_dir, tmp_path, "--method", "draft-lv", "--draft_lv_n", "4")
    assert n4.details["sampler_calls"]["grad"] == 4 and n1.details["sampler_calls"]["grad"] == 1
    assert n4.flops["backward"] > 3 * n1.flops["backward"] and n4.peak_bytes > n1.peak_bytes
    assert "draft-lv" in n4.title and "DRaFT-LV n=4" in n4.title
    base = _est(data_dir, tmp_path, "--base_consistency_weight", "1")
    assert base.total_flops > align.total_flops and "base consistency" in base.title
    # the base model's denoising is one more kind of no-grad step (LoRA off), traced once
    assert base.details["traced_no_grad_calls"] == align.details["traced_no_grad_calls"] + 1
    refl = _est(data_dir, tmp_path, "--method", "refl")
    assert refl.details["method"] == "refl" and refl.details["sampler_calls"]["grad"] == 1
    assert any("ReFL" in n for n in refl.notes)
    # ImageReFL at N = 8 (start step 6, m in {6, 7}): the regulariser's prediction at the
    # start step and the reward's at m != 6 are two graphs held together
    image = _est(data_dir, tmp_path, "--method", "imagerefl", "--sample_num_steps", "8")
    refl8 = _est(data_dir, tmp_path, "--method", "refl", "--sample_num_steps", "8")
    assert image.details["sampler_calls"]["grad"] == 2 and image.peak_bytes > refl8.peak_bytes
    assert "ImageReFL from a real image noised to step 6" in image.title
    # AlignProp's truncation: charged for its largest K = N - 1 (t_b >= 1)
    tb = _est(data_dir, tmp_path, "--truncated_backprop", "alignprop")
    assert tb.details["k_estimated"] == 2 == tb.details["sampler_calls"]["grad"]
    assert any("random K" in n for n in tb.notes)
    k3 = _est(data_dir, tmp_path, "--backprop_steps", "3")
    assert k3.details["sampler_calls"]["grad"] == 3 and k3.peak_bytes > align.peak_bytes


def test_the_trace_does_not_grow_with_the_number_of_steps(data_dir, tmp_path):
    """Fast for any N: one no-grad step is traced and the others add its FLOPs (the loop
    runs N times in Python, the trace once)."""
    few = _est(data_dir, tmp_path, "--sample_num_steps", "4")
    many = _est(data_dir, tmp_path, "--sample_num_steps", "20000")
    assert many.details["traced_no_grad_calls"] == few.details["traced_no_grad_calls"] == 1
    assert many.details["sampler_calls"]["no_grad"] == 19999
    per_step = (many.flops["forward"] - few.flops["forward"]) / (19999 - 3)
    # memory grows only by the schedule, which training keeps on the device (a few bytes a step)
    assert per_step > 0 and 0 <= many.peak_bytes - few.peak_bytes <= 8 * 20000


@pytest.mark.parametrize("size", ["32768", "16384"])
def test_nonsense_sizes_are_one_line(data_dir, tmp_path, capsys, size):
    flags = _train_flags(data_dir, tmp_path, "--estimate", "--pretrained_model",
                         "black-forest-labs/FLUX.1-Kontext-dev")
    flags[flags.index("--image_height") + 1] = flags[flags.index("--image_width") + 1] = size
    assert alignprop_fluxkontext.main(flags) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "image tokens" in err and "overflows" in err


def test_a_broken_config_json_is_one_line_naming_it(data_dir, tmp_path, capsys):
    from alignprop.tiny_kontext import build_tiny_pipeline

    pipe = build_tiny_pipeline()
    root = tmp_path / "kontext"
    for part in ("transformer", "vae", "scheduler"):
        getattr(pipe, part).save_config(root / part)
    for part in ("text_encoder", "text_encoder_2"):
        (root / part).mkdir(parents=True)
        (root / part / "config.json").write_text(getattr(pipe, part).config.to_json_string())
    cfg = root / "transformer" / "config.json"
    good = cfg.read_text()
    for broken in ('{"num_layers": 1', "[1, 2]", json.dumps({**json.loads(good),
                                                             "num_layers": "many"})):
        cfg.write_text(broken)
        flags = _train_flags(data_dir, tmp_path, "--estimate")
        flags[flags.index("tiny")] = str(root)
        assert alignprop_fluxkontext.main(flags) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(cfg) in err, err


def test_tiny_photo_is_estimated(data_dir, tmp_path):
    est = _est(data_dir, tmp_path, "--pretrained_model", "tiny-photo")
    assert "tiny-photo" in est.title and est.params["transformer"]["total"] > 3e5
