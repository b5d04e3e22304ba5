"""Face-identity similarity to the input image (FaceNet), as a differentiable reward.

reward = cos(FaceNet(crop(images, box)), FaceNet(crop(inputs, box)))  in [-1, 1]

* The face is located with MTCNN (facenet-pytorch; its P/R/O-Net weights ship
  inside the wheel) on the INPUT image only: detection needs no gradient and the
  input does not change during training, so boxes are cached per input.
* The SAME box (rescaled if output and input sizes differ) is cropped from the
  output with ``torchvision.ops.roi_align`` -- a differentiable crop + resize to
  160x160 with area-like averaging, similar to facenet's own ``extract_face`` -- and
  from the input; identity is compared on the face, not on the whole frame.
* The embedding network is facenet-pytorch's ``InceptionResnetV1`` with the
  VGGFace2 weights (``20180402-114759-vggface2.pt``); embeddings are L2
  normalised, so identical crops give exactly 1.

No face on an input (``no_face``):
  ``"whole_image"`` (default) compare the whole frames, resized to 160x160;
  ``"skip"``         score 0 for that sample, constant (no gradient from it);
  ``"error"``        raise ``ValueError``.
Metric ``no_face_rate`` counts the fallbacks (fraction of the batch).

facenet-pytorch 2.6.0 pins torch<2.3 / numpy<2; we install it with --no-deps
(requirements-nodeps.txt) and the tests run MTCNN and InceptionResnetV1 with
our torch / numpy.
"""
from __future__ import annotations

import hashlib
import os
from collections import OrderedDict

import torch
import torch.nn.functional as F

from common.hub import (ModelUnavailableError, load_state_dict_file, resolve_device_dtype,
                        resolve_weight_file)

from .base import Metrics, batch_mean, check_images

VGGFACE2_FILE = "20180402-114759-vggface2.pt"
VGGFACE2_URL = f"https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/{VGGFACE2_FILE}"
NO_FACE_MODES = ("whole_image", "skip", "error")
FACE_SIZE = 160  # InceptionResnetV1 input size used for VGGFace2 training


def _facenet_cache_path() -> str:
    """Where facenet-pytorch itself caches the VGGFace2 file (TORCH_HOME/checkpoints)."""
    home = os.path.expanduser(os.getenv(
        "TORCH_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch")))
    return os.path.join(home, "checkpoints", VGGFACE2_FILE)


def build_facenet(weights_path=None, pretrained: bool = True):
    """Frozen InceptionResnetV1 (embedding mode) in eval mode; never downloads.

    ``weights_path``: a VGGFace2 state dict file (facenet's ``.pt``, or
    ``.safetensors``), a directory holding ``20180402-114759-vggface2.pt``, or a
    Hugging Face repo id holding that file. Default: facenet-pytorch's own cache.
    The classifier (``logits.*``, 8631 VGGFace2 identities) is not needed and dropped.
    """
    from facenet_pytorch import InceptionResnetV1

    model = InceptionResnetV1(pretrained=None, classify=False)
    if pretrained:
        path = resolve_weight_file(weights_path, VGGFACE2_FILE,
                                   "FaceNet InceptionResnetV1 VGGFace2 weights", "weights_path=",
                                   default_cache=_facenet_cache_path(), url=VGGFACE2_URL)
        state = {k: v for k, v in load_state_dict_file(path, flag="weights_path=").items() if not k.startswith("logits.")}
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise ModelUnavailableError(
                f"{path!r} is not an InceptionResnetV1 state dict ({str(exc).splitlines()[0]})"
            ) from None
    return model.eval().requires_grad_(False)


class _BoxCache:
    """Small LRU of MTCNN results keyed by the input's quantised pixels."""

    def __init__(self, size: int = 4096):
        self.size, self.data = size, OrderedDict()

    @staticmethod
    def key(img_u8: torch.Tensor) -> str:
        return hashlib.sha1(img_u8.numpy().tobytes()).hexdigest() + str(tuple(img_u8.shape))

    def get(self, k):
        if k in self.data:
            self.data.move_to_end(k)
        return self.data.get(k)

    def put(self, k, v):
        self.data[k] = v
        if len(self.data) > self.size:
            self.data.popitem(last=False)


