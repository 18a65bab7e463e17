from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from dispatcher.signing import (
    delivery_headers,
    standard_signature,
    verify_standard,
    verify_whisperer,
    whisperer_signature,
)

MSG_ID = "c9591f0d1c1d4da58ade880921bd7e93"
BODY = b'{"event": {"type": "package.created", "uuid": "%s"}, "payload": {"id": 7}}' % MSG_ID.encode()


def random_whsec() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def hand_standard(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def test_reference_library_verifies_our_headers_for_a_whsec_secret() -> None:
    """The Standard Webhooks reference library accepts the headers we send for a whsec_ secret."""
    secret = random_whsec()
    headers = delivery_headers(
        event_type="package.created", msg_id=MSG_ID, timestamp=int(time.time()), body=BODY, secret=secret
    )
    assert Webhook(secret).verify(BODY, headers, json_parse=False) is None


def test_reference_library_rejects_a_tampered_body() -> None:
    """Changing one byte of the body makes the reference library refuse our signature."""
    secret = random_whsec()
    headers = delivery_headers(
        event_type="package.created", msg_id=MSG_ID, timestamp=int(time.time()), body=BODY, secret=secret
    )
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY.replace(b"7}", b"8}"), headers, json_parse=False)


def test_unpadded_whsec_secret_signs_like_the_reference_library() -> None:
    """A whsec_ secret without base64 padding is decoded as the reference library decodes it."""
    secret = random_whsec().rstrip("=")
    timestamp = int(time.time())
    headers = delivery_headers(event_type="x", msg_id=MSG_ID, timestamp=timestamp, body=BODY, secret=secret)
    Webhook(secret).verify(BODY, headers, json_parse=False)


def test_whsec_key_is_the_base64_decoded_secret() -> None:
    """For a whsec_ secret the HMAC key is the base64-decoded part after the prefix."""
    key = os.urandom(24)
    secret = "whsec_" + base64.b64encode(key).decode()
    assert standard_signature(secret, MSG_ID, 1700000000, BODY) == hand_standard(
        key, MSG_ID, 1700000000, BODY
    )


def test_plain_secret_standard_signature_uses_utf8_bytes() -> None:
    """A secret without the whsec_ prefix is used as its UTF-8 bytes for the Standard Webhooks HMAC."""
    secret = "s3cr\u00e9t-plain"
    expected = hand_standard(secret.encode("utf-8"), MSG_ID, 1700000000, BODY)
    assert standard_signature(secret, MSG_ID, 1700000000, BODY) == expected


def test_whisperer_signature_is_hex_hmac_sha256_of_the_body() -> None:
    """X-Whisperer-Signature is sha256= followed by the hex HMAC-SHA256 of the raw body."""
    secret = "erp-secret"
    expected = "sha256=" + hmac.new(b"erp-secret", BODY, hashlib.sha256).hexdigest()
    assert whisperer_signature(secret, BODY) == expected


def test_delivery_headers_with_a_secret_come_in_the_documented_order() -> None:
    """With a secret every header is present, in the order of SPEC section 5."""
    headers = delivery_headers(
        event_type="package.created", msg_id=MSG_ID, timestamp=1700000000, body=BODY, secret="k"
    )
    assert list(headers) == [
        "Content-Type",
        "X-Whisperer-Event",
        "X-Whisperer-Signature",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    ]
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Whisperer-Event"] == "package.created"
    assert headers["webhook-id"] == MSG_ID
    assert headers["webhook-timestamp"] == "1700000000"
    assert headers["X-Whisperer-Signature"] == "sha256=" + hmac.new(b"k", BODY, hashlib.sha256).hexdigest()
    assert headers["webhook-signature"] == hand_standard(b"k", MSG_ID, 1700000000, BODY)


