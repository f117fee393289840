"""Dense Hint Input, MONAI/diffusers ControlNets with it, and the SD 1.5 loader on a tiny offline stand-in."""
import json
import sys
import time

import pytest
import torch
import torch.nn.functional as F

from medkit import nets
from medkit.metrics._weights import WeightsUnavailable
from medkit.nets import sd
from medkit.nets.dhi import DenseHintInput, PatchMerging, install_dhi


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")   # nothing in this file may touch the network


@pytest.fixture(scope="module")
def tiny():
    return sd.tiny_sd_components(seed=0, image_size=32)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, tiny):
    folder = tmp_path_factory.mktemp("kaggle") / "tiny-sd" / "pytorch" / "default" / "1"
    sd.save_sd_folder(tiny, folder)
    return folder


def _randomise(module):
    torch.manual_seed(1)
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.1)


# ----------------------------------------------------------------------------------------------------- DHI

@pytest.mark.parametrize("downsample", [0, 1, 2, 3])
def test_dhi_shapes(downsample):
    dhi = DenseHintInput(1, 8, downsample=downsample)
    assert dhi(torch.rand(2, 1, 16, 24)).shape == (2, 8, 16 // 2 ** downsample, 24 // 2 ** downsample)


def test_dhi_parameter_count_against_standard_block():
    from diffusers.models.controlnets.controlnet import ControlNetConditioningEmbedding

    n_dhi = nets.count_parameters(DenseHintInput(3, 320, downsample=3))
    n_std = nets.count_parameters(ControlNetConditioningEmbedding(320, conditioning_channels=3))
    assert n_dhi == 3_263_424 and abs(n_dhi / 3.3e6 - 1) < 0.1       # REFERENCE: ~3.3M
    assert n_std == 1_086_480 and abs(n_std / 1.1e6 - 1) < 0.1       # diffusers default: ~1.1M
    assert sd.SD15_PARAMS["hint"] == n_dhi


def test_dhi_zero_init_and_errors():
    dhi = DenseHintInput(3, 8, downsample=2)
    assert torch.count_nonzero(dhi(torch.rand(1, 3, 16, 16))) == 0       # zero-initialised last conv
    torch.nn.init.normal_(dhi.conv_out.weight)
    assert torch.count_nonzero(dhi(torch.rand(1, 3, 16, 16))) > 0       # and the rest is live
    with pytest.raises(ValueError, match="2D only"):
        dhi(torch.rand(1, 3, 8, 8, 8))
    with pytest.raises(ValueError, match="not divisible by 2\\*\\*downsample = 4"):
        dhi(torch.rand(1, 3, 16, 18))
    with pytest.raises(ValueError, match="has 1 channels .* in_channels=3"):
        dhi(torch.rand(1, 1, 16, 16))
    assert DenseHintInput(1, 4, downsample=0)(torch.rand(1, 1, 15, 13)).shape == (1, 4, 15, 13)


def test_patch_merging_matches_manual_space_to_depth():
    torch.manual_seed(0)
    pm = PatchMerging(3)
    torch.nn.init.normal_(pm.norm.weight)
    torch.nn.init.normal_(pm.norm.bias)
    x = torch.randn(2, 3, 4, 6)
    b, c, h, w = x.shape
    # (b, c, h/2, dy, w/2, dx) -> (b, h/2, w/2, dx, dy, c): Swin's order (0,0), (1,0), (0,1), (1,1) as (dy, dx)
    cells = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 5, 3, 1).reshape(b, h // 2, w // 2, 4 * c)
    assert torch.equal(cells[0, 1, 2, :c], x[0, :, 2, 4]) and torch.equal(cells[0, 1, 2, c:2 * c], x[0, :, 3, 4])
    want = F.layer_norm(cells, (4 * c,), pm.norm.weight, pm.norm.bias, pm.norm.eps) @ pm.reduction.weight.T
    got = pm(x)
    assert got.shape == (2, 6, 2, 3)
    assert torch.allclose(got, want.permute(0, 3, 1, 2), atol=1e-6)
    # it is MONAI's PatchMergingV2 (channels-last inside), with the parameter names checkpoints already use
    from monai.networks.nets.swin_unetr import PatchMergingV2

    assert isinstance(pm, PatchMergingV2) and sorted(pm.state_dict()) == ["norm.bias", "norm.weight", "reduction.weight"]
    assert torch.equal(got, PatchMergingV2.forward(pm, x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
    with pytest.raises(ValueError, match="needs even H and W; got 5x6"):  # MONAI would pad silently
        pm(torch.randn(1, 3, 5, 6))


# ---------------------------------------------------------------------------------------- MONAI ControlNet

UNET = {"spatial_dims": 2, "in_channels": 4, "channels": (8, 16), "num_res_blocks": 1, "num_head_channels": 8,
        "norm_num_groups": 4}


@pytest.mark.parametrize("hint", ["dhi", "standard"])
def test_monai_controlnet_copies_encoder_and_feeds_unet(hint):
    torch.manual_seed(0)
    unet = nets.make_unet(**UNET)
    cn = nets.make_controlnet(**UNET, unet=unet, hint_channels=1, hint=hint, downsample=1)
    assert isinstance(cn.controlnet_cond_embedding, DenseHintInput) == (hint == "dhi")
    u, c = unet.state_dict(), cn.state_dict()
    shared = [k for k in c if not k.startswith("controlnet_")]
    assert shared and all(torch.equal(c[k], u[k]) for k in shared)      # encoder copied
    x, t, mask = torch.randn(2, 4, 8, 8), torch.tensor([3, 700]), torch.rand(2, 1, 16, 16)
    down, mid = cn(x, t, mask)
    out = unet(x, t, down_block_additional_residuals=down, mid_block_additional_residual=mid)
    assert out.shape == x.shape
    if hint == "dhi":   # with live zero convs, the zero-initialised DHI still makes any hint act as no hint
        for block in [*cn.controlnet_down_blocks, cn.controlnet_mid_block]:
            _randomise(block)
        down, mid = cn(x, t, mask)
        down0, mid0 = cn(x, t, torch.zeros_like(mask))
        assert torch.count_nonzero(mid) > 0
        assert torch.equal(mid, mid0) and all(torch.equal(a, b) for a, b in zip(down, down0))


def test_monai_controlnet_errors():
    with pytest.raises(ValueError, match="2D only"):
        nets.make_controlnet(3, channels=(8, 16), norm_num_groups=4, hint="dhi")
    with pytest.raises(ValueError, match="'dhi' .* or 'standard'"):
        nets.make_controlnet(**UNET, hint="sparse")
    with pytest.raises(ValueError, match="downsample=4"):
        nets.make_controlnet(**UNET, hint="standard", downsample=4)
    with pytest.raises(ValueError, match="no match of the same shape"):
        nets.make_controlnet(**{**UNET, "channels": (8, 8)}, unet=nets.make_unet(**UNET))
    with pytest.raises(TypeError, match="controlnet_cond_embedding"):
        install_dhi(torch.nn.Linear(2, 2), 1, 0)


# ------------------------------------------------------------------------------------------ tiny SD + DHI

def test_diffusers_controlnet_with_dhi_feeds_unet(tiny):
    cn = sd.make_controlnet_sd(tiny.unet, hint_channels=3, dhi=True, downsample=1)   # tiny VAE factor 2
    assert isinstance(cn.controlnet_cond_embedding, DenseHintInput) and cn.config.conditioning_channels == 3
    assert tiny.vae_scale_factor == 2 and tiny.latent_scaling == pytest.approx(0.18215)
    emb = sd.encode_prompt(tiny.tokenizer, tiny.text_encoder, ["A photo of a polyp.", ""])
    x, t, mask = torch.randn(2, 4, 16, 16), torch.tensor([10, 900]), torch.rand(2, 3, 32, 32)
    for block in [*cn.controlnet_down_blocks, cn.controlnet_mid_block]:
        _randomise(block)
    with torch.no_grad():
        down, mid = cn(x, t, emb, mask, return_dict=False)
        down0, mid0 = cn(x, t, emb, torch.zeros_like(mask), return_dict=False)
        eps = tiny.unet(x, t, emb, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
    assert [tuple(d.shape) for d in down] == [(2, 32, 16, 16)] * 2 + [(2, 32, 8, 8), (2, 64, 8, 8)]
    assert mid.shape == (2, 64, 8, 8) and eps.shape == x.shape
    assert torch.equal(mid, mid0) and all(torch.equal(a, b) for a, b in zip(down, down0))
    std = sd.make_controlnet_sd(tiny.unet, hint_channels=1, dhi=False, downsample=1)
    assert nets.count_parameters(std.controlnet_cond_embedding) == 16_368
    assert std(x, t, emb, torch.rand(2, 1, 32, 32), return_dict=False)[1].shape == (2, 64, 8, 8)


def test_tiny_sd_round_trip_and_kaggle_lookup(tiny, tiny_folder, monkeypatch):
    monkeypatch.setattr(sd, "KAGGLE_INPUT", tiny_folder.parents[3])
    for loaded in (sd.load_sd15(tiny_folder), sd.load_sd15("medkit-test/tiny-sd")):   # folder; Kaggle copy
        assert loaded.source == str(tiny_folder)
        for name in ("unet", "vae", "text_encoder"):
            a, b = getattr(tiny, name).state_dict(), getattr(loaded, name).state_dict()
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        ids = [tok("A photo of a polyp.").input_ids for tok in (tiny.tokenizer, loaded.tokenizer)]
        assert ids[0] == ids[1] and len(ids[0]) == 8                # <bos> a photo of a polyp . <eos>
        assert loaded.scheduler_config["beta_schedule"] == "scaled_linear"
    index = json.loads((tiny_folder / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    from diffusers import DDIMScheduler

    betas = DDIMScheduler.from_config(loaded.scheduler_config).betas
    assert len(betas) == 1000 and betas[0].item() == pytest.approx(0.00085) and betas[-1].item() == pytest.approx(0.012)


def test_load_sd15_offline_error_names_everything(tmp_path, monkeypatch):
    kaggle = tmp_path / "input"
    (kaggle / "broken" / "unet").mkdir(parents=True)
    (kaggle / "broken" / "model_index.json").write_text("{}")
    monkeypatch.setattr(sd, "KAGGLE_INPUT", kaggle)
    monkeypatch.setattr(sd, "_hub_reachable", lambda: pytest.fail("network probed while HF_HUB_OFFLINE=1"))
    start = time.perf_counter()
    with pytest.raises(sd.ModelUnavailable) as err:
        sd.load_sd15("medkit-test/no-such-model")
    assert time.perf_counter() - start < 5
    msg = str(err.value)
    assert isinstance(err.value, WeightsUnavailable)
    for part in ("'medkit-test/no-such-model'", "local folder", str(kaggle), "incomplete", "Hugging Face cache",
                 "HF_HUB_OFFLINE", "huggingface-cli download stable-diffusion-v1-5/stable-diffusion-v1-5",
                 "source='path/to/folder'"):
        assert part in msg, part
    with pytest.raises(sd.ModelUnavailable, match="missing: .*unet/config.json"):
        sd.load_sd15(kaggle / "broken")


# ---------------------------------------------------------------------------------- prompts, optimizer, memory

def test_encode_prompt(tiny):
    emb = sd.encode_prompt(tiny.tokenizer, tiny.text_encoder, ["A photo of a polyp.", ""])
    assert emb.shape == (2, 77, 32) and not emb.requires_grad
    assert not torch.allclose(emb[0], emb[1])
    assert torch.equal(sd.encode_prompt(tiny.tokenizer, tiny.text_encoder, [""])[0], emb[1])


def test_make_optimizer_fallback(monkeypatch):
    params = [torch.nn.Parameter(torch.zeros(3))]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    opt, name = sd.make_optimizer(params, lr=1e-5)
    assert isinstance(opt, torch.optim.AdamW) and name == "AdamW (torch)"
    assert opt.defaults["weight_decay"] == 1e-2 and opt.defaults["lr"] == 1e-5
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)       # import fails as if not installed
    with pytest.raises(ImportError, match="pip install bitsandbytes"):
        sd.make_optimizer(params, lr=1e-5, eight_bit=True)
    assert sd.make_optimizer(params, lr=1e-5, eight_bit="auto")[1] == "AdamW (torch)"
    with pytest.raises(ValueError, match="eight_bit"):
        sd.make_optimizer(params, lr=1e-5, eight_bit="yes")


def test_memory_estimate(tiny):
    est = sd.sd15_memory_estimate()
    assert est["controlnet"]["trainable_params"] == 363_456_064            # ControlNet (from_unet) + DHI
    assert est["controlnet+decoder"]["trainable_params"] == 363_456_064 + 510_808_004
    assert est["controlnet"]["total"] == pytest.approx(7.40, abs=0.01)
    assert est["controlnet+decoder"]["total"] == pytest.approx(14.06, abs=0.01)
    assert sd.sd15_memory_estimate(eight_bit=True)["controlnet"]["total"] == pytest.approx(5.37, abs=0.01)
    cn = sd.make_controlnet_sd(tiny.unet, hint_channels=3, dhi=True, downsample=1)
    counts = sd.sd_param_counts(tiny.unet, cn, tiny.vae, tiny.text_encoder)
    assert counts == {"unet": 792_964, "unet_decoder": 397_764, "controlnet_body": 406_688, "hint": 165_920,
                      "vae": 658_375, "text_encoder": 51_616}
    small = sd.sd15_memory_estimate(**counts)["controlnet"]
    assert small["weights_fp32"] == pytest.approx(4 * (406_688 + 165_920) / 2 ** 30)
