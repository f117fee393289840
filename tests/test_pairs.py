"""Paired image/mask folders (medkit.data.pairs): layouts, problems, the pair cache, generated pairs, MNI152 pairs."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from medkit.data import DataError
from medkit.data.pairs import (
    PairDataset,
    PairsError,
    PairsReport,
    build_pair_cache,
    find_pairs,
    mni152_pairs,
    validate_pairs,
)
from medkit.data.pairs_io import load_pairs, save_pairs
from medkit.eval import downstream


class Log(list):
    def __call__(self, msg: str) -> None:
        self.append(msg)


def img(path, size=(12, 10), mode="RGB", seed=0):
    """A small random image (size = (W, H)); the folder is created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(path)
    return path


def mask(path, size=(12, 10), high=255):
    """A small mask with a foreground rectangle, values {0, high}."""
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros((size[1], size[0]), np.uint8)
    m[2:6, 3:8] = high
    Image.fromarray(m, mode="L").save(path)
    return path


def folder_pairs(base, names, img_dir="images", mask_dir="masks", img_ext=".png", mask_ext=".png", mask_suffix=""):
    for i, n in enumerate(names):
        img(base / img_dir / f"{n}{img_ext}", seed=i)
        mask(base / mask_dir / f"{n}{mask_suffix}{mask_ext}")


# --------------------------------------------------------------------------------------------------
# Layouts

def _kvasir(root):
    base = root / "Kvasir-SEG" / "Kvasir-SEG"
    folder_pairs(base, ["cju0", "cju1", "cju2"], img_ext=".jpg", mask_ext=".jpg")
    (base / "kavsir_bboxes.json").write_text("{}")
    return "kvasir-seg", ["cju0", "cju1", "cju2"], "images"


def _cvc(root):
    folder_pairs(root / "PNG", ["1", "2", "3"], "Original", "Ground Truth")
    folder_pairs(root / "TIF", ["1", "2", "3"], "Original", "Ground Truth", ".tif", ".tif")
    (root / "metadata.csv").write_text("frame\n")
    return "cvc-clinicdb", ["1", "2", "3"], "PNG/Original"


def _isic(root):
    names = [f"ISIC_000000{i}" for i in range(4)]
    folder_pairs(root, names, "ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth", ".jpg",
                 mask_suffix="_segmentation")
    for sub in ("ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth"):
        (root / sub / "LICENSE.txt").write_text("cc")
        (root / sub / "ATTRIBUTION.txt").write_text("isic")
    return "isic2018", names, "ISIC2018_Task1-2_Training_Input"


def _pranet(root):
    folder_pairs(root / "data" / "TrainDataset", ["a", "b", "c"], "image", "mask")
    return "pranet", ["a", "b", "c"], "TrainDataset/image"


def _pranet_plural(root):
    folder_pairs(root / "TrainDataset", ["a", "b", "c"])
    return "pranet", ["a", "b", "c"], "TrainDataset/images"


def _prompt_json(root):
    base = root / "Siamese" / "data"
    folder_pairs(base, ["p0", "p1", "p2"])
    lines = [json.dumps({"source": f"masks/{n}.png", "target": f"images/{n}.png", "prompt": f"polyp {n}"})
             for n in ("p0", "p1", "p2")]
    (base / "prompt.json").write_text("\n".join(lines) + "\n\n")
    return "prompt-json", ["p0", "p1", "p2"], "data/images"


def _folders(root):
    base = root / "mine"
    img(base / "images" / "a.png")
    mask(base / "masks" / "a_mask.png")
    img(base / "images" / "b.jpg")
    mask(base / "masks" / "b_segmentation.png")
    img(base / "images" / "c.png")
    mask(base / "masks" / "c.png")
    return "folders", ["a", "b", "c"], "mine/images"


