# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %%

# %% [markdown]
# # CT super-resolution 4/4 - evaluation against the interpolation users already have
#
# On the held-out slab, in physical units: PSNR and SSIM (3D, and per axial slice) on fixed documented
# intensity windows (CT: $[-1024, 3071]$ and $[-1000, 1000]$ HU; MRI: the run's raw window) - SSIM over the whole
# slab and inside the body/brain mask (over the whole slab the flat air around the head dominates, where the
# faintest speckle scores low) - MAE inside the body/brain mask, LR consistency (each output re-degraded by the slice profile against the thick slices it came
# from), and the through-plane spectrum (PSNR rewards blur: a blurry output loses power at high $z$
# frequencies). 95% CIs are percentile bootstraps over the slab's axial slices (one held-out slab: slices,
# not independent volumes); differences to cubic interpolation are paired per slice.
#
# **How long:** under a minute.

# %% [markdown]
# ## Setup

# %%

# %% [markdown]
# ## Setup
# Makes `medkit` importable wherever this runs: installed, this repository checkout, a Kaggle dataset
# holding the repository (offline kernels), or `pip install $MEDKIT_PIP` (e.g. `git+https://...`).

# %%
import importlib.util, os, subprocess, sys
from pathlib import Path

if importlib.util.find_spec("medkit") is None:
    here = [p for p in (Path.cwd(), *Path.cwd().parents) if (p / "medkit" / "__init__.py").is_file()]
    kaggle = [p.parent.parent for d in ("*", "*/*", "*/*/*") for p in Path("/kaggle/input").glob(f"{d}/medkit/__init__.py")]
    if here or kaggle:
        sys.path.insert(0, str((here or kaggle)[0]))
    elif os.environ.get("MEDKIT_PIP"):
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", os.environ["MEDKIT_PIP"]], check=True)
    else:
        raise ImportError("medkit not found: run from the repository checkout, attach the medkit repository as a "
                          "Kaggle dataset, or set MEDKIT_PIP to a pip spec of the repository.")
    root = (here or kaggle or [None])[0]
    if root is not None and importlib.util.find_spec("monai") is None:  # Kaggle/Colab images lack MONAI
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", str(root / "requirements.txt")], check=True)

# %% tags=["parameters"]
profile = "auto"       # "auto" (t4 with a CUDA GPU, else cpu-demo) | "smoke" | "cpu-demo" | "t4"
run_dir = ""           # the run directory of notebooks 1-3; empty: <run root>/ctsr-<profile>
n_boot = 1000          # bootstrap resamples of the per-slice measures

# %%
import numpy as np

from medkit import env, session, viz
from medkit.data import srdata, thickslice as ts
from medkit.metrics import volume as vm
from medkit.run import RunDir

profile = session.resolve_profile(profile)  # "auto": which profile, and why
run = RunDir(run_dir, default_name=f"ctsr-{profile}")
cfg = run.load_config("resshift", needed_by="evaluation")
sr_data = srdata.load_sr_data(cfg)
phys = sr_data.to_physical
ct = sr_data.intensity == "HU"
unit = "hu" if ct else "raw"
ranges = [(-1024.0, 3071.0), (-1000.0, 1000.0)] if ct else [tuple(sr_data.window)]
files = sorted(run.samples.glob("sr_*.npz"))
if not files:
    raise FileNotFoundError(f"no sr_*.npz in {run.samples}: run notebook 3 (super-resolve) first with the same run_dir")
timing = run.metrics()["super_resolve"]["timing"]

# %% [markdown]
# ## Measures per method

