"""Photos (issue 13 §4, docs/api.md "Photos"): upload, checks, send with attachments, signed file
URLs, push text, and the blob stores (the local directory; S3 through aiobotocore against a real
S3 HTTP endpoint, moto's server). Real servers on SQLite and on MariaDB + Redis (two processes)."""

from __future__ import annotations

import asyncio
import io
import os
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from PIL import Image

from chat.attachments import UrlSigner
from chat.blobs import LocalBlobStore, S3BlobStore, new_key
from chat.config import Settings
from tests.conftest import Cluster
from tests.support import JWT_SECRET, Api, Client, fetch, free_port, migrated_sqlite, sync_engine
from tests.test_push_rules import PushCluster, push_cluster, sqlite_push_cluster  # noqa: F401 (the fixtures)

GPS_IFD = 0x8825


def jpeg_with_gps(size: tuple[int, int] = (640, 480)) -> bytes:
    im = Image.new("RGB", size, (200, 30, 30))
    exif = Image.Exif()
    exif[0x010F] = "SpyCam"  # Make
    exif[0x0112] = 1  # Orientation
    exif.get_ifd(GPS_IFD).update({1: "N", 2: (48.0, 51.0, 29.0), 3: "E", 4: (2.0, 17.0, 40.0)})
    out = io.BytesIO()
    im.save(out, "JPEG", exif=exif)
    data = out.getvalue()
    assert Image.open(io.BytesIO(data)).getexif().get_ifd(GPS_IFD), "the fixture carries GPS EXIF"
    return data


def zip_of(name: str, content: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr(name, content)
    return out.getvalue()


def encoded(fmt: str, size: tuple[int, int] = (64, 48), mode: str = "RGB", **kw: Any) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size).save(out, fmt, **kw)
    return out.getvalue()


def upload(api: Api, token: str, data: bytes, filename: str = "photo.jpg",
           content_type: str = "image/jpeg") -> httpx.Response:
    return api.http.post("/api/v1/uploads", files={"file": (filename, data, content_type)},
                         headers={"Authorization": f"Bearer {token}"})


def uploaded(api: Api, token: str, data: bytes) -> str:
    r = upload(api, token, data)
    assert r.status_code == 201, r.text
    return str(r.json()["attachment"]["id"])


