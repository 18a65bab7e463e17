"""How much work one webhook file may cause: the budgets that keep a small hostile file from a runaway.

A file under a kilobyte can ask for a billion nodes through YAML aliases, or for a number with ten thousand
digits; a committed file can be a huge blob. Each limit, when passed, is a located diagnostic with its own
rule id (``file-too-large``, ``yaml-alias-budget``, ``yaml-node-budget``, ``yaml-depth``), never an exception.
Numbers have fixed bounds, not budgets (see ``reconciler.yamlsource``: 64-bit integers, finite floats).
"""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-file budgets for loading a ``webhooks.d/`` tree (the defaults suit any real webhook file)."""

    #: Bytes per file, checked before the file is read (``reconcile --max-file-bytes``).
    max_file_bytes: int = MIB
    #: Aliases (``*name``) followed per file.
    max_aliases: int = 10_000
    #: Nodes that following aliases adds to a file's data (where an alias bomb multiplies).
    max_alias_nodes: int = 100_000
    #: Nodes a file may hold in all (scalars, mappings, lists, aliases expanded); a webhook has about 50.
    max_nodes: int = 200_000
    #: Nesting of mappings and sequences.
    max_depth: int = 64

    def __post_init__(self) -> None:
        for name in ("max_file_bytes", "max_aliases", "max_alias_nodes", "max_nodes", "max_depth"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


DEFAULT_LIMITS = Limits()