# %%
rows, per_slice = {}, {}
for f in files:
    z = np.load(f)
    methods = [k for k in z.files if k not in ("thin", "thick", "z_range", "factor", "offset", "n_thin")]
    # a region reaching the end of its volume loses its end slices (one thick slice, r thin ones: interpolation is
    # clamped there), as RPLHR-CT scores; a held-out slab inside a volume has context on both sides and keeps all
    r, (z0, z1) = int(z["factor"]), z["z_range"]
    drop = r if z0 == 0 or z1 >= (int(z["n_thin"]) if "n_thin" in z.files else z1 + 1) else 0
    keep, keep_thick = slice(drop, z["thin"].shape[2] - drop), slice(drop // r, z["thick"].shape[2] - drop // r)
    hr, thick = z["thin"][..., keep], z["thick"][..., keep_thick]
    mask = vm.body_mask(phys(hr), -500.0 if ct else sr_data.window[0] + 0.1 * (sr_data.window[1] - sr_data.window[0]))
    for m in methods:
        sr = z[m][..., keep]
        # LR consistency: re-degraded by the same slice profile and offset as the thick slices (a linear map)
        rep = vm.sr_report(phys(sr), phys(hr), lr=phys(thick), degrade=sr_data.degrade, mask=mask, ranges=ranges,
                           unit=unit)
        rep["seconds"] = timing.get(m, {}).get("seconds", 0.0)
        rep["network_calls"] = timing.get(m, {}).get("nfe", 0)
        rows[m] = rep
        lo, hi = ranges[0]
        per_slice[m] = {"psnr": np.array([vm.psnr(phys(sr[..., k:k + 1]), phys(hr[..., k:k + 1]), (lo, hi))
                                          for k in range(hr.shape[2])]),
                        "ssim": vm.ssim_axial(phys(sr), phys(hr), (lo, hi)).per_slice,
                        "ssim_mask": vm.ssim_axial_masked(phys(sr), phys(hr), mask, (lo, hi)),
                        "mae": np.array([vm.mae(phys(sr[..., k:k + 1]), phys(hr[..., k:k + 1]), mask[..., k:k + 1])
                                         if mask[..., k].any()
                                         else np.nan for k in range(hr.shape[2])])}

# %% [markdown]
# ## Confidence intervals and differences to cubic interpolation

# %%
tag = f"{ranges[0][0]:g}_{ranges[0][1]:g}"
table = {}
for m, ps in per_slice.items():
    entry = dict(rows[m])
    for key, v in ps.items():
        v = v[np.isfinite(v)]
        mean, lo, hi = vm.bootstrap_ci(v, n_boot=n_boot, seed=0)
        entry[f"slice_{key}"] = {"mean": mean, "ci95": [lo, hi], "n": int(len(v))}
        if m != "cubic":
            c = per_slice["cubic"][key]
            ok = np.isfinite(c) & np.isfinite(ps[key])
            d, dlo, dhi = vm.paired_difference_ci(ps[key][ok], c[ok], n_boot=n_boot, seed=0)
            entry[f"slice_{key}_minus_cubic"] = {"mean": d, "ci95": [dlo, dhi]}
    table[m] = entry
run.update_metrics("eval", {"methods": table, "windows": [list(r_) for r_ in ranges], "unit": unit,
                            "data": sr_data.label, "ci": f"95% percentile bootstrap over axial slices (n_boot {n_boot})"})

lines = [f"Data: {sr_data.label}; x{sr_data.factor} through-plane; windows {ranges}.",
         "", f"| method | PSNR {tag} (slices, 95% CI) | d vs cubic | SSIM axial | d vs cubic | SSIM axial in mask | d vs cubic | SSIM 3D | SSIM 3D in mask | MAE in mask ({unit}) | "
         f"LR-consistency PSNR | z high-band power (dB vs thin) | network calls | seconds |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
fmt = lambda e, k, p=2: f"{e[k]['mean']:.{p}f} [{e[k]['ci95'][0]:.{p}f}, {e[k]['ci95'][1]:.{p}f}]"  # noqa: E731
for m, e in table.items():
    dp = fmt(e, "slice_psnr_minus_cubic") if m != "cubic" else "-"
    ds = fmt(e, "slice_ssim_minus_cubic", 4) if m != "cubic" else "-"
    dsm = fmt(e, "slice_ssim_mask_minus_cubic", 4) if m != "cubic" else "-"
    lines.append(f"| {m} | {fmt(e, 'slice_psnr')} | {dp} | {fmt(e, 'slice_ssim', 4)} | {ds} | {fmt(e, 'slice_ssim_mask', 4)} | {dsm} | {e[f'ssim3d_{tag}']:.4f} | {e[f'ssim3d_mask_{tag}']:.4f} | "
                 f"{e[f'mae_{unit}_mask']:.2f} | {e[f'lr_psnr_{tag}']:.2f} | {e['z_hf_ratio_db']:.2f} | "
                 f"{e['network_calls']} | {e['seconds']:.1f} |")
(run.path / "results.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))

# %% [markdown]
# ## Figures: sections, differences, spectra, and a gallery over z and methods

# %%
z = np.load(files[0])
methods = [k for k in z.files if k not in ("thin", "thick", "z_range", "factor", "offset", "n_thin")]
vols = {m: z[m] for m in methods}
fig = viz.volume_views({"thin": z["thin"], **vols}, path=run.figures / "eval_views.png")
fig = viz.difference_views(vols, z["thin"], path=run.figures / "eval_differences.png")
mask = vm.body_mask(phys(z["thin"]), -500.0 if ct else sr_data.window[0] + 0.1 * (sr_data.window[1] - sr_data.window[0]))
fig = viz.spectrum_plot({"thin (target)": vm.z_spectrum(phys(z["thin"]), mask), **{m: vm.z_spectrum(phys(v), mask) for m, v in vols.items()}},
                        path=run.figures / "z_spectrum.png")
gallery = viz.z_gallery(vols, z["thin"], zs=range(0, z["thin"].shape[2], max(1, z["thin"].shape[2] // 8)))
gallery
