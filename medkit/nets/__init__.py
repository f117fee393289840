"""Network factories over MONAI's generative networks - no hand-written UNet or VAE.

``make_vae`` builds MONAI's ``AutoencoderKL`` (KL-regularised autoencoder of Rombach et al., LDM,
arXiv 2112.10752); ``make_unet`` builds ``DiffusionModelUNet``. Both take ``spatial_dims`` first, so the
same call serves 2D slices and 3D volumes. A VAE with ``len(channels)`` levels downsamples by
``2 ** (len(channels) - 1)``.

Gradient checkpointing: AutoencoderKL has ``use_checkpoint``; DiffusionModelUNet has no flag, so
:func:`checkpoint_blocks` wraps its down, middle and up blocks with ``torch.utils.checkpoint``
(activations recomputed in the backward pass: ~30% slower, much less memory on a 16 GB T4).

``make_controlnet`` builds MONAI's ``ControlNet`` (Zhang et al., arXiv 2302.05543) with a UNet's settings and
copies the UNet's encoder weights into it; its hint block is either MONAI's standard one or the Dense Hint
Input of Siamese-Diffusion (:mod:`medkit.nets.dhi`). Stable Diffusion 1.5 lives in :mod:`medkit.nets.sd`.
"""
from __future__ import annotations

import types

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def _check_channels(name: str, channels: Sequence[int], norm_num_groups: int) -> None:
    bad = [c for c in channels if c % norm_num_groups]
    if bad:
        raise ValueError(f"{name}: channels {tuple(channels)} must all be multiples of norm_num_groups="
                         f"{norm_num_groups} (GroupNorm); {bad} are not. Change channels or norm_num_groups.")


def make_vae(spatial_dims: int = 2, in_channels: int = 1, latent_channels: int = 4,
             channels: Sequence[int] = (32, 64, 128), num_res_blocks: int = 1,
             attention: bool = False, norm_num_groups: int = 32,
             gradient_checkpointing: bool = False) -> nn.Module:
    """MONAI AutoencoderKL; downsampling factor ``2 ** (len(channels) - 1)`` (3 levels -> 4x).

    attention: the mid-block self-attention of LDM's VAE (costly at high resolution; off by default).
    """
    from monai.networks.nets import AutoencoderKL

    _check_channels("make_vae", channels, norm_num_groups)
    return AutoencoderKL(
        spatial_dims=spatial_dims, in_channels=in_channels, out_channels=in_channels,
        latent_channels=latent_channels, channels=tuple(channels), num_res_blocks=num_res_blocks,
        attention_levels=(False,) * len(channels), norm_num_groups=norm_num_groups,
        with_encoder_nonlocal_attn=attention, with_decoder_nonlocal_attn=attention,
        use_checkpoint=gradient_checkpointing,
    )


def make_unet(spatial_dims: int = 2, in_channels: int = 4, out_channels: int | None = None,
              channels: Sequence[int] = (64, 128, 256), attention_levels: Sequence[bool] | None = None,
              num_res_blocks: int = 2, num_head_channels: int = 32, norm_num_groups: int = 32,
              dropout: float = 0.0, num_class_embeds: int | None = None,
              gradient_checkpointing: bool = False) -> nn.Module:
    """MONAI DiffusionModelUNet; attention only at the deepest level unless ``attention_levels`` is given."""
    from monai.networks.nets import DiffusionModelUNet

    _check_channels("make_unet", channels, norm_num_groups)
    if attention_levels is None:
        attention_levels = (False,) * (len(channels) - 1) + (True,)
    if len(attention_levels) != len(channels):
        raise ValueError(f"make_unet: attention_levels has {len(attention_levels)} entries but channels has "
                         f"{len(channels)}; give one bool per level.")
    net = DiffusionModelUNet(
        spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels or in_channels,
        channels=tuple(channels), attention_levels=tuple(attention_levels), num_res_blocks=num_res_blocks,
        num_head_channels=num_head_channels, norm_num_groups=norm_num_groups, dropout_cattn=0.0,
        num_class_embeds=num_class_embeds, resblock_updown=False,
    )
    if dropout:
        set_resblock_dropout(net, dropout)
    if gradient_checkpointing:
        checkpoint_blocks(net)
    return net


STANDARD_HINT_CHANNELS = (16, 32, 96, 256)   # MONAI's / diffusers' default hint block: 3 stride-2 convs


