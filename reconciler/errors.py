"""Exceptions of the reconciler. Problems in webhook files are *data* (``Diagnostic``), not exceptions;
exceptions are for what stops a run altogether.

    ReconcilerError
    ├── SchemaError        the bundled schema or catalogue cannot be read (an installation problem)
    └── RevisionError      ``--against`` names a tree that cannot be read (no such directory or git revision)
"""

from __future__ import annotations


class ReconcilerError(Exception):
    """Root of every exception the reconciler raises on purpose."""


class SchemaError(ReconcilerError):
    """The bundled JSON Schema or event catalogue is missing or malformed."""


class RevisionError(ReconcilerError):
    """A tree to compare against cannot be read."""
