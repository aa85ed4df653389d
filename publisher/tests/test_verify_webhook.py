"""verify_webhook: accepts what the server signs (webhooks/signing.py), refuses everything else."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from backstage_publisher import WebhookVerificationError, verify_webhook
from webhooks.signing import signature_header

SECRET = "s" * 40
OLD = "o" * 40
BODY = json.dumps({"id": "evt_1", "type": "message.created", "created_at": "x", "data": {"n": 1}}).encode()
NOW = 1_800_000_000


def headers(value: str) -> dict[str, str]:
    return {"backstage-signature": value, "Content-Type": "application/json"}


def test_accepts_the_servers_signature_with_any_header_case_and_str_body() -> None:
    event = verify_webhook(SECRET, headers(signature_header([SECRET], NOW, BODY)), BODY, now=NOW)
    assert event["id"] == "evt_1" and event["data"] == {"n": 1}
    h = {"Backstage-Signature": signature_header([SECRET], NOW, BODY)}
    assert verify_webhook(SECRET, h, BODY.decode(), now=NOW + 299)["type"] == "message.created"


def test_rotation_either_secret_matches() -> None:
    both = signature_header([SECRET, OLD], NOW, BODY)  # the server signs with every configured secret
    assert verify_webhook(OLD, headers(both), BODY, now=NOW)["id"] == "evt_1"
    assert verify_webhook([SECRET, OLD], headers(signature_header([OLD], NOW, BODY)), BODY, now=NOW)


@pytest.mark.parametrize("case", ["tampered body", "wrong secret", "old", "future", "no header", "no v1",
                                  "bad t", "signature of another timestamp"])
def test_refuses(case: str) -> None:
    good = signature_header([SECRET], NOW, BODY)
    body, secret, now, h = BODY, SECRET, NOW, headers(good)
    if case == "tampered body":
        body = BODY.replace(b'"n": 1', b'"n": 2')
    elif case == "wrong secret":
        secret = "x" * 40
    elif case == "old":
        now = NOW + 301
    elif case == "future":
        now = NOW - 301
    elif case == "no header":
        h = {}
    elif case == "no v1":
        h = headers(f"t={NOW}")
    elif case == "bad t":
        h = headers(good.replace(f"t={NOW}", "t=abc"))
    elif case == "signature of another timestamp":
        h = headers(f"t={NOW + 1}," + good.split(",", 1)[1])
    with pytest.raises(WebhookVerificationError):
        verify_webhook(secret, h, body, now=now)


def test_the_scheme_is_hmac_sha256_of_timestamp_dot_body() -> None:
    digest = hmac.new(SECRET.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert verify_webhook(SECRET, headers(f"t={NOW},v1={digest}"), BODY, now=NOW)["id"] == "evt_1"
    assert signature_header([SECRET], NOW, BODY) == f"t={NOW},v1={digest}"
    with pytest.raises(ValueError):
        verify_webhook("", headers(f"t={NOW},v1={digest}"), BODY, now=NOW)
