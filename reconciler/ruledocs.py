"""What each rule id means: a one-line summary and a help text, for reporters that describe their rules.

SARIF (``reconcile --format sarif``) lists every rule in ``tool.driver.rules`` so code scanning can show what
an alert is about and how to fix it. The ids are the stable ones the loader and the rules emit; a rule added
without an entry here is still reported, with ``describe`` making up a plain entry for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.model import Severity


@dataclass(frozen=True)
class RuleDoc:
    """One rule id: its default severity, a one-line summary and a help text saying how to fix it."""

    id: str
    severity: Severity
    summary: str
    help: str


_E, _W = Severity.ERROR, Severity.WARNING

RULE_DOCS: dict[str, RuleDoc] = {
    doc.id: doc
    for doc in (
        RuleDoc(
            "schema",
            _E,
            "The document does not match schemas/webhook.v1.json",
            "A field is missing, unknown, of the wrong type or out of range. The message names the field and "
            "what it takes; schemas/webhook.v1.json describes every field.",
        ),
        RuleDoc(
            "yaml-syntax",
            _E,
            "The file is not valid YAML",
            "Fix the YAML at the position shown (indentation, an unclosed quote or bracket, a tab). A "
            "recursive alias or a merge key without a mapping is reported here too.",
        ),
        RuleDoc(
            "yaml-tag",
            _E,
            "An unsupported YAML tag",
            "Webhook files are plain data: remove the tag (such as !!python/object or !!binary), or write "
            "the value as a plain string, number, list or mapping.",
        ),
        RuleDoc(
            "duplicate-key",
            _E,
            "A mapping repeats a key",
            "YAML keeps only one of the values of a repeated key; remove or rename one of them.",
        ),
        RuleDoc(
            "invalid-number",
            _E,
            "A number that is not finite",
            ".inf and .nan are not allowed: write a finite number.",
        ),
        RuleDoc(
            "encoding",
            _E,
            "The file is not valid UTF-8",
            "Save the file as UTF-8; the position shown is the first invalid byte.",
        ),
        RuleDoc(
            "number-range",
            _E,
            "A number outside the range a webhook field can hold",
            "Integers must fit in 64 bits (-2**63 to 2**63 - 1) and floats must not overflow to infinity; "
            "no webhook field needs more. Write a smaller number.",
        ),
        RuleDoc(
            "file-too-large",
            _E,
            "The file is larger than the per-file size limit",
            "The file was not read. A webhook file is a few hundred bytes: split the file, or raise the "
            "limit with reconcile --max-file-bytes if it really must be this large.",
        ),
        RuleDoc(
            "yaml-alias-budget",
            _E,
            "YAML aliases expand to too much data (an alias bomb?)",
            "Aliases (*name) repeat the anchored data wherever they appear; this file follows too many, or "
            "they expand to too many nodes. Write the values out, or use fewer levels of aliases.",
        ),
        RuleDoc(
            "yaml-node-budget",
            _E,
            "The file holds too many YAML nodes",
            "Far more values than any webhook needs; the file was not built. Split it or shrink it.",
        ),
        RuleDoc(
            "yaml-depth",
            _E,
            "Mappings and lists nested too deeply",
            "No webhook field nests this deep; flatten the structure.",
        ),
        RuleDoc(
            "symlink-outside",
            _E,
            "A symlink in the config tree resolves outside it",
            "Its target was not read: a webhook file can never make the tools read another file. Replace "
            "the link with the file itself, or point it inside the tree (as a Kubernetes ConfigMap does).",
        ),
        RuleDoc(
            "not-a-regular-file",
            _E,
            "A .yaml/.yml name in the config tree is a FIFO, socket or device",
            "It was not opened (opening a FIFO blocks until something writes to it), so the tree cannot be "
            "checked or applied. Replace it with a regular file, or rename it so it does not end in .yaml "
            "or .yml.",
        ),
        RuleDoc(
            "io",
            _E,
            "A file or directory cannot be read",
            "Check that the path exists and is readable by the user running reconcile.",
        ),
        RuleDoc(
            "empty-document",
            _W,
            "An empty YAML document",
            "The file or a '---' document holds nothing; remove it or fill it in.",
        ),
        RuleDoc(
            "unknown-api-version",
            _E,
            "An apiVersion this reconciler does not read",
            "Webhook files use 'apiVersion: webhooks/v1'.",
        ),
        RuleDoc(
            "unknown-kind",
            _E,
            "A kind this reconciler does not read",
            "Use 'kind: Webhook' for a webhook or 'kind: EventTypes' to extend the event catalogue.",
        ),
        RuleDoc(
            "literal-secret",
            _E,
            "A secret written into the file",
            "Secrets never go into Git. Replace the value with a reference, {env: NAME} or {file: PATH}, and "
            "rotate the secret: it is in the history now.",
        ),
        RuleDoc(
            "secret-path-traversal",
            _E,
            "A {file:} secret path with '..' in it",
            "The dispatcher never follows '..' in a secret path. Name the file relative to the secrets "
            "directory ({file: erp-secret}) or give an absolute path inside it.",
        ),
        RuleDoc(
            "secret-path-outside",
            _W,
            "A {file:} secret outside the secrets directories",
            "The dispatcher reads {file:} secrets only inside its --secrets-dir directories (default "
            "$CREDENTIALS_DIRECTORY, else /run/secrets). Move the file there and name it relatively, or ask "
            "the operator to add its directory with --secrets-dir.",
        ),
        RuleDoc(
            "secret-env-pattern",
            _W,
            "An {env:} secret whose name no --secret-env pattern allows",
            "The dispatcher reads only environment variables matching its --secret-env globs (default "
            "WEBHOOK_*). Rename the variable to fit, or ask the operator to allow it.",
        ),
        RuleDoc(
            "url-credentials",
            _E,
            "A URL with user:password@ in it",
            "Remove the credentials from the URL; use config.auth or a header with a secret reference.",
        ),
        RuleDoc(
            "invalid-url",
            _E,
            "A URL that cannot be parsed or has no host",
            "Write an absolute https:// URL with a host name (and a valid port, if any).",
        ),
        RuleDoc(
            "url-query-secret",
            _W,
            "A URL whose query looks like it carries a credential",
            "Anyone who can read the repository can use a token in a URL. Send it in a header whose value is "
            "a secret reference instead.",
        ),
        RuleDoc(
            "insecure-url",
            _W,
            "An http:// URL",
            "Deliveries and credentials would travel unencrypted; use https://.",
        ),
        RuleDoc(
            "private-address",
            _W,
            "A URL pointing at a loopback or private address",
            "The dispatcher's egress guard refuses such addresses unless the operator allows them with "
            "--allow-cidr. Use a public address, or ask for the network to be allowed.",
        ),
        RuleDoc(
            "reserved-header",
            _E,
            "A header the dispatcher sets itself",
            "Content-Type, Content-Length, Host, X-Whisperer-Event, X-Whisperer-Signature, webhook-id, "
            "webhook-timestamp and webhook-signature are set on every delivery and cannot be overridden: "
            "remove it from additional_headers.",
        ),
        RuleDoc(
            "hop-by-hop-header",
            _E,
            "A hop-by-hop header",
            "Connection, Keep-Alive, Transfer-Encoding, Upgrade and the like belong to one connection, not "
            "to a webhook: remove it from additional_headers.",
        ),
        RuleDoc(
            "header-injection",
            _E,
            "A header name or value with a line break or NUL",
            "A line break would start a new header; write the header on one line.",
        ),
        RuleDoc(
            "duplicate-header",
            _E,
            "The same header twice, in different case",
            "Header names ignore case: keep one of them.",
        ),
        RuleDoc(
            "auth-header-conflict",
            _W,
            "An Authorization header next to config.auth",
            "config.auth replaces the Authorization header on every delivery; keep only one of the two.",
        ),
        RuleDoc(
            "retry-never",
            _W,
            "A retry configuration that never retries",
            "With max_attempts: 1 a delivery goes dead after its first failed attempt. Raise max_attempts "
            "unless that is what you want.",
        ),
        RuleDoc(
            "retry-bounds",
            _E,
            "A retry configuration outside sane bounds",
            "A single delay or the whole schedule is too long (or random's min_value exceeds max_value): add "
            "a limit, or lower the delays or max_attempts.",
        ),
        RuleDoc(
            "duplicate-name",
            _E,
            "A metadata.name used twice in the directory",
            "Names identify webhooks across the directory (deliveries are recorded by name): rename one.",
        ),
        RuleDoc(
            "unknown-event-type",
            _W,
            "An event_type that matches no known event type",
            "Check the spelling against schemas/events.v1.json (the message suggests the closest name), or "
            "add the event type to the catalogue with a 'kind: EventTypes' document.",
        ),
    )
}


def describe(rule: str, severity: Severity = Severity.ERROR) -> RuleDoc:
    """The documentation of ``rule``, or a plain entry for a rule id without one."""
    return RULE_DOCS.get(rule) or RuleDoc(
        rule, severity, f"Rule {rule}", f"See the message for what {rule} found."
    )
