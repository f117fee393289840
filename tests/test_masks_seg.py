"""MMD-MF (medkit.metrics.masks) and Dice/IoU (medkit.metrics.segmentation)."""
import math
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from medkit.metrics.masks import (FEATURE_NAMES, _skimage_features, blob_masks, lesion_features, mmd_mf,
                                  mmd_mf_from_features, poly_mmd2)
from medkit.metrics.segmentation import dice, iou


@pytest.fixture(scope="module")
def feats():
    """Lesion features of three sets of blob masks: a and b from one distribution, c from another."""
    a = lesion_features(blob_masks(300, 64, seed=1))
    b = lesion_features(blob_masks(300, 64, seed=2))
    c = lesion_features(blob_masks(300, 64, seed=3, radius=(4.0, 12.0), elongation=(1.5, 3.0)))
    return a, b, c


# --------------------------------------------------------------------------------------- features
def _odd_masks():
    rng = np.random.default_rng(0)
    noise = rng.random((60, 40, 40)) < 0.5                            # ragged, touching components
    smooth = ndi.gaussian_filter(rng.random((60, 48, 48)), (0, 2, 2)) > 0.52  # holes, concavities
    lines = np.zeros((4, 30, 30), bool)
    lines[:, 5, 3:20] = True          # a 1-pixel line (degenerate inertia, eccentricity 1)
    lines[:, 10:25, 12] = True
    lines[:, 0, :] = True             # touching the image border
    lines[:, :, 29] = True
    lines[1, 15:20, 15:20] = True
    lines[2] = True                   # the whole image one lesion
    return [blob_masks(80, 64, seed=5), noise, smooth, lines]


@pytest.mark.parametrize("case", range(4))
def test_features_equal_skimage_regionprops(case):
    m = _odd_masks()[case]
    ours, ref = lesion_features(m), _skimage_features(m)
    assert ours.shape == ref.shape and ours.shape[1] == len(FEATURE_NAMES) == 9
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-10)
    # area, solidity, extent, equivalent diameter are exact (integer counts)
    np.testing.assert_array_equal(ours[:, [0, 3, 4, 8]], ref[:, [0, 3, 4, 8]])


def test_feature_values_of_known_shapes():
    m = np.zeros((1, 20, 20), np.uint8)
    m[0, 2:7, 2:7] = 1                # 5x5 square
    m[0, 10:12, 10:12] = 1            # 4 px: below min_area, dropped
    m[0, 15, 3:8] = 1                 # 5 px line: kept
    f = lesion_features(m)
    assert f.shape == (2, 9)
    sq, line = f
    assert sq[0] == 25 and sq[3] == 1.0 and sq[4] == 1.0 and sq[5] == 0.0       # area, solidity, extent, ecc
    assert sq[1] == pytest.approx(16.0) and sq[2] == pytest.approx(min(4 * math.pi * 25 / 256, 1))
    assert line[0] == 5 and line[5] == 1.0 and line[7] == 0.0                    # a line: ecc 1, minor axis 0
    assert lesion_features(m, min_area=4).shape == (3, 9)


def test_input_conventions():
    m = blob_masks(10, 32, seed=0)
    ref = lesion_features(m)
    np.testing.assert_array_equal(lesion_features(m.astype(np.float32) * 2 - 1), ref)   # {-1,+1}
    np.testing.assert_array_equal(lesion_features(torch.from_numpy(m)[:, None]), ref)   # (N,1,H,W) tensor
    np.testing.assert_array_equal(lesion_features(m.astype(bool)), ref)
    assert lesion_features(np.zeros((3, 8, 8))).shape == (0, 9)


@pytest.mark.parametrize("bad, msg", [
    (np.full((2, 8, 8), 0.3), "not binary.*Threshold"),
    (np.where(np.eye(8)[None] > 0, np.nan, 0.0), "NaN"),
    (np.zeros((0, 8, 8)), "empty"),
    (np.zeros((8, 8)), r"masks\[None\]"),
    (np.zeros((2, 3, 8, 8)), r"\(N, H, W\) or \(N, 1, H, W\)"),
])
def test_bad_masks(bad, msg):
    with pytest.raises(ValueError, match=msg):
        lesion_features(bad)
    with pytest.raises(ValueError, match=msg):
        mmd_mf(blob_masks(4, 8), bad)


# --------------------------------------------------------------------------------------- the MMD
def test_poly_mmd2_matches_double_loop():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 3)), rng.normal(0.5, 1.0, size=(4, 3))

    def k(a, b):
        return (a @ b / 3 + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(5) for j in range(5) if i != j) / (5 * 4)
    yy = sum(k(y[i], y[j]) for i in range(4) for j in range(4) if i != j) / (4 * 3)
    xy = sum(k(x[i], y[j]) for i in range(5) for j in range(4)) / (5 * 4)
    assert poly_mmd2(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)
    # a hand-computed 1D case: x = (0, 1), y = (2,); k(a,b) = (ab + 1)^3
    # xx = 2 k(0,1) / 2 = 1; yy needs 2 samples, so y = (2, 2): yy = k(2,2) = 125
    # xy = (k(0,2) + k(0,2) + k(1,2) + k(1,2)) / 4 = (1 + 1 + 27 + 27) / 4 = 14
    assert poly_mmd2([[0.0], [1.0]], [[2.0], [2.0]]) == pytest.approx(1 + 125 - 2 * 14)


