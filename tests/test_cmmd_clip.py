"""CMMD's exact estimator, the CLIP extractor (offline, on a tiny random CLIP saved in both ways a user
has it), and the naming rule: only CLIP ViT-L/14@336 features give a metric called ``cmmd``."""
import json
import math

import numpy as np
import pytest
import torch

from medkit.eval.evaluate import distribution_metrics
from medkit.metrics import _weights, distribution as dist
from medkit.metrics import clip as mclip


def _direct_cmmd(x, y, sigma=10.0, scale=1000.0):
    """CMMD written straight from its formula with Python loops: 1000 (mean k_xx + mean k_yy - 2 mean k_xy)."""
    def k(a, b):
        return math.exp(-sum((ai - bi) ** 2 for ai, bi in zip(a, b)) / (2 * sigma ** 2))

    def mean_k(a, b):
        return sum(k(u, v) for u in a for v in b) / (len(a) * len(b))

    return scale * (mean_k(x, x) + mean_k(y, y) - 2 * mean_k(x, y))


def test_cmmd_matches_the_formula_and_keeps_the_diagonals():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 4)) * 6, rng.normal(size=(9, 4)) * 6 + 3
    ref = _direct_cmmd(x.tolist(), y.tolist())
    assert dist.cmmd(x, y) == pytest.approx(ref, rel=1e-12)
    # the unbiased rbf_mmd is another estimator: it differs by exactly the diagonal terms
    n, m = len(x), len(y)
    unbiased = dist.rbf_mmd(x, y, sigma=10.0)
    a = torch.as_tensor(x)
    b = torch.as_tensor(y)
    kaa = torch.exp(-torch.cdist(a, a) ** 2 / 200)
    kbb = torch.exp(-torch.cdist(b, b) ** 2 / 200)
    kab = torch.exp(-torch.cdist(a, b) ** 2 / 200)
    u = ((kaa.sum() - n) / (n * (n - 1)) + (kbb.sum() - m) / (m * (m - 1)) - 2 * kab.mean()) * 1000
    assert unbiased == pytest.approx(float(u), rel=1e-12)
    assert abs(unbiased - ref) > 1e-3 * abs(ref)
    assert dist.cmmd(x, x) == pytest.approx(0.0, abs=1e-12)   # a V-statistic: exactly 0 on identical sets


def test_cmmd_rejects_bad_input():
    with pytest.raises(ValueError, match="feature sizes differ"):
        dist.cmmd(np.zeros((3, 2)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="NaN"):
        dist.cmmd(np.full((3, 2), np.nan), np.zeros((3, 2)))


def test_only_cmmds_network_gives_a_metric_named_cmmd():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(60, 8)), rng.normal(size=(60, 8)) + 0.2
    on_clip = distribution_metrics(a, b, mclip.CMMD_EXTRACTOR, n_boot=20, kid_subset_size=50)
    assert "cmmd" in on_clip and "rbf_mmd" not in on_clip
    assert on_clip["cmmd"]["value"] == pytest.approx(dist.cmmd(a, b))
    assert on_clip["cmmd"]["estimator"] == dist.CMMD_ESTIMATOR and on_clip["cmmd"]["extractor"] == mclip.CMMD_EXTRACTOR
    other = distribution_metrics(a, b, "some-other-clip", n_boot=20, kid_subset_size=50)
    assert "cmmd" not in other
    assert other["rbf_mmd"]["value"] == pytest.approx(dist.rbf_mmd(a, b, sigma=10.0))
    assert "unbiased" in other["rbf_mmd"]["estimator"] and other["rbf_mmd"]["extractor"] == "some-other-clip"


def test_warnings_are_kept_in_the_entries_they_concern():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(20, 40)), rng.normal(size=(30, 40))   # N < D, and fewer than the KID subset size
    res = distribution_metrics(a, b, "x", n_boot=20, kid_subset_size=100)
    assert any("rank-deficient" in w for w in res["fd"]["warnings"])
    assert any("subset_size=100" in w for w in res["kd"]["warnings"])
    assert "warnings" not in res["rbf_mmd"]
    assert sorted(res["_warnings"]) == sorted(set(res["fd"]["warnings"]) | set(res["kd"]["warnings"]))


