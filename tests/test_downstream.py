"""The downstream segmentation test (medkit.eval.downstream): pairs folders, statistics, end to end."""
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medkit.data.pairs_io import PairsError, check_pairs, load_pairs, save_pairs
from medkit.eval import downstream as ds
from medkit.eval.downstream import augment_pairs, paired_difference, run_downstream, summarise, t_interval, train_segmenter
from medkit.metrics.masks import blob_masks

TINY = dict(steps=2, batch_size=4, lr=1e-3, channels=(4, 8, 16), strides=(2, 2), num_res_units=1, progress=False)


def toy_pairs(n, seed, size=16, rgb=False):
    """Blob masks; grey images bright inside the blob, or RGB ones reddish inside and bluish outside."""
    m = torch.from_numpy(blob_masks(n, size, seed=seed, radius=(2.0, 4.0))).float()[:, None]
    g = torch.Generator().manual_seed(seed)
    if rgb:
        colour_in, colour_out = torch.tensor([0.8, -0.2, -0.4]), torch.tensor([-0.5, -0.1, 0.5])
        x = m * colour_in[:, None, None] + (1 - m) * colour_out[:, None, None]
        x = (x + 0.2 * torch.randn(n, 3, size, size, generator=g)).clamp(-1, 1)
    else:
        x = (m * 1.2 - 0.6 + 0.2 * torch.randn(m.shape, generator=g)).clamp(-1, 1)
    return check_pairs(x, m, f"toy{seed}")


# --------------------------------------------------------------------------------------- end to end
def test_smoke_profile_end_to_end(tmp_path):
    out = tmp_path / "ds"
    assert ds.main(["--profile", "smoke", "--out", str(out), "--no-progress"]) == 0
    for f in ("downstream.md", "downstream.csv", "downstream_seeds.csv", "downstream.png", "metrics.json"):
        assert (out / f).is_file(), f
    summary = pd.read_csv(out / "downstream.csv")
    assert summary["arm"].tolist() == ["real", "real+1x", "synthetic"]
    assert summary["n_synthetic"].tolist() == [0, 8, 8] and (summary["seeds"] == 3).all()
    seeds = pd.read_csv(out / "downstream_seeds.csv")
    assert len(seeds) == 9 and sorted(set(seeds["seed"])) == [0, 1, 2]
    sec = json.loads((out / "metrics.json").read_text())["downstream"]
    e = sec["real+1x.mdice_minus_real"]
    assert e["n"] == 3 and len(e["ci95"]) == 2 and "MNI152" in e["dataset"]
    assert sec["real.miou"]["n"] == 3 and "augmentation baseline" in sec["synthetic_source"]
    assert sec["config"]["profile"] == "smoke"
    md = (out / "downstream.md").read_text()
    assert "not a generative model" in md and "| real+1x | 8 | 8 |" in md


def test_run_downstream_arms_and_determinism():
    real, held, syn = toy_pairs(6, 1), toy_pairs(5, 2), toy_pairs(20, 3)
    rows = run_downstream(real, held, syn, k=[1, 3], seeds=2, **TINY)
    assert [(r["arm"], r["seed"]) for r in rows[:4]] == [("real", 0), ("real+1x", 0), ("real+3x", 0), ("synthetic", 0)]
    assert [(r["n_real"], r["n_synthetic"]) for r in rows[:4]] == [(6, 0), (6, 6), (6, 18), (0, 18)]
    again = run_downstream(real, held, syn, k=[1, 3], seeds=2, **TINY)
    key = ("arm", "seed", "mdice", "miou")
    assert [tuple(r[k] for k in key) for r in rows] == [tuple(r[k] for k in key) for r in again]
    s = summarise(rows)
    assert [x["arm"] for x in s] == ["real", "real+1x", "real+3x", "synthetic"] and "mdice_diff" in s[1]


