"""Devices, mixed precision and processes for the ``Trainer``, from ``accelerate``.

``make_accelerator`` builds the ``accelerate.Accelerator`` a Trainer trains under: its device (one GPU per
process, or the CPU), its mixed precision (the kit's rule, ``env.autocast_dtype``: fp16 with gradient scaling
on compute capability < 8 such as the T4, bf16 on >= 8, fp32 on the CPU) and its gradient accumulation.

More than one process (``launch(fn, processes=2)``: Kaggle's two T4s through ``accelerate.notebook_launcher``,
CPU processes over gloo through ``accelerate.debug_launcher``; or any script started by ``accelerate launch``):
every process takes its own slice of each global batch (``data.ResumableBatchSampler``), and after the
backward pass the gradients are averaged across processes by ``average_gradients`` - one all-reduce per
bucket of about 25 MB on accelerate's process group.

**Departure from the usual accelerate recipe**: the model is not wrapped in ``DistributedDataParallel``
(``accelerator.prepare(model)``). DDP averages gradients from hooks armed by the wrapper's ``forward``; the
kit's losses call sub-modules and methods (Siamese-Diffusion's ``net.control`` / ``net.denoise``, a VAE's
``encode``), which the wrapper never sees, so its gradients would silently stay per-process; DDP also
needs ``static_graph`` with the re-entrant gradient checkpointing the T4 profiles use. An explicit
all-reduce after backward is exact for any loss; what it gives up is overlapping communication with
the backward pass.
"""
from __future__ import annotations

import os
import pickle
import tempfile
from typing import Callable

import torch

from medkit import env

BUCKET_BYTES = 25 * 2**20  # gradients per all-reduce (DDP's default bucket size)


def _reset_accelerate_state() -> None:
    """Forget accelerate's per-process singletons (private API; accelerate offers no public reset).

    Needed where one Python process meets a second configuration: a forked worker inherits its parent's
    single-process state, and a test or notebook may train one stage in fp32 and the next in fp16.
    """
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    PartialState._reset_state()


def mixed_precision(device: torch.device, precision: str) -> str:
    """accelerate's name ('no', 'fp16', 'bf16') for the kit's ``precision`` on ``device``."""
    dtype = env.autocast_dtype(device, precision)
    return {None: "no", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]


