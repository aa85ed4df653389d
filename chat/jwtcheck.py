"""PyJWT's decoder with two per-token costs taken out; the same checks and the same errors.

A connect storm verifies thousands of new client tokens (chat/auth.py). Profiled, PyJWT 2.15
spent most of a decode on two things that never change the outcome for a given input:

- `HMACAlgorithm.prepare_key` re-validated JWT_SECRET on every decode (not a PEM, SSH or DER
  key, not JSON): `PreparedHMAC` does it once, at start-up, and hands the prepared bytes back
  whenever it is asked about the same secret object again.
- `PyJWS._decode_base64url_segment` checked each segment's alphabet one byte at a time in a
  Python generator (~60 % of a decode): `_Segments` does the same check with `bytes.translate`
  (in C) and otherwise the same steps, in the same order, raising the same `DecodeError`s.

Everything else (header and claim parsing, `exp`/`nbf`/`iat`/`aud`/`sub` checks, `require`,
algorithm allow-list, signature comparison) is PyJWT's own code. Both classes override PyJWT
internals, so requirements.txt pins PyJWT; tests/test_auth.py compares this decoder with stock
PyJWT on valid, tampered and malformed tokens.

`HS256Claims` goes further for the one shape nearly every client token has: a header that is
one of `HS256_HEADERS` byte for byte, a signature equal (`hmac.compare_digest`) to the HS256
of the signing input under JWT_SECRET, a canonical base64url payload holding a JSON object
whose `exp`, `nbf` and `iat` are plain ints PyJWT would accept now, a str `sub`, no `aud` and
a str `jti` if any: it returns those claims without PyJWT's generic path (one C HMAC, one
orjson parse). Any other token, valid or not, gets None and PyJWT decides, so every refusal
and its error are PyJWT's own (tests/test_auth.py compares both on the refusal matrix).
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Any

import jwt
import orjson
from jwt.algorithms import HMACAlgorithm
from jwt.api_jws import PyJWS
from jwt.exceptions import DecodeError, InvalidKeyError
from jwt.utils import base64url_decode, base64url_encode

BASE64URL_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


class PreparedHMAC(HMACAlgorithm):
    """HS256 whose secret was validated once: `prepare_key(secret)` is free for that secret."""

    def __init__(self, secret: str) -> None:
        super().__init__(HMACAlgorithm.SHA256)
        self._secret = secret
        self._prepared = super().prepare_key(secret)  # InvalidKeyError for a key-shaped secret

    def prepare_key(self, key: str | bytes) -> bytes:
        if key is self._secret:
            return self._prepared
        return super().prepare_key(key)


class _Segments(PyJWS):
    """PyJWS with the base64url segment check of PyJWT 2.15 done in C (same results)."""

    @staticmethod
    def _decode_base64url_segment(segment: bytes, name: str) -> bytes:
        padding = 0
        stripped = segment
        while stripped.endswith(b"="):
            stripped = stripped[:-1]
            padding += 1
            if padding > 2:
                raise DecodeError(f"Invalid {name} padding")
        if padding and len(segment) % 4 != 0:
            raise DecodeError(f"Invalid {name} padding")
        if len(stripped) % 4 == 1 or stripped.translate(None, BASE64URL_ALPHABET):
            raise DecodeError(f"Invalid {name} padding")
        try:
            decoded = base64url_decode(stripped)
        except (TypeError, binascii.Error) as err:
            raise DecodeError(f"Invalid {name} padding") from err
        if base64url_encode(decoded) != stripped:
            raise DecodeError(f"Invalid {name} padding")
        return decoded


def decoder(hs256_secret: str | None) -> jwt.PyJWT:
    """A PyJWT whose `decode` behaves like `jwt.decode`, faster; with `hs256_secret`, passing
    that same str object as the key skips re-validating it (a secret PyJWT would refuse as an
    HMAC key keeps being refused per decode, as before)."""
    out = jwt.PyJWT()
    jws: Any = _Segments(options=out._get_sig_options())
    if hs256_secret:
        try:
            prepared = PreparedHMAC(hs256_secret)
        except InvalidKeyError:
            pass
        else:
            jws.unregister_algorithm("HS256")
            jws.register_algorithm("HS256", prepared)
    out._jws = jws
    return out


# The headers this fast path knows (PyJWT's and jsonwebtoken's own, and the shorter forms):
# alg HS256 and nothing PyJWT looks at (no kid, crit, b64).
HS256_HEADERS = frozenset(base64.urlsafe_b64encode(h.encode()).rstrip(b"=").decode() for h in (
    '{"alg":"HS256","typ":"JWT"}', '{"typ":"JWT","alg":"HS256"}', '{"alg":"HS256"}',
    '{"alg": "HS256", "typ": "JWT"}', '{"typ": "JWT", "alg": "HS256"}'))
_MIN_KEY = 32  # below this PyJWT warns per token (InsecureKeyLengthWarning): it keeps doing so


class HS256Claims:
    """`claims(token, now)`: the claims of a common, valid HS256 token, or None when PyJWT must
    decide (see the module docstring). The caller still checks the claims' meaning (chat/auth.py)."""

    def __init__(self, secret: str) -> None:
        key = secret.encode()  # PyJWT's force_bytes of a str key
        self._key = key if len(key) >= _MIN_KEY else None
        PreparedHMAC(secret)  # InvalidKeyError for a secret PyJWT refuses: no fast path then

    def claims(self, token: str, now: float) -> dict[str, Any] | None:
        key = self._key
        if key is None:
            return None
        head, _, rest = token.partition(".")
        payload, _, signature = rest.partition(".")
        if head not in HS256_HEADERS or not signature or "." in signature or not token.isascii():
            return None
        signing_input = token[:len(head) + 1 + len(payload)].encode()
        expected = base64.urlsafe_b64encode(hmac.digest(key, signing_input, "sha256")).rstrip(b"=")
        if not hmac.compare_digest(expected, signature.encode()):
            return None  # wrong, padded or not canonical: PyJWT says which
        raw = signing_input[len(head) + 1:]
        if len(raw) % 4 == 1 or raw.translate(None, BASE64URL_ALPHABET):
            return None
        try:
            decoded = base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))
            claims = orjson.loads(decoded)
        except (ValueError, binascii.Error):
            return None
        if base64.urlsafe_b64encode(decoded).rstrip(b"=") != raw or not isinstance(claims, dict):
            return None
        exp = claims.get("exp")
        if type(exp) is not int or exp <= now or not isinstance(claims.get("sub"), str) or claims.get("aud"):
            return None
        for name in ("nbf", "iat"):
            if name in claims:
                value = claims[name]
                if type(value) is not int or value > now:
                    return None
        if "jti" in claims and not isinstance(claims["jti"], str):
            return None
        return claims
