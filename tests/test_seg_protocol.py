"""Siamese-Diffusion's segmentation protocol (medkit.eval.seg_protocol) on SYNTHETIC RGB fixtures in the
datasets' own layouts (medkit.data.fixtures): PraNet's TrainDataset/TestDataset, ISIC 2016/2018, Kvasir-SEG,
CVC-ClinicDB PNG and TIF, prompt.json."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medkit.data import PairsError, check_pairs, fixtures, find_pairs
from medkit.data.pairs import PairDataset, build_pair_cache
from medkit.eval import seg_protocol as sp

TINY = dict(seeds=2, steps=2, batch_size=4, lr=1e-3, progress=False)


@pytest.mark.parametrize("layout, expect, n", [
    ("kvasir-seg", "kvasir-seg", 4), ("cvc-clinicdb", "cvc-clinicdb", 4), ("isic2018", "isic2018", 4),
    ("isic2016", "isic2016", 4), ("pranet", "pranet", 4), ("prompt-json", "prompt-json", 4)])
def test_fixtures_are_found_in_their_layout_rgb(tmp_path, layout, expect, n):
    root = fixtures.write_layout(tmp_path / layout, layout, n=n, size=32)
    found = find_pairs(root, log=lambda m: None) if layout != "pranet" else find_pairs(root / "TrainDataset",
                                                                                         log=lambda m: None)
    assert found.layout == expect and len(found) == n
    cache = build_pair_cache(found.root, 16, layout=expect, val_fraction=0.0, cache_root=tmp_path / "c",
                             log=lambda m: None)
    ds = PairDataset(cache, "train")
    assert ds.images.shape == (n, 3, 16, 16) and set(ds.masks.unique().tolist()) == {0, 1}
    # the drawn polyp / lesion is where its mask is: the mask region differs in colour from the rest
    x, m = ds.images.float(), ds.masks.bool().expand(-1, 3, -1, -1)
    assert (x[m].view(-1) - x[~m].view(-1).mean()).abs().mean() > 20


def test_isic_splits_are_chosen_not_mixed(tmp_path):
    fixtures.write_layout(tmp_path, "isic2018", n=3, size=16, split="Training")
    fixtures.write_layout(tmp_path, "isic2018", n=2, size=16, split="Test", seed=1)
    log = []
    assert len(find_pairs(tmp_path, log=log.append)) == 3 and any("ignoring the Test split" in m for m in log)
    assert len(find_pairs(tmp_path, split="Test", log=log.append)) == 2
    with pytest.raises(PairsError, match=r"no Validation split of isic2018 .*\['Test', 'Training'\]"):
        find_pairs(tmp_path, split="Validation", log=log.append)


def test_make_segmenter_by_name_factory_and_errors():
    net = sp.make_segmenter("unet")(3)
    assert net(torch.zeros(2, 3, 16, 16)).shape == (2, 1, 16, 16)
    att = sp.make_segmenter("AttentionUnet")(1)  # a MONAI 2D network by name (channels/strides filled in)
    assert att(torch.zeros(1, 1, 16, 16)).shape == (1, 1, 16, 16)
    user = sp.make_segmenter("torch.nn:Conv2d", kernel_size=1)  # "package.module:function"
    assert isinstance(user(3), torch.nn.Conv2d) and user(3).in_channels == 3
    with pytest.raises(ValueError, match="not a network of monai.networks.nets"):
        sp.make_segmenter("SANet")
    with pytest.raises(ValueError, match="cannot import nope"):
        sp.make_segmenter("torch.nn:nope")


def four_out(in_channels, out_channels):
    return torch.nn.Conv2d(in_channels, 4, 1)


def test_make_segmenter_refuses_more_than_one_output_channel():
    with pytest.raises(ValueError, match="gives 4 output channels; it must give 1"):
        sp.make_segmenter("test_seg_protocol:four_out")


def _pairs(n, seed, size=16):
    imgs, masks = zip(*(fixtures.synthetic_pair(size, "polyp", seed * 1000 + i) for i in range(n)))
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 127.5 - 1
    return check_pairs(x, torch.from_numpy(np.stack(masks))[:, None] > 0)


def test_arms_volumes_and_copy_paste():
    real, syn = _pairs(4, 0), {"real masks": _pairs(12, 1), "random masks": _pairs(8, 2)}
    arms = sp.make_arms(real, syn, volumes=(1, 2))
    assert list(arms) == ["real", "Copy-Paste", "real+1x real masks", "real+2x real masks", "real+1x random masks",
                          "real+2x random masks"]
    assert [(a["n_real"], a["n_synthetic"], len(a["images"])) for a in arms.values()] == [
        (4, 0, 4), (8, 0, 8), (4, 4, 8), (4, 8, 12), (4, 4, 8), (4, 8, 12)]
    assert torch.equal(arms["Copy-Paste"]["images"][4:], real.images)  # the real set twice, nothing new
    with pytest.raises(PairsError, match=r"volume 3x needs 12 generated pairs from random masks .* there are 8"):
        sp.make_arms(real, syn, volumes=(3,))
    grey = check_pairs(real.images.mean(1, keepdim=True), real.masks)
    with pytest.raises(PairsError, match=r"generated pairs \(real masks\) are \(3, 16, 16\) but the real ones \(1, 16"):
        sp.make_arms(grey, {"real masks": syn["real masks"]})


def test_protocol_end_to_end_on_pranet_fixtures(tmp_path):
    """PraNet's TestDataset layout: every test set scored, Overall = all test images together, Table-2 layout."""
    root = fixtures.write_layout(tmp_path / "polyps", "pranet", n=6, size=32, n_test=2)
    tests = sp.load_test_sets(root, 16, 3, cache_root=tmp_path / "c", log=lambda m: None)
    assert list(tests) == list(sp.PRANET_TEST_SETS) and all(t.channels == 3 for t in tests.values())
    real, syn = _pairs(4, 0), {"real masks": _pairs(4, 1)}
    rows = sp.run_protocol(sp.make_arms(real, syn), tests, **TINY)
    again = sp.run_protocol(sp.make_arms(real, syn), tests, **TINY)
    assert [(r["arm"], r["test_set"], r["mdice"]) for r in rows] == [(r["arm"], r["test_set"], r["mdice"]) for r in again]
    n_total = sum(len(t.images) for t in tests.values())
    for arm in ("real", "Copy-Paste", "real+1x real masks"):
        per = [r for r in rows if r["arm"] == arm and r["seed"] == 0]
        overall = next(r for r in per if r["test_set"] == "Overall")
        assert overall["n_images"] == n_total
        # Overall weights the sets by images (here no test mask is empty, so no NaN is dropped)
        weighted = sum(r["mdice"] * r["n_images"] for r in per if r["test_set"] != "Overall") / n_total
        assert overall["mdice"] == pytest.approx(weighted, abs=1e-9)
    summary = sp.summarise(rows)
    md = sp.table_markdown(summary, segmenter="unet")
    assert md.splitlines()[0].startswith("| arm | CVC-300 mDice / mIoU | CVC-ClinicDB") and "| Copy-Paste |" in md
    assert "SANet" in md and "not unet" in md
    sec = sp.write_report(tmp_path / "out", rows, summary, segmenter="unet", protocol="polyps", config={},
                          dataset="fixture")
    assert sec["Copy-Paste.Overall.mdice_minus_real"]["n"] == 2
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())["segmentation"]
    assert saved["real.Kvasir.mdice"]["dataset"].startswith("Kvasir (")