def make_face_identity_reward(weights_path=None, no_face: str = "whole_image", pretrained: bool = True,
                              margin: float = 0.0, min_face_prob: float = 0.9, device=None,
                              dtype="float32", detect_faces: bool = True):
    """FaceNet identity similarity between the face in ``images`` and in ``inputs``.

    Args:
        weights_path: VGGFace2 InceptionResnetV1 weights (file, directory or hub
            repo id); default facenet-pytorch's cache ``$TORCH_HOME/checkpoints``.
        no_face: fallback when MTCNN finds no face on an input: "whole_image",
            "skip" (score 0, no gradient) or "error" (see module docstring).
        pretrained: load the VGGFace2 weights (False: random embedding net, tests).
        margin: extra border around the MTCNN box, in pixels of the 160 px crop
            (facenet-pytorch's ``margin`` convention; 0 = its default).
        min_face_prob: MTCNN detections below this confidence count as no face.
        detect_faces: False skips MTCNN: every image is compared whole, as when no face is
            found (the weightless build of ``--estimate``: MTCNN runs on the input without
            grad, so it holds no activations for backward).
    Returns scores in [-1, 1] (1 = identical face crops). Metrics: ``similarity``
    (mean over samples with a score), ``no_face_rate``, ``face_prob``.
    """
    if no_face not in NO_FACE_MODES:
        raise ValueError(f"unknown no_face mode {no_face!r}; use one of {list(NO_FACE_MODES)}")
    if not 0.0 <= min_face_prob <= 1.0:
        raise ValueError(f"min_face_prob must be in [0, 1], got {min_face_prob}")
    if not 0.0 <= margin < FACE_SIZE:
        raise ValueError(f"margin must be in [0, {FACE_SIZE}) pixels, got {margin}")
    from facenet_pytorch import MTCNN
    from torchvision.ops import roi_align

    device, dtype = resolve_device_dtype(device, dtype)
    net = build_facenet(weights_path, pretrained).to(device=device, dtype=dtype)
    # MTCNN runs on the input only, in float32 (its NMS / thresholds are tuned for it).
    detector = None
    if detect_faces:
        detector = MTCNN(device=device, keep_all=False, select_largest=True)
        detector.eval().requires_grad_(False)
    cache = _BoxCache()

    def detect(inputs: torch.Tensor) -> list[tuple[list[float], float] | None]:
        """One (x1, y1, x2, y2) box in input pixels + its probability per image, or None."""
        if detector is None:
            return [None] * len(inputs)
        u8 = (inputs.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
        keys = [_BoxCache.key(im) for im in u8]
        todo = [i for i, k in enumerate(keys) if cache.get(k) is None]
        if todo:
            with torch.no_grad():
                batch = u8[todo].permute(0, 2, 3, 1).float().to(device)  # MTCNN wants (B,H,W,3) 0..255
                boxes, probs = detector.detect(batch)
            for i, b, p in zip(todo, boxes, probs):
                found = b is not None and p is not None and p[0] is not None and float(p[0]) >= min_face_prob
                cache.put(keys[i], (("box", [float(v) for v in b[0]], float(p[0])) if found else ("none",)))
        out = []
        for k in keys:
            hit = cache.get(k)
            out.append((hit[1], hit[2]) if hit[0] == "box" else None)
        return out

    def crop(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        # roi_align: bilinear samples averaged per output cell (adaptive sampling
        # ratio), differentiable w.r.t. x; aligned=True uses pixel-centre coordinates.
        rois = torch.cat([torch.arange(len(boxes), device=x.device, dtype=x.dtype)[:, None],
                          boxes.to(x)], dim=1)
        return roi_align(x, rois, output_size=(FACE_SIZE, FACE_SIZE), spatial_scale=1.0,
                         sampling_ratio=-1, aligned=True)

    def embed(face01: torch.Tensor) -> torch.Tensor:
        # facenet's fixed_image_standardization: (255 x - 127.5) / 128.
        return net((face01 * 255.0 - 127.5) / 128.0)

    def reward(images: torch.Tensor, inputs: torch.Tensor | None, prompts=None):
        check_images(images)
        if inputs is None:
            raise ValueError("the face reward compares with the input images; inputs is None")
        check_images(inputs, "inputs")
        if len(images) != len(inputs):
            raise ValueError(f"{len(images)} images but {len(inputs)} inputs")
        found = detect(inputs)
        (hi, wi), (ho, wo) = inputs.shape[-2:], images.shape[-2:]
        box_in, box_out, keep, probs = [], [], [], []
        for i, det in enumerate(found):
            if det is None:
                if no_face == "error":
                    raise ValueError(f"no face found on input {i} (no_face='error')")
                if no_face == "skip":
                    continue
                b = [0.0, 0.0, float(wi), float(hi)]
            else:
                b, prob = list(det[0]), det[1]
                probs.append(prob)
                if margin > 0:  # facenet-pytorch's margin: pixels of the 160 px crop
                    mx = margin * (b[2] - b[0]) / (FACE_SIZE - margin) / 2
                    my = margin * (b[3] - b[1]) / (FACE_SIZE - margin) / 2
                    b = [b[0] - mx, b[1] - my, b[2] + mx, b[3] + my]
                b = [max(0.0, b[0]), max(0.0, b[1]), min(float(wi), b[2]), min(float(hi), b[3])]
            keep.append(i)
            box_in.append(b)
            box_out.append([b[0] * wo / wi, b[1] * ho / hi, b[2] * wo / wi, b[3] * ho / hi])
        scores = torch.zeros(len(images), device=images.device, dtype=torch.float32)
        if keep:
            idx = torch.tensor(keep, device=images.device)
            x = images.index_select(0, idx).to(device=device, dtype=dtype)
            y = inputs.detach().index_select(0, idx).to(device=device, dtype=dtype)
            e_out = embed(crop(x, torch.tensor(box_out, dtype=torch.float32, device=device)))
            with torch.no_grad():  # the input is a fixed target: no graph needed
                e_in = embed(crop(y, torch.tensor(box_in, dtype=torch.float32, device=device)))
            sim = F.cosine_similarity(e_out.float(), e_in.float(), dim=1)
            scores = scores.index_put((idx,), sim.to(images.device))
        n_none = sum(d is None for d in found)
        metrics: Metrics = {
            "similarity": batch_mean(scores[keep]) if keep else 0.0,
            "no_face_rate": n_none / len(found),
            "face_prob": sum(probs) / len(probs) if probs else 0.0,
        }
        return scores, metrics

    reward.model = net
    reward.detect = detect  # exposed for tests / debugging
    return reward
