"""``python -m medkit``: run a method's notebook pipeline or an experiment grid from the shell.

    python -m medkit run sbldm --profile cpu-demo --out runs/demo
    python -m medkit run sbldm --profile smoke --out runs/smoke -p vae_steps 20
    python -m medkit run siamese --backend scratch --profile cpu-demo --out runs/siamese-demo
    python -m medkit grid run E2.1 --profile cpu-demo --out runs/grids/E2.1
    python -m medkit grid show E2.1 --profile t4
    python -m medkit kaggle push sbldm/01_vae --gpu -p profile t4 --dry-run
    python -m medkit evaluate --real DIR --fake runs/demo/samples/generated.npz --out m.json --features inception
    python -m medkit report runs/demo runs/grids/E1/E1.1 --out report
    python -m medkit downstream --profile cpu-demo --out runs/downstream
"""
from __future__ import annotations

import argparse
import ast
import sys


def _value(text: str):
    """Parse -p values like papermill: Python literals when they parse, strings otherwise."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def build_parser() -> argparse.ArgumentParser:
    from . import session
    from .notebooks import PIPELINES

    p = argparse.ArgumentParser(prog="python -m medkit", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="execute a method's notebooks with papermill into one run directory")
    r.add_argument("method", choices=sorted(PIPELINES))
    r.add_argument("--profile", default="auto", choices=["auto", *session.PROFILES],
                   help="auto (default): t4 with a CUDA GPU, else cpu-demo; smoke: seconds (CI); cpu-demo: minutes on "
                        "a CPU; t4: the seed's settings on a 16 GB T4")
    r.add_argument("--out", required=True, help="run directory (created; re-running resumes)")
    r.add_argument("--backend", choices=["scratch", "sd15"],
                   help="siamese only: scratch (MONAI, from zero; CPU) or sd15 (Stable Diffusion 1.5 + ControlNet)")
    r.add_argument("--stages", nargs="+", help="only these notebooks, e.g. 03_sampling 04_evaluation")
    r.add_argument("--processes", type=int, default=1,
                   help="training processes, one GPU each (2 on Kaggle's T4 x2; on a CPU, gloo processes) for the "
                        "notebooks with a `processes` parameter")
    r.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="a notebook parameter, e.g. -p vae_steps 500 (passed to every notebook that has it)")
    g = sub.add_parser("grid", help="experiment grids: papermill parameter sets run cell by cell, then tabulated")
    gsub = g.add_subparsers(dest="grid_command", required=True)
    gr = gsub.add_parser("run", help="run every cell (finished cells are skipped, interrupted ones resume)")
    gr.add_argument("grid", help="a grid name under configs/grids/ (e.g. E2.1) or a .yaml path")
    gr.add_argument("--profile", default="auto", choices=["auto", *session.PROFILES],
                    help="auto (default): t4 with a CUDA GPU, else cpu-demo")
    gr.add_argument("--out", required=True, help="grid directory: one run directory per cell, results.csv/md")
    gr.add_argument("--cells", nargs="+", help="only these cells")
    gr.add_argument("--processes", type=int, default=1,
                    help="training processes, one GPU each, for the stages with a `processes` parameter")
    gr.add_argument("--backend", default="local", choices=["local", "kaggle"],
                    help="local: papermill here; kaggle: each cell as a kernel version on Kaggle's runners")
    gr.add_argument("--gpu", action=argparse.BooleanOptionalAction, default=True, help="kaggle backend: T4 GPU")
    gr.add_argument("--dataset", action="append", default=[], metavar="OWNER/SLUG",
                    help="kaggle backend: a dataset to attach to every cell's kernel")
    gr.add_argument("--internet", action="store_true", help="kaggle backend: kernels with internet")
    gr.add_argument("--parallel", type=int, default=2,
                    help="kaggle backend: cell kernels running at once (default 2; Kaggle limits GPU sessions)")
    gs = gsub.add_parser("show", help="print a grid's cells with their parameters resolved for a profile")
    gs.add_argument("grid")
    gs.add_argument("--profile", default="cpu-demo", choices=["smoke", "cpu-demo", "t4"])
    ga = gsub.add_parser("aggregate", help="(re)write results.csv, results.md and plots from the cells' metrics")
    ga.add_argument("grid")
    ga.add_argument("--profile", default="cpu-demo", choices=["smoke", "cpu-demo", "t4"])
    ga.add_argument("--out", required=True)
    from .eval import evaluate, report

    evaluate.add_arguments(sub.add_parser("evaluate", help="FID/KID/MMD (with CIs) between two folders of images"))
    report.add_arguments(sub.add_parser("report", help="aggregate runs' metrics.json into a markdown/CSV table and plots"))
    from .methods import ctsr_apply

    ctsr_apply.add_arguments(sub.add_parser("super-resolve", help="thick-slice CT/MR volume -> thin-slice NIfTI with a trained ctsr run"))
    sub.add_parser("downstream", add_help=False,
                   help="segmentation utility test: real vs real + k x synthetic vs synthetic (see --help)")
    from . import kaggle

    kaggle.add_subparser(sub)
    return p


def _grid(args) -> int:
    import json

    from . import grid

    if args.grid_command == "show":
        spec = grid.load_grid(args.grid, args.profile)
        print(json.dumps({k: spec[k] for k in ("name", "method", "profile", "shared_stages", "shared_params",
                                                "vary", "metrics", "cells")}, indent=1, default=str))
        return 0
    if args.grid_command == "aggregate":
        grid.aggregate(grid.load_grid(args.grid, args.profile), args.out)
        return 0
    opts = {}
    if args.backend == "kaggle":
        opts = {"gpu": args.gpu, "datasets": tuple(args.dataset), "internet": args.internet,
                "parallel": args.parallel}
    state = grid.run_grid(args.grid, args.profile, args.out, cells=args.cells, backend=args.backend,
                          processes=args.processes, **opts)
    failed = [c for c, e in state["cells"].items() if e.get("status") == "failed"]
    if failed:
        print(f"error: {len(failed)} cell(s) failed: {failed}; see error.txt in their run directories and "
              f"{args.out}/results.md. Run the same command again to retry them.", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["downstream"]:  # its own parser (python -m medkit.eval.downstream)
        from .eval import downstream

        return downstream.main(argv[1:])
    if argv[:1] == ["fidelity"]:  # its own parser: docs/fidelity.md, or one method's deviations
        from . import fidelity

        return fidelity.main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command in ("evaluate", "report"):
        import importlib

        mod = importlib.import_module(f"medkit.eval.{args.command}")
        try:
            return mod.run_cli(args)
        except (ValueError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if args.command == "super-resolve":
        from .methods import ctsr_apply

        return ctsr_apply.run_cli(args)
    if args.command == "kaggle":
        from . import kaggle

        return kaggle.main(args)
    if args.command == "grid":
        from .grid import GridError

        try:
            return _grid(args)
        except (GridError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if args.command == "run":
        from .notebooks import NotebookFailed, run_pipeline

        params = {k: _value(v) for k, v in args.param}
        if args.backend:
            if args.method != "siamese":
                print(f"error: --backend is for siamese (scratch | sd15), not {args.method}", file=sys.stderr)
                return 2
            params["backend"] = args.backend
        try:
            run_pipeline(args.method, args.profile, args.out, params, args.stages, processes=args.processes)
        except NotebookFailed as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        except (ValueError, FileNotFoundError) as e:  # bad arguments: say which and stop
            print(f"error: {e}", file=sys.stderr)
            return 2
    return 0
