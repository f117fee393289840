"""Seeded stand-in weights and images for checking the perceptual networks against their reference packages.

The real pretrained files (hundreds of MB) cannot live in the repository, and the architecture check does
not need them: scripts/reference/record_perceptual_references.py fills the reference implementations
(``lpips``, ``torch-fidelity``, torchmetrics) with :func:`seeded_state_dict` weights, and
tests/test_perceptual.py fills medkit's networks with the same weights under the same key names and
compares outputs. Both sides import this module, so the numbers come from one definition.

Each tensor is drawn from its own generator seeded with CRC32 of its key, so the values do not depend on
the order or number of keys:

    weight (conv/linear, >= 2-D):  N(0, 1) * sqrt(2 / fan_in)         (He et al. 2015, keeps ReLU nets O(1))
    weight (1-D, BatchNorm gamma): 1 + 0.1 N(0, 1)
    bias:                          0.05 N(0, 1)
    running_mean:                  0.1 N(0, 1)
    running_var:                   exp(0.2 N(0, 1))                      (positive)
    num_batches_tracked:           kept as given
"""
from __future__ import annotations

import math
import zlib

import torch


def _randn(key: str, shape) -> torch.Tensor:
    g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    return torch.randn(tuple(shape), generator=g, dtype=torch.float32)


def seeded_state_dict(template: dict) -> dict:
    """Deterministic weights for every entry of ``template`` (a state dict; only keys, shapes and the
    ``num_batches_tracked`` values are used). Float32 tensors, by the rules of the module docstring."""
    out = {}
    for key in sorted(template):
        t = template[key]
        name = key.rsplit(".", 1)[-1]
        if name == "num_batches_tracked":
            out[key] = t.clone()
        elif name == "running_var":
            out[key] = torch.exp(0.2 * _randn(key, t.shape))
        elif name == "running_mean":
            out[key] = 0.1 * _randn(key, t.shape)
        elif name == "bias":
            out[key] = 0.05 * _randn(key, t.shape)
        elif t.ndim >= 2:
            out[key] = _randn(key, t.shape) * math.sqrt(2.0 / math.prod(t.shape[1:]))
        elif name == "weight":
            out[key] = 1.0 + 0.1 * _randn(key, t.shape)
        else:
            raise ValueError(f"seeded_state_dict: no rule for {key!r} of shape {tuple(t.shape)}")
    return out


def fingerprint(tensors) -> list[float]:
    """[sum, sum of |x|, sum of x^2] in float64 over a state dict's float tensors or a tensor list:
    shows at once whether two machines generated the same seeded numbers."""
    items = tensors.values() if isinstance(tensors, dict) else tensors
    s = a = q = 0.0
    for t in items:
        if t.is_floating_point():
            t = t.double()
            s, a, q = s + t.sum().item(), a + t.abs().sum().item(), q + t.pow(2).sum().item()
    return [s, a, q]


def fingerprints_match(got, ref, ulps: float = 1.0) -> bool:
    """Whether two ``fingerprint``s describe the same float32 numbers up to ``ulps`` units in the last place.

    Another CPU or thread count may round a seeded float32 value differently in its last bit. One ulp of a
    float32 x is at most eps * |x| (eps = 2^-23), so if every element moves by up to ``ulps`` ulp:
    |d sum| <= ulps * eps * sum|x|, |d sum|x|| <= ulps * eps * sum|x|, and
    |d sum x^2| <= (2 ulps eps + (ulps eps)^2) * sum x^2. The float64 accumulation error (n * 2^-53 * sum|x|)
    is far below that. Different seeds or a different network move the sums by many orders more.
    """
    eps = ulps * torch.finfo(torch.float32).eps
    (s, a, q), (s0, a0, q0) = got, ref
    return (abs(s - s0) <= eps * a0 and abs(a - a0) <= eps * a0 and abs(q - q0) <= (2 * eps + eps * eps) * q0)


def _bilinear_matrix(n_out: int, n_in: int) -> torch.Tensor:
    """(n_out, n_in) float64 weights of a bilinear upsampling (align_corners=False, edges clamped)."""
    src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * n_in / n_out - 0.5).clamp(min=0)
    lo = src.floor().long()
    hi = (lo + 1).clamp(max=n_in - 1)
    w = src - lo
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    m.index_put_((torch.arange(n_out), lo), 1 - w, accumulate=True)
    m.index_put_((torch.arange(n_out), hi), w, accumulate=True)
    return m


def seeded_images(n: int, channels: int, height: int, width: int, seed: int) -> torch.Tensor:
    """(n, channels, height, width) float32 images in [-1, 1]: a smooth random field (8x8 noise upsampled
    bilinearly) plus fine noise, so that they have structure at several scales. Computed in float64 and
    rounded once, so that the float32 values do not depend on the CPU's thread count or vector units
    (a last-bit change could move a pixel across a uint8 level in the FID network's input)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, channels, 8, 8, generator=g).double() * 2 - 1
    smooth = torch.einsum("hi,ncij,wj->nchw", _bilinear_matrix(height, 8), coarse, _bilinear_matrix(width, 8))
    fine = torch.rand(n, channels, height, width, generator=g).double() * 2 - 1
    return (0.7 * smooth + 0.3 * fine).clamp(-1, 1).float()


def perturbed(x: torch.Tensor, amount: float, seed: int) -> torch.Tensor:
    """``x`` plus uniform noise of half-width ``amount``, clamped to [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    return (x + amount * (torch.rand(x.shape, generator=g) * 2 - 1)).clamp(-1, 1)


# The reference inputs (recorded by scripts/reference/record_perceptual_references.py, checked by
# tests/test_perceptual.py): seeded_images arguments, and for the Inception the outputs recorded:
# "tf1" (torch-fidelity), "antialias" (torchmetrics' default resize), "tf1_f64" (float64 inside, first
# image only; the Inception costs ~6 GFLOP an image, so the test keeps to 6 image passes).
LPIPS_RGB = dict(n=4, channels=3, height=64, width=64, seed=11)
LPIPS_GRAY = dict(n=2, channels=1, height=48, width=80, seed=21)
INCEPTION_SETS = {
    "rgb96": (dict(n=2, channels=3, height=96, width=96, seed=31), ("tf1", "tf1_f64")),
    "gray299": (dict(n=1, channels=1, height=299, width=299, seed=32), ("tf1",)),
    "rect80x120": (dict(n=1, channels=3, height=80, width=120, seed=33), ("tf1", "antialias")),
}


def lpips_inputs():
    """The LPIPS pairs: RGB 64x64 (a, b), with b = another image, a small and a large perturbation of a,
    and a itself; grayscale 48x80 (a, b), b a moderate perturbation."""
    a = seeded_images(**LPIPS_RGB)
    b = torch.cat([seeded_images(1, 3, 64, 64, seed=12), perturbed(a[1:2], 0.1, seed=13),
                   perturbed(a[2:3], 0.5, seed=14), a[3:4]])
    ga = seeded_images(**LPIPS_GRAY)
    gb = perturbed(ga, 0.3, seed=22)
    return (a, b), (ga, gb)