def test_same_distribution_near_zero_different_large(feats):
    a, b, c = feats
    same = mmd_mf_from_features(a, b, n_subsets=20)
    diff = mmd_mf_from_features(a, c, n_subsets=20)
    assert abs(same.value) < 0.01 * diff.value
    assert diff.value > 50
    assert same.subset_size == min(500, len(a), len(b)) and diff.n_real_lesions == len(a)


def test_set_against_itself_slightly_negative(feats):
    a = feats[0]
    r = mmd_mf_from_features(a, a, n_subsets=20)
    assert -0.5 < r.value < 0  # unbiased estimator: the shared samples make E[MMD^2] slightly negative


def test_seed_reproducible_and_pinned(feats):
    a, _, c = feats
    r1, r2 = mmd_mf_from_features(a, c, seed=3, n_subsets=10), mmd_mf_from_features(a, c, seed=3, n_subsets=10)
    r3 = mmd_mf_from_features(a, c, seed=4, n_subsets=10)
    assert r1.value == r2.value and r1.std == r2.std and r1.value != r3.value
    assert len(r1.values) == 10 and r1.std == pytest.approx(np.std(r1.values))


def test_mmd_mf_from_masks_defaults():
    real, fake = blob_masks(60, 48, seed=1), blob_masks(60, 48, seed=2, radius=(3.0, 9.0))
    r = mmd_mf(real, torch.from_numpy(fake).float() * 2 - 1, seed=0)  # {-1,+1} synthetic masks
    assert r.n_subsets == 100 and r.subset_size == min(r.n_real_lesions, r.n_fake_lesions)
    assert r.value == pytest.approx(0.214595, abs=1e-5)  # pinned: regression guard
    e = r.entry(dataset="blobs")
    assert e["value"] == pytest.approx(r.value) and e["n_subsets"] == 100 and e["dataset"] == "blobs"


def test_too_few_lesions_is_nan_with_warning():
    real = blob_masks(40, 32, seed=1)
    few = np.zeros((3, 32, 32), np.uint8)
    few[:, 4:8, 4:8] = 1   # 3 lesions
    with pytest.warns(UserWarning, match="MMD-MF is NaN: .* 3 synthetic lesions"):
        r = mmd_mf(real, few)
    assert math.isnan(r.value) and math.isnan(r.std) and r.n_fake_lesions == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mmd_mf(real, real, n_subsets=2)  # enough lesions: no warning


# --------------------------------------------------------------------------------------- Dice / IoU
def _monai(metric_cls, p, t, ignore_empty, reduction):
    m = metric_cls(include_background=True, reduction=reduction, ignore_empty=ignore_empty)
    m(p, t)
    return m.aggregate()


@pytest.mark.parametrize("shape", [(7, 1, 16, 16), (5, 1, 6, 8, 10)])
@pytest.mark.parametrize("ignore_empty", [True, False])
def test_dice_iou_match_monai(shape, ignore_empty):
    from monai.metrics import DiceMetric, MeanIoU

    g = torch.Generator().manual_seed(0)
    p = (torch.rand(shape, generator=g) > 0.5).float()
    t = (torch.rand(shape, generator=g) > 0.6).float()
    t[0] = 0            # empty target, non-empty prediction
    t[1] = 0
    p[1] = 0            # both empty
    p[2] = 0            # empty prediction, non-empty target
    for ours, cls in ((dice, DiceMetric), (iou, MeanIoU)):
        per = ours(p, t, per_image=True, ignore_empty=ignore_empty)
        ref = _monai(cls, p, t, ignore_empty, "none").flatten().double()
        torch.testing.assert_close(per, ref, equal_nan=True, rtol=1e-6, atol=1e-7)
        assert ours(p, t, ignore_empty=ignore_empty) == pytest.approx(_monai(cls, p, t, ignore_empty, "mean").item(),
                                                                       rel=1e-6)
    assert dice(p.bool(), t.long()) == pytest.approx(dice(p, t))


def test_all_targets_empty_is_nan_not_monai_zero():
    p = torch.ones(2, 1, 4, 4)
    t = torch.zeros(2, 1, 4, 4)
    assert math.isnan(dice(p, t)) and math.isnan(iou(p, t))
    assert dice(p, t, ignore_empty=False) == 0.0 and dice(t, t, ignore_empty=False) == 1.0


@pytest.mark.parametrize("pred, target, msg", [
    (torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 5), "pred has shape"),
    (torch.zeros(2, 4, 4), torch.zeros(2, 4, 4), r"one-channel.*x\[:, None\]"),
    (torch.zeros(2, 2, 4, 4), torch.zeros(2, 2, 4, 4), "one-channel"),
    (torch.full((2, 1, 4, 4), 0.7), torch.zeros(2, 1, 4, 4), "pred is not binary.*Threshold"),
    (torch.zeros(2, 1, 4, 4), torch.full((2, 1, 4, 4), math.nan), "target contains NaN"),
])
def test_dice_iou_bad_input(pred, target, msg):
    for f in (dice, iou):
        with pytest.raises(ValueError, match=msg):
            f(pred, target)
