"""Dense Hint Input (DHI) of Siamese-Diffusion (Qiu et al., CVPR 2025, arXiv 2505.06068).

ControlNet (Zhang et al., arXiv 2302.05543) turns the hint (a mask) into a feature map with a *sparse*
block: a few plain convs, three of them stride 2. DHI replaces it with a *dense* one that keeps more of
the mask's geometry: residual blocks at full resolution, then Swin-style patch merging (space-to-depth,
LayerNorm, linear reduction; Liu et al., arXiv 2103.14030) to go down in resolution::

    hint (in, H, W)
      conv3x3 in->16, ResBlock(16), conv3x3 16->32, ResBlock(32)          full resolution
      downsample x [PatchMerging(c -> 2c), conv3x3 2c->2c, ResBlock(2c)]  each halves H and W
      zero-initialised conv3x3 -> out (ControlNet's first-level channels)

With ``downsample=3`` and 3 -> 320 channels (SD 1.5) the path is 16, 32 -> 64 -> 128 -> 256 -> 320 and the
module has 3.26M parameters, against 1.09M for the standard block. The last conv starts at zero, so at
initialisation the hint adds nothing and the ControlNet behaves as if no hint were given.

:func:`install_dhi` swaps it into a MONAI ``ControlNet`` or a diffusers ``ControlNetModel``; both keep the
hint block in ``controlnet_cond_embedding`` and add its output to ``conv_in(x)``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets.swin_unetr import PatchMergingV2
from torch import nn

__all__ = ["DenseHintInput", "PatchMerging", "ResBlock", "install_dhi"]


class ResBlock(nn.Module):
    """conv3x3 -> SiLU -> conv3x3, plus a 1x1 conv skip when the channels differ; add, then SiLU. No norm."""

    def __init__(self, c_in: int, c_out: int | None = None):
        super().__init__()
        c_out = c_out or c_in
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.act(self.conv1(x))) + self.skip(x))


class PatchMerging(PatchMergingV2):
    """Swin patch merging on channels-first maps: (B, c, H, W) -> (B, 2c, H/2, W/2): MONAI's ``PatchMergingV2``.

    Each 2x2 patch becomes one position with 4c channels, ordered as the four pixels
    (top-left, bottom-left, top-right, bottom-right), each contributing its c channels; then
    LayerNorm(4c) and a bias-free Linear(4c -> 2c) over the channels - MONAI's 2D layout exactly (its
    parameters are ``norm`` and ``reduction``, as before). MONAI works channels-last and pads odd sizes; here
    the map is channels-first and an odd size is an error (the DHI halves a hint whose size the VAE fixed).
    """

    def __init__(self, c: int):
        super().__init__(c, spatial_dims=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"PatchMerging expects a 2D feature map (B, C, H, W); got shape {tuple(x.shape)}.")
        h, w = x.shape[-2:]
        if h % 2 or w % 2:
            raise ValueError(f"PatchMerging needs even H and W; got {h}x{w}.")
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()


class DenseHintInput(nn.Module):
    """The DHI hint block: ``(B, in_channels, H, W)`` -> ``(B, out_channels, H / 2**downsample, W / 2**downsample)``.

    Args:
        in_channels: hint channels (3 for a mask replicated to RGB, 1 for a single-channel mask).
        out_channels: the ControlNet's first-level channels (320 for SD 1.5; ``channels[0]`` in MONAI).
        downsample: how many times to halve the resolution: the VAE's factor is ``2**downsample``
            (3 for SD 1.5's 8x VAE), 0 for a pixel-space model whose hint has the image's size.
        base: channels of the two full-resolution stages; each downsampling doubles the last one.
    """

    def __init__(self, in_channels: int, out_channels: int, downsample: int = 3, base: Sequence[int] = (16, 32)):
        super().__init__()
        if downsample < 0:
            raise ValueError(f"DenseHintInput: downsample={downsample} must be >= 0.")
        if len(base) != 2:
            raise ValueError(f"DenseHintInput: base={tuple(base)} must give two channel counts, e.g. (16, 32).")
        self.in_channels, self.out_channels, self.downsample = in_channels, out_channels, downsample
        c0, c = base
        layers: list[nn.Module] = [nn.Conv2d(in_channels, c0, 3, padding=1), ResBlock(c0),
                                   nn.Conv2d(c0, c, 3, padding=1), ResBlock(c)]
        for _ in range(downsample):
            layers += [PatchMerging(c), nn.Conv2d(2 * c, 2 * c, 3, padding=1), ResBlock(2 * c)]
            c *= 2
        self.body = nn.Sequential(*layers)
        self.conv_out = nn.Conv2d(c, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, hint: torch.Tensor) -> torch.Tensor:
        if hint.ndim != 4:
            raise ValueError(f"DenseHintInput is 2D only: expected a hint of shape (B, C, H, W), got "
                             f"{tuple(hint.shape)}. For 3D volumes use the standard hint block (hint='standard').")
        if hint.shape[1] != self.in_channels:
            raise ValueError(f"DenseHintInput: the hint has {hint.shape[1]} channels but the block was built for "
                             f"in_channels={self.in_channels}.")
        f = 2 ** self.downsample
        h, w = hint.shape[-2:]
        if h % f or w % f:
            raise ValueError(f"DenseHintInput: hint size {h}x{w} is not divisible by 2**downsample = {f}; "
                             f"resize the hint (and image) to a multiple of {f}.")
        return self.conv_out(self.body(hint))


def _first_conv(module: nn.Module) -> nn.Module | None:
    return next((m for m in module.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))), None)


def install_dhi(controlnet: nn.Module, hint_channels: int | None = None, downsample: int = 3) -> nn.Module:
    """Replace ``controlnet.controlnet_cond_embedding`` with a :class:`DenseHintInput`; returns ``controlnet``.

    Works on a MONAI ``monai.networks.nets.ControlNet`` (2D; output ``channels[0]``) and on a diffusers
    ``ControlNetModel`` (output ``block_out_channels[0]``). ``hint_channels=None`` keeps the input channels
    of the block being replaced. ``downsample`` must make the hint (given at image resolution) match what the
    ControlNet's ``conv_in`` sees: 3 for SD 1.5's latents, 0 in pixel space. The new block is created on the
    old one's device and dtype.
    """
    old = getattr(controlnet, "controlnet_cond_embedding", None)
    if old is None:
        raise TypeError(f"install_dhi: {type(controlnet).__name__} has no controlnet_cond_embedding; it expects a "
                        "MONAI ControlNet or a diffusers ControlNetModel.")
    config = getattr(controlnet, "config", None)
    if config is not None and hasattr(config, "block_out_channels"):      # diffusers ControlNetModel
        out_channels = config.block_out_channels[0]
    elif hasattr(controlnet, "block_out_channels"):                       # MONAI ControlNet
        out_channels = controlnet.block_out_channels[0]
        conv = _first_conv(controlnet.conv_in)
        if not isinstance(conv, nn.Conv2d):
            raise ValueError(f"install_dhi: DenseHintInput is 2D only, but this MONAI ControlNet uses "
                             f"{type(conv).__name__}; keep the standard hint block for 3D.")
    else:
        raise TypeError(f"install_dhi: cannot tell the first-level channels of {type(controlnet).__name__}; "
                        "it expects a MONAI ControlNet or a diffusers ControlNetModel.")
    if hint_channels is None:
        conv = _first_conv(old)
        if conv is None:
            raise ValueError("install_dhi: cannot read the hint channels from the current block; pass hint_channels.")
        hint_channels = conv.in_channels
    ref = next(old.parameters(), None)
    dhi = DenseHintInput(hint_channels, out_channels, downsample)
    if ref is not None:
        dhi = dhi.to(device=ref.device, dtype=ref.dtype)
    controlnet.controlnet_cond_embedding = dhi
    if hasattr(controlnet, "register_to_config"):                         # keep diffusers' config truthful
        controlnet.register_to_config(conditioning_channels=hint_channels)
    return controlnet
