"""CT through-plane super-resolution: thick-slice simulation and interpolation, the method's networks, windowed
whole-volume inference, the four notebooks end to end (smoke), and `python -m medkit super-resolve` on a NIfTI
file and on a DICOM series."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medkit.data import thickslice as ts
from medkit.data.volumes import read_nifti, write_nifti
from medkit.methods import ctsr, ctsr_infer
from pinned import check_pinned

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------ thick slices
@pytest.mark.parametrize("r", [2, 4, 5])
def test_gaussian_profile_has_the_slice_thickness_as_fwhm(r):
    k = ts.profile_kernel(r, "gaussian")
    assert abs(k.sum() - 1) < 1e-12 and len(k) % 2 == 1
    x = np.arange(len(k)) - len(k) // 2
    sigma = np.sqrt((k * x ** 2).sum())  # the sampled kernel's spread: FWHM = 2 sqrt(2 ln 2) sigma
    assert abs(2 * np.sqrt(2 * np.log(2)) * sigma - r) < 0.02 * r


def test_box_profile_is_centred_width_r():
    assert np.allclose(ts.profile_kernel(4, "box"), [0.125, 0.25, 0.25, 0.25, 0.125])
    assert np.allclose(ts.profile_kernel(5, "box"), [0.2] * 5)
    with pytest.raises(ts.ThickSliceError, match="slice_profile='tri'"):
        ts.profile_kernel(4, "tri")


def test_simulated_thick_slices_blur_then_decimate():
    z = np.arange(40, dtype=np.float32)
    vol = np.broadcast_to(z, (3, 2, 40)).copy()
    lr = ts.simulate_thick(vol, 4)  # a linear ramp is kept by a symmetric profile (away from the clamped ends)
    assert lr.shape == (3, 2, ts.n_thick(40, 4, 2)) == (3, 2, 10)
    assert np.allclose(lr[0, 0, 2:-2], z[2::4][2:-2], atol=1e-4)
    spike = np.zeros((1, 1, 40), np.float32)
    spike[..., 18] = 1  # a thin feature between two thick centres (14, 18 is one) is spread, not kept or lost
    assert 0 < ts.simulate_thick(spike, 4)[0, 0, 4] < 1
    with pytest.raises(ts.ThickSliceError, match="factor=1"):
        ts.simulate_thick(vol, 1)
    with pytest.raises(ts.ThickSliceError, match="offset=4: must be in 0..3"):
        ts.simulate_thick(vol, 4, offset=4)
    with pytest.raises(ts.ThickSliceError, match="a volume of 3 slices is too thin for factor 4"):
        ts.simulate_thick(vol[..., :3], 4)


@pytest.mark.parametrize("kind", ["linear", "cubic"])
def test_interpolation_weights_pass_through_the_thick_slices(kind):
    w = ts.interp_matrix(7, 28, 4, 2, kind)
    assert np.allclose(w.sum(1), 1)
    lr = np.random.default_rng(0).normal(size=(2, 3, 7)).astype(np.float32)
    up = ts.upsample_z(lr, 4, 2, kind=kind)
    assert up.shape == (2, 3, 28) and np.allclose(up[..., 2::4], lr, atol=1e-6)
    ramp = np.arange(7, dtype=np.float64)[None, None]  # linear data is kept between thick slices 1 and 5
    assert np.allclose(ts.upsample_z(ramp, 4, 2, kind=kind)[0, 0, 6:23], (np.arange(6, 23) - 2) / 4, atol=1e-6)
    assert torch.allclose(ts.upsample_z(torch.as_tensor(lr), 4, 2, kind=kind), torch.as_tensor(up), atol=1e-5)


def test_thin_affine_puts_thin_slice_rk_plus_offset_on_thick_slice_k():
    lr_aff = np.array([[0.7, 0, 0, -90], [0, 0.7, 0, -120], [0, 0, 5.0, -300], [0, 0, 0, 1]], dtype=float)
    thin = ts.thin_affine(lr_aff, 5, 3)
    for k in (0, 4, 11):
        assert np.allclose(thin @ [10, 20, 5 * k + 3, 1], lr_aff @ [10, 20, k, 1])
    assert np.isclose(np.linalg.norm(thin[:3, 2]), 1.0)
    assert np.allclose(ts.thick_affine(thin, 5, 3), lr_aff)


def test_slab_split_and_patches_stay_out_of_the_test_slab():
    s = ts.slab_split(94, (0.45, 0.7), gap=8, min_train=16)
    assert s.test == (42, 66) and s.train == [(0, 34), (74, 94)]
    fg = np.ones((40, 40, 94), bool)
    pos = ts.patch_positions(fg, s.train, (16, 16, 16), 500, seed=0, min_foreground=0.5)
    z0 = pos[:, 2]
    assert all((z + 16 <= 34) or (z >= 74 and z + 16 <= 94) for z in z0)
    assert np.array_equal(pos, ts.patch_positions(fg, s.train, (16, 16, 16), 500, seed=0, min_foreground=0.5))
    with pytest.raises(ts.ThickSliceError, match="no training slab"):
        ts.slab_split(40, (0.2, 0.9), gap=8, min_train=16)
    with pytest.raises(ts.ThickSliceError, match="foreground"):
        ts.patch_positions(np.zeros((40, 40, 94), bool), s.train, (16, 16, 16), 5, 0, 0.5)


# ------------------------------------------------------------------------------------ method
def test_config_validates_settings():
    cfg = ctsr.config("smoke")
    assert cfg["space"] == "latent" and cfg["overlap"] == 0.5 and ctsr.config("cpu-demo")["overlap"] == 0.25
    with pytest.raises(ValueError, match="conditioning='film'"):
        ctsr.config("smoke", conditioning="film")
    with pytest.raises(ValueError, match=r"patch=\(16, 16, 12\): each side must be a multiple of \(8, 8, 8\)"):
        ctsr.config("smoke", patch=(16, 16, 12))
    with pytest.raises(ValueError, match="unknown CT-SR setting"):
        ctsr.config("smoke", etas=3)


def test_controlnet_starts_as_the_plain_unet_and_both_train():
    """IRControlNet's zero-initialised outputs: at initialisation the ControlNet adds nothing; a training step
    moves both the UNet and the ControlNet."""
    cfg = ctsr.config("smoke", conditioning="controlnet", space="pixel")
    m = ctsr.build_denoiser(cfg)
    x, y, t = torch.randn(2, 1, 16, 16, 16), torch.randn(2, 1, 16, 16, 16), torch.tensor([3, 7])
    plain = y + m.unet(x, t)
    assert torch.allclose(m(x, t, y), plain, atol=1e-6)
    batch = {"hr": torch.randn(2, 1, 16, 16, 16), "y": y}
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    for step in range(3):  # MONAI zero-initialises the UNet's output conv: gradients reach the rest after a step
        opt.zero_grad()
        ctsr.resshift_loss(m, batch, step, ctsr.scheduler(cfg)).backward()
        opt.step()
    assert m.unet.conv_in.conv.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.controlnet.controlnet_down_blocks.parameters())


def test_windows_are_exact_for_an_identity_and_bounded_by_the_roi():
    """Gaussian blending of overlapping windows reproduces an identity network exactly, and the network only
    ever sees window-sized inputs, whatever the volume's size (memory bounded by the window)."""
    cfg = ctsr.config("smoke", space="pixel")
    seen = []

    def net(w):
        seen.append(tuple(w.shape))
        return w * 1.0
    for size in ((40, 36, 20), (80, 72, 40)):
        x = torch.randn(1, 2, *size)
        out = ctsr_infer.windows(net, x, cfg["window"], cfg)
        torch.testing.assert_close(out, x, atol=1e-5, rtol=1e-5)
    assert {s[2:] for s in seen} == {tuple(cfg["window"])} and max(s[0] for s in seen) <= cfg["sw_batch"]


