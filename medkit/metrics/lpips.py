"""LPIPS, the learned perceptual image patch similarity of Zhang et al., version 0.1, without torchvision.

Zhang, Isola, Efros, Shechtman, Wang, "The Unreasonable Effectiveness of Deep Features as a Perceptual
Metric", CVPR 2018 (https://arxiv.org/abs/1801.03924); reference code: the ``lpips`` package 0.1.4
(https://github.com/richzhang/PerceptualSimilarity). This module gives that package's numbers
(``lpips.LPIPS(net=..., version='0.1')``, checked in tests/test_perceptual.py against recorded outputs)
from a plain re-implementation of the architecture, so that it runs where torchvision is absent or broken.

For images x0, x1 in [-1, 1] (v0.1 first shifts and scales each channel, x' = (x - shift) / scale, with
shift = (-.030, -.088, -.188), scale = (.458, .448, .450)), and the activations y^l (C_l x H_l x W_l) of
layer l of an ImageNet backbone,

    yhat^l_hw = y^l_hw / (||y^l_hw||_2 + 1e-10)                    (unit length along channels)
    d(x0, x1) = sum_l 1/(H_l W_l) sum_{h,w} || w_l (.) (yhat^l_0hw - yhat^l_1hw) ||_2^2      (Eq. 1)

where w_l >= 0 are the learned per-channel weights (a 1x1 convolution without bias). Layers l are the
ReLU outputs the package taps:

    alex: relu1..relu5          = torchvision ``alexnet().features[0:2], [2:5], [5:8], [8:10], [10:12]``
    vgg:  relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
                                = torchvision ``vgg16().features[0:4], [4:9], [9:16], [16:23], [23:30]``

Weights: the backbone is torchvision's ImageNet classifier (``alexnet-owt-7be5be79.pth``,
``vgg16-397923af.pth``; ``self.features`` has the same state-dict keys and shapes as torchvision's
``.features``, so the ``features.*`` entries of those files load strictly), found offline first (see
:mod:`medkit.metrics._weights`: ``weights=``, ``$MEDKIT_LPIPS_WEIGHTS``, the torch hub cache,
``/kaggle/input``, then a download). The linear heads w_l are the v0.1 files that torchmetrics ships
(``torchmetrics/functional/image/lpips_models/{alex,vgg}.pth``, byte-identical to the lpips package's
``lpips/weights/v0.1/*.pth``; their SHA-256 is pinned below).
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import torch
from torch import nn

from medkit.metrics._weights import WeightsSpec, load_pretrained

NETS = ("alex", "vgg")

BACKBONE_WEIGHTS = {
    "alex": WeightsSpec("LPIPS (net='alex') backbone: torchvision AlexNet ImageNet weights",
                        "alexnet-owt-7be5be79.pth", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
                        "MEDKIT_LPIPS_WEIGHTS", sha256_prefix="7be5be79", size_mb=233),
    "vgg": WeightsSpec("LPIPS (net='vgg') backbone: torchvision VGG16 ImageNet weights",
                       "vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth",
                       "MEDKIT_LPIPS_WEIGHTS", sha256_prefix="397923af", size_mb=528),
}
# SHA-256 of the v0.1 linear heads (identical in torchmetrics 1.9 and lpips 0.1.4).
HEAD_SHA256 = {
    "alex": "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
    "vgg": "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
}
CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}
# Index (in ``features``) of the ReLU whose output is tapped, per layer l.
TAPS = {"alex": (1, 4, 7, 9, 11), "vgg": (3, 8, 15, 22, 29)}
# Smallest height/width for which every tapped layer is at least 1x1.
MIN_SIZE = {"alex": 31, "vgg": 16}
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


def alexnet_features() -> nn.Sequential:
    """AlexNet's convolutional part in torchvision's layout (Krizhevsky 2014, "One weird trick", the
    single-tower variant torchvision trains): 5 convolutions, ReLUs and 3 max-pools, indices 0..12."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
    )


