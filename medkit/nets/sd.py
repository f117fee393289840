"""Stable Diffusion 1.5 + ControlNet for the ``sd15`` backend: loading offline first, a tiny stand-in, memory.

SD 1.5 (Rombach et al., LDM, arXiv 2112.10752) is four parts: a UNet2DConditionModel on 4 x H/8 x W/8
latents, the AutoencoderKL that makes them (scaled by ``vae.config.scaling_factor`` = 0.18215), a CLIP
ViT-L/14 text encoder (77 tokens -> 77 x 768) and its tokenizer. ControlNet (Zhang et al., arXiv
2302.05543) is a trainable copy of the UNet's encoder whose zero-initialised 1x1 convs feed residuals into
the frozen UNet; Siamese-Diffusion swaps its hint block for the Dense Hint Input (:mod:`medkit.nets.dhi`).

Where :func:`load_sd15` looks, stopping at the first complete copy (diffusers layout: ``model_index.json``,
``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``):

1. ``source`` as a local folder;
2. on Kaggle, a folder of that layout attached under ``/kaggle/input`` (a model or dataset; searched a
   few levels deep);
3. the Hugging Face cache, then a download of only the files needed (~3.9 GB in fp32 safetensors),
   skipped at once when ``HF_HUB_OFFLINE=1`` or the Hub does not answer.

When all fail, :class:`ModelUnavailable` names the id, every place searched and what to do.

:func:`tiny_sd_components` / :func:`save_tiny_sd` build a randomly initialised SD-shaped set from config
dicts only (a few hundred thousand parameters) so that CI exercises the same code offline.
"""
from __future__ import annotations

import json
import os
import socket
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from ..metrics._weights import WeightsUnavailable, iter_tree
from .dhi import install_dhi

SD15_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"
KAGGLE_INPUT = Path("/kaggle/input")   # module constant so that tests can point it at a temporary folder
SEARCH_MAX_DEPTH = 6                   # /kaggle/input/<model>/<framework>/<variation>/<version>/model_index.json
SEARCH_MAX_ENTRIES = 50_000
ONLINE_TIMEOUT_S = 3.0
SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
# What a download fetches: the fp32 safetensors of the three networks, the tokenizer and the configs.
HUB_FILES = ["model_index.json", "scheduler/*", "tokenizer/*",
             "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
             "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
             "text_encoder/config.json", "text_encoder/model.safetensors"]

# SD 1.5's noise schedule (its scheduler/scheduler_config.json), for a DDPM or DDIM scheduler.
SD15_SCHEDULER_CONFIG = {
    "_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "prediction_type": "epsilon", "clip_sample": False,
    "set_alpha_to_one": False, "steps_offset": 1,
}

# Parameter counts of SD 1.5 in diffusers (counted from the published configs).
SD15_PARAMS = {
    "unet": 859_520_964,           # encoder + mid 348,712,960; decoder below
    "unet_decoder": 510_808_004,   # up_blocks + conv_norm_out + conv_out
    "controlnet_body": 360_192_640,  # ControlNetModel.from_unet without its hint block (361,279,120 with it)
    "hint": 3_263_424,             # DenseHintInput(3, 320, downsample=3); the standard block has 1,086,480
    "vae": 83_653_863,
    "text_encoder": 123_060_480,   # CLIP ViT-L/14 text tower
}


class ModelUnavailable(WeightsUnavailable):
    """No usable copy of a diffusers pipeline (e.g. SD 1.5) could be found or downloaded."""


@dataclass
class SDComponents:
    """The parts of a Stable Diffusion pipeline that training and sampling need.

    ``scheduler_config`` is a dict for ``DDPMScheduler.from_config`` / ``DDIMScheduler.from_config``;
    ``source`` says where the weights came from.
    """

    unet: nn.Module
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: object
    scheduler_config: dict
    source: str = field(default="")

    @property
    def vae_scale_factor(self) -> int:
        """Image size / latent size: 8 for SD 1.5, 2 for the tiny set."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_scaling(self) -> float:
        """Multiply the VAE's latents by this before diffusion (0.18215 for SD 1.5)."""
        return float(self.vae.config.scaling_factor)


# ---------------------------------------------------------------------------------------------- loading