def test_resshift_sampler_with_an_oracle_returns_the_target_over_windows():
    """The whole-volume sampler, given a network that returns the true x0 (an oracle), ends exactly at x0: the
    windowed assembly and the chain are consistent."""
    cfg = ctsr.config("smoke", space="pixel", residual=False)
    x0 = torch.rand(1, 1, 32, 24, 32) * 2 - 1

    class Oracle(torch.nn.Module):  # reads x0 from its window of the condition channel
        def forward(self, x_in, t, w_y):
            return w_y
    x, nfe = ctsr_infer.resshift_sample(Oracle(), ctsr.scheduler(cfg), x0, cfg, progress=False)
    assert nfe == 15
    torch.testing.assert_close(x, x0, atol=1e-5, rtol=1e-5)


def test_saved_activation_bytes_counts_what_autograd_keeps():
    """x * w keeps both factors (2 x 6 float32 = 48 bytes); the sum keeps nothing; no_grad keeps nothing."""
    from medkit.train.bench import saved_activation_bytes

    x, w = torch.randn(2, 3, requires_grad=True), torch.randn(2, 3, requires_grad=True)
    assert saved_activation_bytes(lambda: (x * w).sum(), dtype=None) == 48
    with torch.no_grad():
        assert saved_activation_bytes(lambda: (x * w).sum(), dtype=None) == 0


