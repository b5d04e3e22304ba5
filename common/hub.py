"""One clear error for models that cannot be found (offline, wrong path, no weights).

Every loader in the project (Kontext pipeline, InternVL, LPIPS, FaceNet, aesthetic
heads, AIDE) turns "could not load" into :class:`ModelUnavailableError`, whose
message names the model, where we looked, and the flag that takes a local path.
"""
from __future__ import annotations

import os


class ModelUnavailableError(RuntimeError):
    """A model or weight file could not be loaded; the message says how to fix it.

    ``flag`` is the option the message tells the user to pass a local path with. The
    factories name their own keyword (``backbone_path=``); a command renames it to the
    command-line flag that reaches that keyword with :meth:`for_cli`, so a CLI user is
    never told to pass a Python argument.
    """

    def __init__(self, message: str, flag: str | None = None):
        super().__init__(message)
        self.flag = flag

    def for_cli(self, flags: dict[str, str]) -> "ModelUnavailableError":
        """The same error with ``self.flag`` replaced by ``flags[self.flag]`` (if listed)."""
        new = flags.get(self.flag or "")
        if not new:
            return self
        return ModelUnavailableError(str(self).replace(self.flag, new), new)


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def brief(text, limit: int = 200) -> str:
    """First line of ``text``, at most ``limit`` characters, cut at a word boundary."""
    line = (str(text).strip().splitlines() or [""])[0].strip()
    if len(line) <= limit:
        return line
    cut = line[:limit].rsplit(" ", 1)[0].rstrip(" ,;:")
    return cut + " ..."


def looks_local(source: str) -> bool:
    """Is ``source`` meant as a local path rather than a hub id (``owner/name``)?"""
    s = os.fspath(source)
    return (os.path.exists(os.path.expanduser(s)) or s.startswith(("/", ".", "~"))
            or s.count("/") > 1 or "\\" in s)


def model_unavailable(what: str, source: str, flag: str, exc: BaseException | None = None,
                      hint: str = "", repo_id: str | None = None) -> ModelUnavailableError:
    """Build the error raised when ``what`` could not be loaded from ``source``.

    ``flag`` is the command-line flag (or keyword) that accepts a local path;
    ``repo_id`` the hub id to suggest downloading when ``source`` is a local folder.
    """
    reason = f" ({type(exc).__name__}: {brief(exc)})" if exc else ""
    mode = " HF_HUB_OFFLINE=1 is set, so nothing is downloaded." if offline() else ""
    if looks_local(source):
        # A local folder: downloading "./models/x" from the hub means nothing; say where
        # to put the real model instead.
        msg = (f"Could not load {what} from the local path {source!r}{reason}.{mode} "
               f"Download it on a machine with network access into that folder (e.g. "
               f"`huggingface-cli download {repo_id or 'OWNER/NAME'} --local-dir {source}`), "
               f"or pass another local directory or file with {flag}.")
    else:
        msg = (f"Could not load {what} from {source!r}{reason}.{mode} "
               f"Download it on a machine with network access (e.g. `huggingface-cli download "
               f"{source}`) and pass the local directory or file with {flag}.")
    if hint:
        msg += " " + hint
    return ModelUnavailableError(msg, flag)


def resolve_device_dtype(device=None, dtype="float32"):
    """Turn the common ``device`` / ``dtype`` options into torch objects.

    ``device=None`` or ``"auto"`` means CUDA when available, else CPU; ``dtype`` may be a
    string ("float32", "bfloat16", "float16", or "auto" = bfloat16 on CUDA, float32
    elsewhere) or a ``torch.dtype``.
    """
    import torch

    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if dtype == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                 "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
        if dtype not in names:
            raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(names)}")
        dtype = names[dtype]
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype or its name, got {dtype!r}")
    return device, dtype


def torch_hub_checkpoint(filename: str) -> str:
    """Where torch hub / torchvision cache a downloaded checkpoint (follows TORCH_HOME)."""
    import torch

    return os.path.join(torch.hub.get_dir(), "checkpoints", filename)


