"""Print how closely our preference / DreamSim rewards agree with their reference packages.

The same comparisons as tests/test_preference.py and tests/test_dreamsim.py (same small random
weights in both, same inputs), printing the largest absolute differences instead of asserting.
Run: PYTHONPATH=.:tests HF_HUB_OFFLINE=1 python benchmarks/parity_preference.py
"""
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def main() -> None:
    import pytest

    import test_dreamsim as td
    import test_preference as tp
    from rewards.preference import (hpsv2_config, imagereward_configs, make_hpsv2_reward,
                                    make_imagereward_reward, make_pickscore_reward,
                                    tiny_bert_tokenizer)

    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        ref = tp._reference_imagereward(tiny_bert_tokenizer(d / "bert"))
        torch.save(ref.state_dict(), d / "ImageReward.pt")
        ours = make_imagereward_reward(model_path=str(d / "ImageReward.pt"), tokenizer=str(d / "bert"),
                                       config=imagereward_configs(tiny=True), device="cpu")
        x = tp._photos(32)
        with torch.no_grad():
            exp = torch.tensor([ref.score(p, tp._pil(i)) for p, i in zip(tp.PROMPTS, x)])
            got = ours(x, None, tp.PROMPTS)[0]
        rows.append(("imagereward score", (got - exp).abs().max().item(), exp.abs().max().item()))

        model_mod, transform_mod = tp.hpsv2_open_clip()
        import open_clip

        cfg = hpsv2_config(tiny=True)
        torch.manual_seed(2)
        ref = model_mod.CLIP(cfg["embed_dim"], model_mod.CLIPVisionCfg(**cfg["vision_cfg"]),
                             model_mod.CLIPTextCfg(**cfg["text_cfg"]), output_dict=True).eval()
        torch.save({"state_dict": ref.state_dict()}, d / "HPS_v2.1_compressed.pt")
        ours = make_hpsv2_reward(model_path=str(d), config=cfg, device="cpu")
        x = tp._photos(40)
        pre = transform_mod.image_transform(32, is_train=False)
        with torch.no_grad():
            px = torch.stack([pre(tp._pil(i)) for i in x])
            out = ref(px, open_clip.tokenize(tp.PROMPTS))
            exp = (out["image_features"] * out["text_features"]).sum(-1)
            feats = ours.model.encode_image(px, normalize=True)
            got = ours(x, None, tp.PROMPTS)[0]
        rows.append(("hpsv2 image features, same pixels",
                     (feats - out["image_features"]).abs().max().item(), 1.0))
        rows.append(("hpsv2 score, our torch preprocessing", (got - exp).abs().max().item(),
                     exp.abs().max().item()))

        from transformers import CLIPImageProcessor, CLIPModel

        pick = make_pickscore_reward(pretrained=False, device="cpu", seed=3)
        pick.model.save_pretrained(d / "pick")
        ours = make_pickscore_reward(model_path=str(d / "pick"), device="cpu")
        ref = CLIPModel.from_pretrained(d / "pick").eval()
        proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        x = tp._photos(32)
        with torch.no_grad():
            pv = proc(images=[tp._pil(i) for i in x], return_tensors="pt").pixel_values
            t = tp.bundled_clip_tokenizer()(tp.PROMPTS, padding=True, return_tensors="pt")
            f = lambda o: o.pooler_output if hasattr(o, "pooler_output") else o  # noqa: E731
            e, te = f(ref.get_image_features(pixel_values=pv)), f(ref.get_text_features(**t))
            e, te = e / e.norm(dim=-1, keepdim=True), te / te.norm(dim=-1, keepdim=True)
            exp = ref.logit_scale.exp() * (e * te).sum(-1)
            got = ours(x, None, tp.PROMPTS)[0]
        rows.append(("pickscore score", (got - exp).abs().max().item(), exp.abs().max().item()))

        mp = pytest.MonkeyPatch()
        (d / "ds").mkdir()
        ckpt = td.write_small_checkpoint(d / "ds", mp)
        from dreamsim import dreamsim

        ref, ref_pre = dreamsim(pretrained=True, device="cpu", cache_dir=str(ckpt),
                                dreamsim_type="open_clip_vitb32")
        from rewards.perceptual import make_dreamsim_reward

        ours = make_dreamsim_reward(model_dir=str(ckpt), device="cpu")
        for size in (224, 64):
            a, b = td._photo("chelsea", size), td._photo("astronaut", size)
            with torch.no_grad():
                exp = ref(ref_pre(td._pil(a)), ref_pre(td._pil(b)))
                got = 1 - ours(a, b, None)[0]
            rows.append((f"dreamsim distance at {size} px", (got - exp).abs().max().item(),
                         exp.abs().max().item()))
        mp.undo()
    print(f"{'comparison':40s} {'max |ours - reference|':>24s} {'|reference|':>12s}")
    for name, diff, scale in rows:
        print(f"{name:40s} {diff:24.2e} {scale:12.4f}")


if __name__ == "__main__":
    main()