def _missing_parts(folder: Path) -> list[str]:
    need = ["model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json",
            "scheduler/scheduler_config.json"]
    missing = [p for p in need if not (folder / p).is_file()]
    tok = folder / "tokenizer"
    if not ((tok / "vocab.json").is_file() or (tok / "tokenizer.json").is_file()):
        missing.append("tokenizer/vocab.json")
    for sub, stem in (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"),
                      ("text_encoder", "model")):
        if (folder / sub).is_dir() and not any(p.name.startswith((stem, "pytorch_model"))
                                               for p in (folder / sub).iterdir()):
            missing.append(f"{sub}/{stem}.safetensors")
    return missing


def load_sd_folder(folder: str | os.PathLike, dtype: torch.dtype = torch.float32) -> SDComponents:
    """Load the five parts from a folder in diffusers layout, without network access.

    The VAE and text encoder come frozen (``requires_grad=False``, eval mode); the UNet is left as loaded.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = Path(folder).expanduser()
    missing = _missing_parts(folder)
    if missing:
        raise ModelUnavailable(f"{folder} is not a complete Stable Diffusion folder in diffusers layout; missing: "
                               f"{', '.join(missing)}. Download it again (all of {', '.join(SUBFOLDERS)}).")
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype, local_files_only=True)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dtype, local_files_only=True)
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", local_files_only=True).to(dtype)
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    scheduler_config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    for frozen in (vae, text_encoder):
        frozen.requires_grad_(False).eval()
    return SDComponents(unet, vae, text_encoder, tokenizer, scheduler_config, str(folder))


def find_diffusers_folders(root: Path, max_depth: int = SEARCH_MAX_DEPTH,
                           max_entries: int = SEARCH_MAX_ENTRIES) -> list[Path]:
    """Folders under ``root`` holding ``model_index.json`` and ``unet/`` (breadth first, sorted, bounded)."""
    def is_pipeline(folder: Path) -> bool:
        return (folder / "model_index.json").is_file() and (folder / "unet").is_dir()

    root = Path(root)
    if is_pipeline(root):
        return [root]
    hits = []
    for entry in iter_tree(root, max_depth - 1, max_entries, prune=is_pipeline):
        try:
            if entry.is_dir() and is_pipeline(Path(entry.path)):
                hits.append(Path(entry.path))
        except OSError:
            continue
    return hits


def _pick_kaggle_copy(source: str, hits: list[Path]) -> tuple[Path | None, list[str]]:
    """The attached folder to use: one whose path names the model (``stable-diffusion-v1-5``), else a complete
    SD 1.x-shaped one (cross-attention width 768). Returns it (or None) and notes on the folders skipped."""
    name = source.rstrip("/").split("/")[-1].lower()
    notes, sd1_like = [], None
    for hit in hits:
        missing = _missing_parts(hit)
        if missing:
            notes.append(f"{hit} (incomplete: {', '.join(missing)})")
            continue
        if name and any(part.lower() == name for part in hit.parts):
            return hit, notes
        try:
            width = json.loads((hit / "unet" / "config.json").read_text()).get("cross_attention_dim")
        except (OSError, ValueError):
            width = None
        if width == 768 and sd1_like is None:
            sd1_like = hit
        else:
            notes.append(f"{hit} (another model: its path does not name {name!r}, cross_attention_dim={width})")
    return sd1_like, notes


def _hub_offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "") or os.environ.get("TRANSFORMERS_OFFLINE", "")
    return env.strip().lower() in ("1", "true", "yes", "on") or bool(constants.HF_HUB_OFFLINE)


def _hub_reachable() -> bool:
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=ONLINE_TIMEOUT_S).close()
        return True
    except OSError:
        return False


def hub_snapshot(repo: str, allow_patterns, searched: list[str], incomplete=None) -> Path | None:
    """A Hugging Face repository's files: from the local cache, else downloaded when the hub is reachable and
    HF_HUB_OFFLINE is not set; None when neither works, with what was tried appended to ``searched``.
    ``incomplete(folder) -> [missing parts]`` rejects a cached snapshot that lacks something."""
    from huggingface_hub import constants, snapshot_download

    try:
        folder = Path(snapshot_download(repo, allow_patterns=allow_patterns, local_files_only=True))
        missing = incomplete(folder) if incomplete else []
        if not missing:
            return folder
        searched.append(f"Hugging Face cache {folder} (incomplete: {', '.join(missing)})")
    except Exception as e:  # noqa: BLE001 - not cached, or not a valid id; reported by the caller
        searched.append(f"Hugging Face cache {constants.HF_HUB_CACHE} for {repo} ({type(e).__name__})")
    if _hub_offline():
        searched.append("download from the Hugging Face Hub (skipped: HF_HUB_OFFLINE is set)")
    elif not _hub_reachable():
        searched.append(f"download from {constants.ENDPOINT} (not reachable: offline?)")
    else:
        try:
            return Path(snapshot_download(repo, allow_patterns=allow_patterns))
        except Exception as e:  # noqa: BLE001 - reported by the caller with everything else that was tried
            searched.append(f"download of {repo} from {constants.ENDPOINT} ({type(e).__name__}: {e})")
    return None


def load_sd15(source: str | os.PathLike = SD15_ID, dtype: torch.dtype = torch.float32) -> SDComponents:
    """Stable Diffusion 1.5's UNet, VAE, CLIP text encoder, tokenizer and scheduler config.

    source: a local folder in diffusers layout, or a Hugging Face id (default the official SD 1.5 repo).
    Looks in the places of the module docstring, in that order; no network access when ``HF_HUB_OFFLINE=1``.
    dtype: ``torch.float16`` halves the memory of the frozen parts on a GPU.

    Raises:
        ModelUnavailable: no complete copy anywhere (the message lists every place searched and the fix).
    """
    source = str(source)
    searched = []
    local = Path(source).expanduser()
    if local.is_dir():
        return load_sd_folder(local, dtype)
    searched.append(f"local folder {source!r} (no such folder)")

    if KAGGLE_INPUT.is_dir():
        hit, notes = _pick_kaggle_copy(source, find_diffusers_folders(KAGGLE_INPUT))
        if hit is not None:
            return load_sd_folder(hit, dtype)
        searched.append(f"{KAGGLE_INPUT}/** to depth {SEARCH_MAX_DEPTH} for a folder with model_index.json and "
                        f"unet/ (none usable{': ' + '; '.join(notes) if notes else ''})")
    else:
        searched.append(f"{KAGGLE_INPUT} (not on Kaggle)")

    folder = hub_snapshot(source, HUB_FILES, searched, incomplete=_missing_parts)
    if folder is not None:
        return load_sd_folder(folder, dtype)

    raise ModelUnavailable(
        f"Stable Diffusion {source!r} (diffusers layout: model_index.json, {'/, '.join(SUBFOLDERS)}/) was not "
        "found. Searched:\n  - " + "\n  - ".join(searched)
        + f"\nTo fix: on Kaggle, add a model or dataset with SD 1.5 in diffusers format to the notebook (it is "
          f"found up to {SEARCH_MAX_DEPTH} folders deep under {KAGGLE_INPUT}), or turn the notebook's internet "
          f"on; elsewhere run `huggingface-cli download {SD15_ID}` (or `hf download {SD15_ID}`) on a machine "
          "with internet, or pass source='path/to/folder' holding that layout.")


# ------------------------------------------------------------------------------------------ tiny stand-in

_TINY_WORDS = ("a", "an", "the", "of", "photo", "image", "polyp", "skin", "lesion", "mask", "colonoscopy")


def _tiny_tokenizer_files(folder: Path, config: bool = True) -> None:
    """vocab.json + merges.txt of a character-level CLIP BPE (printable ASCII) with merges for a few words."""
    vocab: dict[str, int] = {}

    def add(token: str) -> None:
        vocab.setdefault(token, len(vocab))

    for code in range(33, 127):
        add(chr(code))
        add(chr(code) + "</w>")
    merges = []
    for word in _TINY_WORDS:
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        while len(symbols) > 1:                       # merge left to right: p h o t o</w> -> photo</w>
            merges.append(f"{symbols[0]} {symbols[1]}")
            symbols = [symbols[0] + symbols[1], *symbols[2:]]
            add(symbols[0])
    add("<|startoftext|>")
    add("<|endoftext|>")
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    if config:
        (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77}))


def tiny_sd_components(seed: int = 0, image_size: int = 32) -> SDComponents:
    """A randomly initialised SD-shaped set from config dicts only (no download): VAE factor 2, 4 latent
    channels, cross-attention width 32, 77-token CLIP text encoder. Deterministic for a given ``seed``."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    if image_size % 4:
        raise ValueError(f"tiny_sd_components: image_size={image_size} must be a multiple of 4 (VAE factor 2, "
                         "then one UNet downsampling).")
    with tempfile.TemporaryDirectory() as tmp:
        _tiny_tokenizer_files(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp, local_files_only=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                            up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64),
                            layers_per_block=1, latent_channels=4, norm_num_groups=16, sample_size=image_size,
                            scaling_factor=0.18215)
        unet = UNet2DConditionModel(sample_size=image_size // 2, in_channels=4, out_channels=4,
                                    block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=16,
                                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                    cross_attention_dim=32, attention_head_dim=4)
        text_config = CLIPTextConfig(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=2, max_position_embeddings=77, projection_dim=32,
                                     bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                     pad_token_id=tokenizer.pad_token_id)
        text_encoder = CLIPTextModel(text_config)
    for frozen in (vae, text_encoder):
        frozen.requires_grad_(False).eval()
    return SDComponents(unet, vae, text_encoder, tokenizer, dict(SD15_SCHEDULER_CONFIG), f"tiny (seed {seed})")


