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
"""

from __future__ import annotations

import binascii
from typing import Any

import jwt
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
