"""Identity and access at the door (SPEC §2): client JWTs at socket connect and on HTTP,
RS256/ES256 with JWT_PUBLIC_KEY (and key confusion), server API keys, Origin checks.

Every case runs against a real server process; every refusal is paired with an acceptance
on the same server, so a server that refuses everything (or nothing) fails here.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
import socketio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.support import API_KEY, JWT_SECRET, Api, Client, ServerProcess, fetch, make_token, migrated_sqlite

# HS384/HS512 tokens signed with the (short) HS256 secret are part of the refusal matrix.
pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")

# ---------------------------------------------------------------- keys and hand-made tokens


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segment(obj: dict[str, Any]) -> str:
    return _b64(json.dumps(obj, separators=(",", ":")).encode())


def _claims(sub: str = "alice", ttl: int = 3600, **extra: Any) -> dict[str, Any]:
    return {"sub": sub, "exp": int(time.time()) + ttl, **extra}


def alg_none_token(claims: dict[str, Any]) -> str:
    """Crafted by hand: PyJWT would not produce an unsigned token we could send."""
    return f"{_segment({'alg': 'none', 'typ': 'JWT'})}.{_segment(claims)}."


def hs256_by_hand(claims: dict[str, Any], key: bytes, alg_header: str = "HS256") -> str:
    """HS256 with an arbitrary byte key (PyJWT refuses a PEM as an HMAC secret)."""
    signing_input = f"{_segment({'alg': alg_header, 'typ': 'JWT'})}.{_segment(claims)}"
    sig = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(sig)}"


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_EC_KEY = ec.generate_private_key(ec.SECP256R1())


def _public_pem(key: Any) -> str:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


RSA_PUBLIC_PEM = _public_pem(RSA_KEY)
EC_PUBLIC_PEM = _public_pem(EC_KEY)


def sign(claims: dict[str, Any], key: Any, algorithm: str) -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


# ---------------------------------------------------------------- servers (one per module and config)


def _start(tmp_path_factory: Any, name: str, env: dict[str, str] | None = None) -> ServerProcess:
    db = tmp_path_factory.mktemp(name) / "backstage.db"
    return ServerProcess(migrated_sqlite(db), env=env)


@pytest.fixture(params=["sqlite", "mysql"])
def hs_server(request: Any) -> ServerProcess:
    """The usual configuration (HS256 with JWT_SECRET, API_KEYS=API_KEY, same-origin only): the
    run's shared servers, on SQLite and on MariaDB + Redis (user ids meet MariaDB's collation)."""
    if request.param == "sqlite":
        return request.getfixturevalue("shared_sqlite").servers[0]
    return request.getfixturevalue("shared_mysql_cluster").servers[0]


@pytest.fixture(scope="module")
def rsa_server(tmp_path_factory: Any) -> Iterator[ServerProcess]:
    server = _start(tmp_path_factory, "rsa", {"JWT_PUBLIC_KEY": RSA_PUBLIC_PEM})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ec_server(tmp_path_factory: Any) -> Iterator[ServerProcess]:
    server = _start(tmp_path_factory, "ec", {"JWT_PUBLIC_KEY": EC_PUBLIC_PEM})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def no_keys_server(tmp_path_factory: Any) -> Iterator[ServerProcess]:
    server = _start(tmp_path_factory, "nokeys", {"API_KEYS": ""})
    yield server
    server.stop()


MULTI_KEYS = ["key-one-aaaaaaaa", "key-two-bbbbbbbb", "key-three-cccccc"]
ALLOWED = ["https://app.example", "https://other.example:8443"]


@pytest.fixture(scope="module")
def multi_server(tmp_path_factory: Any) -> Iterator[ServerProcess]:
    server = _start(tmp_path_factory, "multi", {"API_KEYS": " , ".join(MULTI_KEYS),
                                                "ALLOWED_ORIGINS": ",".join(ALLOWED)})
    yield server
    server.stop()


# ---------------------------------------------------------------- helpers


def get_me(server: ServerProcess, authorization: str | None) -> httpx.Response:
    headers = {"Authorization": authorization} if authorization is not None else {}
    return fetch("GET", server.url + "/api/v1/me", headers=headers, timeout=10)


def assert_unauthorized(r: httpx.Response) -> None:
    assert r.status_code == 401, r.text
    assert r.json()["error"]["code"] == "unauthorized", r.text
    assert isinstance(r.json()["error"]["message"], str)


async def assert_socket_refused(url: str, token: Any, *, headers: dict[str, str] | None = None,
                                auth: Any = "unset") -> list[Any]:
    client = Client(url, token, headers=headers)
    errors: list[Any] = []
    client.sio.on("connect_error", lambda data=None: errors.append(data))
    with pytest.raises(socketio.exceptions.ConnectionError):
        if auth == "unset":
            await client.connect()
        else:
            await client.sio.connect(url, auth=auth, headers=headers or {}, transports=["websocket"], wait_timeout=10)
    assert not client.sio.connected
    await client.close()
    http = getattr(client.sio.eio, "http", None)  # the refused handshake leaves its session open
    if http is not None and not http.closed:
        await http.close()
    return errors


async def assert_socket_accepted(url: str, token: str, *, headers: dict[str, str] | None = None) -> None:
    client = await Client(url, token, headers=headers).connect()
    try:
        assert client.sio.connected
        # The connection is usable, not merely open.
        r = await client.call("subscribe", {"channel": f"user:{jwt.decode(token, options={'verify_signature': False})['sub']}"})
        assert r == {"ok": True}, r
    finally:
        await client.close()


# ---------------------------------------------------------------- the HS256 refusal matrix

BAD_TOKENS: dict[str, Any] = {
    "alg_none": lambda: alg_none_token(_claims()),
    "alg_none_uppercase": lambda: f"{_segment({'alg': 'NONE'})}.{_segment(_claims())}.",
    "alg_none_with_signature": lambda: alg_none_token(_claims()) + _b64(b"x" * 32),
    "missing_exp": lambda: jwt.encode({"sub": "alice"}, JWT_SECRET, algorithm="HS256"),
    "exp_not_a_number": lambda: hs256_by_hand({"sub": "alice", "exp": "tomorrow"}, JWT_SECRET.encode()),
    "expired": lambda: make_token("alice", ttl=-30),
    "expired_just_now": lambda: make_token("alice", ttl=-2),
    "not_yet_valid": lambda: jwt.encode({**_claims(), "nbf": int(time.time()) + 3600}, JWT_SECRET, algorithm="HS256"),
    "wrong_key": lambda: make_token("alice", secret="another-secret-0123456789abcdef0123456789"),
    "hs512_right_secret": lambda: jwt.encode(_claims(), JWT_SECRET, algorithm="HS512"),
    "hs384_right_secret": lambda: jwt.encode(_claims(), JWT_SECRET, algorithm="HS384"),
    "rs256_when_server_is_hs256": lambda: sign(_claims(), RSA_KEY, "RS256"),
    "es256_when_server_is_hs256": lambda: sign(_claims(), EC_KEY, "ES256"),
    "hs256_header_says_hs512": lambda: hs256_by_hand(_claims(), JWT_SECRET.encode(), alg_header="HS512"),
    "missing_sub": lambda: jwt.encode({"exp": int(time.time()) + 3600}, JWT_SECRET, algorithm="HS256"),
    "sub_empty": lambda: make_token(""),
    "sub_integer": lambda: hs256_by_hand({"sub": 12345, "exp": int(time.time()) + 3600}, JWT_SECRET.encode()),
    "sub_space": lambda: make_token("ali ce"),
    "sub_slash": lambda: make_token("alice/../bob"),
    "sub_colon": lambda: make_token("user:alice"),
    "sub_unicode": lambda: make_token("alicé"),
    "sub_newline": lambda: make_token("alice\n"),
    "sub_65_chars": lambda: make_token("a" * 65),
    "sub_1000_chars": lambda: make_token("a" * 1000),
    "tampered_payload": lambda: (lambda t: t.split(".")[0] + "." + _segment(_claims("mallory")) + "." + t.split(".")[2])(
        make_token("alice")),
    "signature_stripped": lambda: make_token("alice").rsplit(".", 1)[0] + ".",
    "garbage": lambda: "garbage",
    "garbage_three_parts": lambda: "not.a.jwt",
    "empty_string": lambda: "",
    "whitespace": lambda: "   ",
    "huge": lambda: "a" * 8100,  # under the HTTP header limit, so it reaches the token check
    "huge_over_token_limit": lambda: "a" * 20000,
}
# Not sendable in an HTTP header (clients refuse a header value with trailing spaces, and
# aiohttp answers 400 to a header over 8 KiB before any handler runs).
SOCKET_ONLY = {"empty_string", "whitespace", "huge_over_token_limit"}


@pytest.mark.parametrize("case", list(BAD_TOKENS))
async def test_bad_token_refused_at_socket_connect(hs_server: ServerProcess, case: str) -> None:
    token = BAD_TOKENS[case]()
    errors = await assert_socket_refused(hs_server.url, token)
    # Socket.IO convention (socket.io-client's err.message / err.data): a readable message
    # and the SPEC §5 code in data.
    assert errors and isinstance(errors[0], dict), errors
    assert errors[0].get("data", {}).get("code") == "unauthorized", errors
    assert isinstance(errors[0].get("message"), str) and not errors[0]["message"].startswith("{"), errors


@pytest.mark.parametrize("case", [c for c in BAD_TOKENS if c not in SOCKET_ONLY])
def test_bad_token_refused_on_http(hs_server: ServerProcess, case: str) -> None:
    token = BAD_TOKENS[case]()
    assert_unauthorized(get_me(hs_server, f"Bearer {token}"))


@pytest.mark.parametrize("auth", [None, {}, {"token": None}, {"token": 123}, {"token": ["a"]},
                                  {"token": {"sub": "alice"}}, {"tok": "x"}, "just-a-string"])
async def test_no_or_malformed_auth_refused_at_socket_connect(hs_server: ServerProcess, auth: Any) -> None:
    if isinstance(auth, str):
        # The Socket.IO client only sends objects as auth; a string payload is crafted by
        # passing the token where the auth object should be.
        auth = {"token": auth + "."}
    await assert_socket_refused(hs_server.url, None, auth=auth)


@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Basic YWxpY2U6cHc=",
                                           "Token {good}", "{good}", "Bearer {good} extra"])
def test_no_or_malformed_authorization_refused_on_http(hs_server: ServerProcess, authorization: str | None) -> None:
    good = make_token("alice")
    header = authorization.replace("{good}", good) if authorization is not None else None
    assert_unauthorized(get_me(hs_server, header))


async def test_valid_tokens_accepted(hs_server: ServerProcess) -> None:
    for sub in ("alice", "a", "A-z_0-9", "x" * 64):
        token = make_token(sub, "Alice A.")
        await assert_socket_accepted(hs_server.url, token)
        r = get_me(hs_server, f"Bearer {token}")
        assert r.status_code == 200, r.text
        assert r.json()["user"]["id"] == sub
    # The scheme is case-insensitive (RFC 7235).
    assert get_me(hs_server, f"bearer {make_token('alice')}").status_code == 200


async def test_token_accepted_before_is_refused_once_expired(hs_server: ServerProcess) -> None:
    """The server keeps verified tokens (chat/auth.py): a token it accepted, on a socket and on
    HTTP, is refused with `token expired` on both once its `exp` has passed."""
    exp = int(time.time()) + 2
    token = jwt.encode({"sub": "soon_expired", "exp": exp}, JWT_SECRET, algorithm="HS256")
    await assert_socket_accepted(hs_server.url, token)
    assert get_me(hs_server, f"Bearer {token}").status_code == 200
    await assert_socket_accepted(hs_server.url, token)  # the second time from what was kept
    while time.time() < exp + 0.05:
        await asyncio.sleep(0.05)
    errors = await assert_socket_refused(hs_server.url, token)
    assert errors[0].get("data", {}).get("code") == "unauthorized", errors
    assert "expired" in errors[0]["message"], errors
    assert_unauthorized(get_me(hs_server, f"Bearer {token}"))


async def test_name_claim_is_stored_on_connect(hs_server: ServerProcess) -> None:
    token = make_token("named_user", "Named User")
    await assert_socket_accepted(hs_server.url, token)
    r = get_me(hs_server, f"Bearer {make_token('named_user')}")
    assert r.status_code == 200 and r.json()["user"]["name"] == "Named User", r.text


# ---------------------------------------------------------------- RS256 / ES256 with JWT_PUBLIC_KEY


async def test_rs256_public_key(rsa_server: ServerProcess) -> None:
    good = sign(_claims("rsa_user"), RSA_KEY, "RS256")
    await assert_socket_accepted(rsa_server.url, good)
    r = get_me(rsa_server, f"Bearer {good}")
    assert r.status_code == 200 and r.json()["user"]["id"] == "rsa_user", r.text

    pem = RSA_PUBLIC_PEM.encode()
    refused = {
        # key confusion: the public key used as an HMAC secret
        "hs256_with_public_key_as_secret": hs256_by_hand(_claims("rsa_user"), pem),
        "hs256_with_public_key_as_secret_stripped": hs256_by_hand(_claims("rsa_user"), pem.strip()),
        "hs256_with_jwt_secret": make_token("rsa_user"),
        "rs256_other_key": sign(_claims("rsa_user"), OTHER_RSA_KEY, "RS256"),
        "rs256_expired": sign(_claims("rsa_user", ttl=-30), RSA_KEY, "RS256"),
        "rs256_missing_exp": sign({"sub": "rsa_user"}, RSA_KEY, "RS256"),
        "rs256_bad_sub": sign(_claims("rsa user"), RSA_KEY, "RS256"),
        "rs512_right_key": sign(_claims("rsa_user"), RSA_KEY, "RS512"),
        "ps256_right_key": sign(_claims("rsa_user"), RSA_KEY, "PS256"),
        "es256_unrelated_key": sign(_claims("rsa_user"), EC_KEY, "ES256"),
        "alg_none": alg_none_token(_claims("rsa_user")),
    }
    for case, token in refused.items():
        await assert_socket_refused(rsa_server.url, token)
        r = get_me(rsa_server, f"Bearer {token}")
        assert r.status_code == 401, (case, r.text)
        assert r.json()["error"]["code"] == "unauthorized", (case, r.text)


async def test_es256_public_key(ec_server: ServerProcess) -> None:
    good = sign(_claims("ec_user"), EC_KEY, "ES256")
    await assert_socket_accepted(ec_server.url, good)
    r = get_me(ec_server, f"Bearer {good}")
    assert r.status_code == 200 and r.json()["user"]["id"] == "ec_user", r.text

    refused = {
        "hs256_with_public_key_as_secret": hs256_by_hand(_claims("ec_user"), EC_PUBLIC_PEM.encode()),
        "hs256_with_jwt_secret": make_token("ec_user"),
        "es256_other_key": sign(_claims("ec_user"), OTHER_EC_KEY, "ES256"),
        "es256_expired": sign(_claims("ec_user", ttl=-30), EC_KEY, "ES256"),
        "es384_wrong_curve_for_alg": sign(_claims("ec_user"), ec.generate_private_key(ec.SECP384R1()), "ES384"),
        "rs256_unrelated_key": sign(_claims("ec_user"), RSA_KEY, "RS256"),
        "alg_none": alg_none_token(_claims("ec_user")),
    }
    for case, token in refused.items():
        await assert_socket_refused(ec_server.url, token)
        r = get_me(ec_server, f"Bearer {token}")
        assert r.status_code == 401, (case, r.text)


# ---------------------------------------------------------------- server API keys


def _put_user(server: ServerProcess, authorization: str | None) -> httpx.Response:
    headers = {"Authorization": authorization} if authorization is not None else {}
    return fetch("PUT", server.url + "/api/v1/server/users/keyed", json={"name": "Keyed"}, headers=headers, timeout=10)


def test_no_api_keys_configured_refuses_everyone(no_keys_server: ServerProcess) -> None:
    for auth in (f"Bearer {API_KEY}", "Bearer", "Bearer x", None, f"Bearer {make_token('alice')}"):
        assert_unauthorized(_put_user(no_keys_server, auth))
    r = fetch("POST", no_keys_server.url + "/api/v1/server/publish", headers={"Authorization": f"Bearer {API_KEY}"},
                   json={"channel": "user:a", "event": "e", "data": {}}, timeout=10)
    assert_unauthorized(r)
    # Clients still work on that server.
    assert get_me(no_keys_server, f"Bearer {make_token('alice')}").status_code == 200


def test_api_key_checks(hs_server: ServerProcess) -> None:
    assert _put_user(hs_server, f"Bearer {API_KEY}").status_code == 200
    for auth in (None, "", f"Bearer {API_KEY}x", f"Bearer {API_KEY[:-1]}", f"Bearer {API_KEY.upper()}",
                 f"Basic {API_KEY}", API_KEY, f"Bearer {make_token('alice')}", "Bearer " + "k" * 5000):
        assert_unauthorized(_put_user(hs_server, auth))
    # Every server route checks the key, before looking at the body.
    for method, path, body in (("PUT", "/memberships/a/b", {"tier_cents": 1, "status": "active"}),
                               ("POST", "/rooms", {"creator_id": "a", "name": "r", "min_tier_cents": 0}),
                               ("POST", "/publish", {"channel": "user:a", "event": "e", "data": {}}),
                               ("POST", "/rooms", None)):
        r = fetch(method, hs_server.url + "/api/v1/server" + path, json=body,
                          headers={"Authorization": "Bearer wrong"}, timeout=10)
        assert_unauthorized(r)
    # An API key is not a client credential.
    assert_unauthorized(get_me(hs_server, f"Bearer {API_KEY}"))


def test_several_api_keys(multi_server: ServerProcess) -> None:
    for key in MULTI_KEYS:
        assert _put_user(multi_server, f"Bearer {key}").status_code == 200, key
    for key in (API_KEY, "key-one", MULTI_KEYS[0] + MULTI_KEYS[1], ",".join(MULTI_KEYS), " , ".join(MULTI_KEYS), ","):
        assert_unauthorized(_put_user(multi_server, f"Bearer {key}"))


# ---------------------------------------------------------------- Origin checks (websocket)


async def test_origin_default_same_origin_only(hs_server: ServerProcess) -> None:
    token = make_token("origin_user")
    await assert_socket_refused(hs_server.url, token, headers={"Origin": "https://evil.example"})
    await assert_socket_refused(hs_server.url, token, headers={"Origin": f"http://evil.example:{hs_server.port}"})
    await assert_socket_refused(hs_server.url, token, headers={"Origin": "null"})
    await assert_socket_accepted(hs_server.url, token, headers={"Origin": hs_server.url})
    await assert_socket_accepted(hs_server.url, token)  # no Origin: mobile apps and servers


async def test_origin_allowed_origins(multi_server: ServerProcess) -> None:
    token = make_token("origin_user")
    for origin in ALLOWED:
        await assert_socket_accepted(multi_server.url, token, headers={"Origin": origin})
    await assert_socket_accepted(multi_server.url, token, headers={"Origin": multi_server.url})
    await assert_socket_accepted(multi_server.url, token)
    for origin in ("https://evil.example", "https://app.example.evil.example", "http://app.example",
                   "https://other.example", "http://localhost:3000"):
        await assert_socket_refused(multi_server.url, token, headers={"Origin": origin})


# ---------------------------------------------------------------- user ids are case-sensitive


async def test_user_ids_differing_only_in_case_are_different_users(hs_server: ServerProcess) -> None:
    """SPEC §2: sub is 1-64 chars of [A-Za-z0-9_-], so "casey" and "CASEY" are two people, on
    every database (MariaDB's default collation would compare them as equal)."""
    api = Api(hs_server.url)
    try:
        lower, upper = f"casey_{secrets.token_hex(3)}", None
        upper = lower.upper()
        api.user(lower, "Lower Casey")
        api.user(upper, "Upper Casey")
        me = get_me(hs_server, f"Bearer {make_token(lower)}").json()["user"]
        assert (me["id"], me["name"]) == (lower, "Lower Casey"), me
        me = get_me(hs_server, f"Bearer {make_token(upper)}").json()["user"]
        assert (me["id"], me["name"]) == (upper, "Upper Casey"), me

        room = api.room(lower, "Lower's room", 0)
        r = api.client(make_token(upper), "GET", f"/conversations/{room}/messages")
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", r.text  # not its creator
        assert api.client(make_token(lower), "GET", f"/conversations/{room}/messages").status_code == 200
    finally:
        api.close()


# ---------------------------------------------------------------- chat/jwtcheck.py: PyJWT, faster, same answers


def _outcome(decode: Any, token: Any, key: Any, algorithms: list[str]) -> Any:
    try:
        return decode(token, key, algorithms=algorithms, options={"require": ["exp", "sub"]})
    except Exception as exc:
        return type(exc).__name__, str(exc)


def _segment_variants() -> list[str]:
    """Valid tokens with each segment changed the ways PyJWT 2.15's segment check cares about."""
    head, body, sig = make_token("alice", "Alice").split(".")
    out = []
    for i in range(3):
        for change in (lambda s: s + "=", lambda s: s + "==", lambda s: s + "===", lambda s: s + "!",
                       lambda s: s[:-1] + "+", lambda s: s[:-1] + "/", lambda s: s[:-1], lambda s: s[:-2],
                       lambda s: s + "A", lambda s: "\u00e9" + s, lambda s: s[:4] + " " + s[4:], lambda s: ""):
            parts = [head, body, sig]
            parts[i] = change(parts[i])
            out.append(".".join(parts))
    return out


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_fast_decoder_answers_like_pyjwt() -> None:
    """Every token of the refusal matrix, valid ones and segment edge cases: jwtcheck's decoder
    returns the same claims or raises the same error (type and message) as jwt.decode."""
    from chat.jwtcheck import decoder

    tokens: list[Any] = [make() for make in BAD_TOKENS.values()]
    tokens += [make_token("alice"), make_token("bob", "Bob"), make_token("carol", ttl=5),
               hs256_by_hand(_claims(aud="x"), JWT_SECRET.encode()),
               hs256_by_hand(_claims(iat="yesterday"), JWT_SECRET.encode()),
               hs256_by_hand(_claims(nbf=int(time.time()) - 10), JWT_SECRET.encode()),
               b"not-a-str", None, 12]
    tokens += _segment_variants()
    secret = "".join(JWT_SECRET)  # a str object of its own, as Settings holds
    fast = decoder(secret)
    for token in tokens:
        assert _outcome(fast.decode, token, secret, ["HS256"]) == _outcome(jwt.decode, token, secret, ["HS256"]), token
    # A key the decoder was not prepared for is validated as PyJWT always did.
    pem = RSA_PUBLIC_PEM
    token = hs256_by_hand(_claims(), pem.encode())
    assert _outcome(fast.decode, token, pem, ["HS256"]) == _outcome(jwt.decode, token, pem, ["HS256"])
    assert _outcome(fast.decode, token, pem, ["HS256"])[0] == "InvalidKeyError"
    # A secret PyJWT refuses as an HMAC key is refused per decode, as before (not at start-up).
    refused = decoder(pem)
    assert _outcome(refused.decode, token, pem, ["HS256"])[0] == "InvalidKeyError"


def test_fast_decoder_validates_the_secret_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """JWT_SECRET's checks (not a PEM/SSH/DER key, not JSON) run when the decoder is made, not per token."""
    from jwt.algorithms import HMACAlgorithm

    from chat.jwtcheck import decoder

    secret = "".join(JWT_SECRET)
    tokens = {user: make_token(user) for user in ("alice", "bob", "carol")}
    fast = decoder(secret)
    calls: list[Any] = []
    original = HMACAlgorithm.prepare_key
    monkeypatch.setattr(HMACAlgorithm, "prepare_key", lambda self, key: calls.append(key) or original(self, key))
    for user, token in tokens.items():
        assert fast.decode(token, secret, algorithms=["HS256"])["sub"] == user
    assert calls == []
    jwt.decode(tokens["alice"], secret, algorithms=["HS256"])  # the stock decoder does run it
    assert calls == [secret]


def _signed(header: dict[str, Any] | str, claims: dict[str, Any] | bytes, key: bytes = JWT_SECRET.encode()) -> str:
    """HS256 over any header and payload (a str header / bytes payload is used as is)."""
    head = _b64(header.encode()) if isinstance(header, str) else _segment(header)
    body = _b64(claims) if isinstance(claims, bytes) else _segment(claims)
    sig = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(sig)}"


