"""SLIM-Diff data: synthetic MNI152 lesions, the lesion slice cache, balanced sampling, NIfTI folders, bad inputs."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage

from medkit.data import DataError, mni152_volumes
from medkit.data.lesion_slices import (CSV_COLUMNS, LesionSliceDataset, balanced_indices, balanced_sampler,
                                       build_lesion_cache, crop_pad, default_min_lesion_px, resample, voxel_size)
from medkit.data.lesions import SOURCE_NAME, iter_synthetic_lesion_volumes, source_fingerprint


class Log(list):
    def __call__(self, msg: str) -> None:
        self.append(msg)


@pytest.fixture(scope="module")
def synth_stats():
    """Per-subject statistics of 6 synthetic subjects (volumes are not kept: 45 MB each)."""
    wm = mni152_volumes()[0].mask.astype(bool)
    stats = []
    for vol in iter_synthetic_lesion_volumes(6, seed=0):
        lesion = vol.mask.astype(bool)
        labels, n = ndimage.label(lesion)
        sizes = np.bincount(labels.ravel())[1:]
        normal_wm = wm & ~ndimage.binary_dilation(lesion, iterations=3)
        stats.append({"vol": vol.name, "shape": vol.image.shape, "dtype": (vol.image.dtype, vol.mask.dtype),
                      "values": set(np.unique(vol.mask).tolist()), "outside_wm": int((lesion & ~wm).sum()),
                      "n_components": n, "sizes": sizes, "n_lesions": len(vol.lesions),
                      "lesion_mean": float(vol.image[lesion].mean()) if n else None,
                      "wm_p99": float(np.percentile(vol.image[normal_wm], 99)),
                      "wm_median": float(np.median(vol.image[normal_wm])),
                      "meta": (vol.synthetic, vol.source, vol.note, vol.path, vol.zooms)})
    return stats


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    log = Log()
    return build_lesion_cache("mni152-lesions", 32, n_subjects=3, cache_root=root, log=log), root, log


# --------------------------------------------------------------------------------------------------
# Synthetic lesions on MNI152

def test_synthetic_volumes_are_labelled_and_well_formed(synth_stats):
    for s in synth_stats:
        assert s["shape"] == (197, 233, 189) and s["dtype"] == (np.float32, np.uint8)
        synthetic, source, note, path, zooms = s["meta"]
        assert synthetic is True and source == SOURCE_NAME == "mni152-synthetic-lesions"
        assert "SYNTHETIC" in note and "synthetic" in path and zooms == (1.0, 1.0, 1.0)
    assert [s["vol"] for s in synth_stats] == [f"synth{i:03d}" for i in range(6)]


def test_synthetic_lesions_lie_in_white_matter_and_are_hyperintense(synth_stats):
    for s in synth_stats:
        assert s["outside_wm"] == 0
        if s["n_components"]:
            assert s["values"] == {0, 1}
            assert s["lesion_mean"] > s["wm_p99"] > s["wm_median"]  # brighter than any normal WM
    assert synth_stats[4]["n_lesions"] == 0 and synth_stats[4]["values"] == {0}  # every 5th subject is lesion-free


def test_synthetic_lesions_vary_across_subjects(synth_stats):
    lesioned = [s for s in synth_stats if s["n_components"]]
    assert len({s["n_lesions"] for s in lesioned}) >= 3  # counts differ
    sizes = np.concatenate([s["sizes"] for s in lesioned])
    assert sizes.min() < 100 and sizes.max() > 1000  # voxels: small dots to large blobs
    assert np.percentile(sizes, 90) / np.percentile(sizes, 10) > 5
    assert len({round(s["wm_median"], 1) for s in synth_stats}) == len(synth_stats)  # gamma/bias per subject


def test_synthetic_subject_does_not_depend_on_n_subjects():
    (first,) = list(iter_synthetic_lesion_volumes(1, seed=0))
    again = next(iter_synthetic_lesion_volumes(5, seed=0))
    other = next(iter_synthetic_lesion_volumes(1, seed=1))
    assert np.array_equal(first.image, again.image) and np.array_equal(first.mask, again.mask)
    assert not np.array_equal(first.mask, other.mask)
    assert source_fingerprint(3, 0) != source_fingerprint(4, 0) != source_fingerprint(3, 1)
    assert source_fingerprint(3, 0) != source_fingerprint(3, 0, base="t1")


# --------------------------------------------------------------------------------------------------
# The cache (smoke profile: 3 synthetic subjects, 32 px)

def test_cache_files_columns_and_values(smoke):
    cache, _, log = smoke
    meta = json.loads((cache / "meta.json").read_text())
    assert cache.parent.name == "lesion_slices"
    assert meta["source"] == SOURCE_NAME and meta["synthetic"] is True and "SYNTHETIC" in meta["note"]
    s = meta["settings"]
    assert (s["image_size"], s["crop"], s["n_bins"], s["min_lesion_px"], s["n_subjects"]) == (32, 160, 30, 1, 3)
    assert "SYNTHETIC" in log[-1]
    for part in ("train", "val"):
        df = pd.read_csv(cache / f"{part}.csv")
        assert list(df.columns) == CSV_COLUMNS
        assert (df.token == df.z_bin + 30 * df.pathology_class).all()
        assert (df.z_bin == df.z_index * 30 // 160).all() and df.z_bin.between(0, 29).all()
        assert set(df.pathology_class) == {0, 1}
        les = df[df.pathology_class == 1]
        assert (les.lesion_area_px >= 1).all() and les.has_lesion.all()
        free = df[df.pathology_class == 0]
        assert (free.lesion_area_px == 0).all() and not free.has_lesion.any()
        counts = meta["classes"][part]
        assert (counts["lesion"], counts["lesion_free"]) == (len(les), len(df) - len(les))
        zb = meta["z_bins"][part]
        assert sum(zb["lesion"]) == len(les) and zb["lesion"][int(les.z_bin.iloc[0])] > 0
        with np.load(cache / df.filepath.iloc[0]) as f:
            assert f["image"].dtype == np.float32 and f["image"].shape == (32, 32)
            assert f["mask"].dtype == np.int8 and set(np.unique(f["mask"]).tolist()) <= {-1, 1}
            assert int(f["token"]) == df.token.iloc[0] and str(f["subject_id"]) == df.subject_id.iloc[0]
            assert str(f["source"]) == SOURCE_NAME
    assert meta["totals"]["dropped_ambiguous"] > 0 and meta["totals"]["dropped_brain"] > 0


def test_split_keeps_subjects_apart(smoke):
    cache, _, _ = smoke
    train, val = (pd.read_csv(cache / f"{p}.csv") for p in ("train", "val"))
    assert not set(train.subject_id) & set(val.subject_id)
    assert set(train.subject_id) | set(val.subject_id) == {"synth000", "synth001", "synth002"}
    assert json.loads((cache / "meta.json").read_text())["split_mode"] == "subjects"


def test_dataset_items(smoke):
    cache, _, _ = smoke
    ds = LesionSliceDataset(cache, "train")
    n = len(ds)
    assert ds.images.shape == ds.masks.shape == (n, 1, 32, 32) and len(ds.index) == n == ds.tokens.shape[0]
    assert ds.images.min() >= -1.0 and ds.images.max() <= 1.0 and (ds.images[:, :, 0, 0] == -1).all()
    assert set(ds.masks.unique().tolist()) == {-1.0, 1.0}
    item = ds[0]
    assert set(item) == {"image", "mask", "token", "z_bin", "cls"}
    assert item["image"].dtype == item["mask"].dtype == torch.float32
    assert item["token"].dtype == item["z_bin"].dtype == item["cls"].dtype == torch.long
    assert torch.equal(ds.tokens, ds.z_bins + ds.n_bins * ds.classes)
    # lesion slices: mask pixels are bright (hyperintense) tissue
    les = ds.masks > 0
    assert ds.images[les].mean() > ds.images[(~les) & (ds.images > -0.9)].mean() + 0.2


def test_balanced_sampling(smoke):
    cache, _, _ = smoke
    ds = LesionSliceDataset(cache, "train")
    assert 0.05 < ds.classes.float().mean() < 0.45  # the raw data is unbalanced...
    idx = balanced_indices(ds, 1001, seed=3)
    assert idx.shape == (1001,) and int(ds.classes[idx].sum()) == 500  # ...the draws are 50/50
    assert torch.equal(idx, balanced_indices(ds, 1001, seed=3))
    drawn = torch.tensor(list(balanced_sampler(ds, num_samples=4000, seed=0)))
    assert abs(ds.classes[drawn].float().mean().item() - 0.5) < 0.04
    ds.classes = torch.zeros_like(ds.classes)
    with pytest.raises(DataError, match="no lesion slice"):
        balanced_indices(ds, 10)
    with pytest.raises(DataError, match="no lesion slice"):
        balanced_sampler(ds)


def test_cache_is_reused(smoke):
    cache, root, _ = smoke
    log = Log()
    assert build_lesion_cache("mni152-lesions", 32, n_subjects=3, cache_root=root, log=log) == cache
    assert "reusing" in log[0]


# --------------------------------------------------------------------------------------------------
# Pieces

def test_pieces():
    assert [default_min_lesion_px(s) for s in (160, 128, 64, 32)] == [30, 19, 5, 1]
    image = np.random.default_rng(0).random((20, 30, 40)).astype(np.float32)
    mask = np.zeros((20, 30, 40), np.uint8)
    mask[5:15, 10:20, 10:30] = 1
    img2, mask2 = resample(image, mask, (1.0, 1.0, 1.0), 1.25)
    assert img2.shape == mask2.shape == (16, 24, 32) and set(np.unique(mask2).tolist()) == {0, 1}
    assert abs(mask2.sum() * 1.25 ** 3 - mask.sum()) / mask.sum() < 0.15
    assert resample(image, mask, (2.0, 2.0, 2.0), 2.0)[0] is image  # already on the grid: untouched
    x = np.arange(10 * 10 * 10).reshape(10, 10, 10)
    c = crop_pad(x, (5, 5, 5), 4, -1)
    assert np.array_equal(c, x[3:7, 3:7, 3:7])
    p = crop_pad(x, (5, 5, 5), 12, -1)
    assert np.array_equal(p[1:11, 1:11, 1:11], x) and p[0, 0, 0] == -1


def test_voxel_size_follows_ras_axes(tmp_path):
    # file axes (A, R, S) with voxel sizes (2, 3, 4): in RAS order the sizes are (3, 2, 4)
    affine = np.array([[0, 3.0, 0, 0], [2.0, 0, 0, 0], [0, 0, 4.0, 0], [0, 0, 0, 1]])
    path = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((5, 6, 7), np.float32), affine), str(path))
    from medkit.data.sources import Volume
    assert voxel_size(Volume("v", np.ones((6, 5, 7), np.float32), None, str(path))) == (3.0, 2.0, 4.0)


# --------------------------------------------------------------------------------------------------
# The user's NIfTI folders

def _subject(seed: int, shape=(40, 48, 36), zooms=(2.0, 2.0, 2.0)):
    """A bright-ish ellipsoid 'brain' with one hyperintense blob and its mask."""
    rng = np.random.default_rng(seed)
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    brain = (g ** 2).sum(0) < 0.8
    image = np.where(brain, 100 + 10 * rng.standard_normal(shape), 0).astype(np.float32)
    centre = np.array([0.1, -0.1, 0.0]) + rng.uniform(-0.1, 0.1, 3)
    lesion = (((g - centre[:, None, None, None]) / np.array([0.25, 0.2, 0.3])[:, None, None, None]) ** 2).sum(0) < 1
    image[lesion] = 200
    affine = np.diag([*zooms, 1.0])
    return nib.Nifti1Image(image, affine), nib.Nifti1Image(lesion.astype(np.uint8), affine)


def _folder(root, n=3, layout="images", mask_for=None):
    for i in range(n):
        img, msk = _subject(i)
        if layout == "images":
            (root / "images").mkdir(parents=True, exist_ok=True)
            (root / "masks").mkdir(exist_ok=True)
            nib.save(img, str(root / "images" / f"sub{i}.nii.gz"))
            if mask_for is None or i in mask_for:
                nib.save(msk, str(root / "masks" / f"sub{i}.nii.gz"))
        else:
            root.mkdir(parents=True, exist_ok=True)
            nib.save(img, str(root / f"sub{i}.nii.gz"))
            nib.save(msk, str(root / f"sub{i}_mask.nii.gz"))
    return root


def test_nifti_folder_goes_through(tmp_path):
    data = _folder(tmp_path / "data")
    log = Log()
    kw = dict(crop=80, cache_root=tmp_path / "cache", log=log)
    cache = build_lesion_cache(data, 32, **kw)
    meta = json.loads((cache / "meta.json").read_text())
    assert meta["synthetic"] is False and "note" not in meta and meta["split_mode"] == "subjects"
    assert meta["source"] == str(data)
    train, val = LesionSliceDataset(cache, "train"), LesionSliceDataset(cache, "val")
    assert len(train) > 0 and len(val) > 0 and not set(train.index.subject_id) & set(val.index.subject_id)
    both = pd.concat([train.index, val.index])
    assert set(both.pathology_class) == {0, 1} and (both.token == both.z_bin + 30 * both.pathology_class).all()
    # 36 slices of 2 mm -> 57 of 1.25 mm, padded to 80: z_index counts from the crop's bottom
    assert both.z_index.min() > 0 and both.z_index.max() < 79
    les = train.masks > 0
    assert train.images[les].mean() > train.images[~les & (train.images > -0.9)].mean() + 0.5  # the bright blob
    # same call -> same cache; any new setting -> new key
    assert build_lesion_cache(data, 32, **kw) == cache and "reusing" in log[-1]
    assert build_lesion_cache(data, 32, min_lesion_px=8, **kw) != cache
    assert build_lesion_cache(data, 32, seed=1, **kw) != cache


def test_single_volume_falls_back_to_blocks(tmp_path):
    data = _folder(tmp_path / "one", n=1, layout="flat")
    cache = build_lesion_cache(data, 32, crop=80, cache_root=tmp_path / "cache", log=Log())
    meta = json.loads((cache / "meta.json").read_text())
    assert meta["split_mode"] == "blocks" and meta["totals"]["dropped_guard"] > 0
    tz = set(pd.read_csv(cache / "train.csv").z_index)
    vz = set(pd.read_csv(cache / "val.csv").z_index)
    assert tz and vz and not tz & vz and all(z - 1 not in tz and z + 1 not in tz for z in vz)


def test_bad_inputs(tmp_path):
    kw = dict(cache_root=tmp_path / "cache", log=Log())
    data = _folder(tmp_path / "nomask", n=2, mask_for={0})
    with pytest.raises(DataError, match=r"1 of 2 volume\(s\) .* have no lesion mask: .*sub1\.nii\.gz"):
        build_lesion_cache(data, 32, crop=80, **kw)

    bad = _folder(tmp_path / "nonbinary", n=1, layout="flat")
    img, _ = _subject(0)
    nib.save(nib.Nifti1Image(np.full(img.shape, 0.5, np.float32), img.affine), str(bad / "sub0_mask.nii.gz"))
    with pytest.raises(DataError, match="is not binary"):
        build_lesion_cache(bad, 32, crop=80, **kw)

    with pytest.raises(DataError, match="does not exist"):
        build_lesion_cache(tmp_path / "missing", 32, **kw)
    with pytest.raises(DataError, match="no lesion masks; use 'mni152-lesions'"):
        build_lesion_cache("mni152", 32, **kw)
    with pytest.raises(DataError, match="only applies to the synthetic source"):
        build_lesion_cache(data, 32, n_subjects=3, **kw)
    for settings, message in [({"image_size": 4}, "image_size=4"), ({"crop": 16}, "crop=16"),
                              ({"spacing": 0}, "spacing=0"), ({"percentiles": (99.5, 0.5)}, "percentiles="),
                              ({"brain_threshold": 1.5}, "brain_threshold="),
                              ({"min_brain_fraction": 1.0}, "min_brain_fraction="),
                              ({"min_lesion_px": 0}, "min_lesion_px=0"), ({"n_bins": 0}, "n_bins=0"),
                              ({"val_fraction": 1.0}, "val_fraction="), ({"n_subjects": 0}, "n_subjects=0")]:
        args = {"image_size": 32, **settings}
        with pytest.raises(DataError, match=message):
            build_lesion_cache("mni152-lesions", args.pop("image_size"), **args, **kw)
    with pytest.raises(DataError, match="is missing; delete the cache folder"):
        LesionSliceDataset(tmp_path / "nowhere", "train")
    with pytest.raises(ValueError, match="split='test'"):
        LesionSliceDataset(tmp_path, "test")


def test_lesion_options_reach_the_generator_and_the_cache_key(tmp_path):
    from medkit.data.lesion_slices import build_lesion_cache

    quiet = dict(n_subjects=2, cache_root=tmp_path, log=lambda *a: None)
    a = build_lesion_cache("mni152-lesions", 32, **quiet)
    b = build_lesion_cache("mni152-lesions", 32, lesion_options={"radius_mm": (4.0, 14.0)}, **quiet)
    assert a != b  # a new key for other lesions
    meta = json.loads((b / "meta.json").read_text())
    assert meta["settings"]["lesion_options"] == {"radius_mm": [4.0, 14.0]}
    with pytest.raises(DataError, match="lesion_options"):
        build_lesion_cache("mni152-lesions", 32, lesion_options={"size": 3}, **quiet)