def vgg16_features() -> nn.Sequential:
    """VGG16's convolutional part (Simonyan & Zisserman 2015, configuration D) in torchvision's layout:
    13 3x3 convolutions with ReLUs, a 2x2 max-pool after each of the 5 stages, indices 0..30."""
    layers, c_in = [], 3
    for stage in ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)):
        for c_out in stage:
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True)]
            c_in = c_out
        layers.append(nn.MaxPool2d(2, 2))
    return nn.Sequential(*layers)


def head_file(net: str) -> Path:
    """Path of torchmetrics' copy of the LPIPS v0.1 linear heads for ``net``."""
    spec = importlib.util.find_spec("torchmetrics")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("LPIPS takes its linear heads from torchmetrics, which is not installed: "
                                  "pip install -r requirements.txt (torchmetrics>=1.0).")
    path = Path(list(spec.submodule_search_locations)[0]) / "functional" / "image" / "lpips_models" / f"{net}.pth"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: this torchmetrics install does not ship the LPIPS heads. "
                                "Reinstall torchmetrics (1.9 is pinned in requirements.txt).")
    return path


def _load_heads(net: str) -> dict:
    path = head_file(net)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != HEAD_SHA256[net]:
        raise ValueError(f"{path} has SHA-256 {digest}, not the LPIPS v0.1 '{net}' heads ({HEAD_SHA256[net]}). "
                         "Reinstall torchmetrics.")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    # lpips names the head of layer l 'lin{l}.model.1.weight' (index 0 is its training-time dropout).
    return {f"{l}.weight": sd[f"lin{l}.model.1.weight"] for l in range(len(CHANNELS[net]))}


def _backbone_entries(sd: dict) -> dict:
    """The ``features.*`` entries of a torchvision checkpoint with the prefix dropped; a dict without them
    is taken as a features-only state dict."""
    feats = {k[len("features."):]: v for k, v in sd.items() if k.startswith("features.")}
    return feats if feats else dict(sd)


