"""``dispatch``: the sidecar's command line. Thin: parse options, build collaborators, return exit codes."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import click

from dispatcher import publish as publishing
from dispatcher import systemd
from dispatcher.app import DEFAULT_STATE_DIR, Dispatcher, RunOptions, store_path
from dispatcher.caps import DEFAULT_MAX_CONNECTIONS
from dispatcher.deliveries_report import REPORTERS
from dispatcher.durations import duration_seconds, parse_since
from dispatcher.egress import parse_cidr
from dispatcher.engine import EngineSettings
from dispatcher.errors import DispatcherError
from dispatcher.exitcodes import ExitCode
from dispatcher.logs import configure
from dispatcher.protocol import DEFAULT_MAX_LINE_BYTES
from dispatcher.store import open as store_choice
from dispatcher.store.base import DeliveryQuery, DeliveryStatus, Store
from dispatcher.transport import DEFAULT_DELIVERY_NICE, default_processes
from reconciler.limits import DEFAULT_LIMITS
from reconciler.secretsources import SecretSources

DEFAULT_SOCKET = "dispatch.sock"
_F = TypeVar("_F", bound=Callable[..., Any])


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise click.BadParameter(f"{text!r} is not HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="webhooks-as-code", prog_name="dispatch")
def main() -> None:
    """Durable, signed webhook delivery for events piped in by the OMS."""


_RUN_STORE_HELP = (
    "sqlite:///PATH or postgresql://... (also $DISPATCH_STORE; default: the SQLite file under --state). "
    "Several dispatchers may share one PostgreSQL store; --per-endpoint then holds across them."
)


@main.command()
@click.option(
    "--config", "config_dir", required=True, type=click.Path(path_type=Path), help="webhooks.d directory."
)
@click.option(
    "--socket",
    "socket_path",
    type=click.Path(path_type=Path),
    help="Listen on this Unix socket (not needed when systemd passes one: LISTEN_FDS).",
)
@click.option("--stdin", "use_stdin", is_flag=True, help="Read events from standard input; acks on stdout.")
@click.option(
    "--state",
    "state_dir",
    type=click.Path(path_type=Path),
    default=DEFAULT_STATE_DIR,
    show_default=True,
    help="Directory of the embedded SQLite store.",
)
@click.option("--store", "store_url", metavar="URL", help=_RUN_STORE_HELP)
@click.option(
    "--lease-seconds",
    type=click.FloatRange(2, 3600),
    default=120.0,
    show_default=True,
    help="How long an attempt's lease lasts; a dispatcher that dies holds its work this long at most.",
)
@click.option(
    "--allow-cidr", "allow_cidrs", multiple=True, help="Allow deliveries to this network (repeatable)."
)
@click.option("--metrics", "metrics_address", help="Serve /metrics, /healthz and /status on HOST:PORT.")
@click.option(
    "--max-line-bytes",
    type=click.IntRange(1024),
    default=DEFAULT_MAX_LINE_BYTES,
    show_default=True,
    help="Longest accepted event line; longer lines are rejected.",
)
@click.option(
    "--max-connections",
    type=click.IntRange(1, 65536),
    default=DEFAULT_MAX_CONNECTIONS,
    show_default=True,
    help="Event-socket clients served at once; one more gets one refusal line and is closed.",
)
@click.option(
    "--max-connections-per-process",
    type=click.IntRange(1, 65536),
    default=None,
    help="Event-socket clients one producer process may have open at once [default: a quarter of "
    "--max-connections].",
)
@click.option(
    "--max-connections-per-user",
    type=click.IntRange(1, 65536),
    default=None,
    help="Event-socket clients one user's processes may have open at once, when producers of several users "
    "share the socket [default: --max-connections].",
)
@click.option(
    "--max-file-bytes",
    type=click.IntRange(min=1),
    default=DEFAULT_LIMITS.max_file_bytes,
    show_default=True,
    help="Refuse (error file-too-large) any file in --config larger than this, without reading it.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 4096),
    default=EngineSettings().workers,
    show_default=True,
    help="Attempts in flight at most (threads, started as attempts need them).",
)
@click.option(
    "--per-endpoint",
    type=click.IntRange(1, 1024),
    default=8,
    show_default=True,
    help="Concurrent attempts per endpoint (scheme, host, port).",
)
@click.option(
    "--delivery-processes",
    type=click.IntRange(0, 64),
    default=default_processes(),
    show_default="one per spare core, at least 4, at most 8",
    help="Child processes making the HTTP attempts (0: threads of this process).",
)
@click.option(
    "--ingest-process/--no-ingest-process",
    default=False,
    show_default=True,
    help="Serve the event socket (read, parse, commit, ack) in a process of its own: acks keep more of "
    "their pace while deliveries run, for about 15-20 MB more memory; the main process then runs 5 nicer "
    "(not with --stdin).",
)
@click.option(
    "--delivery-nice",
    type=click.IntRange(0, 19),
    default=DEFAULT_DELIVERY_NICE,
    show_default=True,
    help="Run the delivery processes this much nicer than the main one (acks first on busy cores).",
)
@click.option(
    "--retention",
    metavar="DURATION",
    callback=duration_seconds,
    default="7d",
    show_default=True,
    help="Keep delivered records this long: a duration (30m, 12h, 7d).",
)
@click.option(
    "--watch/--no-watch", default=True, show_default=True, help="Reload when files in --config change."
)
@click.option(
    "--secrets-dir",
    "secrets_dirs",
    metavar="DIR",
    multiple=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where {file:} secrets may be read (repeatable; default $CREDENTIALS_DIRECTORY when set, "
    "else /run/secrets).",
)
@click.option(
    "--secret-env",
    "secret_env",
    metavar="PATTERN",
    multiple=True,
    help="Glob of the environment variables {env:} secrets may read (repeatable; default WEBHOOK_*).",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Log line format (stderr).",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="Least severe log level written.",
)
def run(
    config_dir: Path,
    socket_path: Path | None,
    use_stdin: bool,
    state_dir: Path,
    store_url: str | None,
    lease_seconds: float,
    allow_cidrs: tuple[str, ...],
    metrics_address: str | None,
    max_line_bytes: int,
    max_connections: int,
    max_connections_per_process: int | None,
    max_connections_per_user: int | None,
    max_file_bytes: int,
    workers: int,
    per_endpoint: int,
    delivery_processes: int,
    ingest_process: bool,
    delivery_nice: int,
    retention: float,
    watch: bool,
    secrets_dirs: tuple[Path, ...],
    secret_env: tuple[str, ...],
    log_format: str,
    log_level: str,
) -> None:
    """Ingest events, store them durably, deliver them to every matching webhook."""
    activated = not use_stdin and systemd.is_activated(os.environ)  # LISTEN_FDS replaces --socket
    if (use_stdin and socket_path is not None) or not (use_stdin or activated or socket_path is not None):
        raise click.UsageError("give exactly one of --socket PATH or --stdin (or run socket-activated)")
    try:
        networks = tuple(parse_cidr(c) for c in allow_cidrs)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--allow-cidr") from None
    try:
        chosen_store = store_choice.choose(store_url, os.environ)
    except DispatcherError as exc:
        raise click.BadParameter(str(exc), param_hint="--store") from None
    options = RunOptions(
        config_dir=config_dir,
        state_dir=state_dir,
        store_url=chosen_store,
        socket_path=socket_path,
        use_stdin=use_stdin,
        allow_cidrs=networks,
        metrics_address=_address(metrics_address) if metrics_address else None,
        max_line_bytes=max_line_bytes,
        max_connections=max_connections,
        max_connections_per_process=max_connections_per_process,
        max_connections_per_user=max_connections_per_user,
        retention_seconds=retention,
        engine=EngineSettings(
            workers=workers,
            per_endpoint=per_endpoint,
            lease_seconds=lease_seconds,
            reclaim_interval_seconds=min(15.0, lease_seconds / 2),
        ),
        watch=watch,
        delivery_processes=delivery_processes,
        delivery_nice=delivery_nice,
        ingest_process=ingest_process,
        activated=activated,
        secret_sources=SecretSources.build(map(str, secrets_dirs), secret_env),
        limits=replace(DEFAULT_LIMITS, max_file_bytes=max_file_bytes),
    )
    configure(log_format, log_level)
    try:
        code = Dispatcher(options).run()
    except DispatcherError as exc:
        click.echo(f"dispatch: {exc}", err=True)
        sys.exit(ExitCode.FAILURE)
    sys.exit(code)


@main.command()
@click.option(
    "--socket",
    "socket_path",
    type=click.Path(path_type=Path),
    default=DEFAULT_SOCKET,
    show_default=True,
    help="The running dispatcher's Unix socket.",
)
@click.argument("source", default="-")
def publish(socket_path: Path, source: str) -> None:
    """Send NDJSON events from FILE (or - for stdin) to a running dispatcher and print its acks."""
    try:
        stream = sys.stdin.buffer if source == "-" else open(source, "rb")  # noqa: SIM115
    except OSError as exc:
        raise click.BadParameter(f"cannot read {source}: {exc.strerror}") from None
    try:
        result = publishing.publish(socket_path, stream, sys.stdout.buffer)
    except DispatcherError as exc:
        click.echo(f"dispatch publish: {exc}", err=True)
        sys.exit(ExitCode.UNREACHABLE)
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    if result.rejected or result.missing:
        click.echo(
            f"dispatch publish: {result.rejected} rejected, {result.missing} unacknowledged of {result.sent}",
            err=True,
        )
        sys.exit(ExitCode.FAILURE)


@main.group()
def deliveries() -> None:
    """Inspect and requeue deliveries in the store."""


_state_only = click.option(
    "--state",
    "state_dir",
    type=click.Path(path_type=Path),
    default=DEFAULT_STATE_DIR,
    show_default=True,
    help="Directory of the store (as given to dispatch run).",
)
_STORE_HELP = (
    "The store: sqlite:///PATH or postgresql://... (default: $DISPATCH_STORE, else the SQLite file under "
    "--state). Put a password in $DISPATCH_STORE or PGPASSWORD, not on the command line."
)


def _remember_store(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    ctx.meta["dispatch.store"] = value
    return value


def _state_option(f: _F) -> _F:
    """``--state DIR`` and ``--store URL`` (read by ``_open_store``)."""
    store = click.option(
        "--store", metavar="URL", expose_value=False, callback=_remember_store, help=_STORE_HELP
    )
    return _state_only(store(f))


_format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(list(REPORTERS)),
    default="text",
    show_default=True,
    help="Output format.",
)


def _list_options(noun: str) -> Callable[[_F], _F]:
    """The options of ``deliveries list`` and ``callbacks list`` (``noun``: what ``--webhook`` filters)."""

    def decorate(f: _F) -> _F:
        for option in reversed(
            (
                _state_option,
                click.option(
                    "--status", type=click.Choice([s.value for s in DeliveryStatus]), help="Only this status."
                ),
                click.option("--webhook", help=f"Only this webhook's {noun}."),
                click.option("--since", help="Created since: a duration ago (2h, 7d) or an ISO time."),
                click.option(
                    "--limit",
                    type=click.IntRange(1),
                    default=100,
                    show_default=True,
                    help="At most this many.",
                ),
                _format_option,
            )
        ):
            f = option(f)
        return f

    return decorate


def _retry_options(singular: str, plural: str) -> Callable[[_F], _F]:
    """The options and ID arguments of ``deliveries retry`` and ``callbacks retry``."""

    def decorate(f: _F) -> _F:
        for option in reversed(
            (
                _state_option,
                click.option(
                    "--all-dead",
                    is_flag=True,
                    help=f"Requeue every dead {singular} (filtered by --webhook/--since).",
                ),
                click.option("--webhook", help=f"With --all-dead: only this webhook's {plural}."),
                click.option(
                    "--since", help=f"Only {plural} created since: a duration ago (2h, 7d) or an ISO time."
                ),
                click.argument(f"{singular}_ids", nargs=-1, type=int),
            )
        ):
            f = option(f)
        return f

    return decorate


def _list_query(status: str | None, webhook: str | None, since: str | None, limit: int) -> DeliveryQuery:
    return DeliveryQuery(
        status=DeliveryStatus(status) if status else None,
        webhook=webhook,
        since=parse_since(since, time.time()) if since else None,
        limit=limit,
    )


def _check_retry(
    ids: tuple[int, ...], all_dead: bool, webhook: str | None, since: str | None, noun: str
) -> None:
    if bool(ids) == all_dead:
        raise click.UsageError(f"give {noun} IDs or --all-dead, not both")
    if ids and (webhook or since):
        raise click.UsageError("--webhook and --since filter --all-dead only")


@contextlib.contextmanager
def _open_store(state_dir: Path) -> Iterator[Store]:
    """The store of ``--store``, ``DISPATCH_STORE`` or ``--state`` (which must exist: nothing is created)."""
    option = click.get_current_context().meta.get("dispatch.store")
    with contextlib.ExitStack() as stack:
        try:
            url = store_choice.choose(option, os.environ)
            store = stack.enter_context(store_choice.open_store(url, store_path(state_dir), must_exist=True))
        except DispatcherError as exc:  # e.g. a store written by a newer dispatcher: one line, no traceback
            raise click.ClickException(str(exc)) from None
        yield store


@deliveries.command("list")
@_list_options("deliveries")
def list_deliveries(
    state_dir: Path, status: str | None, webhook: str | None, since: str | None, limit: int, fmt: str
) -> None:
    """List deliveries, newest first."""
    query = _list_query(status, webhook, since, limit)
    with _open_store(state_dir) as store:
        rows = store.list_deliveries(query)
    click.echo(REPORTERS[fmt]().delivery_list(rows), nl=False)


@deliveries.command("show")
@_state_option
@_format_option
@click.argument("delivery_id", type=int)
def show_delivery(state_dir: Path, fmt: str, delivery_id: int) -> None:
    """Show one delivery and every attempt: time, status code, duration, response excerpt, error."""
    with _open_store(state_dir) as store:
        detail = store.get_delivery(delivery_id)
        reports = store.list_callbacks(DeliveryQuery(delivery_id=delivery_id, limit=1000))
    if detail is None:
        raise click.ClickException(f"no delivery {delivery_id}")
    click.echo(REPORTERS[fmt]().delivery(detail, reports), nl=False)


@deliveries.command("retry")
@_retry_options("delivery", "deliveries")
def retry_deliveries(
    state_dir: Path, all_dead: bool, webhook: str | None, since: str | None, delivery_ids: tuple[int, ...]
) -> None:
    """Requeue deliveries now (a fresh schedule); the running dispatcher picks them up within a second."""
    _check_retry(delivery_ids, all_dead, webhook, since, "delivery")
    now = time.time()
    with _open_store(state_dir) as store:
        if all_dead:
            n = store.requeue_dead(now, webhook=webhook, since=parse_since(since, now) if since else None)
        else:
            n = store.requeue(list(delivery_ids), now)
    click.echo(f"requeued {n} deliver{'y' if n == 1 else 'ies'}")
    if delivery_ids and n < len(delivery_ids):
        click.echo("some IDs were not found or are already delivered", err=True)
        sys.exit(ExitCode.FAILURE)


@main.group()
def callbacks() -> None:
    """Inspect and requeue outcome callbacks (stored with their outcome, retried like deliveries)."""


@callbacks.command("list")
@_list_options("callbacks")
def list_callbacks(
    state_dir: Path, status: str | None, webhook: str | None, since: str | None, limit: int, fmt: str
) -> None:
    """List callbacks, newest first (status as for deliveries: pending, failed = retry scheduled, ...)."""
    query = _list_query(status, webhook, since, limit)
    with _open_store(state_dir) as store:
        rows = store.list_callbacks(query)
    click.echo(REPORTERS[fmt]().callback_list(rows), nl=False)


@callbacks.command("show")
@_state_option
@_format_option
@click.argument("callback_id", type=int)
def show_callback(state_dir: Path, fmt: str, callback_id: int) -> None:
    """Show one callback: the outcome record it POSTs and every attempt."""
    with _open_store(state_dir) as store:
        detail = store.get_callback(callback_id)
    if detail is None:
        raise click.ClickException(f"no callback {callback_id}")
    click.echo(REPORTERS[fmt]().callback(detail), nl=False)


@callbacks.command("retry")
@_retry_options("callback", "callbacks")
def retry_callbacks(
    state_dir: Path, all_dead: bool, webhook: str | None, since: str | None, callback_ids: tuple[int, ...]
) -> None:
    """Requeue callbacks now (a fresh schedule); the running dispatcher sends them within a second."""
    _check_retry(callback_ids, all_dead, webhook, since, "callback")
    now = time.time()
    with _open_store(state_dir) as store:
        if all_dead:
            n = store.requeue_dead_callbacks(
                now, webhook=webhook, since=parse_since(since, now) if since else None
            )
        else:
            n = store.requeue_callbacks(list(callback_ids), now)
    click.echo(f"requeued {n} callback{'' if n == 1 else 's'}")
    if callback_ids and n < len(callback_ids):
        click.echo("some IDs were not found, are already delivered or are being sent", err=True)
        sys.exit(ExitCode.FAILURE)


@main.command()
@click.option("--port", type=click.IntRange(0, 65535), required=True, help="Port to listen on (0: any free).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--secret", envvar="DISPATCH_RECEIVE_SECRET", help="Verify signatures with this secret.")
@click.option("--strict", is_flag=True, help="Answer 401 and exit 1 on a bad signature.")
@click.option(
    "--respond", default="", help="Status codes to answer in turn, e.g. 500,500,200 (last repeats)."
)
@click.option("--count", type=click.IntRange(1), help="Exit after this many deliveries.")
@click.option("--json", "as_json", is_flag=True, help="One JSON line per delivery.")
def receive(
    port: int, host: str, secret: str | None, strict: bool, respond: str, count: int | None, as_json: bool
) -> None:
    """A small receiver for trying webhooks out: prints each delivery and whether its signatures verify."""
    from dispatcher.receiver import run_receiver

    try:
        codes = [int(c) for c in respond.split(",") if c.strip()]
    except ValueError:
        raise click.BadParameter(
            f"{respond!r} is not a list of status codes", param_hint="--respond"
        ) from None
    sys.exit(
        run_receiver(
            host=host,
            port=port,
            secret=secret,
            strict=strict,
            responses=codes or None,
            max_count=count,
            json_lines=as_json,
        )
    )


@main.group("store")
def store_group() -> None:
    """Operate on stores as a whole."""


@store_group.command("copy")
@click.option(
    "--from", "source", required=True, metavar="URL", help="The store to move from (sqlite:///PATH...)."
)
@click.option(
    "--to",
    "destination",
    metavar="URL",
    help="The store to move to (postgresql://...; default $DISPATCH_STORE).",
)
@click.option(
    "--keep-source",
    is_flag=True,
    help="Leave the copied deliveries open in the source (default: mark them dead as moved).",
)
def store_copy(source: str, destination: str | None, keep_source: bool) -> None:
    """Move the open deliveries of one store into another (stop the source's dispatchers first)."""
    from dispatcher.app import state_lock
    from dispatcher.store.copy import copy_open

    try:
        src = store_choice.choose(source, {})
        dst = store_choice.choose(destination, os.environ)
        if src is None or dst is None:
            raise click.UsageError("give --to URL (or set DISPATCH_STORE)")
        if src.url == dst.url:
            raise click.UsageError("--from and --to are the same store")
        with contextlib.ExitStack() as stack:
            # A SQLite source is locked like a dispatcher locks it: none may run on it during the move.
            src_store = stack.enter_context(
                store_choice.open_store(src, Path(), lock=state_lock, must_exist=True)
            )
            dst_store = stack.enter_context(store_choice.open_store(dst, Path(), lock=state_lock))
            result = copy_open(src_store, dst_store, time.time(), moved_to=dst.display, keep=keep_source)
    except DispatcherError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"copied {result.deliveries} open deliveries of {result.events} events to {dst.display}"
        f" ({result.duplicates} events were there already); {result.moved_off} marked moved in the source"
    )


if __name__ == "__main__":
    main()
