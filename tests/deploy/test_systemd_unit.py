"""The notify protocol and LISTEN_FDS parsing of dispatcher/systemd.py, without any process."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from dispatcher.errors import SocketPathError
from dispatcher.systemd import (
    Notifier,
    is_activated,
    parse_activation,
    socket_name,
    watchdog_interval_seconds,
)


def _listen(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    return sock


def test_sockets_passed_to_this_pid_start_at_fd_3_with_their_names() -> None:
    """LISTEN_FDS=2 for our pid means descriptors 3 and 4, named by LISTEN_FDNAMES."""
    env = {"LISTEN_FDS": "2", "LISTEN_PID": "42", "LISTEN_FDNAMES": "events:spare"}
    activation = parse_activation(env, 42)
    assert activation is not None
    assert activation.fds == (3, 4)
    assert activation.names == ("events", "spare")


def test_sockets_meant_for_another_pid_are_ignored() -> None:
    """Variables inherited from a parent (LISTEN_PID of another process) are not ours."""
    env = {"LISTEN_FDS": "1", "LISTEN_PID": "41"}
    assert parse_activation(env, 42) is None
    assert not is_activated(env, 42)


def test_no_listen_fds_means_not_activated() -> None:
    """Without LISTEN_FDS (or with LISTEN_FDS=0) dispatch run still needs --socket or --stdin."""
    assert parse_activation({}, 42) is None
    assert not is_activated({"LISTEN_FDS": "0", "LISTEN_PID": "42"}, 42)


def test_a_malformed_listen_fds_for_us_is_an_error() -> None:
    """A LISTEN_FDS that is not a count is reported rather than silently ignored."""
    with pytest.raises(SocketPathError, match="LISTEN_FDS"):
        parse_activation({"LISTEN_FDS": "three", "LISTEN_PID": "42"}, 42)
    assert is_activated({"LISTEN_FDS": "three", "LISTEN_PID": "42"}, 42)


def test_watchdog_pings_at_half_the_interval_for_this_pid_only() -> None:
    """WATCHDOG_USEC=4s gives a ping every 2 s; a WATCHDOG_PID of another process turns it off."""
    assert watchdog_interval_seconds({"WATCHDOG_USEC": "4000000"}, 42) == 2.0
    assert watchdog_interval_seconds({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "42"}, 42) == 2.0
    assert watchdog_interval_seconds({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "41"}, 42) is None
    assert watchdog_interval_seconds({"WATCHDOG_USEC": "0"}, 42) is None
    assert watchdog_interval_seconds({"WATCHDOG_USEC": "soon"}, 42) is None
    assert watchdog_interval_seconds({}, 42) is None


def test_without_notify_socket_every_message_is_a_no_op() -> None:
    """Outside systemd nothing is sent and nothing fails."""
    with Notifier({}) as notifier:
        assert not notifier.enabled
        assert not notifier.notify("READY=1")
        notifier.ready()
        notifier.stopping()
        assert not notifier.watchdog_tick(0.0)


def test_ready_reloading_and_stopping_arrive_as_datagrams(tmp_path: Path) -> None:
    """READY=1 (with STATUS), RELOADING=1 (MONOTONIC_USEC) then READY=1, and STOPPING=1 reach the socket."""
    path = tmp_path / "notify"
    with _listen(path) as listener, Notifier({"NOTIFY_SOCKET": str(path)}) as notifier:
        notifier.ready("revision r1, 2 webhooks")
        with notifier.reloading():
            pass
        notifier.stopping()
        got = [listener.recv(4096).decode() for _ in range(4)]
    assert got[0] == "READY=1\nSTATUS=revision r1, 2 webhooks"
    assert got[1].startswith("RELOADING=1\nMONOTONIC_USEC=")
    assert int(got[1].rpartition("=")[2]) > 0
    assert got[2:] == ["READY=1", "STOPPING=1"]


def test_reloading_is_followed_by_ready_even_when_the_reload_raises(tmp_path: Path) -> None:
    """A reload that fails still ends the RELOADING state with READY=1."""
    path = tmp_path / "notify"
    with _listen(path) as listener, Notifier({"NOTIFY_SOCKET": str(path)}) as notifier:
        with pytest.raises(RuntimeError), notifier.reloading():
            raise RuntimeError("boom")
        got = [listener.recv(4096).decode() for _ in range(2)]
    assert got[0].startswith("RELOADING=1")
    assert got[1] == "READY=1"


def test_abstract_namespace_addresses_are_supported() -> None:
    """NOTIFY_SOCKET=@name addresses the abstract namespace, as systemd uses in containers."""
    name = f"webhooks-test-notify-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(b"\0" + name.encode())
        listener.settimeout(5)
        with Notifier({"NOTIFY_SOCKET": "@" + name}) as notifier:
            notifier.stopping()
        assert listener.recv(4096) == b"STOPPING=1"


def test_watchdog_tick_sends_once_per_half_interval(tmp_path: Path) -> None:
    """With WATCHDOG_USEC=2s, ticks at 0, 0.5 and 1.0 s send once, then again from 1 s on."""
    path = tmp_path / "notify"
    env = {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "2000000"}
    with _listen(path) as listener, Notifier(env, pid=1) as notifier:
        sent = [notifier.watchdog_tick(t) for t in (100.0, 100.5, 100.99, 101.0, 101.2)]
        assert sent == [True, False, False, True, False]
        assert [listener.recv(64) for _ in range(2)] == [b"WATCHDOG=1", b"WATCHDOG=1"]


def test_the_notify_variables_are_removed_so_children_do_not_inherit_them(tmp_path: Path) -> None:
    """Delivery children copy the environment: NOTIFY_SOCKET and the watchdog variables are taken out."""
    env = {"NOTIFY_SOCKET": str(tmp_path / "n"), "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1", "X": "y"}
    Notifier(env, pid=1).close()
    assert env == {"X": "y"}


def test_a_missing_notify_socket_is_logged_not_raised(tmp_path: Path) -> None:
    """If the manager's socket is gone, sending fails quietly and the dispatcher keeps running."""
    with Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")}) as notifier:
        assert notifier.enabled
        assert not notifier.notify("READY=1")
        assert not notifier.notify("STOPPING=1")


def test_socket_names_for_logs_cover_paths_and_the_abstract_namespace(tmp_path: Path) -> None:
    """A passed socket is named by its path, or @name for an abstract one (ListenStream=@name)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(tmp_path / "s"))
        assert socket_name(sock) == str(tmp_path / "s")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        name = f"webhooks-test-name-{os.getpid()}"
        sock.bind(b"\0" + name.encode())
        assert socket_name(sock) == "@" + name
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        assert socket_name(sock) == "<unnamed>"
