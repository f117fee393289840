"""medkit.data.volumes: DICOM series geometry (order, spacing, affine, HU), every bad series, NIfTI, intensities.

The DICOM series here are assembled from one real slice: pydicom's CT_small.dcm (MR_small.dcm for the
modality test), copied N times with new SOPInstanceUIDs and ImagePositionPatient rewritten along the
slice normal. File names and InstanceNumbers are shuffled so that neither gives the slice order, and
SliceThickness is set to a wrong value so that a reader using it would get the spacing wrong.
"""
from __future__ import annotations

import copy
import warnings

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from scipy.spatial.transform import Rotation

from medkit.data.volumes import (HU_WINDOW, Volume, VolumeError, hu_to_unit, mni152_volume, raw_to_unit,
                                 read_dicom_series, read_nifti, read_volume, robust_range, unit_to_hu, unit_to_raw,
                                 write_nifti)

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
PIXEL_SPACING = (0.5, 0.8)  # (between rows, between columns): anisotropic so that a swap shows
COLS = 96                   # CT_small is 128x128; cropped to 128 rows x 96 columns so that a transpose shows
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def _base(kind: str = "CT") -> pydicom.Dataset:
    return pydicom.dcmread(get_testdata_file("CT_small.dcm" if kind == "CT" else "MR_small.dcm"))


def _cosines(iop):
    iop = np.asarray(iop, dtype=np.float64)
    row, col = iop[:3], iop[3:]
    return row, col, np.cross(row, col)


def write_series(folder, n=6, spacing=2.5, iop=AXIAL, positions=None, kind="CT", seed=0, edit=None,
                 series_uid=None):
    """A series assembled from one real slice; returns {file name: (position index k, dataset)}.

    Slice k gets RescaleSlope 1 + 0.5 k and RescaleIntercept -1024 + k, so its HU identify it.
    """
    folder.mkdir(parents=True, exist_ok=True)
    base = _base(kind)
    if kind == "CT":
        pixels = base.pixel_array[:, :COLS].copy()
        base.PixelData = pixels.tobytes()
        base.Columns = COLS
        base.PixelSpacing = list(PIXEL_SPACING)
    row, col, normal = _cosines(iop)
    p0 = np.array([float(v) for v in base.ImagePositionPatient])
    if positions is None:
        positions = [p0 + k * spacing * normal for k in range(n)]
    n = len(positions)
    rng = np.random.default_rng(seed)
    names = rng.permutation(n)
    numbers = rng.permutation(n) + 1
    if n > 2:
        assert not np.all(np.diff(names) > 0) and not np.all(np.diff(numbers) > 0)  # name/number order is wrong
    series_uid = series_uid or generate_uid()
    written = {}
    for k, pos in enumerate(positions):
        ds = copy.deepcopy(base)
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesInstanceUID = series_uid
        ds.ImagePositionPatient = [round(float(v), 4) for v in pos]
        ds.ImageOrientationPatient = [round(float(v), 6) for v in iop]
        ds.SliceThickness = 99.0  # wrong on purpose: the spacing must come from the positions
        ds.InstanceNumber = int(numbers[k])
        if kind == "CT":
            ds.RescaleSlope = 1.0 + 0.5 * k
            ds.RescaleIntercept = -1024.0 + k
        if edit is not None:
            edit(k, ds)
        name = f"IM{names[k]:04d}.dcm"
        ds.save_as(folder / name)
        written[name] = (k, ds)
    return written


def _hu(ds) -> np.ndarray:
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


# --------------------------------------------------------------------------------------------------
# DICOM series: order, HU, spacing, affine