def test_delivery_headers_without_a_secret_carry_no_signature() -> None:
    """Without a secret the event, id and timestamp headers are sent but no signature header."""
    headers = delivery_headers(event_type="a.b", msg_id=MSG_ID, timestamp=1, body=BODY, secret=None)
    assert list(headers) == ["Content-Type", "X-Whisperer-Event", "webhook-id", "webhook-timestamp"]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("sha256=" + hmac.new(b"k", BODY, hashlib.sha256).hexdigest(), True),
        ("sha256=" + hmac.new(b"other", BODY, hashlib.sha256).hexdigest(), False),
        (hmac.new(b"k", BODY, hashlib.sha256).hexdigest(), False),
        ("sha256=", False),
        ("", False),
        (None, False),
        ("sha256=\u00e9\u00e9", False),
    ],
)
def test_verify_whisperer(header: str | None, expected: bool) -> None:
    """verify_whisperer accepts exactly the sha256=<hex HMAC> of the body under the secret."""
    assert verify_whisperer("k", BODY, header) is expected


def test_verify_standard_accepts_what_we_sign_with_a_plain_secret() -> None:
    """Our verifier accepts our own signature for a plain (non-whsec_) secret."""
    headers = delivery_headers(event_type="x", msg_id=MSG_ID, timestamp=1700000000, body=BODY, secret="plain")
    assert verify_standard(
        "plain", MSG_ID, headers["webhook-timestamp"], BODY, headers["webhook-signature"], now=1700000010
    )


def test_verify_standard_accepts_a_hand_made_signature() -> None:
    """Our verifier accepts a signature computed independently with hmac and base64."""
    key = os.urandom(32)
    secret = "whsec_" + base64.b64encode(key).decode()
    signature = hand_standard(key, MSG_ID, 1700000000, BODY)
    assert verify_standard(secret, MSG_ID, "1700000000", BODY, signature, now=1700000000)


def test_verify_standard_accepts_one_good_signature_among_several() -> None:
    """During key rotation the header lists several signatures; one match is enough."""
    good = hand_standard(b"new", MSG_ID, 1700000000, BODY)
    stale = hand_standard(b"old", MSG_ID, 1700000000, BODY)
    header = f"v1a,AAAA {stale} {good}"
    assert verify_standard("new", MSG_ID, "1700000000", BODY, header, now=1700000000)


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (1700000000 + 300, True),
        (1700000000 - 300, True),
        (1700000000 + 301, False),
        (1700000000 - 301, False),
    ],
)
def test_verify_standard_enforces_the_timestamp_tolerance(now: float, expected: bool) -> None:
    """A timestamp more than 300 s away from now, in either direction, is refused."""
    signature = hand_standard(b"k", MSG_ID, 1700000000, BODY)
    assert verify_standard("k", MSG_ID, "1700000000", BODY, signature, now=now) is expected


def test_verify_standard_tolerance_is_configurable() -> None:
    """tolerance_seconds widens the replay window."""
    signature = hand_standard(b"k", MSG_ID, 1700000000, BODY)
    assert verify_standard("k", MSG_ID, "1700000000", BODY, signature, now=1700003600, tolerance_seconds=3600)


@pytest.mark.parametrize(
    ("msg_id", "timestamp", "body", "signature"),
    [
        ("other-id", "1700000000", BODY, None),
        (MSG_ID, "1700000001", BODY, None),
        (MSG_ID, "1700000000", BODY + b" ", None),
        (MSG_ID, "not-a-number", BODY, None),
        (MSG_ID, "1700000000", BODY, "v2,abc"),
        (MSG_ID, "1700000000", BODY, ""),
        (None, "1700000000", BODY, None),
        (MSG_ID, None, BODY, None),
    ],
)
def test_verify_standard_rejects_mismatches(
    msg_id: str | None, timestamp: str | None, body: bytes, signature: str | None
) -> None:
    """A different id, timestamp or body, a garbled timestamp or a missing part fails verification."""
    header = signature if signature is not None else hand_standard(b"k", MSG_ID, 1700000000, BODY)
    assert not verify_standard("k", msg_id, timestamp, body, header, now=1700000000)
