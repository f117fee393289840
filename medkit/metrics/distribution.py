"""Distribution metrics on feature vectors: Frechet distance (FID), KID and RBF-kernel MMD (CMMD's estimator),
with the small-sample statistics a results section needs.

All functions take two (N, D) feature arrays (real first). Which network made the features is the
caller's business, and goes into the metric's label: FID is the Frechet distance on the 2048-d pool
features of the InceptionV3 FID network, and nothing else may be called FID.

Frechet distance (Heusel et al., NeurIPS 2017), between Gaussians fitted to the two sets::

    FD = ||mu_a - mu_b||^2 + tr S_a + tr S_b - 2 tr (S_a S_b)^(1/2)

How it is computed here. ``tr (S_a S_b)^(1/2)`` is the sum of the square roots of the eigenvalues of
``S_a S_b``. With centred, scaled features ``A~`` (so ``S_a = A~^T A~``) the non-zero eigenvalues of
``S_a S_b`` are the squared singular values of the n x m cross matrix ``A~ B~^T``, so the trace term is
its nuclear norm - an n x n eigenproblem instead of a D x D one when n < D (2,000 samples of
2,048-d features), and exact, not an approximation. For D < n the D x D form is used. A bootstrap
resample with repeated rows only needs its distinct rows, weighted by their counts, which makes each
of the 200 resamples of the CI about 4x cheaper again. Tested against ``scipy.linalg.sqrtm`` and
torchmetrics' FrechetInceptionDistance.

FID is biased upwards at small N (Chong & Forsyth, "Effectively Unbiased FID and Inception Score and
where to find them", CVPR 2020): :func:`fid_infinity` evaluates FD_N on random subsets of the
generated set at 15 sizes N, fits FD_N = FD_inf + slope / N and reports the intercept.

KID (Binkowski et al., ICLR 2018): unbiased MMD^2 with the cubic polynomial kernel
``k(x, y) = (x.y / D + 1)^3``, averaged over random subsets (mean +- std), as torchmetrics'
KernelInceptionDistance computes it.

RBF MMD: :func:`rbf_mmd` (the unbiased estimator) and :func:`cmmd` (CMMD's own estimator, full kernel
matrices, sigma 10, x1000; CMMD proper only on CLIP ViT-L/14@336 embeddings).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch


class SmallSampleWarning(UserWarning):
    """A distribution metric was computed on fewer samples than it is reliable for."""


# ------------------------------------------------------------------------------------------ inputs
def _features(x, name: str, side: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x)
    if t.ndim != 2:
        raise ValueError(f"{name}: {side} features must be a 2-D (N, D) array, got shape {tuple(t.shape)}; "
                         f"flatten images through a feature extractor first (medkit.metrics.extract_features).")
    if t.shape[0] == 0:
        raise ValueError(f"{name}: the {side} set is empty.")
    t = t.to(torch.float64)
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).any(1).sum())
        raise ValueError(f"{name}: {bad} {side} feature vector(s) contain NaN or inf; check the images "
                         f"(a diverged sampler produces NaN) before computing the metric.")
    return t


def _pair(a, b, name: str, min_n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = _features(a, name, "real"), _features(b, name, "generated")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{name}: feature sizes differ (real {a.shape[1]}, generated {b.shape[1]}); both sets "
                         f"must come from the same extractor.")
    for t, side in ((a, "real"), (b, "generated")):
        if len(t) < min_n:
            raise ValueError(f"{name} needs at least {min_n} {side} samples, got {len(t)}.")
    return a, b


# ----------------------------------------------------------------------------------- Frechet core
def _eigvalsh(m: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of a symmetric PSD matrix. LAPACK's MRRR driver (syevr) is several times faster here
    than the divide-and-conquer one torch uses, for the same float64 result."""
    import scipy.linalg

    return torch.from_numpy(scipy.linalg.eigh(m.numpy(), eigvals_only=True, driver="evr", check_finite=False))