class Stored:
    """What a cluster stored: attachment rows and blob files."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.db = sync_engine(cluster.database_url)

    def rows(self) -> int:
        with self.db.connect() as conn:
            return int(conn.execute(sa.text("SELECT COUNT(*) FROM attachments")).scalar() or 0)

    def files(self) -> list[Path]:
        return sorted(p for p in Path(self.cluster.blob_dir).rglob("*") if p.is_file())

    def close(self) -> None:
        self.db.dispose()


@pytest.fixture
def stored(shared_any_server: Cluster) -> Iterator[Stored]:
    s = Stored(shared_any_server)
    yield s
    s.close()


def room_with(api: Api, uid: Any) -> tuple[str, str, str, str]:
    """A room of a creator with one member patron; (room, creator token, patron token, outsider token)."""
    cre, pat, out = uid("cre"), uid("pat"), uid("out")
    tokens = api.user(cre, "Cre"), api.user(pat, "Pat"), api.user(out, "Out")
    api.membership(cre, pat, 500)
    return api.room(cre, "Photos", 100), *tokens


# ---------------------------------------------------------------- upload and the stored file


async def test_upload_strips_exif_makes_a_thumbnail_and_a_message_carries_it(
        shared_any_server: Cluster, stored: Stored, uid: Any) -> None:
    api = shared_any_server.api
    room, cre, pat, _ = room_with(api, uid)
    # a phone's motion photo: an MP4 appended after the JPEG (accepted; the video is not kept)
    original = jpeg_with_gps((1280, 960)) + b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + b"\x00" * 64
    r = upload(api, pat, original, "holiday.png", "image/png")  # name and declared type are not believed
    assert r.status_code == 201, r.text
    att = r.json()["attachment"]
    assert set(att) == {"id", "width", "height", "content_type", "size"}
    assert (att["width"], att["height"], att["content_type"]) == (1280, 960, "image/jpeg")

    c = await Client(shared_any_server.servers[0].url, cre).connect()
    try:
        assert (await c.call("join", {"conversation_id": room}))["ok"]
        sent = await Client(shared_any_server.servers[0].url, pat).connect()
        try:
            ack = await sent.call("send", {"conversation_id": room, "client_msg_id": uid("m"), "attachments": [att["id"]]})
        finally:
            await sent.close()
        assert ack["ok"], ack
        msg = ack["message"]
        assert msg["body"] == ""
        [photo] = msg["attachments"]
        assert {k: photo[k] for k in att} == att
        live = await c.wait_for("message", lambda m: m["id"] == msg["id"])
        assert live["attachments"] == msg["attachments"]

        got = api.http.get(photo["url"])
        assert got.status_code == 200
        assert got.headers["content-type"] == "image/jpeg"
        assert got.headers["x-content-type-options"] == "nosniff"
        assert got.headers["content-disposition"] == f'inline; filename="photo-{att["id"]}.jpg"'
        assert got.headers["cache-control"].startswith("private, max-age=")
        assert len(got.content) == att["size"]
        im = Image.open(io.BytesIO(got.content))
        assert im.size == (1280, 960)
        assert dict(im.getexif()) == {} and b"Exif" not in got.content and b"SpyCam" not in got.content
        assert b"ftypmp42" not in got.content  # the appended video is gone
        thumb = api.http.get(photo["thumb_url"])
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(thumb.content)).size == (320, 240)
        # Every stored file was written by the encoder: none holds the uploaded bytes' metadata.
        for path in stored.files():
            assert b"SpyCam" not in path.read_bytes()

        # join and history (socket and HTTP) carry the same photo, with fresh URLs that work.
        joined = await c.call("join", {"conversation_id": room})
        assert [m["attachments"][0]["id"] for m in joined["messages"] if m["id"] == msg["id"]] == [att["id"]]
        page = api.client(cre, "GET", f"/conversations/{room}/messages").json()["messages"]
        [again] = [m["attachments"] for m in page if m["id"] == msg["id"]]
        assert again[0]["id"] == att["id"] and api.http.get(again[0]["url"]).status_code == 200
        listed = api.client(pat, "GET", "/conversations").json()["conversations"]
        assert [i["last_message"]["attachments"][0]["id"] for i in listed if i["conversation"]["id"] == room] == [att["id"]]
    finally:
        await c.close()


def test_other_formats_are_kept_in_their_format(shared_sqlite: Cluster, uid: Any) -> None:
    api = shared_sqlite.api
    token = api.user(uid("fmt"))
    frames = [Image.new("RGB", (40, 30), color) for color in ("red", "green", "blue")]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0, comment=b"secret")
    for data, content_type in [(encoded("PNG", mode="RGBA"), "image/png"), (encoded("WEBP"), "image/webp"),
                               (gif.getvalue(), "image/gif")]:
        r = upload(api, token, data, "x.bin", "application/octet-stream")
        assert r.status_code == 201, r.text
        assert r.json()["attachment"]["content_type"] == content_type


REJECTIONS = {
    "bmp": (lambda: encoded("BMP"), 400, "invalid", "unsupported_format"),
    "tiff": (lambda: encoded("TIFF"), 400, "invalid", "unsupported_format"),
    "html": (lambda: b"<html><script>alert(1)</script></html>", 400, "invalid", "unsupported_format"),
    "zip with a JPEG inside": (lambda: b"PK\x03\x04" + jpeg_with_gps((8, 8)), 400, "invalid", "unsupported_format"),
    # 10,000 x 10,000 one-bit pixels: a few KB of PNG, 100 million pixels once decoded.
    "decompression bomb": (lambda: encoded("PNG", (10_000, 10_000), "1"), 400, "invalid", "too_many_pixels"),
    "truncated": (lambda: jpeg_with_gps((800, 600))[:3000], 400, "invalid", "truncated"),
    # polyglots: a whole image that is also something else
    "jpeg + zip": (lambda: jpeg_with_gps((64, 48)) + zip_of("evil.html", b"<p>hi</p>"), 400, "invalid", "polyglot"),
    "jpeg + html": (lambda: jpeg_with_gps((64, 48)) + b"<HTML><Script>alert(1)</script></html>", 400, "invalid",
                    "polyglot"),
    "png + pdf": (lambda: encoded("PNG", (32, 32)) + b"%PDF-1.7\n1 0 obj<<>>endobj\n%%EOF", 400, "invalid", "polyglot"),
    "gif + svg": (lambda: encoded("GIF", (32, 32)) + b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>',
                  400, "invalid", "polyglot"),
}


@pytest.mark.parametrize("case", list(REJECTIONS))
def test_rejected_uploads_store_nothing(shared_any_server: Cluster, stored: Stored, uid: Any, case: str) -> None:
    api = shared_any_server.api
    token = api.user(uid("rej"))
    make, status, code, reason = REJECTIONS[case]
    rows, files = stored.rows(), stored.files()
    r = upload(api, token, make(), "photo.jpg", "image/jpeg")
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert r.json()["error"]["reason"] == reason
    assert (stored.rows(), stored.files()) == (rows, files)


def test_oversized_and_malformed_bodies(shared_sqlite: Cluster, uid: Any) -> None:
    api = shared_sqlite.api
    token = api.user(uid("big"))
    auth = {"Authorization": f"Bearer {token}"}
    # Refused from Content-Length at once: the server answers before the body is sent.
    with socket.create_connection(("127.0.0.1", shared_sqlite.servers[0].port), timeout=10) as s:
        s.sendall((f"POST /api/v1/uploads HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                   "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 20000000\r\n\r\n").encode())
        head = s.recv(4096).decode()
    assert head.startswith("HTTP/1.1 413") and '"too_large"' in head, head
    # No Content-Length (chunked): refused once the file passes 10 MB.
    big = b"\xff\xd8" + os.urandom(10 * 1024 * 1024 + 10)

    def chunks() -> Iterator[bytes]:
        yield b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\n\r\n"
        for i in range(0, len(big), 1 << 20):
            yield big[i:i + (1 << 20)]
        yield b"\r\n--b--\r\n"

    r = api.http.post("/api/v1/uploads", content=chunks(),
                      headers={**auth, "Content-Type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
    for headers, body in [({"Content-Type": "application/json"}, b"{}"),
                          ({"Content-Type": "multipart/form-data; boundary=b"}, b"--b\r\nnonsense"),
                          ({"Content-Type": "multipart/form-data; boundary=b"}, b"--b--\r\n"),
                          ({"Content-Type": "multipart/form-data"}, b"x")]:
        r = api.http.post("/api/v1/uploads", content=body, headers={**auth, **headers})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid", (headers, r.text)
    r = api.http.post("/api/v1/uploads", files={"file": ("a.jpg", encoded("JPEG"), "image/jpeg")})
    assert r.status_code == 401


# ---------------------------------------------------------------- send rules


async def test_send_rules_for_attachments(shared_any_server: Cluster, uid: Any) -> None:
    api = shared_any_server.api
    room, cre, pat, out = room_with(api, uid)
    mine = [uploaded(api, pat, encoded("JPEG")) for _ in range(5)]
    foreign = uploaded(api, cre, encoded("PNG"))
    c = await Client(shared_any_server.servers[0].url, pat).connect()
    try:
        async def send(cmid: str, ids: Any, body: Any = None) -> dict[str, Any]:
            payload: dict[str, Any] = {"conversation_id": room, "client_msg_id": cmid, "attachments": ids}
            if body is not None:
                payload["body"] = body
            return dict(await c.call("send", payload))

        def error(ack: dict[str, Any]) -> str:
            assert not ack["ok"], ack
            return str(ack["error"]["code"])

        assert error(await send("e1", mine)) == "invalid"  # 5 > 4
        assert error(await send("e2", [mine[0], mine[0]])) == "invalid"
        assert error(await send("e3", "1")) == "invalid"
        assert error(await send("e4", [])) == "invalid"  # no text and no photo
        assert error(await send("e5", [foreign])) == "forbidden"  # another user's upload
        assert error(await send("e6", ["999999999"])) == "not_found"
        first = await send("m1", mine[:2], "two photos")
        assert first["ok"] and [a["id"] for a in first["message"]["attachments"]] == mine[:2]
        assert first["message"]["body"] == "two photos"
        # A retry answers the original, photos included; another message cannot reuse them.
        retry = await send("m1", mine[:2], "two photos")
        assert retry["ok"] and retry["message"]["id"] == first["message"]["id"]
        assert retry["message"]["attachments"] == first["message"]["attachments"]
        assert error(await send("m2", [mine[1]])) == "invalid"
        r = api.client(cre, "POST", f"/conversations/{room}/messages", {"client_msg_id": "h1", "attachments": [mine[2]]})
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"  # not the creator's upload
        r = api.client(pat, "POST", f"/conversations/{room}/messages", {"client_msg_id": "h1", "attachments": [mine[2]]})
        assert r.status_code == 201, r.text
        assert r.json()["message"]["attachments"][0]["id"] == mine[2]
        # Nothing of the failed sends was claimed: the first unused upload still sends.
        ok = await send("m3", [mine[3], mine[4]])
        assert ok["ok"], ok
        # A member who cannot post: the upload stays unused.
        outsider = uploaded(api, out, encoded("JPEG"))
        r = api.client(out, "POST", f"/conversations/{room}/messages", {"client_msg_id": "x1", "attachments": [outsider]})
        assert r.status_code == 403
        # Deleting the message takes its photos away: the URL then answers 404.
        url = first["message"]["attachments"][0]["url"]
        assert api.http.get(url).status_code == 200
        deleted = await c.call("delete", {"message_id": first["message"]["id"]})
        assert deleted["ok"] and deleted["message"]["attachments"] == []
        assert api.http.get(url).status_code == 404
    finally:
        await c.close()


async def test_files_need_a_valid_unexpired_signature(shared_sqlite: Cluster, uid: Any) -> None:
    api = shared_sqlite.api
    room, cre, pat, out = room_with(api, uid)
    aid = uploaded(api, pat, encoded("JPEG"))
    r = api.client(pat, "POST", f"/conversations/{room}/messages", {"client_msg_id": "s1", "attachments": [aid]})
    url = r.json()["message"]["attachments"][0]["url"]
    path, query = url.split("?")
    exp = query.split("&")[0].split("=")[1]
    # A non-member never got a URL; their token does not open the file either.
    for bad in [path, f"{path}?exp={exp}", f"{path}?exp={exp}&sig=AAAA", f"{path}?exp={int(exp) + 60}&sig={query.split('sig=')[1]}",
                f"{path}/thumb?{query}"]:
        r = api.http.get(bad, headers={"Authorization": f"Bearer {out}"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", (bad, r.text)
    # Signed with the servers' key (derived from JWT_SECRET) but expired.
    signer = UrlSigner(Settings(jwt_secret=JWT_SECRET, attachment_url_ttl_s=60))
    expired = signer.url(int(aid), "file", now=time.time() - 3600)
    r = api.http.get(expired)
    assert r.status_code == 403 and "expired" in r.json()["error"]["message"]
    assert api.http.get(signer.url(int(aid), "file")).status_code == 200
    assert api.http.get("/api/v1/attachments/abc?exp=1&sig=x").status_code == 404
    assert api.http.get(signer.url(987654321, "file")).status_code == 404
    # An upload not sent yet has no URL that works, even correctly signed.
    unsent = uploaded(api, pat, encoded("JPEG"))
    assert api.http.get(signer.url(int(unsent), "file")).status_code == 404


async def test_photo_message_across_two_processes_and_one_upload_claimed_once(
        shared_mysql_cluster: Cluster, uid: Any) -> None:
    a, b = shared_mysql_cluster.apis
    room, cre, pat, _ = room_with(a, uid)
    aid = uploaded(a, pat, jpeg_with_gps())
    member = await Client(shared_mysql_cluster.servers[1].url, cre).connect()
    senders = [await Client(s.url, pat).connect() for s in shared_mysql_cluster.servers]
    try:
        assert (await member.call("join", {"conversation_id": room}))["ok"]
        # Two sends race for one upload from two processes: exactly one message gets it.
        acks = await asyncio.gather(*(s.call("send", {"conversation_id": room, "client_msg_id": uid(f"r{i}"),
                                                      "attachments": [aid]}) for i, s in enumerate(senders)))
        assert sorted(ack["ok"] for ack in acks) == [False, True], acks
        [won] = [ack["message"] for ack in acks if ack["ok"]]
        [lost] = [ack["error"] for ack in acks if not ack["ok"]]
        assert lost["code"] == "invalid"
        live = await member.wait_for("message", lambda m: m["id"] == won["id"])
        got = b.http.get(live["attachments"][0]["url"])  # the URL works on the other process
        assert got.status_code == 200 and got.content == a.http.get(won["attachments"][0]["url"]).content
        page = b.client(cre, "GET", f"/conversations/{room}/messages").json()["messages"]
        assert [m["id"] for m in page] == [won["id"]]  # the losing send stored nothing
    finally:
        for c in (member, *senders):
            await c.close()


# ---------------------------------------------------------------- push


async def _photo_push_scenario(pc: PushCluster) -> None:
    """The photos are uploaded through the first process and sent through the last one (the
    other one on MariaDB): the push worker reads the claimed uploads from the database."""
    first, last = pc.cluster.apis[0], pc.cluster.apis[-1]
    cre, pat = first.user("cre", "Cre Ator"), first.user("pat", "Pat")
    first.membership("cre", "pat", 500)
    conv = first.direct(cre, "pat")
    pc.device(pat, "pat-phone")
    ids = [uploaded(first, cre, encoded("JPEG")) for _ in range(3)]
    for cmid, photos, body in [("p1", ids[:1], None), ("p2", ids[1:], None), ("p3", [], "words")]:
        payload: dict[str, Any] = {"client_msg_id": cmid, "attachments": photos}
        if body:
            payload["body"] = body
        r = last.client(cre, "POST", f"/conversations/{conv}/messages", payload)
        assert r.status_code == 201, r.text
    pushes = sorted(await pc.pushes_to("pat-phone", 3, timeout=15), key=lambda m: int(m["data"]["message_id"]))
    assert [p["notification"] for p in pushes] == [
        {"title": "Cre Ator", "body": "sent a photo"}, {"title": "Cre Ator", "body": "sent 2 photos"},
        {"title": "Cre Ator", "body": "words"}]
    await pc.jobs_settled()
    assert pc.outbox_users() == ["pat", "pat", "pat"]  # one each, never the sender


async def test_push_says_sent_a_photo(sqlite_push_cluster: PushCluster) -> None:  # noqa: F811 (the fixture)
    """SQLite, one process."""
    await _photo_push_scenario(sqlite_push_cluster)


async def test_push_says_sent_a_photo_across_processes(push_cluster: PushCluster) -> None:  # noqa: F811 (the fixture)
    """MariaDB + Redis, two processes."""
    await _photo_push_scenario(push_cluster)


# ---------------------------------------------------------------- blob stores


async def _exercise(store: Any) -> None:
    key = new_key("jpg")
    assert await store.get(key) is None
    await store.put(key, b"\xff\xd8one", "image/jpeg")
    await store.put(key, b"\xff\xd8two", "image/jpeg")  # overwrite
    assert await store.get(key) == b"\xff\xd8two"
    await store.delete(key)
    await store.delete(key)  # idempotent
    assert await store.get(key) is None
    for bad in ["../etc/passwd", "ab/../../x", "/abs", "AB/" + "a" * 32]:
        with pytest.raises(ValueError):
            await store.put(bad, b"x", "image/jpeg")


async def test_local_blob_store(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    await _exercise(store)
    assert [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()] == []  # no temporary files left
    await store.close()


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server (a real S3 HTTP API) on a free port, stopped by its PID."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                fetch("GET", url + "/moto-api/", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


async def test_s3_blob_store_against_a_real_s3_endpoint(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    store = S3BlobStore("photos", "backstage/", s3_endpoint, "us-east-1")
    await store.start()
    try:
        await store._client.create_bucket(Bucket="photos")
        await _exercise(store)
        key = new_key("png")
        await store.put(key, b"\x89PNG", "image/png")
        head = await store._client.head_object(Bucket="photos", Key="backstage/" + key)
        assert head["ContentType"] == "image/png"
    finally:
        await store.close()


def test_server_on_s3_blob_url(s3_endpoint: str, tmp_path: Path, uid: Any) -> None:
    """A server with BLOB_URL=s3://...: upload, send, fetch through the aiobotocore store."""
    import boto3

    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "BLOB_URL": f"s3://server-photos/p?endpoint_url={s3_endpoint}&region=us-east-1"}
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="test",
                 aws_secret_access_key="test").create_bucket(Bucket="server-photos")
    cluster = Cluster(migrated_sqlite(tmp_path / "s3.db"), None, "unused", 1, env=env)
    try:
        api = cluster.api
        room, _, pat, _ = room_with(api, uid)
        aid = uploaded(api, pat, jpeg_with_gps())
        r = api.client(pat, "POST", f"/conversations/{room}/messages", {"client_msg_id": "s3", "attachments": [aid]})
        assert r.status_code == 201, r.text
        got = api.http.get(r.json()["message"]["attachments"][0]["url"])
        assert got.status_code == 200 and got.headers["content-type"] == "image/jpeg"
        assert list(Path(cluster.blob_dir).rglob("*")) == []  # nothing went to the directory
    finally:
        cluster.stop()


