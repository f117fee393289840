"""Benchmarks of CT through-plane SR that the notebooks do not produce (figures in docs/benchmarks.md).

``python -m medkit.methods.ctsr_bench volume --run runs/ctsr-demo --out docs/measurements/ctsr_volume_cpu.json``
    Whole-volume inference with a trained run: the full MNI152 volume (at the run's voxel size) thinned to
    thick slices and super-resolved by ResShift, timed; peak memory (the process's maximum resident set) for
    two volume sizes, each in a fresh subprocess so one does not inherit the other's peak; and the seam energy
    of the output (``metrics.volume.seam_energy``: mean squared second difference on window borders vs
    interiors) of the residual SR - y, where a seam of the window tiling would show.

``python -m medkit.methods.ctsr_bench estimate --profile t4 --out docs/measurements/ctsr_t4_memory_estimate.json``
    An estimate (no GPU measurement) of the t4 profile's training memory, VAE and diffusion UNet: parameter
    states (fp32 weights, gradients, AdamW's two moments, EMA: 5 x 4 bytes per parameter) + every tensor
    autograd saves for the backward pass, counted with ``torch.autograd.graph.saved_tensors_hooks`` during one
    forward under 16-bit autocast (bfloat16 on a CPU: the same bytes as the fp16 a T4 uses), with the
    profile's gradient checkpointing. Allocator fragmentation and cuDNN workspaces are not included.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # Linux: KiB


def _volume_once(run_dir: str, crop_x: int | None, steps: int | None) -> dict:
    """One super-resolution of the MNI152 volume (optionally cropped in x) in this process."""
    from ..data import srdata, thickslice as ts
    from ..run import RunDir
    from ..train import load_weights
    from ..metrics import volume as vm
    from . import ctsr, ctsr_infer

    run = RunDir(run_dir)
    cfg = run.load_config("resshift", needed_by="the volume benchmark")
    data = srdata.load_sr_data(cfg)
    c = data.cases[0]
    lr = c.lr if crop_x is None else c.lr[:crop_x]
    y = ts.upsample_z(lr, data.factor, data.offset, kind="cubic")
    model = ctsr.build_denoiser(cfg)
    load_weights(run.path, "resshift", model, ema=True, log=lambda m: None)
    vae, scale = None, 1.0
    if cfg["space"] == "latent":
        vae = ctsr.load_vae(run, cfg)
        scale = run.metrics()["vae"]["scale"]
    base = _peak_rss_gib()
    res = ctsr_infer.super_resolve(y, "resshift", cfg, model=model, vae=vae, scale=scale, steps=steps, progress=False)
    out = {"thick_shape": list(lr.shape), "thin_shape": list(res.volume.shape), "seconds": res.seconds,
           "network_calls": res.nfe, "peak_rss_gib": _peak_rss_gib(), "rss_before_gib": base,
           "window": list(cfg["window"]), "overlap": cfg["overlap"], "space": cfg["space"]}
    if cfg["space"] == "pixel":
        seam = vm.seam_energy(res.volume - y, cfg["window"], cfg["overlap"])
        out["seam_energy_residual"] = {k: float(seam[k]) for k in ("border", "interior", "ratio")}
        seam = vm.seam_energy(res.volume, cfg["window"], cfg["overlap"])
        out["seam_energy_output"] = {k: float(seam[k]) for k in ("border", "interior", "ratio")}
    return out


def volume_bench(run_dir: str, steps: int | None = None) -> dict:
    from ..data import srdata
    from ..run import RunDir

    cfg = RunDir(run_dir).load_config("resshift", needed_by="the volume benchmark")
    half = srdata.load_sr_data(cfg).cases[0].lr.shape[0] // 2
    results = {}
    for name, crop in (("full", None), ("half_x", half)):
        code = ("import json; from medkit.methods import ctsr_bench as b; "
                f"print(json.dumps(b._volume_once({run_dir!r}, {crop!r}, {steps!r})))")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=3600)
        if r.returncode:
            raise RuntimeError(r.stderr[-3000:])
        results[name] = json.loads(r.stdout.strip().splitlines()[-1])
    full, half_ = results["full"], results["half_x"]
    results["peak_rss_ratio_full_to_half"] = full["peak_rss_gib"] / half_["peak_rss_gib"]
    results["voxels_ratio_full_to_half"] = float(np.prod(full["thin_shape"]) / np.prod(half_["thin_shape"]))
    results["threads"] = torch.get_num_threads()
    return results


def estimate(profile: str = "t4") -> dict:
    from ..train.bench import saved_activation_bytes
    from . import ctsr

    # counted without gradient checkpointing: torch's checkpoint keeps its own saved-tensor hooks, which the
    # counting hook cannot see, so a checkpointed count would be far too low; this is the upper bound
    cfg = ctsr.config(profile, gradient_checkpointing=False)
    gib = 1024 ** 3

    out = {"profile": profile, "method": "estimate: parameter states (5 x 4 B/param) + autograd-saved activations "
                                        "under 16-bit autocast without gradient checkpointing (an upper bound: the "
                                        "profile checkpoints), counted on a CPU; not a GPU measurement"}
    vae = ctsr.build_vae(cfg).train()
    x = torch.randn(cfg["vae_batch"], 1, *cfg["patch"])
    t0 = time.perf_counter()
    act = saved_activation_bytes(lambda: ctsr.vae_loss(vae, {"hr": x}, 0, cfg)[0])
    n = sum(p.numel() for p in vae.parameters())
    out["vae"] = {"params": n, "batch": cfg["vae_batch"], "patch": list(cfg["patch"]),
                  "gradient_checkpointing_in_count": False, "states_gib": 20 * n / gib,
                  "activations_gib": act / gib, "total_gib": (20 * n + act) / gib, "seconds": time.perf_counter() - t0}
    del vae, x
    model = ctsr.build_denoiser(cfg).train()
    lat = [p // f for p, f in zip(cfg["patch"], ctsr.vae_factors(cfg))] if cfg["space"] == "latent" else list(cfg["patch"])
    c = ctsr.channels_of(cfg)
    batch = {"hr": torch.randn(cfg["sr_batch"], c, *lat), "y": torch.randn(cfg["sr_batch"], c, *lat)}
    act = saved_activation_bytes(lambda: ctsr.resshift_loss(model, batch, 0, ctsr.scheduler(cfg)))
    n = sum(p.numel() for p in model.parameters())
    out["resshift_unet"] = {"params": n, "batch": cfg["sr_batch"], "latent_patch": lat, "states_gib": 20 * n / gib,
                            "activations_gib": act / gib, "total_gib": (20 * n + act) / gib,
                            "note": "latents precomputed or encoded by the frozen VAE under no_grad (adds its "
                                    "forward activations transiently, not saved ones)"}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m medkit.methods.ctsr_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("volume")
    v.add_argument("--run", required=True)
    v.add_argument("--steps", type=int, default=None)
    v.add_argument("--out", default=None)
    e = sub.add_parser("estimate")
    e.add_argument("--profile", default="t4")
    e.add_argument("--out", default=None)
    args = p.parse_args(argv)
    res = volume_bench(args.run, args.steps) if args.cmd == "volume" else estimate(args.profile)
    text = json.dumps(res, indent=1)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