def _fast_path_tokens() -> tuple[list[str], list[Any]]:
    """(common valid tokens HS256Claims answers itself, every other kind)."""
    now = int(time.time())
    common = [make_token("alice"), make_token("bob", "Bob"), make_token("carol", ttl=5),
              _signed({"typ": "JWT", "alg": "HS256"}, _claims()), _signed({"alg": "HS256"}, _claims()),
              _signed('{"alg": "HS256", "typ": "JWT"}', _claims()),
              _signed({"alg": "HS256", "typ": "JWT"}, _claims(iat=now - 5, nbf=now - 5, jti="j1", iss="me", aud="")),
              _signed({"alg": "HS256", "typ": "JWT"}, _claims(name=None, extra={"nested": [1, 2]}))]
    others: list[Any] = [make() for make in BAD_TOKENS.values()] + _segment_variants()
    others += [
        # valid for PyJWT, but not the common shape: PyJWT decides
        _signed({"alg": "HS256", "typ": "JWT", "kid": "k1"}, _claims()),
        _signed({"alg": "HS256", "typ": "at+jwt"}, _claims()),
        _signed({"alg": "HS256", "typ": "JWT"}, _claims(exp=float(now + 3600))),
        _signed({"alg": "HS256", "typ": "JWT"}, {"sub": "alice", "exp": str(now + 3600)}),
        _signed({"alg": "HS256", "typ": "JWT"}, _claims(iat=float(now))),
        make_token("alice") + "=",
        # refused by PyJWT, each for a reason the fast path must not miss
        _signed({"alg": "HS256", "typ": "JWT"}, {"sub": "alice", "exp": True}),
        _signed({"alg": "HS256", "typ": "JWT"}, {"sub": "alice", "exp": now}),
        _signed({"alg": "HS256", "typ": "JWT"}, {"sub": "alice", "exp": None}),
        _signed({"alg": "HS256", "typ": "JWT"}, _claims(nbf=now + 60)),
        _signed({"alg": "HS256", "typ": "JWT"}, _claims(iat=now + 60)),
        _signed({"alg": "HS256", "typ": "JWT"}, _claims(iat="yesterday")),
        _signed({"alg": "HS256", "typ": "JWT"}, _claims(aud="x")),
        _signed({"alg": "HS256", "typ": "JWT"}, _claims(jti=7)),
        _signed({"alg": "HS256", "typ": "JWT"}, _claims(sub=None)),
        _signed({"alg": "HS256", "typ": "JWT"}, b"[1,2]"),
        _signed({"alg": "HS256", "typ": "JWT"}, b'{"sub":"alice","exp":1e400}'),
        _signed({"alg": "HS256", "typ": "JWT", "crit": ["exp"]}, _claims()),
        _signed({"alg": "HS256", "typ": "JWT", "b64": False}, _claims()),
        _signed({"alg": "none", "typ": "JWT"}, _claims()),
        _signed({"alg": "HS256", "typ": "JWT"}, _claims(), key=b"another-secret-0123456789abcdef0123456789"),
        make_token("alice") + ".extra",
    ]
    return common, others


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_hs256_fast_path_answers_like_pyjwt() -> None:
    """chat/jwtcheck.py HS256Claims: the common valid tokens are answered without PyJWT, with
    the claims PyJWT returns; every other token (refused, or valid but unusual) is left to
    PyJWT; an Authenticator with the fast path answers every token like one without it."""
    from chat.auth import Authenticator
    from chat.config import Settings
    from chat.errors import Unauthorized
    from chat.jwtcheck import HS256Claims

    settings = Settings.from_env(env={"JWT_SECRET": JWT_SECRET, "DATABASE_URL": "sqlite+aiosqlite://"})
    fast_auth, slow_auth = Authenticator(settings), Authenticator(settings)
    slow_auth._fast = None
    fast = HS256Claims("".join(JWT_SECRET))
    common, others = _fast_path_tokens()
    now = time.time()
    for token in common:
        assert fast.claims(token, now) == jwt.decode(token, JWT_SECRET, algorithms=["HS256"],
                                                     options={"require": ["exp", "sub"]}), token
    for token in others:  # None, or what PyJWT returns (which raises for a token it refuses)
        got = fast.claims(token, now) if isinstance(token, str) else None
        assert got is None or got == jwt.decode(token, JWT_SECRET, algorithms=["HS256"],
                                                options={"require": ["exp", "sub"]}), token

    def answer(auth: Authenticator, token: Any) -> Any:
        try:
            return auth.client_with_expiry(token)
        except Unauthorized as exc:
            return "refused", str(exc)

    for token in common + others:
        assert answer(fast_auth, token) == answer(slow_auth, token), token
    # A secret shorter than SHA-256's digest: PyJWT warns per token, so it keeps every token.
    assert HS256Claims("short-secret").claims(make_token("alice", secret="short-secret"), now) is None