def test_test_sets_missing_and_isic(tmp_path):
    with pytest.raises(PairsError, match="no PraNet test set under"):
        sp.find_test_sets(tmp_path)
    fixtures.write_layout(tmp_path / "isic", "isic2018", n=3, size=16, split="Training")
    fixtures.write_layout(tmp_path / "isic", "isic2018", n=2, size=16, split="Test", seed=1)
    tests = sp.load_test_sets(tmp_path / "isic", 16, 3, layout="isic2018", cache_root=tmp_path / "c",
                              log=lambda m: None)
    assert list(tests) == ["isic2018 Test"] and len(tests["isic2018 Test"].images) == 2


def test_protocol_grid_files_resolve_per_profile():
    from medkit import grid

    for name, cells in (("siamese-polyps", ["table2"]), ("siamese-isic", ["table3", "fig7"])):
        for profile in grid.PROFILES:
            spec = grid.load_grid(name, profile)
            assert list(spec["cells"]) == cells and spec["shared_stages"] == ["01_train", "02_sample"]
            p = spec["shared_params"]
            assert p["backend"] == ("sd15" if profile == "t4" else "scratch")
            t4_data = {"siamese-polyps": "/kaggle/input",  # the user's own upload of PraNet's split (--dataset)
                       "siamese-isic": "kaggle:tschandl/isic2018-challenge-task1-data-segmentation"}[name]
            assert p["data"] == p["test_data"] == (t4_data if profile == "t4" else f"fixture:{p['layout']}")
            assert p["timestep_spacing"] == "leading" and p["val_fraction"] == 0.0  # the official sampler's spacing
        fig7 = grid.load_grid("siamese-isic", "t4")["cells"]["fig7"]["params"]
        assert fig7["volumes"] == [1, 2, 3, 4] and fig7["sources"] == ["random_masks"]
        assert fig7["n_generate"] >= 4 * 2594  # every ISIC 2018 training mask 4 times


def test_polyp_protocol_grid_end_to_end_in_smoke(tmp_path):
    """Table 2's protocol through the grid runner on the SYNTHETIC PraNet fixture: the generator trained on the
    TrainDataset, images generated from its masks, real / Copy-Paste / real + 1x, five test sets + Overall."""
    import time

    import pandas as pd

    from medkit import cli

    out = tmp_path / "polyps"
    t0 = time.perf_counter()
    assert cli.main(["grid", "run", "siamese-polyps", "--profile", "smoke", "--out", str(out)]) == 0
    seconds = time.perf_counter() - t0
    df = pd.read_csv(out / "results.csv")
    assert list(df["cell"]) == ["table2"] and (df["status"] == "done").all()
    for col in ("segmentation.real.Overall.mdice", "segmentation.Copy-Paste.Overall.mdice_minus_real",
                "segmentation.real+1x real masks.Overall.mdice_minus_real"):
        assert df[col].notna().all(), col
    m = json.loads((out / "table2" / "metrics.json").read_text())
    cfg = json.loads((out / "table2" / "config" / "train.json").read_text())
    assert cfg["image_channels"] == 3 and cfg["data"] == "fixture:pranet"
    assert m["sampling"]["timestep_spacing"] == "leading"
    seg = m["segmentation"]
    assert {f"real.{s}.mdice" for s in sp.PRANET_TEST_SETS} <= set(seg)
    md = (out / "table2" / "segmentation" / "protocol.md").read_text()
    assert "| Copy-Paste |" in md and "| real+1x real masks |" in md and "Overall mDice - real" in md
    print(f"polyp protocol, smoke, end to end: {seconds:.0f} s")
    assert seconds < 180  # the CI budget for this run