class LPIPS(nn.Module):
    """LPIPS v0.1 distance (Eq. 1 in the module docstring) between image pairs in [-1, 1].

    Args:
        net: "alex" (the package's default, the one papers usually report) or "vgg".
        weights: path of the torchvision backbone file; None searches for it (module docstring).
        backbone_state_dict: backbone weights given directly (torchvision checkpoint or its ``features``
            part, keys ``features.0.weight`` or ``0.weight``); no file is looked for. For tests.

    ``forward(x0, x1)`` takes (N, 1 or 3, H, W) tensors (1 channel is repeated to RGB) and returns the N
    distances. The module is frozen and stays in eval mode.
    """

    def __init__(self, net: str = "alex", weights: str | os.PathLike | None = None,
                 backbone_state_dict: dict | None = None):
        super().__init__()
        if net not in NETS:
            raise ValueError(f"LPIPS net={net!r}: choose one of {NETS}")
        if weights is not None and backbone_state_dict is not None:
            raise ValueError("LPIPS: pass weights= (a file) or backbone_state_dict=, not both")
        self.net = net
        self.features = alexnet_features() if net == "alex" else vgg16_features()
        self.lin = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in CHANNELS[net])
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)

        if backbone_state_dict is not None:
            sd, self.weights_source = backbone_state_dict, "backbone_state_dict"
        else:
            sd, self.weights_source = load_pretrained(BACKBONE_WEIGHTS[net], weights)
        try:
            self.features.load_state_dict(_backbone_entries(sd), strict=True)
        except RuntimeError as e:
            raise ValueError(f"LPIPS(net={net!r}): the backbone weights from {self.weights_source} do not fit "
                             f"torchvision's {'alexnet' if net == 'alex' else 'vgg16'}().features "
                             f"(expected {BACKBONE_WEIGHTS[net].file_name}): {e}") from e
        self.lin.load_state_dict(_load_heads(net), strict=True)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        return super().train(False)

    def layers(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Activations y^l at the 5 taps for scaled input x' = (x - shift) / scale."""
        h, out, taps = (x - self.shift) / self.scale, [], TAPS[self.net]
        for i, layer in enumerate(self.features[: taps[-1] + 1]):
            h = layer(h)
            if i in taps:
                out.append(h)
        return out

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        x0, x1 = _check_pair(x0, x1, MIN_SIZE[self.net], f"LPIPS(net={self.net!r})")
        dtype = self.shift.dtype
        d = 0
        for w_l, y0, y1 in zip(self.lin, self.layers(x0.to(dtype)), self.layers(x1.to(dtype))):
            yhat0 = y0 / (y0.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            yhat1 = y1 / (y1.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            d = d + w_l((yhat0 - yhat1) ** 2).mean(dim=(2, 3), keepdim=True)
        return d.flatten()


def _check_pair(x0, x1, min_size: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    for label, x in (("first", x0), ("second", x1)):
        if not torch.is_tensor(x) or not x.is_floating_point():
            raise TypeError(f"{name}: the {label} input must be a float tensor in [-1, 1], got "
                            f"{type(x).__name__ if not torch.is_tensor(x) else x.dtype}")
    if x0.shape != x1.shape:
        raise ValueError(f"{name}: the two inputs differ in shape, {tuple(x0.shape)} vs {tuple(x1.shape)}")
    if x0.ndim != 4 or x0.shape[1] not in (1, 3):
        raise ValueError(f"{name}: expected (N, 1 or 3, H, W) images, got shape {tuple(x0.shape)}. Pass 3D "
                         "volumes slice by slice (N*D, C, H, W).")
    if x0.shape[0] == 0:
        raise ValueError(f"{name}: got 0 image pairs")
    if min(x0.shape[2:]) < min_size:
        raise ValueError(f"{name}: images of {tuple(x0.shape[2:])} pixels are too small, the net needs at least "
                         f"{min_size}x{min_size}. Upsample them first.")
    for label, x in (("first", x0), ("second", x1)):
        if not torch.isfinite(x).all():
            raise ValueError(f"{name}: the {label} input contains NaN or inf")
        lo, hi = x.min().item(), x.max().item()
        if lo < -1 - 1e-5 or hi > 1 + 1e-5:
            raise ValueError(f"{name}: the {label} input spans [{lo:.4g}, {hi:.4g}], outside [-1, 1]. Rescale "
                             "it (x01 * 2 - 1 for images in [0, 1]) or clamp it.")
    if x0.shape[1] == 1:
        x0, x1 = x0.expand(-1, 3, -1, -1), x1.expand(-1, 3, -1, -1)
    return x0, x1


_CACHE: dict = {}


def lpips_distance(a: torch.Tensor, b: torch.Tensor, net: str | LPIPS = "alex", batch_size: int = 32,
                   weights: str | os.PathLike | None = None, device: str | torch.device | None = None) -> torch.Tensor:
    """LPIPS v0.1 distances d(a_i, b_i) of N image pairs in [-1, 1], (N, 1 or 3, H, W), computed in batches.

    ``net`` is "alex", "vgg" or a ready :class:`LPIPS` module; a named net is built once per (net, weights)
    and kept. ``device`` defaults to CUDA when available. Returns a float32 tensor of shape (N,) on the CPU.
    """
    if batch_size < 1:
        raise ValueError(f"lpips_distance: batch_size={batch_size} must be >= 1")
    if isinstance(net, LPIPS):
        model = net
    else:
        key = (net, None if weights is None else str(Path(weights).expanduser().resolve()))
        if key not in _CACHE:
            _CACHE[key] = LPIPS(net, weights=weights)
        model = _CACHE[key]
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device)
    _check_pair(a, b, MIN_SIZE[model.net], f"lpips_distance(net={model.net!r})")
    out = []
    with torch.no_grad():
        for i in range(0, len(a), batch_size):
            out.append(model(a[i:i + batch_size].to(device), b[i:i + batch_size].to(device)).float().cpu())
    return torch.cat(out)