async def test_unused_uploads_removed_from_s3(s3_endpoint: str, tmp_path: Path, uid: Any) -> None:
    """UPLOAD_TTL_S with the S3 store: the unsent upload's two objects are deleted, the sent
    one's stay (chat/uploadsweep.py; tests/test_upload_sweep.py has the rest)."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="test",
                      aws_secret_access_key="test")
    s3.create_bucket(Bucket="swept-photos")
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "UPLOAD_TTL_S": "5",
           "UPLOAD_SWEEP_INTERVAL_S": "0.05",
           "BLOB_URL": f"s3://swept-photos/p?endpoint_url={s3_endpoint}&region=us-east-1"}
    cluster = Cluster(migrated_sqlite(tmp_path / "s3.db"), None, "unused", 1, env=env)
    db = sync_engine(cluster.database_url)
    try:
        api = cluster.api
        room, _, pat, _ = room_with(api, uid)
        sent, unsent = uploaded(api, pat, encoded("JPEG")), uploaded(api, pat, encoded("PNG", mode="RGBA"))
        r = api.client(pat, "POST", f"/conversations/{room}/messages", {"client_msg_id": "s3", "attachments": [sent]})
        assert r.status_code == 201, r.text
        with db.connect() as conn:
            keys = {str(row.id): {row.blob_key, row.thumb_key} for row in conn.execute(
                sa.text("SELECT id, blob_key, thumb_key FROM attachments"))}

        def objects() -> set[str]:
            listed = s3.list_objects_v2(Bucket="swept-photos").get("Contents", [])
            return {o["Key"].removeprefix("p/") for o in listed}

        assert objects() == keys[sent] | keys[unsent]
        deadline = time.monotonic() + 30
        while objects() != keys[sent] and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert objects() == keys[sent]
        with db.connect() as conn:
            assert [str(i) for (i,) in conn.execute(sa.text("SELECT id FROM attachments"))] == [sent]
        got = api.http.get(r.json()["message"]["attachments"][0]["thumb_url"])
        assert got.status_code == 200
    finally:
        db.dispose()
        cluster.stop()


def test_blob_url_setting_and_default_directory() -> None:
    from chat.blobs import default_blob_dir
    from chat.config import ConfigError

    assert default_blob_dir("sqlite+aiosqlite:////srv/data/backstage.db") == Path("/srv/data/backstage-blobs")
    assert default_blob_dir("mysql+aiomysql://u@db/x") == Path("blobs").resolve()
    assert Settings.from_env({"BLOB_URL": "s3://bucket/p?endpoint_url=http://x"}).blob_url is not None
    for bad in ["s3://", "ftp://x/y", "file://relative/path", "/no/scheme"]:
        with pytest.raises(ConfigError) as err:
            Settings.from_env({"BLOB_URL": bad})
        assert err.value.problems[0].startswith("BLOB_URL")
