"""Measures for 3D through-plane super-resolution (SR) of CT/MR volumes: SR output against the
high-resolution reference (HR), and against the low-resolution input (LR) it was made from.

Conventions. A volume is a numpy array or torch tensor of shape (X, Y, Z); Z is the through-plane
(slice) axis, the one SR fills in. Intensities are in physical units: HU for CT, raw scanner units for
MR. Everything is computed in float64 numpy unless a library is named below.

Which library computes what:

- PSNR: MONAI ``PSNRMetric`` (float64) on the whole volume; inside a mask, the same formula
  ``10 log10(R^2 / MSE)`` over the masked voxels in numpy (MONAI has no mask argument).
- SSIM (3D and per axial slice): MONAI ``SSIMMetric`` (``spatial_dims=3`` / ``2``). MONAI computes in
  float32 with a "valid" convolution, so only positions where the whole window lies inside the volume
  are averaged, and it uses the population (biased) variances. That equals scikit-image's
  ``structural_similarity(..., data_range=1, use_sample_covariance=False)`` with the same window:
  ``kernel="uniform", win=7`` = skimage's default window; ``kernel="gaussian", win=11, sigma=1.5`` =
  skimage's ``gaussian_weights=True`` (Wang et al. 2004). skimage's *default* also applies the
  sample-covariance factor N/(N-1) and so reads slightly lower.
- MAE, body mask (``scipy.ndimage``), z power spectrum (``numpy.fft``, ``scipy.signal`` Hann window),
  seam energy, bootstrap: numpy/scipy here. Window placement for :func:`seam_energy` comes from MONAI's
  ``dense_patch_slices``, with the scan interval of ``sliding_window_inference``.
- ``medkit.metrics.pixel`` (torchmetrics) is for images in [-1, 1] as (N, C, ...) tensors; it has no
  clipping, mask or per-item bootstrap, so it is not used here (``pixel.mean_ci`` is the normal-
  approximation CI; :func:`bootstrap_ci` is the percentile bootstrap of a mean).

The HU window. PSNR and SSIM are computed on volumes clipped to ``data_range_hu = (lo, hi)``, with
data range ``R = hi - lo``. PSNR = 20 log10(R) - 10 log10(MSE), so for data lying inside both windows
(clipping changes nothing) PSNR under window R1 minus PSNR under window R2 is exactly 20 log10(R1/R2):
(-1024, 3071) reads 20 log10(4095/2000) = 6.22 dB higher than (-1000, 1000) for the same error. Always
report the window with the number. SSIM is computed after mapping the window to [0, 1]
(``(v - lo) / R``, data range 1): SSIM's luminance term is not shift-invariant and is meant for
non-negative intensities, so raw HU (mostly negative in air) would give different, meaningless numbers.

PSNR and SSIM reward blur: the MSE-optimal SR is the conditional mean, which is smooth along z. The
through-plane spectrum (:func:`z_spectrum_ratio`, :func:`spectral_distance`) says whether SR restored the
high z frequencies: a blurry SR has a high-band ratio well below 0 dB, a faithful one about 0 dB.
:func:`lr_consistency` checks the other side: re-degraded, a faithful SR gives back its LR input.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import scipy.ndimage as ndi
import scipy.signal
import torch

CT_RANGE_HU: tuple[float, float] = (-1024.0, 3071.0)  # 12-bit CT: the full stored range
BODY_THRESHOLD_HU: float = -500.0  # between air (-1000) and fat (-100); lung parenchyma (~ -850) falls below


# ------------------------------------------------------------------------------------------ inputs
def _vol(x, name: str, side: str = "volume", ndim: int | None = 3) -> np.ndarray:
    """A float64 numpy copy-or-view of a numpy array / torch tensor, checked for shape and finiteness."""
    if torch.is_tensor(x):
        x = x.detach().cpu().numpy()
    v = np.asarray(x, dtype=np.float64)
    if ndim is not None and v.ndim != ndim:
        raise ValueError(f"{name}: the {side} must be a {ndim}-D (X, Y, Z) volume, got shape {v.shape}.")
    if not np.isfinite(v).all():
        raise ValueError(f"{name}: the {side} contains NaN or inf.")
    return v


def _pair(sr, hr, name: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = _vol(sr, name, "SR volume"), _vol(hr, name, "reference volume")
    if a.shape != b.shape:
        raise ValueError(f"{name}: SR has shape {a.shape} but the reference {b.shape}; resample SR onto the "
                         f"reference grid first.")
    return a, b


def _window(data_range_hu, name: str) -> tuple[float, float]:
    try:
        lo, hi = (float(t) for t in data_range_hu)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: data_range_hu={data_range_hu!r} must be a pair (low, high).") from None
    if not hi > lo:
        raise ValueError(f"{name}: data_range_hu={data_range_hu!r} must have high > low.")
    return lo, hi


def _mask(mask, shape, name: str) -> np.ndarray:
    if torch.is_tensor(mask):
        mask = mask.detach().cpu().numpy()
    m = np.asarray(mask)
    if m.dtype != bool:
        if not np.isin(m, (0, 1)).all():
            raise ValueError(f"{name}: the mask must be boolean (or 0/1); threshold it first.")
        m = m.astype(bool)
    if m.shape != tuple(shape):
        raise ValueError(f"{name}: mask has shape {m.shape} but the volume {tuple(shape)}.")
    if not m.any():
        raise ValueError(f"{name}: the mask is empty.")
    return m


def _tag(lo: float, hi: float) -> str:
    return f"{lo:g}_{hi:g}"


# -------------------------------------------------------------------------------------- PSNR, MAE
def psnr(sr, hr, data_range_hu=CT_RANGE_HU, mask=None) -> float:
    """PSNR in dB of ``sr`` against ``hr``, both clipped to ``data_range_hu = (lo, hi)``:
    ``10 log10((hi - lo)^2 / MSE)``, the MSE over the whole volume or over the voxels of ``mask``.

    The number depends on the window: between windows of width R1 and R2 it shifts by 20 log10(R1/R2)
    for in-range data (see the module docstring), so name the window with it. Identical volumes give inf.
    Whole volume: MONAI ``PSNRMetric`` (float64); masked: the same formula in numpy.
    """
    a, b = _pair(sr, hr, "psnr")
    lo, hi = _window(data_range_hu, "psnr")
    a, b = np.clip(a, lo, hi), np.clip(b, lo, hi)
    if mask is None:
        from monai.metrics import PSNRMetric

        metric = PSNRMetric(max_val=hi - lo, reduction="none")
        return float(metric(torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None]).item())
    m = _mask(mask, a.shape, "psnr")
    mse = float(np.mean((a[m] - b[m]) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10((hi - lo) ** 2 / mse)


def mae(sr, hr, mask=None) -> float:
    """Mean absolute error in the volumes' own units (HU for CT), no clipping, over the voxels of
    ``mask`` (e.g. :func:`body_mask`) or the whole volume. numpy, float64."""
    a, b = _pair(sr, hr, "mae")
    if mask is None:
        return float(np.mean(np.abs(a - b)))
    m = _mask(mask, a.shape, "mae")
    return float(np.mean(np.abs(a[m] - b[m])))


# -------------------------------------------------------------------------------------------- SSIM
@dataclass(frozen=True)
class AxialSSIM:
    """SSIM per axial (z) slice: ``per_slice[k]`` is the 2D SSIM of slice ``vol[:, :, k]``; ``mean`` is
    their unweighted mean."""
    mean: float
    per_slice: np.ndarray


def _unit(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return (np.clip(a, lo, hi) - lo) / (hi - lo)


def _ssim_monai(a01: np.ndarray, b01: np.ndarray, spatial_dims: int, win: int, kernel: str,
                sigma: float) -> np.ndarray:
    """MONAI SSIM, data range 1, on (B, 1, *spatial) arrays in [0, 1]; one value per batch item."""
    from monai.metrics import SSIMMetric

    if kernel not in ("uniform", "gaussian"):
        raise ValueError(f"ssim: kernel={kernel!r} must be 'uniform' or 'gaussian'.")
    if min(a01.shape[2:]) < win:
        raise ValueError(f"ssim: spatial size {a01.shape[2:]} is smaller than the {win}-voxel window.")
    metric = SSIMMetric(spatial_dims=spatial_dims, data_range=1.0, kernel_type=kernel, win_size=win,
                        kernel_sigma=sigma, reduction="none")
    out = metric(torch.from_numpy(a01), torch.from_numpy(b01))
    return out.reshape(-1).double().numpy()


def ssim3d(sr, hr, data_range_hu=CT_RANGE_HU, win: int = 7, kernel: str = "uniform",
           sigma: float = 1.5) -> float:
    """3D SSIM of the volumes clipped to ``data_range_hu`` and mapped to [0, 1] (data range 1).

    Window: ``kernel="uniform"`` (default) is a win^3 box, scikit-image's default window (win 7);
    ``kernel="gaussian"`` is a Gaussian of std ``sigma`` truncated to win^3 (win 11, sigma 1.5 is Wang et
    al.'s window). Computed by MONAI ``SSIMMetric(spatial_dims=3)`` (float32), averaged over the positions
    where the window lies wholly inside the volume; equals skimage with ``use_sample_covariance=False``.
    """
    a, b = _pair(sr, hr, "ssim3d")
    lo, hi = _window(data_range_hu, "ssim3d")
    return float(_ssim_monai(_unit(a, lo, hi)[None, None], _unit(b, lo, hi)[None, None], 3, win, kernel,
                             sigma)[0])


def ssim3d_masked(sr, hr, mask, data_range_hu=CT_RANGE_HU, win: int = 7) -> float:
    """3D SSIM averaged over the voxels of ``mask`` only (body/brain): scikit-image's SSIM map
    (``structural_similarity(full=True)``, uniform win^3 window, population covariances as :func:`ssim3d`),
    the same clipping and [0, 1] mapping. Over a whole volume SSIM is dominated by the air around the body,
    where the reference is flat and the tiniest noise scores low; this says how the tissue itself fares."""
    from skimage.metrics import structural_similarity

    a, b = _pair(sr, hr, "ssim3d_masked")
    lo, hi = _window(data_range_hu, "ssim3d_masked")
    m = _mask(mask, a.shape, "ssim3d_masked")
    if not m.any():
        raise ValueError("ssim3d_masked: the mask is empty")
    _, smap = structural_similarity(_unit(a, lo, hi), _unit(b, lo, hi), win_size=win, data_range=1.0, full=True,
                                    use_sample_covariance=False)
    return float(smap[m].mean())


def ssim_axial_masked(sr, hr, mask, data_range_hu=CT_RANGE_HU, win: int = 7) -> np.ndarray:
    """Per axial slice, the 2D SSIM map (as :func:`ssim3d_masked`) averaged over the slice's mask voxels;
    NaN for slices without mask voxels."""
    from skimage.metrics import structural_similarity

    a, b = _pair(sr, hr, "ssim_axial_masked")
    lo, hi = _window(data_range_hu, "ssim_axial_masked")
    m = _mask(mask, a.shape, "ssim_axial_masked")
    a01, b01 = _unit(a, lo, hi), _unit(b, lo, hi)
    out = np.full(a.shape[2], np.nan)
    for k in range(a.shape[2]):
        if m[:, :, k].any():
            _, smap = structural_similarity(a01[:, :, k], b01[:, :, k], win_size=win, data_range=1.0, full=True,
                                            use_sample_covariance=False)
            out[k] = smap[m[:, :, k]].mean()
    return out


def ssim_axial(sr, hr, data_range_hu=CT_RANGE_HU, win: int = 7, kernel: str = "uniform",
               sigma: float = 1.5) -> AxialSSIM:
    """2D SSIM of each axial slice ``[:, :, k]`` (same clipping, [0, 1] mapping and window as
    :func:`ssim3d`, MONAI ``SSIMMetric(spatial_dims=2)``), and their mean. Slice-wise SSIM is what most
    2D SR papers report; it never compares across slices, so it is blind to z inconsistency."""
    a, b = _pair(sr, hr, "ssim_axial")
    lo, hi = _window(data_range_hu, "ssim_axial")
    a01 = np.ascontiguousarray(np.moveaxis(_unit(a, lo, hi), 2, 0)[:, None])
    b01 = np.ascontiguousarray(np.moveaxis(_unit(b, lo, hi), 2, 0)[:, None])
    per = _ssim_monai(a01, b01, 2, win, kernel, sigma)
    return AxialSSIM(mean=float(per.mean()), per_slice=per)


# ------------------------------------------------------------------------------------ mask, slices
def body_mask(hr, threshold: float = BODY_THRESHOLD_HU) -> np.ndarray:
    """Foreground (body / head) mask: the largest face-connected component of ``hr > threshold``, with
    holes filled slice by slice (each axial slice ``[:, :, k]``; ``scipy.ndimage.label`` and
    ``binary_fill_holes``). Slice-wise filling closes the lungs, airways and bowel gas enclosed in an
    axial section, while air open to the outside stays out. The largest component drops the table,
    cables and noise specks.

    The default -500 HU is for CT. For MR pass a threshold in the scanner's units (e.g. a fraction of a
    high percentile of the volume, or an Otsu threshold). Returns a boolean array (all False if nothing
    exceeds the threshold).
    """
    v = _vol(hr, "body_mask")
    lab, n = ndi.label(v > threshold)
    if n == 0:
        return np.zeros(v.shape, dtype=bool)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    keep = lab == int(np.argmax(sizes))
    for k in range(keep.shape[2]):
        keep[:, :, k] = ndi.binary_fill_holes(keep[:, :, k])
    return keep


def drop_boundary(vol, k: int):
    """``vol`` without its first and last ``k`` slices along z (the last axis), as RPLHR-CT scores SR:
    the end slices have no neighbour on one side. Works on numpy arrays, tensors and masks alike (a view)."""
    k = int(k)
    nz = vol.shape[-1]
    if k < 0 or 2 * k >= nz:
        raise ValueError(f"drop_boundary: cannot drop {k} slices at each end of {nz}.")
    return vol[..., k:nz - k] if k else vol


# ------------------------------------------------------------------------------------ LR consistency
def lr_consistency(sr, lr, degrade: Callable, data_range_hu=CT_RANGE_HU) -> dict:
    """How well SR, re-degraded, gives back its LR input: ``{"psnr": PSNR(degrade(sr), lr), "mae":
    MAE(degrade(sr), lr)}`` (PSNR in dB under ``data_range_hu`` as in :func:`psnr`; MAE in raw units).

    ``degrade`` maps an HR-grid volume to the LR grid (the acquisition model: slice-profile blur along z,
    then decimation). A faithful SR satisfies degrade(SR) = LR up to noise, so this PSNR should be high
    and the MAE near the noise level; a hallucinating SR can score well against HR-like priors and still
    fail here. It needs no HR reference, so it can also be computed on clinical volumes without one.
    """
    d, lo_res = _degraded(sr, lr, degrade)
    return {"psnr": psnr(d, lo_res, data_range_hu), "mae": mae(d, lo_res)}


def _degraded(sr, lr, degrade: Callable) -> tuple[np.ndarray, np.ndarray]:
    lo_res = _vol(lr, "lr_consistency", "LR volume")
    d = _vol(degrade(sr), "lr_consistency", "output of degrade(sr)")
    if d.shape != lo_res.shape:
        raise ValueError(f"lr_consistency: degrade(sr) has shape {d.shape} but lr {lo_res.shape}; degrade must "
                         f"map the SR grid onto the LR grid.")
    return d, lo_res


# ----------------------------------------------------------------------------------- z spectrum
def z_spectrum(vol, mask=None) -> tuple[np.ndarray, np.ndarray]:
    """Through-plane power spectrum: for every (x, y) column ``vol[x, y, :]``, remove its mean, apply a
    periodic Hann window w and take the FFT; the power ``|FFT|^2 / sum(w^2)`` is averaged over columns.
    With ``mask``, only the columns inside the mask's bounding box in x and y (z is never cropped, so the
    frequency grid is that of the full column).

    Returns ``(freqs, power)``: ``freqs`` in cycles per voxel, 0 ... 0.5 (Nyquist), ``rfftfreq(Z)``;
    ``power`` in squared units of ``vol`` per bin. The normalisation makes white noise of variance s^2
    read ~s^2 at every frequency away from DC. Raw units, no clipping.
    """
    v = _vol(vol, "z_spectrum")
    if mask is not None:
        m = _mask(mask, v.shape, "z_spectrum")
        xs, ys = np.flatnonzero(m.any(axis=(1, 2))), np.flatnonzero(m.any(axis=(0, 2)))
        v = v[xs[0]:xs[-1] + 1, ys[0]:ys[-1] + 1]
    nz = v.shape[2]
    if nz < 4:
        raise ValueError(f"z_spectrum: {nz} slices are too few for a spectrum.")
    cols = v.reshape(-1, nz)
    cols = cols - cols.mean(axis=1, keepdims=True)
    w = scipy.signal.get_window("hann", nz)  # periodic (DFT-even) Hann
    power = (np.abs(np.fft.rfft(cols * w, axis=1)) ** 2).mean(axis=0) / float(np.sum(w ** 2))
    return np.fft.rfftfreq(nz), power


def _spectra(sr, hr, mask, name: str):
    a, b = _pair(sr, hr, name)
    f, p_sr = z_spectrum(a, mask)
    _, p_hr = z_spectrum(b, mask)
    return f, p_sr, p_hr


def z_spectrum_ratio(sr, hr, band=(0.25, 0.5), mask=None) -> float:
    """``10 log10(mean P_sr / mean P_hr)`` over the z frequencies f with ``band[0] <= f <= band[1]``
    (normalised frequency, 0.5 = Nyquist), P from :func:`z_spectrum` (same ``mask`` for both).

    PSNR/SSIM reward blur; this does not: a z-blurry SR reads well below 0 dB, a faithful SR ~0 dB, one
    that adds high-frequency noise or ringing above 0 dB. Identical volumes give exactly 0.
    """
    f, p_sr, p_hr = _spectra(sr, hr, mask, "z_spectrum_ratio")
    lo, hi = float(band[0]), float(band[1])
    sel = (f >= lo) & (f <= hi)
    if not sel.any():
        raise ValueError(f"z_spectrum_ratio: no frequency of {len(f)} bins lies in band {band!r}.")
    den = float(p_hr[sel].mean())
    if den == 0.0:
        raise ValueError("z_spectrum_ratio: the reference has no power in the band (constant along z?).")
    return 10.0 * math.log10(float(p_sr[sel].mean()) / den)


def spectral_distance(sr, hr, mask=None) -> float:
    """Mean over all frequencies f > 0 of ``|log10 P_sr(f) - log10 P_hr(f)|`` (P from :func:`z_spectrum`,
    same ``mask`` for both): 0 for identical spectra, 0.602 (= log10 4) for SR = 2 x HR. Powers are
    floored at 1e-12 times the largest power of either spectrum, so a bin empty in both counts as 0."""
    f, p_sr, p_hr = _spectra(sr, hr, mask, "spectral_distance")
    floor = 1e-12 * max(float(p_sr.max()), float(p_hr.max()), np.finfo(np.float64).tiny)
    sel = f > 0
    d = np.abs(np.log10(np.maximum(p_sr[sel], floor)) - np.log10(np.maximum(p_hr[sel], floor)))
    return float(d.mean())


# --------------------------------------------------------------------------------------- seam energy
def _tuple(x, n: int, name: str) -> tuple:
    if isinstance(x, (int, float, np.integer, np.floating)) or x is None:
        return (x,) * n
    t = tuple(x)
    if len(t) != n:
        raise ValueError(f"seam_energy: {name}={x!r} must be one value or {n} (one per axis).")
    return t


def window_cuts(size: int, window: int, overlap: float, out_size: int | None = None) -> np.ndarray:
    """Where MONAI ``sliding_window_inference`` windows begin or end inside an axis of ``size`` voxels:
    positions c such that a window starts at c or ends just before c, 0 < c < size (seams lie between
    voxels c-1 and c). Windows are placed as MONAI does: ``window <= 0`` or None means the whole axis; an
    axis smaller than the window is padded to it (one window, no seam); scan interval
    ``int(window * (1 - overlap))`` (at least 1; the window itself when window == size), starts 0,
    interval, 2 interval, ... with the last moved back to end at ``size`` (``dense_patch_slices``).
    With ``out_size`` (a predictor whose output is ``out_size / size`` times larger along the axis,
    e.g. an SR net), positions are mapped as MONAI maps them: ``int(c * out_size / size)``.
    """
    from monai.data.utils import dense_patch_slices

    size = int(size)
    window = size if window is None or int(window) <= 0 else int(window)
    if not 0 <= float(overlap) < 1:
        raise ValueError(f"seam_energy: overlap={overlap!r} must be in [0, 1).")
    if window >= size:
        return np.zeros(0, dtype=int)
    interval = max(int(window * (1 - float(overlap))), 1)
    slices = dense_patch_slices((size,), (window,), (interval,))
    cuts = sorted({s[0].start for s in slices} | {s[0].stop for s in slices})
    cuts = [c for c in cuts if 0 < c < size]
    scale = 1.0 if out_size is None else int(out_size) / size
    return np.array(sorted({int(c * scale) for c in cuts}), dtype=int)


def seam_energy(vol, window, overlap, axis_sizes=None) -> dict:
    """Sliding-window seam check: mean squared along-axis second difference at voxels next to a window
    border vs. everywhere else.

    For each axis a with seams (see :func:`window_cuts` for where MONAI's ``sliding_window_inference``
    puts windows of size ``window`` with fraction ``overlap``; both may be per axis), the second
    difference ``v[j-1] - 2 v[j] + v[j+1]`` along a is taken at every voxel with 1 <= j <= n-2. It is a
    *border* voxel if its 3-voxel stencil straddles a seam (j = c-1 or j = c for a cut c), else an
    *interior* one. Squares are pooled over axes: ``border`` = mean over all border (voxel, axis) pairs,
    ``interior`` likewise, ``ratio = border / interior``. A seamless output gives ratio ~1; a step at the
    window borders (un-blended windows, normalisation that differs per window) gives ratio >> 1.

    ``axis_sizes``: the spatial size of the input the windows were laid on, when it differs from
    ``vol.shape`` because the predictor changes the size (a through-plane SR net run on LR windows);
    ``window`` is then in input voxels and borders are scaled onto ``vol``'s grid as MONAI does.
    Defaults to ``vol.shape``. Returns ``{"border", "interior", "ratio", "cuts"}`` (``cuts``: per-axis
    arrays of seam positions on ``vol``'s grid); border and ratio are NaN where no axis has a seam.
    """
    v = _vol(vol, "seam_energy", ndim=None)
    nd = v.ndim
    sizes = v.shape if axis_sizes is None else tuple(int(s) for s in _tuple(axis_sizes, nd, "axis_sizes"))
    wins, ovs = _tuple(window, nd, "window"), _tuple(overlap, nd, "overlap")
    b_sum = i_sum = 0.0
    b_n = i_n = 0
    cuts_all = []
    for ax in range(nd):
        n = v.shape[ax]
        cuts = window_cuts(sizes[ax], wins[ax], ovs[ax], out_size=n)
        cuts_all.append(cuts)
        if n < 3:
            continue
        d2 = np.diff(v, n=2, axis=ax)  # index i <-> voxel j = i + 1
        other = int(d2.size // d2.shape[ax])
        prof = (d2 ** 2).sum(axis=tuple(k for k in range(nd) if k != ax))
        on = np.zeros(n - 2, dtype=bool)
        for c in cuts:
            for j in (c - 1, c):
                if 1 <= j <= n - 2:
                    on[j - 1] = True
        b_sum += float(prof[on].sum())
        i_sum += float(prof[~on].sum())
        b_n += int(on.sum()) * other
        i_n += int((~on).sum()) * other
    border = b_sum / b_n if b_n else math.nan
    interior = i_sum / i_n if i_n else math.nan
    if math.isnan(border) or math.isnan(interior):
        ratio = math.nan
    elif interior > 0:
        ratio = border / interior
    else:
        ratio = math.inf if border > 0 else math.nan
    return {"border": border, "interior": interior, "ratio": ratio, "cuts": cuts_all}


# ----------------------------------------------------------------------------------- statistics
def bootstrap_ci(values, n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> tuple[float, float, float]:
    """``(mean, lo, hi)``: the mean of per-item values (one per volume/patient) and its percentile
    bootstrap interval: ``n_boot`` resamples of the items with replacement (numpy ``default_rng(seed)``,
    so the same seed gives the same interval), the ``(1-ci)/2`` and ``(1+ci)/2`` quantiles of their means.
    With few items (< ~10) the interval is too narrow; say n with it."""
    v = np.asarray(values.detach().cpu() if torch.is_tensor(values) else values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("bootstrap_ci: no values.")
    if not np.isfinite(v).all():
        raise ValueError("bootstrap_ci: values contain NaN or inf (e.g. PSNR of identical volumes); drop or "
                         "cap them first.")
    if not 0 < ci < 1 or int(n_boot) < 1:
        raise ValueError(f"bootstrap_ci: need 0 < ci < 1 and n_boot >= 1, got ci={ci}, n_boot={n_boot}.")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(int(n_boot), v.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - ci) / 2, (1 + ci) / 2])
    return float(v.mean()), float(lo), float(hi)


def paired_difference_ci(a, b, n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> tuple[float, float, float]:
    """``(mean, lo, hi)`` of the per-item differences ``a - b`` (two methods scored on the same volumes,
    in the same order): :func:`bootstrap_ci` of the differences. An interval excluding 0 says the
    methods differ on this test set; pairing removes the between-volume spread that unpaired CIs carry."""
    x = np.asarray(a.detach().cpu() if torch.is_tensor(a) else a, dtype=np.float64).ravel()
    y = np.asarray(b.detach().cpu() if torch.is_tensor(b) else b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"paired_difference_ci: a has {x.size} items but b {y.size}; pair them per volume.")
    return bootstrap_ci(x - y, n_boot=n_boot, seed=seed, ci=ci)


# -------------------------------------------------------------------------------------- report
def sr_report(sr, hr, lr=None, degrade: Callable | None = None, mask=None,
              ranges: Sequence[tuple[float, float]] = (CT_RANGE_HU, (-1000.0, 1000.0)), drop: int = 0,
              unit: str = "hu", band=(0.25, 0.5), win: int = 7) -> dict:
    """Every measure of this module for one volume (or slab), as a flat ``{name: float}`` dict.

    ``sr``, ``hr`` (and ``mask``) are on the HR grid; ``drop`` slices are removed at each z end of all
    three first (:func:`drop_boundary`). For each window ``(lo, hi)`` in ``ranges`` (tag ``lo_hi``, e.g.
    ``-1024_3071``): ``psnr_<tag>``, ``ssim3d_<tag>`` (uniform window ``win``), ``ssim_axial_<tag>``
    (mean over slices) and, with a mask, ``psnr_mask_<tag>``. Then ``mae_<unit>`` (whole volume) and,
    with a mask, ``mae_<unit>_mask``; ``z_hf_ratio_db`` (:func:`z_spectrum_ratio` over ``band``) and
    ``z_spectral_distance`` (within the mask's bounding box when a mask is given). With ``lr`` and
    ``degrade``: ``lr_psnr_<tag>`` per window and ``lr_mae_<unit>`` from :func:`lr_consistency`, on the
    full, undropped SR (degrade maps the whole HR grid to the LR grid). ``unit`` names the intensity
    unit in the MAE keys: "hu" for CT, e.g. "raw" for MR.
    """
    if (lr is None) != (degrade is None):
        raise ValueError("sr_report: pass both lr and degrade for the LR-consistency measures, or neither.")
    a, b = _pair(sr, hr, "sr_report")
    m = None if mask is None else _mask(mask, a.shape, "sr_report")
    a_d, b_d = drop_boundary(a, drop), drop_boundary(b, drop)
    m_d = None if m is None else drop_boundary(m, drop)
    out: dict = {}
    for rng in ranges:
        lo, hi = _window(rng, "sr_report")
        t = _tag(lo, hi)
        out[f"psnr_{t}"] = psnr(a_d, b_d, (lo, hi))
        if m_d is not None:
            out[f"psnr_mask_{t}"] = psnr(a_d, b_d, (lo, hi), mask=m_d)
        out[f"ssim3d_{t}"] = ssim3d(a_d, b_d, (lo, hi), win=win)
        out[f"ssim_axial_{t}"] = ssim_axial(a_d, b_d, (lo, hi), win=win).mean
        if m_d is not None:
            out[f"ssim3d_mask_{t}"] = ssim3d_masked(a_d, b_d, m_d, (lo, hi), win=win)
    out[f"mae_{unit}"] = mae(a_d, b_d)
    if m_d is not None:
        out[f"mae_{unit}_mask"] = mae(a_d, b_d, mask=m_d)
    if lr is not None:
        d, lo_res = _degraded(sr, lr, degrade)  # = lr_consistency (degrade gets sr as passed), once
        for rng in ranges:
            lo, hi = _window(rng, "sr_report")
            out[f"lr_psnr_{_tag(lo, hi)}"] = psnr(d, lo_res, (lo, hi))
        out[f"lr_mae_{unit}"] = mae(d, lo_res)
    out["z_hf_ratio_db"] = z_spectrum_ratio(a_d, b_d, band=band, mask=m_d)
    out["z_spectral_distance"] = spectral_distance(a_d, b_d, mask=m_d)
    return out
