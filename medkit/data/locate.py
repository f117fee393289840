"""Where a ``data`` setting points: a folder, a SYNTHETIC fixture, or a Kaggle dataset named by its slug.

=====================================  ==============================================================
``"/path/to/folder"``                  that folder, as given
``"fixture:<layout>"``                 a SYNTHETIC stand-in in that on-disk layout (:mod:`.fixtures`)
``"kaggle:OWNER/SLUG[/sub/folder]"``   the dataset ``OWNER/SLUG`` attached to the Kaggle kernel
=====================================  ==============================================================

A ``kaggle:`` value does two jobs. When medkit pushes a kernel (``python -m medkit kaggle push``, a grid's
Kaggle backend) every such value among the parameters is attached as a dataset source
(:func:`kaggle_refs`); inside the kernel :func:`resolve` finds its mount - ``/kaggle/input/datasets/<owner>/
<slug>`` on the current Kaggle image, ``/kaggle/input/<slug>`` on older kernels. So a grid's t4 profile can
name the public dataset it reads (``kaggle:tschandl/isic2018-challenge-task1-data-segmentation``) and the
user attaches nothing by hand. Off Kaggle it is an error that says how to download the dataset instead.
"""
from __future__ import annotations

import re
from pathlib import Path

# Public Kaggle copies of the datasets Siamese-Diffusion's protocol reads, by the kit's layout name (slugs in use
# in public Kaggle notebooks; each copy keeps the dataset's own folder layout). PraNet's TrainDataset/TestDataset
# split and ISIC 2016 have no copy the kit can vouch for: upload them as your own dataset.
KAGGLE_DATASETS = {
    "kvasir-seg": "debeshjha1/kvasirseg",
    "cvc-clinicdb": "balraj98/cvcclinicdb",
    "isic2018": "tschandl/isic2018-challenge-task1-data-segmentation",
}
KAGGLE_PREFIX = "kaggle:"
KAGGLE_INPUT = Path("/kaggle/input")  # module constant so that tests can point it at a temporary folder
_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class DataLocationError(ValueError):
    """A data setting that names nothing usable here; the message says what to do."""


def parse_kaggle(value) -> tuple[str, str] | None:
    """``"kaggle:OWNER/SLUG[/sub]"`` -> ``("OWNER/SLUG", "sub")``; ``None`` for any other value."""
    if not (isinstance(value, str) and value.startswith(KAGGLE_PREFIX)):
        return None
    parts = value[len(KAGGLE_PREFIX):].strip("/").split("/")
    if len(parts) < 2 or not all(_PART.match(p) for p in parts) or any(p in (".", "..") for p in parts):
        raise DataLocationError(f"data={value!r}: write kaggle:OWNER/SLUG or kaggle:OWNER/SLUG/sub/folder, as in "
                                f"the dataset's address kaggle.com/datasets/OWNER/SLUG (e.g. "
                                f"'kaggle:debeshjha1/kvasirseg')")
    return f"{parts[0]}/{parts[1]}", "/".join(parts[2:])


def kaggle_refs(params) -> list[str]:
    """The Kaggle datasets (OWNER/SLUG) that ``kaggle:`` values among ``params`` name, in order, once each;
    nested mappings and lists are searched too (a pipeline kernel's per-stage parameters)."""
    out: list[str] = []

    def walk(v):
        if isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                walk(x)
        else:
            parsed = parse_kaggle(v)
            if parsed and parsed[0] not in out:
                out.append(parsed[0])

    walk(params)
    return out


def kaggle_mounts(ref: str) -> list[Path]:
    """Where Kaggle mounts the dataset ``OWNER/SLUG``: the current layout first, then the older one."""
    owner, slug = ref.split("/")
    return [KAGGLE_INPUT / "datasets" / owner / slug, KAGGLE_INPUT / slug]


def resolve(data, *, cache_root=None) -> str:
    """The folder a ``data`` setting names (see the module docstring); other values come back unchanged."""
    if isinstance(data, str) and data.startswith("fixture:"):
        from . import fixtures

        return fixtures.resolve(data, cache_root=cache_root)
    parsed = parse_kaggle(data)
    if parsed is None:
        return data
    ref, sub = parsed
    if not KAGGLE_INPUT.is_dir():
        raise DataLocationError(
            f"data={data!r} names the Kaggle dataset {ref}, and this is not a Kaggle kernel ({KAGGLE_INPUT} does not "
            f"exist): download it (`kaggle datasets download -d {ref} --unzip -p DIR`) and set data to DIR, or run "
            f"the notebook on Kaggle (`python -m medkit kaggle push ... -p data {data}` attaches it)")
    for mount in kaggle_mounts(ref):
        if mount.is_dir():
            folder = mount / sub if sub else mount
            if not folder.is_dir():
                raise DataLocationError(f"data={data!r}: the dataset {ref} is attached at {mount}, but it has no "
                                        f"folder {sub!r}; its top level holds {sorted(p.name for p in mount.iterdir())[:8]}")
            return str(folder)
    raise DataLocationError(
        f"data={data!r}: the Kaggle dataset {ref} is not attached to this kernel (looked in "
        f"{', '.join(str(p) for p in kaggle_mounts(ref))}): add it in the editor's Data panel (Add Input, search "
        f"{ref}), or push the kernel with medkit (`python -m medkit kaggle push ... -p data {data}` attaches it) or "
        f"with `--dataset {ref}`")