# ------------------------------------------------------------------------------------------ CLIP
def _tiny_clip(folder, image_size=30, mean=None):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=image_size, patch_size=10, projection_dim=16)
    model = CLIPVisionModelWithProjection(cfg).eval()
    model.save_pretrained(folder)
    if mean is not None:
        (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": mean, "image_std": [0.5] * 3}))
    return model


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv(mclip.ENV_VAR, raising=False)
    monkeypatch.setattr(_weights, "KAGGLE_INPUT", tmp_path / "kaggle" / "input")
    return tmp_path


def test_clip_features_equal_the_model_on_clip_preprocessing(offline):
    folder = offline / "tiny-clip"
    model = _tiny_clip(folder)
    ext = mclip.CLIPFeatures(folder)
    assert ext.layout == "transformers" and ext.feature_dim == 16 and ext.image_size == 30
    assert ext.name.startswith("clip-vit(width 32") and ext.name != mclip.CMMD_EXTRACTOR
    g = torch.Generator().manual_seed(0)
    gray = torch.rand(3, 1, 64, 64, generator=g) * 2 - 1
    out = ext(gray)
    # the reference: [0, 1], 3 channels, bicubic (anti-aliased) to 30 px, CLIP's mean/std, image_embeds / norm
    x = torch.nn.functional.interpolate(((gray + 1) / 2).repeat(1, 3, 1, 1), size=(30, 30), mode="bicubic",
                                        antialias=True)
    mean = torch.tensor(mclip.CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(mclip.CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = model(pixel_values=(x - mean) / std).image_embeds
    ref = ref / ref.norm(dim=-1, keepdim=True)
    assert out.shape == (3, 16)
    assert torch.allclose(out, ref, atol=1e-6)
    assert torch.allclose(out.norm(dim=-1), torch.ones(3), atol=1e-6)
    rgb = gray.repeat(1, 3, 1, 1)   # grey repeated to RGB gives the same embedding
    assert torch.allclose(ext(rgb), out, atol=1e-6)


def test_clip_reads_the_folders_own_normalisation(offline):
    folder = offline / "tiny-clip"
    _tiny_clip(folder, mean=[0.5, 0.5, 0.5])
    ext = mclip.CLIPFeatures(folder)
    assert torch.allclose(ext.mean.flatten(), torch.full((3,), 0.5))


def test_cmmd_network_is_recognised_by_its_shape_only():
    from transformers import CLIPConfig, CLIPVisionConfig

    l14 = CLIPVisionConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, patch_size=14,
                           image_size=336, projection_dim=768)
    assert mclip.describe(l14) == mclip.CMMD_EXTRACTOR
    b16 = CLIPVisionConfig(hidden_size=768, num_hidden_layers=12, patch_size=16, image_size=224, projection_dim=512)
    assert mclip.describe(b16) != mclip.CMMD_EXTRACTOR
    assert mclip.describe(CLIPConfig(vision_config=l14.to_dict(), projection_dim=768)) == mclip.CMMD_EXTRACTOR


def test_clip_found_on_kaggle_and_through_the_environment(offline, monkeypatch):
    kaggle = _weights.KAGGLE_INPUT / "models" / "openai" / "clip-vit-large-patch14-336" / "transformers" / "1"
    _tiny_clip(kaggle)
    folder, layout = mclip.find_clip()
    assert folder == kaggle and layout == "transformers"
    other = offline / "elsewhere"
    _tiny_clip(other)
    monkeypatch.setenv(mclip.ENV_VAR, str(other))
    assert mclip.find_clip()[0] == other
    from medkit.metrics.features import get_extractor

    assert get_extractor(f"clip:{other}").source == str(other)


def test_clip_absent_is_one_clear_error(offline, monkeypatch):
    from medkit.metrics import optional_network

    with pytest.raises(_weights.WeightsUnavailable) as e:
        mclip.find_clip()
    msg = str(e.value)
    assert mclip.CMMD_CLIP_ID in msg and "HF_HUB_OFFLINE" in msg and "kaggle" in msg.lower()
    ext, why = optional_network("auto", lambda: mclip.CLIPFeatures())
    assert ext is None and mclip.CMMD_CLIP_ID in why
    with pytest.raises(_weights.WeightsUnavailable, match="not a CLIP model"):
        (offline / "empty").mkdir()
        mclip.CLIPFeatures(offline / "empty")
    with pytest.raises(_weights.WeightsUnavailable, match="not available offline"):
        mclip.CLIPFeatures("someone/clip-that-is-not-cached")
    monkeypatch.setenv(mclip.ENV_VAR, str(offline / "missing"))
    with pytest.raises(_weights.WeightsUnavailable, match="MEDKIT_CLIP"):
        mclip.find_clip()


def test_open_clip_layout_goes_through_open_clip(offline, monkeypatch):
    """The open_clip layout is loaded by the open_clip package (a stand-in module here: open_clip needs
    torchvision, which this CPU set-up does not install); its embeddings are normalised the same way."""
    import sys
    import types

    folder = offline / "oc"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": {"embed_dim": 768, "vision_cfg": {"width": 1024, "layers": 24, "patch_size": 14, "image_size": 336}},
        "preprocess_cfg": {"size": 336, "mean": list(mclip.CLIP_MEAN), "std": list(mclip.CLIP_STD)}}))
    (folder / "open_clip_pytorch_model.bin").write_bytes(b"")
    calls = []

    class Stub(torch.nn.Module):
        def encode_image(self, x):
            calls.append(tuple(x.shape))
            return x.flatten(1)[:, :768] * 3

    def create_model_from_pretrained(name, return_transform=True):
        calls.append(name)
        return Stub(), None

    monkeypatch.setitem(sys.modules, "open_clip", types.SimpleNamespace(create_model_from_pretrained=create_model_from_pretrained))
    ext = mclip.CLIPFeatures(folder)
    assert ext.name == mclip.CMMD_EXTRACTOR and ext.image_size == 336
    out = ext(torch.zeros(2, 1, 32, 32))
    assert calls == [f"local-dir:{folder}", (2, 3, 336, 336)]
    assert torch.allclose(out.norm(dim=-1), torch.ones(2), atol=1e-6)
    monkeypatch.setitem(sys.modules, "open_clip", None)
    with pytest.raises(_weights.WeightsUnavailable, match="open_clip"):
        mclip.CLIPFeatures(folder)
