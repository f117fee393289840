"""``python -m medkit super-resolve INPUT OUTPUT.nii.gz --run DIR``: a thick-slice volume in, thin slices out.

INPUT is a NIfTI file or a DICOM series folder (``medkit.data.volumes``). The trained run's settings decide the
factor r, the intensity mapping (its window) and the networks; the output is written on the thin grid:
z spacing / r, thin slice r k + r // 2 on thick slice k (``thickslice.thin_affine``), in the input's units.
"""
from __future__ import annotations

import argparse
import json
import sys

METHODS = ("resshift", "ddim", "regression", "cubic", "trilinear")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="thick-slice volume: a .nii/.nii.gz file or a folder holding one DICOM series")
    p.add_argument("output", help="the thin-slice NIfTI to write (.nii.gz)")
    p.add_argument("--run", required=True, help="run directory of a trained ctsr run (notebooks 1-2)")
    p.add_argument("--method", default="resshift", choices=METHODS)
    p.add_argument("--steps", type=int, default=None, help="sampling steps (resshift: 2..T, default T; ddim: 50)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise-scale", type=float, default=1.0,
                   help="resshift: 1 = the paper's sampler, 0 = no sampling noise (higher PSNR, less detail)")
    p.add_argument("--device", default="auto")


def super_resolve_file(input, output, run_dir, method: str = "resshift", steps: int | None = None, seed: int = 0,
                       device="auto", log=print, noise_scale: float = 1.0) -> dict:
    import numpy as np

    from .. import env
    from ..data import thickslice as ts
    from ..data import volumes as V
    from ..run import RunDir
    from ..train import load_weights
    from . import ctsr, ctsr_infer

    run = RunDir(run_dir)
    cfg = run.load_config("resshift", needed_by="super-resolve")
    data = run.metrics().get("data")
    if not data:
        raise FileNotFoundError(f"{run.path / 'metrics.json'} has no 'data' section: run notebook 1 of the run first")
    vol = V.read_volume(input)
    r, off = int(data["factor"]), int(data["offset"])
    window = tuple(data["window"])
    if (vol.intensity == "HU") != (data["intensity"] == "HU"):
        raise V.VolumeError(f"{input} holds {vol.intensity} intensities but run {run.path} was trained on "
                            f"{data['intensity']} ({data['label']}): use a run trained on the same kind of data")
    if vol.array.shape[2] < 2:
        raise V.VolumeError(f"{input} has {vol.array.shape[2]} slice(s); through-plane SR needs at least 2")
    unit = V.hu_to_unit(vol.array, window) if vol.intensity == "HU" else V.raw_to_unit(vol.array, *window)
    y = ts.upsample_z(np.asarray(unit, dtype=np.float32), r, off, kind="cubic")
    dev = env.pick_device(device)
    if method in ("cubic", "trilinear"):
        out = y if method == "cubic" else ts.upsample_z(np.asarray(unit, dtype=np.float32), r, off, kind="linear")
        res = ctsr_infer.SRResult(volume=out, seconds=0.0, nfe=0)
    else:
        vae, scale, net = None, 1.0, None
        if cfg["space"] == "latent":
            vae = ctsr.load_vae(run, cfg, dev)
            scale = run.metrics()["vae"]["scale"]
        stage = {"resshift": "resshift", "ddim": "ddpm", "regression": "regression"}[method]
        net = ctsr.Regression(cfg) if method == "regression" else ctsr.build_denoiser(cfg, "eps" if method == "ddim" else "x0")
        load_weights(run.path, stage, net, ema=True, log=lambda m: None)
        res = ctsr_infer.super_resolve(y, method, cfg, model=net, vae=vae, scale=scale, steps=steps, seed=seed,
                                       device=dev, progress=sys.stderr.isatty(), noise_scale=noise_scale)
    phys = V.unit_to_hu(res.volume, window) if vol.intensity == "HU" else V.unit_to_raw(res.volume, *window)
    affine = ts.thin_affine(vol.affine, r, off)
    V.write_nifti(np.asarray(phys, dtype=np.float32), affine, output)
    info = {"input": str(input), "output": str(output), "method": method, "factor": r, "thick_shape": list(vol.array.shape),
            "thin_shape": list(res.volume.shape), "thin_spacing_mm": [round(s, 4) for s in np.linalg.norm(affine[:3, :3], axis=0)],
            "seconds": round(res.seconds, 2), "network_calls": res.nfe}
    log(json.dumps(info))
    return info


def run_cli(args) -> int:
    try:
        super_resolve_file(args.input, args.output, args.run, args.method, args.steps, args.seed, args.device,
                           noise_scale=args.noise_scale)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
