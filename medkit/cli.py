"""``python -m medkit``: run a method's notebook pipeline from the shell.

    python -m medkit run sbldm --profile cpu-demo --out runs/demo
    python -m medkit run sbldm --profile smoke --out runs/smoke -p vae_steps 20
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
    from .notebooks import PIPELINES

    p = argparse.ArgumentParser(prog="python -m medkit", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="execute a method's notebooks with papermill into one run directory")
    r.add_argument("method", choices=sorted(PIPELINES))
    r.add_argument("--profile", default="cpu-demo", choices=["smoke", "cpu-demo", "t4"],
                   help="smoke: seconds (CI); cpu-demo: minutes on a CPU; t4: the seed's settings on a 16 GB T4")
    r.add_argument("--out", required=True, help="run directory (created; re-running resumes)")
    r.add_argument("--stages", nargs="+", help="only these notebooks, e.g. 03_sampling 04_evaluation")
    r.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="a notebook parameter, e.g. -p vae_steps 500 (passed to every notebook that has it)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        from .notebooks import NotebookFailed, run_pipeline

        try:
            run_pipeline(args.method, args.profile, args.out, {k: _value(v) for k, v in args.param}, args.stages)
        except NotebookFailed as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        except (ValueError, FileNotFoundError) as e:  # bad arguments: say which and stop
            print(f"error: {e}", file=sys.stderr)
            return 2
    return 0