@pytest.mark.parametrize("make", [_kvasir, _cvc, _isic, _pranet, _pranet_plural, _prompt_json, _folders])
def test_each_layout_is_detected_and_paired(tmp_path, make):
    layout, names, image_dir = make(tmp_path)
    log = Log()
    found = find_pairs(tmp_path, log=log)
    assert found.layout == layout and [p.name for p in found] == names
    assert all(image_dir in p.image.as_posix() for p in found)
    assert all(p.image.is_file() and p.mask.is_file() for p in found)
    assert not found.problems
    assert f"found {len(names)} pair(s), layout {layout}" in log[-1]
    if layout == "prompt-json":
        assert [p.prompt for p in found] == [f"polyp {n}" for n in names]
    else:
        assert all(p.prompt is None for p in found)
    if layout == "cvc-clinicdb":
        assert any("ignoring the TIF copy" in m for m in log)
    if layout == "isic2018":
        assert sorted(found.ignored) == sorted(f"{d}/{f}" for d in ("ISIC2018_Task1-2_Training_Input",
                                                                     "ISIC2018_Task1_Training_GroundTruth")
                                               for f in ("LICENSE.txt", "ATTRIBUTION.txt"))
        assert "4 non-image or unlisted file(s) ignored" in log[-1]
    _, report = validate_pairs(found, log=log)
    assert report.kept == len(names) and report.n_problems == 0


def test_forced_layout_and_detection_errors(tmp_path):
    log = Log()
    _kvasir(tmp_path)
    assert [p.name for p in find_pairs(tmp_path, layout="folders", log=log)] == ["cju0", "cju1", "cju2"]
    with pytest.raises(PairsError, match="no image/mask pairs found under .* for isic2018: ISIC2018_Task1-2"):
        find_pairs(tmp_path, layout="isic2018", log=log)
    # PraNet's download: TrainDataset plus TestDataset/<name>/{images,masks}
    root = tmp_path / "pranet"
    _pranet_plural(root)
    folder_pairs(root / "TestDataset" / "Kvasir", ["t"])
    with pytest.raises(PairsError) as err:
        find_pairs(root, log=log)
    msg = str(err.value)
    assert "several pair layouts match" in msg and "pranet at TrainDataset" in msg
    assert "folders at TestDataset/Kvasir" in msg and "Pass layout= one of ['folders', 'pranet']" in msg
    assert find_pairs(root, layout="pranet", log=log).layout == "pranet"
    folder_pairs(root / "TestDataset" / "CVC-300", ["u"])
    with pytest.raises(PairsError, match="3 folders match layout 'folders' .*: folders at TestDataset/CVC-300; .*Point root at the one to use"):
        find_pairs(root, layout="folders", log=log)
    empty = tmp_path / "empty"
    (empty / "stuff").mkdir(parents=True)
    with pytest.raises(PairsError) as err:
        find_pairs(empty, log=log)
    for piece in ("no image/mask pairs found under", "searched 4 folder levels", "Kvasir-SEG/{images,masks}",
                  "PNG/{Original,Ground Truth}", "TrainDataset/{image,mask}", "prompt.json", "images/ + masks/"):
        assert piece in str(err.value)
    with pytest.raises(PairsError, match="does not exist"):
        find_pairs(tmp_path / "nowhere", log=log)
    with pytest.raises(PairsError, match="layout='kvasir': use 'auto' or one of"):
        find_pairs(tmp_path, layout="kvasir", log=log)
    dup = tmp_path / "dup"
    folder_pairs(dup, ["a"])
    mask(dup / "masks" / "a_mask.png")
    with pytest.raises(PairsError, match="belong to the same name 'a'; keep one of them"):
        find_pairs(dup, log=log)


