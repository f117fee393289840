"""Through-plane SR measures (medkit.metrics.volume) against hand formulas, scikit-image and MONAI's
own sliding-window inference, on small seeded volumes."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage as ndi
import skimage.metrics as skm
import torch

from medkit.metrics import volume as V

SHAPE = (24, 24, 32)


@pytest.fixture(scope="module")
def hr():
    """A smooth random field in HU, std 200, inside [-900, 900] (so inside both CT windows)."""
    rng = np.random.default_rng(0)
    f = ndi.gaussian_filter(rng.standard_normal(SHAPE), sigma=(2, 2, 1), mode="wrap")
    return np.clip(f / f.std() * 200.0, -900.0, 900.0)


@pytest.fixture(scope="module")
def sr(hr):
    return hr + np.random.default_rng(1).normal(0.0, 10.0, SHAPE)


def _unit(v, lo, hi):
    return (np.clip(v, lo, hi) - lo) / (hi - lo)


# --------------------------------------------------------------------------------------------- PSNR
def test_psnr_hand_formula_window_shift_and_mask(hr, sr):
    mse = np.mean((sr - hr) ** 2)
    assert V.psnr(sr, hr) == pytest.approx(10 * math.log10(4095.0 ** 2 / mse), abs=1e-9)
    assert V.psnr(hr + 10.0, hr) == pytest.approx(20 * math.log10(4095.0 / 10.0), abs=1e-9)
    # in-range data: the window only changes the peak term
    shift = V.psnr(sr, hr) - V.psnr(sr, hr, data_range_hu=(-1000, 1000))
    assert shift == pytest.approx(20 * math.log10(4095.0 / 2000.0), abs=1e-9)
    # masked PSNR: the formula over the mask's voxels; an all-True mask = the (MONAI) whole-volume path
    m = np.zeros(SHAPE, bool)
    m[4:20, 4:20, :] = True
    assert V.psnr(sr, hr, mask=m) == pytest.approx(10 * math.log10(4095.0 ** 2 / np.mean((sr - hr)[m] ** 2)),
                                                   abs=1e-9)
    assert V.psnr(sr, hr, mask=np.ones(SHAPE, bool)) == pytest.approx(V.psnr(sr, hr), abs=1e-9)
    assert V.psnr(hr, hr) == math.inf
    # both sides are clipped: an SR overshoot above the window's top costs nothing where HR is at the top
    top = hr.copy()
    top[0, 0, 0] = 3071.0
    over = top.copy()
    over[0, 0, 0] = 5000.0
    assert V.psnr(over, top) == math.inf
    # torch tensors are accepted
    assert V.psnr(torch.from_numpy(sr).float(), torch.from_numpy(hr).float()) == pytest.approx(V.psnr(sr, hr),
                                                                                               abs=1e-3)


def test_mae_respects_mask(hr):
    m = np.zeros(SHAPE, bool)
    m[6:18, 6:18, 4:28] = True
    sr = hr + np.where(m, 5.0, -100.0)
    assert V.mae(sr, hr, mask=m) == pytest.approx(5.0)
    assert V.mae(sr, hr, mask=~m) == pytest.approx(100.0)
    frac = m.mean()
    assert V.mae(sr, hr) == pytest.approx(5.0 * frac + 100.0 * (1 - frac))
    assert V.mae(hr + 3000.0, hr) == pytest.approx(3000.0)  # no clipping
    with pytest.raises(ValueError, match="empty"):
        V.mae(sr, hr, mask=np.zeros(SHAPE, bool))


# --------------------------------------------------------------------------------------------- SSIM
def test_ssim_identical_is_one(hr):
    assert V.ssim3d(hr, hr) == pytest.approx(1.0, abs=1e-6)
    ax = V.ssim_axial(hr, hr)
    assert ax.per_slice.shape == (SHAPE[2],)
    np.testing.assert_allclose(ax.per_slice, 1.0, atol=1e-6)


def test_ssim_matches_skimage(hr, sr):
    lo, hi = -1024, 3071
    a, b = _unit(sr, lo, hi), _unit(hr, lo, hi)
    ref = skm.structural_similarity(a, b, win_size=7, data_range=1.0, use_sample_covariance=False)
    assert V.ssim3d(sr, hr) == pytest.approx(ref, abs=1e-4)
    ref_g = skm.structural_similarity(a, b, gaussian_weights=True, sigma=1.5, data_range=1.0,
                                      use_sample_covariance=False)
    assert V.ssim3d(sr, hr, kernel="gaussian", win=11) == pytest.approx(ref_g, abs=1e-4)
    lo, hi = -1000, 1000
    a, b = _unit(sr, lo, hi), _unit(hr, lo, hi)
    ax = V.ssim_axial(sr, hr, data_range_hu=(lo, hi))
    ref_ax = [skm.structural_similarity(a[:, :, k], b[:, :, k], win_size=7, data_range=1.0,
                                        use_sample_covariance=False) for k in range(SHAPE[2])]
    np.testing.assert_allclose(ax.per_slice, ref_ax, atol=1e-4)
    assert ax.mean == pytest.approx(np.mean(ref_ax), abs=1e-4)
    assert V.ssim3d(sr, hr) < 1.0


# --------------------------------------------------------------------------------- masks and slices
def test_body_mask_largest_component_holes_filled():
    x, y, z = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    body = ((x - 11.5) / 9) ** 2 + ((y - 11.5) / 8) ** 2 + ((z - 15.5) / 14) ** 2 <= 1
    lung = ((x - 11.5) / 4) ** 2 + ((y - 11.5) / 3) ** 2 + ((z - 15.5) / 6) ** 2 <= 1
    vol = np.full(SHAPE, -1000.0)
    vol[body] = 40.0
    vol[lung] = -850.0  # below -500: a hole in the body, enclosed in every axial slice it crosses
    vol[0:2, 0:2, 0:3] = 200.0  # a separate small object (table, cable)
    m = V.body_mask(vol)
    assert m.dtype == bool
    np.testing.assert_array_equal(m, body)
    # MR: any unit, via the threshold
    np.testing.assert_array_equal(V.body_mask(np.where(body, 300.0, 5.0), threshold=50.0), body)
    assert not V.body_mask(np.full(SHAPE, -1000.0)).any()


def test_drop_boundary():
    v = np.arange(np.prod(SHAPE), dtype=float).reshape(SHAPE)
    d = V.drop_boundary(v, 3)
    assert d.shape == (24, 24, 26)
    np.testing.assert_array_equal(d, v[:, :, 3:29])
    assert V.drop_boundary(v, 0) is v
    assert tuple(V.drop_boundary(torch.from_numpy(v), 2).shape) == (24, 24, 28)
    with pytest.raises(ValueError):
        V.drop_boundary(v, 16)


def test_lr_consistency(hr, sr):
    decimate = lambda v: np.asarray(v)[:, :, ::2]  # noqa: E731 - identity-like degrade: keep every 2nd slice
    lr = hr[:, :, ::2]
    r = V.lr_consistency(hr, lr, decimate)
    assert r["psnr"] == math.inf and r["mae"] == 0.0
    r = V.lr_consistency(sr, lr, decimate, data_range_hu=(-1000, 1000))
    assert r["psnr"] == pytest.approx(V.psnr(sr[:, :, ::2], lr, (-1000, 1000)), abs=1e-12)
    assert r["mae"] == pytest.approx(np.mean(np.abs(sr[:, :, ::2] - lr)), abs=1e-12)
    with pytest.raises(ValueError, match="LR grid"):
        V.lr_consistency(sr, lr, lambda v: v)


# ------------------------------------------------------------------------------------- z spectrum
def test_z_spectrum_normalisation_and_band_ratio(hr):
    rng = np.random.default_rng(2)
    f, p = V.z_spectrum(rng.normal(0.0, 5.0, SHAPE))
    np.testing.assert_allclose(f, np.fft.rfftfreq(SHAPE[2]))
    assert f[-1] == 0.5
    assert p[f > 0.1].mean() == pytest.approx(25.0, rel=0.05)  # white noise reads its variance
    # a sinusoid along z peaks at its frequency
    z = np.arange(SHAPE[2])
    f, p = V.z_spectrum(np.broadcast_to(np.cos(2 * np.pi * 5 / 32 * z), SHAPE))
    assert f[np.argmax(p)] == pytest.approx(5 / 32)

    blurred = ndi.gaussian_filter1d(hr, sigma=1.0, axis=2)
    assert V.z_spectrum_ratio(hr, hr) == 0.0
    assert V.z_spectrum_ratio(blurred, hr) < -3.0
    assert V.z_spectrum_ratio(2 * hr, hr) == pytest.approx(10 * math.log10(4))
    assert V.spectral_distance(hr, hr) == 0.0
    assert V.spectral_distance(2 * hr, hr) == pytest.approx(math.log10(4))
    assert V.spectral_distance(blurred, hr) > 0.5
    # PSNR rewards the blur far less than the spectrum penalises it: it is still a respectable number
    assert V.psnr(blurred, hr) > 35.0
    # mask: only the columns in its x-y bounding box
    m = np.zeros(SHAPE, bool)
    m[5:10, 3:20, 10:12] = True
    np.testing.assert_allclose(V.z_spectrum(hr, mask=m)[1], V.z_spectrum(hr[5:10, 3:20])[1])


# ------------------------------------------------------------------------------------- seam energy
def test_window_cuts_follow_monai():
    # 24 voxels, window 16, overlap 0.25: interval 12, starts 0 and 8 (last moved to end at 24)
    np.testing.assert_array_equal(V.window_cuts(24, 16, 0.25), [8, 16])
    np.testing.assert_array_equal(V.window_cuts(32, 16, 0.25), [12, 16, 28])
    assert V.window_cuts(16, 16, 0.5).size == 0 and V.window_cuts(10, 16, 0.25).size == 0
    assert V.window_cuts(32, -1, 0.25).size == 0
    # 16 LR slices, window 8 (interval 6: starts 0, 6, 8), on a 2x output grid
    np.testing.assert_array_equal(V.window_cuts(16, 8, 0.25, out_size=32), [12, 16, 28])


def test_seam_energy_step_at_border_vs_smooth():
    rng = np.random.default_rng(3)
    sm = ndi.gaussian_filter(rng.standard_normal(SHAPE), 3, mode="wrap")
    sm = sm / sm.std() * 100.0
    clean = V.seam_energy(sm, 16, 0.25)
    assert 0.7 < clean["ratio"] < 1.5
    step = sm + 200.0 * (np.arange(SHAPE[2]) >= 12)  # a jump between slices 11 and 12, a window border
    seamed = V.seam_energy(step, 16, 0.25)
    assert seamed["ratio"] > 10.0
    assert seamed["interior"] == pytest.approx(clean["interior"])
    off = sm + 200.0 * (np.arange(SHAPE[2]) >= 22)  # the same jump inside windows: no seam signal
    assert V.seam_energy(off, 16, 0.25)["ratio"] < 1.5


@pytest.mark.parametrize("zoom", [1, 2])
def test_seam_positions_match_sliding_window_inference(zoom):
    """Windows that each add their own constant leave steps exactly at MONAI's window borders: all the
    second-difference energy of (output - upsampled input) must land on the border voxels."""
    from monai.inferers import sliding_window_inference

    gen = torch.Generator().manual_seed(0)

    def predictor(x):
        x = x.repeat_interleave(zoom, dim=-1)  # a "through-plane SR" net when zoom = 2
        return x + 100.0 * torch.rand(x.shape[0], 1, 1, 1, 1, generator=gen, dtype=x.dtype)

    inp = torch.from_numpy(np.random.default_rng(4).standard_normal((24, 24, 32 // zoom)))
    roi = (16, 16, 16 // zoom)
    out = sliding_window_inference(inp[None, None], roi, 1, predictor, overlap=0.25)[0, 0]
    resid = (out - inp.repeat_interleave(zoom, dim=-1)).numpy()
    assert resid.shape == SHAPE
    r = V.seam_energy(resid, roi, 0.25, axis_sizes=tuple(inp.shape))
    assert r["interior"] < 1e-20 and r["border"] > 1.0
    assert [len(c) for c in r["cuts"]] == [2, 2, 3]


# ------------------------------------------------------------------------------------------- stats
def test_bootstrap_ci_and_paired_difference():
    vals = np.random.default_rng(5).normal(30.0, 2.0, 40)
    m, lo, hi = V.bootstrap_ci(vals, n_boot=500, seed=0)
    assert m == pytest.approx(vals.mean()) and lo < m < hi
    assert (m, lo, hi) == V.bootstrap_ci(vals, n_boot=500, seed=0)
    assert (lo, hi) != V.bootstrap_ci(vals, n_boot=500, seed=1)[1:]
    assert hi - lo == pytest.approx(2 * 1.96 * vals.std(ddof=1) / math.sqrt(40), rel=0.25)
    assert V.bootstrap_ci([3.0]) == (3.0, 3.0, 3.0)
    b = vals - 1.5 + np.random.default_rng(6).normal(0.0, 0.1, 40)
    d, dlo, dhi = V.paired_difference_ci(vals, b, n_boot=500)
    assert d == pytest.approx(np.mean(vals - b)) and dlo < d < dhi and dlo > 1.0
    with pytest.raises(ValueError, match="NaN or inf"):
        V.bootstrap_ci([1.0, math.inf])


# ------------------------------------------------------------------------------------------ report
def test_sr_report(hr, sr):
    m = np.zeros(SHAPE, bool)
    m[2:22, 2:22, :] = True
    decimate = lambda v: np.asarray(v)[:, :, ::2]  # noqa: E731
    rep = V.sr_report(sr, hr, lr=hr[:, :, ::2], degrade=decimate, mask=m, drop=2)
    assert set(rep) == {"psnr_-1024_3071", "psnr_mask_-1024_3071", "ssim3d_-1024_3071", "ssim_axial_-1024_3071",
                        "psnr_-1000_1000", "psnr_mask_-1000_1000", "ssim3d_-1000_1000", "ssim_axial_-1000_1000",
                        "ssim3d_mask_-1024_3071", "ssim3d_mask_-1000_1000",
                        "mae_hu", "mae_hu_mask", "lr_psnr_-1024_3071", "lr_psnr_-1000_1000", "lr_mae_hu",
                        "z_hf_ratio_db", "z_spectral_distance"}
    a, b, md = sr[:, :, 2:30], hr[:, :, 2:30], m[:, :, 2:30]
    assert rep["psnr_-1000_1000"] == pytest.approx(V.psnr(a, b, (-1000, 1000)))
    assert rep["psnr_mask_-1024_3071"] == pytest.approx(V.psnr(a, b, mask=md))
    assert rep["ssim_axial_-1000_1000"] == pytest.approx(V.ssim_axial(a, b, (-1000, 1000)).mean)
    assert rep["mae_hu_mask"] == pytest.approx(V.mae(a, b, mask=md))
    assert rep["lr_mae_hu"] == pytest.approx(V.lr_consistency(sr, hr[:, :, ::2], decimate)["mae"])
    assert rep["z_hf_ratio_db"] == pytest.approx(V.z_spectrum_ratio(a, b, mask=md))
    same = V.sr_report(hr, hr, ranges=((-1000, 1000),), unit="raw")
    assert same["psnr_-1000_1000"] == math.inf and same["mae_raw"] == 0.0
    assert same["ssim3d_-1000_1000"] == pytest.approx(1.0, abs=1e-6)
    assert same["z_hf_ratio_db"] == 0.0 and same["z_spectral_distance"] == 0.0


def test_masked_ssim_ignores_noise_outside_the_mask():
    from medkit.metrics import volume as vm

    rng = np.random.default_rng(0)
    hr = np.full((24, 24, 24), -1000.0)
    hr[6:18, 6:18, 6:18] = rng.normal(40, 200, size=(12, 12, 12))
    mask = hr > -500
    noisy_bg = hr + np.where(mask, 0.0, rng.normal(0, 200, hr.shape))
    assert vm.ssim3d_masked(noisy_bg, hr, mask) > vm.ssim3d(noisy_bg, hr) + 0.05
    assert abs(vm.ssim3d_masked(hr, hr, mask) - 1) < 1e-9
    with pytest.raises(ValueError, match="mask is empty"):
        vm.ssim3d_masked(hr, hr, np.zeros_like(mask))