# ------------------------------------------------------------------------------------ notebooks
@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ctsr") / "smoke"
    cmd = [sys.executable, "-m", "medkit", "run", "ctsr", "--profile", "smoke", "--out", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out


def test_smoke_pipeline_outputs(smoke_run):
    m = json.loads((smoke_run / "metrics.json").read_text())
    check_pinned("ctsr-smoke", m)  # every seeded number, against tests/fixtures/pinned_smoke.json
    assert m["data"]["factor"] == 4 and "MRI, not CT" in m["data"]["label"]
    assert m["resshift"]["T"] == 15 and m["resshift"]["space"] == "latent"
    methods = m["eval"]["methods"]
    assert set(methods) == {"trilinear", "cubic", "vae", "resshift-15", "resshift-4", "resshift-15-det", "resshift-4-det",
                            "regression", "ddim-10"}
    assert m["eval"]["methods"]["resshift-15"]["ssim3d_mask_" + "_".join(f"{v:g}" for v in m["eval"]["windows"][0])] <= 1
    for name, e in methods.items():
        assert np.isfinite(e["slice_psnr"]["mean"]) and e["slice_psnr"]["ci95"][0] <= e["slice_psnr"]["ci95"][1]
        assert "z_hf_ratio_db" in e and "lr_mae_raw" in e
    assert methods["resshift-4"]["network_calls"] == 4 and methods["ddim-10"]["network_calls"] == 10
    # cubic interpolation re-degraded gives its thick slices back closely (it passes through them)
    assert methods["cubic"]["lr_psnr_" + "_".join(f"{v:g}" for v in m["eval"]["windows"][0])] > 30
    assert "| resshift-15 |" in (smoke_run / "results.md").read_text()
    for fig in ("data_views.png", "vae_roundtrip.png", "loss_curves.png", "sr_views.png", "eval_views.png",
                "eval_differences.png", "z_spectrum.png"):
        assert (smoke_run / "figures" / fig).stat().st_size > 1000, fig
    niis = list((smoke_run / "samples").glob("resshift_*.nii.gz"))
    assert len(niis) == 1 and np.allclose(read_nifti(niis[0]).spacing, (3.0, 3.0, 3.0), atol=1e-4)
    nb = json.loads((smoke_run / "notebooks" / "04_evaluate.ipynb").read_text())
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {})
               for c in nb["cells"] for o in c.get("outputs", []))  # the gallery widget was displayed


