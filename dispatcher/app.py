"""``dispatch run``: wires the store, the live config, the engine and an event source, and runs until done.

Signals and the watcher only set flags; the main thread acts on them: SIGTERM/SIGINT stop (stop accepting,
let attempts in flight finish within the longest timeout, release the rest), SIGHUP reloads ``--config`` now,
and changes the watcher saw settle are reloaded (every reload runs on the main thread). Internal threads
run under a ``Supervisor``: one that dies stops the run, which then exits ``EXIT_INTERNAL_FAILURE`` (70).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import ipaddress
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING

from dispatcher import systemd
from dispatcher.caps import DEFAULT_MAX_CONNECTIONS, PeerShares
from dispatcher.config import ConfigSource, initial_snapshot
from dispatcher.egress import EgressPolicy
from dispatcher.engine import Engine, EngineSettings
from dispatcher.errors import DispatcherError, StoreError
from dispatcher.ingest import Committer, Ingestor
from dispatcher.ingest_process import ChildSetup, IngestProcess
from dispatcher.live import LiveConfig
from dispatcher.logs import fields, get_logger
from dispatcher.metrics import Metrics
from dispatcher.mounts import check_config_mount
from dispatcher.protocol import DEFAULT_MAX_LINE_BYTES
from dispatcher.server import SocketServer, serve_stdin
from dispatcher.status import StatusServer, status_provider
from dispatcher.store import open as store_choice
from dispatcher.store.base import Store
from dispatcher.store.url import StoreUrl
from dispatcher.supervise import EXIT_INTERNAL_FAILURE, Spawn, Supervisor
from dispatcher.transport import ProcessClient
from reconciler.limits import DEFAULT_LIMITS, Limits
from reconciler.secretsources import SecretSources

if TYPE_CHECKING:
    from dispatcher.http import HttpClient
from reconciler.watch import ConfigWatcher

log = get_logger()

#: How much nicer the main process runs once an ingest process serves the socket (it keeps nice 0). Measured
#: with ``bench/ingest.py`` and ``--delivery-nice 19``: 0.70x and 0.75x of idle ingest against 0.69x twice.
MAIN_NICE_WITH_INGEST_PROCESS = 5

#: glibc's ``mallopt(M_ARENA_MAX, n)``: how many malloc arenas this process's threads share. By default glibc
#: gives threads up to eight per core, each keeping its own freed memory; the interpreter lock already
#: serialises most allocations, so one loses nothing measurable (``bench/memory.py``, 10,000 webhooks and a
#: million pending: 53.8 MB PSS in this process against 57.4; ``bench/throughput.py`` and ``bench/ingest.py``
#: unchanged within their spread). The ingest process, forked from this one, keeps the setting.
_M_ARENA_MAX = -8
MALLOC_ARENAS = 1

STORE_FILE = "dispatch.sqlite3"
DEFAULT_STATE_DIR = ".dispatch-state"
DAY = 86_400.0
SWITCH_INTERVAL_SECONDS = 0.001


@dataclass(frozen=True)
class RunOptions:
    config_dir: Path
    state_dir: Path = Path(DEFAULT_STATE_DIR)
    store_url: StoreUrl | None = None  # --store / DISPATCH_STORE; None: the SQLite file under state_dir
    socket_path: Path | None = None
    use_stdin: bool = False
    allow_cidrs: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    metrics_address: tuple[str, int] | None = None
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    max_connections: int = DEFAULT_MAX_CONNECTIONS  # event-socket clients served at once
    max_connections_per_process: int | None = None  # of those, one producer process's (None: the default)
    max_connections_per_user: int | None = None  # one user's processes' together (None: the whole cap)
    retention_seconds: float = 7 * DAY
    engine: EngineSettings = field(default_factory=EngineSettings)
    watch: bool = True
    delivery_processes: int = 1  # 0: attempts in this process's threads
    delivery_nice: int = 0  # how much lower the delivery processes' CPU priority is (--delivery-nice)
    #: The event socket served by a process of its own (--ingest-process; never for --stdin).
    ingest_process: bool = False
    activated: bool = False  # listen on the socket systemd passed (LISTEN_FDS) instead of socket_path
    #: Where secrets may come from (--secrets-dir, --secret-env); None: the defaults for the environment.
    secret_sources: SecretSources | None = None
    #: Per-file budgets of --config (--max-file-bytes; the rest at their defaults), as for `reconcile`.
    limits: Limits = DEFAULT_LIMITS


def store_path(state_dir: Path) -> Path:
    return state_dir / STORE_FILE


@contextlib.contextmanager
def state_lock(state_dir: Path) -> Iterator[None]:
    """Only one dispatcher per state directory: it reclaims every lease it finds at start-up."""
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=state_dir).close()  # writable? (an existing lock file could still open)
        handle: IO[str] = open(state_dir / "dispatch.lock", "w")  # noqa: SIM115 - held for the whole run
    except OSError as exc:
        raise DispatcherError(f"state directory {state_dir} is not writable: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DispatcherError(f"another dispatcher is running with state directory {state_dir}") from None
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()


class Dispatcher:
    def __init__(
        self,
        options: RunOptions,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.options = options
        self.environ = environ if environ is not None else os.environ
        self.clock = clock
        self.stop_requested = threading.Event()
        self._reload_requested = threading.Event()
        #: Set with every flag below: the main loop acts at once instead of at its next tick.
        self.wakeup = threading.Event()
        self.notifier = systemd.Notifier({})  # replaced in run(): NOTIFY_SOCKET belongs to the process
        self.supervisor = Supervisor(on_fault=self.request_stop)

    def request_stop(self) -> None:
        """Ask the main loop to stop (a signal, or a thread's fault)."""
        self.stop_requested.set()
        self.wakeup.set()

    # Signals only set flags (STYLE: loops act on them).
    def _on_stop(self, signum: int, _frame: FrameType | None) -> None:
        log.info("signal.stop", extra=fields(signal=signal.Signals(signum).name))
        self.request_stop()

    def _on_hup(self, _signum: int, _frame: FrameType | None) -> None:
        self._reload_requested.set()
        self.wakeup.set()

    def run(self) -> int:
        o = self.options
        # Ingest threads mostly wait on sockets and SQLite; a shorter switch interval lets them take the
        # interpreter lock back from busy delivery threads sooner (acks per second, measured).
        sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
        _limit_malloc_arenas()  # before any thread starts
        # Before any child starts: they must not inherit the passed socket or the notify variables.
        listener = systemd.take_listener(os.environ) if o.activated and not o.use_stdin else None
        self.notifier = systemd.Notifier(os.environ)
        check_config_mount(o.config_dir)
        # Forked first: no thread runs yet, and the heap it shares with us is small (see ingest_process).
        path = None if o.use_stdin else self._socket_path(listener)
        ingest = self._fork_ingest(listener) if o.ingest_process and path is not None else None
        if ingest is not None:
            # The acks are the ingest process's now: this process's bookkeeping (leases, outcomes) yields
            # to it on busy cores; its threads and the delivery processes started later inherit this.
            with contextlib.suppress(OSError):
                os.nice(MAIN_NICE_WITH_INGEST_PROCESS)
        # Started in this order, stopped in the reverse one (each ``callback`` below is a stop step).
        with contextlib.ExitStack() as stack:
            if ingest is not None:
                stack.callback(ingest.close)  # on every way out; a normal stop closes it first, below
            source = ConfigSource(o.config_dir, self.environ, o.secret_sources, o.limits)
            snapshot = initial_snapshot(source)
            store = stack.enter_context(
                store_choice.open_store(o.store_url, store_path(o.state_dir), lock=state_lock)
            )
            stack.enter_context(self.notifier)
            metrics = Metrics()
            metrics.watch_queue(store.counts, lambda: _age(store.oldest_open_created_at(), self.clock()))
            metrics.watch_store(
                store_choice.backend(store), lambda: store_choice.holders(store, self.clock())
            )
            live = LiveConfig(source, snapshot, store, metrics, clock=self.clock)
            # The delivery processes' reply readers and sweeper return deliberately (a child restarted, the
            # client closed): only an exception is a fault.
            client = _client(o, self._spawn_returning)
            stack.callback(client.close)
            engine = Engine(store, client, live.current, settings=o.engine, metrics=metrics, clock=self.clock)
            self._install_signals()
            log.info(
                "dispatch.started",
                extra=fields(
                    revision=snapshot.revision,
                    webhooks=len(snapshot.table),
                    state=o.store_url.display if o.store_url else str(store_path(o.state_dir)),
                    source="stdin" if o.use_stdin else "systemd" if listener else str(o.socket_path),
                    secrets_dirs=list(source.sources.dirs),
                    secret_env=list(source.sources.env_patterns),
                ),
            )
            if snapshot.secret_errors:
                # The reasons name references only, never values; those webhooks' attempts fail with them.
                problems = sorted(snapshot.secret_errors.values())
                log.warning("secrets.unresolved", extra=fields(count=len(problems), reasons=problems))
            store.prune(self.clock(), o.retention_seconds)
            live.sync_store()
            services = _Services(self, live, engine, store, metrics, ingest)
            stack.callback(services.close)  # last: /healthz answers while the engine stops
            engine.start(self.supervisor.spawn)
            stack.callback(lambda: engine.stop(grace_seconds=_longest_timeout(live)))
            if ingest is not None:
                stack.callback(self.supervisor.stopping)
                stack.callback(self.notifier.stopping)
                services.start()
                self._run_ingest_process(ingest, engine, services, path)
            else:
                committer = Committer(store, self.clock, engine.intake, metrics, spawn=self.supervisor.spawn)
                stack.callback(committer.close)
                stack.callback(self.supervisor.stopping)
                stack.callback(self.notifier.stopping)
                ingestor = Ingestor(committer, live.current, metrics, o.max_line_bytes)
                services.start()
                if o.use_stdin:
                    self._run_stdin(ingestor, engine, services)
                else:
                    self._run_socket(o.socket_path, ingestor, services, listener)
        log.info("dispatch.stopped")
        if self.supervisor.fault is not None:
            log.error("dispatch.failed", extra=fields(reason=str(self.supervisor.fault)))
            return EXIT_INTERNAL_FAILURE
        return 0

    def _spawn_returning(self, name: str, target: Callable[[], None]) -> threading.Thread:
        """A supervised thread that may return (only an exception is a fault)."""
        return self.supervisor.spawn(name, target, until_stop=False)

    def _socket_path(self, listener: socket.socket | None) -> Path:
        if listener is not None:
            return Path(systemd.socket_name(listener))
        assert self.options.socket_path is not None
        return self.options.socket_path

    def _socket_server(
        self, ingestor: Ingestor, listener: socket.socket | None, spawn: Spawn, metrics: Metrics
    ) -> SocketServer:
        o = self.options
        return SocketServer(
            self._socket_path(listener),
            ingestor,
            listener,
            spawn=spawn,
            max_connections=o.max_connections,
            on_refused=metrics.connections_refused.labels(listener="socket").inc,
            shares=PeerShares(
                o.max_connections,
                per_process=o.max_connections_per_process,
                per_user=o.max_connections_per_user,
            ),
        )

    def _fork_ingest(self, listener: socket.socket | None) -> IngestProcess | None:
        """The event socket's ingest in a process of its own (``dispatcher.ingest_process``); None where
        it cannot be forked safely (ingest then runs in this process)."""
        o = self.options
        setup = ChildSetup(
            open_store=lambda: store_choice.open_store(o.store_url, store_path(o.state_dir)),
            serve=lambda ingestor, metrics, spawn: self._socket_server(ingestor, listener, spawn, metrics),
            max_line_bytes=o.max_line_bytes,
            clock=self.clock,
        )
        ingest = IngestProcess.fork(setup)
        if ingest is not None and listener is not None:
            listener.close()  # the child's now; systemd keeps its own copy
        return ingest

    def _run_ingest_process(
        self, ingest: IngestProcess, engine: Engine, services: _Services, path: Path | None
    ) -> None:
        def on_signal(name: str) -> None:
            log.info("signal.stop", extra=fields(signal=name, via="ingest process"))
            self.request_stop()

        # New deliveries are in the store, due now: "a time just past", so the scheduler looks at once.
        ingest.start(
            services.live.current(),
            self._spawn_returning,
            on_committed=lambda: engine.scheduler.wake(self.clock() - 0.1),
            on_signal=on_signal,
            on_fault=self.supervisor.fail,
        )
        services.metrics.forward_ingest(ingest.totals)
        log.info(
            "socket.listening",
            extra=fields(path=str(path), activated=self.options.activated, ingest_pid=ingest.pid),
        )
        self._serve_until_stop(services, ingest.close)

    def _install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)

    def _run_socket(
        self, path: Path | None, ingestor: Ingestor, services: _Services, listener: socket.socket | None
    ) -> None:
        server = self._socket_server(ingestor, listener, self.supervisor.spawn, services.metrics)
        server.start()
        log.info("socket.listening", extra=fields(path=str(server.path), activated=listener is not None))
        self._serve_until_stop(services, server.close)

    def _serve_until_stop(self, services: _Services, close: Callable[[], None]) -> None:
        """Ready: run the main loop until a stop is requested, then ``close`` the event source first."""
        services.announce_ready()
        try:
            while not self.stop_requested.is_set():
                services.tick()
        finally:
            self.supervisor.stopping()
            close()

    def _run_stdin(self, ingestor: Ingestor, engine: Engine, services: _Services) -> None:
        eof = threading.Event()

        def read_all() -> None:
            try:
                serve_stdin(ingestor)
            except OSError as exc:
                log.error("stdin.error", extra=fields(error=str(exc)))
            finally:
                eof.set()
                self.wakeup.set()

        self.supervisor.spawn("dispatch-stdin", read_all, until_stop=False)
        services.announce_ready()
        while not self.stop_requested.is_set() and not eof.is_set():
            services.tick()
        # At EOF: finish the attempts that are due now; later retries stay in the store for the next run.
        while not self.stop_requested.is_set():
            if engine.is_idle() and not engine.has_due_work():
                time.sleep(0.05)  # let a just-recorded outcome's scheduler wake-up settle
                if engine.is_idle() and not engine.has_due_work():
                    break
            services.tick(0.02)

    def reload_requested(self) -> bool:
        """Whether SIGHUP asked for a reload since the last call."""
        if self._reload_requested.is_set():
            self._reload_requested.clear()
            return True
        return False


