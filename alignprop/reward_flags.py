"""Reward flags shared by training (``alignprop_fluxkontext.py``) and evaluation.

One dataclass, :class:`RewardFlags`, holds every reward option under the names of
the original research project (``--grid_ratio_weight``, ``--aesthetic_model_type``,
``--similarity_backend`` ...). :func:`reward_specs` turns it into the spec list
that :func:`rewards.build_rewards` builds a :class:`~rewards.base.CompositeReward`
from, so the mapping "flag -> reward module option" lives in exactly one place.

The dataclass works with :class:`transformers.HfArgumentParser` (every field has
``help`` metadata, backends have ``choices``) and validates itself in
``__post_init__``: an unknown backend name or a missing file is refused with a
message that names the flag and the valid values.

Term names (what is logged as ``reward/<term>``): ``grid``, ``brightness``,
``crispness``, ``aesthetic``, ``similarity``, ``sharpness``, ``style``, ``photo``,
``preference``, ``edit_specialist``, ``command``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from common.cli import UserError
from common.hub import ModelUnavailableError, resolve_device_dtype
from common.original_flags import SEMANTICS
from common.original_repo import read_original_texts
from rewards import REGISTRY, option_flags, record, selecting_flags
from rewards import build_term as build_one
from rewards.base import CompositeReward, RewardTerm
from rewards.command import check_command
from rewards.edit_specialist import DEFAULT_SEMANTIC_PROMPT
from rewards.grid import COHERENT, STATISTICS as GRID_STATISTICS
from rewards.vlm_shift import check_views

# VLM backends: "internvl" = the model of --internvl_model_id, "qwen" = the model of
# --qwen_model_id. Either flag takes a checkpoint of any supported family (InternVL3,
# Qwen2.5-VL, Qwen3-VL; read from its config.json), so two VLMs can serve different terms.
VLM_BACKENDS = ("internvl", "qwen")
# registry names of the VLM rewards (ours; the original's scoring for --semantics original)
VLM_REWARDS = ("internvl", "original_vlm")
AESTHETIC_BACKENDS = ("none", "internvl", "aesthetic_scorer", "v2.5", "qwen")
SIMILARITY_BACKENDS = ("none", "lpips", "face", "internvl-content", "qwen-content", "dreamsim")
PREFERENCE_BACKENDS = ("none", "imagereward", "hpsv2", "pickscore")
SHARPNESS_BACKENDS = ("none", "internvl", "qwen")
STYLE_BACKENDS = VLM_BACKENDS + ("dreamsim",)
EDIT_STRUCTURAL = ("lpips", "dreamsim", "internvl-content", "qwen-content")
DREAMSIM_TYPES = ("open_clip_vitb32", "clip_vitb32")  # = rewards.perceptual.DREAMSIM_TYPES
HPSV2_VERSIONS = ("v2.1", "v2.0")
PHOTO_BACKENDS = ("none", "aide")
GRID_MODES = ("combined", "global", "local")
BRIGHTNESS_MEASURES = ("luma", "original")
LPIPS_NETS = ("alex", "vgg", "squeeze")
LPIPS_MIN_RESOLUTION = 32  # = the smallest size rewards/perceptual.py accepts
INTERNVL_DTYPES = ("auto", "float32", "bfloat16", "float16")
# Mirrors rewards.vlm.OBJECTIVES / CALIBRATIONS (kept here so --help works without
# importing the VLM module; tests/test_config.py checks they stay equal).
INTERNVL_OBJECTIVES = ("expected", "margin")
INTERNVL_CALIBRATIONS = ("none", "pmi_null")
DEFAULT_CRISPNESS_FLOOR = 1.0e-4  # = rewards.anchors.DEFAULT_CRISPNESS_FLOOR (a test checks)
DEFAULT_GRID_SIGMA_BINS = 0.5  # = rewards.grid.make_grid_reward default (a test checks)
DEFAULT_INTERNVL = "OpenGVLab/InternVL3-14B-hf"
DEFAULT_QWEN = "Qwen/Qwen2.5-VL-7B-Instruct"


def _f(default: Any, help: str, choices: tuple | None = None, **kw) -> Any:
    """A dataclass field carrying argparse help text (and choices) in its metadata."""
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = list(choices)
    return field(default=default, metadata=meta, **kw)


# --semantics original without --original_repo: our presets for the original's use cases
# (rewards/prompt_presets.py), by task.
ORIGINAL_USE_CASE_PRESETS = {"single": "studio", "sharpness": "eyes_skin",
                             "similarity": "photoshoot", "content-similarity": "same_subject"}


@dataclass
class RewardFlags:
    """Every reward option; a weight/scale of 0 or a backend of ``none`` disables a term."""

    # ---------------------------------------------------------------- semantics
    semantics: str = _f(
        "ours", "'ours': our measures and defaults; 'original': the original "
                "promptable-differentiable-rewards scripts' measures, defaults, sampler and step "
                "counting (docs/original_mode.md), so their command lines train their objective. "
                "--config original is the same.", SEMANTICS)
    original_repo: Optional[str] = _f(
        None, "Your clone of the original promptable-differentiable-rewards repository: its "
              "rating questions and default edit instruction are read from there (no code of it "
              "runs) for --semantics original. Without it, our presets for the same use cases "
              "are asked (studio, eyes_skin, photoshoot, same_subject).")

    # ---------------------------------------------------------------- FFT anti-grid
    grid_ratio_weight: float = _f(
        0.0, "Weight of the FFT anti-periodic (grid artifact) penalty; 0 disables it. "
             "The reward is -weight * penalty (periodic energy ratio at the grid period). "
             "Not the original project's measure: on bundled photos with 1-2%% grids an "
             "original weight W moves the reward like W x 0.035 here (docs/original_flags.md).")
    grid_ratio_period: int = _f(
        16, "Grid period in pixels whose harmonics are penalised (16 = FLUX VAE 8 px x "
            "2x2 patchify).")
    grid_ratio_max_harm: int = _f(
        3, "Number of harmonics of the grid frequency penalised; 0 = every harmonic below "
           "Nyquist.")
    grid_ratio_sigma_bins: float = _f(
        DEFAULT_GRID_SIGMA_BINS,
        "Gaussian weight, in FFT bins, of a comb tooth that falls between bins (used only "
        "when the image cannot be cropped to whole periods).")
    grid_eval_resize: int = _f(
        512, "Images whose long side exceeds this are downscaled to it before the FFT (the "
             "comb follows the scale); smaller images are never upscaled. 0 keeps the "
             "native size.")
    grid_tau: float = _f(
        0.0, "Dead zone on the grid score: scores below tau cost nothing (clean photos "
             "score about 0.06-0.33, synthetic 0.5-4%% grids 1.9 on average).")
    grid_mode: str = _f(
        "combined", "Grid penalty spectrum: 'global' (whole image), 'local' (tiles) or "
                    "'combined' (both).", GRID_MODES)
    grid_ratio_statistic: str = _f(
        "ring", "How the grid penalty reads a comb tooth: 'ring' (the tooth's power against "
                "its 8 neighbours' in the whole image's spectrum) or 'coherent' (the tooth's "
                "coefficient combined over windows, each weighted by its own noise; more "
                "sensitive: ROC-AUC 0.978 against 0.903 at 0.5%% amplitude). 'coherent' applies "
                "the whole preset rewards.grid.COHERENT: every harmonic below Nyquist "
                "(--grid_ratio_max_harm 0), --grid_mode global, period temperature 0.01 "
                "(docs/anti_grid.md).", GRID_STATISTICS)

    # ---------------------------------------------------------------- math anchors
    brightness_target: float = _f(
        0.45, "Target mean luminance in [0, 1] of the brightness anchor.")
    brightness_band: float = _f(
        0.08, "Half-width of the free band around --brightness_target; luminance outside "
              "target +/- band is penalised (hinge).")
    brightness_anchor_weight: float = _f(
        0.0, "Weight of the brightness anchor penalty; 0 disables it. Moving an original "
             "preset over: see --brightness_measure and docs/original_flags.md.")
    brightness_measure: str = _f(
        "luma", "'luma': mean gamma-encoded Rec.709 luma, squared hinge outside the band "
                "(ours); 'original': mean linear-light luminance, linear hinge (the original "
                "project's anchor, so its targets and weights keep their meaning). On bundled "
                "photos an original target of 0.45 is luma 0.66 here, and original weight 1 "
                "pulls like ours x13-x63 (0.10-0.02 past the band); docs/original_flags.md.",
        BRIGHTNESS_MEASURES)
    crispness_floor: float = _f(
        DEFAULT_CRISPNESS_FLOOR,
        "Floor on the Tenengrad (mean squared Sobel gradient of luminance in [0,1], measured "
        "at --crispness_eval_resize); penalty = relu(1 - tenengrad / floor), so images at "
        "least this crisp cost nothing.")
    crispness_eval_resize: int = _f(
        512, "Long side images are resized to before measuring crispness (0 = native size).")
    crispness_weight: Optional[float] = _f(
        None, "Weight of the crispness floor penalty; 0 disables it. Default: 0.2 in training "
              "when another reward term is on (the original's crispness_anchor_weight "
              "default; the floor only costs images flatter than --crispness_floor), 0 "
              "elsewhere.")

    # ---------------------------------------------------------------- aesthetic
    aesthetic_model_type: str = _f(
        "none", "Aesthetic reward backend: 'internvl' / 'qwen' (VLM rating by the model of "
                "--internvl_model_id / --qwen_model_id, promptable with --aesthetic_prompt), "
                "'aesthetic_scorer' (LAION MLP on CLIP ViT-L/14), 'v2.5' (SigLIP aesthetic "
                "predictor v2.5) or 'none'.", AESTHETIC_BACKENDS)
    aesthetic_reward_scale: float = _f(
        1.0, "Weight of the aesthetic reward (used when --aesthetic_model_type is not none).")
    aesthetic_head: Optional[str] = _f(
        None, "Weights of the aesthetic head: a file (.pth read without unpickling objects, or "
              ".safetensors), a folder holding it, or a hub repo id. Default: "
              "trl-lib/ddpo-aesthetic-predictor (aesthetic_scorer) or torch hub's cache of "
              "aesthetic_predictor_v2_5.pth (v2.5).")
    aesthetic_head_filename: Optional[str] = _f(
        None, "File name of the head inside --aesthetic_head when that is a hub repo or a "
              "folder (default aesthetic-model.pth / aesthetic_predictor_v2_5.pth).")
    aesthetic_clip_model: Optional[str] = _f(
        None, "CLIP model of --aesthetic_model_type aesthetic_scorer: hub id or local folder "
              "(default openai/clip-vit-large-patch14).")
    aesthetic_encoder: Optional[str] = _f(
        None, "SigLIP model of --aesthetic_model_type v2.5: hub id or local folder (default "
              "google/siglip-so400m-patch14-384).")

    # ---------------------------------------------------------------- similarity to input
    similarity_backend: str = _f(
        "none", "Similarity-to-the-input-image reward (content preservation): 'lpips' "
                "(1 - LPIPS distance), 'face' (FaceNet identity cosine), 'internvl-content' / "
                "'qwen-content' (VLM asked whether the edit kept the content), 'dreamsim' (1 - "
                "DreamSim distance; needs --dreamsim_dir) or 'none'.", SIMILARITY_BACKENDS)
    image_reward_scale: float = _f(
        1.0, "Weight of the similarity-to-input term chosen by --similarity_backend (the "
             "name comes from the original project: it scales the *image* similarity reward).")
    lpips_net: str = _f("alex", "LPIPS backbone for --similarity_backend lpips.", LPIPS_NETS)
    lpips_resolution: int = _f(
        256, "Side the images are resized to (differentiably) before LPIPS (>= 32).")
    lpips_backbone: Optional[str] = _f(
        None, "torchvision ImageNet weights of the --lpips_net trunk (e.g. alexnet-owt-7be5be79.pth"
              ", or a folder holding it); default: torch hub's cache (follows TORCH_HOME).")
    face_weights: Optional[str] = _f(
        None, "Path to the VGGFace2 InceptionResnetV1 state dict for --similarity_backend "
              "face (needed offline; downloaded by facenet-pytorch otherwise).")

    dreamsim_dir: Optional[str] = _f(
        None, "Folder of the unzipped DreamSim checkpoint (e.g. open_clip_vitb32_pretrain.pth.tar "
              "and open_clip_vitb32_single_lora/) for the dreamsim similarity/style rewards.")
    dreamsim_type: str = _f(
        "open_clip_vitb32", "DreamSim model: 'open_clip_vitb32' or 'clip_vitb32' (the package's "
                            "ensemble/DINO types fetch code through torch.hub and are refused).",
        DREAMSIM_TYPES)

    # ---------------------------------------------------------------- human preference
    preference_backend: str = _f(
        "none", "Human-preference reward of the output for the prompt: 'imagereward' "
                "(ImageReward, BLIP), 'hpsv2' (HPS v2/v2.1, OpenCLIP ViT-H/14), 'pickscore' "
                "(PickScore, CLIP ViT-H/14) or 'none'. Scored against the edit prompt, or "
                "--preference_prompt.", PREFERENCE_BACKENDS)
    preference_reward_scale: float = _f(1.0, "Weight of the human-preference reward.")
    preference_model: Optional[str] = _f(
        None, "Weights of the preference model: local file/folder or hub id (defaults: "
              "THUDM/ImageReward's ImageReward.pt, xswu/HPSv2's HPS_v2.1_compressed.pt, "
              "yuvalkirstain/PickScore_v1).")
    preference_tokenizer: Optional[str] = _f(
        None, "Tokenizer folder of the preference model: bert-base-uncased for imagereward; "
              "a CLIP tokenizer for pickscore (default: CLIP's vocabulary shipped with "
              "open_clip). hpsv2 always uses OpenCLIP's shipped tokenizer.")
    preference_prompt: Optional[str] = _f(
        None, "Fixed caption the preference model scores every output against (default: "
              "each sample's edit prompt).")
    hpsv2_version: str = _f("v2.1", "HPS checkpoint version for --preference_backend hpsv2.",
                            HPSV2_VERSIONS)

    # ---------------------------------------------------------------- sharpness
    sharpness_backend: str = _f(
        "none", "Sharpness reward backend: 'internvl' / 'qwen' (VLM asked how sharp the "
                "image is, promptable with --sharpness_prompt) or 'none'.", SHARPNESS_BACKENDS)
    sharpness_reward_scale: float = _f(1.0, "Weight of the sharpness reward.")

    # ---------------------------------------------------------------- style
    style_reference: Optional[str] = _f(
        None, "Path of a style reference image; when set, the style-similarity reward "
              "compares every output with it (prompt: --style_prompt; model: --style_backend).")
    style_backend: str = _f(
        "internvl", "Who judges style when --style_reference is set as a separate term: "
                    "'internvl' (--internvl_model_id) or 'qwen' (--qwen_model_id), a VLM asked "
                    "whether the two images share a style, or 'dreamsim' (1 - DreamSim distance "
                    "to the reference; needs --dreamsim_dir). When the style question replaces "
                    "a VLM aesthetic term, it uses that term's VLM.", STYLE_BACKENDS)
    style_reward_scale: Optional[float] = _f(
        None, "Weight of a SEPARATE style-similarity term. Unset (default) with a VLM "
              "--aesthetic_model_type (internvl, qwen): the style question REPLACES the aesthetic "
              "question at --aesthetic_reward_scale (the original's meaning of "
              "--style_reference); set it to keep both terms. Unset otherwise: 1.0.")
    style_backend: str = _f(
        "internvl", "Style-similarity model for --style_reference: 'internvl' / 'qwen' (VLM "
                    "of --internvl_model_id / --qwen_model_id asked whether the two images "
                    "share a style) or 'dreamsim' (1 - DreamSim distance to the reference; "
                    "needs --dreamsim_dir). When the style question replaces a VLM aesthetic "
                    "question, it is asked of the aesthetic term's VLM.", STYLE_BACKENDS)

    # ---------------------------------------------------------------- photorealism
    photo_backend: str = _f(
        "none", "Photorealism reward: 'aide' (AIDE real-photo probability; needs --aide_repo "
                "and --aide_resume) or 'none'.", PHOTO_BACKENDS)
    photo_reward_scale: float = _f(1.0, "Weight of the photorealism reward.")
    aide_repo: Optional[str] = _f(None, "Path to your clone of the AIDE repository.")
    aide_resume: Optional[str] = _f(None, "Path to the AIDE checkpoint to load.")

    # ---------------------------------------------------------------- editing specialist
    edit_specialist_weight: float = _f(
        0.0, "Weight of the Image-Editing Specialists objective (--preset edit_specialist sets "
             "it): structural score (content kept, --edit_structural) + --score_alpha x "
             "(semantic score: a VLM asked whether the edit follows the instruction - "
             "--rec_lambda x pixel MSE to the input); with --method grpo|d3po both scores are "
             "z-scored over the round as the paper ranks edits, with gradient methods summed as "
             "they are. See rewards/edit_specialist.py for where it differs from the paper.")
    edit_structural: str = _f(
        "lpips", "Structural (content kept) judge of the edit-specialist objective: 'lpips' "
                 "(1 - LPIPS to the input; --lpips_net/--lpips_backbone), 'dreamsim' "
                 "(--dreamsim_dir), 'internvl-content' / 'qwen-content' (a VLM content "
                 "question). The paper uses depth maps, which this project does not ship.",
        EDIT_STRUCTURAL)
    edit_semantic_backend: str = _f(
        "internvl", "VLM of the semantic score: 'internvl' (--internvl_model_id) or 'qwen' "
                    "(--qwen_model_id); it sees the edit and the input.", VLM_BACKENDS)
    edit_semantic_prompt: str = _f(
        DEFAULT_SEMANTIC_PROMPT, "Semantic question; {instruction} is replaced by each sample's "
                                 "edit instruction (Image 1 = the edit, Image 2 = the input).")
    score_alpha: float = _f(
        1.0, "Edit specialist: weight of the semantic score relative to the structural one "
             "(the paper's score_alpha, default 1).")
    rec_lambda: float = _f(
        0.5, "Edit specialist: weight of the pixel reconstruction MSE inside the semantic score "
             "(the paper's rec_lambda, default 0.5; here over the whole image, no object mask).")

    # ---------------------------------------------------------------- a judge as a program
    reward_command: Optional[str] = _f(
        None, "A judge given as a command line, e.g. \"python judge.py --strict\" (gives no "
              "gradient: --method grpo|d3po only). Each batch's images are written as PNGs into "
              "a temporary folder with a manifest.json (inputs, prompts); the program, run "
              "without a shell with the manifest's path as its last argument, writes one score "
              "per image (higher is better) to scores.json or scores.csv there. Protocol and "
              "errors: rewards/command.py.")
    reward_command_weight: float = _f(1.0, "Weight of the --reward_command score.")
    reward_command_timeout: float = _f(
        600.0, "Seconds --reward_command may take per batch; then it and its children are "
               "killed and training stops with that error.")

    # ---------------------------------------------------------------- InternVL (shared)
    internvl_model_id: str = _f(
        DEFAULT_INTERNVL, "VLM of the 'internvl' backends: a hub id or local directory of "
                          "any supported family (InternVL3 -hf, Qwen2.5-VL, Qwen3-VL; the "
                          "family is read from its config.json), a built-in tiny model "
                          "('tiny', 'tiny-qwen2.5-vl', 'tiny-qwen3-vl'; random weights, tests), "
                          "or 'tiny-vlm-photo' (a tiny InternVL pretrained on bundled photos that "
                          "answers; docs/vlm.md).")
    internvl_dtype: str = _f(
        "auto", "Weights dtype of --internvl_model_id; 'auto' = bfloat16 on CUDA, float32 on CPU.",
        INTERNVL_DTYPES)
    qwen_model_id: str = _f(
        DEFAULT_QWEN, "VLM of the 'qwen' backends (--aesthetic_model_type qwen, "
                      "--similarity_backend qwen-content, --sharpness_backend qwen, "
                      "--style_backend qwen): hub id, local directory or tiny name, any "
                      "supported family (read from its config.json). Terms naming the same "
                      "model share one loaded copy.")
    qwen_dtype: str = _f(
        "auto", "Weights dtype of --qwen_model_id; 'auto' = bfloat16 on CUDA, float32 on CPU.",
        INTERNVL_DTYPES)
    internvl_objective: str = _f(
        "expected", "How the answer-token probabilities become a score: 'expected' = expected "
                    "rating under the answer distribution, 'margin' = log-odds of the best vs "
                    "the worst answer (see rewards/vlm.py).", INTERNVL_OBJECTIVES)
    internvl_calibration: str = _f(
        "pmi_null", "Calibration of the answer probabilities: 'pmi_null' (default, as every "
                    "InternVL term of the original: subtract the answer log-probs for a "
                    "neutral gray image, cached) or 'none'; see rewards/vlm.py.",
        INTERNVL_CALIBRATIONS)
    internvl_max_tiles: Optional[int] = _f(
        None, "InternVL terms: most tiles per image (default: the checkpoint's max_patches, as "
              "its processor tiles; a 512x512 image is one tile, 512x768 seven); 1 = one "
              "squashed tile. --semantics original always uses one bilinear tile.")
    internvl_temperature: float = _f(
        1.0, "Softmax temperature over the answer tokens (> 0).")
    internvl_shift_views: int = _f(
        1, "Every VLM term (internvl and qwen backends): the mean score over k*k copies of each "
           "image translated by sub-patch offsets (k phases of the model's vision patch per "
           "axis, reflect padding; the images of a pair shifted alike), so its pixel gradient "
           "is not locked to the patch grid. 1 = off; 4 = phases 0 and half a patch in y and "
           "x (4x the VLM's rows per step). docs/vlm.md, rewards/vlm_shift.py.")
    internvl_answer_scale: Optional[str] = _f(
        None, "Answer tokens/values of the rating scale for every InternVL term: 'digits' "
              "(0..9), 'qalign' (excellent..bad), 'yesno' or 'word=value,...' (see "
              "rewards/vlm_prompts.py); default is each task's built-in scale. The per-term "
              "flags below override it.")
    aesthetic_answer_scale: Optional[str] = _f(
        None, "Answer scale of the InternVL aesthetic term (overrides --internvl_answer_scale).")
    style_answer_scale: Optional[str] = _f(
        None, "Answer scale of the InternVL style term (overrides --internvl_answer_scale).")
    content_answer_scale: Optional[str] = _f(
        None, "Answer scale of the InternVL content term (overrides --internvl_answer_scale).")
    sharpness_answer_scale: Optional[str] = _f(
        None, "Answer scale of the InternVL sharpness term (overrides --internvl_answer_scale).")
    aesthetic_prompt: Optional[str] = _f(None, "Question asked for the InternVL aesthetic reward.")
    aesthetic_prompt_file: Optional[str] = _f(None, "File holding --aesthetic_prompt.")
    style_prompt: Optional[str] = _f(None, "Question asked for the InternVL style reward.")
    style_prompt_file: Optional[str] = _f(None, "File holding --style_prompt.")
    content_prompt: Optional[str] = _f(
        None, "Question asked for the InternVL content-similarity reward.")
    content_prompt_file: Optional[str] = _f(None, "File holding --content_prompt.")
    sharpness_prompt: Optional[str] = _f(None, "Question asked for the InternVL sharpness reward.")
    sharpness_prompt_file: Optional[str] = _f(None, "File holding --sharpness_prompt.")
    trust_remote_code: bool = _f(
        False, "Allow model repositories to run their own Python code (InternVL non-hf "
               "checkpoints, some aesthetic heads). Off by default for safety.")

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Refuse unknown backends, impossible values and missing files (ValueError)."""
        for name, valid in (("aesthetic_model_type", AESTHETIC_BACKENDS),
                            ("similarity_backend", SIMILARITY_BACKENDS),
                            ("sharpness_backend", SHARPNESS_BACKENDS),
                            ("photo_backend", PHOTO_BACKENDS),
                            ("preference_backend", PREFERENCE_BACKENDS),
                            ("style_backend", STYLE_BACKENDS),
                            ("edit_structural", EDIT_STRUCTURAL),
                            ("edit_semantic_backend", VLM_BACKENDS),
                            ("dreamsim_type", DREAMSIM_TYPES),
                            ("hpsv2_version", HPSV2_VERSIONS),
                            ("grid_mode", GRID_MODES),
                            ("grid_ratio_statistic", GRID_STATISTICS),
                            ("brightness_measure", BRIGHTNESS_MEASURES),
                            ("lpips_net", LPIPS_NETS),
                            ("internvl_dtype", INTERNVL_DTYPES),
                            ("qwen_dtype", INTERNVL_DTYPES),
                            ("internvl_objective", INTERNVL_OBJECTIVES),
                            ("internvl_calibration", INTERNVL_CALIBRATIONS),
                            ("semantics", SEMANTICS)):
            value = getattr(self, name)
            if value not in valid:
                raise ValueError(f"--{name} {value!r} is not valid; choose one of: "
                                 f"{', '.join(valid)}")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"--{f.name} must be a finite number, got {value}")
            if (f.name.endswith(("_weight", "_scale")) and not f.name.endswith("_answer_scale")
                    and value is not None and value < 0):
                raise ValueError(f"--{f.name} must be >= 0 (a penalty is already negated), "
                                 f"got {value}")
        if not 0.0 <= self.brightness_target <= 1.0:
            raise ValueError(f"--brightness_target must be in [0, 1], got {self.brightness_target}")
        if self.brightness_band < 0:
            raise ValueError(f"--brightness_band must be >= 0, got {self.brightness_band}")
        if self.grid_ratio_period < 2:
            raise ValueError(f"--grid_ratio_period must be >= 2 pixels, got {self.grid_ratio_period}")
        if self.grid_ratio_max_harm < 0:
            raise ValueError(f"--grid_ratio_max_harm must be >= 0 (0 = every harmonic below "
                             f"Nyquist), got {self.grid_ratio_max_harm}")
        if self.grid_ratio_sigma_bins <= 0:
            raise ValueError(f"--grid_ratio_sigma_bins must be > 0, got {self.grid_ratio_sigma_bins}")
        if self.grid_eval_resize < 0:
            raise ValueError(f"--grid_eval_resize must be >= 0 (0 = native size), "
                             f"got {self.grid_eval_resize}")
        if self.grid_ratio_statistic == "coherent":
            # the preset sets these two; a value other than the flag's default or the preset's
            # own would be silently overridden, so it is refused instead
            defaults = {f.name: f.default for f in fields(self)}
            for name, key in (("grid_mode", "mode"), ("grid_ratio_max_harm", "max_harm")):
                value = getattr(self, name)
                if value not in (defaults[name], COHERENT[key]):
                    raise ValueError(f"--grid_ratio_statistic coherent sets --{name} "
                                     f"{COHERENT[key]} (rewards.grid.COHERENT); drop --{name} "
                                     f"{value}")
            if self.semantics == "original":
                raise ValueError("--grid_ratio_statistic coherent: the original's grid term has "
                                 "no such statistic; use --semantics ours")
        if self.crispness_floor <= 0:
            raise ValueError(f"--crispness_floor must be > 0, got {self.crispness_floor}")
        if self.crispness_eval_resize != 0 and self.crispness_eval_resize < 16:
            raise ValueError(f"--crispness_eval_resize must be 0 (native) or >= 16, "
                             f"got {self.crispness_eval_resize}")
        if self.lpips_resolution < LPIPS_MIN_RESOLUTION:
            # AlexNet's trunk (stride-4 conv + three 3x3/2 max-pools) has no spatial extent
            # left below 32 px; rewards/perceptual.py refuses such sizes too.
            raise ValueError(f"--lpips_resolution must be >= {LPIPS_MIN_RESOLUTION} (the LPIPS "
                             f"backbones downsample too far below that), got "
                             f"{self.lpips_resolution}")
        if self.internvl_max_tiles is not None and self.internvl_max_tiles < 1:
            raise ValueError(f"--internvl_max_tiles must be >= 1, got {self.internvl_max_tiles}")
        if self.internvl_temperature <= 0:
            raise ValueError(f"--internvl_temperature must be > 0, got {self.internvl_temperature}")
        check_views(self.internvl_shift_views, "--internvl_shift_views")
        if self.internvl_shift_views > 1 and self.semantics == "original":
            raise ValueError("--internvl_shift_views is ours: --semantics original scores each "
                             "image as the original does (as given)")
        for task in ("aesthetic", "style", "content", "sharpness"):
            if getattr(self, f"{task}_prompt") and getattr(self, f"{task}_prompt_file"):
                raise ValueError(f"give --{task}_prompt or --{task}_prompt_file, not both")
            _require_file(getattr(self, f"{task}_prompt_file"), f"--{task}_prompt_file")
        if self.style_reference is not None:
            _require_file(self.style_reference, "--style_reference",
                          "the style reward compares every output with this image")
        _require_file(self.face_weights, "--face_weights")
        if self.preference_tokenizer and self.preference_backend == "hpsv2":
            raise ValueError("--preference_tokenizer does not apply to hpsv2 (it uses OpenCLIP's "
                             "shipped tokenizer)")
        if self.dreamsim_dir is not None and not Path(self.dreamsim_dir).expanduser().is_dir():
            raise ValueError(f"--dreamsim_dir: folder not found: {self.dreamsim_dir}")
        for name in ("score_alpha", "rec_lambda"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")
        if "{instruction}" not in self.edit_semantic_prompt:
            raise ValueError("--edit_semantic_prompt must contain {instruction} (where each "
                             "sample's edit instruction goes)")
        if (self.edit_specialist_weight > 0 and self.edit_structural == "dreamsim"
                and self.dreamsim_dir is None):
            raise ValueError("--edit_structural dreamsim needs --dreamsim_dir")
        if self.reward_command is not None:
            check_command(self.reward_command)   # RewardCommandError: one line
            if self.reward_command_timeout <= 0:
                raise ValueError(f"--reward_command_timeout must be > 0 seconds, got "
                                 f"{self.reward_command_timeout}")
        if self.original_repo is not None and not Path(self.original_repo).expanduser().is_dir():
            raise ValueError(f"--original_repo: folder not found: {self.original_repo}")
        if self.semantics == "original":
            qwen = [f"--{n} {getattr(self, n)}" for n in ("aesthetic_model_type",
                                                          "similarity_backend",
                                                          "sharpness_backend", "style_backend")
                    if getattr(self, n) in ("qwen", "qwen-content")
                    and (n != "style_backend" or self.style_reference is not None)]
            if qwen:
                raise ValueError(f"{', '.join(qwen)}: the original had InternVL only (its code "
                                 f"scored 'qwen' with the LAION aesthetic model); use internvl, "
                                 f"or --semantics ours for Qwen-VL")
        if self.photo_backend == "aide" and self.photo_reward_scale > 0:
            if not self.aide_repo or not self.aide_resume:
                raise ValueError("--photo_backend aide needs --aide_repo (your clone of the AIDE "
                                 "repository) and --aide_resume (its checkpoint)")
            if not Path(self.aide_repo).expanduser().is_dir():
                raise ValueError(f"--aide_repo: folder not found: {self.aide_repo}")
            _require_file(self.aide_resume, "--aide_resume")

    # ------------------------------------------------------------------ helpers
    def uses_internvl(self) -> bool:
        """True when any enabled term needs a VLM (of either backend)."""
        return any(s["name"] in VLM_REWARDS for s in reward_specs(self))


def _require_file(path: Optional[str], flag: str, why: str = "") -> None:
    if path is None:
        return
    p = Path(path).expanduser()
    if not p.is_file():
        what = "is a folder, expected a file" if p.is_dir() else "file not found"
        raise ValueError(f"{flag}: {what}: {path}" + (f" ({why})" if why else ""))


def _internvl_dtype(flags: RewardFlags, device, backend: str = "internvl") -> str:
    dtype = getattr(flags, f"{backend}_dtype")
    if dtype != "auto":
        return dtype
    # Kept as a name: the specs are logged in run_config.json.
    return str(resolve_device_dtype(device, "auto")[1]).removeprefix("torch.")


def reward_specs(flags: RewardFlags, device: Any = None, ranking: bool = False) -> list[dict]:
    """Specs for :func:`rewards.build_rewards`, one per enabled term, in a fixed order.

    ``device`` (optional) is passed to model-backed rewards (None = their default:
    CUDA if available, else CPU). Disabled terms (weight 0 or backend ``none``)
    are left out, so an empty list means "no reward enabled". ``ranking``: the scores rank
    samples of a round (GRPO / D3PO), so the edit-specialist objective z-scores its parts.
    """
    if flags.semantics == "original":
        return original_reward_specs(flags, device)
    specs: list[dict] = []

    def add(term: str, name: str, weight: float, **options: Any) -> None:
        if weight > 0:
            specs.append({"name": name, "term": term, "weight": float(weight), **options})

    grid = {"max_harm": flags.grid_ratio_max_harm, "mode": flags.grid_mode}
    if flags.grid_ratio_statistic == "coherent":
        grid = dict(COHERENT)      # statistic, max_harm, mode, period_temperature as measured
    add("grid", "grid", flags.grid_ratio_weight, period=flags.grid_ratio_period,
        sigma_bins=flags.grid_ratio_sigma_bins, tau=flags.grid_tau,
        eval_resize=flags.grid_eval_resize, **grid)
    original_brightness = {"hinge": "linear", "space": "linear"}
    add("brightness", "brightness", flags.brightness_anchor_weight,
        target=flags.brightness_target, band=flags.brightness_band,
        **(original_brightness if flags.brightness_measure == "original" else {}))
    add("crispness", "crispness", flags.crispness_weight or 0.0, floor=flags.crispness_floor,
        eval_resize=flags.crispness_eval_resize)

    def internvl(task: str, prompt_key: str, backend: str = "internvl", **extra: Any) -> dict:
        # one registry reward for every VLM; the backend only picks the model (and its flag)
        opts = {"task": task, "model_id": getattr(flags, f"{backend}_model_id"),
                "model_flag": f"--{backend}_model_id",
                "dtype": _internvl_dtype(flags, device, backend), "device": device,
                "objective": flags.internvl_objective,
                "calibration": flags.internvl_calibration,
                "temperature": flags.internvl_temperature,
                "trust_remote_code": flags.trust_remote_code, **extra}
        if flags.internvl_max_tiles is not None:
            opts["max_tiles"] = flags.internvl_max_tiles
        if flags.internvl_shift_views > 1:     # only when on: specs of existing runs unchanged
            opts["shift_views"] = flags.internvl_shift_views
        scale = getattr(flags, f"{prompt_key}_answer_scale") or flags.internvl_answer_scale
        if scale is not None:
            opts["answer_scale"] = scale
        prompt = getattr(flags, f"{prompt_key}_prompt")
        prompt_file = getattr(flags, f"{prompt_key}_prompt_file")
        if prompt is not None:
            opts["prompt"] = prompt
        if prompt_file is not None:
            opts["prompt_file"] = prompt_file
        return opts

    aesthetic = flags.aesthetic_model_type
    # The original's --style_reference: with a VLM aesthetic, the style question takes the
    # aesthetic term's place, weight and VLM. --style_reward_scale keeps both.
    style_replaces = (aesthetic in VLM_BACKENDS and flags.style_reference is not None
                      and flags.style_reward_scale is None
                      and flags.style_backend in VLM_BACKENDS)
    if aesthetic in VLM_BACKENDS and not style_replaces:
        add("aesthetic", "internvl", flags.aesthetic_reward_scale,
            **internvl("single", "aesthetic", aesthetic))
    elif aesthetic == "aesthetic_scorer":
        add("aesthetic", "aesthetic_scorer", flags.aesthetic_reward_scale,
            **_model_options(flags, "aesthetic_scorer", device))
    elif aesthetic == "v2.5":
        add("aesthetic", "aesthetic_v25", flags.aesthetic_reward_scale,
            **_model_options(flags, "aesthetic_v25", device))

    similarity = flags.similarity_backend
    if similarity == "lpips":
        add("similarity", "lpips", flags.image_reward_scale, net=flags.lpips_net,
            resolution=flags.lpips_resolution, device=device,
            **_given(backbone_path=flags.lpips_backbone))
    elif similarity == "face":
        add("similarity", "face", flags.image_reward_scale, **_model_options(flags, "face", device))
    elif similarity in ("internvl-content", "qwen-content"):
        add("similarity", "internvl", flags.image_reward_scale,
            **internvl("content-similarity", "content", similarity.removesuffix("-content")))
    elif similarity == "dreamsim":
        add("similarity", "dreamsim", flags.image_reward_scale,
            **_model_options(flags, "dreamsim", device))

    if flags.sharpness_backend in VLM_BACKENDS:
        add("sharpness", "internvl", flags.sharpness_reward_scale,
            **internvl("sharpness", "sharpness", flags.sharpness_backend))

    if flags.style_reference is not None and flags.style_backend == "dreamsim":
        add("style", "dreamsim", 1.0 if flags.style_reward_scale is None
            else flags.style_reward_scale, reference=flags.style_reference,
            **_model_options(flags, "dreamsim", device))
    elif flags.style_reference is not None:
        style_weight = (flags.aesthetic_reward_scale if style_replaces
                        else 1.0 if flags.style_reward_scale is None else flags.style_reward_scale)
        style_backend = aesthetic if style_replaces else flags.style_backend
        if style_backend == "dreamsim":
            add("style", "dreamsim", style_weight, reference=flags.style_reference,
                **_model_options(flags, "dreamsim", device))
        else:
            add("style", "internvl", style_weight,
                **internvl("similarity", "style", style_backend, reference=flags.style_reference))

    if flags.photo_backend == "aide":
        add("photo", "aide", flags.photo_reward_scale, **_model_options(flags, "aide", device))
    if flags.edit_specialist_weight > 0:
        structural = {"lpips": lambda: {"name": "lpips", "net": flags.lpips_net,
                                        "resolution": flags.lpips_resolution, "device": device,
                                        **_given(backbone_path=flags.lpips_backbone)},
                      "dreamsim": lambda: {"name": "dreamsim",
                                           **_model_options(flags, "dreamsim", device)}
                      }.get(flags.edit_structural)
        structural = structural() if structural else {
            "name": "internvl", **internvl("content-similarity", "content",
                                           flags.edit_structural.removesuffix("-content"))}
        semantic = internvl("content-similarity", "content", flags.edit_semantic_backend)
        for key in ("task", "prompt", "prompt_file"):   # the question is the objective's own
            semantic.pop(key, None)
        if flags.internvl_answer_scale is None:
            semantic.pop("answer_scale", None)
        else:
            semantic["answer_scale"] = flags.internvl_answer_scale
        add("edit_specialist", "edit_specialist", flags.edit_specialist_weight,
            structural=structural, semantic=semantic, score_alpha=flags.score_alpha,
            rec_lambda=flags.rec_lambda, standardize=ranking,
            semantic_prompt=flags.edit_semantic_prompt)
    if flags.reward_command is not None:
        add("command", "command", flags.reward_command_weight, command=flags.reward_command,
            timeout=flags.reward_command_timeout)
    if flags.preference_backend != "none":
        add("preference", flags.preference_backend, flags.preference_reward_scale,
            **_model_options(flags, flags.preference_backend, device))
    return specs


def original_questions(flags: RewardFlags) -> dict[str, str]:
    """The question of each VLM task for --semantics original: the clone's (--original_repo),
    else the name of our preset for the same use case."""
    if flags.original_repo:
        return read_original_texts(flags.original_repo).questions
    return dict(ORIGINAL_USE_CASE_PRESETS)


def original_reward_specs(flags: RewardFlags, device: Any = None) -> list[dict]:
    """The original trainer's reward terms (docs/original_mode.md): its anchors and grid term
    (batch means on the eval-resized image), its InternVL scoring, LPIPS as exp(-5 d)."""
    specs: list[dict] = []
    questions = original_questions(flags)
    size = flags.grid_eval_resize

    def add(term: str, name: str, weight: float, **options: Any) -> None:
        if weight > 0:
            specs.append({"name": name, "term": term, "weight": float(weight), **options})

    add("grid", "original_grid", flags.grid_ratio_weight, period=int(flags.grid_ratio_period),
        max_harm=flags.grid_ratio_max_harm, eval_resize=size)
    add("brightness", "original_brightness", flags.brightness_anchor_weight,
        target=flags.brightness_target, band=flags.brightness_band, eval_resize=size)
    add("crispness", "original_crispness", flags.crispness_weight or 0.0, eval_resize=size)

    def vlm(task: str, key: str, **extra: Any) -> dict:
        opts = {"task": task, "model_id": flags.internvl_model_id,
                "model_flag": "--internvl_model_id",
                "dtype": _internvl_dtype(flags, device, "internvl"), "device": device,
                "objective": flags.internvl_objective, "calibration": flags.internvl_calibration,
                "temperature": flags.internvl_temperature,
                "trust_remote_code": flags.trust_remote_code, **extra}
        scale = getattr(flags, f"{key}_answer_scale") or flags.internvl_answer_scale
        if scale is not None:
            opts["answer_scale"] = scale
        prompt, prompt_file = getattr(flags, f"{key}_prompt"), getattr(flags, f"{key}_prompt_file")
        if prompt_file is not None:
            opts["prompt_file"] = prompt_file
        else:
            opts["prompt"] = prompt if prompt is not None else questions[task]
        return opts

    aesthetic = flags.aesthetic_model_type
    if aesthetic == "internvl" and flags.style_reference is not None:
        # the original: the style question takes the aesthetic term's place and weight
        add("style", "original_vlm", flags.aesthetic_reward_scale,
            **vlm("similarity", "style", reference=flags.style_reference))
    elif aesthetic == "internvl":
        add("aesthetic", "original_vlm", flags.aesthetic_reward_scale, **vlm("single", "aesthetic"))
    elif aesthetic == "aesthetic_scorer":
        add("aesthetic", "aesthetic_scorer", flags.aesthetic_reward_scale,
            **_model_options(flags, "aesthetic_scorer", device))
    elif aesthetic == "v2.5":
        add("aesthetic", "aesthetic_v25", flags.aesthetic_reward_scale,
            **_model_options(flags, "aesthetic_v25", device))

    similarity = flags.similarity_backend
    if similarity == "lpips":
        add("similarity", "lpips", flags.image_reward_scale, net=flags.lpips_net,
            resolution=None, form="exp", device=device,
            **_given(backbone_path=flags.lpips_backbone))
    elif similarity == "face":
        add("similarity", "face", flags.image_reward_scale, **_model_options(flags, "face", device))
    elif similarity == "internvl-content":
        add("similarity", "original_vlm", flags.image_reward_scale,
            **vlm("content-similarity", "content"))
    elif similarity == "dreamsim":
        add("similarity", "dreamsim", flags.image_reward_scale,
            **_model_options(flags, "dreamsim", device))
    if flags.sharpness_backend == "internvl":
        add("sharpness", "original_vlm", flags.sharpness_reward_scale,
            **vlm("sharpness", "sharpness"))
    if flags.photo_backend == "aide":
        add("photo", "aide", flags.photo_reward_scale, **_model_options(flags, "aide", device))
    if flags.preference_backend != "none":   # our extension; the original had none
        add("preference", flags.preference_backend, flags.preference_reward_scale,
            **_model_options(flags, flags.preference_backend, device))
    return specs


def _model_options(flags: RewardFlags, name: str, device: Any) -> dict:
    """The factory options of a learned reward with its own weights (not a VLM question, not
    LPIPS, whose options differ by semantics): one place for every term that builds it."""
    if name == "aesthetic_scorer":
        return dict(device=device, trust_remote_code=flags.trust_remote_code,
                    **_given(clip_model=flags.aesthetic_clip_model, head_path=flags.aesthetic_head,
                             head_filename=flags.aesthetic_head_filename))
    if name == "aesthetic_v25":
        return dict(device=device, trust_remote_code=flags.trust_remote_code,
                    **_given(encoder=flags.aesthetic_encoder, model_path=flags.aesthetic_head,
                             head_filename=flags.aesthetic_head_filename))
    if name == "face":
        return dict(weights_path=flags.face_weights, device=device)
    if name == "dreamsim":
        return dict(model_dir=flags.dreamsim_dir, dreamsim_type=flags.dreamsim_type,
                    device=device)
    if name == "aide":
        return dict(aide_repo=flags.aide_repo, aide_resume=flags.aide_resume, device=device,
                    trust_remote_code=flags.trust_remote_code)
    if name in ("imagereward", "hpsv2", "pickscore"):
        opts = dict(prompt=flags.preference_prompt, device=device,
                    **_given(model_path=flags.preference_model,
                             tokenizer=flags.preference_tokenizer))
        if name == "hpsv2":
            opts["version"] = flags.hpsv2_version
        return opts
    raise ValueError(f"no learned-reward options for {name!r}")


def _given(**options: Any) -> dict:
    """Only the options the user set (the factories keep their own defaults otherwise)."""
    return {k: v for k, v in options.items() if v is not None}


def cli_model_error(exc: Exception, spec: dict):
    """``exc`` with factory keywords renamed to this command's flags (other errors unchanged).

    The registry record says which flag reaches each file option (``backbone_path=`` ->
    ``--lpips_backbone``; a VLM's ``model_id=`` -> its term's ``--internvl_/--qwen_model_id``).
    """
    if not isinstance(exc, ModelUnavailableError) or spec.get("name") not in REGISTRY:
        return exc
    names = option_flags(spec)
    if "model_id" in record(spec["name"]).files and exc.flag:
        names[exc.flag] = names["model_id="]      # a VLM loader's only path is the model
    return exc.for_cli(names)


def require_reward(flags: RewardFlags, device: Any = None, ranking: bool = False) -> list[dict]:
    """The reward specs of ``flags``; refuse flags that enable no reward term (one line)."""
    specs = reward_specs(flags, device=device, ranking=ranking)
    if not specs:
        known = {f.name for f in fields(flags)}
        raise RewardBuildError("no reward is enabled: set at least one of "
                               + ", ".join(selecting_flags(known)))
    return specs


def build_term(spec: dict) -> RewardTerm:
    """One reward term; every failure becomes one :class:`RewardBuildError` line naming the
    term and the flag that caused it (training and ``alignprop.evaluate`` both build here).

    Missing reward modules (NotImplementedError from the registry), options a factory
    refuses (ValueError) and models that cannot be loaded (ModelUnavailableError) are
    re-raised with the term and flag, so the CLI prints one line instead of a traceback.
    """
    try:
        return build_one(spec)
    except NotImplementedError as exc:
        raise RewardBuildError(f"reward term {spec['term']!r} is not available: {exc}") from exc
    except ModelUnavailableError as exc:
        raise RewardBuildError(f"reward term {spec['term']!r}: "
                               f"{cli_model_error(exc, spec)}") from exc
    except (ValueError, TypeError, FileNotFoundError) as exc:
        raise RewardBuildError(f"reward term {spec['term']!r} ({spec['name']}): {exc}") from exc


def build_reward_from_flags(flags: RewardFlags, device: Any = None, ranking: bool = False):
    """Build the composite reward of ``flags`` (one :class:`RewardBuildError` line on failure);
    ``ranking``: its scores rank a round's samples (GRPO / D3PO), see :func:`reward_specs`."""
    return CompositeReward([build_term(spec)
                            for spec in require_reward(flags, device=device, ranking=ranking)])


class RewardBuildError(UserError):
    """A reward selected by the flags could not be built; the message says which and why."""


__all__ = ["RewardFlags", "RewardBuildError", "reward_specs", "require_reward",
           "build_reward_from_flags", "build_term", "cli_model_error",
           "AESTHETIC_BACKENDS", "SIMILARITY_BACKENDS", "SHARPNESS_BACKENDS", "PHOTO_BACKENDS",
           "PREFERENCE_BACKENDS", "STYLE_BACKENDS", "VLM_BACKENDS"]
