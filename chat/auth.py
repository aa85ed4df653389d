"""Client JWTs (SPEC §2) and server API keys."""

from __future__ import annotations

import hmac
import re
import time
from collections import OrderedDict
from dataclasses import dataclass

import jwt

from chat import jwtcheck
from chat.config import Settings
from chat.errors import Unauthorized

USER_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")  # \Z: "$" would accept a trailing newline
ASYMMETRIC_ALGORITHMS = ["RS256", "ES256"]
# Verified client tokens kept per process (raw token -> identity, exp): a reconnect, a second
# socket of the same client or a refresh with the same token skips the signature check and the
# claim parsing. An entry is only used while its `exp` is in the future (the check PyJWT does),
# so the cache never accepts a token the decoder would refuse: the key never changes while the
# process runs, and the decoder checks nothing else that time can make fail.
VERIFIED_TOKENS_SIZE = 20_000
VERIFIED_TOKEN_MAX_LEN = 2048  # longer tokens are verified every time, not kept


@dataclass(frozen=True)
class Identity:
    user_id: str
    name: str | None


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        if settings.jwt_public_key:
            self._key: str = settings.jwt_public_key
            self._algorithms = ASYMMETRIC_ALGORITHMS
        elif settings.jwt_secret:
            self._key = settings.jwt_secret
            self._algorithms = ["HS256"]
        else:
            raise ValueError("JWT_SECRET or JWT_PUBLIC_KEY is required")
        # jwt.decode's checks, without re-validating the HS256 secret per token (chat/jwtcheck.py),
        # and the common HS256 token without PyJWT's generic path
        hs256 = self._algorithms == ["HS256"]
        self._jwt = jwtcheck.decoder(self._key if hs256 else None)
        self._fast: jwtcheck.HS256Claims | None = None
        if hs256:
            try:
                self._fast = jwtcheck.HS256Claims(self._key)
            except jwt.InvalidKeyError:
                pass
        self._api_keys = [k.encode() for k in settings.api_keys]
        self._secret = settings.jwt_secret
        self._verified: OrderedDict[str, tuple[Identity, float]] = OrderedDict()

    def client(self, token: object) -> Identity:
        """The identity in a client token; Unauthorized for anything not valid and unexpired."""
        return self.client_with_expiry(token)[0]

    def client_with_expiry(self, token: object) -> tuple[Identity, float]:
        """client(), and the token's `exp` (unix seconds): a socket is closed then (chat/sockets.py)."""
        if not isinstance(token, str) or not token or len(token) > 8192:
            raise Unauthorized("missing or malformed token")
        known = self._verified.get(token)
        if known is not None:
            if int(known[1]) <= time.time():  # PyJWT's exp check: expired at int(exp)
                del self._verified[token]
                raise Unauthorized("token expired")
            self._verified.move_to_end(token)
            return known
        claims = self._fast.claims(token, time.time()) if self._fast is not None else None
        if claims is None:
            try:
                claims = self._jwt.decode(
                    token, self._key, algorithms=self._algorithms,
                    options={"require": ["exp", "sub"]},
                )
            except jwt.ExpiredSignatureError:
                raise Unauthorized("token expired") from None
            except jwt.PyJWTError:
                raise Unauthorized("invalid token") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not USER_ID_RE.match(sub):
            raise Unauthorized("invalid subject")
        name = claims.get("name")
        if not isinstance(name, str) or not name.strip():
            name = None
        verified = Identity(sub, name.strip()[:200] if name else None), float(claims["exp"])
        if len(token) <= VERIFIED_TOKEN_MAX_LEN:
            self._verified[token] = verified
            if len(self._verified) > VERIFIED_TOKENS_SIZE:
                self._verified.popitem(last=False)
        return verified

    def server(self, key: str | None) -> bool:
        """True when `key` is one of API_KEYS; every key is compared, in constant time."""
        if not key or not self._api_keys:
            return False
        candidate = key.encode()
        found = False
        for k in self._api_keys:
            found |= hmac.compare_digest(candidate, k)
        return found

    def issue(self, user_id: str, name: str | None = None, ttl: int = 86400) -> str:
        """A client token signed with JWT_SECRET (the `token` command and --demo)."""
        if not self._secret:
            raise ValueError("issuing tokens needs JWT_SECRET")
        if not USER_ID_RE.match(user_id):
            raise ValueError("user id must be 1-64 characters of [A-Za-z0-9_-]")
        claims: dict[str, object] = {"sub": user_id, "exp": int(time.time()) + ttl}
        if name:
            claims["name"] = name
        return jwt.encode(claims, self._secret, algorithm="HS256")


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None
