"""Train / val splits of 2D pairs that do not leak: frames of one video sequence stay on one side.

CVC-ClinicDB's 612 frames (Bernal et al., "WM-DOVA maps for accurate polyp highlighting in colonoscopy",
CMIG 2015) come from 29 colonoscopy video sequences; neighbouring frames of a sequence are near copies, so a
random frame split puts almost the same image on both sides. The frames are numbered 1..612 in sequence order
and each sequence is a contiguous range; :data:`CVC_CLINICDB_SEQUENCES` lists the 29 ranges as the dataset's
distribution documents them (reproduced in the dataset card github.com/dataset-ninja/cvc-612, ``src/convert.py``,
whose sequence tags come from these ranges). A frame named by its number (``12.png``, ``12.tif``, as the
official PNG/TIF folders and PraNet's TrainDataset / TestDataset name them) gets its sequence from this table.

Kvasir-SEG (one image per polyp finding, no published sequence ids), ISIC 2016/2018 (one image per lesion
id in the challenge data) and PraNet's Kvasir frames have no such structure to group by: their split is by
image, and the manifest says so.
"""
from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

# (first, last) frame number of each of CVC-ClinicDB's 29 sequences, inclusive; together 1..612
CVC_CLINICDB_SEQUENCES = (
    (1, 25), (26, 50), (51, 67), (68, 78), (79, 103), (104, 126), (127, 151), (152, 177), (178, 199),
    (200, 205), (206, 227), (228, 252), (253, 277), (278, 297), (298, 317), (318, 342), (343, 363), (364, 383),
    (384, 408), (409, 428), (429, 447), (448, 466), (467, 478), (479, 503), (504, 528), (529, 546), (547, 571),
    (572, 591), (592, 612),
)
_STARTS = np.array([a for a, _ in CVC_CLINICDB_SEQUENCES])
NO_STRUCTURE = {
    "kvasir-seg": "Kvasir-SEG publishes no video-sequence ids (one image per finding): split by image",
    "isic2018": "ISIC images are one per lesion in the challenge data: split by image",
}


def cvc_sequence(name: str) -> int | None:
    """The CVC-ClinicDB sequence (1..29) of the frame called ``name`` ("12", "12.png"), or None when the name
    is not a frame number in 1..612."""
    m = re.fullmatch(r"0*(\d+)(\.\w+)?", str(name))
    if not m or not 1 <= int(m.group(1)) <= CVC_CLINICDB_SEQUENCES[-1][1]:
        return None
    return int(np.searchsorted(_STARTS, int(m.group(1)), side="right"))


def groups_for(layout: str, names: list[str]) -> tuple[list[str], str]:
    """One group label per pair (pairs of a group stay on one side of the split) and what the split is by."""
    if layout in ("cvc-clinicdb", "pranet"):
        seq = [cvc_sequence(n) for n in names]
        known = sum(s is not None for s in seq)
        if layout == "cvc-clinicdb" and known < len(names):
            return list(names), ("by frame: MAY LEAK - CVC-ClinicDB frames come from 29 video sequences, but "
                                 f"{len(names) - known} of {len(names)} names are not frame numbers 1..612, so their "
                                 "sequence is unknown")
        if known:
            groups = [f"cvc-seq{s:02d}" if s is not None else f"image:{n}" for n, s in zip(names, seq)]
            what = f"by CVC-ClinicDB video sequence ({known} frames in {len(set(s for s in seq if s))} sequences)"
            return groups, what + (f", the other {len(names) - known} pairs by image" if known < len(names) else "")
    return list(names), NO_STRUCTURE.get(layout, "by image (no sequence structure known for this layout)")


def split(groups: list[str], val_fraction: float, seed: int, source: str,
          error: Callable[[str], Exception] = ValueError) -> np.ndarray:
    """Boolean 'is val' per pair: whole groups, in a seeded random order, go to val until it holds at least
    round(val_fraction * n) pairs (at least 1 when val_fraction > 0), never taking the last training pair. With
    one group per pair this is a seeded random permutation's first round(val_fraction * n) pairs."""
    n = len(groups)
    target = max(1, round(val_fraction * n)) if val_fraction > 0 else 0
    if target and n - target < 1:
        raise error(f"{source}: {n} pair(s) leave no training pair with val_fraction={val_fraction}; add pairs or "
                    f"lower val_fraction (0 = no val split).")
    labels = list(dict.fromkeys(groups))
    index = {g: i for i, g in enumerate(labels)}
    gid = np.array([index[g] for g in groups], dtype=np.int64)
    is_val = np.zeros(n, bool)
    for g in np.random.default_rng(seed).permutation(len(labels)) if target else ():
        if is_val.sum() >= target:
            break
        with_g = is_val | (gid == g)
        if not with_g.all():  # never the last training group
            is_val = with_g
    if target and not is_val.any():
        raise error(f"{source}: all {n} pair(s) are in one group ({labels[0]}), so no val split keeps them apart; "
                    f"add pairs of other sequences or set val_fraction=0.")
    return is_val