def test_series_ordered_by_position_with_hu_spacing_and_affine(tmp_path):
    folder = tmp_path / "ct"
    written = write_series(folder, n=6, spacing=2.5)
    (folder / ".DS_Store").write_bytes(b"\0\1junk")
    (folder / "DICOMDIR").write_bytes(b"not a slice")
    vol = read_dicom_series(folder)
    assert isinstance(vol, Volume)
    assert vol.array.dtype == np.float32 and vol.array.shape == (COLS, 128, 6)
    assert vol.affine.dtype == np.float64 and vol.affine.shape == (4, 4)
    assert vol.modality == "CT" and vol.intensity == "HU" and vol.source == str(folder)
    by_k = {k: ds for k, ds in written.values()}
    for k in range(6):  # slice k of the volume is the k-th position, whatever its file name / InstanceNumber
        np.testing.assert_allclose(vol.array[:, :, k], _hu(by_k[k]).T, rtol=0, atol=1e-3)
    assert vol.spacing == pytest.approx((0.8, 0.5, 2.5), abs=1e-6)  # not 99 (SliceThickness)
    p0 = np.array([float(v) for v in by_k[0].ImagePositionPatient])
    # axial: column index -> +x (L), row index -> +y (P), slice -> +z (S) in LPS; RAS negates x and y
    expected = np.array([[-0.8, 0, 0, -p0[0]], [0, -0.5, 0, -p0[1]], [0, 0, 2.5, p0[2]], [0, 0, 0, 1]])
    np.testing.assert_allclose(vol.affine, expected, atol=1e-6)
    assert read_volume(folder).array.shape == vol.array.shape


