"""The shipped examples in webhooks.d/: valid, realistic, secret-free, and together a tour of every field."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from reconciler.loader import TreeResult, load_tree
from reconciler.schema import WEBHOOK_SCHEMA_PATH
from reconciler.secretsources import SecretSources, has_parent_step
from reconciler.yamlsource import JsonPath, iter_paths, parse_source

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "webhooks.d").glob("*.yaml"))
MODELINE = "# yaml-language-server: $schema=../schemas/webhook.v1.json"
FREE_MAPS = ("labels", "match", "scope", "additional_headers")  # keys chosen by the author, not by the schema
# The webhook scripts/demo delivers to: a loopback receiver the demo allows with --allow-cidr. It is the one
# example that may point at a private address, and it draws exactly the two warnings that say so.
DEMO_FILES = {"demo-receiver.yaml": {"insecure-url", "private-address"}}


@pytest.fixture(scope="module")
def examples() -> TreeResult:
    return load_tree(REPO / "webhooks.d")


def documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in EXAMPLES:
        docs.extend(d.data for d in parse_source(path.read_text(encoding="utf-8"), path.name).documents)
    return docs


def webhook_specs() -> list[dict[str, Any]]:
    return [doc["spec"] for doc in documents() if doc["kind"] == "Webhook"]


def test_examples_load_without_any_diagnostic(examples: TreeResult) -> None:
    """`reconcile --check webhooks.d` finds no error, and no warning outside the demo receiver's own two."""
    assert examples.valid
    for d in examples.diagnostics:
        assert d.rule in DEMO_FILES.get(Path(d.file).name, set()), d
    assert len(examples.webhooks) >= 5


def test_every_example_file_points_editors_at_the_schema() -> None:
    """Each example starts with the yaml-language-server modeline and holds one document."""
    for path in EXAMPLES:
        text = path.read_text(encoding="utf-8")
        assert text.splitlines()[0] == MODELINE, path.name
        assert len(parse_source(text, path.name).documents) == 1, path.name


def schema_paths(schema: dict[str, Any], node: Any, prefix: JsonPath = ()) -> Iterator[JsonPath]:
    """Property paths the schema defines below ``node`` (free-form maps and secret references are leaves)."""
    while isinstance(node, dict) and "$ref" in node:
        target: Any = schema
        for part in node["$ref"][2:].split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    if (
        not isinstance(node, dict)
        or (prefix and prefix[-1] in FREE_MAPS)
        or "env" in node.get("properties", {})
    ):
        return
    for name, sub in node.get("properties", {}).items():
        yield (*prefix, name)
        yield from schema_paths(schema, sub, (*prefix, name))


def used_paths(doc: dict[str, Any]) -> set[JsonPath]:
    used: set[JsonPath] = set()
    for path, _ in iter_paths(doc):
        keys = tuple(p for p in path if isinstance(p, str))
        for i, key in enumerate(keys):
            if key in FREE_MAPS or key in ("secret_key", "password"):
                keys = keys[: i + 1]
                break
        used.add(keys)
    return used


def test_examples_together_use_every_field_of_the_schema() -> None:
    """Across the examples, every property the schema defines for a Webhook or EventTypes document is used."""
    schema = json.loads(WEBHOOK_SCHEMA_PATH.read_text(encoding="utf-8"))
    defined = set(schema_paths(schema, schema["definitions"]["webhookDocument"]))
    defined |= set(schema_paths(schema, schema["definitions"]["eventTypesDocument"]))
    used = set().union(*(used_paths(doc) for doc in documents()))
    assert defined - used == set()


def test_examples_show_every_variant_of_the_fields() -> None:
    """Every retry choice, both auth types, both secret sources, inactive and each event-type form appear."""
    specs = webhook_specs()
    choices = {s["retry_countdown_config"]["choice"] for s in specs if "retry_countdown_config" in s}
    assert choices == {"fixed", "linear", "exponential", "random", "schedule"}
    retries = [s["retry_countdown_config"] for s in specs if "retry_countdown_config" in s]
    assert any("jitter" in r for r in retries) and all("max_attempts" in r for r in retries)
    assert {s["config"]["auth"]["type"] for s in specs if "auth" in s.get("config", {})} == {"basic", "token"}
    assert {next(iter(s["secret_key"])) for s in specs if "secret_key" in s} == {"env", "file"}
    assert any("WHSEC" in s["secret_key"].get("env", "") for s in specs if "secret_key" in s)
    headers = [v for s in specs for v in s.get("additional_headers", {}).values()]
    assert any(isinstance(v, dict) for v in headers) and any(isinstance(v, str) for v in headers)
    assert {s.get("status", "active") for s in specs} == {"active", "inactive"}
    patterns = [
        p for s in specs for p in ([s["event_type"]] if isinstance(s["event_type"], str) else s["event_type"])
    ]
    assert any(isinstance(s["event_type"], str) for s in specs) and any(
        isinstance(s["event_type"], list) for s in specs
    )
    assert "*" in patterns and any(p.endswith(".**") for p in patterns)
    assert any(p.endswith(".*") for p in patterns)
    assert any("callback" in s for s in specs) and any("match" in s.get("config", {}) for s in specs)
    assert any(doc["kind"] == "EventTypes" for doc in documents())


def test_examples_use_public_example_hosts_only() -> None:
    """Every URL in the examples is https on a reserved example domain, never a private address."""
    docs = [
        d for p in EXAMPLES if p.name not in DEMO_FILES for d in parse_source(p.read_text(), p.name).documents
    ]
    urls = [v for doc in docs for _, v in iter_paths(doc.data) if isinstance(v, str) and "://" in v]
    assert urls
    for url in urls:
        parts = urlsplit(url)
        assert parts.scheme == "https" and parts.hostname, url
        assert parts.hostname.rsplit(".", 2)[-2:][0] == "example", url
        with pytest.raises(ValueError):
            ipaddress.ip_address(parts.hostname)


def test_examples_hold_references_not_secrets(examples: TreeResult) -> None:
    """Secrets in the examples are references the default secret-source policy allows: WEBHOOK_* names,
    and files named relative to the secrets directory or by a path inside /run/secrets (both forms shown)."""
    default = SecretSources(("/run/secrets",))
    files = []
    for hook in examples.webhooks:
        for ref in hook.secret_refs():
            assert ref.source in ("env", "file")
            if ref.source == "env":
                assert ref.name.isupper() and default.env_allowed(ref.name), ref
            else:
                assert not has_parent_step(ref.name), ref
                assert not ref.name.startswith("/") or default.lexically_inside(ref.name), ref
                files.append(ref.name)
    assert {name.startswith("/") for name in files} == {True, False}


def check_jsonschema() -> Path:
    tool = Path(sys.executable).parent / "check-jsonschema"
    if not tool.exists():
        pytest.skip("check-jsonschema is not installed next to this Python")
    return tool


def test_check_jsonschema_accepts_the_schema_as_a_2020_12_schema() -> None:
    """check-jsonschema validates the schema file against its meta-schema."""
    run = subprocess.run(
        [str(check_jsonschema()), "--check-metaschema", str(WEBHOOK_SCHEMA_PATH)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_check_jsonschema_accepts_the_examples_and_the_catalogue() -> None:
    """check-jsonschema, an independent validator, accepts every example and the bundled catalogue."""
    files = [*map(str, EXAMPLES), str(REPO / "schemas" / "events.v1.json")]
    run = subprocess.run(
        [str(check_jsonschema()), "--schemafile", str(WEBHOOK_SCHEMA_PATH), *files],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