def test_prompt_json_lines_and_errors(tmp_path):
    log = Log()
    base = tmp_path / "data"
    folder_pairs(base, ["a", "b"])
    absolute = str((base / "images" / "b.png").resolve())
    good = [{"source": "masks/a.png", "target": "images/a.png", "prompt": "a polyp"},
            {"source": "masks/b.png", "target": absolute}]
    jpath = base / "prompt.json"
    jpath.write_text("\n".join(json.dumps(x) for x in good) + "\n")
    found = find_pairs(tmp_path, log=log)
    assert [(p.name, p.prompt) for p in found] == [("a", "a polyp"), ("b", None)]
    jpath.write_text(json.dumps(good))  # a JSON array is accepted too
    assert len(find_pairs(jpath, log=log)) == 2
    jpath.write_text(json.dumps(good[0]) + "\n\n" + '{"source": "masks/b.png", "target": \n')
    with pytest.raises(PairsError, match=r"prompt.json line 3: invalid JSON .*each line must be one object"):
        find_pairs(tmp_path, log=log)
    jpath.write_text(json.dumps(good[0]) + "\n" + json.dumps({"target": "images/b.png"}) + "\n")
    with pytest.raises(PairsError, match=r"prompt.json line 2: 'source' missing or not a file path"):
        find_pairs(tmp_path, log=log)
    jpath.write_text(json.dumps({**good[0], "prompt": 3}) + "\n")
    with pytest.raises(PairsError, match=r"line 1: 'prompt' must be a string"):
        find_pairs(tmp_path, log=log)
    jpath.write_text(json.dumps(good[0]) + "\n" + json.dumps(good[0]) + "\n")
    with pytest.raises(PairsError, match=r"line 1 and line 2 both give an image named 'a'"):
        find_pairs(tmp_path, log=log)
    jpath.write_text(json.dumps(good[0]) + "\n" + json.dumps({"source": "masks/zz.png", "target": "images/b.png"}))
    found = find_pairs(tmp_path, log=log)
    assert [p.name for p in found] == ["a"] and found.problems == {"missing file": ["line 2: masks/zz.png"]}
    assert found.ignored == ["masks/b.png"]  # a file in masks/ that prompt.json does not list
    with pytest.raises(PairsError, match=r"1 file\(s\) listed in prompt.json that do not exist, e.g. line 2: "
                                         r"masks/zz.png: fix the paths in prompt.json"):
        validate_pairs(found, log=log)


# --------------------------------------------------------------------------------------------------
# Problems

def _problem_tree(root):
    base = root / "set"
    folder_pairs(base, ["a", "b"])
    img(base / "images" / "c.png")                        # image without mask
    mask(base / "masks" / "d.png")                        # mask without image
    img(base / "images" / "e.png")
    (base / "masks" / "e.png").write_bytes(b"not a png")  # unreadable
    img(base / "images" / "f.png")
    mask(base / "masks" / "f.png", size=(8, 8))           # size mismatch
    img(base / "images" / "g.png")
    mask(base / "masks" / "g.png", high=1)                # empty after > 127 (stored as 0/1)
    img(base / "images" / "h.png")                        # non-binary (a soft edge): only a warning
    m = np.zeros((10, 12), np.uint8)
    m[:, 6:] = 255
    m[:, 4:6] = 128
    Image.fromarray(m).save(base / "masks" / "h.png")
    (base / "images" / "notes.txt").write_text("x")
    return base