def test_oblique_series_affine_matches_hand_and_nibabel(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nibabel.nicom.dicomwrappers import wrapper_from_data
    rot = Rotation.from_euler("xyz", [20, -35, 50], degrees=True).as_matrix()
    iop = tuple(rot[:, 0]) + tuple(rot[:, 1])
    row, col, normal = _cosines([round(v, 6) for v in iop])
    folder = tmp_path / "oblique"
    written = write_series(folder, n=5, spacing=1.25, iop=iop, seed=3)
    vol = read_dicom_series(folder)
    assert vol.spacing == pytest.approx((0.8, 0.5, 1.25), abs=1e-4)
    by_k = {k: ds for k, ds in written.values()}
    p0 = np.array([float(v) for v in by_k[0].ImagePositionPatient])
    nz = vol.array.shape[2]
    for i, j, k in [(0, 0, 0), (COLS - 1, 0, 0), (0, 127, 0), (0, 0, nz - 1), (COLS - 1, 127, nz - 1), (17, 40, 2)]:
        lps = p0 + i * 0.8 * row + j * 0.5 * col + k * 1.25 * normal  # hand-computed world position
        np.testing.assert_allclose((vol.affine @ [i, j, k, 1])[:3], LPS_TO_RAS @ lps, atol=2e-3)
        # nibabel's wrapper of that slice: voxel (row, column) -> LPS, data indexed [row, column]
        w = wrapper_from_data(by_k[k])
        np.testing.assert_allclose((vol.affine @ [i, j, k, 1])[:3], LPS_TO_RAS @ (w.affine @ [j, i, 0, 1])[:3],
                                   atol=2e-3)
        assert vol.array[i, j, k] == pytest.approx(float(w.get_data()[j, i]), abs=1e-3)


def test_mr_series_read_with_expect_hu_false(tmp_path):
    write_series(tmp_path / "mr", n=3, spacing=4.0, kind="MR")
    vol = read_dicom_series(tmp_path / "mr", expect_hu=False)
    assert vol.modality == "MR" and vol.intensity == "raw" and vol.array.shape == (64, 64, 3)
    assert vol.spacing == pytest.approx((0.3125, 0.3125, 4.0), abs=1e-6)
    np.testing.assert_array_equal(vol.array[:, :, 0], _base("MR").pixel_array.T)


# --------------------------------------------------------------------------------------------------
# DICOM series: every bad input

def test_missing_folder(tmp_path):
    with pytest.raises(VolumeError, match="DICOM folder .*nowhere does not exist"):
        read_dicom_series(tmp_path / "nowhere")


def test_no_dicom_files(tmp_path):
    (tmp_path / ".DS_Store").write_bytes(b"x")
    with pytest.raises(VolumeError, match=r"no DICOM files in .*\(ignored: \.DS_Store\)"):
        read_dicom_series(tmp_path)


def test_non_dicom_file_listed(tmp_path):
    write_series(tmp_path, n=3)
    (tmp_path / "notes.txt").write_text("scan of 2024-01-01\n")
    with pytest.raises(VolumeError, match=r"1 file\(s\) are not DICOM .*: notes\.txt\. Move them out"):
        read_dicom_series(tmp_path)


def test_several_series(tmp_path):
    uid_a, uid_b = generate_uid(), generate_uid()
    write_series(tmp_path, n=3, series_uid=uid_a, edit=lambda k, ds: setattr(ds, "SeriesDescription", "AX BONE"))
    more = write_series(tmp_path / "tmp", n=2, series_uid=uid_b,
                        edit=lambda k, ds: setattr(ds, "SeriesDescription", "SCOUT"))
    for name in more:
        (tmp_path / "tmp" / name).rename(tmp_path / f"b_{name}")
    with pytest.raises(VolumeError, match=rf"holds 2 series: {uid_a} \(3 files, 'AX BONE'.*{uid_b} \(2 files, "
                                          rf"'SCOUT'.*own folder"):
        read_dicom_series(tmp_path)


def test_duplicated_positions(tmp_path):
    row, col, normal = _cosines(AXIAL)
    p0 = np.array([1.0, 2.0, 3.0])
    written = write_series(tmp_path, positions=[p0, p0 + 2 * normal, p0 + 2 * normal, p0 + 4 * normal])
    a, b = sorted(name for name, (k, _) in written.items() if k in (1, 2))
    with pytest.raises(VolumeError, match=rf"({a} and {b}|{b} and {a}) are at the same slice position"):
        read_dicom_series(tmp_path)


def test_non_uniform_spacing(tmp_path):
    row, col, normal = _cosines(AXIAL)
    z = [0.0, 2.5, 5.0, 8.1, 10.6, 13.1]
    write_series(tmp_path, positions=[v * normal for v in z])
    with pytest.raises(VolumeError, match=r"not evenly spaced: spacings seen 2\.50 mm \(x4\), 3\.10 mm \(x1\)"):
        read_dicom_series(tmp_path)


def test_missing_slices(tmp_path):
    row, col, normal = _cosines(AXIAL)
    z = [0.0, 2.5, 5.0, 12.5, 15.0, 17.5]  # 7.5 and 10.0 are missing
    written = write_series(tmp_path, positions=[v * normal for v in z])
    a = next(name for name, (k, _) in written.items() if k == 2)
    b = next(name for name, (k, _) in written.items() if k == 3)
    with pytest.raises(VolumeError, match=rf"2 slice\(s\) missing .*between positions 5\.00 and 12\.50 mm "
                                          rf"\({a} and {b}\)"):
        read_dicom_series(tmp_path)


def test_gantry_tilt(tmp_path):
    row, col, normal = _cosines(AXIAL)
    step = 2.0 * normal + 2.0 * np.tan(np.radians(10)) * col  # 10 degree tilt in the y-z plane
    write_series(tmp_path, positions=[k * step for k in range(5)])
    with pytest.raises(VolumeError, match=r"10\.00 degrees off the slice normal \(gantry tilt"):
        read_dicom_series(tmp_path)


def test_non_orthogonal_orientation(tmp_path):
    a = np.radians(5)
    write_series(tmp_path, n=3, iop=(1.0, 0.0, 0.0, np.sin(a), np.cos(a), 0.0))
    with pytest.raises(VolumeError, match=r"not orthogonal \(5\.00 degrees off 90"):
        read_dicom_series(tmp_path)


def test_mixed_orientations_or_pixel_spacings(tmp_path):
    def edit(k, ds):
        if k == 1:
            ds.ImageOrientationPatient = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
    write_series(tmp_path / "iop", n=3, edit=edit)
    with pytest.raises(VolumeError, match="the slices have different orientations: .* has ImageOrientationPatient"):
        read_dicom_series(tmp_path / "iop")
    write_series(tmp_path / "ps", n=3, edit=lambda k, ds: setattr(ds, "PixelSpacing", [0.7, 0.7]) if k == 2 else None)
    with pytest.raises(VolumeError, match=r"the slices have different PixelSpacing: .*\[0\.7, 0\.7\]"):
        read_dicom_series(tmp_path / "ps")


def test_mr_modality_when_hu_expected(tmp_path):
    write_series(tmp_path, n=3, kind="MR")
    with pytest.raises(VolumeError, match="Modality is MR; HU are expected: pass expect_hu=False or use a CT series"):
        read_dicom_series(tmp_path)


def test_ct_without_rescale_when_hu_expected(tmp_path):
    written = write_series(tmp_path, n=3, edit=lambda k, ds: delattr(ds, "RescaleIntercept") if k == 1 else None)
    name = next(n for n, (k, _) in written.items() if k == 1)
    with pytest.raises(VolumeError, match=rf"1 file\(s\) have no RescaleIntercept \({name}\), so HU cannot"):
        read_dicom_series(tmp_path)


def test_missing_geometry_tag_or_pixels(tmp_path):
    write_series(tmp_path / "ipp", n=3, edit=lambda k, ds: delattr(ds, "ImagePositionPatient") if k == 0 else None)
    with pytest.raises(VolumeError, match="have no ImagePositionPatient .*geometry is unknown"):
        read_dicom_series(tmp_path / "ipp")
    write_series(tmp_path / "px", n=3, edit=lambda k, ds: delattr(ds, "PixelData") if k == 1 else None)
    with pytest.raises(VolumeError, match=r"have no PixelData .*hold no image"):
        read_dicom_series(tmp_path / "px")


def test_mixed_sizes(tmp_path):
    def edit(k, ds):
        if k == 2:
            ds.PixelData = ds.pixel_array[:, :64].copy().tobytes()
            ds.Columns = 64
    written = write_series(tmp_path, n=4, edit=edit)
    small = next(n for n, (k, _) in written.items() if k == 2)
    with pytest.raises(VolumeError, match=rf"different sizes \(Rows x Columns\): .*128x96 \(e\.g\. IM\d+\.dcm\).*"
                                          rf"128x64 \(e\.g\. {small}\)|different sizes \(Rows x Columns\): "
                                          rf"128x64 \(e\.g\. {small}\), 128x96"):
        read_dicom_series(tmp_path)


def test_fewer_than_two_slices(tmp_path):
    (name,) = write_series(tmp_path, n=1)
    with pytest.raises(VolumeError, match=rf"has only 1 slice \({name}\); a volume needs at least 2"):
        read_dicom_series(tmp_path)


def test_multiframe_file(tmp_path):
    written = write_series(tmp_path, n=3, edit=lambda k, ds: setattr(ds, "NumberOfFrames", 2) if k == 0 else None)
    name = next(n for n, (k, _) in written.items() if k == 0)
    with pytest.raises(VolumeError, match=rf"{name} is a multi-frame \(enhanced\) DICOM file \(NumberOfFrames=2\); "
                                          rf"medkit reads only series of single-frame slices"):
        read_dicom_series(tmp_path)


# --------------------------------------------------------------------------------------------------
# NIfTI

def test_nifti_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.normal(100, 20, size=(7, 6, 5)).astype(np.float32)
    affine = np.array([[0.7, 0, 0, -10], [0, 0.8, 0, 20], [0, 0, 2.0, -30], [0, 0, 0, 1]])
    path = write_nifti(data, affine, tmp_path / "sub" / "dir" / "v.nii.gz")
    assert path.is_file()
    img = nib.load(str(path))
    assert img.get_data_dtype() == np.float32
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
    assert img.header.get_xyzt_units()[0] == "mm"
    np.testing.assert_allclose(img.get_qform(), affine, atol=1e-5)
    vol = read_nifti(path, intensity="raw")
    np.testing.assert_array_equal(vol.array, data)
    np.testing.assert_allclose(vol.affine, affine, atol=1e-6)
    assert vol.spacing == pytest.approx((0.7, 0.8, 2.0))
    assert vol.modality == "unknown" and vol.intensity == "raw"
    assert read_volume(path, intensity="raw").array.shape == (7, 6, 5)
    torch_path = write_nifti(torch.from_numpy(data), affine, tmp_path / "t.nii")
    np.testing.assert_array_equal(read_nifti(torch_path).array, data)


def test_lps_nifti_reoriented_to_ras(tmp_path):
    data = np.arange(4 * 5 * 3, dtype=np.float32).reshape(4, 5, 3)
    lps = np.array([[-1.5, 0, 0, 30], [0, -2.0, 0, 40], [0, 0, 3.0, -5], [0, 0, 0, 1]])
    vol = read_nifti(write_nifti(data, lps, tmp_path / "lps.nii.gz"))
    np.testing.assert_array_equal(vol.array, data[::-1, ::-1, :])
    assert np.all(np.diag(vol.affine)[:3] > 0)
    assert vol.spacing == pytest.approx((1.5, 2.0, 3.0))
    for i, j, k in [(0, 0, 0), (3, 4, 2), (1, 2, 1)]:  # every value stays at its world position
        ii, jj = np.argwhere(vol.array[:, :, k] == data[i, j, k])[0]
        np.testing.assert_allclose(vol.affine @ [ii, jj, k, 1], lps @ [i, j, k, 1])


def test_nifti_intensity_auto_and_hu(tmp_path):
    ct = np.full((8, 8, 8), -1000.0, dtype=np.float32)
    ct[2:6, 2:6, 2:6] = 40.0
    vol = read_nifti(write_nifti(ct, np.eye(4), tmp_path / "ct.nii.gz"))
    assert vol.intensity == "HU" and vol.modality == "CT"
    mr = np.zeros((8, 8, 8), dtype=np.float32)
    mr[2:6, 2:6, 2:6] = 255.0
    vol = read_nifti(write_nifti(mr, np.eye(4), tmp_path / "mr.nii.gz"))
    assert vol.intensity == "raw" and vol.modality == "unknown"
    assert read_nifti(tmp_path / "ct.nii.gz", intensity="HU").intensity == "HU"
    big = mr * 200
    with pytest.raises(VolumeError, match=r"values span \[0, 51000\], outside the plausible HU range .*"
                                          r"intensity='raw'"):
        read_nifti(write_nifti(big, np.eye(4), tmp_path / "big.nii.gz"), intensity="HU")
    with pytest.raises(VolumeError, match="intensity='hu'; use 'auto', 'HU' or 'raw'"):
        read_nifti(tmp_path / "ct.nii.gz", intensity="hu")


def test_nifti_shapes(tmp_path):
    one = nib.Nifti1Image(np.ones((4, 4, 3, 1), dtype=np.float32), np.eye(4))
    nib.save(one, str(tmp_path / "one.nii.gz"))
    assert read_nifti(tmp_path / "one.nii.gz").array.shape == (4, 4, 3)
    nib.save(nib.Nifti1Image(np.ones((4, 4, 3, 2), dtype=np.float32), np.eye(4)), str(tmp_path / "two.nii.gz"))
    with pytest.raises(VolumeError, match=r"two\.nii\.gz has shape \(4, 4, 3, 2\); medkit needs a 3D volume"):
        read_nifti(tmp_path / "two.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((4, 4), dtype=np.float32), np.eye(4)), str(tmp_path / "flat.nii.gz"))
    with pytest.raises(VolumeError, match=r"flat\.nii\.gz has shape \(4, 4\)"):
        read_nifti(tmp_path / "flat.nii.gz")


def test_nifti_bad_files(tmp_path):
    data = np.zeros((3, 3, 3), dtype=np.float32)
    data[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / "nan.nii.gz"))
    with pytest.raises(VolumeError, match=r"nan\.nii\.gz has 1 NaN/inf voxels"):
        read_nifti(tmp_path / "nan.nii.gz")
    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    with pytest.raises(VolumeError, match=r"cannot read .*broken\.nii\.gz as NIfTI"):
        read_nifti(tmp_path / "broken.nii.gz")
    with pytest.raises(VolumeError, match=r"NIfTI file .*gone\.nii does not exist"):
        read_nifti(tmp_path / "gone.nii")


def test_write_nifti_bad_inputs(tmp_path):
    with pytest.raises(VolumeError, match=r"does not end in \.nii or \.nii\.gz"):
        write_nifti(np.zeros((2, 2, 2)), np.eye(4), tmp_path / "v.npy")
    with pytest.raises(VolumeError, match=r"array has shape \(2, 2\); pass one 3D"):
        write_nifti(np.zeros((2, 2)), np.eye(4), tmp_path / "v.nii")
    with pytest.raises(VolumeError, match="the affine must be a finite, invertible 4x4"):
        write_nifti(np.zeros((2, 2, 2)), np.eye(3), tmp_path / "v.nii")


def test_read_volume_dispatch_errors(tmp_path):
    with pytest.raises(VolumeError, match="does not exist; pass a folder holding one DICOM series or a .nii"):
        read_volume(tmp_path / "nothing")
    (tmp_path / "scan.mha").write_bytes(b"x")
    with pytest.raises(VolumeError, match=r"scan\.mha is not a supported volume; .*folder holding one DICOM series"):
        read_volume(tmp_path / "scan.mha")
    (tmp_path / "slice.dcm").write_bytes(b"x")
    with pytest.raises(VolumeError, match=r"pass the folder that holds the series' slices"):
        read_volume(tmp_path / "slice.dcm")


# --------------------------------------------------------------------------------------------------
# MNI152, Volume, intensity mappings

def test_mni152_volume():
    vol = mni152_volume()
    assert vol.array.shape == (197, 233, 189) and vol.array.dtype == np.float32
    assert vol.spacing == pytest.approx((1.0, 1.0, 1.0))
    assert vol.modality == "MR" and vol.intensity == "raw"
    assert np.all(np.diag(vol.affine)[:3] > 0)  # RAS
    assert vol.source.endswith(".nii.gz")


def test_volume_checks():
    vol = Volume(np.zeros((2, 3, 4), dtype=np.float64), np.diag([2.0, -3.0, 4.0, 1.0]))
    assert vol.array.dtype == np.float32 and vol.spacing == (2.0, 3.0, 4.0)
    with pytest.raises(VolumeError, match="a Volume is 3D"):
        Volume(np.zeros((2, 3)), np.eye(4))
    with pytest.raises(VolumeError, match="intensity='hu'; use 'HU' or 'raw'"):
        Volume(np.zeros((2, 3, 4)), np.eye(4), intensity="hu")


def test_hu_round_trip_numpy_and_torch():
    hu = np.arange(HU_WINDOW[0], HU_WINDOW[1] + 1)  # every integer HU in the window
    u = hu_to_unit(hu)
    assert u.min() == -1.0 and u.max() == 1.0
    np.testing.assert_allclose(unit_to_hu(u), hu, rtol=0, atol=1e-9)
    u32 = hu_to_unit(hu.astype(np.float32))
    assert u32.dtype == np.float32
    np.testing.assert_array_equal(np.round(unit_to_hu(u32)), hu)  # exact after rounding, in float32 too
    t = torch.from_numpy(hu.astype(np.float32))
    tu = hu_to_unit(t)
    assert isinstance(tu, torch.Tensor) and tu.dtype == torch.float32
    np.testing.assert_array_equal(torch.round(unit_to_hu(tu)).numpy(), hu)
    assert hu_to_unit(torch.tensor([-3000, 0, 9000])).tolist() == pytest.approx([-1.0, 1024 / 4095 * 2 - 1, 1.0])
    np.testing.assert_array_equal(hu_to_unit(np.array([-3000.0, 9000.0])), [-1.0, 1.0])  # clipped
    np.testing.assert_array_equal(unit_to_hu(np.array([-1.5, 1.5])), [-1024.0, 3071.0])
    assert float(hu_to_unit(40.0, window=(-160.0, 240.0))) == pytest.approx(0.0)


def test_raw_mapping_and_robust_range():
    rng = np.random.default_rng(0)
    vol = np.zeros((20, 20, 20), dtype=np.float32)
    vol[5:15, 5:15, 5:15] = rng.uniform(100, 500, size=(10, 10, 10))
    lo, hi = robust_range(vol)
    fg = vol[vol > 0]
    assert (lo, hi) == pytest.approx(tuple(np.percentile(fg.astype(np.float64), [0.5, 99.5])))
    assert lo > 100 and hi < 500  # the zero background did not pull lo down
    u = raw_to_unit(vol, lo, hi)
    assert u.min() == -1.0 and u.max() == 1.0
    inside = (fg >= lo) & (fg <= hi)
    np.testing.assert_allclose(unit_to_raw(raw_to_unit(fg, lo, hi), lo, hi)[inside], fg[inside], rtol=1e-5)
    assert robust_range(torch.from_numpy(vol), (0, 100)) == pytest.approx((float(fg.min()), float(fg.max())))
    with pytest.raises(VolumeError, match="no voxel > 0"):
        robust_range(np.zeros((3, 3, 3)))
    with pytest.raises(VolumeError, match="foreground is constant"):
        robust_range(np.ones((3, 3, 3)))
    with pytest.raises(VolumeError, match=r"percentiles=\(99\.0, 1\.0\)"):
        robust_range(vol, (99.0, 1.0))
    with pytest.raises(VolumeError, match=r"\(lo, hi\)=\(5, 5\): need finite lo < hi"):
        raw_to_unit(vol, 5, 5)