def make_controlnet(spatial_dims: int = 2, in_channels: int = 4, out_channels: int | None = None,
                    channels: Sequence[int] = (64, 128, 256), attention_levels: Sequence[bool] | None = None,
                    num_res_blocks: int = 2, num_head_channels: int = 32, norm_num_groups: int = 32,
                    dropout: float = 0.0, num_class_embeds: int | None = None,
                    gradient_checkpointing: bool = False, *, unet: nn.Module | None = None,
                    hint_channels: int = 1, hint: str = "dhi", downsample: int = 0) -> nn.Module:
    """MONAI ControlNet matching :func:`make_unet` called with the same arguments.

    Pass the UNet's keyword arguments unchanged (``out_channels`` is ignored: a ControlNet has no output
    head) and ``unet=`` to copy its encoder weights (conv_in, time and class embeddings, down and middle
    blocks), as ControlNet initialises its trainable copy.

    hint: ``"dhi"`` (Dense Hint Input, 2D only) or ``"standard"`` (MONAI's block, channels
    ``(16, 32, 96, 256)[:downsample + 1]``). downsample: halvings from the hint's resolution to the UNet
    input's: the VAE's ``len(channels) - 1`` for a latent model, 0 when the UNet works on pixels.
    """
    from monai.networks.nets import ControlNet

    if hint not in ("dhi", "standard"):
        raise ValueError(f"make_controlnet: hint={hint!r}; use 'dhi' (Dense Hint Input) or 'standard'.")
    if hint == "dhi" and spatial_dims != 2:
        raise ValueError(f"make_controlnet: hint='dhi' is 2D only (spatial_dims={spatial_dims}); use hint='standard'.")
    if downsample < 0 or hint == "standard" and downsample >= len(STANDARD_HINT_CHANNELS):
        raise ValueError(f"make_controlnet: downsample={downsample}; use 0 or more for 'dhi' and 0 to "
                         f"{len(STANDARD_HINT_CHANNELS) - 1} for the standard hint block.")
    _check_channels("make_controlnet", channels, norm_num_groups)
    if attention_levels is None:
        attention_levels = (False,) * (len(channels) - 1) + (True,)
    if len(attention_levels) != len(channels):
        raise ValueError(f"make_controlnet: attention_levels has {len(attention_levels)} entries but channels has "
                         f"{len(channels)}; give one bool per level.")
    net = ControlNet(
        spatial_dims=spatial_dims, in_channels=in_channels, channels=tuple(channels),
        attention_levels=tuple(attention_levels), num_res_blocks=num_res_blocks,
        num_head_channels=num_head_channels, norm_num_groups=norm_num_groups, num_class_embeds=num_class_embeds,
        resblock_updown=False, conditioning_embedding_in_channels=hint_channels,
        conditioning_embedding_num_channels=STANDARD_HINT_CHANNELS[:min(downsample, 3) + 1],
    )
    if unet is not None:
        copy_encoder_weights(net, unet)
    if hint == "dhi":
        from .dhi import install_dhi

        install_dhi(net, hint_channels, downsample)
    if dropout:
        set_resblock_dropout(net, dropout)
    if gradient_checkpointing:
        checkpoint_blocks(net)
    return net


def copy_encoder_weights(controlnet: nn.Module, unet: nn.Module) -> list[str]:
    """Copy a MONAI DiffusionModelUNet's weights into the ControlNet's parameters of the same name and shape.

    Everything of the ControlNet except its hint block and zero convs (``controlnet_*``) must be found, else
    the two were built with different settings (ValueError naming a few keys). Returns the copied keys.
    """
    src, dst = unet.state_dict(), controlnet.state_dict()
    copied = {k: v for k, v in src.items() if k in dst and dst[k].shape == v.shape}
    missing = [k for k in dst if k not in copied and not k.startswith("controlnet_")]
    if missing:
        raise ValueError(f"copy_encoder_weights: {len(missing)} ControlNet weights have no match of the same shape "
                         f"in the UNet (e.g. {missing[:3]}); build both with the same arguments.")
    controlnet.load_state_dict(copied, strict=False)
    return sorted(copied)


def set_resblock_dropout(net: nn.Module, p: float) -> int:
    """Dropout before the second conv of every residual block, where DDPM puts it.

    MONAI's DiffusionUNetResnetBlock has no dropout; a forward pre-hook on ``conv2`` adds it without
    changing the state dict (checkpoints stay loadable with or without dropout). Returns the count.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout={p}: must be in [0, 1)")
    n = 0
    for m in net.modules():
        if type(m).__name__ == "DiffusionUNetResnetBlock":
            conv2 = m.conv2
            if getattr(conv2, "_medkit_dropout_hook", None) is not None:
                conv2._medkit_dropout_hook.remove()
            conv2._medkit_dropout = p
            conv2._medkit_dropout_hook = conv2.register_forward_pre_hook(
                lambda mod, args: (nn.functional.dropout(args[0], mod._medkit_dropout, mod.training), *args[1:]))
            n += 1
    return n


def checkpoint_blocks(net: nn.Module) -> int:
    """Wrap DiffusionModelUNet's down/middle/up blocks with non-reentrant gradient checkpointing.

    Only active in training mode with gradients enabled; the outputs are identical either way.
    Returns the number of wrapped blocks.
    """
    blocks = [*getattr(net, "down_blocks", []), getattr(net, "middle_block", None), *getattr(net, "up_blocks", [])]
    blocks = [b for b in blocks if b is not None]
    if not blocks:
        raise TypeError(f"checkpoint_blocks: {type(net).__name__} has no down_blocks/middle_block/up_blocks; "
                        "it expects a MONAI DiffusionModelUNet or ControlNet.")
    for block in blocks:
        if getattr(block, "_medkit_checkpointed", False):
            continue
        # a bound method (not a closure over this block), so a deep copy of the network checkpoints its own blocks
        block.forward = types.MethodType(_checkpointed_forward, block)
        block._medkit_checkpointed = True
    return len(blocks)


def _checkpointed_forward(self, *args, **kwargs):
    forward = type(self).forward.__get__(self)
    if self.training and torch.is_grad_enabled():
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return forward(*args, **kwargs)


def count_parameters(net: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in net.parameters() if p.requires_grad or not trainable_only)
