"""Evaluation: the results format (metrics.json), folder-to-folder evaluation, run reports and the
downstream segmentation test."""
from medkit.eval.results import entry, flatten, read_metrics, update_metrics

__all__ = ["entry", "flatten", "read_metrics", "update_metrics"]
