"""Data settings that name a Kaggle dataset (``kaggle:OWNER/SLUG``): attached on push, found at their mount
inside the kernel, and clear errors everywhere else (medkit.data.locate)."""
from __future__ import annotations

import json

import pytest
from test_kaggle import FakeApi, offline, read_kernel  # noqa: F401 - offline is a fixture

from medkit import grid
from medkit import kaggle as K
from medkit.data import fixtures, locate

ISIC = "tschandl/isic2018-challenge-task1-data-segmentation"


def test_kaggle_refs_are_found_in_nested_parameters_once_each():
    params = {"data": "kaggle:debeshjha1/kvasirseg", "layout": "auto",
              "params": {"test_data": f"kaggle:{ISIC}/ISIC2018_Task1-2_Test_Input", "again": "kaggle:debeshjha1/kvasirseg"},
              "volumes": [1, 2], "plain": "/kaggle/input/x", "fixture": "fixture:pranet"}
    assert locate.kaggle_refs(params) == ["debeshjha1/kvasirseg", ISIC]
    assert locate.parse_kaggle(f"kaggle:{ISIC}/a/b") == (ISIC, "a/b")
    assert locate.parse_kaggle("/kaggle/input") is None and locate.parse_kaggle(3) is None
    for bad in ("kaggle:kvasirseg", "kaggle:me/../etc", "kaggle:me/sl ug", "kaggle:"):
        with pytest.raises(locate.DataLocationError, match="kaggle:OWNER/SLUG"):
            locate.parse_kaggle(bad)


def test_resolve_finds_both_kaggle_mount_layouts(tmp_path, monkeypatch):
    monkeypatch.setattr(locate, "KAGGLE_INPUT", tmp_path)
    new = tmp_path / "datasets" / "debeshjha1" / "kvasirseg"
    (new / "Kvasir-SEG").mkdir(parents=True)
    assert locate.resolve("kaggle:debeshjha1/kvasirseg") == str(new)
    assert locate.resolve("kaggle:debeshjha1/kvasirseg/Kvasir-SEG") == str(new / "Kvasir-SEG")
    old = tmp_path / "cvcclinicdb"  # an older kernel's mount: /kaggle/input/<slug>
    old.mkdir()
    assert locate.resolve("kaggle:balraj98/cvcclinicdb") == str(old)
    with pytest.raises(locate.DataLocationError, match=r"has no folder 'images'.*\['Kvasir-SEG'\]"):
        locate.resolve("kaggle:debeshjha1/kvasirseg/images")
    with pytest.raises(locate.DataLocationError, match=f"{ISIC} is not attached.*Data panel.*--dataset {ISIC}"):
        locate.resolve(f"kaggle:{ISIC}")
    # anything else passes through, fixtures are written as before
    assert locate.resolve("/data/kvasir") == "/data/kvasir" and locate.resolve("mni152") == "mni152"
    assert locate.resolve("fixture:kvasir-seg", cache_root=tmp_path / "c") == \
        fixtures.resolve("fixture:kvasir-seg", cache_root=tmp_path / "c")


def test_resolve_off_kaggle_says_how_to_download(tmp_path, monkeypatch):
    monkeypatch.setattr(locate, "KAGGLE_INPUT", tmp_path / "absent")
    with pytest.raises(locate.DataLocationError, match=f"not a Kaggle kernel.*kaggle datasets download -d {ISIC}"):
        locate.resolve(f"kaggle:{ISIC}")


def test_push_attaches_the_datasets_that_parameters_name(offline, tmp_path):  # noqa: F811
    r = K.push("siamese/01_train", params={"profile": "t4", "backend": "sd15", "data": "kaggle:debeshjha1/kvasirseg"},
               datasets=["me/extra"], owner="me", dry_run=True, out_dir=tmp_path / "k", log=lambda m: None)
    assert r["metadata"]["dataset_sources"] == ["me/extra", "debeshjha1/kvasirseg", "me/medkit-src"]
    meta, nb = read_kernel(tmp_path / "k")
    assert nb.metadata.papermill.parameters["data"] == "kaggle:debeshjha1/kvasirseg"  # resolved in the kernel
    with pytest.raises(K.KaggleError, match="kaggle:OWNER/SLUG"):
        K.push("siamese/01_train", params={"data": "kaggle:kvasirseg"}, owner="me", dry_run=True,
               out_dir=tmp_path / "k2", log=lambda m: None)


def test_grids_name_their_kaggle_datasets_or_refuse_without_one(offline, tmp_path):  # noqa: F811
    # ISIC 2018: the t4 profile names the public dataset; every kernel of the grid gets it attached
    api = FakeApi(["complete"] * 3)
    grid.run_grid("siamese-isic", "t4", tmp_path / "isic", backend="kaggle", parallel=1, log=lambda m: None,
                  api=api, owner="me", poll_s=0, sleep=lambda s: None)
    metas = [m for m, _ in api.pushed]
    assert len(metas) == 3 and all(ISIC in m["dataset_sources"] for m in metas)
    # PraNet's split has no public copy the kit names: without --dataset the grid stops before any push
    api = FakeApi(["complete"] * 3)
    with pytest.raises(grid.GridError, match=r"reads data='/kaggle/input', test_data='/kaggle/input'.*PraNet.*"
                                             r"--dataset OWNER/SLUG"):
        grid.run_grid("siamese-polyps", "t4", tmp_path / "polyps", backend="kaggle", log=lambda m: None, api=api,
                      owner="me", poll_s=0, sleep=lambda s: None)
    assert api.pushed == []
    api = FakeApi(["complete"] * 2)
    grid.run_grid("siamese-polyps", "t4", tmp_path / "polyps", backend="kaggle", datasets=("me/pranet",),
                  log=lambda m: None, api=api, owner="me", poll_s=0, sleep=lambda s: None)
    assert [m["dataset_sources"][0] for m, _ in api.pushed] == ["me/pranet", "me/pranet"]


def test_siamese_templates_attach_the_public_datasets():
    for folder in ("siamese-01-train", "siamese-04-segmentation"):
        meta = json.loads((K.account.TEMPLATE_DIR / folder / "kernel-metadata.json").read_text())
        assert meta["dataset_sources"][1:] == list(locate.KAGGLE_DATASETS.values())
    meta = json.loads((K.account.TEMPLATE_DIR / "siamese-02-sample" / "kernel-metadata.json").read_text())
    assert meta["dataset_sources"] == ["YOUR_KAGGLE_USERNAME/medkit-src"]
