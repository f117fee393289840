"""Where are we running, and on what: platform detection, device and precision choice.

Kaggle is recognised by ``KAGGLE_KERNEL_RUN_TYPE``, Colab by ``google.colab`` in ``sys.modules``.
Precision follows the device, not ``torch.cuda.is_bf16_supported()`` (which says True on a T4 through
emulation): bf16 autocast on compute capability >= 8, fp16 autocast + GradScaler below, fp32 on CPU.
"""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import torch

KAGGLE_BUDGET_S = 11 * 3600 + 15 * 60  # Kaggle stops a session at 12 h; leave 45 min for saving
REPO_ROOT = Path(__file__).resolve().parent.parent
# Platform roots, as module constants so that tests can point them at a temporary folder.
KAGGLE_WORKING = Path("/kaggle/working")   # saved as the notebook version's output
COLAB_CONTENT = Path("/content")           # the Colab VM's local disk (lost with the VM)


def on_kaggle() -> bool:
    return "KAGGLE_KERNEL_RUN_TYPE" in os.environ


def on_colab() -> bool:
    return "google.colab" in sys.modules


def platform() -> str:
    """'kaggle', 'colab' or 'local'."""
    return "kaggle" if on_kaggle() else "colab" if on_colab() else "local"


def default_budget_s() -> float | None:
    """The session's wall-clock budget for training: 11 h 15 min on Kaggle, none elsewhere; ``$MEDKIT_BUDGET_S``
    (seconds) sets it on any platform (Colab Pro's longer sessions, a shorter test). ``medkit.session`` counts
    it from the kernel's start."""
    if os.environ.get("MEDKIT_BUDGET_S"):
        try:
            return float(os.environ["MEDKIT_BUDGET_S"])
        except ValueError:
            raise ValueError(f"MEDKIT_BUDGET_S={os.environ['MEDKIT_BUDGET_S']!r}: seconds, e.g. 40500 "
                             f"(11 h 15 min)") from None
    return float(KAGGLE_BUDGET_S) if on_kaggle() else None


def default_run_root() -> Path:
    """Where run directories go when a notebook is given none."""
    if on_kaggle():
        return KAGGLE_WORKING / "runs"
    if on_colab():
        return COLAB_CONTENT / "runs"
    return REPO_ROOT / "checkpoints" if (REPO_ROOT / "pyproject.toml").exists() else Path("checkpoints")


def cache_root() -> Path:
    """Slice and latent caches: ``$MEDKIT_CACHE`` or ``~/.cache/medkit`` (``/tmp`` on Kaggle, whose
    /kaggle/working is saved as the notebook's output)."""
    if os.environ.get("MEDKIT_CACHE"):
        return Path(os.environ["MEDKIT_CACHE"])
    if on_kaggle():
        return Path("/tmp/medkit-cache")
    return Path.home() / ".cache" / "medkit"


@functools.lru_cache(maxsize=None)
def _nvidia_smi(device_index: int) -> tuple[str, tuple[int, int]] | None:
    import subprocess
    try:
        out = subprocess.run(["nvidia-smi", f"--id={device_index}", "--query-gpu=name,compute_cap",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        name, cap = (x.strip() for x in out.stdout.strip().splitlines()[0].rsplit(",", 1))
        major, minor = cap.split(".")
        return name, (int(major), int(minor))
    except Exception:  # no nvidia-smi, an older one without compute_cap, or an unexpected answer
        return None


def gpu_capability(device_index: int = 0) -> tuple[int, int]:
    """A GPU's compute capability, read with ``nvidia-smi`` when it answers so that CUDA stays uninitialised in
    this process - ``accelerate.notebook_launcher`` can start its processes only then (``medkit.train.launch``);
    else from torch (which initialises CUDA)."""
    found = _nvidia_smi(device_index)
    return found[1] if found else tuple(torch.cuda.get_device_capability(device_index))


def gpu_name(device_index: int = 0) -> str:
    """A GPU's name, from ``nvidia-smi`` when it answers (see ``gpu_capability``), else from torch."""
    found = _nvidia_smi(device_index)
    return found[0] if found else torch.cuda.get_device_name(device_index)


def check_cuda_arch(device_index: int = 0) -> None:
    """Stop early, with a fix, when the installed torch has no kernels for this GPU.

    Kaggle's default image ships a torch without sm_60 kernels, so on a P100 the first CUDA op fails
    with an opaque "no kernel image is available". A build runs a GPU when it carries a cubin of the
    same major version and a minor version <= the device's, or PTX (``compute_XY``) <= the device's.
    """
    if not torch.cuda.is_available():
        return
    major, minor = gpu_capability(device_index)
    archs = torch.cuda.get_arch_list()
    ok = False
    for a in archs:
        kind, _, num = a.partition("_")
        if not num.isdigit():
            continue
        amaj, amin = int(num[:-1]), int(num[-1])
        if kind == "sm" and amaj == major and amin <= minor:
            ok = True
        if kind == "compute" and (amaj, amin) <= (major, minor):
            ok = True
    if not ok:
        raise RuntimeError(
            f"This torch {torch.__version__} has no kernels for the {gpu_name(device_index)} (compute capability "
            f"sm_{major}{minor}); it was built for {', '.join(archs) or 'no GPU'}. On Kaggle choose the "
            f"'GPU T4 x2' accelerator instead of the P100, or install a torch built for sm_{major}{minor}, "
            f"e.g. `pip install torch==2.5.1 --index-url https://download.pytorch.org/whl/cu121` "
            f"(the last CUDA 12.1 builds include sm_60)."
        )


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The requested device, or CUDA when present (after checking its kernels), else the CPU."""
    if device is not None and str(device) != "auto":
        dev = torch.device(device)
    else:
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda":
        check_cuda_arch(dev.index or 0)
    return dev


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``precision`` ('auto', 'fp32', 'fp16', 'bf16'); None means fp32.

    'auto': fp32 on CPU, bf16 on CUDA capability >= 8 (A100, H100, L4), fp16 below (T4, V100, P100).
    """
    if precision not in ("auto", "fp32", "fp16", "bf16"):
        raise ValueError(f"precision={precision!r}: use 'auto', 'fp32', 'fp16' or 'bf16'")
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16":
        if device.type == "cuda" and gpu_capability(device.index or 0)[0] < 8:
            raise ValueError("precision='bf16' needs a GPU of compute capability >= 8; this one has no "
                             "bf16 units (T4/P100/V100). Use 'fp16' or 'auto'.")
        return torch.bfloat16
    return torch.bfloat16 if gpu_capability(device.index or 0)[0] >= 8 else torch.float16


def describe() -> str:
    """One line about the machine, for notebook headers."""
    dev = "cpu"
    if torch.cuda.is_available():
        dev = f"{gpu_name(0)} (sm_{''.join(map(str, gpu_capability(0)))})"
    return f"medkit on {platform()}: torch {torch.__version__}, device {dev}, {os.cpu_count()} CPU cores"
