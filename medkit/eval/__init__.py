"""Evaluation: the results format (metrics.json), folder-to-folder evaluation, run reports and the
downstream segmentation test."""
from medkit.eval.results import entry, flatten, read_metrics, update_metrics

__all__ = ["entry", "flatten", "read_metrics", "update_metrics", "load_pairs", "save_pairs", "run_downstream",
           "Pairs", "PairsError"]


def __getattr__(name):  # the downstream test imports MONAI's networks: load it when asked for
    if name in ("load_pairs", "save_pairs", "run_downstream", "Pairs", "PairsError"):
        from medkit.eval import downstream

        return getattr(downstream, name)
    raise AttributeError(name)
