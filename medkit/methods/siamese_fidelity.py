"""Siamese-Diffusion's fidelity ledger: the official code's training beside medkit's (read from
``siamese.config`` per backend and profile)."""
from __future__ import annotations

from ..fidelity import Ledger, Row
from . import siamese

PROFILES = tuple(f"{b}/{p}" for b in siamese.PROFILES for p in siamese.PROFILES[b])
SCRATCH = ("scratch/smoke", "scratch/cpu-demo", "scratch/t4")
CI = "CI scale: seconds, to test the wiring, not the results"


def _config(profile: str) -> dict:
    backend, prof = profile.split("/")
    return siamese.config(prof, backend)


def _each(reason: str, profiles=SCRATCH, **more) -> dict:
    return {**{p: reason for p in profiles}, **more}


def _effective_batch(cfg) -> int:
    return cfg["batch"] * cfg.get("grad_accum", 1)


def _trainable(cfg) -> str:
    if cfg["backend"] == "scratch":
        return "every weight (UNet and ControlNet + DHI, from random initialisation)"
    return "ControlNet + DHI" + (" and the UNet decoder" if cfg["train_decoder"] else "")


def _k_tau(cfg):
    return "N/3" if cfg["k_tau"] is None else cfg["k_tau"]


def _auto_precision(cfg) -> str:
    return {"auto": "fp16 mixed on a T4 (bf16 on Ampere+, fp32 on a CPU)"}.get(cfg["precision"], cfg["precision"])


SCRATCH_WHY = ("no Stable Diffusion weights or GPU here: the same method on a small MONAI UNet + ControlNet "
               "trained from scratch in pixel space (the sd15 backend is the paper's model)")