def test_each_problem_kind_is_counted_with_its_message(tmp_path):
    base = _problem_tree(tmp_path)
    log = Log()
    with pytest.raises(PairsError) as err:
        validate_pairs(base, log=log)
    msg = str(err.value)
    assert isinstance(err.value, DataError) and isinstance(err.value, downstream.PairsError)
    for piece in ("(layout folders): 5 problem(s) in 5 kind(s):",
                  "1 image(s) without a mask, e.g. c.png: add the masks (same file name stem) or remove the images",
                  "1 mask(s) without an image, e.g. d.png: add the images or remove the masks",
                  "1 unreadable file(s) (PIL cannot open them), e.g. masks/e.png (UnidentifiedImageError",
                  "1 pair(s) whose mask size differs from the image size, e.g. f (image 12x10, mask 8x8): resize",
                  "1 empty mask(s) (no pixel > 127), e.g. g.png (max 1: stored as 0/1?): remove those pairs",
                  "or pass on_problem='skip' to drop these pairs"):
        assert piece in msg
    assert "non-binary" not in msg
    assert any("warning: 1 mask(s) not binary (more than 1% of pixels strictly between 10 and 245), e.g. h.png"
               in m for m in log)

    log.clear()
    good, report = validate_pairs(base, on_problem="skip", log=log)
    assert [p.name for p in good] == ["a", "b", "h"]
    assert report.counts == {"found": 6, "kept": 3, "ignored_files": 1, "image without mask": 1,
                             "mask without image": 1, "unreadable": 1, "size mismatch": 1, "empty mask": 1,
                             "non-binary mask": 1}
    assert report.ignored == ["images/notes.txt"]
    assert any("on_problem='skip': kept 3 of 6 pair(s)" in m for m in log)
    assert any("1 empty mask(s)" in m for m in log)

    cache = build_pair_cache(base, 8, on_problem="skip", cache_root=tmp_path / "cache", log=log)
    meta = json.loads((cache / "meta.json").read_text())
    assert meta["problem_counts"] == {"image without mask": 1, "mask without image": 1, "unreadable": 1,
                                      "size mismatch": 1, "empty mask": 1}
    assert meta["warnings"] == {"non-binary mask": ["h.png"]} and meta["counts"]["kept"] == 3
    with pytest.raises(PairsError, match="5 problem"):
        build_pair_cache(base, 8, cache_root=tmp_path / "cache", log=log)
    with pytest.raises(PairsError, match="on_problem='ignore': use 'error'"):
        validate_pairs(base, on_problem="ignore", log=log)


def test_report_lists_at_most_five_examples():
    r = PairsReport("root", "folders", found=7, problems={"empty mask": [f"m{i}.png" for i in range(7)]})
    (line,) = r.lines()
    assert line.startswith("7 empty mask(s) (no pixel > 127), e.g. m0.png, m1.png, m2.png, m3.png, m4.png and 2 more:")


# --------------------------------------------------------------------------------------------------
# The cache

def test_masks_are_thresholded_then_resized_and_stay_binary(tmp_path):
    base = tmp_path / "jpeg"
    yy, xx = np.mgrid[:30, :40]
    soft = np.clip(255 * (1.0 - np.hypot(yy - 14, xx - 19) / 12.0) * 3, 0, 255).astype(np.uint8)
    for i in range(3):
        img(base / "images" / f"{i}.jpg", size=(40, 30), seed=i)
        (base / "masks").mkdir(exist_ok=True)
        Image.fromarray(soft).save(base / "masks" / f"{i}.jpg", quality=30)  # JPEG: not exactly binary
    log = Log()
    cache = build_pair_cache(base, 16, val_fraction=0.0, cache_root=tmp_path / "cache", log=log)
    with np.load(cache / "train.npz") as f:
        images, masks, names = f["images"], f["masks"], list(f["names"])
    assert images.dtype == np.uint8 and images.shape == (3, 3, 16, 16)  # RGB JPEGs -> 3 channels
    assert masks.dtype == np.uint8 and masks.shape == (3, 1, 16, 16) and set(np.unique(masks)) == {0, 1}
    raw = np.asarray(Image.open(base / "masks" / f"{names[0]}.jpg").convert("L"))
    expected = F.interpolate(torch.from_numpy((raw > 127).astype(np.float32))[None, None], size=(16, 16),
                             mode="nearest-exact")[0].numpy()
    assert np.array_equal(masks[0], expected.astype(np.uint8))
    x = np.array(Image.open(base / "images" / f"{names[0]}.jpg").convert("RGB"))
    ref = F.interpolate(torch.from_numpy(x).permute(2, 0, 1)[None].float(), size=(16, 16), mode="bilinear",
                        antialias=True, align_corners=False)[0].round().clamp(0, 255).numpy()
    assert np.array_equal(images[0], ref.astype(np.uint8))
    grey = build_pair_cache(base, 16, channels=1, val_fraction=0.0, cache_root=tmp_path / "cache", log=log)
    with np.load(grey / "train.npz") as f:
        assert f["images"].shape == (3, 1, 16, 16)
    with pytest.raises(PairsError, match="val_fraction=0.0"):
        PairDataset(cache, "val")


