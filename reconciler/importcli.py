"""``reconcile import FILE... --out DIR --secrets-out FILE [--events FILE] [--force]``: the edge.

Reads the exports, asks ``reconciler.importer`` for the files, and writes them only when every row mapped
without an error and no file would be overwritten (unless ``--force``): all or nothing. Files are written
to a temporary name and linked into place, so an existing file is never clobbered by a race either; the
secrets file (and the events file, which holds payloads) are created with mode 0600.

Exit 0 written; 1 a row or file could not be imported, or a file exists (nothing written); 3 usage or
internal error. Problems go to stderr, one line each; secret values never appear in any output.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import click

from reconciler.check import ExitCode
from reconciler.cli import ReconcileCommand
from reconciler.importer import ImportResult, build_import
from reconciler.importrender import render_secrets
from reconciler.loader import YAML_SUFFIXES, load_tree

_HELP = {"help_option_names": ["-h", "--help"]}


@click.command("import", cls=ReconcileCommand, context_settings=_HELP)
@click.argument("exports", metavar="FILE...", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--secrets-out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Env-file for the secret values (written 0600; never commit it).",
)
@click.option(
    "--events",
    "events_out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the undelivered webhook events as NDJSON for `dispatch publish`.",
)
@click.option("--force", is_flag=True, help="Overwrite files that exist.")
@click.pass_context
def import_command(
    ctx: click.Context,
    exports: tuple[str, ...],
    out_dir: Path,
    secrets_out: Path,
    events_out: Path | None,
    force: bool,
) -> None:
    """Turn dj-whisperer exports (Django dumpdata, REST API pages) into webhook files in --out DIR.

    Secrets go to --secrets-out, never into the webhook files. Exit 0 written, 1 not imported (nothing
    written), 3 usage or internal error.
    """
    if secrets_out.name.endswith(YAML_SUFFIXES):
        raise click.UsageError("--secrets-out must not be a .yaml file: the dispatcher would load it")
    parsed = [(source, _read(source)) for source in exports]
    readable = [(source, data) for source, data in parsed if data is not _UNREADABLE]
    result = build_import(readable, with_events=events_out is not None, out_display=str(out_dir))
    for finding in result.findings:
        click.echo(finding.render(), err=True)
    problems = _refusals(result, out_dir, secrets_out, events_out, force)
    for problem in problems:
        click.echo(f"reconcile import: {problem}", err=True)
    if len(readable) < len(parsed) or not result.ok or problems:
        click.echo("reconcile import: nothing written", err=True)
        ctx.exit(ExitCode.INVALID)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write(secrets_out, render_secrets(result.secrets), 0o600, force)
    for hook in result.webhooks:
        _write(out_dir / f"{hook.name}.yaml", hook.text, 0o644, force)
    if events_out is not None:
        _write(events_out, "".join(line + "\n" for line in result.events), 0o600, force)
    click.echo(f"wrote {len(result.webhooks)} webhook files to {out_dir}")
    click.echo(f"wrote {len(result.secrets)} secrets to {secrets_out} (mode 0600): load them, then delete it")
    if events_out is not None:
        click.echo(f"wrote {len(result.events)} undelivered events to {events_out} (dispatch publish)")
    if _inside(secrets_out, out_dir):
        click.echo(f"reconcile import: warning: {secrets_out} is inside {out_dir}; never commit it", err=True)
    ctx.exit(ExitCode.OK)


_UNREADABLE: Any = object()


def _read(source: str) -> Any:
    try:
        with open(source, "rb") as handle:
            return json.loads(handle.read().decode("utf-8-sig"))
    except OSError as exc:
        click.echo(f"{source}: error: cannot read file: {exc.strerror or exc}", err=True)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        # The message has a position, never the content (which holds secrets).
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
        click.echo(f"{source}: error: not a JSON export ({reason})", err=True)
    return _UNREADABLE


def _refusals(
    result: ImportResult, out_dir: Path, secrets_out: Path, events_out: Path | None, force: bool
) -> list[str]:
    """Why nothing may be written: names another file of DIR defines, files that exist (without --force)."""
    problems: list[str] = []
    targets = [out_dir / f"{hook.name}.yaml" for hook in result.webhooks]
    if out_dir.is_dir():
        defined = {h.name: Path(h.source.file) for h in load_tree(out_dir).webhooks}
        for hook, target in zip(result.webhooks, targets, strict=True):
            where = defined.get(hook.name)
            if where is not None and where.resolve() != target.resolve():
                problems.append(f"webhook {hook.name!r} is already defined in {where}")
    if not force:
        for path in [*targets, secrets_out, *([events_out] if events_out else [])]:
            if os.path.lexists(path):
                problems.append(f"{path} exists (--force overwrites it)")
    return problems


def _write(path: Path, text: str, mode: int, force: bool) -> None:
    """Write ``text`` to ``path`` with ``mode``, through a temporary file in the same directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # 0600, hidden
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            os.fchmod(out.fileno(), mode & ~_umask() if mode != 0o600 else mode)
            out.write(text)
            if mode == 0o600:  # the secrets: the one copy outside the OMS until they are loaded
                out.flush()
                os.fsync(out.fileno())
        if force:
            os.replace(temporary, path)
        else:
            os.link(temporary, path)  # fails if the path appeared meanwhile: never overwrite
            os.unlink(temporary)
    except BaseException:
        if os.path.lexists(temporary):
            os.unlink(temporary)
        raise


def _umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


def _inside(path: Path, directory: Path) -> bool:
    try:
        path.resolve().relative_to(directory.resolve())
    except ValueError:
        return False
    return True