def test_rerun_of_training_resumes_without_retraining(smoke_run):
    before = (smoke_run / "logs" / "resshift.jsonl").read_text()
    r = subprocess.run([sys.executable, "-m", "medkit", "run", "ctsr", "--profile", "smoke", "--out", str(smoke_run),
                        "--stages", "02_resshift"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (smoke_run / "logs" / "resshift.jsonl").read_text() == before


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "medkit", "super-resolve", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_super_resolve_a_nifti_to_the_thin_grid(smoke_run, tmp_path):
    """A thick NIfTI (every 4th slice of the smoke grid's MNI152, 12 mm) becomes a thin one: 4x the slices,
    z spacing / 4, thin slice 4k + 2 at thick slice k's position."""
    from medkit.data import srdata

    d = srdata.load_sr_data(ctsr.config("smoke"))
    c = d.cases[0]
    thick = d.to_physical(c.lr)
    write_nifti(thick, c.lr_affine, tmp_path / "thick.nii.gz")
    r = _cli(tmp_path / "thick.nii.gz", tmp_path / "thin.nii.gz", "--run", smoke_run)
    assert r.returncode == 0, r.stderr[-3000:]
    out = read_nifti(tmp_path / "thin.nii.gz", intensity="raw")
    assert out.array.shape == (*thick.shape[:2], 4 * thick.shape[2])
    assert np.allclose(out.spacing, (3.0, 3.0, 3.0), atol=1e-4)
    for k in (0, 5):
        assert np.allclose(out.affine @ [1, 2, 4 * k + 2, 1], c.lr_affine @ [1, 2, k, 1], atol=1e-4)
    assert json.loads(r.stdout.strip().splitlines()[-1])["network_calls"] == 15


def test_super_resolve_a_dicom_series(smoke_run, tmp_path):
    """A CT DICOM series (assembled from pydicom's real CT slice, 5 mm apart) through a run whose data section
    says HU (a copy of the smoke run relabelled: this checks reading, geometry and writing, not image quality)."""
    from test_volumes import write_series

    run = tmp_path / "run"
    shutil.copytree(smoke_run, run, ignore=shutil.ignore_patterns("notebooks", "samples", "figures"))
    m = json.loads((run / "metrics.json").read_text())
    m["data"].update(intensity="HU", window=[-1024.0, 3071.0])
    (run / "metrics.json").write_text(json.dumps(m))
    write_series(tmp_path / "series", n=6, spacing=5.0)
    r = _cli(tmp_path / "series", tmp_path / "ct_thin.nii.gz", "--run", run, "--method", "cubic")
    assert r.returncode == 0, r.stderr[-3000:]
    out = read_nifti(tmp_path / "ct_thin.nii.gz", intensity="HU")
    assert out.array.shape[2] == 24 and np.isclose(out.spacing[2], 1.25, atol=1e-4)
    r = _cli(tmp_path / "series", tmp_path / "x.nii.gz", "--run", smoke_run)  # MR-trained run, CT input
    assert r.returncode == 2 and "holds HU intensities but run" in r.stderr


def test_super_resolve_without_a_trained_run_says_what_to_do(tmp_path):
    write_nifti(np.zeros((8, 8, 4), np.float32), np.eye(4), tmp_path / "t.nii.gz")
    r = _cli(tmp_path / "t.nii.gz", tmp_path / "o.nii.gz", "--run", tmp_path / "norun")
    assert r.returncode == 2 and "resshift.json is missing" in r.stderr


def test_paired_folders_are_checked_against_factor_and_offset(tmp_path):
    """RPLHR-CT-style thin/ + thick/ folders: the thick slice count must follow from the thin one, the factor and
    pair_offset; the spacing ratio must be the factor; every thin file needs its thick partner."""
    from medkit.data import srdata
    from medkit.data.volumes import VolumeError

    thin = np.random.default_rng(0).normal(size=(16, 16, 40)).astype(np.float32) * 100 + 500
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    for name in ("a.nii.gz", "b.nii.gz"):
        write_nifti(thin, aff, tmp_path / "thin" / name)
        write_nifti(thin[..., 2::4][..., :9], np.diag([1.0, 1.0, 4.0, 1.0]), tmp_path / "thick" / name)
    cfg = ctsr.config("smoke", data=str(tmp_path), pair_offset=2)
    with pytest.raises(VolumeError, match="has 9 slices; with factor 4 and pair_offset 2, .* make 10"):
        srdata.load_sr_data(cfg)
    for name in ("a.nii.gz", "b.nii.gz"):
        write_nifti(thin[..., 2::4], np.diag([1.0, 1.0, 3.0, 1.0]), tmp_path / "thick" / name)
    with pytest.raises(VolumeError, match="not factor=4"):
        srdata.load_sr_data(cfg)
    for name in ("a.nii.gz", "b.nii.gz"):
        write_nifti(thin[..., 2::4], np.diag([1.0, 1.0, 4.0, 1.0]), tmp_path / "thick" / name)
    d = srdata.load_sr_data(cfg)
    assert [c.name for c in d.train] == ["a.nii.gz"] and [c.name for c in d.test] == ["b.nii.gz"]
    assert d.offset == 2 and np.allclose(d.cases[0].y[..., 2::4], d.cases[0].lr, atol=1e-5)
    write_nifti(thin[:8, :, 2::4], np.diag([1.0, 1.0, 4.0, 1.0]), tmp_path / "thick" / "b.nii.gz")
    with pytest.raises(VolumeError, match=r"is \(8, 16\) in-plane but .* is \(16, 16\)"):
        srdata.load_sr_data(cfg)
    (tmp_path / "thick" / "b.nii.gz").unlink()
    with pytest.raises(VolumeError, match="missing in thick/"):
        srdata.load_sr_data(cfg)


# ------------------------------------------------------------------------------------ pretrained VAEs
def test_maisi_weights_file_loads_into_the_maisi_network(tmp_path):
    """A tiny MAISI-architecture autoencoder saved as the bundle saves it (a state dict, here nested as some
    bundle versions do) loads back; intensities go through MAISI's [-1000, 1000] HU -> [0, 1] scaling."""
    from medkit.nets.pretrained_vae import MaisiVAE, PretrainedVAEError, build_maisi, load_pretrained_vae

    tiny = dict(num_channels=[8, 8, 16], norm_num_groups=8)
    torch.manual_seed(0)
    net = build_maisi(**tiny)
    torch.save({"unet_state_dict": net.state_dict()}, tmp_path / "autoencoder_epoch273.pt")
    vae = load_pretrained_vae(f"maisi:{tmp_path / 'autoencoder_epoch273.pt'}", (-1024, 3071), maisi_overrides=tiny)
    assert isinstance(vae, MaisiVAE) and vae.factors == (4, 4, 4)
    x = torch.rand(1, 1, 16, 16, 16) * 2 - 1
    mu, sigma = vae.encode(x)
    assert mu.shape == (1, 4, 4, 4, 4) and vae.decode(mu).shape == x.shape
    torch.testing.assert_close(mu, net.encode(vae._to_maisi(x))[0])
    hu = torch.tensor([-1024.0, -1000.0, 0.0, 1000.0, 3071.0])
    unit = (hu + 1024) / 4095 * 2 - 1
    assert torch.allclose(vae._to_maisi(unit), torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]), atol=1e-6)
    with pytest.raises(PretrainedVAEError, match="does not exist. Download MONAI's MAISI bundle"):
        load_pretrained_vae(f"maisi:{tmp_path / 'missing.pt'}")
    with pytest.raises(PretrainedVAEError, match="do not fit MAISI's autoencoder"):
        load_pretrained_vae(f"maisi:{tmp_path / 'autoencoder_epoch273.pt'}")  # the full-size network


