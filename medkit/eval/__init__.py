"""Evaluation: the results format (metrics.json), folder-to-folder evaluation, run reports and the
downstream segmentation test."""
from medkit.eval.results import entry, flatten, read_metrics, update_metrics

__all__ = ["entry", "flatten", "read_metrics", "update_metrics", "load_pairs", "save_pairs", "run_downstream",
           "Pairs", "PairsError"]


def __getattr__(name):  # the downstream test imports MONAI's networks: load it when asked for
    if name in ("load_pairs", "save_pairs", "Pairs", "PairsError"):  # the data layer's, re-exported
        from medkit.data import pairs_io

        return getattr(pairs_io, name)
    if name == "run_downstream":
        from medkit.eval import downstream

        return downstream.run_downstream
    raise AttributeError(name)
