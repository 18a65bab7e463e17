"""Signatures on every delivery (SPEC section 5), and the matching checks for ``dispatch receive``.

Two schemes are sent side by side:

- ``X-Whisperer-Signature: sha256=<hex>``: HMAC-SHA256 of the raw body, what dj-whisperer sends and what the
  OMS's existing receivers verify;
- Standard Webhooks (``webhook-id``, ``webhook-timestamp``, ``webhook-signature: v1,<base64>``): HMAC-SHA256
  of ``id.timestamp.body``, so receivers using the reference libraries verify us and get replay protection.

Pure functions: the timestamp and ``now`` are arguments.
"""

from __future__ import annotations

import base64
import hmac

WHSEC_PREFIX = "whsec_"


def whisperer_signature(secret: str, body: bytes) -> str:
    """``sha256=`` + hex HMAC-SHA256 of the body keyed with the secret's UTF-8 bytes."""
    # hmac.digest is OpenSSL's one-shot HMAC: several times cheaper than building an hmac.HMAC object.
    return "sha256=" + hmac.digest(secret.encode("utf-8"), body, "sha256").hex()


def standard_key(secret: str) -> bytes:
    """The HMAC key a Standard Webhooks secret stands for.

    A ``whsec_`` secret carries base64 key bytes (decoded exactly as the reference library does, padding added
    so unpadded secrets work); any other secret is used as its UTF-8 bytes, so one plain secret can serve both
    schemes.
    """
    if secret.startswith(WHSEC_PREFIX):
        return base64.b64decode(secret[len(WHSEC_PREFIX) :] + "==")
    return secret.encode("utf-8")


def standard_signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,`` + base64 HMAC-SHA256 of ``f"{msg_id}.{timestamp}."`` + body."""
    return "v1," + _standard_digest(standard_key(secret), msg_id, timestamp, body)


def _standard_digest(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return base64.b64encode(hmac.digest(key, signed, "sha256")).decode("ascii")


def delivery_headers(
    *, event_type: str, msg_id: str, timestamp: int, body: bytes, secret: str | None
) -> dict[str, str]:
    """The headers every attempt carries, in a stable order; signature headers only when a secret is set."""
    headers = {"Content-Type": "application/json", "X-Whisperer-Event": event_type}
    if secret is not None:
        headers["X-Whisperer-Signature"] = whisperer_signature(secret, body)
    headers["webhook-id"] = msg_id
    headers["webhook-timestamp"] = str(timestamp)
    if secret is not None:
        headers["webhook-signature"] = standard_signature(secret, msg_id, timestamp, body)
    return headers


def verify_whisperer(secret: str, body: bytes, header: str | None) -> bool:
    """Whether ``header`` is the whisperer signature of ``body`` (constant-time compare)."""
    if not header:
        return False
    expected = whisperer_signature(secret, body)
    return hmac.compare_digest(expected.encode("ascii"), header.strip().encode("utf-8", "replace"))


def verify_standard(
    secret: str,
    msg_id: str | None,
    timestamp_header: str | None,
    body: bytes,
    signature_header: str | None,
    *,
    now: float,
    tolerance_seconds: int = 300,
) -> bool:
    """Whether any ``v1,`` signature in the space-separated header signs this message, and the timestamp is
    within ``tolerance_seconds`` of ``now`` in either direction (the reference libraries' replay window)."""
    if not (msg_id and timestamp_header and signature_header):
        return False
    try:
        timestamp = int(timestamp_header.strip())
    except ValueError:
        return False
    if abs(now - timestamp) > tolerance_seconds:
        return False
    expected = _standard_digest(standard_key(secret), msg_id, timestamp, body).encode("ascii")
    # A sender rotating keys signs with several; one match is enough. Other versions (v1a = ed25519) are
    # skipped, as the reference library does.
    for candidate in signature_header.split():
        version, _, signature = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(expected, signature.encode("utf-8", "replace")):
            return True
    return False
