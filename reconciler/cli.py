"""``reconcile`` console script: parse options, build a ``Checker``, exit with what its ``run()`` returns.

Without ``--check`` the command does exactly what ``--check`` does: it never writes anything, so the flag only
documents intent in CI scripts (and keeps SPEC section 2's spelling working). ``--against`` and ``--route``
add to the check; they never skip it.

Exit codes are listed in ``reconciler.check``. Click exits 2 on a usage error, which would read as "valid
with changes" here, so the command class turns every click error into 3.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import click

from reconciler.check import Checker, CheckOptions, ExitCode, watch
from reconciler.limits import DEFAULT_LIMITS, Limits
from reconciler.loader import load_tree
from reconciler.report import RENDERERS
from reconciler.secretcheck import add_secret_findings
from reconciler.secretsources import SecretSources

#: Ctrl-C: the shell convention (128 + SIGINT), neither "invalid" nor "internal error".
EXIT_INTERRUPTED = 130


@contextmanager
def _click_errors_exit_3() -> Iterator[None]:
    try:
        yield
    except click.ClickException as exc:  # UsageError, BadParameter, FileError, ...
        exc.show()  # what click itself would print, then our exit code instead of its 1 or 2
        raise click.exceptions.Exit(ExitCode.ERROR) from exc


class ReconcileCommand(click.Command):
    """A click command whose usage errors exit 3 and whose unexpected exceptions exit 3 with a short message.

    Done in the command (not only in ``main``) so that click's test runner sees the same exit codes.
    """

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        with _click_errors_exit_3():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        with _click_errors_exit_3():
            try:
                return super().invoke(ctx)
            except (click.ClickException, click.exceptions.Exit, click.Abort):
                raise
            except KeyboardInterrupt:
                click.echo("Interrupted.", err=True)
                raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
            except Exception as exc:
                # Short on purpose: a traceback could quote file contents (and so a literal secret).
                click.echo(f"reconcile: internal error: {type(exc).__name__}: {exc}", err=True)
                raise click.exceptions.Exit(ExitCode.ERROR) from exc


def _parse_filters(
    ctx: click.Context, param: click.Parameter, values: Sequence[str]
) -> dict[str, Any] | None:
    """``k=v`` pairs; a value is JSON when it parses as JSON (``3`` is a number, ``"3"`` a string)."""
    if not values:
        return None
    parsed: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", ctx=ctx, param=param)
        try:
            parsed[key] = json.loads(raw)
        except ValueError:
            parsed[key] = raw
    return parsed


def _check_event_type(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    # An event type is one token; refusing whitespace also keeps it from breaking a line of output.
    if value is not None and (not value or any(c.isspace() or not c.isprintable() for c in value)):
        raise click.BadParameter(f"not an event type: {value!r}", ctx=ctx, param=param)
    return value


@click.command(
    cls=ReconcileCommand,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Also: 'reconcile import FILE... --out DIR --secrets-out FILE' turns dj-whisperer exports (Django "
    "dumpdata, REST pages) into webhook files; 'reconcile import --help' for its options.",
)
@click.argument(
    "directory",
    metavar="[DIR]",
    default="./webhooks.d",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
)
@click.option("--check", is_flag=True, help="Validate, build the routing table; write nothing (the default).")
@click.option(
    "--format",
    "output_format",
    type=click.Choice(sorted(RENDERERS)),
    default="text",
    show_default=True,
    help="How to print diagnostics (and plan and route).",
)
@click.option("--strict", is_flag=True, help="Warnings fail the run too (exit 1).")
@click.option("--against", metavar="REF", help="Also print the plan relative to a directory or git revision.")
@click.option("--detailed-exitcode", is_flag=True, help="With --against: exit 2 when the plan is not empty.")
@click.option(
    "--route", "route_event", metavar="EVENT_TYPE", callback=_check_event_type, help="Show where it goes."
)
@click.option(
    "--filter",
    "route_filter",
    metavar="KEY=VALUE",
    multiple=True,
    callback=_parse_filters,
    help="With --route: the event's filter (repeatable; VALUE is JSON when it parses).",
)
@click.option(
    "--watch",
    "watch_mode",
    is_flag=True,
    help="Keep running: on every change re-check, print diagnostics and the plan against the last good tree.",
)
@click.option(
    "--secrets-dir",
    "secrets_dirs",
    metavar="DIR",
    multiple=True,
    help="Where the dispatcher reads {file:} secrets (repeatable; default $CREDENTIALS_DIRECTORY or "
    "/run/secrets): absolute paths outside are warned about.",
)
@click.option(
    "--secret-env",
    "secret_env",
    metavar="PATTERN",
    multiple=True,
    help="Glob of the variables the dispatcher may read for {env:} secrets (repeatable; default WEBHOOK_*).",
)
@click.option(
    "--max-file-bytes",
    type=click.IntRange(min=1),
    default=DEFAULT_LIMITS.max_file_bytes,
    show_default=True,
    help="Refuse (error file-too-large) any webhook file larger than this, without reading it.",
)
@click.version_option(package_name="webhooks-as-code", prog_name="reconcile")
@click.pass_context
def reconcile(
    ctx: click.Context,
    directory: Path,
    check: bool,
    output_format: str,
    strict: bool,
    against: str | None,
    detailed_exitcode: bool,
    route_event: str | None,
    route_filter: dict[str, Any] | None,
    watch_mode: bool,
    secrets_dirs: tuple[str, ...],
    secret_env: tuple[str, ...],
    max_file_bytes: int,
) -> None:
    """Check the webhook definitions in DIR (default ./webhooks.d).

    Exit 0 valid, 1 invalid (or warnings with --strict), 2 valid with changes (--detailed-exitcode),
    3 usage or internal error.
    """
    if route_filter is not None and route_event is None:
        raise click.UsageError("--filter needs --route EVENT_TYPE")
    if detailed_exitcode and against is None:
        raise click.UsageError("--detailed-exitcode needs --against REF (there is no plan without it)")
    options = CheckOptions(
        directory=directory,
        output_format=output_format,
        strict=strict,
        against=against,
        detailed_exitcode=detailed_exitcode,
        route_event=route_event,
        route_filter=route_filter,
        limits=Limits(max_file_bytes=max_file_bytes),
    )
    sources = SecretSources.build(secrets_dirs, secret_env)
    if watch_mode:
        if against or route_event or detailed_exitcode:
            raise click.UsageError("--watch plans against the last good tree: no --against or --route")
        stop = threading.Event()
        try:
            ctx.exit(watch(options, sys.stdout, stop, sources=sources))
        except KeyboardInterrupt:
            stop.set()
            ctx.exit(ExitCode.OK)
    limits = options.limits
    ctx.exit(
        Checker(
            options, load=lambda directory: add_secret_findings(load_tree(directory, limits), sources)
        ).run()
    )


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Console-script entry point: ``reconcile import ...`` (``reconciler.importcli``), else ``reconcile``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["import"]:
        from reconciler.importcli import import_command  # imports this module: loaded only when asked for

        import_command.main(args=args[1:], prog_name="reconcile import")
    reconcile.main(args=args, prog_name="reconcile")
