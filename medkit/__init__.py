"""medkit: a notebook-first kit for reproducing medical-image diffusion papers on one T4 or a CPU."""
__version__ = "0.1.0"

from . import env  # noqa: F401  (cheap; the heavier modules are imported where used)


def __getattr__(name):  # lazy submodules: `medkit.nets`, `medkit.viz`, ... without importing all at start-up
    import importlib

    if name in {"data", "nets", "diffusion", "train", "methods", "metrics", "viz", "run", "cli", "notebooks"}:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'medkit' has no attribute {name!r}")
