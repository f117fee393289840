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


def test_auto_profile_and_the_session_clock(monkeypatch):
    from medkit import session

    said = []
    monkeypatch.setattr(session.torch.cuda, "is_available", lambda: False)
    assert session.resolve_profile("auto", log=said.append) == "cpu-demo"
    assert said == ["profile 'auto' -> 'cpu-demo': no CUDA GPU is present. Set profile (smoke | cpu-demo | t4) "
                    "to choose another."]
    monkeypatch.setattr(session.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(session.torch.cuda, "get_device_name", lambda i=0: "Tesla T4")
    assert session.resolve_profile("auto", log=said.append) == "t4" and "Tesla T4" in said[-1]
    assert session.resolve_profile("smoke", log=said.append) == "smoke" and len(said) == 2

    # "auto" counts from the kernel's start on Kaggle: 11 h 15 min less the time the process has run
    monkeypatch.delenv("MEDKIT_BUDGET_S", raising=False)
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    monkeypatch.setattr(session, "PROCESS_START", session.time.time() - 3600)
    assert abs(session.budget_left_s("auto") - (11 * 3600 + 15 * 60 - 3600)) < 5
    assert session.budget_left_s(30) == 30.0 and session.budget_left_s(None) is None
    monkeypatch.setenv("MEDKIT_BUDGET_S", "7200")
    assert abs(session.budget_left_s("auto") - 3600) < 5
    monkeypatch.setenv("MEDKIT_BUDGET_S", "two hours")
    with pytest.raises(ValueError, match="MEDKIT_BUDGET_S='two hours'"):
        session.budget_left_s("auto")
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE")
    monkeypatch.delenv("MEDKIT_BUDGET_S")
    assert session.budget_left_s("auto") is None
    with pytest.raises(ValueError, match="budget_s='soon'"):
        session.budget_left_s("soon")


def test_end_if_stopped_records_the_stop_and_exits_cleanly_outside_a_notebook(tmp_path):
    from medkit import session
    from medkit.train.loop import TrainResult

    done = TrainResult(step=5, finished=True, reason="done", last_loss=0.1, resumed_from=None, seconds=1.0,
                       skipped_steps=0)
    assert session.end_if_stopped(done, tmp_path, "vae") is False and session.read_stop(tmp_path) is None
    cut = TrainResult(step=3, finished=False, reason="budget", last_loss=0.1, resumed_from=None, seconds=1.0,
                      skipped_steps=0)
    with pytest.raises(SystemExit) as e:  # a script (no IPython): exit status 0
        session.end_if_stopped(cut, tmp_path, "vae")
    assert e.value.code == 0
    stop = session.read_stop(tmp_path)
    assert (stop["stage"], stop["step"], stop["reason"]) == ("vae", 3, "budget")
    session.clear_stop(tmp_path)
    assert session.read_stop(tmp_path) is None
