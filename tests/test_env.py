"""Platform detection and the start-up GPU check, on faked environments."""
import pytest
import torch

from medkit import env


def fake_gpu(monkeypatch, capability, archs, name="Tesla P100-PCIE-16GB"):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: capability)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: archs)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: name)


KAGGLE_2026 = ["sm_70", "sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]


def test_p100_without_sm60_kernels_is_refused_with_a_fix(monkeypatch):
    fake_gpu(monkeypatch, (6, 0), KAGGLE_2026)
    with pytest.raises(RuntimeError, match=r"no kernels for the Tesla P100.*sm_60.*T4"):
        env.check_cuda_arch()


@pytest.mark.parametrize("capability, archs", [
    ((7, 5), KAGGLE_2026),                     # T4: exact cubin
    ((6, 0), ["sm_50", "sm_60", "sm_70"]),    # P100 on an older build
    ((8, 9), ["sm_80", "sm_86"]),             # L4 runs sm_86 cubins (same major, lower minor)
    ((9, 0), ["sm_80", "compute_80"]),        # H100 through PTX JIT
])
def test_compatible_builds_pass(monkeypatch, capability, archs):
    fake_gpu(monkeypatch, capability, archs)
    env.check_cuda_arch()


def test_sm_80_cubin_does_not_serve_sm_75(monkeypatch):
    fake_gpu(monkeypatch, (7, 5), ["sm_80", "sm_90", "compute_90"], name="Tesla T4")
    with pytest.raises(RuntimeError, match="sm_75"):
        env.check_cuda_arch()


def test_platform_detection(monkeypatch):
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    assert env.platform() == "local" and env.default_budget_s() is None
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    assert env.platform() == "kaggle"
    assert env.default_budget_s() == 11 * 3600 + 15 * 60
    assert str(env.default_run_root()) == "/kaggle/working/runs"


def test_cache_root_override(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDKIT_CACHE", str(tmp_path))
    assert env.cache_root() == tmp_path
