method = "sbldm"           # the method whose notebooks run, in order (medkit.notebooks.PIPELINES)
stages = None              # None: all of them; or a list of stage names
profile = "auto"           # "auto" (t4 with a CUDA GPU, else cpu-demo) | "smoke" | "cpu-demo" | "t4"
params = {}                # notebook parameters, passed to every stage that has them
run_dir = "/kaggle/working"  # saved as this version's output; attach it to the next version to resume
