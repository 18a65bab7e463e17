"""``reconcile``'s secret-source rules over a loaded tree: where a pull request makes secrets come from.

They run in ``reconcile`` only, not in the loader the dispatcher shares: the dispatcher enforces its own
policy when it resolves a reference (one webhook's refused secret fails that webhook's attempts, it does not
freeze the whole table). Only the files of webhooks with a finding are parsed again, for positions.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from reconciler.loader import TreeResult, load_tree
from reconciler.model import Diagnostic, Webhook
from reconciler.rules import check_secret_sources
from reconciler.secretsources import SecretSources, has_parent_step
from reconciler.yamlsource import decode_source, parse_source


def load_tree_checked(directory: str | Path, sources: SecretSources) -> TreeResult:
    """``load_tree`` plus the secret-source diagnostics of its valid webhooks."""
    return add_secret_findings(load_tree(directory), sources)


def add_secret_findings(tree: TreeResult, sources: SecretSources) -> TreeResult:
    """``tree`` with the secret-source diagnostics of its webhooks added, in place order."""
    wanted: dict[str, set[int]] = {}
    for hook in tree.webhooks:
        if _suspect(hook, sources):
            wanted.setdefault(hook.source.file, set()).add(hook.source.document)
    found: list[Diagnostic] = []
    for file, documents in wanted.items():
        try:
            text = decode_source(Path(file).read_bytes(), file)
        except OSError:
            continue  # the loader read it a moment ago; a file gone since has nothing left to judge
        if isinstance(text, Diagnostic):
            continue
        for doc in parse_source(text, file).documents:
            if doc.index in documents:
                found.extend(check_secret_sources(doc, file, sources))
    if not found:
        return tree
    diagnostics = sorted((*tree.diagnostics, *found), key=lambda d: (d.file, d.line, d.column))
    return dataclasses.replace(tree, diagnostics=tuple(diagnostics), errors=None)


def _suspect(hook: Webhook, sources: SecretSources) -> bool:
    for ref in hook.secret_refs():
        if ref.source == "env" and not sources.env_allowed(ref.name):
            return True
        if ref.source == "file" and (
            has_parent_step(ref.name) or (ref.name.startswith("/") and not sources.lexically_inside(ref.name))
        ):
            return True
    return False
