"""Start CT super-resolution from an autoencoder the user already has, instead of training the kit's 3D VAE.

``load_pretrained_vae(spec, window)`` with ``spec``:

- ``"maisi:PATH"``: MONAI's MAISI CT autoencoder (``monai.apps.generation.maisi ... AutoencoderKlMaisi``, 3D, 4x per
  axis, 4 latent channels) with the weights file of the MAISI bundle (``autoencoder_epoch273.pt``: a state dict,
  possibly nested under ``"state_dict"`` / ``"unet_state_dict"``), built with MAISI's published network settings
  (channels 64/128/256, two residual blocks per level, 32 groups, eps 1e-6, no attention). MAISI expects CT scaled
  from [-1000, 1000] HU to [0, 1]; the wrapper converts from and to this kit's [-1, 1] of the run's HU window.
- ``"diffusers:FOLDER_OR_HUB_ID"``: a 2D diffusers ``AutoencoderKL`` (e.g. microsoft/mri-autoencoder-v0.1, the
  published SBLDM's choice; or a Stable Diffusion VAE) applied slice by slice along z: latents are (C, X/f, Y/f, Z)
  with f = 2^(levels - 1) in-plane and no downsampling through-plane. Input channels beyond the first get the same
  slice (3-channel RGB VAEs) or zeros (2-channel complex-MRI VAEs: the imaginary part); the first output channel is
  the decoded slice.

Either is loaded from a local path, or (diffusers) from the Hugging Face hub cache; when absent, one error names
the spec and says how to get the weights. Both expose ``encode(x) -> (mu, sigma)``, ``decode(z)`` and ``factors``
(downsampling per axis) like the kit's VAE, and are frozen.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

MAISI_NETWORK = dict(spatial_dims=3, in_channels=1, out_channels=1, latent_channels=4, num_channels=[64, 128, 256],
                     num_res_blocks=[2, 2, 2], norm_num_groups=32, norm_eps=1e-6,
                     attention_levels=[False, False, False], with_encoder_nonlocal_attn=False,
                     with_decoder_nonlocal_attn=False, use_checkpointing=False, use_convtranspose=False,
                     norm_float16=False, num_splits=1, dim_split=1)
MAISI_HU = (-1000.0, 1000.0)


class PretrainedVAEError(FileNotFoundError):
    """A pretrained autoencoder named by ``vae_from`` could not be found or does not fit."""


class MaisiVAE(nn.Module):
    """MAISI's autoencoder behind the kit's [-1, 1] intensities (``window``: the run's HU window)."""

    def __init__(self, net: nn.Module, window: tuple[float, float]):
        super().__init__()
        self.net, self.window = net, tuple(float(v) for v in window)
        self.factors = (4, 4, 4)
        self.latent_channels = 4

    def _to_maisi(self, x):
        lo, hi = self.window
        hu = (x.clamp(-1, 1) + 1) / 2 * (hi - lo) + lo
        return ((hu - MAISI_HU[0]) / (MAISI_HU[1] - MAISI_HU[0])).clamp(0, 1)

    def _from_maisi(self, v):
        lo, hi = self.window
        hu = v * (MAISI_HU[1] - MAISI_HU[0]) + MAISI_HU[0]
        return (hu.clamp(lo, hi) - lo) / (hi - lo) * 2 - 1

    def encode(self, x):
        return self.net.encode(self._to_maisi(x))

    def decode(self, z):
        return self._from_maisi(self.net.decode(z))


class SliceVAE(nn.Module):
    """A 2D diffusers AutoencoderKL applied to every axial slice: (B, 1, X, Y, Z) <-> (B, C, X/f, Y/f, Z)."""

    def __init__(self, ae: nn.Module):
        super().__init__()
        self.ae = ae
        f = 2 ** (len(ae.config.block_out_channels) - 1)
        self.factors = (f, f, 1)
        self.latent_channels = ae.config.latent_channels
        self.in_channels = ae.config.in_channels

    def _slices(self, x):
        b, c, X, Y, Z = x.shape
        s = x.permute(0, 4, 1, 2, 3).reshape(b * Z, c, X, Y)
        if self.in_channels > c:  # RGB: the same slice; complex MRI (2 channels): a zero imaginary part
            extra = s.repeat(1, self.in_channels - c, 1, 1) if self.in_channels == 3 else \
                torch.zeros(s.shape[0], self.in_channels - c, X, Y, dtype=s.dtype, device=s.device)
            s = torch.cat([s, extra], 1)
        return s, b, Z

    @staticmethod
    def _volume(s, b, Z):
        n, c, h, w = s.shape
        return s.reshape(b, Z, c, h, w).permute(0, 2, 3, 4, 1)

    def encode(self, x):
        s, b, Z = self._slices(x)
        post = self.ae.encode(s).latent_dist
        return self._volume(post.mean, b, Z), self._volume(post.std, b, Z)

    def decode(self, z):
        s, b, Z = self._slices(z)
        return self._volume(self.ae.decode(s).sample[:, :1], b, Z)


def _state_dict(path: Path) -> dict:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise PretrainedVAEError(f"vae_from='maisi:{path}': cannot read the weights file ({e}). It must be the MAISI "
                                 "bundle's autoencoder state dict (models/autoencoder_epoch273.pt).") from e
    for key in ("unet_state_dict", "state_dict", "autoencoder"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise PretrainedVAEError(f"vae_from='maisi:{path}': the file holds a {type(obj).__name__}, not a state dict")
    return obj


def build_maisi(**overrides) -> nn.Module:
    from monai.apps.generation.maisi.networks.autoencoderkl_maisi import AutoencoderKlMaisi

    return AutoencoderKlMaisi(**{**MAISI_NETWORK, **overrides})


def load_pretrained_vae(spec: str, window: tuple[float, float] = (-1024.0, 3071.0), maisi_overrides=None) -> nn.Module:
    kind, sep, where = str(spec).partition(":")
    if not sep or kind not in ("maisi", "diffusers") or not where:
        raise ValueError(f"vae_from={spec!r}: use 'maisi:PATH_TO_WEIGHTS.pt' or 'diffusers:FOLDER_OR_HUB_ID'")
    if kind == "maisi":
        path = Path(where).expanduser()
        if not path.is_file():
            raise PretrainedVAEError(f"vae_from='{spec}': {path} does not exist. Download MONAI's MAISI bundle "
                                     "(models/autoencoder_epoch273.pt) where you have internet and pass its path.")
        net = build_maisi(**(maisi_overrides or {}))
        try:
            net.load_state_dict(_state_dict(path))
        except RuntimeError as e:
            raise PretrainedVAEError(f"vae_from='{spec}': the weights do not fit MAISI's autoencoder "
                                     f"({str(e).splitlines()[0]} ...). Is it the MAISI autoencoder file?") from e
        vae = MaisiVAE(net, window)
    else:
        from diffusers import AutoencoderKL

        from .sd import _hub_offline, _hub_reachable

        local = Path(where).expanduser()
        try:  # a hub id: the cache only when offline or the hub does not answer (no long network time-outs)
            ae = AutoencoderKL.from_pretrained(str(local) if local.is_dir() else where,
                                               local_files_only=not local.is_dir() and (_hub_offline() or
                                                                                        not _hub_reachable()))
        except Exception as e:
            raise PretrainedVAEError(
                f"vae_from='{spec}': no diffusers AutoencoderKL at {where!r} ({type(e).__name__}: "
                f"{' '.join(str(e).split())[:200]}). Pass a local folder holding config.json and the weights, or a hub "
                f"id that is in the Hugging Face cache (download it where you have internet: "
                f"`huggingface-cli download {where} --local-dir DIR`, then vae_from='diffusers:DIR').") from e
        vae = SliceVAE(ae)
    return vae.eval().requires_grad_(False)