def resolve_weight_file(source, filename: str, what: str, flag: str, default_cache: str | None = None,
                        url: str | None = None) -> str:
    """Find one weight file and return its local path, or raise ModelUnavailableError.

    ``source`` may be a local file, a local directory that holds ``filename``, a
    Hugging Face repo id (``owner/name``, the file ``filename`` inside it) or
    ``None``. With ``None``, ``default_cache`` (a path where the upstream project
    caches the file, e.g. the torch hub checkpoints folder) is used when it
    exists. ``url`` is where the file can be downloaded from, quoted in the error.
    """
    if source is None:
        if default_cache and os.path.isfile(default_cache):
            return default_cache
        where = default_cache or filename
        get = f"download {url}" if url else f"obtain {filename}"
        raise ModelUnavailableError(
            f"Could not load {what}: {filename} is not at {where!r} and nothing is downloaded "
            f"here{' (HF_HUB_OFFLINE=1)' if offline() else ''}. On a machine with network access "
            f"{get}, then put it at {where!r} (the cache folder follows TORCH_HOME) or pass its "
            f"path with {flag}.", flag
        )
    source = os.fspath(source)
    if os.path.isfile(source):
        return source
    if os.path.isdir(source):
        candidate = os.path.join(source, filename)
        if os.path.isfile(candidate):
            return candidate
        raise ModelUnavailableError(
            f"Could not load {what}: directory {source!r} has no {filename}. Pass the weight "
            f"file itself with {flag}.", flag
        )
    looks_like_repo = source.count("/") == 1 and not source.startswith((".", "/", "~"))
    if not looks_like_repo:
        raise ModelUnavailableError(
            f"Could not load {what}: {source!r} is neither an existing file or directory nor a "
            f"Hugging Face repo id (owner/name). Pass a local path with {flag}.", flag
        )
    try:
        from huggingface_hub import hf_hub_download

        return hf_hub_download(source, filename)
    except Exception as exc:  # offline, missing repo or file: one message
        raise model_unavailable(f"{what} ({filename})", source, flag, exc) from None


def weight_format(path) -> str:
    """What a weight file holds, from its first bytes (its name is not trusted):
    "safetensors", "torch-zip", "torch-legacy" (a bare pickle) or "unknown"."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04":
        return "torch-zip"
    if head[:1] == b"\x80":
        return "torch-legacy"
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    return "unknown"


class WeightFileError(ModelUnavailableError):
    """A weight file that is truncated, mislabelled or holds more than tensors (one line)."""


def load_torch_file(path, mmap: bool = False, allowed=(), flag: str | None = None):
    """``torch.load(weights_only=True)``; every failure one :class:`WeightFileError` line.

    A file that needs other Python objects is refused in our own words: torch's message
    suggests ``weights_only=False``, the unsafe path, which this project never takes.
    ``allowed``: plain classes a known format stores (AIDE: ``argparse.Namespace``).
    """
    import argparse
    import pickle
    import zipfile

    import torch

    where = f"{flag} {path}" if flag else f"{path}"
    try:
        with torch.serialization.safe_globals([argparse.Namespace, *allowed]):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        raise WeightFileError(f"{where}: holds pickled Python objects besides tensors; it is not "
                              f"loaded (unpickling them could run code): save the weights as a "
                              f"state dict or as safetensors", flag) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as exc:
        raise WeightFileError(f"{where}: is truncated or not a torch weight file "
                              f"({type(exc).__name__}: {brief(exc, 120)})", flag) from None


def load_state_dict_file(path: str, flag: str | None = None) -> dict:
    """A state dict from a safetensors or torch file (read by content, ``weights_only``).

    Truncated, mislabelled or pickled-object files are one :class:`WeightFileError` line
    naming ``flag`` (when given) and the file.
    """
    kind = weight_format(path)
    where = f"{flag} {path}" if flag else f"{path}"
    if kind == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightFileError(f"{where}: is truncated or not a safetensors file "
                                  f"({brief(exc, 120)})", flag) from None
    if kind == "unknown":
        raise WeightFileError(f"{where}: is not a weight file (neither safetensors nor a torch "
                              f"file)", flag)
    return load_torch_file(path, flag=flag)
