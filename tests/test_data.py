"""medkit.data: MNI152 slices (pinned counts), NIfTI folders in both layouts, the cache, and every bad input."""
from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from medkit.data import (DataError, SliceDataset, Volume, build_slice_cache, fingerprint, mni152_volumes,
                         nifti_folder_volumes)
from medkit.data.slices import normalise


class Log(list):
    def __call__(self, msg: str) -> None:
        self.append(msg)


@pytest.fixture(scope="module")
def mni32(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    log = Log()
    return build_slice_cache("mni152", 32, cache_root=root, log=log), root, log


# --------------------------------------------------------------------------------------------------
# MNI152

def test_mni152_volumes():
    (vol,) = mni152_volumes()
    assert isinstance(vol, Volume) and vol.name == "mni152"
    assert vol.image.shape == (197, 233, 189) and vol.image.dtype == np.float32
    assert vol.image.min() == 0 and vol.image.max() == 255
    assert vol.mask.dtype == np.uint8 and set(np.unique(vol.mask)) == {0, 1}
    assert vol.mask.sum() == 632_004  # white-matter probability > 50 %
    assert vol.path.endswith(".nii.gz")


def test_mni152_slices_32(mni32):
    cache, _, log = mni32
    train, val = SliceDataset(cache, "train"), SliceDataset(cache, "val")
    assert (len(train), len(val)) == (106, 24)
    assert train.images.shape == (106, 1, 32, 32) and val.masks.shape == (24, 1, 32, 32)
    assert train.images.dtype == torch.float32 and train.masks.dtype == torch.float32
    item = train[0]
    assert set(item) == {"image", "mask"} and item["image"].shape == (1, 32, 32)
    for ds in (train, val):
        assert ds.images.min() == -1.0 and ds.images.max() <= 1.0
        assert (ds.images[:, :, 0, 0] == -1.0).all() and (ds.images[:, :, -1, -1] == -1.0).all()  # background
        assert set(ds.masks.unique().tolist()) <= {0.0, 1.0}
    assert 0.15 <= len(val) / (len(train) + len(val)) <= 0.25

    tz, vz = set(train.index.z_index), set(val.index.z_index)
    assert not tz & vz
    assert all(z - 1 not in tz and z + 1 not in tz for z in vz)  # guard=1: no train neighbour of a val slice
    assert sorted(vz) == list(range(45, 53)) + list(range(85, 93)) + list(range(125, 133))

    mid = train.index.index[train.index.z_index.between(80, 110)]
    assert (train.masks[mid].sum(dim=(1, 2, 3)) > 0).all()  # white matter on mid-brain slices
    assert list(train.index.columns) == ["filepath", "volume", "z_index", "has_mask", "mask_fraction",
                                         "content_fraction"]
    assert train.index.has_mask.all() and (train.index.content_fraction >= 0.05).all()

    meta = json.loads((cache / "meta.json").read_text())
    assert meta["volumes"]["mni152"] == {"slices_total": 189, "kept": 136, "dropped_filter": 53,
                                         "dropped_guard": 6, "train": 106, "val": 24, "has_mask": True}
    assert meta["split_mode"] == "blocks" and meta["settings"]["image_size"] == 32
    with np.load(cache / train.index.filepath[0]) as f:
        assert f["image"].dtype == np.float32 and f["mask"].dtype == np.uint8 and bool(f["has_mask"])
    assert len(list((cache / "slices").glob("*.npz"))) == 130  # guard-dropped slices are not kept on disk
    assert sum("slices: built" in m for m in log) == 1
    assert "136 kept slices (train 106, val 24); skipped 53 below min_content=0.05, 6 as guard" in log[-1]


def test_cache_reused_and_keyed_by_settings(mni32):
    cache, root, _ = mni32
    mtime = (cache / "meta.json").stat().st_mtime_ns
    log = Log()
    assert build_slice_cache("mni152", 32, cache_root=root, log=log) == cache
    assert len(log) == 1 and log[0].startswith("slices: reusing cache")
    assert (cache / "meta.json").stat().st_mtime_ns == mtime

    cache64 = build_slice_cache("mni152", 64, cache_root=root, log=log)
    assert cache64 != cache and cache64.parent == cache.parent
    train, val = SliceDataset(cache64), SliceDataset(cache64, "val")
    assert train.images.shape == (106, 1, 64, 64) and len(val) == 24
    assert [p.name for p in (root / "slices").iterdir() if p.name.startswith(".tmp")] == []


def test_dataset_errors(mni32, tmp_path):
    cache, _, _ = mni32
    with pytest.raises(ValueError, match=r"split='test': use 'train' or 'val'"):
        SliceDataset(cache, "test")
    with pytest.raises(DataError, match=r"train.csv is missing; delete the cache folder .* rebuild"):
        SliceDataset(tmp_path, "train")
    broken = tmp_path / "broken"
    (broken / "slices").mkdir(parents=True)
    pd.DataFrame({"filepath": ["slices/x_z001.npz"]}).to_csv(broken / "val.csv", index=False)
    with pytest.raises(DataError, match=r"x_z001.npz listed in val.csv is missing; delete the cache folder"):
        SliceDataset(broken, "val")


# --------------------------------------------------------------------------------------------------
# NIfTI folders

def blob(seed: int = 0, shape=(24, 24, 20)) -> np.ndarray:
    """A bright ellipsoid with an x-gradient and noise on a zero background; 14 of its 20 slices pass min_content=0.05."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = (x / 0.8) ** 2 + (y / 0.7) ** 2 + (z / 0.75) ** 2
    return np.where(r < 1, 100 + 50 * x + rng.normal(0, 5, shape), 0).astype(np.float32)


def save(path, data, affine=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def test_layout_images_masks(tmp_path):
    for i in range(3):
        img = blob(i)
        save(tmp_path / "images" / f"s{i}.nii.gz", img)
        if i < 2:
            save(tmp_path / "masks" / f"s{i}.nii.gz", (img > 100).astype(np.uint8) * 255)
    vols = nifti_folder_volumes(tmp_path)
    assert [v.name for v in vols] == ["s0", "s1", "s2"]
    assert vols[0].mask.dtype == np.uint8 and set(np.unique(vols[0].mask)) == {0, 1} and vols[2].mask is None

    log = Log()
    cache = build_slice_cache(tmp_path, 16, cache_root=tmp_path / "cache", log=log, block=2)
    meta = json.loads((cache / "meta.json").read_text())
    assert meta["split_mode"] == "blocks"  # < 4 volumes: contiguous blocks within each volume
    assert meta["volumes"]["s0"]["slices_total"] == 20 and meta["volumes"]["s0"]["kept"] == 14
    train, val = SliceDataset(cache), SliceDataset(cache, "val")
    assert (len(train), len(val)) == (30, 6)  # 3 x 14 kept, one 2-slice val block each, 6 guard-dropped
    for name in ("s0", "s1", "s2"):
        tz = set(train.index.z_index[train.index.volume == name])
        vz = set(val.index.z_index[val.index.volume == name])
        assert vz and all(z - 1 not in tz and z + 1 not in tz for z in vz)
    assert (train.masks[torch.tensor((train.index.volume == "s2").to_numpy())] == 0).all()
    assert not train.index.has_mask[train.index.volume == "s2"].any()
    assert train.index.has_mask[train.index.volume == "s0"].all()


def test_flat_layout_splits_by_volume(tmp_path):
    for i in range(5):
        img = blob(i)
        save(tmp_path / f"sub{i}.nii.gz", img)
        if i % 2 == 0:
            save(tmp_path / f"sub{i}{'_mask' if i else '_seg'}.nii", (img > 100).astype(np.uint8))
    vols = nifti_folder_volumes(tmp_path)
    assert [v.name for v in vols] == [f"sub{i}" for i in range(5)]
    assert [v.mask is not None for v in vols] == [True, False, True, False, True]

    cache = build_slice_cache(tmp_path, 16, cache_root=tmp_path / "cache", log=Log())
    train, val = SliceDataset(cache), SliceDataset(cache, "val")
    assert json.loads((cache / "meta.json").read_text())["split_mode"] == "volumes"
    assert val.index.volume.nunique() == 1  # round(0.2 * 5) whole volumes
    assert not set(train.index.volume) & set(val.index.volume)
    assert (len(train), len(val)) == (56, 14)


def test_4d_single_frame_and_ras(tmp_path):
    img = blob(0)
    save(tmp_path / "a.nii.gz", img[..., None])
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])  # x and y run the other way: RAS flips them back
    save(tmp_path / "b.nii.gz", img, lps)
    a, b = nifti_folder_volumes(tmp_path)
    assert a.image.shape == (24, 24, 20)
    np.testing.assert_array_equal(b.image, img[::-1, ::-1, :])


def test_fingerprint_tracks_files(tmp_path):
    save(tmp_path / "a.nii.gz", blob(0))
    fp = fingerprint(tmp_path)
    assert len(fp) == 16 and fingerprint(tmp_path) == fp
    save(tmp_path / "b.nii.gz", blob(1))
    assert fingerprint(tmp_path) != fp
    assert len(fingerprint("mni152")) == 16


def test_normalise_maps_foreground_percentiles():
    x = np.zeros((10, 10, 10), np.float32)
    x[2:8, 2:8, 2:8] = np.linspace(1, 201, 216).reshape(6, 6, 6)
    out = normalise(x, (0.0, 100.0), "x")
    assert out[0, 0, 0] == -1.0 and out[2, 2, 2] == -1.0 and out[7, 7, 7] == 1.0
    assert out[x > 0].mean() == pytest.approx(0.0, abs=1e-5)


# --------------------------------------------------------------------------------------------------
# Bad inputs: one DataError each, naming the file and the problem

def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match=r"data folder .*nope does not exist"):
        nifti_folder_volumes(tmp_path / "nope")
    with pytest.raises(DataError, match=r"data folder .*nope does not exist"):
        build_slice_cache(tmp_path / "nope", cache_root=tmp_path, log=Log())


def test_no_nifti_files(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"no NIfTI files in .* \(searched .*\*\.nii, .*\*\.nii\.gz"):
        nifti_folder_volumes(tmp_path)
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match=r"no NIfTI files in .*images \(searched"):
        nifti_folder_volumes(tmp_path)


def test_corrupt_file(tmp_path):
    (tmp_path / "bad.nii.gz").write_bytes(b"not a nifti file" * 10)
    with pytest.raises(DataError, match=r"cannot read .*bad\.nii\.gz as NIfTI: .*not a gzip file"):
        nifti_folder_volumes(tmp_path)


def test_truncated_file(tmp_path):
    path = save(tmp_path / "cut.nii", np.random.default_rng(0).random((40, 40, 40), np.float32))
    path.write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(DataError, match=r"cannot read .*cut\.nii as NIfTI: "):
        nifti_folder_volumes(tmp_path)


def test_not_3d(tmp_path):
    save(tmp_path / "multi.nii.gz", np.zeros((8, 8, 8, 2), np.float32))
    with pytest.raises(DataError, match=r"multi\.nii\.gz has shape \(8, 8, 8, 2\); medkit needs a 3D volume"):
        nifti_folder_volumes(tmp_path)


def test_mask_shape_mismatch(tmp_path):
    save(tmp_path / "s.nii.gz", blob(0))
    save(tmp_path / "s_mask.nii.gz", np.zeros((24, 24, 19), np.uint8))
    with pytest.raises(DataError, match=r"mask s_mask\.nii\.gz has shape \(24, 24, 19\) but its image "
                                        r"s\.nii\.gz has \(24, 24, 20\)"):
        nifti_folder_volumes(tmp_path)


def test_nan_voxels(tmp_path):
    img = blob(0)
    img[0, 0, :3] = np.nan
    img[1, 1, 0] = np.inf
    save(tmp_path / "n.nii.gz", img)
    with pytest.raises(DataError, match=r"n\.nii\.gz has 4 NaN/inf voxels"):
        nifti_folder_volumes(tmp_path)


def test_mask_not_binary(tmp_path):
    img = blob(0)
    save(tmp_path / "images" / "p.nii.gz", img)
    save(tmp_path / "masks" / "p.nii.gz", np.round(img / 50).astype(np.float32))
    with pytest.raises(DataError, match=r"mask .*masks/p\.nii\.gz is not binary: found values 0, 1, 2, 3; "
                                        r".*Threshold it"):
        nifti_folder_volumes(tmp_path)


def test_orphan_masks(tmp_path):
    save(tmp_path / "images" / "a.nii.gz", blob(0))
    save(tmp_path / "masks" / "b.nii.gz", np.zeros((24, 24, 20), np.uint8))
    with pytest.raises(DataError, match=r"mask .*masks/b\.nii\.gz has no image .*images/b\.nii\.gz"):
        nifti_folder_volumes(tmp_path)
    flat = tmp_path / "flat"
    save(flat / "a.nii.gz", blob(0))
    save(flat / "c_seg.nii.gz", np.zeros((24, 24, 20), np.uint8))
    with pytest.raises(DataError, match=r"mask .*c_seg\.nii\.gz has no image"):
        nifti_folder_volumes(flat)


def test_no_slice_left(tmp_path):
    save(tmp_path / "data" / "a.nii.gz", blob(0))
    with pytest.raises(DataError, match=r"no slice of .*data has content >= min_content=0\.9 \(the largest "
                                        r"content fraction seen is 0\.392\)"):
        build_slice_cache(tmp_path / "data", 16, cache_root=tmp_path / "cache", min_content=0.9, log=Log())
    assert list((tmp_path / "cache" / "slices").iterdir()) == []  # a failed build leaves nothing behind


def test_empty_split(tmp_path):
    save(tmp_path / "data" / "a.nii.gz", blob(0))
    with pytest.raises(DataError, match=r"the (train|val) split of .*data is empty .*adjust val_fraction=0\.5 "
                                        r"or block=100"):
        build_slice_cache(tmp_path / "data", 16, cache_root=tmp_path / "cache", val_fraction=0.5, block=100,
                          log=Log())


def test_empty_volume_is_a_warning(tmp_path):
    save(tmp_path / "a.nii.gz", blob(0))
    save(tmp_path / "z.nii.gz", np.pad(np.ones((2, 2, 2), np.float32) * np.arange(1, 3), 6))
    log = Log()
    cache = build_slice_cache(tmp_path, 16, cache_root=tmp_path / "cache", block=2, log=log)
    assert any(m.startswith("slices: warning: volume z") for m in log)
    meta = json.loads((cache / "meta.json").read_text())
    assert meta["totals"]["empty_volumes"] == 1 and meta["volumes"]["z"]["kept"] == 0
    assert "1 volume(s) with no kept slice" in log[-1]


def test_bad_setting(tmp_path):
    with pytest.raises(DataError, match=r"val_fraction=0: use a fraction strictly between 0 and 1"):
        build_slice_cache("mni152", cache_root=tmp_path, val_fraction=0, log=Log())
    assert not os.path.exists(tmp_path / "slices")