def save_sd_folder(components: SDComponents, folder: str | os.PathLike) -> Path:
    """Write ``components`` in diffusers layout (what :func:`load_sd_folder` reads back)."""
    import diffusers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    components.unet.save_pretrained(folder / "unet")
    components.vae.save_pretrained(folder / "vae")
    components.text_encoder.save_pretrained(folder / "text_encoder")
    components.tokenizer.save_pretrained(folder / "tokenizer")
    (folder / "scheduler").mkdir(exist_ok=True)
    config = {"_diffusers_version": diffusers.__version__, **components.scheduler_config}
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(config, indent=2))
    index = {
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", config.get("_class_name", "DDIMScheduler")],
        "safety_checker": [None, None], "feature_extractor": [None, None], "requires_safety_checker": False,
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def save_tiny_sd(folder: str | os.PathLike, seed: int = 0, image_size: int = 32) -> SDComponents:
    """Save :func:`tiny_sd_components` in diffusers layout under ``folder``; returns the saved components."""
    components = tiny_sd_components(seed, image_size)
    save_sd_folder(components, folder)
    # Recent transformers save only tokenizer.json; the vocabulary files keep the folder readable by older ones.
    _tiny_tokenizer_files(Path(folder) / "tokenizer", config=False)
    return components


# ------------------------------------------------------------------------------------ ControlNet, prompts

def make_controlnet_sd(unet: nn.Module, hint_channels: int = 3, dhi: bool = True, downsample: int = 3) -> nn.Module:
    """diffusers ControlNetModel initialised from ``unet``'s encoder, with the Dense Hint Input when ``dhi``.

    The hint comes at image resolution, so ``downsample`` must be log2 of the VAE factor (3 for SD 1.5, 1 for
    the tiny set). Without DHI the standard block is used, with ``(16, 32, 96, 256)[:downsample + 1]`` channels.
    Save a DHI ControlNet as a state dict and rebuild it with this function before ``load_state_dict``:
    ``ControlNetModel.from_pretrained`` would recreate the standard hint block from the config.
    """
    from diffusers import ControlNetModel

    if not dhi and not 0 <= downsample <= 3:
        raise ValueError(f"make_controlnet_sd: downsample={downsample}; the standard hint block supports 0 to 3.")
    controlnet = ControlNetModel.from_unet(
        unet, conditioning_channels=hint_channels,
        conditioning_embedding_out_channels=(16, 32, 96, 256)[:min(max(downsample, 0), 3) + 1])
    if dhi:
        install_dhi(controlnet, hint_channels, downsample)
    return controlnet


@torch.no_grad()
def encode_prompt(tokenizer, text_encoder: nn.Module, prompts: list[str] | str) -> torch.Tensor:
    """CLIP embeddings (B, 77, width) of ``prompts``, padded to the tokenizer's max length: the text condition.

    Used once before training: the constant prompt and the empty prompt "" (classifier-free guidance).
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    ids = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    device = next(text_encoder.parameters()).device
    return text_encoder(ids.to(device))[0]


def make_optimizer(params: Iterable, lr: float, weight_decay: float = 1e-2, eight_bit: bool | str = "auto",
                   like: str | None = None) -> tuple[torch.optim.Optimizer, str]:
    """AdamW, 8-bit (bitsandbytes ``AdamW8bit``: 2 bytes of state per parameter instead of 8) where possible.

    eight_bit: ``"auto"`` uses it when bitsandbytes imports and CUDA is available, else torch's AdamW;
    ``True`` requires it (error otherwise); ``False`` always uses torch's AdamW. Returns (optimizer, name).
    like: the name a run recorded when it started (resuming): the same optimizer again, whatever "auto" would
    find now, so that its saved state loads - a run does not change optimizer because a package appeared.
    """
    if eight_bit not in ("auto", True, False):
        raise ValueError(f"make_optimizer: eight_bit={eight_bit!r}; use 'auto', True or False.")
    if like is not None:
        if like.startswith("AdamW8bit"):
            if eight_bit is False:
                raise ValueError("make_optimizer: this run was started with bitsandbytes' AdamW8bit but eight_bit="
                                 "False now; resume with eight_bit='auto' (or True), or start a new run directory.")
            eight_bit = True
        elif like.startswith("AdamW (torch)"):
            eight_bit = False
        else:
            raise ValueError(f"make_optimizer: like={like!r}: the recorded name of an optimizer this function "
                             "makes ('AdamW (torch)' or 'AdamW8bit (bitsandbytes)')")
    params = list(params)
    if eight_bit:
        try:
            import bitsandbytes as bnb
        except Exception as e:
            if eight_bit is True:
                raise ImportError(f"make_optimizer: {'this run was started with AdamW8bit, which' if like else 'eight_bit=True'} "
                                  f"needs bitsandbytes, which does not import ({type(e).__name__}: {e}). `pip install "
                                  "bitsandbytes`, or "
                                  + ("start a new run directory." if like else
                                     "pass eight_bit='auto' to fall back to torch's AdamW.")) from e
            bnb = None
        if bnb is not None and torch.cuda.is_available():
            return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay), "AdamW8bit (bitsandbytes)"
        if eight_bit is True:
            raise RuntimeError(f"make_optimizer: {'this run was started with AdamW8bit, which' if like else 'eight_bit=True'} "
                               "needs a CUDA GPU for bitsandbytes' AdamW8bit; "
                               + ("resume it on a GPU, or start a new run directory." if like else
                                  "pass eight_bit='auto' to fall back to torch's AdamW."))
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay), "AdamW (torch)"


# ------------------------------------------------------------------------------------------------- memory

def _count(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def sd_param_counts(unet: nn.Module, controlnet: nn.Module | None = None, vae: nn.Module | None = None,
                    text_encoder: nn.Module | None = None) -> dict[str, int]:
    """Parameter counts of actual modules, keyed like :data:`SD15_PARAMS` (pass them to
    :func:`sd15_memory_estimate`). The decoder is ``up_blocks`` + ``conv_norm_out`` + ``conv_out``."""
    decoder = sum(_count(getattr(unet, name, None)) for name in ("up_blocks", "conv_norm_out", "conv_out"))
    hint = _count(getattr(controlnet, "controlnet_cond_embedding", None))
    return {"unet": _count(unet), "unet_decoder": decoder, "controlnet_body": _count(controlnet) - hint,
            "hint": hint, "vae": _count(vae), "text_encoder": _count(text_encoder)}


def sd15_memory_estimate(unet: int = SD15_PARAMS["unet"], unet_decoder: int = SD15_PARAMS["unet_decoder"],
                         controlnet_body: int = SD15_PARAMS["controlnet_body"], hint: int = SD15_PARAMS["hint"],
                         vae: int = SD15_PARAMS["vae"], text_encoder: int = SD15_PARAMS["text_encoder"],
                         eight_bit: bool = False) -> dict[str, dict[str, float]]:
    """GPU memory of the weights and optimizer of the two Siamese-Diffusion recipes, in GiB (no activations).

    Trainable parameters cost 4 bytes (fp32 weight) + 4 (grad) + 8 (AdamW's two moments; 2 with 8-bit AdamW);
    frozen ones 2 bytes (fp16). Recipes: ``"controlnet"`` = ControlNet + hint block trainable, UNet, VAE and
    CLIP frozen; ``"controlnet+decoder"`` = also the UNet decoder trainable, as the official code does.
    For SD 1.5 (defaults) the totals are 7.4 GiB (5.4 with 8-bit AdamW) and 14.1 GiB (9.2): with the decoder
    trainable in fp32 AdamW the weights and optimizer alone nearly fill a 16 GB T4, before any activation.
    """
    gib = 2.0 ** 30
    state_bytes = 2 if eight_bit else 8
    out = {}
    for recipe, decoder in (("controlnet", 0), ("controlnet+decoder", unet_decoder)):
        trainable = controlnet_body + hint + decoder
        frozen = unet - decoder + vae + text_encoder
        parts = {"weights_fp32": 4 * trainable / gib, "grads_fp32": 4 * trainable / gib,
                 "optimizer_states": state_bytes * trainable / gib, "frozen_fp16": 2 * frozen / gib}
        out[recipe] = {"trainable_params": float(trainable), "frozen_params": float(frozen), **parts,
                       "total": sum(parts.values())}
    return out
