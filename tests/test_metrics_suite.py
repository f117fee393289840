"""Pixel and distribution metrics against independent references: scipy, scikit-image, torchmetrics."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

from medkit import metrics
from medkit.metrics import distribution as dist
from medkit.metrics import features as feat


def scipy_fd(a, b):
    """FD the textbook way: scipy's matrix square root of S_a S_b."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


class TinyFeatures(torch.nn.Module):
    """A fixed random conv net, the feature network both sides of a comparison share (no download)."""

    def __init__(self, dim=6):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(3, dim, 5, stride=4)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.05)
            self.conv.bias.zero_()

    def forward(self, x):  # torchmetrics probes it once with uint8 0..255, then feeds the images as given
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x
        return torch.nn.functional.adaptive_avg_pool2d(torch.tanh(self.conv(x)), 1).flatten(1)


def _images(n, seed, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, 1, 1, generator=g) * 0.5 + shift
    return (base + 0.5 * torch.rand(n, 3, 32, 32, generator=g)).clamp(0, 1)


# ------------------------------------------------------------------------------------- Frechet
@pytest.mark.parametrize("n,m,d", [(60, 50, 8), (40, 30, 64), (120, 90, 100)])
def test_frechet_distance_matches_scipy(n, m, d):
    rng = np.random.default_rng(d)
    a, b = rng.normal(size=(n, d)), rng.normal(size=(m, d)) * 1.3 + 0.2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dist.SmallSampleWarning)
        ours = metrics.frechet_distance(a, b)
    assert ours == pytest.approx(scipy_fd(a, b), rel=1e-6)


def test_frechet_distance_matches_torchmetrics_fid_with_same_feature_network():
    from torchmetrics.image.fid import FrechetInceptionDistance

    net = TinyFeatures()
    real, fake = _images(40, 1), _images(40, 2, shift=0.2)
    tm = FrechetInceptionDistance(feature=net, normalize=True)
    tm.update(real, real=True)
    tm.update(fake, real=False)
    expected = float(tm.compute())
    with torch.no_grad():  # a custom network gets the images as they are (no uint8 conversion)
        fa, fb = net(real).double(), net(fake).double()
    assert metrics.frechet_distance(fa, fb) == pytest.approx(expected, rel=1e-4)


def test_bootstrap_resample_equals_explicit_duplication():
    """The weighted (distinct rows x counts) form is the same FD as the resample with repeated rows."""
    rng = np.random.default_rng(0)
    for n, d in ((50, 8), (30, 64)):  # covariance path and cross-Gram path
        a, b = rng.normal(size=(n, d)), rng.normal(size=(n, d)) + 0.5
        ia, ib = rng.integers(0, n, n), rng.integers(0, n, n)
        fr = dist._Frechet(torch.tensor(a), torch.tensor(b))
        got = fr(torch.bincount(torch.tensor(ia), minlength=n), torch.bincount(torch.tensor(ib), minlength=n))
        assert got == pytest.approx(scipy_fd(a[ia], b[ib]), rel=1e-6)


def test_fid_bootstrap_ci_and_reproducibility():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(200, 8)), rng.normal(size=(200, 8)) + 0.3
    r1 = metrics.fid_bootstrap(a, b, n_boot=100, seed=3)
    r2 = metrics.fid_bootstrap(a, b, n_boot=100, seed=3)
    assert r1["value"] == pytest.approx(scipy_fd(a, b), rel=1e-6)
    assert r1["ci95"] == r2["ci95"] and len(r1["boot"]) == 100
    lo, hi = r1["ci95"]
    assert lo < r1["value"] < hi  # centred on the estimate, the bootstrap spread around it
    boot = np.asarray(r1["boot"])
    assert hi - lo == pytest.approx(np.quantile(boot, 0.975) - np.quantile(boot, 0.025), rel=1e-9)
    assert r1["boot_mean"] > r1["value"]  # repeated rows push resampled FDs up
    # the true FD is 8 * 0.09 = 0.72; the interval is about the resampling spread of that estimate
    assert 0.2 < r1["std"] * 4 < 2.0
    with pytest.raises(ValueError, match="n_boot"):
        metrics.fid_bootstrap(a, b, n_boot=5)


