"""Thick slices from thin ones, and back by interpolation: the data side of through-plane super-resolution.

Axes: volumes are (X, Y, Z) arrays with Z the slice (through-plane) axis, as ``medkit.data.volumes`` reads them.

Slice alignment. A thick (low-resolution, LR) slice k and the thin (high-resolution, HR) grid of the same
acquisition are related by ``j = r * k + offset``: LR slice k is centred on HR slice j. Simulated LR uses
``offset = r // 2``; real pairs state their own (RPLHR-CT: 5 mm / 1 mm, ``j = 5 k + 3``).

Simulated thick slices. A CT slice is not a sample of the thin volume at one z: the detector integrates
over a slice-sensitivity profile (SSP) whose full width at half maximum is the nominal slice thickness.
So LR = decimate(SSP * HR) along z: a Gaussian SSP with FWHM = r thin slices (default) or a box of width r,
then every r-th slice from ``offset``. Plain decimation (no profile) aliases and transfers poorly to real
thick slices (REFERENCE section 4; e.g. Peng et al., SAINT, CVPR 2020, simulate with a profile too).

Interpolation back to the thin grid (the baselines a radiologist's viewer already has, and ResShift's y):
``upsample_z`` with ``kind="linear"`` (trilinear reduces to linear along z, since in-plane the grid is
already the target's) or ``"cubic"`` (Keys' cubic convolution, a = -0.5, the kernel of torch's and PIL's
bicubic), as a (Z_hr, Z_lr) weight matrix: explicit, exact and testable. Positions beyond the first/last
thick slice take the edge slice (clamped), which is why evaluations drop boundary slices.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

PROFILES = ("gaussian", "box")
FACTORS = (2, 3, 4, 5, 6, 8)


class ThickSliceError(ValueError):
    """A thick/thin setting or pair that cannot work; the message names it and says what to do."""


def _check_factor(r: int) -> int:
    if not isinstance(r, (int, np.integer)) or r < 2:
        raise ThickSliceError(f"factor={r!r}: the through-plane factor must be an integer >= 2 (e.g. 4: 1 mm from 4 mm)")
    return int(r)


def profile_kernel(r: int, profile: str = "gaussian") -> np.ndarray:
    """The slice-sensitivity profile of a thick slice of r thin slices, sampled on the thin grid, sum 1.

    gaussian: FWHM = r thin slices (sigma = r / (2 sqrt(2 ln 2))), truncated at 3 sigma.
    box: width exactly r; for even r the two end taps get weight 1/2 so the box stays centred.
    """
    r = _check_factor(r)
    if profile == "gaussian":
        sigma = r / (2 * math.sqrt(2 * math.log(2)))
        half = int(math.ceil(3 * sigma))
        x = np.arange(-half, half + 1, dtype=np.float64)
        k = np.exp(-0.5 * (x / sigma) ** 2)
    elif profile == "box":
        k = np.ones(r + 1 if r % 2 == 0 else r, dtype=np.float64)
        if r % 2 == 0:
            k[0] = k[-1] = 0.5
    else:
        raise ThickSliceError(f"slice_profile={profile!r}: use one of {PROFILES}")
    return k / k.sum()


def n_thick(n_thin: int, r: int, offset: int) -> int:
    """How many thick slices j = r k + offset fit in n_thin thin slices."""
    return (n_thin - 1 - offset) // r + 1


def simulate_thick(vol: np.ndarray, r: int, profile: str = "gaussian", offset: int | None = None) -> np.ndarray:
    """LR = every r-th slice (from ``offset``, default r // 2) of vol blurred along z by the slice profile."""
    r = _check_factor(r)
    offset = r // 2 if offset is None else int(offset)
    if not 0 <= offset < r:
        raise ThickSliceError(f"offset={offset}: must be in 0..{r - 1}")
    if vol.shape[-1] < r + offset:
        raise ThickSliceError(f"a volume of {vol.shape[-1]} slices is too thin for factor {r}: it needs >= {r + offset}")
    blurred = ndimage.convolve1d(np.asarray(vol, dtype=np.float32), profile_kernel(r, profile).astype(np.float32),
                                 axis=-1, mode="nearest")
    return np.ascontiguousarray(blurred[..., offset::r][..., :n_thick(vol.shape[-1], r, offset)])


def _cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    return np.where(x <= 1, (a + 2) * x ** 3 - (a + 3) * x ** 2 + 1,
                    np.where(x < 2, a * x ** 3 - 5 * a * x ** 2 + 8 * a * x - 4 * a, 0.0))


def interp_matrix(n_lr: int, n_hr: int, r: int, offset: int, kind: str = "cubic") -> np.ndarray:
    """(n_hr, n_lr) weights: thin slice j = sum_k W[j, k] thick slice k, thick k sitting at j = r k + offset."""
    pos = (np.arange(n_hr, dtype=np.float64) - offset) / r     # position of each thin slice in thick units
    pos = np.clip(pos, 0, n_lr - 1)                             # edges clamped
    w = np.zeros((n_hr, n_lr))
    if kind == "linear":
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, n_lr - 1)
        f = pos - lo
        np.add.at(w, (np.arange(n_hr), lo), 1 - f)
        np.add.at(w, (np.arange(n_hr), hi), f)
    elif kind == "cubic":
        base = np.floor(pos).astype(int)
        for d in (-1, 0, 1, 2):
            k = base + d
            np.add.at(w, (np.arange(n_hr), np.clip(k, 0, n_lr - 1)), _cubic(pos - k))
    else:
        raise ThickSliceError(f"interpolation kind={kind!r}: use 'linear' or 'cubic'")
    return w