ROWS = (
    # data and model
    Row("data", "data", "RGB polyp (Kvasir-SEG + CVC-ClinicDB) / skin-lesion (ISIC) pairs", "official code",
        key="data", same=lambda v, s: v == "",
        why=_each("MNI152 T1 slices with their white-matter mask ('mni152-tissue'): no polyp or skin data ships "
                  "offline; a pairs folder runs the same code (-p data DIR)", ("sd15/smoke",) + SCRATCH)),
    Row("backbone", "network", "sd15", "official code", key="backend", why=_each(SCRATCH_WHY)),
    Row("image size (px)", "data", 384, "official code", key="image_size",
        why=_each("CPU scale", ("scratch/cpu-demo",), **{"scratch/smoke": CI, "sd15/smoke": CI,
                                                        "scratch/t4": "256: a from-scratch pixel UNet on one T4"})),
    Row("trained parameters", "training", "ControlNet + DHI and the UNet decoder", "official code", get=_trainable,
        key=("backend", "train_decoder"),
        why=_each(SCRATCH_WHY, **{"sd15/t4": "the decoder's fp32 AdamW states alone (~14 GB) do not fit a 16 GB "
                                             "T4; train_decoder=True where memory allows (REFERENCE memory facts)"})),
    Row("Dense Hint Input", "network", True, "paper", key="dhi"),
    # the method's terms
    Row("Image-Diffusion branch", "loss", True, "paper", key="image_branch"),
    Row("noise consistency weight w_c", "loss", 1.0, "paper", key="w_c"),
    Row("weight of sg[c_m] in c_mix (w_m)", "loss", 1.0, "official code", key="w_m"),
    Row("Online-Augmentation", "loss", True, "paper", key="online_aug"),
    Row("Online-Augmentation from step K_tau", "loss", "N/3", "official code", key="k_tau", get=_k_tau),
    Row("Online-Augmentation for t <= T_tau", "loss", 200, "official code", key="t_tau"),
    Row("timesteps T", "schedule", 1000, "official code", key="num_train_timesteps"),
    # optimisation
    Row("optimiser", "optimiser", "AdamW, weight decay 1e-2 (PyTorch's default)", "official code", key="eight_bit",
        get=lambda cfg: ("AdamW, weight decay 1e-2 (PyTorch's default)" if cfg["backend"] == "scratch" else
                         "AdamW, weight decay 1e-2; 8-bit states on a GPU when bitsandbytes imports"),
        why={p: "8-bit AdamW states to fit one T4" for p in ("sd15/smoke", "sd15/t4")}),
    Row("learning rate", "optimiser", 1e-5, "official code", key="lr",
        why=_each("a larger LR for a UNet trained from scratch (1e-5 is for fine-tuning SD 1.5)",
                  **{"sd15/smoke": CI})),
    Row("LR warm-up steps (then constant)", "optimiser", 0, "official code", key="warmup_steps"),
    Row("effective batch", "training", 48, "official code", key=("batch", "grad_accum"), get=_effective_batch,
        why=_each("CPU / single-GPU scale for the from-scratch model", **{"sd15/smoke": CI})),
    Row("training steps", "training", 3000, "official code", key="train_steps",
        why=_each("from-scratch training length (CPU scale at cpu-demo)", **{"sd15/smoke": CI})),
    Row("EMA", "training", None, "official code", key="ema_decay",
        why=_each("EMA of the from-scratch model's weights: this kit's choice, not measured against none")),
    Row("precision", "training", "fp32 (8 GPUs, DeepSpeed ZeRO-2)", "official code", get=_auto_precision,
        key="precision", why={p: "fp16 mixed precision to fit one T4" for p in ("scratch/t4", "sd15/t4",
                                                                              "scratch/cpu-demo")}
        | {"scratch/smoke": "fp32 (CI)", "sd15/smoke": "fp32 (CI)"},
        same=lambda v, s: v == "fp32"),
    Row("latents of the training images", "data", "a fresh sample of the VAE posterior at every step",
        "official code", key=("backend", "space"),
        get=lambda cfg: ("a fresh sample of the VAE posterior at every step" if cfg["backend"] == "sd15" else
                         "the posterior mean of an SBLDM VAE trained as the run's first stage, encoded once"
                         if cfg["space"] == "latent" else "pixel space (no VAE)"),
        why=_each(SCRATCH_WHY, **{"scratch/cpu-demo": (
            "no SD VAE here: a 0.25 M-parameter SBLDM VAE trained on the run's own images (about 1 min) gives a latent "
            "space in which 2000 CPU steps reach the real images' mask-following (docs/results/siamese); "
            "500 pixel-space steps gave mostly noise")})),
    Row("condition dropout for guidance", "training", "5% of prompts emptied", "official code", key="p_uncond",
        get=lambda cfg: (f"{cfg['p_uncond']:g} of prompts emptied" if cfg["backend"] == "sd15"
                         else f"{cfg['p_uncond']:g} of mask hints replaced by the null hint "
                              f"{cfg.get('null_hint', 0.0):g} (no text)"),
        same=lambda v, s: v == "0.05 of prompts emptied",
        why=_each("the scratch model has no text encoder: guidance is on the mask hint, replaced with p 0.1 by a "
                  "constant -1 that no real hint takes (a zero hint would be an empty mask's)")),
    # sampling
    Row("sampler", "sampler", "DDIM, eta 0", "official code", key="sampling_eta",
        get=lambda cfg: "DDIM, eta 0" if cfg["sampling_eta"] == 0 else f"DDIM, eta {cfg['sampling_eta']}"),
    Row("sampling steps", "sampler", 50, "official code", key="sampling_steps",
        why={"scratch/smoke": CI, "sd15/smoke": CI}),
    Row("DDIM timestep spacing", "sampler", "leading: 981, 961, ..., 1", "official code", key="timestep_spacing",
        get=lambda cfg: {"trailing": "trailing: 999, 979, ..., 19",
                         "leading": "leading: 981, 961, ..., 1"}[cfg["timestep_spacing"]],
        why={p: "trailing starts from pure noise at t = T-1 (Lin et al. 2023); the official spacing: "
                "-p timestep_spacing leading (not yet compared here)" for p in PROFILES}),
    Row("classifier-free guidance", "sampler", "9 on the text (the mask hint kept)", "official code",
        key="guidance_scale",
        get=lambda cfg: (f"{cfg['guidance_scale']:g} on the text (the mask hint kept)" if cfg["backend"] == "sd15"
                         else f"{cfg['guidance_scale']:g} on the mask hint"),
        why=_each("no text in the scratch model: guidance 2 on the mask hint (this kit's choice, not swept)",
                  **{"scratch/cpu-demo": "no text in the scratch model: guidance on the mask hint; 4 measured best of "
                                         "1 / 2 / 4 at cpu-demo (mask-following, FID, KID; docs/results/siamese)"})),
    Row("eps re-derived from the clipped x0 (DDIM)", "sampler", "no (latents are not clipped)", "official code",
        key="backend", get=lambda cfg: "yes (pixel space, x0 clipped to [-1, 1])" if cfg["backend"] == "scratch"
        else "no (latents are not clipped)",
        why=_each("pixel-space sampling from t = 999 returned textured noise without it (docs/results/siamese)")),
)

LEDGER = Ledger(
    method="siamese", title="Siamese-Diffusion (mask-to-image)",
    sources={"paper": "Qiu et al., CVPR 2025, arXiv 2505.06068 (REFERENCE section 1)",
             "official": "github Qiukunpeng/Siamese-Diffusion, cldm/cldm.py and its training script"},
    profiles=PROFILES, config=_config, rows=ROWS,
    notes={"scratch/*": "a small model trained from scratch (CPU and T4): in pixel space, at cpu-demo in the latent "
                        "space of a small VAE the run trains first",
           "sd15/*": "Stable Diffusion 1.5 + ControlNet, the paper's model (needs its weights and a GPU; smoke: a tiny "
                     "random stand-in)"})
