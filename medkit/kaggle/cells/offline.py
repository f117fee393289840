# Added by medkit.kaggle (internet off): medkit comes from the attached dataset CODE_REF, which the setup
# cell below finds under /kaggle/input. pip cannot reach PyPI here: the requirements install only from
# wheels shipped in that dataset (python -m medkit kaggle dataset --wheels DIR).
import os
from pathlib import Path

CODE_REF = "OWNER/medkit-src"
KAGGLE_INPUT = "/kaggle/input"
os.environ["PIP_NO_INDEX"] = "1"
wheels = [p for p in (Path(KAGGLE_INPUT, "datasets", CODE_REF, "wheels"), Path(KAGGLE_INPUT, CODE_REF.split("/")[1], "wheels"))
          if p.is_dir()]
if wheels:
    os.environ["PIP_FIND_LINKS"] = str(wheels[0])
