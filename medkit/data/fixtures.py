"""Small SYNTHETIC RGB image/mask pairs in the on-disk layouts the real datasets ship in, for tests and smoke runs.

Not data: drawn shapes that let the polyp and skin-lesion protocols run end to end without a download. A
"polyp" is a reddish ellipse with a specular highlight on a shaded pink mucosa with darker vessel lines; a
"lesion" is a brown ellipse on skin tone. Each mask is the ellipse (0/255). Layouts (:func:`write_layout`):

==================  =================================================================================
kvasir-seg          ``Kvasir-SEG/Kvasir-SEG/{images,masks}/<id>.jpg`` (Kaggle's nesting, JPEG masks)
cvc-clinicdb        ``CVC-ClinicDB/PNG/{Original,Ground Truth}/<n>.png`` and the ``TIF/`` copy, frames
                    numbered 1.. in sequence order
isic2018            ``ISIC2018_Task1-2_<Split>_Input/ISIC_<id>.jpg`` +
                    ``ISIC2018_Task1_<Split>_GroundTruth/ISIC_<id>_segmentation.png``
isic2016            ``ISBI2016_ISIC_Part1_<Split>_Data/ISIC_<id>.jpg`` +
                    ``ISBI2016_ISIC_Part1_<Split>_GroundTruth/ISIC_<id>_Segmentation.png``
pranet              ``TrainDataset/{image,mask}/*.png`` (Kvasir ids and numbered CVC-ClinicDB frames) and
                    ``TestDataset/<set>/{images,masks}/*.png`` for the five test sets
prompt-json         ``data/{images,masks}/*.png`` + ``data/prompt.json`` (Siamese-Diffusion's layout)
==================  =================================================================================
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

KINDS = ("polyp", "lesion")
PRANET_TEST_SETS = ("CVC-300", "CVC-ClinicDB", "Kvasir", "CVC-ColonDB", "ETIS-LaribPolypDB")
LAYOUTS = ("kvasir-seg", "cvc-clinicdb", "isic2018", "isic2016", "pranet", "prompt-json")


def synthetic_pair(size: int = 64, kind: str = "polyp", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One SYNTHETIC (RGB uint8 (H, W, 3), mask uint8 (H, W) in {0, 255}) pair."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: use one of {KINDS}")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    cy, cx = rng.uniform(0.3, 0.7, 2)
    ry, rx = rng.uniform(0.12, 0.28, 2)
    angle = rng.uniform(0, np.pi)
    dy, dx = yy - cy, xx - cx
    u, v = dx * np.cos(angle) + dy * np.sin(angle), -dx * np.sin(angle) + dy * np.cos(angle)
    inside = (u / rx) ** 2 + (v / ry) ** 2 <= 1.0
    shade = 0.75 + 0.25 * np.cos(3.0 * (xx - rng.uniform()) + 2.0 * (yy - rng.uniform()))
    if kind == "polyp":
        base, blob = np.array([225, 140, 130]), np.array([190, 60, 55])
        vessels = np.sin(18 * xx + 7 * np.sin(9 * yy + rng.uniform(0, 6))) > 0.93
    else:
        base, blob = np.array([220, 175, 150]), np.array([110, 70, 45])
        vessels = np.zeros_like(inside)
    img = base[None, None] * shade[..., None]
    img[inside] = blob * (0.85 + 0.15 * shade[inside, None])
    img[vessels & ~inside] *= 0.7
    if kind == "polyp":  # a specular highlight on the polyp
        hl = ((yy - cy + ry / 3) ** 2 + (xx - cx + rx / 3) ** 2) < (0.2 * min(rx, ry)) ** 2
        img[hl & inside] = 250
    img += rng.normal(0, 6, img.shape)
    return img.clip(0, 255).astype(np.uint8), inside.astype(np.uint8) * 255


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **({"quality": 95} if path.suffix == ".jpg" else {}))


def _pairs(folder_img: Path, folder_mask: Path, names, kind, size, seed, img_ext, mask_fmt="{}", mask_ext=None):
    for i, name in enumerate(names):
        x, m = synthetic_pair(size, kind, seed * 100_003 + i)
        _save(folder_img / f"{name}{img_ext}", x)
        _save(folder_mask / f"{mask_fmt.format(name)}{mask_ext or img_ext}", m)


def write_layout(root: str | Path, layout: str, n: int = 6, size: int = 64, seed: int = 0, split: str = "Training",
                 n_test: int = 3) -> Path:
    """Write ``n`` SYNTHETIC pairs under ``root`` in ``layout`` (see the module docstring); returns the dataset
    folder to pass as ``data``. ``split``: the ISIC split's name; ``n_test``: pairs per PraNet test set."""
    root = Path(root)
    kvasir_ids = [f"cju{seed:02d}{i:04d}synthetic" for i in range(n)]
    if layout == "kvasir-seg":
        base = root / "Kvasir-SEG" / "Kvasir-SEG"
        _pairs(base / "images", base / "masks", kvasir_ids, "polyp", size, seed, ".jpg")
        return root / "Kvasir-SEG"
    if layout == "cvc-clinicdb":
        base = root / "CVC-ClinicDB"
        frames = [str(i) for i in range(1, n + 1)]
        _pairs(base / "PNG" / "Original", base / "PNG" / "Ground Truth", frames, "polyp", size, seed, ".png")
        _pairs(base / "TIF" / "Original", base / "TIF" / "Ground Truth", frames, "polyp", size, seed, ".tif")
        return base
    if layout == "isic2018":
        ids = [f"ISIC_{seed * 1000 + i:07d}" for i in range(n)]
        _pairs(root / f"ISIC2018_Task1-2_{split}_Input", root / f"ISIC2018_Task1_{split}_GroundTruth", ids, "lesion",
               size, seed, ".jpg", "{}_segmentation", ".png")
        return root
    if layout == "isic2016":
        ids = [f"ISIC_{seed * 1000 + i:07d}" for i in range(n)]
        _pairs(root / f"ISBI2016_ISIC_Part1_{split}_Data", root / f"ISBI2016_ISIC_Part1_{split}_GroundTruth", ids,
               "lesion", size, seed, ".jpg", "{}_Segmentation", ".png")
        return root
    if layout == "pranet":  # the TrainDataset (Kvasir ids + numbered CVC frames) and the five test sets
        names = kvasir_ids[: n // 2] + [str(i) for i in range(1, n - n // 2 + 1)]
        _pairs(root / "TrainDataset" / "image", root / "TrainDataset" / "mask", names, "polyp", size, seed, ".png")
        for j, name in enumerate(PRANET_TEST_SETS):
            _pairs(root / "TestDataset" / name / "images", root / "TestDataset" / name / "masks",
                   [f"{k}" for k in range(1, n_test + 1 + j % 2)], "polyp", size, seed + 1 + j, ".png")
        return root
    if layout == "prompt-json":
        base = root / "data"
        names = [f"p{i:04d}" for i in range(n)]
        _pairs(base / "images", base / "masks", names, "polyp", size, seed, ".png")
        (base / "prompt.json").write_text("".join(json.dumps({"source": f"masks/{s}.png", "target": f"images/{s}.png",
                                                              "prompt": "A photo of a polyp."}) + "\n" for s in names))
        return base
    raise ValueError(f"layout={layout!r}: use one of {LAYOUTS}")


def resolve(data: str, cache_root=None, size: int = 64, n: int = 24) -> str:
    """``"fixture:<layout>"`` -> the folder of that SYNTHETIC fixture (written once under the cache root,
    deterministic); any other value is returned unchanged. Lets a grid or notebook run a dataset's protocol
    end to end offline (smoke profiles, CI) - the numbers mean nothing about the real data."""
    if not (isinstance(data, str) and data.startswith("fixture:")):
        return data
    from medkit import env

    layout = data.split(":", 1)[1]
    if layout not in LAYOUTS:
        raise ValueError(f"data={data!r}: the fixtures are {[f'fixture:{k}' for k in LAYOUTS]}")
    root = Path(cache_root) if cache_root is not None else env.cache_root()
    folder = root / "fixtures" / f"{layout}-{size}px-{n}"
    done = folder / ".complete"
    if not done.is_file():
        base = write_layout(folder, layout, n=n, size=size, seed=0, n_test=max(2, n // 8))
        if layout in ("isic2018", "isic2016"):
            write_layout(folder, layout, n=max(2, n // 4), size=size, seed=1, split="Test")
        done.write_text(str(base.relative_to(folder)))
    return str(folder / done.read_text()) if done.read_text() != "." else str(folder)
