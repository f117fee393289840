"""MMD-MF: maximum mean discrepancy on per-lesion mask morphology (SLIM-Diff, Pascual-Gonzalez et al.,
arXiv 2602.03372, "MMD-MF"; the kernel and estimator are KID's, Binkowski et al., ICLR 2018).

Does a generator draw lesions of the right sizes and shapes? Compare the *distribution of lesions*:

1. binarise every mask at ``> 0`` (masks in {0,1} or SLIM-Diff's {-1,+1});
2. split it into lesions with ``scipy.ndimage.label``'s default structure (4-connectivity in 2D) and
   drop lesions of fewer than ``min_area`` = 5 pixels;
3. describe each lesion by 9 features, as ``skimage.measure.regionprops`` defines them::

       area A                 pixel count
       perimeter P            regionprops' 4-neighbourhood perimeter (Benkrid & Crookes weights)
       circularity            min(4 pi A / P^2, 1), 0 when P = 0
       solidity               A / (pixels of the convex hull image)
       extent                 A / (bounding-box pixels)
       eccentricity           sqrt(1 - l2 / l1), 0 when l1 = 0
       major_axis_length      4 sqrt(l1)
       minor_axis_length      4 sqrt(l2)
       equivalent_diameter    sqrt(4 A / pi)

   (l1 >= l2 the eigenvalues of the inertia tensor [[mu02, -mu11], [-mu11, mu20]] / mu00);
4. z-score both sets with the **real** set's mean and (population) std, std floored at 1e-8;
5. squared MMD with the polynomial kernel k(x, y) = (x.y / D + 1)^3, D = 9, unbiased estimator::

       MMD^2 = sum_{i != j} k(x_i, x_j) / (m (m-1)) + sum_{i != j} k(y_i, y_j) / (m (m-1))
               - 2 sum_{i,j} k(x_i, y_j) / m^2

   on ``n_subsets`` = 100 pairs of random subsets of size min(500, n_real, n_fake) (drawn without
   replacement, independently per side; :func:`medkit.metrics.distribution.poly_mmd2`, KID's estimator);
   report their mean and (population) std. NaN, with a warning,
   when either side has fewer than 10 lesions.

The feature extraction here is vectorised over all lesions of a batch of masks (label image, shifted
comparisons, ``bincount``) instead of one ``regionprops`` object per lesion; only the convex hull is
a per-lesion loop (qhull + ``skimage.measure.grid_points_in_poly``, like skimage's own
``convex_hull_image``). ``tests/test_masks_seg.py`` checks every feature against regionprops.
Subsets are drawn from ``np.random.default_rng(seed)``, so a result is reproducible (SLIM-Diff's code
draws from the global NumPy RNG).

Benchmark (2,000 vs 2,000 masks of 128 x 128 with a few blobs each)::

    python -m medkit.metrics.masks --bench [--n 2000] [--size 128] [--skimage]
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull
from skimage.measure import grid_points_in_poly

from medkit.metrics.distribution import poly_mmd2  # the kit's one polynomial-kernel MMD (KID's too)

FEATURE_NAMES = ("area", "perimeter", "circularity", "solidity", "extent", "eccentricity",
                 "major_axis_length", "minor_axis_length", "equivalent_diameter")
MIN_LESIONS = 10  # fewer lesions than this on either side -> NaN

# scipy.ndimage.label's default 2D structure (the 4-neighbour cross), stacked so that a batch of
# masks is labelled in one call without connecting neighbouring masks.
_STRUCT = np.zeros((3, 3, 3), dtype=bool)
_STRUCT[1] = ndi.generate_binary_structure(2, 1)

# regionprops' perimeter (skimage.measure.perimeter, neighbourhood 4): a border pixel gets the code
# 1 + 2 * (4-neighbours on the border) + 10 * (diagonal neighbours on the border); codes map to lengths.
_PERIMETER_WEIGHTS = np.zeros(50)
_PERIMETER_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1.0
_PERIMETER_WEIGHTS[[21, 33]] = math.sqrt(2.0)
_PERIMETER_WEIGHTS[[13, 23]] = (1.0 + math.sqrt(2.0)) / 2.0
_NEIGHBOURS = [(-1, 0, 2), (1, 0, 2), (0, -1, 2), (0, 1, 2),
               (-1, -1, 10), (-1, 1, 10), (1, -1, 10), (1, 1, 10)]  # (dr, dc, weight)
# convex_hull_image's "diamond" offsets: a pixel is represented by the midpoints of its 4 edges,
# here in doubled integer coordinates (2r +- 1, 2c +- 1) so that duplicates are found exactly.
_DIAMOND2 = np.array([[-1, 0], [1, 0], [0, -1], [0, 1]])


# ---------------------------------------------------------------------------------------------------
# Input checks

def as_binary_masks(masks, name: str = "masks") -> np.ndarray:
    """(N, H, W) or (N, 1, H, W) masks in {0,1} or {-1,+1} (array or tensor) -> (N, H, W) bool (``> 0``)."""
    if hasattr(masks, "detach"):  # a torch tensor
        masks = masks.detach().cpu().numpy()
    x = np.asarray(masks)
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3:
        raise ValueError(f"{name}: expected masks of shape (N, H, W) or (N, 1, H, W), got {x.shape}"
                         + ("; for one mask use masks[None]" if x.ndim == 2 else ""))
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 masks); pass at least one mask per set.")
    if x.dtype == bool:
        return x
    if not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"{name}: dtype {x.dtype} is not numeric or bool.")
    if np.issubdtype(x.dtype, np.floating) and np.isnan(x).any():
        raise ValueError(f"{name} contains NaN; fix the generator's output (or drop those samples) first.")
    lo = x.min()
    ok = ((x == 0) | (x == 1)) if lo >= 0 else ((x == -1) | (x == 1))
    if not ok.all():
        bad = x[~ok].ravel()[0]
        raise ValueError(f"{name} is not binary: it holds values such as {bad!r} besides {{0, 1}} or {{-1, +1}} "
                         f"(range {float(lo):g}..{float(x.max()):g}). Threshold soft masks first, e.g. "
                         f"(masks > 0) for outputs in [-1, 1] or (masks > 0.5) for probabilities in [0, 1].")
    return x > 0


# ---------------------------------------------------------------------------------------------------
# Per-lesion features

def lesion_features(masks, min_area: int = 5, chunk: int = 512) -> np.ndarray:
    """The (n_lesions, 9) feature array of all lesions (columns: :data:`FEATURE_NAMES`).

    Lesions are ordered by mask, then by label (raster order of their first pixel) - regionprops'
    order. ``chunk`` masks are labelled at a time (memory ~ 20 bytes per pixel of a chunk).
    """
    b = as_binary_masks(masks)
    if min_area < 1:
        raise ValueError(f"min_area={min_area}: use an int >= 1 (SLIM-Diff uses 5).")
    parts = [_features_chunk(b[i:i + chunk], min_area) for i in range(0, len(b), chunk)]
    return np.concatenate(parts) if parts else np.zeros((0, len(FEATURE_NAMES)))


def _features_chunk(b: np.ndarray, min_area: int) -> np.ndarray:
    lab, n = ndi.label(b, structure=_STRUCT)
    if n == 0:
        return np.zeros((0, len(FEATURE_NAMES)))
    lab = np.pad(lab, ((0, 0), (1, 1), (1, 1)))  # a 0 frame: shifted views never leave the image
    core = lab[:, 1:-1, 1:-1]

    # pixels of every lesion: label L, row r, column c (coordinates inside the padded image)
    i, r, c = np.nonzero(core)
    L = core[i, r, c]
    r, c = r + 1, c + 1
    area = np.bincount(L, minlength=n + 1).astype(np.float64)
    keep = np.flatnonzero(area >= min_area)
    keep = keep[keep > 0]
    if keep.size == 0:
        return np.zeros((0, len(FEATURE_NAMES)))

    # bounding boxes -> extent
    big = np.iinfo(np.int64).max
    rmin, cmin = np.full(n + 1, big), np.full(n + 1, big)
    rmax, cmax = np.full(n + 1, -1), np.full(n + 1, -1)
    np.minimum.at(rmin, L, r); np.maximum.at(rmax, L, r)
    np.minimum.at(cmin, L, c); np.maximum.at(cmax, L, c)
    h, w = rmax - rmin + 1, cmax - cmin + 1

    # central moments (local coordinates, like regionprops' crop) -> inertia tensor eigenvalues
    rl, cl = (r - rmin[L]).astype(np.float64), (c - cmin[L]).astype(np.float64)
    rbar = np.bincount(L, rl, n + 1) / np.maximum(area, 1)
    cbar = np.bincount(L, cl, n + 1) / np.maximum(area, 1)
    dr, dc = rl - rbar[L], cl - cbar[L]
    mu20, mu02, mu11 = (np.bincount(L, v, n + 1) for v in (dr * dr, dc * dc, dr * dc))
    a = area[keep]
    T = np.empty((keep.size, 2, 2))
    T[:, 0, 0], T[:, 1, 1] = mu02[keep] / a, mu20[keep] / a
    T[:, 0, 1] = T[:, 1, 0] = -mu11[keep] / a
    ev = np.clip(np.linalg.eigvalsh(T), 0, None)  # ascending
    l1, l2 = ev[:, 1], ev[:, 0]

    # border pixels (a 4-neighbour outside the lesion) and their perimeter codes
    diff = ((lab[i, r - 1, c] != L) | (lab[i, r + 1, c] != L) | (lab[i, r, c - 1] != L) | (lab[i, r, c + 1] != L))
    bi, br, bc, bL = i[diff], r[diff], c[diff], L[diff]
    border = np.zeros_like(lab)
    border[bi, br, bc] = bL
    code = np.ones(bL.size, dtype=np.int64)
    for ddr, ddc, wgt in _NEIGHBOURS:
        code += wgt * (border[bi, br + ddr, bc + ddc] == bL)
    perimeter = np.bincount(bL, _PERIMETER_WEIGHTS[code], n + 1)

    # convex hull pixel counts: only border pixels can carry hull vertices
    order = np.argsort(bL, kind="stable")
    starts = np.searchsorted(bL[order], keep)
    ends = np.searchsorted(bL[order], keep, side="right")
    pts = np.stack([br[order], bc[order]], 1)
    hull_area = np.empty(keep.size)
    for j, (lbl, s, e) in enumerate(zip(keep, starts, ends)):
        local = pts[s:e] - (rmin[lbl], cmin[lbl])
        hull_area[j] = _convex_pixels(local, (int(h[lbl]), int(w[lbl])))

    p = perimeter[keep]
    with np.errstate(divide="ignore", invalid="ignore"):
        circ = np.where(p > 0, np.minimum(4 * np.pi * a / p ** 2, 1.0), 0.0)
        ecc = np.where(l1 > 0, np.sqrt(1 - l2 / l1), 0.0)
    return np.stack([a, p, circ, a / hull_area, a / (h[keep] * w[keep]), ecc,
                     4 * np.sqrt(l1), 4 * np.sqrt(l2), np.sqrt(4 * a / np.pi)], 1)


def _convex_pixels(points: np.ndarray, shape: tuple[int, int]) -> int:
    """Pixels of skimage's ``convex_hull_image`` of a region whose border pixels are ``points``.

    Same construction: the hull of every pixel's 4 edge midpoints (qhull), then the grid points inside
    or on it (``grid_points_in_poly`` labels >= 1, i.e. include_borders=True).
    """
    p2 = (2 * points[:, None, :] + _DIAMOND2).reshape(-1, 2) + 1  # in [0, 2h] x [0, 2w]
    base = 2 * shape[1] + 1
    keys = np.unique(p2[:, 0] * base + p2[:, 1])  # unique rows, exactly, through one integer key
    q = (np.stack(np.divmod(keys, base), 1) - 1) / 2.0  # back to pixel units: r +- 0.5, c +- 0.5
    hull = ConvexHull(q)
    vertices = hull.points[hull.vertices]
    return int(np.count_nonzero(grid_points_in_poly(shape, vertices, binarize=False)))


# ---------------------------------------------------------------------------------------------------
# The MMD

@dataclass
class MMDMFResult:
    """MMD-MF: mean and std of MMD^2 over the subsets, with the counts they rest on."""
    value: float
    std: float
    n_real_lesions: int
    n_fake_lesions: int
    n_subsets: int
    subset_size: int
    seed: int
    values: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)  # one MMD^2 per subset

    def entry(self, dataset: str | None = None) -> dict:
        """A :func:`medkit.eval.results.entry` (``n`` = lesions of the smaller side)."""
        from medkit.eval.results import entry
        return entry(self.value, std=self.std, n=min(self.n_real_lesions, self.n_fake_lesions),
                     extractor="mask-morphology-9 (SLIM-Diff MMD-MF)", dataset=dataset,
                     n_real_lesions=self.n_real_lesions, n_fake_lesions=self.n_fake_lesions,
                     n_subsets=self.n_subsets, subset_size=self.subset_size)


def mmd_mf_from_features(real_feats, fake_feats, seed: int = 0, n_subsets: int = 100,
                         subset_size: int = 500) -> MMDMFResult:
    """MMD-MF from per-lesion feature arrays (see :func:`lesion_features`)."""
    xr, xf = np.asarray(real_feats, dtype=np.float64), np.asarray(fake_feats, dtype=np.float64)
    if n_subsets < 1 or subset_size < 2:
        raise ValueError(f"n_subsets={n_subsets}, subset_size={subset_size}: use n_subsets >= 1 and subset_size >= 2 "
                         f"(SLIM-Diff: 100 and 500).")
    nr, nf = len(xr), len(xf)
    if min(nr, nf) < MIN_LESIONS:
        warnings.warn(f"MMD-MF is NaN: {nr} real and {nf} synthetic lesions (>= {MIN_LESIONS} each needed; "
                      f"lesions under min_area pixels are not counted).", stacklevel=3)
        return MMDMFResult(math.nan, math.nan, nr, nf, n_subsets, 0, seed)
    mean = xr.mean(0)
    std = np.maximum(xr.std(0), 1e-8)
    zr, zf = (xr - mean) / std, (xf - mean) / std
    m = min(subset_size, nr, nf)
    rng = np.random.default_rng(seed)
    values = np.array([poly_mmd2(zr[rng.choice(nr, m, replace=False)], zf[rng.choice(nf, m, replace=False)])
                       for _ in range(n_subsets)])
    return MMDMFResult(float(values.mean()), float(values.std()), nr, nf, n_subsets, m, seed, values)


def mmd_mf(real_masks, fake_masks, seed: int = 0, n_subsets: int = 100, subset_size: int = 500,
           min_area: int = 5) -> MMDMFResult:
    """SLIM-Diff's MMD-MF between real and generated masks ((N, H, W) or (N, 1, H, W), {0,1} or {-1,+1})."""
    real = lesion_features(as_binary_masks(real_masks, "real_masks"), min_area)
    fake = lesion_features(as_binary_masks(fake_masks, "fake_masks"), min_area)
    return mmd_mf_from_features(real, fake, seed, n_subsets, subset_size)


