"""The OpenAPI 3.1 document of the HTTP API (chat/openapi.json), served at /api/v1/openapi.json."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from aiohttp import web

DOCUMENT = Path(__file__).resolve().parent / "openapi.json"


@cache
def document_bytes() -> bytes:
    return DOCUMENT.read_bytes()


async def handler(request: web.Request) -> web.Response:
    return web.Response(body=document_bytes(), content_type="application/json",
                        headers={"Cache-Control": "no-cache"})