def test_fid_infinity_removes_small_sample_bias():
    """Two Gaussians N(0, I) and N(mu, I): the true FD is ||mu||^2. FD_N is biased upwards at small N;
    the 1/N extrapolation lands much closer to the truth."""
    rng = np.random.default_rng(2)
    d, true = 32, 32 * 0.25 ** 2
    a = rng.normal(size=(4000, d))
    b = rng.normal(size=(400, d)) + 0.25
    fd_n = metrics.frechet_distance(a, b)
    r = metrics.fid_infinity(a, b, seed=0)
    assert len(r["points"]) == 15 and r["slope"] > 0
    assert abs(r["value"] - true) < 0.5 * abs(fd_n - true)


# ----------------------------------------------------------------------------------------- KID
def test_kid_matches_torchmetrics_with_same_subsets():
    from torchmetrics.image.kid import KernelInceptionDistance

    net = TinyFeatures()
    real, fake = _images(30, 3), _images(30, 4, shift=0.15)
    tm = KernelInceptionDistance(feature=net, subsets=7, subset_size=12, normalize=True)
    tm.update(real, real=True)
    tm.update(fake, real=False)
    torch.manual_seed(5)  # torchmetrics draws its subsets from the global generator; ours from seed=5
    mean, std = (float(v) for v in tm.compute())
    with torch.no_grad():
        fa, fb = net(real).double(), net(fake).double()
    ours = metrics.kid(fa, fb, subsets=7, subset_size=12, seed=5)
    assert ours["value"] == pytest.approx(mean, rel=1e-5, abs=1e-9)
    assert ours["std"] == pytest.approx(std, rel=1e-4)  # torchmetrics keeps float32 features


def test_kid_unbiased_mmd_against_double_loop():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(7, 4)), rng.normal(size=(9, 4)) + 0.5
    k = lambda u, v: (u @ v / 4 + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    yy = sum(k(y[i], y[j]) for i in range(9) for j in range(9) if i != j) / (9 * 8)
    xy = sum(k(x[i], y[j]) for i in range(7) for j in range(9)) / (7 * 9)
    assert dist.poly_mmd2(torch.tensor(x), torch.tensor(y)) == pytest.approx(xx + yy - 2 * xy, rel=1e-10)


def test_kid_adapts_subset_size_with_a_warning():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(20, 5)), rng.normal(size=(30, 5))
    with pytest.warns(dist.SmallSampleWarning, match="subset_size=20"):
        r = metrics.kid(a, b, subset_size=1000, subsets=5)
    assert r["subset_size"] == 20


def test_rbf_mmd_against_double_loop():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(6, 3)), rng.normal(size=(5, 3)) + 1
    k = lambda u, v: np.exp(-((u - v) ** 2).sum() / (2 * 10.0 ** 2))  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(6) for j in range(6) if i != j) / 30
    yy = sum(k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / 20
    xy = sum(k(x[i], y[j]) for i in range(6) for j in range(5)) / 30
    assert metrics.rbf_mmd(x, y) == pytest.approx(1000 * (xx + yy - 2 * xy), rel=1e-8)


# ----------------------------------------------------------------------------------- bad inputs
def test_distribution_metric_bad_inputs():
    a = np.zeros((10, 4))
    with pytest.raises(ValueError, match="feature sizes differ"):
        metrics.frechet_distance(a, np.zeros((10, 5)))
    with pytest.raises(ValueError, match="empty"):
        metrics.kid(a, np.zeros((0, 4)))
    bad = np.ones((10, 4))
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="1 generated feature vector"):
        metrics.frechet_distance(a + np.arange(4), bad)
    with pytest.raises(ValueError, match="2-D"):
        metrics.frechet_distance(np.zeros((10, 2, 2)), np.zeros((10, 2, 2)))
    with pytest.warns(dist.SmallSampleWarning, match="rank-deficient"):
        metrics.frechet_distance(np.random.default_rng(0).normal(size=(10, 20)),
                                 np.random.default_rng(1).normal(size=(10, 20)))


