"""``python -m medkit kaggle push | run | dataset | templates``."""
from __future__ import annotations

import argparse
import ast
import json

from . import __doc__ as PACKAGE_DOC
from .account import CODE_DATASET, KaggleRunFailed
from .dataset import push_code_dataset
from .kernels import push
from .notebook import available_notebooks
from .remote import run_remote
from .templates import write_templates


def _literal(text: str):
    """-p values as papermill parses them: Python literals when they parse, strings otherwise."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def add_subparser(subparsers) -> argparse.ArgumentParser:
    """Add ``kaggle`` (push, run, dataset, templates) to a ``python -m medkit`` sub-parser set."""
    k = subparsers.add_parser("kaggle", help="build, push and run kernels on Kaggle (T4 GPU)",
                              description=PACKAGE_DOC.split("\n\n")[0])
    ksub = k.add_subparsers(dest="kaggle_command", required=True)

    def kernel_args(p):
        p.add_argument("notebook", help=f"one of {available_notebooks()}, a .py/.ipynb path, or a method name "
                                        "(its whole pipeline in one kernel)")
        p.add_argument("--gpu", action=argparse.BooleanOptionalAction, default=True, help="a T4 GPU (default on)")
        p.add_argument("--internet", action="store_true",
                       help="kernel with internet: medkit is pip-installed from --repo-url instead of the "
                            "OWNER/medkit-src dataset")
        p.add_argument("--dataset", action="append", default=[], metavar="OWNER/SLUG", help="attach a dataset")
        p.add_argument("--kernel-source", action="append", default=[], metavar="OWNER/SLUG",
                       help="attach a kernel's output, e.g. the previous version of this kernel to resume")
        p.add_argument("--model-source", action="append", default=[], metavar="OWNER/MODEL/FW/VAR/VERSION")
        p.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                       help="a notebook parameter, e.g. -p profile t4")
        p.add_argument("--owner", help="Kaggle username (default: KAGGLE_USERNAME or ~/.kaggle/kaggle.json)")
        p.add_argument("--title", help="kernel title (>= 5 characters; the slug is derived from it)")
        p.add_argument("--public", action="store_true", help="a public kernel (default private)")
        p.add_argument("--repo-url", help="with --internet: the repository the kernel installs medkit from "
                                          "(default: git remote origin)")
        p.add_argument("--no-code-dataset", action="store_true",
                       help="without internet: do not attach OWNER/medkit-src (you attach medkit yourself)")

    kp = ksub.add_parser("push", help="build the kernel folder and push it as a new version")
    kernel_args(kp)
    kp.add_argument("--dry-run", action="store_true", help="build and validate only: no credentials, no network")
    kp.add_argument("--out", help="where to build the kernel folder (default: a temp folder)")
    kr = ksub.add_parser("run", help="push, poll until the version ends, download its output into --out")
    kernel_args(kr)
    kr.add_argument("--out", required=True, help="where the output goes (a run directory)")
    kr.add_argument("--poll", type=float, default=60, help="seconds between status polls")
    kr.add_argument("--timeout", type=float, default=12 * 3600, help="seconds before giving up waiting")
    kd = ksub.add_parser("dataset", help="create or version OWNER/medkit-src (medkit's source, offline kernels)")
    kd.add_argument("--owner")
    kd.add_argument("--slug", default=CODE_DATASET)
    kd.add_argument("--wheels", help="a folder of .whl files to ship (pip download -r requirements.txt -d DIR)")
    kd.add_argument("--notes", help="version notes")
    kd.add_argument("--dry-run", action="store_true")
    kd.add_argument("--out", help="where to build the dataset folder (default: a temp folder)")
    ksub.add_parser("templates", help="rewrite kaggle/*/kernel-metadata.json from the notebook list")
    return k


def _kernel_opts(args) -> dict:
    return dict(params={k: _literal(v) for k, v in args.param}, gpu=args.gpu, internet=args.internet,
                datasets=args.dataset, kernel_sources=args.kernel_source, model_sources=args.model_source,
                owner=args.owner, title=args.title, private=not args.public, repo_url=args.repo_url,
                code_dataset=None if args.no_code_dataset else CODE_DATASET)


def main(args) -> int:
    """Execute a namespace parsed with ``add_subparser``'s parser: 0 done, 1 the kernel failed, 2 bad input."""
    import sys

    try:
        if args.kaggle_command == "push":
            push(args.notebook, dry_run=args.dry_run, out_dir=args.out, **_kernel_opts(args))
        elif args.kaggle_command == "run":
            opts = _kernel_opts(args)
            opts.pop("private")
            r = run_remote(args.notebook, opts.pop("params"), args.out, poll_s=args.poll, timeout_s=args.timeout,
                           **opts)
            print(json.dumps(r, indent=1))
        elif args.kaggle_command == "dataset":
            push_code_dataset(args.owner, slug=args.slug, version_notes=args.notes, wheels=args.wheels,
                              dry_run=args.dry_run, out_dir=args.out)
        elif args.kaggle_command == "templates":
            write_templates()
        return 0
    except KaggleRunFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # requests' HTTP and connection errors: Kaggle refused or could not be reached
        print(f"error: Kaggle request failed: {e}", file=sys.stderr)
        return 1