def upsample_z(lr, r: int, offset: int, n_hr: int | None = None, kind: str = "cubic"):
    """Interpolate thick slices (..., Z_lr) to the thin grid (..., n_hr); numpy or torch in, the same out."""
    r = _check_factor(r)
    n_lr = lr.shape[-1]
    n_hr = n_hr if n_hr is not None else r * n_lr
    w = interp_matrix(n_lr, n_hr, r, offset, kind)
    if isinstance(lr, torch.Tensor):
        return lr @ torch.as_tensor(w.T, dtype=lr.dtype, device=lr.device)
    return (np.asarray(lr, dtype=np.float64) @ w.T).astype(np.float32)


def thin_affine(lr_affine: np.ndarray, r: int, offset: int) -> np.ndarray:
    """The affine of the thin grid: z step / r, origin moved so thin slice r k + offset sits on thick slice k."""
    a = np.array(lr_affine, dtype=np.float64)
    a[:3, 2] = a[:3, 2] / r
    a[:3, 3] = a[:3, 3] - offset * a[:3, 2]
    return a


def thick_affine(thin_affine_: np.ndarray, r: int, offset: int) -> np.ndarray:
    """The inverse of :func:`thin_affine`: the grid of every r-th thin slice from ``offset``, z step x r."""
    a = np.array(thin_affine_, dtype=np.float64)
    a[:3, 3] = a[:3, 3] + offset * a[:3, 2]
    a[:3, 2] = a[:3, 2] * r
    return a


