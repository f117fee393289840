# medkit with its notebooks: a checkout it is installed from, an attached medkit-src dataset, else (internet
# on) a clone of the repository.
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

MEDKIT_GIT = ""
KAGGLE_INPUT = "/kaggle/input"
spec = importlib.util.find_spec("medkit")
roots = [Path(spec.origin).parent.parent] if spec and spec.origin else []
roots = [r for r in roots if (r / "notebooks").is_dir()]
roots += [p.parent.parent for d in ("*", "*/*", "*/*/*")
          for p in sorted(Path(KAGGLE_INPUT).glob(f"{d}/medkit/__init__.py"))]
if not roots and MEDKIT_GIT:
    subprocess.run(["git", "clone", "-q", "--depth", "1", MEDKIT_GIT, "/tmp/medkit-src"], check=True)
    roots = [Path("/tmp/medkit-src")]
if not roots:
    raise ImportError("medkit not found: attach the medkit-src dataset (python -m medkit kaggle dataset) "
                      "or push with --internet and a repository URL")
root = roots[0]
sys.path.insert(0, str(root))
os.environ["PYTHONPATH"] = os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])  # papermill's kernels
if importlib.util.find_spec("monai") is None:  # Kaggle's image has torch, not MONAI
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", str(root / "requirements.txt")], check=True)
