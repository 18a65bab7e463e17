"""The Kubernetes kit (deploy/kubernetes): manifests valid for 1.29+, a native sidecar laid out as the
issue asks, an image recipe that holds the project, and a ConfigMap ``..data`` swap under ``dispatch run``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from dispatcher.cli import run as run_command
from tests.conftest import wait_until
from tests.e2e.harness import DispatchProcess, Receiver, event_line, webhook_doc
from tests.loopback import free_port

ROOT = Path(__file__).resolve().parents[2]
KIT = ROOT / "deploy" / "kubernetes"
MANIFESTS = sorted(p for p in KIT.glob("*.yaml") if p.name != "kustomization.yaml")


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _pod_spec() -> dict[str, Any]:
    (deployment,) = _documents(KIT / "deployment.yaml")
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def _sidecar() -> dict[str, Any]:
    (sidecar,) = [c for c in _pod_spec()["initContainers"] if c["name"] == "dispatch"]
    return sidecar


@pytest.mark.parametrize("version", ["1.29.0", kubernetes_validate.latest_version()])
@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_manifests_validate_offline(manifest: Path, version: str) -> None:
    """Every manifest validates strictly (no unknown field) against Kubernetes 1.29 and the newest schemas."""
    for doc in _documents(manifest):
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_sidecar_field_is_refused_before_1_29() -> None:
    """The validation has teeth: restartPolicy on an initContainer is unknown to 1.27 schemas."""
    (deployment,) = _documents(KIT / "deployment.yaml")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.27.0", strict=True)


def test_kustomization_lists_every_manifest() -> None:
    """`kubectl apply -k deploy/kubernetes` applies every manifest in the folder."""
    (kustomization,) = _documents(KIT / "kustomization.yaml")
    assert sorted(kustomization["resources"]) == [p.name for p in MANIFESTS]


def test_dispatch_is_a_native_sidecar_with_healthz_probes() -> None:
    """The dispatcher is an initContainer (restartPolicy Always) probed on /healthz of its metrics port."""
    sidecar = _sidecar()
    assert sidecar["restartPolicy"] == "Always"
    port = sidecar["args"][sidecar["args"].index("--metrics") + 1].rpartition(":")[2]
    assert [p["containerPort"] for p in sidecar["ports"]] == [int(port)]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert sidecar[probe]["httpGet"]["path"] == "/healthz"


def test_volumes_socket_shared_config_as_directory_state_on_a_claim() -> None:
    """The socket's emptyDir is in both containers, webhooks.d is a whole ConfigMap, the state a PVC."""
    pod = _pod_spec()
    volumes = {v["name"]: v for v in pod["volumes"]}
    sidecar = _sidecar()
    mounts = {m["mountPath"]: m for m in sidecar["volumeMounts"]}
    args = sidecar["args"]
    config, state = args[args.index("--config") + 1], args[args.index("--state") + 1]
    sock_dir = os.path.dirname(args[args.index("--socket") + 1])
    assert "configMap" in volumes[mounts[config]["name"]]
    assert all("subPath" not in m and "subPathExpr" not in m for m in sidecar["volumeMounts"])
    assert "persistentVolumeClaim" in volumes[mounts[state]["name"]]
    assert "emptyDir" in volumes[mounts[sock_dir]["name"]]
    (oms,) = pod["containers"]
    assert {m["name"] for m in oms["volumeMounts"] if m["mountPath"] == sock_dir} == {
        mounts[sock_dir]["name"]
    }


def test_sidecar_arguments_are_real_dispatch_run_options() -> None:
    """The manifest's args parse as `dispatch run` options (no typo'd or removed flag)."""
    args = _sidecar()["args"]
    assert args[0] == "run"
    run_command.make_context("run", list(args[1:]))


def test_configmap_webhooks_pass_reconcile_check(tmp_path: Path) -> None:
    """The example ConfigMap's files are a valid webhooks.d (reconcile --check exits 0)."""
    (configmap,) = _documents(KIT / "configmap.yaml")
    for name, text in configmap["data"].items():
        (tmp_path / name).write_text(text)
    done = subprocess.run(
        [str(Path(sys.executable).parent / "reconcile"), "--check", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_containerfile_holds_the_project_and_runs_dispatch() -> None:
    """The image copies pyproject, schemas and every package folder, and its entrypoint is `dispatch`."""
    text = (KIT / "Containerfile").read_text()
    copied = {word for line in text.splitlines() if line.startswith("COPY ") for word in line.split()[1:-1]}
    assert {"pyproject.toml", "README.md", "schemas/", "reconciler/", "dispatcher/"} <= copied
    assert 'ENTRYPOINT ["/opt/webhooks-as-code/.venv/bin/dispatch"]' in text
    cmd = json.loads(text.split("\nCMD ", 1)[1].splitlines()[0])
    run_command.make_context("run", cmd[1:])


def _active_revision(base: str) -> str:
    with urllib.request.urlopen(base + "/status", timeout=5) as resp:  # loopback only
        return str(json.loads(resp.read())["active_revision"])


def _write_version(root: Path, version: str, name: str, url: str) -> None:
    (root / version).mkdir()
    (root / version / "x.yaml").write_text(yaml.safe_dump(webhook_doc(name, url), sort_keys=False))


@pytest.mark.e2e
def test_configmap_data_swap_applies_the_new_table(receiver: Receiver, tmp_path: Path) -> None:
    """A kubelet-style swap of ..data (a temp symlink renamed over it, the old version removed) is applied."""
    config = tmp_path / "webhooks.d"
    config.mkdir()
    _write_version(config, "..2026_a", "old-hook", receiver.url("/old"))
    os.symlink("..2026_a", config / "..data")
    os.symlink("..data/x.yaml", config / "x.yaml")
    port = free_port()
    proc = DispatchProcess(config, tmp_path / "state", extra_args=["--metrics", f"127.0.0.1:{port}"])
    try:
        base = f"http://127.0.0.1:{port}"
        assert proc.publish([event_line()])[0]["deliveries"] == 1
        receiver.wait_count("/old", 1)
        before = _active_revision(base)

        _write_version(config, "..2026_b", "new-hook", receiver.url("/new"))
        os.symlink("..2026_b", config / "..data_tmp")
        os.rename(config / "..data_tmp", config / "..data")  # atomic, as the kubelet's AtomicWriter does
        shutil.rmtree(config / "..2026_a")

        wait_until(lambda: _active_revision(base) != before, timeout=10)
        acks = proc.publish([event_line()])
        assert acks[0]["deliveries"] == 1
        receiver.wait_count("/new", 1)
        assert len(receiver.on("/old")) == 1, "the removed webhook got the event published after the swap"
        assert "config.subpath_mount" not in proc.logs()
    finally:
        assert proc.stop() == 0, proc.logs()
