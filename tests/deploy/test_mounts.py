"""The subPath heuristic of dispatcher/mounts.py over mountinfo texts (no mounts are made)."""

from __future__ import annotations

from pathlib import Path

from dispatcher.mounts import Mount, build_subpath_warnings, check_config_mount, parse_mountinfo

KUBELET = "/var/lib/kubelet/pods/0b5e/volumes/kubernetes.io~configmap/webhooks"
SUBPATHS = "/var/lib/kubelet/pods/0b5e/volume-subpaths/webhooks/dispatch/0"


def _line(root: str, point: str) -> str:
    return f"1372 1351 259:1 {root} {point} ro,relatime master:1 - ext4 /dev/nvme0n1p1 rw"


def test_mountinfo_fields_and_octal_escapes_are_parsed() -> None:
    """Root and mount point come from fields 4 and 5, with \\040 (space) and friends undone."""
    text = _line("/", "/") + "\n" + _line("/srv/a\\040b", "/etc/web\\040hooks") + "\n\n"
    assert parse_mountinfo(text) == (Mount("/", "/"), Mount("/srv/a b", "/etc/web hooks"))


def test_a_configmap_mounted_as_a_directory_is_not_reported() -> None:
    """The kubelet's directory mount with ..data and links is the layout that receives updates."""
    mounts = parse_mountinfo(_line(KUBELET, "/etc/webhooks.d"))
    entries = ["..data", "..2026_12_01_10_00_00.1", "erp.yaml"]
    assert build_subpath_warnings("/etc/webhooks.d", entries, mounts) == []


def test_a_plain_directory_mount_is_not_reported() -> None:
    """An emptyDir filled by git-sync, or a host directory, has no ..data and is fine."""
    mounts = parse_mountinfo(_line("/srv/hooks", "/etc/webhooks.d"))
    assert build_subpath_warnings("/etc/webhooks.d", ["erp.yaml"], mounts) == []


def test_a_file_that_is_its_own_mount_point_is_reported() -> None:
    """A ConfigMap key mounted with subPath shows up as a file mount point inside --config."""
    mounts = parse_mountinfo(_line("/", "/") + "\n" + _line(SUBPATHS, "/etc/webhooks.d/erp.yaml"))
    (problem,) = build_subpath_warnings("/etc/webhooks.d", ["erp.yaml", "other.yaml"], mounts)
    assert "/etc/webhooks.d/erp.yaml" in problem
    assert "subPath" in problem


def test_a_directory_from_the_kubelets_volume_subpaths_is_reported() -> None:
    """A directory mounted with subPath is a bind mount rooted under volume-subpaths/."""
    mounts = parse_mountinfo(_line(SUBPATHS, "/etc/webhooks.d"))
    (problem,) = build_subpath_warnings("/etc/webhooks.d", ["erp.yaml"], mounts)
    assert "volume-subpaths" in problem


def test_check_config_mount_reads_the_given_mountinfo(tmp_path: Path) -> None:
    """check_config_mount resolves the directory, lists it, and reports a file mount found in mountinfo."""
    config = tmp_path / "webhooks.d"
    config.mkdir()
    (config / "erp.yaml").write_text("")
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(_line(SUBPATHS, str(config.resolve() / "erp.yaml")) + "\n")
    assert len(check_config_mount(config, mountinfo)) == 1
    mountinfo.write_text(_line("/", "/") + "\n")
    assert check_config_mount(config, mountinfo) == []


def test_check_config_mount_is_silent_without_mountinfo(tmp_path: Path) -> None:
    """Where /proc is not available, nothing is reported and nothing fails."""
    assert check_config_mount(tmp_path, tmp_path / "absent") == []
