"""Text that ``reconcile import`` writes: webhook files (YAML) and the secrets file (env-file). Pure.

YAML is written by PyYAML, which quotes whatever YAML 1.1 would read as something other than a string; the
reconciler reads YAML 1.2, which reads fewer plain scalars as non-strings, except a few (``0o17``), so
strings that start like a number are always quoted. The importer still parses every file back and compares.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from reconciler.importer import Secret

MODELINE = "# yaml-language-server: $schema=../schemas/webhook.v1.json"
_NUMBER_LIKE = re.compile(r"[-+.0-9]")
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9_@%+=:,./~-]*")


class _Flow(dict[str, Any]):
    """A mapping written on one line: ``{env: NAME}``."""


# libyaml's emitter when PyYAML has it (the pure-Python one is most of an import's time), the same output.
_BaseDumper: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class _Dumper(_BaseDumper):  # type: ignore[valid-type,misc]
    pass


def _flow(dumper: yaml.SafeDumper, data: _Flow) -> yaml.Node:
    return dumper.represent_mapping("tag:yaml.org,2002:map", data, flow_style=True)


def _text(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    if data and _NUMBER_LIKE.match(data):
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="'")
    return dumper.represent_str(data)


_Dumper.add_representer(_Flow, _flow)
_Dumper.add_representer(str, _text)


def _flowed(value: Any) -> Any:
    """Secret references as one-line mappings; everything else as it is."""
    if isinstance(value, dict):
        if len(value) == 1 and set(value) <= {"env", "file"}:
            return _Flow(value)
        return {k: _flowed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_flowed(v) for v in value]
    return value


def render_webhook(document: dict[str, Any], origin: str) -> str:
    """One webhook file: the schema modeline, where the row came from, the document."""
    body = yaml.dump(
        _flowed(document), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=4096, indent=2
    )
    shown = "".join(c if c.isprintable() else "?" for c in origin)
    return f"{MODELINE}\n# Imported by `reconcile import` from {shown}.\n{body}"


def render_secrets(secrets: Iterable[Secret]) -> str:
    """The secrets file: ``NAME=value`` lines that POSIX shells and systemd's EnvironmentFile read alike.

    Plain values are written bare; others in single quotes, or, when they hold one, in double quotes with
    ``\\``, ``"``, ``$`` and `````` escaped.
    """
    lines = [
        "# Secrets of the webhooks written by `reconcile import`. Put them into the dispatcher's secret",
        "# store (the environment of `dispatch run`), then delete this file. Never commit it.",
    ]
    for secret in secrets:
        lines += [f"# {secret.note}", f"{secret.env}={_env_value(secret.value)}"]
    return "\n".join(lines) + "\n"


def _env_value(value: str) -> str:
    if _PLAIN_VALUE.fullmatch(value):
        return value
    if "'" not in value:
        return f"'{value}'"
    return '"' + re.sub(r'(["\\$`])', r"\\\1", value) + '"'
