"""CLIP image embeddings for CMMD (Jayasumana et al., "Rethinking FID", CVPR 2024).

CMMD's features are the image embeddings of CLIP ViT-L/14 at 336 px (OpenAI's weights), each scaled to
unit length. Preprocessing as CMMD's reference code (google-research ``cmmd/embedding.py``): images in
[0, 1], resized to 336 x 336 with a bicubic filter (anti-aliased when shrinking, as ``jax.image.resize``),
then CLIP's per-channel normalisation. Grayscale images are repeated to 3 channels. The metric on them
is :func:`medkit.metrics.distribution.cmmd`.

Where the weights come from, first hit wins:

1. ``source``: a local folder in the **transformers** layout (``config.json`` of a CLIP or CLIP-vision
   model + ``model.safetensors``/``pytorch_model.bin``) or the **open_clip** layout
   (``open_clip_config.json`` + ``open_clip_model.safetensors``/``open_clip_pytorch_model.bin``; needs the
   ``open_clip_torch`` package, which needs torchvision - present on Kaggle and Colab); or a Hugging Face id;
2. the environment variable ``MEDKIT_CLIP`` (same forms);
3. on Kaggle, a folder under ``/kaggle/input`` whose ``config.json`` describes a CLIP model (an attached
   model or dataset);
4. the Hugging Face cache (``HF_HUB_OFFLINE`` respected), then a download of ``openai/clip-vit-large-patch14-336``
   if the hub answers.

When none has it, :class:`~medkit.metrics.WeightsUnavailable` lists what was searched and what to attach.
Only OpenAI's ViT-L/14@336 is labelled ``clip-vit-l-14-336`` (and only its CMMD is called ``cmmd``);
any other CLIP is labelled by its architecture, so its numbers cannot pass for CMMD.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from medkit.metrics import _weights
from medkit.metrics._weights import WeightsUnavailable

CMMD_CLIP_ID = "openai/clip-vit-large-patch14-336"
CMMD_EXTRACTOR = "clip-vit-l-14-336"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)   # OpenAI CLIP's normalisation (its preprocess and processor)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
ENV_VAR = "MEDKIT_CLIP"
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_OPEN_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def _layout(folder: Path) -> str | None:
    """'transformers', 'open_clip' or None (not a CLIP folder)."""
    cfg = folder / "config.json"
    if cfg.is_file() and any((folder / f).is_file() for f in _WEIGHT_FILES):
        try:
            kind = json.loads(cfg.read_text()).get("model_type", "")
        except (OSError, ValueError):
            return None
        if kind in ("clip", "clip_vision_model"):
            return "transformers"
    if (folder / "open_clip_config.json").is_file() and any((folder / f).is_file() for f in _OPEN_CLIP_FILES):
        return "open_clip"
    return None


def _kaggle_folders() -> list[Path]:
    """CLIP folders under /kaggle/input, searched to a bounded depth."""
    root = _weights.KAGGLE_INPUT
    if not root.is_dir():
        return []
    hits = []
    for depth in range(1, _weights.SEARCH_MAX_DEPTH + 1):
        for cfg in root.glob("/".join(["*"] * depth) + "/config.json"):
            if _layout(cfg.parent):
                hits.append(cfg.parent)
        for cfg in root.glob("/".join(["*"] * depth) + "/open_clip_config.json"):
            if _layout(cfg.parent):
                hits.append(cfg.parent)
    # OpenAI's ViT-L/14@336 first, when its name shows in the path
    return sorted(set(hits), key=lambda p: ("336" not in str(p), str(p)))


def _hub_folder(repo: str, searched: list[str]) -> Path | None:
    from medkit.nets.sd import hub_snapshot

    return hub_snapshot(repo, ["config.json", "preprocessor_config.json", "model.safetensors"], searched)


def find_clip(source: str | os.PathLike | None = None) -> tuple[Path, str]:
    """``(folder, layout)`` of the CLIP weights to use, in the module docstring's order."""
    searched = []
    for where, value in (("source", source), (ENV_VAR, os.environ.get(ENV_VAR))):
        if not value:
            continue
        p = Path(value).expanduser()
        if p.is_dir():
            layout = _layout(p)
            if layout is None:
                raise WeightsUnavailable(
                    f"{where}={value!r} is a folder but not a CLIP model: expected config.json (model_type clip) with "
                    f"model.safetensors or pytorch_model.bin (transformers layout), or open_clip_config.json with "
                    f"open_clip_model.safetensors / open_clip_pytorch_model.bin (open_clip layout).")
            return p, layout
        if "/" in str(value) and not str(value).startswith((".", "/", "~")):  # a hub id: used or an error
            folder = _hub_folder(str(value), searched)
            if folder is not None:
                return folder, "transformers"
            raise WeightsUnavailable(f"CLIP {value!r} (from {where}) is not available offline. Searched:\n  - "
                                     + "\n  - ".join(searched) + f"\nTo fix: download it where there is internet "
                                     f"(`hf download {value}`) and point {where} at the folder.")
        raise WeightsUnavailable(f"{where}={value!r}: no such folder, and not a Hugging Face id (owner/name).")
    for folder in _kaggle_folders():
        return folder, _layout(folder)
    root = _weights.KAGGLE_INPUT
    searched.append(f"{root}/** for a CLIP model folder" if root.is_dir() else f"{root} (not on Kaggle)")
    folder = _hub_folder(CMMD_CLIP_ID, searched)
    if folder is not None:
        return folder, "transformers"
    raise WeightsUnavailable(
        "CLIP ViT-L/14@336 (CMMD's network) was not found. Searched:\n  - " + "\n  - ".join(searched)
        + f"\nTo fix: on Kaggle, attach the model {CMMD_CLIP_ID} (transformers layout: config.json + "
          f"model.safetensors) as a model or dataset, or turn the notebook's internet on; elsewhere run "
          f"`hf download {CMMD_CLIP_ID}` on a machine with internet, or set {ENV_VAR} (or the clip= parameter) "
          f"to a local folder holding it.")