def make_accelerator(precision: str = "auto", device=None, grad_accum: int = 1):
    """The ``Accelerator`` for one Trainer; raises with what to do when the process can't provide it."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    wanted = env.pick_device(device)
    cpu = wanted.type == "cpu"
    mp = mixed_precision(wanted, precision)
    state = AcceleratorState._shared_state
    if state:  # a previous Trainer in this process configured accelerate
        same = state.get("_mixed_precision") == mp and (state.get("device") is None
                                                        or (state["device"].type == "cpu") == cpu)
        if not same:
            if PartialState().num_processes > 1:
                raise ValueError(
                    f"this process already trains with accelerate's settings (mixed precision "
                    f"{state.get('_mixed_precision')!r}, device {state.get('device')}); a multi-process run cannot "
                    f"switch to precision={precision!r} on {wanted.type} - give every stage the same precision and "
                    f"device")
            _reset_accelerate_state()
    acc = Accelerator(cpu=cpu, mixed_precision=mp, gradient_accumulation_steps=grad_accum)
    if mp == "fp16" and acc.device.type == "cpu" and acc.scaler is None:
        # accelerate runs fp16 on the CPU as plain fp32 (no autocast, no scaler). The kit keeps CPU fp16 so the
        # T4 path - autocast to fp16, a GradScaler, steps it skips on overflow - is tested on any machine.
        acc.native_amp = True
        acc.scaler = torch.amp.GradScaler("cpu")
    return acc


def set_accumulation(grad_accum: int) -> None:
    """Make ``accelerator.accumulate`` count ``grad_accum`` micro-batches: its step counter is one shared
    ``GradientState`` per process, set by whichever Accelerator was built last."""
    from accelerate.state import GradientState
    from accelerate.utils import GradientAccumulationPlugin

    GradientState(GradientAccumulationPlugin(num_steps=grad_accum))


@torch.no_grad()
def average_gradients(params: list[torch.Tensor], world: int) -> None:
    """grad <- mean over processes of grad, for every parameter with a gradient (bucketed all-reduces)."""
    import torch.distributed as dist

    grads = [p.grad for p in params if p.grad is not None]
    bucket: list[torch.Tensor] = []
    size = 0
    for i, g in enumerate(grads):
        bucket.append(g)
        size += g.numel() * g.element_size()
        last = i == len(grads) - 1
        if size >= BUCKET_BYTES or last or grads[i + 1].dtype != g.dtype:
            flat = torch.cat([b.reshape(-1) for b in bucket])
            dist.all_reduce(flat)
            flat /= world
            offset = 0
            for b in bucket:
                b.copy_(flat[offset:offset + b.numel()].view_as(b))
                offset += b.numel()
            bucket, size = [], 0


# ------------------------------------------------------------------------------------------ launch

def _run_child(fn: Callable, out: str, args: tuple) -> None:
    # One CPU thread per process: a process forked from one whose OpenMP pool has run (a notebook that cached
    # its data with torch) deadlocks in its first multi-threaded op (GNU OpenMP is not fork-safe); accelerate
    # would otherwise set its own thread count from OMP_NUM_THREADS.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    _reset_accelerate_state()  # a forked child inherits the parent's single-process state
    result = fn(*args)
    from accelerate.state import PartialState

    state = PartialState()
    if state.is_main_process:
        with open(out, "wb") as f:
            pickle.dump(result, f)
    state.wait_for_everyone()
    state.destroy_process_group()


def launch(fn: Callable, *args, processes: int = 1):
    """``fn(*args)`` in ``processes`` processes; the main process's return value (it must pickle).

    One process: a plain call. More, with CUDA GPUs: ``accelerate.notebook_launcher`` (one GPU each; a
    notebook must not touch CUDA before, so train only inside ``fn``); without a GPU: CPU processes over
    gloo (``accelerate.debug_launcher``, for trying the multi-process path on any machine - not faster).
    Every process runs ``fn`` whole: build the model and data, then ``Trainer(...).fit(...)``. The processes
    are forked (they inherit what the notebook built) and compute on one CPU thread each (see ``_run_child``).
    """
    if not isinstance(processes, int) or processes < 1:
        raise ValueError(f"processes={processes!r}: an integer >= 1 (1 = this process, 2 = both of Kaggle's T4s)")
    if processes == 1:
        return fn(*args)
    if torch.cuda.is_available() and torch.cuda.device_count() < processes:
        raise ValueError(f"processes={processes} but this machine has {torch.cuda.device_count()} GPU(s): on Kaggle "
                         f"choose the 'GPU T4 x2' accelerator, or use processes={torch.cuda.device_count()}")
    from accelerate import debug_launcher, notebook_launcher
    from accelerate.state import AcceleratorState, PartialState

    if AcceleratorState._shared_state or PartialState._shared_state:
        if PartialState().num_processes > 1:
            raise RuntimeError("launch() was called inside a multi-process run; call it once, from the notebook")
        _reset_accelerate_state()  # only this process's own single-process state: the launchers refuse it
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        raise RuntimeError(
            f"processes={processes}: this process has already used the GPU (a model or tensor was moved to CUDA "
            f"before training), and accelerate can start one process per GPU only from a process that has not. "
            f"Restart the kernel and run the notebook again with processes={processes} (its cells keep the GPU "
            f"for after training), or use processes=1.")
    fd, out = tempfile.mkstemp(prefix="medkit-launch-", suffix=".pkl")
    os.close(fd)
    try:
        if torch.cuda.is_available():
            notebook_launcher(_run_child, (fn, out, args), num_processes=processes)
        else:
            debug_launcher(_run_child, (fn, out, args), num_processes=processes)
        with open(out, "rb") as f:
            return pickle.load(f)
    finally:
        os.unlink(out)
