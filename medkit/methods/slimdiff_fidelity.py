"""SLIM-Diff's fidelity ledger: the paper's camera-ready recipe beside medkit's (read from ``slimdiff.config``)."""
from __future__ import annotations

from ..fidelity import ALL, Ledger, Row
from ..data.lesion_slices import default_min_lesion_px
from . import slimdiff

SCALE = "CPU scale: minutes on a 2-core CPU (the t4 profile has the paper's value)"
CI = "CI scale: seconds, to test the wiring, not the results"


def _scale(**more) -> dict:
    return {"smoke": CI, "cpu-demo": SCALE, **more}


def _auto_is_fp16(v, s) -> bool:  # "auto": fp16 mixed precision on a T4 (the paper's), bf16 on Ampere+, fp32 on CPU
    return v == "auto"


def _tokens(cfg) -> int:
    return 2 * cfg["n_bins"]


ROWS = (
    # data
    Row("data", "data", "FLAIR with expert lesion masks (the paper's epilepsy cohort)", "paper", key="data",
        why={ALL: "no lesion dataset ships offline: the MNI152 T1 template with synthetic white-matter lesions, "
                  "labelled synthetic in every output; a NIfTI folder with masks runs the same code (-p data DIR)"}),
    Row("slice size (px)", "data", 160, "paper", key="image_size", why=_scale()),
    Row("intensity scaling", "data", "percentiles (0.5, 99.5) -> [-1, 1], clipped", "paper",
        medkit="percentiles (0.5, 99.5) -> [-1, 1], clipped"),
    Row("lesion slice: lesion pixels at least", "data", "30 px at 160 px", "paper", key="image_size",
        get=lambda cfg: f"{default_min_lesion_px(cfg['image_size'])} px at {cfg['image_size']} px",
        why=_scale(**{p: "the paper's 30 px at 160 px, scaled by area to the profile's slice size"
                      for p in ("smoke", "cpu-demo")})),
    Row("synthetic lesion radius (mm)", "data", "(real lesions)", "paper", key="lesion_radius_mm",
        same=lambda v, s: True),
    # network
    Row("UNet channels", "network", (64, 128, 256, 256), "paper", key="unet_channels", why=_scale()),
    Row("attention levels", "network", (False, False, True, True), "paper", key="attention_levels", why=_scale()),
    Row("res blocks per level", "network", 2, "paper", key="num_res_blocks", why=_scale()),
    Row("head channels", "network", 32, "paper", key="num_head_channels", why=_scale()),
    Row("norm groups", "network", 32, "paper", key="norm_num_groups", why=_scale()),
    Row("conditioning tokens (z-bins x pathology)", "network", 60, "paper", key="n_bins", get=_tokens),
    # diffusion and loss
    Row("prediction target", "loss", "x0", "paper", key="prediction"),
    Row("Lp exponent p", "loss", 1.5, "paper", key="lp"),
    Row("loss weights (image, mask)", "loss", (1.0, 1.0), "paper", key="channel_weights",
        why={"cpu-demo": "mask weight 5: at 64 px lesions cover ~0.4% of a slice and with equal weights 1,000 CPU "
                         "steps learned a constant empty mask (Dice 0.00 on validation lesions at t = 50; 0.87 "
                         "with 5) - docs/results/slimdiff"}),
    Row("self-conditioning probability", "loss", 0.5, "paper", key="self_cond_p"),
    Row("timesteps T", "schedule", 1000, "paper", key="num_train_timesteps"),
    Row("beta schedule", "schedule", "cosine", "paper", medkit="cosine"),
    # optimisation
    Row("optimiser", "optimiser", "AdamW", "paper", medkit="AdamW"),
    Row("learning rate", "optimiser", 1e-4, "paper", key="lr",
        why=_scale(**{"cpu-demo": "5e-4 for 1,000 steps (1e-4 is for ~50k; not compared here)"})),
    Row("weight decay", "optimiser", 1e-4, "paper", key="weight_decay"),
    Row("gradient clipping (norm)", "optimiser", 1.0, "paper", key="grad_clip"),
    Row("LR schedule: cosine to", "optimiser", 1e-6, "paper", key="lr_min"),
    Row("LR warm-up steps", "optimiser", 0, "paper", key="warmup_steps"),
    Row("batch", "training", 16, "paper", key="batch", why={"smoke": CI}),
    Row("training length", "training", "early stop on validation loss, patience 25", "paper",
        key=("early_stop_patience", "train_steps"),
        get=lambda cfg: (f"early stop on validation loss, patience {cfg['early_stop_patience']} "
                         f"(at most {cfg['train_steps']:,} steps)" if cfg["early_stop_patience"]
                         else f"a fixed {cfg['train_steps']:,} steps"),
        same=lambda v, s: v.startswith(s),
        why=_scale(**{"cpu-demo": "a fixed 1,000 steps: the CPU run is far too short to stop early (validation "
                                  "costs time; the option is -p early_stop_patience 25)"})),
    Row("precision", "training", "fp16 mixed", "paper", key="precision", same=_auto_is_fp16,
        why={"smoke": "fp32: CI on a CPU"}),
    Row("EMA decay", "training", 0.999, "paper", key="ema_decay"),
    # sampling
    Row("sampler steps (DDIM)", "sampler", 300, "paper", key="sampling_steps", why=_scale()),
    Row("DDIM eta", "sampler", 0.2, "paper", key="sampling_eta"),
    Row("DDIM timestep spacing", "sampler", "leading (MONAI's DDIM: 300 steps start at t = 897)", "official code",
        key="timestep_spacing",
        get=lambda cfg: {"trailing": "trailing (starts at t = T-1)",
                         "leading": "leading (MONAI's DDIM: 300 steps start at t = 897)"}[cfg["timestep_spacing"]],
        why={ALL: "leading spacing never samples from pure noise (at 300 of 1000 steps it starts at t = 897, "
                  "Lin et al. 2023); trailing does. The official spacing: -p timestep_spacing leading"}),
    Row("x0 clipped to [-1, 1] at each step", "sampler", "yes", "official code", medkit="yes"),
    Row("eps re-derived from the clipped x0", "sampler", False, "official code", key="sampling_rederive_eps"),
    # evaluation
    Row("KID features", "evaluation", "torchmetrics' InceptionV3, grey repeated to RGB, 299 px", "paper",
        medkit="the TF Inception FID network (torch-fidelity's/torchmetrics' weights), grey repeated to RGB, 299 px "
               "with TF1's bilinear resize",
        why={ALL: "same network and weights; torchmetrics >= 1.x resizes with antialiasing by default, which the "
                  "paper does not state - medkit uses the TF graph's resize (resize='antialias' matches "
                  "torchmetrics' default; docs/evaluation.md)"}),
    Row("KID subsets", "evaluation", "torchmetrics' defaults: 100 subsets of 1,000", "paper",
        medkit="torchmetrics' defaults: 100 subsets of 1,000"),
    Row("LPIPS", "evaluation", "VGG, 1,000 random unpaired pairs", "paper", medkit="VGG, 1,000 random unpaired pairs"),
)

LEDGER = Ledger(
    method="slimdiff", title="SLIM-Diff (joint FLAIR image + lesion mask)",
    sources={"paper": "Pascual-Gonzalez et al., arXiv 2602.03372, the camera-ready recipe (REFERENCE section 2)",
             "official": "github MarioPasc/slim-diff (PyPI slim-diff): its training and sampling code"},
    profiles=tuple(slimdiff.PROFILES), config=lambda p: slimdiff.config(p), rows=ROWS,
    notes={"smoke": "CI: seconds, wiring only", "cpu-demo": "minutes on a 2-core CPU, 64 px, synthetic lesions",
           "t4": "the paper's model and recipe on one 16 GB T4"})