# ---------------------------------------------------------------------------------------------------
# Test masks and the benchmark

def blob_masks(n: int, size: int = 128, seed: int = 0, blobs: tuple[int, int] = (1, 4),
               radius: tuple[float, float] = (2.0, 10.0), elongation: tuple[float, float] = (1.0, 2.0)) -> np.ndarray:
    """(n, size, size) uint8 masks, each with a random number of random ellipses (for tests and benchmarks).

    Per mask ``blobs`` = (min, max) ellipses; per ellipse a minor radius in ``radius``, a major/minor
    ratio in ``elongation``, a random rotation and centre. Overlapping ellipses merge into one lesion.
    """
    from skimage.draw import ellipse

    rng = np.random.default_rng(seed)
    out = np.zeros((n, size, size), dtype=np.uint8)
    for k in range(n):
        for _ in range(rng.integers(blobs[0], blobs[1] + 1)):
            rad = rng.uniform(*radius)
            el = rng.uniform(*elongation)
            cy, cx = rng.uniform(0.1 * size, 0.9 * size, 2)
            rr, cc = ellipse(cy, cx, rad * el, rad, shape=(size, size), rotation=rng.uniform(0, np.pi))
            out[k, rr, cc] = 1
    return out


def _skimage_features(masks, min_area: int = 5) -> np.ndarray:
    """The same features straight from ``skimage.measure.regionprops`` (reference; slow)."""
    from skimage.measure import regionprops

    rows = []
    for m in as_binary_masks(masks):
        lab, _ = ndi.label(m)
        for rp in regionprops(lab):
            if rp.area < min_area:
                continue
            p = rp.perimeter
            rows.append([rp.area, p, min(4 * np.pi * rp.area / p ** 2, 1.0) if p > 0 else 0.0, rp.solidity,
                         rp.extent, rp.eccentricity, rp.axis_major_length, rp.axis_minor_length,
                         rp.equivalent_diameter_area])
    return np.array(rows, dtype=np.float64).reshape(-1, len(FEATURE_NAMES))