class _Frechet:
    """Precomputed pieces for many Frechet distances between (weighted) resamples of a and b."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor):
        centre = torch.cat([a, b]).mean(0)  # a common shift, for numerical headroom; FD is shift-free
        self.a, self.b = a - centre, b - centre
        self.n, self.m, self.d = len(a), len(b), a.shape[1]
        self.gram_path = self.d > min(self.n, self.m) * 0.63  # distinct rows of a bootstrap resample
        if self.gram_path:
            self.g = self.a @ self.b.T  # (n, m) cross products, reused by every resample
        self.sq_a = (self.a * self.a).sum(1)
        self.sq_b = (self.b * self.b).sum(1)

    def __call__(self, wa: torch.Tensor | None = None, wb: torch.Tensor | None = None) -> float:
        """FD for row weights (counts; None = every row once). Weighted mean and covariance with
        denominator (sum of weights - 1), i.e. the ordinary unbiased covariance of the resample."""
        wa = torch.ones(self.n, dtype=torch.float64) if wa is None else wa.to(torch.float64)
        wb = torch.ones(self.m, dtype=torch.float64) if wb is None else wb.to(torch.float64)
        ia, ib = wa.nonzero().squeeze(1), wb.nonzero().squeeze(1)
        wa, wb = wa[ia], wb[ib]
        na, nb = wa.sum(), wb.sum()
        if na < 2 or nb < 2:
            raise ValueError("frechet_distance: a resample needs at least 2 samples per side.")
        a, b = self.a[ia], self.b[ib]
        mu_a = (wa[:, None] * a).sum(0) / na
        mu_b = (wb[:, None] * b).sum(0) / nb
        tr_a = ((wa * self.sq_a[ia]).sum() - na * mu_a.dot(mu_a)) / (na - 1)
        tr_b = ((wb * self.sq_b[ib]).sum() - nb * mu_b.dot(mu_b)) / (nb - 1)
        if self.gram_path:
            # (a_i - mu_a).(b_j - mu_b) from the precomputed a_i.b_j
            g = self.g[ia][:, ib] - (a @ mu_b)[:, None] - (b @ mu_a)[None, :] + mu_a.dot(mu_b)
            k = wa.sqrt()[:, None] * g * wb.sqrt()[None, :] / torch.sqrt((na - 1) * (nb - 1))
            kk = k @ k.T if k.shape[0] <= k.shape[1] else k.T @ k
            ev = _eigvalsh(kk)
        else:
            ac = (a - mu_a) * torch.sqrt(wa / (na - 1))[:, None]
            bc = (b - mu_b) * torch.sqrt(wb / (nb - 1))[:, None]
            s_a, s_b = ac.T @ ac, bc.T @ bc
            lam, u = torch.linalg.eigh(s_a)
            root = (u * lam.clamp_min(0).sqrt()) @ u.T
            ev = _eigvalsh(root @ s_b @ root)
        tr_sqrt = ev.clamp_min(0).sqrt().sum()
        fd = (mu_a - mu_b).pow(2).sum() + tr_a + tr_b - 2 * tr_sqrt
        return float(fd)


def _warn_rank(name: str, n: int, d: int):
    if n < d:
        warnings.warn(f"{name}: {n} samples of {d}-d features: the covariance is rank-deficient (N < D), so "
                      f"the value is biased upwards and not comparable to numbers computed at another N; "
                      f"report FID_inf / KID next to it, and the N.", SmallSampleWarning, stacklevel=3)


def frechet_distance(feats_a, feats_b) -> float:
    """Frechet distance between Gaussians fitted to two (N, D) feature sets (FID on InceptionV3 features).

    Warns (:class:`SmallSampleWarning`) when a set has fewer samples than dimensions.
    """
    a, b = _pair(feats_a, feats_b, "frechet_distance")
    _warn_rank("frechet_distance", min(len(a), len(b)), a.shape[1])
    return _Frechet(a, b)()


def fid_bootstrap(feats_a, feats_b, n_boot: int = 200, seed: int = 0, level: float = 0.95,
                  progress: bool = False) -> dict:
    """Frechet distance with a bootstrap 95% interval: both sets resampled with replacement ``n_boot``
    times (independently). Returns ``{value, ci95, std, boot_mean, n_boot, n_real, n_generated, boot}``.

    A resample repeats about a third of its rows, and FD falls with the number of distinct samples, so
    the resampled FDs sit well *above* the point estimate (by ~60% at N = 2,000 of 2,048-d features) -
    a plain percentile interval would not even contain the estimate. The interval reported is therefore
    the bootstrap distribution's spread centred on the estimate: ``value + (q_2.5, q_97.5) - mean``
    (``ci_method`` "bootstrap, centred percentile"). It says how much the number moves with another draw
    of images at this N; it is not an interval for the N -> infinity value (that is :func:`fid_infinity`)
    and FIDs at different N are not comparable. ``boot_mean`` is kept so the shift can be inspected.
    """
    a, b = _pair(feats_a, feats_b, "fid_bootstrap")
    _warn_rank("fid_bootstrap", min(len(a), len(b)), a.shape[1])
    if n_boot < 10:
        raise ValueError(f"fid_bootstrap: n_boot={n_boot} is too few for a {level:.0%} interval; use >= 100.")
    fr = _Frechet(a, b)
    gen = torch.Generator().manual_seed(int(seed))
    boot = []
    it = range(n_boot)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="FID bootstrap", leave=False)
    for _ in it:
        wa = torch.bincount(torch.randint(fr.n, (fr.n,), generator=gen), minlength=fr.n)
        wb = torch.bincount(torch.randint(fr.m, (fr.m,), generator=gen), minlength=fr.m)
        boot.append(fr(wa, wb))
    boot = np.asarray(boot)
    q = (1 - level) / 2
    value = fr()
    shift = value - float(boot.mean())
    return {"value": value, "ci95": [float(np.quantile(boot, q)) + shift, float(np.quantile(boot, 1 - q)) + shift],
            "std": float(boot.std(ddof=1)), "boot_mean": float(boot.mean()), "n_boot": n_boot, "n_real": fr.n,
            "n_generated": fr.m, "boot": boot.tolist()}


def fid_infinity(feats_a, feats_b, n_points: int = 15, min_fraction: float = 0.1, min_n: int = 10,
                 seed: int = 0) -> dict:
    """FID_inf (Chong & Forsyth, CVPR 2020): FD_N of the full real set against random subsets of N
    generated samples, at ``n_points`` N evenly spaced between ``max(min_fraction * n, min_n)`` and n;
    a least-squares line FD_N = FD_inf + slope * (1/N) gives the intercept. Their code uses N from
    5,000 to 50,000 (``min_fraction`` 0.1). Returns ``{value, slope, n, points: [[N, FD_N], ...]}``.
    """
    a, b = _pair(feats_a, feats_b, "fid_infinity")
    m = len(b)
    lo = max(int(math.ceil(min_fraction * m)), min_n)
    if lo >= m:
        raise ValueError(f"fid_infinity needs more than {min_n} generated samples to vary N (got {m}).")
    ns = np.unique(np.linspace(lo, m, n_points).astype(int))
    if len(ns) < 3:
        raise ValueError(f"fid_infinity: only {len(ns)} distinct subset sizes between {lo} and {m}; "
                         f"generate more samples.")
    fr = _Frechet(a, b)
    gen = torch.Generator().manual_seed(int(seed))
    pts = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallSampleWarning)
        for n in ns:
            w = torch.zeros(m, dtype=torch.float64)
            w[torch.randperm(m, generator=gen)[: int(n)]] = 1
            pts.append((int(n), fr(None, w)))
    x = np.array([1.0 / n for n, _ in pts])
    y = np.array([v for _, v in pts])
    slope, intercept = np.polyfit(x, y, 1)
    return {"value": float(intercept), "slope": float(slope), "n": m, "points": [list(p) for p in pts]}


RBF_MMD_ESTIMATOR = "RBF-kernel MMD^2 x1000, unbiased U-statistic (kernel diagonals left out)"
CMMD_ESTIMATOR = "CMMD: 1000 (mean k_xx + mean k_yy - 2 mean k_xy) over the full kernel matrices, RBF sigma 10"


def _rbf_kernels(feats_a, feats_b, sigma, name: str):
    a = torch.as_tensor(feats_a, dtype=torch.float64).flatten(1)
    b = torch.as_tensor(feats_b, dtype=torch.float64).flatten(1)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{name}: feature sizes differ ({a.shape[1]} vs {b.shape[1]})")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"{name} needs at least 2 samples on each side (got {len(a)} and {len(b)})")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError(f"{name}: features contain NaN or inf")
    if sigma == "median":
        pooled = torch.cat([a, b])
        d = torch.cdist(pooled, pooled)
        sigma = d[torch.triu(torch.ones_like(d, dtype=torch.bool), 1)].median().item()
    if not isinstance(sigma, (int, float)) or sigma <= 0:
        raise ValueError(f"{name}: sigma={sigma!r} must be a positive number or 'median'")
    gamma = 1.0 / (2.0 * float(sigma) ** 2)

    def k(x, y):
        return torch.exp(-gamma * torch.cdist(x, y).pow(2))

    return k(a, a), k(b, b), k(a, b)


def rbf_mmd(feats_a, feats_b, sigma: float | str = 10.0, scale: float = 1000.0) -> float:
    """Squared MMD with a Gaussian RBF kernel, the unbiased U-statistic (kernel diagonals left out):

        MMD^2 = scale * ( mean_{i!=j} k(a_i, a_j) + mean_{i!=j} k(b_i, b_j) - 2 mean_{i,j} k(a_i, b_j) ),
        k(x, y) = exp(-||x - y||^2 / (2 sigma^2))

    Unbiased, so it can go slightly below 0 when the sets are indistinguishable. This is *not* CMMD's
    estimator (which keeps the diagonals, :func:`cmmd`); with sigma 10 and scale 1000 it is CMMD's kernel
    and scale, on whatever embedding the caller used (say which). ``sigma="median"`` takes the median
    pairwise distance of the pooled features (the median heuristic), for embeddings whose scale is unlike
    CLIP's. Features are (N, D) arrays or tensors, N >= 2 each.
    """
    kaa, kbb, kab = _rbf_kernels(feats_a, feats_b, sigma, "rbf_mmd")
    n, m = len(kaa), len(kbb)
    xx = (kaa.sum() - kaa.diagonal().sum()) / (n * (n - 1))
    yy = (kbb.sum() - kbb.diagonal().sum()) / (m * (m - 1))
    return float(scale * (xx + yy - 2 * kab.mean()))


def cmmd(feats_a, feats_b, sigma: float = 10.0, scale: float = 1000.0) -> float:
    """CMMD's estimator (Jayasumana et al., "Rethinking FID", CVPR 2024, section 4 and its reference code):
    the means of the *full* Gaussian-RBF kernel matrices,

        CMMD = scale * ( mean_{i,j} k(a_i, a_j) + mean_{i,j} k(b_i, b_j) - 2 mean_{i,j} k(a_i, b_j) ),

    sigma 10, scale 1000 (a V-statistic: never negative, biased upwards by O(1/N)). It is CMMD only on
    unit-norm CLIP ViT-L/14@336 image embeddings (:class:`medkit.metrics.clip.CLIPFeatures`); metric
    entries on any other features are labelled with that extractor.
    """
    kaa, kbb, kab = _rbf_kernels(feats_a, feats_b, sigma, "cmmd")
    return float(scale * (kaa.mean() + kbb.mean() - 2 * kab.mean()))


# ------------------------------------------------------------------------------------------- KID
def poly_mmd2(x, y, degree: int = 3, gamma: float | None = None, coef: float = 1.0) -> float:
    """Unbiased MMD^2 with the polynomial kernel k(a, b) = (gamma a.b + coef)^degree, gamma = 1/D by default:
    the diagonals left out of k_xx and k_yy, the full mean of k_xy. The one polynomial-kernel MMD of the kit:
    KID's (on InceptionV3 features) and SLIM-Diff's MMD-MF's (on lesion shape features,
    :mod:`medkit.metrics.masks`). Takes (m, D) and (n, D) arrays or tensors, computed in float64.
    """
    x = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x, dtype=torch.float64)
    y = torch.as_tensor(np.asarray(y) if not torch.is_tensor(y) else y, dtype=torch.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"poly_mmd2: expected (m, D) and (n, D) features, got {tuple(x.shape)} and {tuple(y.shape)}")
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError(f"poly_mmd2 needs at least 2 samples per side (got {m} and {n})")
    gamma = 1.0 / x.shape[1] if gamma is None else gamma

    def k(a, b):
        g = gamma * (a @ b.T) + coef
        return g * g * g if degree == 3 else g ** degree  # g*g*g: much faster than a power

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    xx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    yy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(xx + yy - 2 * kxy.mean())


def kid(feats_a, feats_b, subsets: int = 100, subset_size: int = 1000, degree: int = 3,
        gamma: float | None = None, coef: float = 1.0, seed: int = 0) -> dict:
    """Kernel Inception Distance: unbiased polynomial-kernel MMD^2 over ``subsets`` random subsets of
    ``subset_size`` samples per side (without replacement); ``{value: mean, std, subsets, subset_size}``.

    ``subset_size`` larger than a set is reduced to the smaller set's size, with a warning
    (torchmetrics raises instead): with few samples every subset is (nearly) the whole set and the std
    no longer reflects sampling variability.
    """
    a, b = _pair(feats_a, feats_b, "kid")
    size = int(subset_size)
    if size < 2:
        raise ValueError(f"kid: subset_size={subset_size} must be >= 2.")
    if size > min(len(a), len(b)):
        size = min(len(a), len(b))
        warnings.warn(f"kid: subset_size={subset_size} is larger than the sets (real {len(a)}, generated "
                      f"{len(b)}); using subset_size={size}. With subsets this close to the whole set the std "
                      f"understates the sampling error.", SmallSampleWarning, stacklevel=2)
    gen = torch.Generator().manual_seed(int(seed))
    vals = []
    for _ in range(int(subsets)):
        ia = torch.randperm(len(a), generator=gen)[:size]
        ib = torch.randperm(len(b), generator=gen)[:size]
        vals.append(poly_mmd2(a[ia], b[ib], degree, gamma, coef))
    v = np.asarray(vals)
    return {"value": float(v.mean()), "std": float(v.std(ddof=0)), "subsets": int(subsets), "subset_size": size,
            "n_real": len(a), "n_generated": len(b)}
