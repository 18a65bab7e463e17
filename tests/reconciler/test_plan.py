"""The plan: field-by-field differences between two sets of webhooks, secrets never shown."""

from __future__ import annotations

import json
from dataclasses import replace

from reconciler.model import BasicAuth, Callback, RetryConfig, SecretRef, Source, Webhook
from reconciler.plan import CHANGED, Action, build_plan, plan_to_json, render_plan_text
from reconciler.redact import REDACTED

MARKER = "sEcReT-MaRkEr-5f1c"


def hook(name: str = "erp-packages", **changes: object) -> Webhook:
    base = Webhook(
        name=name,
        target_url="https://erp.example.com/hooks/oms",
        event_types=("package.created", "package.status.*"),
        secret_key=SecretRef("env", "ERP_WEBHOOK_SECRET"),
        additional_headers={"X-Source": "oms", "X-Token": SecretRef("env", "ERP_TOKEN")},
        labels={"team": "fulfilment"},
        source=Source(f"webhooks.d/{name}.yaml"),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_identical_trees_give_an_empty_plan() -> None:
    """Comparing a tree with itself plans nothing."""
    plan = build_plan({"a": hook("a")}, {"a": hook("a")})
    assert plan.is_empty
    assert plan.summary() == "Plan: 0 to add, 0 to change, 0 to remove."
    assert "No changes." in render_plan_text(plan)


def test_added_changed_and_removed_webhooks_are_sorted_by_name() -> None:
    """Webhooks only in the new tree are added, only in the old removed, in both and different changed."""
    old = {"b": hook("b"), "c": hook("c"), "z": hook("z")}
    new = {"a": hook("a"), "b": hook("b", target_url="https://b.example/x"), "z": hook("z")}
    plan = build_plan(old, new)
    assert [(c.action, c.name) for c in plan.changes] == [
        (Action.ADD, "a"),
        (Action.CHANGE, "b"),
        (Action.REMOVE, "c"),
    ]
    assert plan.summary() == "Plan: 1 to add, 1 to change, 1 to remove."


def test_changed_fields_render_old_and_new_values() -> None:
    """A changed field shows its YAML path and old → new values, as JSON literals."""
    old = {"a": hook("a", timeout_seconds=10.0)}
    new = {"a": hook("a", target_url="https://b.example/x", timeout_seconds=2.5, active=False)}
    text = render_plan_text(build_plan(old, new))
    assert text.splitlines()[0] == "~ a (webhooks.d/a.yaml)"
    assert '    ~ spec.target_url: "https://erp.example.com/hooks/oms" → "https://b.example/x"' in text
    assert '    ~ spec.status: "active" → "inactive"' in text
    assert "    ~ spec.config.timeout: 10 → 2.5" in text
    assert text.rstrip().endswith("Plan: 0 to add, 1 to change, 0 to remove.")


def test_headers_labels_and_match_are_compared_per_key() -> None:
    """One header or label added, changed or removed is one line with its own path."""
    old = {"a": hook("a", match={"channel_id": 3})}
    new = {
        "a": hook(
            "a",
            additional_headers={"X-Source": "oms-2", "X-New": "1", "X-Token": SecretRef("env", "ERP_TOKEN")},
            labels={},
            match={"channel_id": 4},
        )
    }
    fields = {f.path: f for f in build_plan(old, new).changes[0].fields}
    assert fields["spec.additional_headers.X-Source"].action is Action.CHANGE
    assert fields["spec.additional_headers.X-New"].action is Action.ADD
    assert fields["metadata.labels.team"].action is Action.REMOVE
    assert (fields["spec.config.match.channel_id"].old, fields["spec.config.match.channel_id"].new) == (3, 4)
    assert "spec.additional_headers.X-Token" not in fields


def test_retry_auth_and_callback_changes_are_listed() -> None:
    """Retry settings, auth and callback fields are compared one by one."""
    old = {"a": hook("a")}
    new = {
        "a": hook(
            "a",
            retry=RetryConfig("fixed", {"seconds": 30}, max_attempts=3),
            auth=BasicAuth("oms", SecretRef("file", "/run/secrets/p")),
            callback=Callback("https://oms.internal/outcomes", frozenset({"dead", "failed"})),
        )
    }
    paths = [f.path for f in build_plan(old, new).changes[0].fields]
    assert "spec.retry_countdown_config.kwargs.seconds" in paths
    assert "spec.retry_countdown_config.max_attempts" in paths
    assert "spec.config.auth.username" in paths
    assert "spec.config.auth.password" in paths
    assert "spec.callback.on" in paths


def test_changed_secret_references_render_as_changed_without_the_reference() -> None:
    """A changed secret reference is `<changed>`; neither reference appears in text or JSON."""
    old = {"a": hook("a")}
    new = {
        "a": hook(
            "a",
            secret_key=SecretRef("file", f"/run/{MARKER}"),
            additional_headers={"X-Source": "oms", "X-Token": SecretRef("env", f"{MARKER}_TOKEN")},
        )
    }
    plan = build_plan(old, new)
    text = render_plan_text(plan)
    blob = json.dumps(plan_to_json(plan))
    assert f"~ spec.secret_key: {CHANGED}" in text
    assert f"~ spec.additional_headers.X-Token: {CHANGED}" in text
    for output in (text, blob):
        assert MARKER not in output
        assert "ERP_WEBHOOK_SECRET" not in output
        assert "ERP_TOKEN" not in output
    secret_field = plan_to_json(plan)["changes"][0]["fields"][0]
    assert secret_field == {"path": "spec.secret_key", "action": "change", "sensitive": True}


def test_added_webhook_lists_its_fields_with_secrets_hidden() -> None:
    """An added webhook shows its fields; secret references show as (sensitive value)."""
    text = render_plan_text(build_plan({}, {"a": hook("a")}))
    assert text.splitlines()[0] == "+ a (webhooks.d/a.yaml)"
    assert f"    + spec.secret_key: {REDACTED}" in text
    assert '    + spec.event_type: ["package.created", "package.status.*"]' in text
    assert "ERP_WEBHOOK_SECRET" not in text


def test_removed_webhook_shows_only_its_name_and_old_file() -> None:
    """A removed webhook is one line naming the file it was defined in."""
    text = render_plan_text(build_plan({"a": hook("a")}, {}))
    assert text.splitlines()[0] == "- a (webhooks.d/a.yaml)"
    assert text.splitlines()[1] == ""


def test_literal_credentials_in_plain_strings_are_hidden() -> None:
    """A credential-looking header or a password inside a URL never appears in a plan."""
    old = {"a": hook("a", target_url=f"https://u:{MARKER}@h.example/x")}
    new = {
        "a": hook(
            "a",
            target_url=f"https://u:{MARKER}2@h.example/x",
            additional_headers={"Authorization": f"Bearer {MARKER}"},
        )
    }
    plan = build_plan(old, new)
    text = render_plan_text(plan) + json.dumps(plan_to_json(plan))
    assert MARKER not in text
    assert f"~ spec.target_url: {CHANGED}" in text  # only the hidden password changed


def test_plan_json_carries_counts_and_values() -> None:
    """The JSON plan has counts and, per field, old and new values."""
    plan = build_plan({"a": hook("a")}, {"a": hook("a", target_url="https://b.example/")})
    data = plan_to_json(plan)
    assert (data["add"], data["change"], data["remove"]) == (0, 1, 0)
    assert data["changes"][0]["fields"] == [
        {
            "path": "spec.target_url",
            "action": "change",
            "old": "https://erp.example.com/hooks/oms",
            "new": "https://b.example/",
        }
    ]


def test_moving_a_webhook_to_another_file_is_not_a_change() -> None:
    """Where a webhook is defined does not change what it does, so a move alone plans nothing."""
    moved = replace(hook("a"), source=Source("webhooks.d/other.yaml"))
    assert build_plan({"a": hook("a")}, {"a": moved}).is_empty
