"""Train/val splits of 2D pairs by video sequence (medkit.data.pair_splits): the CVC-ClinicDB table, the
grouped split, and the pair cache that uses it."""
from __future__ import annotations

import json

import numpy as np
import pytest

from medkit.data import pair_splits
from medkit.data.pairs import PairsError, build_pair_cache
from test_pairs import Log, folder_pairs


def test_cvc_table_covers_612_frames_in_29_contiguous_sequences():
    seqs = pair_splits.CVC_CLINICDB_SEQUENCES
    assert len(seqs) == 29 and seqs[0][0] == 1 and seqs[-1][1] == 612
    assert all(b[0] == a[1] + 1 and a[0] <= a[1] for a, b in zip(seqs, seqs[1:]))  # no gap, no overlap
    assert sum(b - a + 1 for a, b in seqs) == 612
    for k, (a, b) in enumerate(seqs, start=1):
        assert pair_splits.cvc_sequence(str(a)) == k and pair_splits.cvc_sequence(f"{b}.png") == k
    for name in ("0", "613", "cju0qkwl35piu0993l0dewei2", "12a", ""):
        assert pair_splits.cvc_sequence(name) is None
    assert pair_splits.cvc_sequence("007") == 1


def test_grouped_split_keeps_each_sequence_on_one_side():
    names = [str(i) for i in range(1, 613)]
    groups, by = pair_splits.groups_for("cvc-clinicdb", names)
    assert by.startswith("by CVC-ClinicDB video sequence (612 frames in 29 sequences)")
    is_val = pair_splits.split(groups, 0.1, seed=0, source="cvc")
    assert round(0.1 * 612) <= is_val.sum() < round(0.1 * 612) + 25  # whole sequences: at most one more
    val_seqs = {g for g, v in zip(groups, is_val) if v}
    train_seqs = {g for g, v in zip(groups, is_val) if not v}
    assert val_seqs and not val_seqs & train_seqs
    assert np.array_equal(is_val, pair_splits.split(groups, 0.1, seed=0, source="cvc"))
    assert not np.array_equal(is_val, pair_splits.split(groups, 0.1, seed=1, source="cvc"))


def test_split_by_image_equals_a_seeded_permutation_and_is_labelled():
    names = [f"cju{i}" for i in range(20)]
    groups, by = pair_splits.groups_for("kvasir-seg", names)
    assert "no video-sequence ids" in by and groups == names
    is_val = pair_splits.split(groups, 0.25, seed=3, source="k")
    expected = np.zeros(20, bool)
    expected[np.random.default_rng(3).permutation(20)[:5]] = True
    assert np.array_equal(is_val, expected)
    assert "split by image" in pair_splits.groups_for("isic2018", names)[1]
    # PraNet's TrainDataset: CVC frames (numbered) by sequence, Kvasir images by image
    groups, by = pair_splits.groups_for("pranet", ["1", "2", "30", "cju7"])
    assert groups == ["cvc-seq01", "cvc-seq01", "cvc-seq02", "image:cju7"] and "the other 1 pairs by image" in by
    with pytest.raises(ValueError, match="all 3 pair\\(s\\) are in one group"):
        pair_splits.split(["a", "a", "a"], 0.3, seed=0, source="x")
    with pytest.raises(ValueError, match="leave no training pair"):
        pair_splits.split(["a"], 0.5, seed=0, source="x")


def test_cvc_cache_split_by_sequence_or_warned(tmp_path):
    base = tmp_path / "CVC-ClinicDB"
    frames = [str(i) for i in (1, 2, 3, 26, 27, 51, 52, 68, 79, 80)]  # sequences 1, 2, 3, 4, 5
    folder_pairs(base / "PNG", frames, "Original", "Ground Truth")
    log = Log()
    cache = build_pair_cache(base, 8, val_fraction=0.3, cache_root=tmp_path / "cache", log=log)
    meta = json.loads((cache / "meta.json").read_text())
    assert meta["split"].startswith("by CVC-ClinicDB video sequence (10 frames in 5 sequences)")
    seq = {p["name"]: pair_splits.cvc_sequence(p["name"]) for part in ("train", "val") for p in meta["pairs"][part]}
    val_seqs = {seq[p["name"]] for p in meta["pairs"]["val"]}
    assert val_seqs and not val_seqs & {seq[p["name"]] for p in meta["pairs"]["train"]}
    assert "split by CVC-ClinicDB video sequence" in log[-1]

    renamed = tmp_path / "renamed"
    folder_pairs(renamed / "PNG", ["frame_a", "frame_b", "frame_c"], "Original", "Ground Truth")
    log = Log()
    cache = build_pair_cache(renamed, 8, val_fraction=0.3, cache_root=tmp_path / "cache", log=log)
    assert "MAY LEAK" in json.loads((cache / "meta.json").read_text())["split"]
    assert any(m.startswith("pairs: warning: train/val split by frame: MAY LEAK") for m in log)
    with pytest.raises(PairsError, match="all 2 pair\\(s\\) are in one group"):
        one = tmp_path / "one"
        folder_pairs(one / "PNG", ["1", "2"], "Original", "Ground Truth")
        build_pair_cache(one, 8, val_fraction=0.5, cache_root=tmp_path / "cache", log=Log())