def bench(n: int = 2000, size: int = 128, with_skimage: bool = False) -> dict:
    """Time MMD-MF on n vs n blob masks (two different blob distributions)."""
    import time

    real = blob_masks(n, size, seed=1)
    fake = blob_masks(n, size, seed=2, radius=(2.0, 12.0), elongation=(1.0, 3.0))
    t0 = time.perf_counter()
    fr = lesion_features(real)
    t1 = time.perf_counter()
    ff = lesion_features(fake)
    t2 = time.perf_counter()
    res = mmd_mf_from_features(fr, ff)
    t3 = time.perf_counter()
    out = {"masks_per_side": n, "size": size, "lesions_real": len(fr), "lesions_fake": len(ff),
           "features_real_s": round(t1 - t0, 2), "features_fake_s": round(t2 - t1, 2), "mmd_s": round(t3 - t2, 2),
           "total_s": round(t3 - t0, 2), "mmd_mf": res.value, "mmd_mf_std": res.std}
    if with_skimage:
        t4 = time.perf_counter()
        ref = np.concatenate([_skimage_features(real), _skimage_features(fake)])
        out["skimage_features_s"] = round(time.perf_counter() - t4, 2)
        out["max_abs_diff_vs_skimage"] = float(np.abs(ref - np.concatenate([fr, ff])).max())
    return out


def main(argv=None) -> int:
    import argparse
    import json

    ap = argparse.ArgumentParser(description="MMD-MF (SLIM-Diff mask-morphology MMD): benchmark.")
    ap.add_argument("--bench", action="store_true", help="time n vs n random blob masks")
    ap.add_argument("--n", type=int, default=2000, help="masks per side")
    ap.add_argument("--size", type=int, default=128, help="mask side in pixels")
    ap.add_argument("--skimage", action="store_true", help="also time regionprops and compare the features")
    args = ap.parse_args(argv)
    if not args.bench:
        ap.print_help()
        return 0
    print(json.dumps(bench(args.n, args.size, args.skimage), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
