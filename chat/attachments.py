"""Photos attached to messages: upload, claim on send, signed file URLs (docs/api.md "Photos").

- `upload`: the image is decoded, checked and re-encoded on a thread (chat/images.py; at most
  IMAGE_DECODE_CONCURRENCY at once), the file and its thumbnail go to the blob store
  (chat/blobs.py), then one `attachments` row. A rejected upload stores nothing.
- `for_send`: before a send, the ids must name the sender's own uploads, unused (or used by
  this very client_msg_id: a retry). The claim itself (`claim`) runs in the message writer's
  transaction: one UPDATE per message with photos, conditional on the rows still being unused,
  so two sends racing for one upload cannot both have it.
- A message's attachments are the rows claimed with its (sender_id, client_msg_id).
- An upload no send claimed within UPLOAD_TTL_S is removed, row then blobs, by the sweep of
  chat/uploadsweep.py; its delete is conditional on the row being unused too, so a send and a
  sweep racing for one upload: whichever commits first wins (the send then gets `invalid`).
- Files are served by `GET /api/v1/attachments/{id}[/thumb]?exp=&sig=`: the signature
  (HMAC-SHA256 with the server's key over id, variant and expiry) is handed out only inside
  message objects, which only members receive; it expires after ATTACHMENT_URL_TTL_S. Whoever
  holds an unexpired URL can fetch the file (like any pre-signed URL).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from chat import driversql, images
from chat.blobs import BlobStore, new_key
from chat.config import Settings
from chat.db import utcnow
from chat.errors import Forbidden, Invalid, NotFound, RateLimited
from chat.models import Attachment, Message
from chat.ratelimit import KeyedBuckets
from chat.retry import retry_transaction

log = logging.getLogger(__name__)

MAX_PER_MESSAGE = 4
VARIANTS = ("file", "thumb")
_att = cast(sa.Table, Attachment.__table__)
_messages = cast(sa.Table, Message.__table__)
WIRE_COLUMNS = (_att.c.id, _att.c.content_type, _att.c.width, _att.c.height, _att.c.size)


class _PhotoRow(NamedTuple):
    """A row of `_photos_statement`: WIRE_COLUMNS and the message's key."""

    id: int
    content_type: str
    width: int
    height: int
    size: int
    owner_id: str
    client_msg_id: str


def _photos_statement(n: int) -> Any:
    key = sa.tuple_(_att.c.owner_id, _att.c.client_msg_id)
    return (sa.select(*WIRE_COLUMNS, _att.c.owner_id, _att.c.client_msg_id)
            .where(key.in_([sa.tuple_(sa.bindparam(f"o{i}", type_=_att.c.owner_id.type),
                                      sa.bindparam(f"m{i}", type_=_att.c.client_msg_id.type)) for i in range(n)]))
            .order_by(_att.c.position, _att.c.id))


def photo_text(count: int) -> str:
    """What a push says for a message with photos and no text."""
    return "sent a photo" if count == 1 else f"sent {count} photos"


async def claim(conn: AsyncConnection, sender_id: str, conversation_id: int, client_msg_id: str,
                attachments: Sequence[dict[str, Any]]) -> bool:
    """In the sending transaction: give the uploads to the message; False (nothing changed)
    if any of them is no longer the sender's unused upload (another send took it first)."""
    ids = [int(a["id"]) for a in attachments]
    position = sa.case({aid: i for i, aid in enumerate(ids)}, value=_att.c.id)
    result = await conn.execute(sa.update(_att).where(
        _att.c.id.in_(ids), _att.c.owner_id == sender_id, _att.c.client_msg_id.is_(None),
    ).values(conversation_id=conversation_id, client_msg_id=client_msg_id, position=position))
    if result.rowcount != len(ids):
        if result.rowcount:  # undo the part that was claimed, keep the rest of the batch
            await conn.execute(sa.update(_att).where(
                _att.c.id.in_(ids), _att.c.client_msg_id == client_msg_id, _att.c.owner_id == sender_id,
            ).values(conversation_id=None, client_msg_id=None, position=0))
        return False
    return True