def describe(cfg) -> str:
    """The extractor's label: ``clip-vit-l-14-336`` for CMMD's architecture, else its shape in words."""
    v = getattr(cfg, "vision_config", cfg)
    shape = (v.hidden_size, v.num_hidden_layers, v.patch_size, v.image_size)
    proj = getattr(cfg, "projection_dim", None)
    if shape == (1024, 24, 14, 336) and proj == 768:
        return CMMD_EXTRACTOR
    return f"clip-vit(width {v.hidden_size}, {v.num_hidden_layers} layers, patch {v.patch_size}, {v.image_size} px)"


class CLIPFeatures(torch.nn.Module):
    """Unit-norm CLIP image embeddings of images in [-1, 1], (N, 1|3, H, W) -> (N, D): CMMD's features."""

    def __init__(self, source: str | os.PathLike | None = None):
        super().__init__()
        folder, layout = find_clip(source)
        self.source, self.layout = str(folder), layout
        if layout == "transformers":
            from transformers import CLIPVisionModelWithProjection

            self.model = CLIPVisionModelWithProjection.from_pretrained(folder).eval()
            cfg = self.model.config
            self.image_size = int(cfg.image_size)
            self.name = describe(cfg)
            mean, std = CLIP_MEAN, CLIP_STD
            pre = folder / "preprocessor_config.json"
            if pre.is_file():
                p = json.loads(pre.read_text())
                mean, std = tuple(p.get("image_mean", mean)), tuple(p.get("image_std", std))
            self.feature_dim = int(cfg.projection_dim)
        else:
            self._load_open_clip(folder)
            mean, std = self.mean_std
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)

    def _load_open_clip(self, folder: Path) -> None:
        try:
            import open_clip
        except ImportError as e:
            raise WeightsUnavailable(
                f"{folder} holds CLIP in open_clip's layout, but open_clip is not importable ({e}). Install "
                f"open_clip_torch (it needs torchvision) or use the transformers copy {CMMD_CLIP_ID}.") from None
        cfg = json.loads((folder / "open_clip_config.json").read_text())
        model, _ = open_clip.create_model_from_pretrained(f"local-dir:{folder}", return_transform=True)
        self.model = model.eval()
        vc = cfg.get("model_cfg", {}).get("vision_cfg", {})
        pc = cfg.get("preprocess_cfg", {})
        self.image_size = int(pc.get("size", vc.get("image_size", 224))
                              if not isinstance(pc.get("size"), (list, tuple)) else pc["size"][0])
        self.mean_std = tuple(pc.get("mean", CLIP_MEAN)), tuple(pc.get("std", CLIP_STD))
        self.feature_dim = int(cfg.get("model_cfg", {}).get("embed_dim", 0)) or None
        is_l14_336 = (vc.get("width"), vc.get("layers"), vc.get("patch_size"), self.image_size) == (1024, 24, 14, 336)
        self.name = CMMD_EXTRACTOR if is_l14_336 and self.feature_dim == 768 else (
            f"open_clip-vit(width {vc.get('width')}, {vc.get('layers')} layers, patch {vc.get('patch_size')}, "
            f"{self.image_size} px)")

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] -> [0, 1], 3 channels, bicubic to the model's size, CLIP normalisation."""
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"CLIP features: expected images (N, 1|3, H, W), got shape {tuple(x.shape)}")
        x = (x.float() + 1) / 2
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False,
                              antialias=True)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pix = self.preprocess(x.to(self.mean.device))
        if self.layout == "transformers":
            emb = self.model(pixel_values=pix).image_embeds
        else:
            emb = self.model.encode_image(pix)
        return F.normalize(emb.float(), dim=-1)
