# method, profile, run_dir, params, stages: the parameters cell's names (cells/driver_params.py)
from medkit.notebooks import run_pipeline

metrics = run_pipeline(method, profile, run_dir, params, stages=stages)