def test_cache_is_reused_keyed_and_split_by_seed(tmp_path):
    base = tmp_path / "set"
    folder_pairs(base, [f"s{i}" for i in range(10)])
    log, root = Log(), tmp_path / "cache"
    a = build_pair_cache(base, 8, cache_root=root, log=log)
    assert "built" in log[-1] and "train 9, val 1" in log[-1]
    assert build_pair_cache(base, 8, cache_root=root, log=log) == a and "reusing" in log[-1]
    b = build_pair_cache(base, 8, seed=1, val_fraction=0.3, cache_root=root, log=log)
    assert b != a
    meta = json.loads((b / "meta.json").read_text())
    assert meta["layout"] == "folders" and meta["synthetic"] is False and meta["channels"] == 3
    assert meta["counts"]["train"] == 7 and meta["counts"]["val"] == 3
    val = PairDataset(b, "val")
    assert val.names == [p["name"] for p in meta["pairs"]["val"]]
    assert not set(val.names) & set(PairDataset(b, "train").names)
    for bad, match in (({"image_size": 4}, "image_size=4"), ({"channels": 2}, "channels=2"),
                       ({"val_fraction": 1.0}, "val_fraction=1.0")):
        with pytest.raises(PairsError, match=match):
            build_pair_cache(base, **{"image_size": 8, **bad}, cache_root=root, log=log)
    (b / "val.npz").unlink()
    with pytest.raises(PairsError, match="val.npz is missing; delete the cache folder"):
        PairDataset(b, "val")


# --------------------------------------------------------------------------------------------------
# Generated pairs

def _generated(n=4, c=1, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, c, size, size, generator=g) * 2 - 1
    masks = (torch.rand(n, 1, size, size, generator=g) > 0.6).float()
    return images, masks


def test_generated_pairs_round_trip(tmp_path):
    images, masks = _generated()
    out = save_pairs(tmp_path / "gen", images, masks, prompt=[f"polyp {i}" for i in range(4)])
    assert sorted(p.name for p in out.iterdir()) == ["images", "masks", "prompt.json"]
    log = Log()
    found = find_pairs(out, log=log)
    assert found.layout == "prompt-json" and [p.name for p in found] == ["00000", "00001", "00002", "00003"]
    assert [p.prompt for p in found] == [f"polyp {i}" for i in range(4)]
    cache = build_pair_cache(out, 16, val_fraction=0.25, cache_root=tmp_path / "cache", log=log)
    train, val = PairDataset(cache, "train"), PairDataset(cache, "val")
    assert len(train) == 3 and len(val) == 1
    quantised = torch.round((images + 1) * 127.5) / 127.5 - 1
    for ds in (train, val):
        for i in range(len(ds)):
            item = ds[i]
            k = int(item["name"])
            assert item["image"].dtype == torch.float32 and item["image"].shape == (1, 16, 16)
            assert torch.allclose(item["image"], quantised[k], atol=1e-6)
            assert item["mask"].dtype == torch.float32 and torch.equal(item["mask"], masks[k])
            assert item["prompt"] == f"polyp {k}"
    # the same folder is an evaluation pairs folder (the one reader)
    pairs = load_pairs(out)
    assert pairs.names == ["00000", "00001", "00002", "00003"]
    assert torch.allclose(pairs.images, quantised, atol=1e-6) and torch.equal(pairs.masks, masks)

    rgb, rgb_masks = _generated(3, c=3)
    out3 = save_pairs(tmp_path / "rgb", rgb, rgb_masks.bool(), prompt="a polyp", names=["x", "y", "z"])
    ds = PairDataset(build_pair_cache(out3, 8, val_fraction=0.0, cache_root=tmp_path / "cache", log=log))
    assert ds[0]["image"].shape == (3, 8, 8) and ds.prompts == ["a polyp"] * 3 and ds.names == ["x", "y", "z"]
    back = load_pairs(out3)  # RGB read back as (N, 3, H, W)
    assert back.names == ["x", "y", "z"] and back.channels == 3
    assert torch.allclose(back.images, torch.round((rgb + 1) * 127.5) / 127.5 - 1, atol=1e-6)
    assert torch.equal(back.masks, rgb_masks)