class _Services:
    """Housekeeping on the main thread: every reload (SIGHUP, watched changes), rotated secret files,
    retention pruning. The watcher's thread only sets a flag."""

    PRUNE_EVERY_SECONDS = 3600.0
    #: Secret files are stat-ed this often: a rotation takes effect within about this long.
    SECRETS_EVERY_SECONDS = 1.0

    def __init__(
        self,
        app: Dispatcher,
        live: LiveConfig,
        engine: Engine,
        store: Store,
        metrics: Metrics,
        ingest: IngestProcess | None = None,
    ) -> None:
        self.app = app
        self.ingest = ingest
        self.live = live
        self.engine = engine
        self.store = store
        self.metrics = metrics
        self._next_prune = app.clock() + self.PRUNE_EVERY_SECONDS
        self._next_secrets_check = app.clock() + self.SECRETS_EVERY_SECONDS
        self.watcher: ConfigWatcher | None = None
        self._changes_seen = threading.Event()  # set by the watcher's thread after changes settle
        self._full_reload_due = False  # a watch reload failed part-way: the next one looks at every file
        self.status_server: StatusServer | None = None

    def start(self) -> None:
        o = self.app.options
        if o.watch:
            self.watcher = ConfigWatcher(o.config_dir, self._on_changes, log=get_logger("watch"))
            self.watcher.start()
        if o.metrics_address is not None:
            self.status_server = StatusServer(
                o.metrics_address,
                self.metrics,
                status_provider(self.live, self.store, self.app.clock),
                self._problem,
                spawn=self.app.supervisor.spawn,
            )
            self.status_server.start()
            host, port = o.metrics_address[0], self.status_server.address[1]
            log.info("metrics.listening", extra=fields(address=f"{host}:{port}"))

    def _on_changes(self) -> None:
        """On the watcher's thread: only a flag (the main loop reloads)."""
        self._changes_seen.set()
        self.app.wakeup.set()

    def announce_ready(self) -> None:
        """READY=1 to systemd: the store is open, a valid table is loaded and events are being read."""
        snapshot = self.live.current()
        self.app.notifier.ready(f"revision {snapshot.revision}, {len(snapshot.table)} webhooks")

    def _problem(self) -> str | None:
        """/healthz: the supervisor's fault, or an engine thread found dead without one."""
        if (reason := self.app.supervisor.reason()) is not None:
            return reason
        return None if self.engine.is_running() else "an engine thread is not running"

    def tick(self, wait_seconds: float = 0.2) -> None:
        """One turn of the main loop: wait for a flag or ``wait_seconds``, then act on what is due."""
        self.app.wakeup.wait(wait_seconds)
        self.app.wakeup.clear()  # before reading the flags: one set after this is seen next turn
        if self._problem() is None:  # a dead thread stops the pings: systemd's watchdog restarts us
            self.app.notifier.watchdog_tick()
        if self.app.stop_requested.is_set():
            return
        if self.app.reload_requested():
            self._reload("SIGHUP", None)
        if self._changes_seen.is_set():
            self._changes_seen.clear()
            self._reload_from_watch()
        now = self.app.clock()
        if now >= self._next_secrets_check:
            self._next_secrets_check = now + self.SECRETS_EVERY_SECONDS
            self.live.refresh_secrets()
        if now >= self._next_prune:
            self._next_prune = now + self.PRUNE_EVERY_SECONDS
            try:
                n = self.store.prune(now, self.app.options.retention_seconds)
                if n:
                    log.info("store.pruned", extra=fields(deliveries=n))
            except StoreError:
                log.exception("store.prune_failed")

    def _reload_from_watch(self) -> None:
        changed = self.watcher.take_changes() if self.watcher is not None else None
        if self._full_reload_due:
            changed = None
        self._full_reload_due = True  # until this reload returns: the paths taken may not have been loaded
        self._reload("watch", changed)
        self._full_reload_due = False

    def _reload(self, reason: str, changed: frozenset[str] | None) -> None:
        """Reload (applying, burying and releasing in the store), then wake the scheduler if the table
        changed: held deliveries released, or a fixed URL, are due now."""
        before = self.live.current().revision
        with self.app.notifier.reloading():
            self.live.reload(reason, changed)
        if self.live.current().revision != before:
            self.engine.scheduler.wake()
        if self.ingest is not None:
            self.ingest.send_snapshot(self.live.current())  # only when its table changed

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.close()
        if self.status_server is not None:
            self.status_server.close()


def _limit_malloc_arenas() -> None:
    """Share ``MALLOC_ARENAS`` malloc arenas among this process's threads (glibc; elsewhere nothing)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(_M_ARENA_MAX, MALLOC_ARENAS)


def _client(options: RunOptions, spawn: Spawn) -> HttpClient | ProcessClient:
    """The engine's HTTP client: in this process, or in delivery processes whose reply readers and sweeper
    ``spawn`` starts."""
    if options.delivery_processes <= 0:
        from dispatcher.http import HttpClient  # only then: the children import requests, not this process

        return HttpClient(EgressPolicy(options.allow_cidrs))
    return ProcessClient(
        options.allow_cidrs,
        processes=options.delivery_processes,
        # In flight at once: at most --workers in all, spread round robin over the children.
        threads_per_process=-(-options.engine.workers // options.delivery_processes),
        nice=options.delivery_nice,
        spawn=spawn,
    )


def _age(created_at: float | None, now: float) -> float | None:
    return None if created_at is None else max(0.0, now - created_at)


def _longest_timeout(live: LiveConfig) -> float:
    hooks = live.current().table.webhooks.values()
    return max((h.timeout_seconds for h in hooks), default=10.0) + 1.0
