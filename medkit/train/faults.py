"""Fault injection: train in a subprocess, SIGKILL it at random moments, resume, compare.

This is what a free Kaggle/Colab session does to a long run, made repeatable. A *worker*
(``python -m medkit.train.faults '<json spec>'``) trains one of the real SBLDM loops (VAE or latent
diffusion, smoke-sized nets, CPU, one thread) with ``Trainer`` and appends events to a trace file:

    ready <t>                      imports done, about to call fit
    resume <step> <t>              fit found a checkpoint at <step> (-1: fresh start)
    step <k> <t>                   the loss of step k+1 is being computed, so k steps are done
    save <step> <what> <t>         a stage of save_checkpoint finished (written by checkpoint._fault_point)
    done <step> <t>                fit returned

The *driver* (``kill_and_resume``) launches the worker again and again, killing it with SIGKILL either
at a random time after its first step or right after a chosen stage of a checkpoint write (the worker
then runs with ``MEDKIT_FAULT_DELAY_SAVE`` so that it is sleeping there when the signal lands), until
a launch finishes. After every kill it checks that ``latest`` names a complete, verified checkpoint.
``compare_runs`` then checks the result against an uninterrupted run: every tensor of the final
checkpoint (model, EMA, optimizer, LR scheduler, RNG) ``torch.equal``, trainer state and loss log equal
(wall-clock fields aside). Used by ``tests/test_faults.py`` (``MEDKIT_SOAK=N`` for a long soak).
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

# stages of save_checkpoint after which a kill can be aimed (see checkpoint._fault_point)
SAVE_STAGES = ("begin", "model.safetensors", "ema.safetensors", "state.pt", "trainer.json", "manifest.json",
               "renamed", "latest", "pruned")


# ------------------------------------------------------------------------------------------ worker

def _emit(trace: str, *parts) -> None:
    with open(trace, "a") as f:
        f.write(" ".join(map(str, parts)) + f" {time.time():.6f}\n")


def build_job(spec: dict):
    """(trainer, dataset, batch_size, loss_fn) for ``spec['loop']`` in 'vae' | 'ldm', as the notebooks build them."""
    import torch

    from medkit.methods import sbldm
    from medkit.train.loop import Trainer
    from medkit.train.schedules import lr_schedule

    steps, seed = int(spec["max_steps"]), int(spec.get("seed", 0))
    cfg = sbldm.config("smoke", vae_steps=steps, ldm_steps=steps, ckpt_every=int(spec["ckpt_every"]), seed=seed)
    torch.manual_seed(seed)  # the same initial weights in every launch
    if spec["loop"] == "vae":
        from medkit import data as mdata
        cache = mdata.build_slice_cache(cfg["data"], cfg["image_size"], seed=seed, log=lambda m: None)
        dataset = mdata.SliceDataset(cache, "train")
        model = sbldm.build_vae(cfg)
        lr = cfg["vae_lr"]

        def loss_fn(m, b, step):
            return sbldm.vae_loss(m, b, step, cfg)
    elif spec["loop"] == "ldm":
        g = torch.Generator().manual_seed(seed)  # stand-in posteriors: the loop does not care where they come from
        mu = torch.randn(64, cfg["latent_channels"], 8, 8, generator=g)
        sigma = 0.05 + 0.2 * torch.rand(mu.shape, generator=g)
        dataset = sbldm.LatentDataset(mu, sigma, 1.0)  # draws fresh noise per item: the global RNG matters
        model = sbldm.build_unet(cfg)
        scheduler = sbldm.build_scheduler(cfg, "ddpm")
        lr = cfg["ldm_lr"]

        def loss_fn(m, z0, step):
            return sbldm.ldm_loss(m, z0, step, scheduler)
    else:
        raise ValueError(f"loop={spec['loop']!r}: use 'vae' or 'ldm'")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = lr_schedule(opt, warmup_steps=cfg["warmup_steps"], total_steps=steps, floor=sbldm.LR_FLOOR)
    trainer = Trainer(model, opt, run_dir=spec["run_dir"], stage=spec["loop"], config=cfg, max_steps=steps,
                      lr_scheduler=sched, ema_decay=cfg["ema_decay"], precision="fp32",
                      ckpt_every=cfg["ckpt_every"], keep=int(spec.get("keep", 2)),
                      log_every=int(spec.get("log_every", 5)), budget_s=None, seed=seed, device="cpu",
                      progress=False, plot=False, log=lambda m: print(m, file=sys.stderr, flush=True))
    return trainer, dataset, int(spec.get("batch", 8)), loss_fn


def worker(spec: dict) -> None:
    """Train ``spec`` to the end; with ``spec['processes'] > 1`` in that many CPU processes (gloo), every one of
    them training its shard and the main one writing the trace."""
    processes = int(spec.get("processes", 1))
    if processes > 1:
        from medkit.train.parallel import launch
        launch(_train_traced, spec, processes=processes)
    else:
        _train_traced(spec)


def _train_traced(spec: dict) -> None:
    import torch

    torch.set_num_threads(1)  # bit-identical CPU results need the same thread count in every launch
    import threading

    from tqdm.auto import tqdm
    tqdm.set_lock(threading.RLock())  # not tqdm's default multiprocessing lock: a SIGKILL would leak its semaphore
    trainer, dataset, batch, loss_fn = build_job(spec)
    trace = spec["trace"]
    emit = (lambda *parts: _emit(trace, *parts)) if trainer.is_main else (lambda *parts: None)
    find = trainer._find_and_load

    def traced_find(resolved):
        step = find(resolved)
        emit("resume", -1 if step is None else step)
        return step

    trainer._find_and_load = traced_find

    def traced_loss(m, b, step):
        emit("step", step)
        return loss_fn(m, b, step)

    emit("ready")
    result = trainer.fit(dataset, batch, traced_loss)
    emit("done", result.step)


# ------------------------------------------------------------------------------------------ driver

@dataclass
class Launch:
    index: int
    mode: str                        # "time" (random moment), "save:<stage>" (aimed), "finish" (not killed)
    seconds: float                   # launch -> exit
    resumed_from: int | None = None  # checkpoint step found (None: killed before fit looked; -1: fresh)
    reached: int | None = None       # steps completed when it died
    in_save: str | None = None       # "step_00000020 after manifest.json" when the kill landed inside a save
    recomputed: int | None = None    # reached - the step the next launch resumed from
    first_step_s: float | None = None  # launch -> first step completed after resuming
    latest_ok: bool = True           # after the kill, `latest` named a verified checkpoint (or none yet)


@dataclass
class KillReport:
    loop: str
    launches: list[Launch] = field(default_factory=list)

    @property
    def kills(self) -> list[Launch]:
        return [x for x in self.launches if x.mode != "finish"]

    @property
    def max_recomputed(self) -> int:
        return max((x.recomputed or 0) for x in self.kills) if self.kills else 0

    def summary(self) -> str:
        rows = [f"{self.loop}: {len(self.kills)} kills, {sum(1 for k in self.kills if k.in_save)} inside a save, "
                f"max recomputed {self.max_recomputed} steps"]
        for x in self.launches:
            rows.append(f"  #{x.index} {x.mode:<22} resumed {x.resumed_from!s:>4} reached {x.reached!s:>4} "
                        f"recomputed {x.recomputed!s:>4} "
                        f"first step {x.first_step_s and round(x.first_step_s, 2)!s:>5} s"
                        f"{'  in save: ' + x.in_save if x.in_save else ''}")
        return "\n".join(rows)

    def to_json(self) -> dict:
        return {"loop": self.loop, "launches": [asdict(x) for x in self.launches]}


def _events(trace: Path, skip: int) -> list[list[str]]:
    if not trace.exists():
        return []
    out = []
    for ln in trace.read_text().splitlines()[skip:]:
        e = ln.split()
        if e and len(e) >= {"save": 4, "ready": 2}.get(e[0], 3):  # (a line cut by a kill is dropped)
            out.append(e)
    return out


def _latest_ok(ckpt_dir: Path) -> bool:
    from medkit.train.checkpoint import CheckpointError, _read_latest, verify_checkpoint

    name = _read_latest(ckpt_dir)
    if name is None:
        return True
    try:
        verify_checkpoint(ckpt_dir / name)
        return True
    except CheckpointError:
        return False


def launch_worker(spec: dict, extra_env: dict | None = None) -> subprocess.Popen:
    """Start the worker on ``spec`` in a fresh interpreter, as a new session would (output: ``<trace>.stderr``)."""
    env = dict(os.environ)
    env.pop("MEDKIT_FAULT_DELAY_SAVE", None)
    env.update({"MEDKIT_FAULT_TRACE": spec["trace"], **(extra_env or {})})
    err = open(Path(spec["trace"]).with_suffix(".stderr"), "a")
    try:
        # a session of its own, so that a kill takes all the processes of a multi-process worker
        return subprocess.Popen([sys.executable, "-m", "medkit.train.faults", json.dumps(spec)], env=env,
                                stdout=err, stderr=err, cwd=str(Path(__file__).resolve().parents[2]),
                                start_new_session=True)
    finally:
        err.close()


# Imports take ~8 s of a cold start (torch, MONAI, diffusers); the killed launches are forked from a
# server that has done them once, so a test can afford many kills. The final launch is cold.
PRELOAD = ["medkit.train.faults", "medkit.methods.sbldm", "medkit.data", "medkit.train.loop", "monai.networks.nets",
           "diffusers.schedulers.scheduling_ddpm", "safetensors.torch", "tqdm.auto"]


def _forked_main(spec_json: str, env: dict, out: str) -> None:
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.pop("MEDKIT_FAULT_DELAY_SAVE", None)
    os.environ.update(env)
    worker(json.loads(spec_json))


class _Forked:
    """A worker forked from the preloaded forkserver, with the ``Popen`` methods the driver uses."""

    def __init__(self, spec: dict, extra_env: dict | None):
        import multiprocessing as mp

        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        env = {"MEDKIT_FAULT_TRACE": spec["trace"], **(extra_env or {})}
        self.p = ctx.Process(target=_forked_main, args=(json.dumps(spec), env,
                                                       str(Path(spec["trace"]).with_suffix(".stderr"))))
        self.p.start()
        self.pid = self.p.pid

    def poll(self):
        return self.p.exitcode

    def wait(self, timeout=None):
        self.p.join(timeout)
        return self.p.exitcode

    def kill(self):
        self.p.kill()


def _can_fork_server() -> bool:
    import multiprocessing as mp
    return "forkserver" in mp.get_all_start_methods()


def start_worker(spec: dict, extra_env: dict | None = None, fork: bool = True):
    """Start the worker: forked from the preloaded server when ``fork`` (and possible) and single-process,
    else cold."""
    if fork and _can_fork_server() and int(spec.get("processes", 1)) == 1:
        return _Forked(spec, extra_env)
    return launch_worker(spec, extra_env)


def _kill(proc) -> None:
    """SIGKILL the worker with every process it started (a cold worker leads a session of its own)."""
    if isinstance(proc, subprocess.Popen):
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        proc.kill()


def kill_and_resume(spec: dict, kills: int, seed: int = 0, delay_s: float = 0.15, timeout: float = 600,
                    fork: bool = True, cold_finish: bool = True) -> KillReport:
    """Run ``spec`` to the end through ``kills`` SIGKILLs, every other one aimed inside a checkpoint save.

    A random-time kill comes in a random step of the checkpoint interval after the launch's first
    checkpoint, a random fraction into it; an aimed one right after ``<stage>`` of the launch's first save.
    ``fork``: start the launches that will be killed from a preloaded fork server (fast);
    ``cold_finish``: start the last, finishing launch as a fresh interpreter, so that its ``first_step_s``
    is a real re-run-to-first-resumed-step time (imports included).
    """
    rng = random.Random(seed)
    trace = Path(spec["trace"])
    ckpt_dir = Path(spec["run_dir"]) / "checkpoints" / spec["loop"]
    report = KillReport(spec["loop"])
    step_s = 0.05  # seconds per step; re-estimated from the trace
    deadline = time.time() + timeout
    while True:
        i = len(report.launches)
        skip = len(trace.read_text().splitlines()) if trace.exists() else 0
        mode = "finish"
        if len(report.kills) < kills:  # aimed and random kills alternate, aimed first
            mode = f"save:{rng.choice(SAVE_STAGES)}" if len(report.kills) % 2 == 0 else "time"
        extra = {"MEDKIT_FAULT_DELAY_SAVE": str(delay_s)} if mode.startswith("save:") else {}
        # time mode: let it pass its first checkpoint, then die at a random step of the next interval, a
        # random fraction into that step (forward, backward, logging, EMA or the checkpoint save)
        every = int(spec["ckpt_every"])
        n_steps, frac = rng.randint(1, every), rng.random()
        t0 = time.time()
        proc = start_worker(spec, extra, fork=fork and not (mode == "finish" and cold_finish))
        t_target = None
        while proc.poll() is None and mode != "finish":
            if time.time() > deadline:
                _kill(proc)
                raise TimeoutError(f"fault run of {spec['loop']} did not finish in {timeout} s")
            ev = _events(trace, skip)
            if mode == "time":
                resumed = [int(e[1]) for e in ev if e[0] == "resume"]
                steps = [(int(e[1]), float(e[-1])) for e in ev if e[0] == "step"]
                first_ckpt = (max(resumed[0], 0) // every + 1) * every if resumed else 0
                if t_target is None and resumed and steps and steps[-1][0] >= first_ckpt + n_steps - 1:
                    if len(steps) >= 2:
                        step_s = (steps[-1][1] - steps[0][1]) / max(1, steps[-1][0] - steps[0][0])
                    t_target = time.time() + frac * step_s
                if t_target is not None and time.time() >= t_target:
                    break
            else:
                stage = mode.split(":", 1)[1]
                resumed = [int(e[1]) for e in ev if e[0] == "resume"]
                if any(e[0] == "save" and e[2] == stage and resumed and int(e[1]) > resumed[0] for e in ev):
                    break
            time.sleep(0.002)
        if mode != "finish" and proc.poll() is None:
            _kill(proc)
        rc = proc.wait()
        t_end = time.time()
        ev = _events(trace, skip)
        if mode != "finish" and rc == 0:
            mode = "finish"  # the run ended before the kill came
        if rc not in (0, -signal.SIGKILL) or (mode == "finish" and rc != 0):
            err = Path(spec["trace"]).with_suffix(".stderr").read_text()[-3000:]
            raise RuntimeError(f"fault worker for {spec['loop']} failed (exit {rc}):\n{err}")
        x = Launch(index=i, mode=mode, seconds=t_end - t0, latest_ok=_latest_ok(ckpt_dir))
        res = [int(e[1]) for e in ev if e[0] == "resume"]
        if res:
            x.resumed_from = res[0]
            done = [int(e[1]) for e in ev if e[0] in ("step", "save", "done")]
            x.reached = max([max(x.resumed_from, 0), *done])
            start = max(x.resumed_from, 0)
            firsts = [float(e[-1]) for e in ev if (e[0] == "step" and int(e[1]) == start + 1)
                      or (e[0] == "done" and int(e[1]) == start + 1)]
            if firsts:
                x.first_step_s = firsts[0] - t0
        if ev and ev[-1][0] == "save" and ev[-1][2] != "pruned" and mode != "finish":
            x.in_save = f"step_{int(ev[-1][1]):08d} after {ev[-1][2]}"
        if report.launches:
            prev = report.launches[-1]
            if prev.reached is not None and x.resumed_from is not None:
                prev.recomputed = prev.reached - max(x.resumed_from, 0)
        report.launches.append(x)
        if mode == "finish":
            return report


# ----------------------------------------------------------------------------------------- compare

def _diff(a, b, where: str, out: list[str]) -> None:
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b)):
            out.append(f"{where}: tensors differ")
    elif isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                out.append(f"{where}.{k}: only in {'second' if k not in a else 'first'}")
            else:
                _diff(a[k], b[k], f"{where}.{k}", out)
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            out.append(f"{where}: lengths {len(a)} != {len(b)}")
        for i, (u, v) in enumerate(zip(a, b)):
            _diff(u, v, f"{where}[{i}]", out)
    elif a != b and not (a != a and b != b):  # nan == nan here
        out.append(f"{where}: {a!r} != {b!r}")


WALL_CLOCK_KEYS = ("seconds",)


def _no_clock(obj):
    if isinstance(obj, dict):
        return {k: _no_clock(v) for k, v in obj.items() if k not in WALL_CLOCK_KEYS}
    return obj


def compare_runs(run_a, run_b, stage: str) -> list[str]:
    """Differences between two runs' final checkpoints and logs (empty list: bit-identical)."""
    from medkit.train.checkpoint import find_resumable, load_checkpoint

    out: list[str] = []
    pa = find_resumable(Path(run_a) / "checkpoints" / stage, log=lambda m: None)
    pb = find_resumable(Path(run_b) / "checkpoints" / stage, log=lambda m: None)
    if pa is None or pb is None or pa.name != pb.name:
        return [f"final checkpoints differ: {pa} vs {pb}"]
    (ta, sa, ma), (tb, sb, mb) = load_checkpoint(pa), load_checkpoint(pb)
    _diff(ta, tb, "tensors", out)
    _diff(sa, sb, "state", out)
    _diff(_no_clock(ma), _no_clock(mb), "trainer.json", out)
    la = [_no_clock(json.loads(x)) for x in (Path(run_a) / "logs" / f"{stage}.jsonl").read_text().splitlines()]
    lb = [_no_clock(json.loads(x)) for x in (Path(run_b) / "logs" / f"{stage}.jsonl").read_text().splitlines()]
    _diff(la, lb, "log", out)
    return out


if __name__ == "__main__":
    worker(json.loads(sys.argv[1]))
