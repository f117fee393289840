"""medkit.losses: Parseval for fft_mse, FocalFrequencyLoss against the official package, AMP, bad inputs."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from medkit.losses import FocalFrequencyLoss, fft_mse, frequency_loss


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tensors here are tiny: one thread avoids OpenMP hand-offs that cost ~40 ms a call on a busy CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _official():
    """The reference package; `make test` installs it (requirements-test.txt) and sets
    MEDKIT_REQUIRE_REFERENCES=1, so there a missing reference fails instead of skipping."""
    import os

    try:
        import focal_frequency_loss
    except ImportError:
        if os.environ.get("MEDKIT_REQUIRE_REFERENCES") == "1":
            pytest.fail("focal-frequency-loss==0.3.0 is not installed: pip install -r requirements-test.txt")
        pytest.skip("the reference focal-frequency-loss package is not installed (requirements-test.txt)")
    return focal_frequency_loss


def _pair(shape=(4, 3, 16, 16), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def _loss_and_grad(loss_fn, pred, target, **kw):
    pred = pred.clone().requires_grad_(True)
    loss = loss_fn(pred, target, **kw)
    loss.backward()
    return loss.detach(), pred.grad


# --------------------------------------------------------------------------------------------------
# fft_mse and Parseval

@pytest.mark.parametrize("shape", [(4, 3, 16, 16), (2, 1, 7, 12), (3, 5, 9)])
def test_fft_mse_equals_pixel_mse(shape):
    pred, target = _pair(shape, seed=1)
    mse = F.mse_loss(pred, target)
    got = fft_mse(pred, target)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, mse, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(frequency_loss(pred, target, kind="fft"), mse, atol=1e-6, rtol=1e-6)


def test_focal_with_alpha_zero_is_plain_mse():
    pred, target = _pair(seed=2)
    got = FocalFrequencyLoss(alpha=0.0)(pred, target)  # w = |dF|^0 = 1 everywhere
    torch.testing.assert_close(got, F.mse_loss(pred, target), atol=1e-6, rtol=1e-6)


# --------------------------------------------------------------------------------------------------
# FocalFrequencyLoss against focal-frequency-loss 0.3.0

GRID = list(itertools.product([1.0, 2.5], [0.5, 1.0, 2.0], [1, 2], [False, True], [False, True], [False, True]))


@pytest.mark.parametrize("loss_weight,alpha,patch_factor,ave_spectrum,log_matrix,batch_matrix", GRID)
def test_focal_matches_official(loss_weight, alpha, patch_factor, ave_spectrum, log_matrix, batch_matrix):
    official = _official()
    kw = dict(loss_weight=loss_weight, alpha=alpha, patch_factor=patch_factor, ave_spectrum=ave_spectrum,
              log_matrix=log_matrix, batch_matrix=batch_matrix)
    pred, target = _pair(seed=3)
    ours, ours_grad = _loss_and_grad(FocalFrequencyLoss(**kw), pred, target)
    ref, ref_grad = _loss_and_grad(official.FocalFrequencyLoss(**kw), pred, target)
    assert ours.dtype == torch.float32 and ours > 0
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ours_grad, ref_grad, atol=1e-6, rtol=1e-6)  # weight detached in both


def test_focal_user_matrix_matches_official_and_is_detached():
    official = _official()
    pred, target = _pair(seed=4)
    g = torch.Generator().manual_seed(5)
    matrix = torch.rand(4, 4, 3, 8, 8, generator=g).requires_grad_(True)  # (N, P = 2^2, C, H/2, W/2)
    ours, ours_grad = _loss_and_grad(FocalFrequencyLoss(patch_factor=2), pred, target, matrix=matrix)
    ref, ref_grad = _loss_and_grad(official.FocalFrequencyLoss(patch_factor=2), pred, target, matrix=matrix)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ours_grad, ref_grad, atol=1e-6, rtol=1e-6)
    assert matrix.grad is None


def test_focal_identical_channel_gives_zero_weight_not_nan():
    pred, target = _pair(seed=6)
    pred[:, 0] = target[:, 0]  # |dF| = 0 there: max = 0, w = 0 / 0 -> NaN -> 0
    loss, grad = _loss_and_grad(FocalFrequencyLoss(), pred, target)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert grad[:, 0].abs().max() == 0 and grad[:, 1:].abs().max() > 0
    loss_rest = FocalFrequencyLoss()(pred[:, 1:], target[:, 1:])
    torch.testing.assert_close(loss, loss_rest * 2 / 3, atol=1e-6, rtol=1e-6)  # channel 0 adds zeros to the mean


# --------------------------------------------------------------------------------------------------
# float32 FFTs under AMP

@pytest.mark.parametrize("kind", ["fft", "focal"])
def test_bf16_inputs_under_autocast_give_float32(kind):
    pred, target = _pair(seed=7)
    pred16, target16 = pred.bfloat16(), target.bfloat16()
    fp32 = frequency_loss(pred, target, kind=kind)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = frequency_loss(pred16, target16, kind=kind)
    plain = frequency_loss(pred16, target16, kind=kind)  # bf16 outside autocast: torch.fft alone would raise
    assert amp.dtype == torch.float32 and plain.dtype == torch.float32
    # the only difference from fp32 is the bf16 rounding of the inputs (~0.4 % relative per element)
    torch.testing.assert_close(amp, fp32, atol=0.0, rtol=1e-2)
    exact = frequency_loss(pred16.float(), target16.float(), kind=kind)
    torch.testing.assert_close(amp, exact, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(plain, exact, atol=1e-6, rtol=1e-6)


# --------------------------------------------------------------------------------------------------
# bad inputs

def test_patch_factor_not_dividing_image_raises():
    pred, target = _pair((2, 1, 16, 12), seed=8)
    with pytest.raises(ValueError, match=r"\(2, 1, 16, 12\).*patch_factor=3"):
        FocalFrequencyLoss(patch_factor=3)(pred, target)  # 12 divides, 16 does not
    with pytest.raises(ValueError, match="patch_factor=0"):
        FocalFrequencyLoss(patch_factor=0)


def test_unknown_kind_raises():
    pred, target = _pair(seed=9)
    with pytest.raises(ValueError, match=r"kind='l1'.*\('fft', 'focal'\)"):
        frequency_loss(pred, target, kind="l1")
    with pytest.raises(ValueError, match="kind='fft' takes no options"):
        frequency_loss(pred, target, kind="fft", alpha=2.0)


def test_bad_matrix_raises():
    pred, target = _pair(seed=10)
    with pytest.raises(ValueError, match=r"matrix shape \(4, 3, 16, 16\).*\(4, 1, 3, 16, 16\)"):
        FocalFrequencyLoss()(pred, target, matrix=torch.rand(4, 3, 16, 16))  # no patch axis
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        FocalFrequencyLoss()(pred, target, matrix=torch.full((4, 1, 3, 16, 16), 2.0))


def test_shape_mismatch_raises():
    pred, target = _pair(seed=11)
    with pytest.raises(ValueError, match="same shape"):
        fft_mse(pred, target[:, :2])
    with pytest.raises(ValueError, match="same shape"):
        FocalFrequencyLoss()(pred, target[:, :2])
