"""Code cells that medkit.kaggle puts into kernels, as ordinary Python files (each runs as one notebook cell).

A cell's settings are the module-level assignments at its top (``NAME = <literal>``); ``cell_source(name,
NAME=value, ...)`` returns the file's text with those assignments set to the given values (as JSON literals,
which are Python literals for strings, lists and None). Each file runs as it is, with its placeholder values,
so the tests run the same code that goes into a kernel.
"""
from __future__ import annotations

import ast
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def cell_source(name: str, **values) -> str:
    """The source of ``cells/<name>.py`` with the top-level assignments named in ``values`` set to them."""
    text = (HERE / f"{name}.py").read_text()
    tree = ast.parse(text)
    lines = text.splitlines()
    found = set()
    for node in reversed(tree.body):  # bottom-up, so earlier line numbers stay valid
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            key = node.targets[0].id
            if key in values:
                found.add(key)
                line = lines[node.lineno - 1]
                comment = line[line.index("  #"):] if "  #" in line and node.end_lineno == node.lineno else ""
                lines[node.lineno - 1:node.end_lineno] = [f"{key} = {json.dumps(values[key])}{comment}"]
    missing = sorted(set(values) - found)
    if missing:
        raise KeyError(f"cells/{name}.py has no top-level assignment of {missing}")
    return "\n".join(lines).rstrip("\n")