def test_generated_pairs_bad_inputs(tmp_path):
    images, masks = _generated(2)
    save_pairs(tmp_path / "g", images, masks)
    with pytest.raises(FileExistsError, match="already holds 5 pair file"):
        save_pairs(tmp_path / "g", images, masks)
    save_pairs(tmp_path / "g", images[:1], masks[:1], overwrite=True)
    assert len(find_pairs(tmp_path / "g", log=Log())) == 1
    for kwargs, match in (({"images": images * 2}, r"outside \[-1, 1\]; rescale first.*clamp"),
                          ({"masks": masks * 0.5}, "masks are not binary"),
                          ({"images": images.repeat(1, 2, 1, 1)}, r"C = 1 \(grey\) or 3 \(RGB\)"),
                          ({"masks": masks[:, :, :8]}, "masks have shape"),
                          ({"names": ["a", "a"]}, "distinct names"),
                          ({"names": ["a", "../b"]}, "not plain file names"),
                          ({"prompt": ["only one"]}, "prompt must be one string"),
                          ({"fmt": "jpg"}, "fmt='jpg'")):
        with pytest.raises(PairsError, match=match):
            save_pairs(tmp_path / "h", **{"images": images, "masks": masks, **kwargs})


# --------------------------------------------------------------------------------------------------
# The embedded MNI152 pairs

def test_mni152_lesion_pairs(tmp_path):
    log = Log()
    cache = mni152_pairs(32, n_subjects=3, cache_root=tmp_path, log=log)
    meta = json.loads((cache / "meta.json").read_text())
    assert meta["synthetic"] is True and "MNI152 template with synthetic lesions" in meta["description"]
    assert meta["channels"] == 1 and "SYNTHETIC" in meta["note"]
    lesion_cache = tmp_path / meta["settings"]["source_cache"]
    lesion_meta = json.loads((lesion_cache / "meta.json").read_text())
    assert lesion_meta["split_mode"] == "subjects"
    assert meta["subjects"]["val"] == sorted(n for n, c in lesion_meta["subjects"].items() if c.get("split") == "val")
    assert not set(meta["subjects"]["train"]) & set(meta["subjects"]["val"])
    for split in ("train", "val"):
        ds = PairDataset(cache, split)
        assert len(ds) == meta["counts"][split] > 0
        item = ds[0]
        assert item["image"].shape == item["mask"].shape == (1, 32, 32)
        assert ds.images.dtype == torch.uint8 and set(torch.unique(ds.masks).tolist()) == {0, 1}
        assert (ds.masks.flatten(1).sum(1) > 0).all()  # only slices with a lesion
        assert -1.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
        assert item["prompt"] == meta["prompt"] and item["name"].startswith("synth")
    assert mni152_pairs(32, n_subjects=3, cache_root=tmp_path, log=log) == cache and "reusing" in log[-1]
    with pytest.raises(PairsError, match="n_subjects=3 only applies to kind='lesion'"):
        mni152_pairs(32, kind="tissue", n_subjects=3, cache_root=tmp_path, log=log)
    with pytest.raises(PairsError, match="kind='brain': use 'lesion'"):
        mni152_pairs(32, kind="brain", cache_root=tmp_path, log=log)


def test_mni152_tissue_pairs(tmp_path):
    cache = mni152_pairs(32, kind="tissue", cache_root=tmp_path, log=Log())
    meta = json.loads((cache / "meta.json").read_text())
    assert meta["synthetic"] is False and "white-matter" in meta["description"]
    ds = PairDataset(cache)
    assert len(ds) > 0 and (ds.masks.flatten(1).sum(1) > 0).all() and ds[0]["image"].shape == (1, 32, 32)
