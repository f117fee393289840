"""medkit's metrics, each checked against an independent reference in the tests.

- pixel: :func:`ssim`, :func:`psnr`, :func:`mae` (2D and 3D, explicit data range; HU-MAE via value_range)
- distribution (on features): :func:`frechet_distance`, :func:`fid_bootstrap`, :func:`fid_infinity`,
  :func:`kid`, :func:`poly_mmd2`, :func:`rbf_mmd` (unbiased) and :func:`cmmd` (CMMD's estimator); features
  from :func:`extract_features` with an extractor ("inception" = the InceptionV3 FID network, "vae:RUN_DIR",
  or "clip" = :class:`CLIPFeatures`, CMMD's CLIP ViT-L/14@336)
- perceptual: :class:`LPIPS` / :func:`lpips_distance` (alex, vgg; the lpips package's numbers) and
  :class:`InceptionV3FID` (torch-fidelity's FID network), both torchvision-free; their pretrained
  weights are looked up locally and :class:`WeightsUnavailable` says which file to attach
- masks: :func:`mmd_mf` (SLIM-Diff's mask-morphology MMD), :func:`dice`, :func:`iou`
- :func:`mean_ci`: mean and normal-approximation 95% CI of per-image values
"""
from medkit.metrics.clip import CLIPFeatures
from medkit.metrics.distribution import (SmallSampleWarning, cmmd, fid_bootstrap, fid_infinity, frechet_distance, kid,
                                         poly_mmd2, rbf_mmd)
from medkit.metrics._weights import WeightsUnavailable, optional_network
from medkit.metrics.features import extract_features, get_extractor, iter_image_folder, load_image_folder
from medkit.metrics.inception import InceptionV3FID
from medkit.metrics.lpips import LPIPS, lpips_distance
from medkit.metrics.masks import FEATURE_NAMES, MMDMFResult, lesion_features, mmd_mf, mmd_mf_from_features
from medkit.metrics.segmentation import dice, iou
from medkit.metrics.pixel import mae, mean_ci, psnr, ssim

__all__ = ["ssim", "psnr", "mae", "mean_ci", "frechet_distance", "fid_bootstrap", "fid_infinity", "kid",
           "rbf_mmd", "cmmd", "poly_mmd2", "CLIPFeatures", "SmallSampleWarning", "extract_features", "get_extractor", "iter_image_folder",
           "load_image_folder", "InceptionV3FID", "LPIPS", "lpips_distance", "WeightsUnavailable",
           "optional_network", "mmd_mf", "mmd_mf_from_features", "lesion_features", "MMDMFResult", "FEATURE_NAMES", "dice", "iou"]