def block_average(vol: np.ndarray, affine: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Down-sample by averaging k x k x k blocks (edges cropped); returns (volume, affine of the new grid)."""
    if k == 1:
        return np.asarray(vol, dtype=np.float32), np.array(affine, dtype=np.float64)
    X, Y, Z = (s // k * k for s in vol.shape)
    v = np.asarray(vol[:X, :Y, :Z], dtype=np.float32).reshape(X // k, k, Y // k, k, Z // k, k).mean((1, 3, 5))
    a = np.array(affine, dtype=np.float64)
    a[:3, 3] = a[:3, 3] + a[:3, :3] @ np.full(3, (k - 1) / 2)  # centre of the first block
    a[:3, :3] = a[:3, :3] * k
    return v, a


# ------------------------------------------------------------------------------------------- splits
@dataclass
class SlabSplit:
    """Thin-slice z ranges [start, stop): training slabs and the held-out test slab, separated by gaps."""
    train: list[tuple[int, int]]
    test: tuple[int, int]
    gap: int

    def describe(self) -> str:
        return f"train z {self.train}, test z {self.test} (gap {self.gap} thin slices each side)"


def slab_split(n_z: int, test: tuple[float, float], gap: int, min_train: int) -> SlabSplit:
    """One volume split along z: the test slab at fractions ``test`` of the height, ``gap`` thin slices
    dropped on each side (so no training patch, nor the thick slices blurred into it, sees the test slab),
    training on what remains, in slabs of at least ``min_train`` slices (thinner ones are dropped)."""
    a, b = int(round(test[0] * n_z)), int(round(test[1] * n_z))
    if not 0 <= a < b <= n_z:
        raise ThickSliceError(f"test_slab={test}: give two fractions 0 <= a < b <= 1 of the volume's height")
    train = [(s, e) for s, e in ((0, a - gap), (b + gap, n_z)) if e - s >= min_train]
    if not train:
        raise ThickSliceError(f"no training slab of >= {min_train} slices is left around test slab z {a}..{b} "
                              f"with gap {gap} in a volume of {n_z} slices: use a thinner test_slab or smaller patches")
    return SlabSplit(train=train, test=(a, b), gap=gap)


def patch_positions(foreground: np.ndarray, z_ranges, patch: tuple[int, int, int], n: int, seed: int,
                    min_foreground: float) -> np.ndarray:
    """``n`` patch corners (x, y, z), each patch inside one of ``z_ranges`` and with at least
    ``min_foreground`` of its voxels in ``foreground``; drawn once from ``seed`` (the training set is fixed)."""
    X, Y, Z = foreground.shape
    px, py, pz = patch
    if px > X or py > Y:
        raise ThickSliceError(f"patch {patch} is larger in-plane than the volume {foreground.shape}")
    ranges = [(s, e) for s, e in z_ranges if e - s >= pz]
    if not ranges:
        raise ThickSliceError(f"no z range in {list(z_ranges)} holds a patch of {pz} slices: use smaller patches")
    # fraction of foreground of every possible patch, from a summed-area table
    c = np.pad(foreground.astype(np.float64), ((1, 0), (1, 0), (1, 0))).cumsum(0).cumsum(1).cumsum(2)
    frac = (c[px:, py:, pz:] - c[:-px, py:, pz:] - c[px:, :-py, pz:] - c[px:, py:, :-pz] + c[:-px, :-py, pz:]
            + c[:-px, py:, :-pz] + c[px:, :-py, :-pz] - c[:-px, :-py, :-pz]) / (px * py * pz)
    ok = np.zeros_like(frac, dtype=bool)
    for s, e in ranges:
        ok[:, :, s:e - pz + 1] = frac[:, :, s:e - pz + 1] >= min_foreground
    cand = np.argwhere(ok)
    if len(cand) == 0:
        raise ThickSliceError(f"no {patch} patch has >= {min_foreground:.0%} foreground in z {ranges}: lower "
                              "min_foreground or the patch size")
    rng = np.random.default_rng(seed)
    return cand[rng.choice(len(cand), size=n, replace=len(cand) < n)]


class PatchDataset(torch.utils.data.Dataset):
    """Pairs of thin-slice patches: ``{"hr": (1, px, py, pz), "y": (1, px, py, pz)}`` at fixed corners, y being
    the thick slices interpolated back to the thin grid (the network's low-resolution condition)."""

    def __init__(self, hr: np.ndarray, y: np.ndarray, positions: np.ndarray, patch: tuple[int, int, int]):
        if hr.shape != y.shape:
            raise ThickSliceError(f"hr {hr.shape} and y {y.shape} must share one grid")
        self.hr, self.y = torch.as_tensor(hr, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)
        self.positions, self.patch = np.asarray(positions), tuple(patch)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i):
        x, y, z = (int(v) for v in self.positions[i])
        px, py, pz = self.patch
        sl = (slice(x, x + px), slice(y, y + py), slice(z, z + pz))
        return {"hr": self.hr[sl][None], "y": self.y[sl][None]}