def test_train_segmenter_same_seed_same_weights():
    p = toy_pairs(6, 1)
    a = train_segmenter(p.images, p.masks, steps=3, batch_size=4, lr=1e-3, seed=5, channels=(4, 8, 16))
    b = train_segmenter(p.images, p.masks, steps=3, batch_size=4, lr=1e-3, seed=5, channels=(4, 8, 16))
    c = train_segmenter(p.images, p.masks, steps=3, batch_size=4, lr=1e-3, seed=6, channels=(4, 8, 16))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_run_downstream_bad_settings():
    real, held = toy_pairs(6, 1), toy_pairs(4, 2)
    with pytest.raises(PairsError, match="k=3 needs 18 synthetic pairs .* has 10"):
        run_downstream(real, held, toy_pairs(10, 3), k=[3], seeds=2, **TINY)
    with pytest.raises(ValueError, match="seeds=1"):
        run_downstream(real, held, toy_pairs(10, 3), k=[1], seeds=1, **TINY)
    with pytest.raises(PairsError, match=r"differ in \(channels, height, width\): real \(1, 16, 16\), held-out "
                                         r"\(1, 32, 32\)"):
        run_downstream(real, toy_pairs(4, 2, size=32), toy_pairs(10, 3), k=[1], seeds=2, **TINY)
    with pytest.raises(PairsError, match=r"synthetic \(3, 16, 16\).*all RGB"):
        run_downstream(real, held, toy_pairs(10, 3, rgb=True), k=[1], seeds=2, **TINY)


def test_rgb_pairs_folders_through_the_command_line(tmp_path):
    """Real, held-out and synthetic RGB pairs folders (PNG, as Kvasir/ISIC users have them): a 3-channel
    segmenter, the same report."""
    for name, (n, seed) in {"real": (6, 1), "held": (4, 2), "syn": (6, 3)}.items():
        p = toy_pairs(n, seed, rgb=True)
        save_pairs(tmp_path / name, p.images, p.masks)
    out = tmp_path / "out"
    assert ds.main(["--profile", "smoke", "--out", str(out), "--no-progress", "--real", str(tmp_path / "real"),
                    "--heldout", str(tmp_path / "held"), "--synthetic", str(tmp_path / "syn"), "--n-real", "6",
                    "--k", "1", "--seeds", "2", "--steps", "2"]) == 0
    sec = json.loads((out / "metrics.json").read_text())["downstream"]
    assert sec["config"]["image_channels"] == 3 and sec["real.mdice"]["n"] == 2
    assert pd.read_csv(out / "downstream.csv")["arm"].tolist() == ["real", "real+1x", "synthetic"]
    net = train_segmenter(load_pairs(tmp_path / "real").images, load_pairs(tmp_path / "real").masks, steps=1,
                          batch_size=2, lr=1e-3, seed=0, channels=(4, 8, 16))
    assert net.model[0].conv.unit0.conv.in_channels == 3  # the segmenter takes the images' channels


# --------------------------------------------------------------------------------------- statistics
def test_paired_difference_ci_by_hand():
    arm, ref = [0.80, 0.83, 0.79], [0.78, 0.80, 0.80]
    d = [0.02, 0.03, -0.01]
    mean = sum(d) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 2)
    t975_2 = 4.302652729911275  # Student t, 0.975 quantile, 2 degrees of freedom
    half = t975_2 * sd / math.sqrt(3)
    r = paired_difference(arm, ref)
    assert r["mean"] == pytest.approx(mean) and r["std"] == pytest.approx(sd)
    assert r["ci95"] == pytest.approx([mean - half, mean + half]) and r["n"] == 3
    assert r["diffs"] == pytest.approx(d)
    assert math.isnan(t_interval([0.5])["std"])
    with pytest.raises(ValueError, match="pair them"):
        paired_difference([1, 2], [1, 2, 3])