# -------------------------------------------------------------------------------- pixel metrics
def test_ssim_psnr_2d_3d_match_scikit_image():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    g = torch.Generator().manual_seed(0)
    for shape in ((2, 1, 48, 48), (2, 1, 24, 24, 24)):
        x = torch.rand(shape, generator=g) * 2 - 1
        y = (x + 0.2 * torch.randn(shape, generator=g)).clamp(-1, 1)
        ours_s = metrics.ssim(y, x, data_range=2.0, per_image=True)
        ours_p = metrics.psnr(y, x, data_range=2.0, per_image=True)
        for i in range(shape[0]):
            a, b = x[i, 0].double().numpy(), y[i, 0].double().numpy()
            ref_s = structural_similarity(a, b, data_range=2.0, gaussian_weights=True, sigma=1.5,
                                          use_sample_covariance=False)
            assert float(ours_s[i]) == pytest.approx(ref_s, abs=1e-5)
            assert float(ours_p[i]) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=2.0), abs=1e-4)


def test_mae_in_native_units():
    x = torch.zeros(2, 1, 8, 8)
    y = torch.full((2, 1, 8, 8), 0.1)
    assert float(metrics.mae(y, x)) == pytest.approx(0.1, rel=1e-6)
    # [-1, 1] standing for [-1000, 1000] HU: 0.1 is 100 HU
    assert float(metrics.mae(y, x, value_range=(-1000, 1000))) == pytest.approx(100.0, rel=1e-5)
    assert metrics.mae(y, x, value_range=(-1000, 1000), per_image=True).shape == (2,)
    with pytest.raises(ValueError, match="value_range"):
        metrics.mae(y, x, value_range=(5, 5))
    with pytest.raises(ValueError, match="shape"):
        metrics.mae(y, x[:1])


# ------------------------------------------------------------------------- features and folders
class MeanStd(torch.nn.Module):
    name = "mean-std"
    feature_dim = 2

    def forward(self, x):
        return torch.stack([x.mean((1, 2, 3)), x.std((1, 2, 3))], 1)


def test_extract_features_batching_is_exact():
    x = torch.rand(23, 1, 16, 16) * 2 - 1
    one = metrics.extract_features(x, MeanStd(), batch_size=64)
    many = metrics.extract_features(x, MeanStd(), batch_size=4)
    assert one.shape == (23, 2) and np.array_equal(one, many)


def test_folder_is_read_lazily_batch_by_batch(tmp_path, monkeypatch):
    for i in range(10):
        np.save(tmp_path / f"{i:02d}.npy", np.full((8, 8), i / 10, dtype=np.float32))
    reads = []
    orig = feat.read_image_file
    monkeypatch.setattr(feat, "read_image_file", lambda p: reads.append(p) or orig(p))
    it = feat.iter_image_folder(tmp_path, batch_size=3)
    first = next(it)
    assert first.shape == (3, 1, 8, 8) and len(reads) == 3  # peak memory set by the batch
    rest = list(it)
    assert sum(len(b) for b in rest) == 7
    f = metrics.extract_features(tmp_path, MeanStd(), batch_size=3)
    assert np.allclose(f[:, 0], np.arange(10) / 10, atol=1e-6)


def test_png_and_npz_folders(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "b.png")
    x = metrics.load_image_folder(tmp_path)
    assert x.shape == (2, 1, 8, 8) and float(x[0].min()) == pytest.approx(1.0) and float(x[1].max()) == pytest.approx(-1.0, abs=2e-6)
    np.savez(tmp_path / "gen.npz", images=np.zeros((5, 1, 8, 8), np.float32))
    assert metrics.load_image_folder(tmp_path / "gen.npz").shape == (5, 1, 8, 8)


def test_folder_bad_inputs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no PNG/NPY/NPZ"):
        metrics.load_image_folder(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        metrics.load_image_folder(tmp_path / "missing")
    d = tmp_path / "mixed"
    d.mkdir()
    np.save(d / "a.npy", np.zeros((8, 8), np.float32))
    np.save(d / "b.npy", np.zeros((9, 9), np.float32))
    with pytest.raises(ValueError, match="resize"):
        metrics.load_image_folder(d)
    r = tmp_path / "range"
    r.mkdir()
    np.save(r / "a.npy", np.full((8, 8), 200.0, np.float32))
    with pytest.raises(ValueError, match=r"must be in \[-1, 1\]"):
        metrics.load_image_folder(r)
    b = tmp_path / "broken"
    b.mkdir()
    (b / "x.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="not a readable PNG"):
        metrics.load_image_folder(b)
    with pytest.raises(ValueError, match="features='pixels'"):
        metrics.get_extractor("pixels")