def test_diffusers_2d_vae_applied_slice_by_slice(tmp_path, monkeypatch):
    """A tiny 2D diffusers AutoencoderKL saved with save_pretrained (2 input channels, as the complex-MRI
    autoencoder) encodes a volume slice by slice: latents downsampled in-plane only; a missing id says what to do."""
    from diffusers import AutoencoderKL

    from medkit.nets.pretrained_vae import PretrainedVAEError, SliceVAE, load_pretrained_vae

    torch.manual_seed(0)
    ae = AutoencoderKL(in_channels=2, out_channels=2, latent_channels=4, block_out_channels=(8, 16),
                       down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                       norm_num_groups=8, layers_per_block=1)
    ae.save_pretrained(tmp_path / "mri-autoencoder")
    vae = load_pretrained_vae(f"diffusers:{tmp_path / 'mri-autoencoder'}")
    assert isinstance(vae, SliceVAE) and vae.factors == (2, 2, 1)
    x = torch.rand(1, 1, 16, 12, 5) * 2 - 1
    mu, _ = vae.encode(x)
    assert mu.shape == (1, 4, 8, 6, 5)
    slice3 = torch.cat([x[..., 3], torch.zeros_like(x[..., 3])], 1)  # (1, 2, 16, 12): real part, zero imaginary
    torch.testing.assert_close(mu[..., 3], ae.encode(slice3).latent_dist.mean, atol=1e-5, rtol=1e-5)
    assert vae.decode(mu).shape == x.shape
    # through the whole-volume path: latent windows follow the (2, 2, 1) grid
    cfg = ctsr.config("smoke", vae_factors=(2, 2, 1), latent_channels=4)
    out = ctsr_infer.super_resolve(x[0, 0].numpy(), "vae", cfg, vae=vae, scale=1.0, progress=False)
    assert out.volume.shape == (16, 12, 5)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as on an offline Kaggle kernel: the hub is not asked
    with pytest.raises(PretrainedVAEError, match="huggingface-cli download no-such/autoencoder"):
        load_pretrained_vae("diffusers:no-such/autoencoder")
    with pytest.raises(ValueError, match="use 'maisi:PATH"):
        load_pretrained_vae("vqgan:x")