# --------------------------------------------------------------------------------------- pairs folders
@pytest.mark.parametrize("fmt", ["npy", "png"])
def test_pairs_round_trip(tmp_path, fmt):
    p = toy_pairs(5, 1)
    save_pairs(tmp_path / "pairs", p.images, p.masks, fmt=fmt, names=[f"case{i}" for i in range(5)])
    assert sorted(f.name for f in (tmp_path / "pairs" / "masks").iterdir())[0] == f"case0.{fmt}"
    q = load_pairs(tmp_path / "pairs", allow_empty=True)
    assert q.names == [f"case{i}" for i in range(5)]
    assert torch.equal(q.masks, p.masks)
    if fmt == "npy":
        assert torch.equal(q.images, p.images)
    else:  # 8-bit quantisation: half a grey level
        assert (q.images - p.images).abs().max() <= 1 / 127.5 / 2 + 1e-6
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_pairs(tmp_path / "pairs", p.images, p.masks, fmt=fmt)
    save_pairs(tmp_path / "pairs", p.images[:2], p.masks[:2], fmt="npy", overwrite=True)
    assert len(load_pairs(tmp_path / "pairs", allow_empty=True).names) == 2


def test_png_mask_0_255_and_uint8_image(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    img = np.array([[0, 255], [128, 64]], np.uint8)
    Image.fromarray(img).save(tmp_path / "images" / "a.png")
    Image.fromarray(np.array([[0, 255], [255, 0]], np.uint8)).save(tmp_path / "masks" / "a.png")
    q = load_pairs(tmp_path)
    assert q.masks[0, 0].tolist() == [[0, 1], [1, 0]]
    assert torch.allclose(q.images[0, 0], torch.from_numpy(img / 127.5 - 1).float(), atol=1e-6)
    img16 = np.array([[0, 65535], [32768, 1000]], np.uint16)
    Image.fromarray(img16).save(tmp_path / "images" / "a.png")  # 16-bit grey
    q = load_pairs(tmp_path)
    assert torch.allclose(q.images[0, 0], torch.from_numpy(img16 / 32767.5 - 1).float(), atol=1e-6)
    rgb = np.stack([img, 255 - img, np.full_like(img, 7)], axis=-1)  # (H, W, 3) as PIL stores it
    Image.fromarray(rgb).save(tmp_path / "images" / "a.png")
    Image.fromarray(np.repeat(np.array([[0, 255], [255, 0]], np.uint8)[..., None], 3, -1)).save(tmp_path / "masks" / "a.png")
    q = load_pairs(tmp_path)  # RGB image channels first; an RGB mask with equal channels is one mask
    assert q.channels == 3 and q.masks.shape == (1, 1, 2, 2) and q.masks[0, 0].tolist() == [[0, 1], [1, 0]]
    assert torch.allclose(q.images[0], torch.from_numpy(rgb.transpose(2, 0, 1) / 127.5 - 1).float(), atol=1e-6)


def test_cli_real_needs_heldout(tmp_path):
    with pytest.raises(SystemExit, match="--real and --heldout go together"):
        ds.main(["--profile", "smoke", "--out", str(tmp_path), "--real", str(tmp_path)])


def _folder(tmp_path, n=3, size=8):
    d = tmp_path / "p"
    (d / "images").mkdir(parents=True)
    (d / "masks").mkdir()
    for i in range(n):
        np.save(d / "images" / f"{i}.npy", np.zeros((size, size), np.float32))
        m = np.zeros((size, size), np.uint8)
        m[2:5, 2:5] = 1
        np.save(d / "masks" / f"{i}.npy", m)
    return d


@pytest.mark.parametrize("breakit, msg", [
    (lambda d: (d / "masks" / "1.npy").unlink(), r"1 of 3 images .* have no mask .* \['1.npy'\]"),
    (lambda d: np.save(d / "masks" / "9.npy", np.zeros((8, 8))), r"1 masks .* have no image .* \['9.npy'\]"),
    (lambda d: np.save(d / "masks" / "0.npy", np.zeros((8, 9))), r"1 of 3 pairs .* size differs .* mask 8x9"),
    (lambda d: np.save(d / "masks" / "0.npy", np.full((8, 8), 0.3)), r"1 of 3 masks .* not binary.*threshold"),
    (lambda d: np.save(d / "masks" / "2.npy", np.zeros((8, 8))), r"1 of 3 masks .* empty .*allow_empty=True"),
    (lambda d: (d / "images" / "0.npy").write_bytes(b"not an array"), r"cannot read .*0.npy"),
    (lambda d: np.save(d / "images" / "0.npy", np.full((8, 8), 200.0)), r"outside \[-1, 1\].*x / 127.5 - 1"),
    (lambda d: Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(d / "images" / "0.png") or
     (d / "images" / "0.npy").unlink(), r"mixes grey and RGB images: 2 grey \(e.g. \['1.npy', '2.npy'\]\); 1 RGB "
                                        r"\(e.g. \['0.png'\]\)"),
    (lambda d: Image.fromarray(np.zeros((8, 8, 4), np.uint8)).save(d / "images" / "0.png") or
     (d / "images" / "0.npy").unlink(), r"PNG mode RGBA .*convert\('RGB'\)"),
    (lambda d: np.save(d / "images" / "0.npy", np.zeros((2, 8, 8))), r"0.npy: expected a numeric image array"),
    (lambda d: Image.fromarray(np.dstack([np.zeros((8, 8), np.uint8)] * 2 + [np.full((8, 8), 255, np.uint8)]))
     .save(d / "masks" / "0.png") or (d / "masks" / "0.npy").unlink(), r"a mask must have one channel"),
    (lambda d: np.save(d / "images" / "1.npy", np.zeros((6, 6))) or np.save(d / "masks" / "1.npy", np.ones((6, 6))),
     r"different sizes \(8x8: 2 .*6x6: 1"),
    (lambda d: Image.fromarray(np.zeros((8, 8), np.uint8)).save(d / "masks" / "0.png"), "both 0.npy and 0.png"),
    (lambda d: [f.unlink() for f in (d / "masks").iterdir()] and (d / "masks").rmdir(), "masks is not a folder"),
])
def test_load_pairs_errors(tmp_path, breakit, msg):
    d = _folder(tmp_path)
    breakit(d)
    with pytest.raises(PairsError, match=msg):
        load_pairs(d)


def test_empty_masks_allowed_on_request_and_minus_one_plus_one(tmp_path):
    d = _folder(tmp_path)
    np.save(d / "masks" / "2.npy", np.zeros((8, 8)))
    np.save(d / "masks" / "1.npy", np.where(np.eye(8) > 0, 1.0, -1.0))  # SLIM-Diff's {-1, +1}
    q = load_pairs(d, allow_empty=True)
    assert q.masks[2].sum() == 0 and q.masks[1, 0].tolist() == np.eye(8).tolist()


@pytest.mark.parametrize("images, masks, msg", [
    (torch.zeros(2, 1, 8, 8), torch.full((2, 1, 8, 8), 0.5), "not binary"),
    (torch.full((2, 1, 8, 8), 3.0), torch.zeros(2, 1, 8, 8), r"span \[3, 3\], outside \[-1, 1\]"),
    (torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 4), "masks have shape"),
    (torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8), r"one-channel mask"),
    (torch.zeros(2, 2, 8, 8), torch.zeros(2, 1, 8, 8), r"C = 1 \(grey\) or 3 \(RGB\)"),
    (torch.full((2, 1, 8, 8), math.nan), torch.zeros(2, 1, 8, 8), "NaN"),
])
def test_check_pairs_errors(images, masks, msg):
    with pytest.raises(PairsError, match=msg):
        check_pairs(images, masks)


def test_augment_pairs_seeded_binary_in_range():
    p = toy_pairs(4, 1, size=32)
    a, b = augment_pairs(p.images, p.masks, 8, seed=0), augment_pairs(p.images, p.masks, 8, seed=0)
    c = augment_pairs(p.images, p.masks, 8, seed=1)
    assert type(a.images) is torch.Tensor and a.images.shape == (8, 1, 32, 32)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks) and not torch.equal(a.images, c.images)
    assert a.images.min() >= -1 and a.images.max() <= 1 and set(a.masks.unique().tolist()) <= {0.0, 1.0}