class UrlSigner:
    """Expiring HMAC signatures of file URLs; the same key on every process of a cluster."""

    def __init__(self, settings: Settings) -> None:
        if settings.attachment_url_secret:
            key = settings.attachment_url_secret.encode()
        elif settings.jwt_secret:
            # A key of its own, derived: a URL signature never helps forge a token, nor the reverse.
            key = hmac.new(settings.jwt_secret.encode(), b"backstage attachment urls", hashlib.sha256).digest()
        else:
            key = secrets.token_bytes(32)  # warned at start: this process only
        self._key = key
        self.ttl_s = settings.attachment_url_ttl_s

    def _sig(self, attachment_id: int, variant: str, exp: int) -> str:
        mac = hmac.new(self._key, f"{attachment_id}.{variant}.{exp}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def url(self, attachment_id: int, variant: str, now: float | None = None) -> str:
        # Expiry rounded up to the minute: the URLs of one message stay the same for a minute, so
        # clients and caches see one URL, not a new one per read.
        exp = (int((now or time.time()) + self.ttl_s) // 60 + 1) * 60
        path = f"/api/v1/attachments/{attachment_id}" + ("" if variant == "file" else "/thumb")
        return f"{path}?exp={exp}&sig={self._sig(attachment_id, variant, exp)}"

    def check(self, attachment_id: int, variant: str, exp: str | None, sig: str | None) -> int:
        """The expiry (unix seconds) of a valid signature; Forbidden otherwise."""
        if not exp or not sig or not exp.isascii() or not exp.isdigit() or len(exp) > 12:
            raise Forbidden("a signed URL is required (exp and sig)")
        expected = self._sig(attachment_id, variant, int(exp))
        if not hmac.compare_digest(expected.encode(), sig.encode("utf-8", "replace")):
            raise Forbidden("bad signature")
        if int(exp) < time.time():
            raise Forbidden("the URL expired; read the message again for a new one")
        return int(exp)


@dataclass(frozen=True)
class FileAnswer:
    data: bytes
    content_type: str
    filename: str
    max_age: int


class Attachments:
    def __init__(self, engine: AsyncEngine, blobs: BlobStore, settings: Settings) -> None:
        self.engine = engine
        self.blobs = blobs
        self.settings = settings
        self.signer = UrlSigner(settings)
        self._decoding = asyncio.Semaphore(settings.image_decode_concurrency)
        self._pool = concurrent.futures.ThreadPoolExecutor(settings.image_decode_concurrency,
                                                           thread_name_prefix="image-decode")
        self.uploads = KeyedBuckets(1.0, 20)  # per user: bursts of 20, then one a second

    async def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        await self.blobs.close()

    # ------------------------------------------------------------ wire

    def wire(self, row: Any, now: float | None = None) -> dict[str, Any]:
        aid = int(row.id)
        return {"id": str(aid), "width": int(row.width), "height": int(row.height),
                "content_type": row.content_type, "size": int(row.size),
                "url": self.signer.url(aid, "file", now), "thumb_url": self.signer.url(aid, "thumb", now)}

    # ------------------------------------------------------------ upload

    async def upload(self, user_id: str, data: bytes) -> dict[str, Any]:
        if not self.uploads.take(user_id):
            raise RateLimited("too many uploads; at most one a second after a burst of 20")
        async with self._decoding:
            loop = asyncio.get_running_loop()
            processed = await loop.run_in_executor(self._pool, images.process, data)
        file_key = new_key(images.EXTENSIONS[processed.content_type])
        thumb_key = new_key(images.EXTENSIONS[processed.thumb_content_type])
        row = {"owner_id": user_id, "conversation_id": None, "client_msg_id": None, "position": 0,
               "content_type": processed.content_type, "width": processed.width, "height": processed.height,
               "size": len(processed.data), "blob_key": file_key, "thumb_content_type": processed.thumb_content_type,
               "thumb_width": processed.thumb_width, "thumb_height": processed.thumb_height,
               "thumb_key": thumb_key, "created_at": utcnow()}
        try:
            await self.blobs.put(file_key, processed.data, processed.content_type)
            await self.blobs.put(thumb_key, processed.thumb, processed.thumb_content_type)

            async def insert() -> int:
                async with self.engine.begin() as conn:
                    result = await conn.execute(sa.insert(_att).values(**row))
                    return int(result.inserted_primary_key[0])  # type: ignore[index]

            aid = await retry_transaction(insert, attempts=3)
        except BaseException:
            await self._forget_blobs(file_key, thumb_key)
            raise
        return {"attachment": {"id": str(aid), "width": processed.width, "height": processed.height,
                               "content_type": processed.content_type, "size": len(processed.data)}}

    async def _forget_blobs(self, *keys: str) -> None:
        for key in keys:
            try:
                await asyncio.shield(self.blobs.delete(key))
            except Exception:
                log.warning("could not delete blob %s after a failed upload", key, exc_info=True)

    # ------------------------------------------------------------ send

    async def for_send(self, user_id: str, client_msg_id: str, ids: Sequence[int]) -> tuple[dict[str, Any], ...]:
        """The wire forms of the attachments a send names, checked (claimed later, in the writer's
        transaction, by `claim`).
        Unknown id: not_found; another user's upload: forbidden; used by another message: invalid."""
        if not ids:
            return ()
        async with self.engine.connect() as conn:
            rows = {int(r.id): r for r in await conn.execute(
                sa.select(*WIRE_COLUMNS, _att.c.owner_id, _att.c.client_msg_id).where(_att.c.id.in_(ids)))}
        for aid in ids:
            row = rows.get(aid)
            if row is None:
                raise NotFound(f"no such attachment: {aid}")
            if row.owner_id != user_id:
                raise Forbidden(f"attachment {aid} is not your upload")
            if row.client_msg_id is not None and row.client_msg_id != client_msg_id:
                raise Invalid(f"attachment {aid} is already used by another message")
        now = time.time()
        return tuple(self.wire(rows[aid], now) for aid in ids)

    # ------------------------------------------------------------ reading

    async def fill(self, conn: Any, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Set each message wire's `attachments` (from its (sender, client_msg_id)); deleted
        messages have none. `conn`: an AsyncConnection or AsyncSession."""
        found = await self.by_keys(conn, [(m["sender"]["id"], m["client_msg_id"]) for m in messages
                                          if not m.get("deleted")])
        for m in messages:
            m["attachments"] = [] if m.get("deleted") else found.get((m["sender"]["id"], m["client_msg_id"]), [])
        return messages

    async def by_keys(self, conn: Any, keys: list[tuple[str, str]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
        """{(sender, client_msg_id): [photo wire]} of the messages that have photos: one
        statement per 128 keys, compiled once per dialect and (padded) size and run on the
        driver's cursor (chat/driversql.py: the joins of a reconnect storm read these)."""
        found: dict[tuple[str, str], list[dict[str, Any]]] = {}
        if keys:
            if isinstance(conn, AsyncSession):
                conn = await conn.connection()
            now = time.time()
            for chunk in driversql.padded_chunks(sorted(set(keys)), 128):
                prepared = driversql.prepare(conn.dialect, _photos_statement, len(chunk))
                params = {}
                for i, (owner, cmid) in enumerate(chunk):
                    params[f"o{i}"], params[f"m{i}"] = owner, cmid
                for row in await driversql.fetch(conn, prepared, params):
                    found.setdefault((row[5], row[6]), []).append(self.wire(_PhotoRow(*row), now))
        return found

    async def open_file(self, attachment_id: int, variant: str, exp: str | None, sig: str | None) -> FileAnswer:
        if variant not in VARIANTS:
            raise NotFound("no such file")
        expires = self.signer.check(attachment_id, variant, exp, sig)
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(
                _att.c.blob_key, _att.c.thumb_key, _att.c.content_type, _att.c.thumb_content_type,
                _messages.c.deleted).select_from(_att.join(_messages, sa.and_(
                    _messages.c.sender_id == _att.c.owner_id, _messages.c.client_msg_id == _att.c.client_msg_id)))
                .where(_att.c.id == attachment_id))).first()
        if row is None or row.deleted:
            raise NotFound("no such file")
        key, content_type = (row.blob_key, row.content_type) if variant == "file" else (row.thumb_key, row.thumb_content_type)
        data = await self.blobs.get(key)
        if data is None:
            log.warning("attachment %s: blob missing from the store", attachment_id)
            raise NotFound("no such file")
        ext = images.EXTENSIONS.get(content_type, "bin")
        name = f"photo-{attachment_id}{'-thumb' if variant == 'thumb' else ''}.{ext}"
        return FileAnswer(data, content_type, name, max(0, min(expires - int(time.time()), 86400)))
