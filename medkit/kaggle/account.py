"""Kaggle names and credentials: constants, the two errors, slug/owner/source validation, the authenticated API."""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
TEMPLATE_DIR = REPO_ROOT / "kaggle"
PLACEHOLDER_OWNER = "YOUR_KAGGLE_USERNAME"  # in the committed kaggle/*/kernel-metadata.json: replace it
CODE_DATASET = "medkit-src"                 # slug of the dataset holding medkit's source (offline kernels)
CODE_DATASET_CONTENT = ("medkit", "notebooks", "requirements.txt", "requirements-nodeps.txt", "pyproject.toml")
CODE_DATASET_IGNORE = ("__pycache__", "*.pyc", ".ipynb_checkpoints", "*.egg-info", ".git", ".venv", "runs",
                       "checkpoints", ".pytest_cache")
KAGGLE_WORKING = "/kaggle/working"          # saved as the version's output; run_remote's run directory
MACHINE_T4 = "NvidiaTeslaT4"
DONE = ("complete", "error", "cancel_requested", "cancel_acknowledged")
MEDKIT_CELL_TAG = "medkit-kaggle"

_SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")    # Kaggle's slug rule (kaggle.api: _validate_slug_syntax)
_OWNER = re.compile(r"^[a-z0-9]+(?:[_-][a-z0-9]+)*$")  # usernames: the same, underscores allowed


class KaggleError(ValueError):
    """A setting that cannot work (bad slug, missing owner, unknown notebook) or a refused push."""


class KaggleRunFailed(RuntimeError):
    """A kernel version ended in error/cancel, or did not end within the timeout."""

    def __init__(self, message: str, ref: str, log_path=None, status: str = "error"):
        super().__init__(message)
        self.ref, self.log_path, self.status = ref, log_path, status


def slugify(title: str) -> str:
    """The slug Kaggle derives from a title (python-slugify, as kaggle's own check uses)."""
    try:
        from slugify import slugify as _slugify
    except ImportError:  # the kaggle package brings python-slugify; this is the same rule for ASCII titles
        return re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9]+", "-", title.lower())).strip("-")
    return _slugify(title)


def check_title(title: str, setting: str = "title") -> str:
    """Return the kernel slug of ``title``; raise when Kaggle would refuse it."""
    if not isinstance(title, str) or len(title.strip()) < 5:
        raise KaggleError(f"{setting} {title!r} is too short: Kaggle needs at least 5 characters")
    slug = slugify(title)
    if len(slug) < 5 or not _SLUG.match(slug):
        raise KaggleError(f"{setting} {title!r} gives the slug {slug!r}; a kernel slug needs at least 5 lowercase "
                          "letters/digits/hyphens: use letters and digits in the title")
    return slug


def check_owner(owner: str, setting: str = "owner", allow_placeholder: bool = False) -> str:
    if owner == PLACEHOLDER_OWNER and allow_placeholder:
        return owner
    if owner == PLACEHOLDER_OWNER:
        raise KaggleError(f"{setting} is still the placeholder {PLACEHOLDER_OWNER}: give your Kaggle username "
                          "(--owner, KAGGLE_USERNAME or ~/.kaggle/kaggle.json)")
    if not isinstance(owner, str) or not _OWNER.match(owner):
        raise KaggleError(f"{setting} {owner!r} is not a Kaggle username (lowercase letters, digits, '-' or '_')")
    return owner


def _check_sources(sources, setting: str, kind: str, allow_placeholder: bool = False) -> list[str]:
    """Validate OWNER/SLUG[/VERSION] references (``kind``: dataset, kernel, model)."""
    if isinstance(sources, str):
        raise KaggleError(f"{setting} must be a list of references, not the string {sources!r}")
    out = []
    for s in sources:
        parts = str(s).split("/")
        if allow_placeholder and parts[0] == PLACEHOLDER_OWNER:
            parts[0] = "owner"
        if kind == "model":
            ok = (len(parts) == 5 and all(parts) and parts[4].isdigit() and bool(_OWNER.match(parts[0])))
            form = "OWNER/MODEL/FRAMEWORK/VARIATION/VERSION (e.g. 'google/gemma/pytorch/2b/1')"
        else:
            ok = (len(parts) in (2, 3) and bool(_OWNER.match(parts[0])) and bool(_SLUG.match(parts[1]))
                  and (len(parts) == 2 or parts[2].isdigit()))
            if kind == "kernel" and ok and len(parts[1]) < 5:
                ok = False
            example = "me/brain-mri" if kind == "dataset" else "me/medkit-sbldm-01-vae"
            form = f"OWNER/SLUG or OWNER/SLUG/VERSION (e.g. '{example}')"
        if not ok:
            raise KaggleError(f"{setting}: {s!r} is not a Kaggle {kind} reference; use {form}, lowercase")
        if s not in out:
            out.append(str(s))
    return out


def _kaggle_json_username() -> str | None:
    home = Path.home()
    for p in (Path(os.environ["KAGGLE_CONFIG_DIR"]) / "kaggle.json" if os.environ.get("KAGGLE_CONFIG_DIR") else None,
              home / ".kaggle" / "kaggle.json", home / ".config" / "kaggle" / "kaggle.json"):
        if p is not None and p.is_file():
            try:
                name = json.loads(p.read_text()).get("username")
            except (OSError, ValueError, AttributeError):
                raise KaggleError(f"{p} is not a JSON object like {{\"username\": ..., \"key\": ...}}; fix or "
                                  "delete it") from None
            if name:
                return name
    return None


def resolve_owner(owner: str | None = None, allow_placeholder: bool = False) -> str:
    """``owner``, else ``$KAGGLE_USERNAME``, else the username in ``~/.kaggle/kaggle.json`` (or ~/.config/kaggle)."""
    name = owner or os.environ.get("KAGGLE_USERNAME") or _kaggle_json_username()
    if not name:
        raise KaggleError("no Kaggle username: pass --owner YOUR_NAME (owner=...), set KAGGLE_USERNAME, or put "
                          "kaggle.json (kaggle.com -> Settings -> API -> Create New Token) in ~/.kaggle/")
    return check_owner(name, allow_placeholder=allow_placeholder)


def kaggle_api():
    """An authenticated ``kaggle.KaggleApi`` (the package authenticates on import; its output is hidden)."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from kaggle.api.kaggle_api_extended import KaggleApi
    except ImportError:
        raise KaggleError("the kaggle package is missing: pip install -r requirements.txt") from None
    api = KaggleApi()
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            api.authenticate()
    except SystemExit:
        raise KaggleError("no Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY, put kaggle.json "
                          "(kaggle.com -> Settings -> API -> Create New Token) in ~/.kaggle/ (chmod 600), or run "
                          "`kaggle auth login`") from None
    return api


def _owner_and_api(owner, api):
    """For a real push: the api (authenticated now when not given) and the owner, which may come from it."""
    api = api or kaggle_api()
    if not owner and not os.environ.get("KAGGLE_USERNAME") and not _kaggle_json_username():
        get = getattr(api, "get_config_value", None)  # OAuth logins keep the username there
        owner = get("username") if get else None
    return owner, api


def _attr(obj, *names, default=None):
    for n in names:
        v = obj.get(n) if isinstance(obj, dict) else getattr(obj, n, None)
        if v not in (None, ""):
            return v
    return default
