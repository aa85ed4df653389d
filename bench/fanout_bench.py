#!/usr/bin/env python3
"""Room fan-out micro-benchmark: python-socketio's stock emit vs chat/fanout.py, same run.

    flock /tmp/backstage-bench.lock .venv/bin/python bench/fanout_bench.py [--sockets 50,500] [--messages 200]

For each implementation and room size N, a fresh server process (pinned to CPU 0 with uvloop,
like the bench targets) accepts N websocket clients (this process, CPU 1, raw Engine.IO/
Socket.IO over aiohttp), puts them in one room, then on request emits M `message` events of
~300 bytes to the room as fast as it can (`await sio.emit(..., room=...)` each). Measured:
server CPU time (process_time, read over HTTP before and after) per delivery, and wall-clock
deliveries/s until every client received all M. `stock` = socketio.AsyncServer with its
default manager; `fanout` = chat.fanout.FanoutServer. Nothing else (no database, no Redis).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PAYLOAD = {"id": "123456", "conversation_id": "42", "seq": 0, "sender": {"id": "bench-17", "name": "Bench 17"},
           "body": "x" * 120, "client_msg_id": "c-0123456789abcdef", "created_at": "2026-12-02T08:00:00.000Z",
           "edited_at": None, "deleted": False}


# ---------------------------------------------------------------- server side


def serve(impl: str, port: int) -> None:
    sys.path.insert(0, str(ROOT))
    import socketio
    import uvloop
    from aiohttp import web

    from chat.codec import OrjsonCompat

    kwargs: dict[str, Any] = {"async_mode": "aiohttp", "json": OrjsonCompat, "async_handlers": False,
                              "logger": False, "engineio_logger": False}
    if impl == "fanout":
        from chat.fanout import FanoutServer
        sio: Any = FanoutServer(**kwargs)
    else:
        sio = socketio.AsyncServer(**kwargs)
    app = web.Application()
    sio.attach(app)

    @sio.on("connect")
    async def connect(sid: str, environ: Any, auth: Any = None) -> None:
        await sio.enter_room(sid, "room")

    @sio.on("blast")
    async def blast(sid: str, data: dict[str, Any]) -> dict[str, Any]:
        for i in range(int(data["n"])):
            await sio.emit("message", {**PAYLOAD, "seq": i}, room="room")
        return {"ok": True}

    async def cpu(request: web.Request) -> web.Response:
        return web.json_response({"cpu": time.process_time()})

    app.router.add_get("/cpu", cpu)
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# ---------------------------------------------------------------- client side


class Counter:
    def __init__(self) -> None:
        self.messages = 0
        self.done = asyncio.Event()
        self.target = 0


async def client(session: Any, url: str, counter: Counter, ready: asyncio.Event, total_ready: list[int],
                 n: int) -> Any:
    import aiohttp

    ws = await session.ws_connect(f"{url}/socket.io/?EIO=4&transport=websocket", compress=0)
    await ws.receive_str()  # OPEN
    await ws.send_str("40")
    assert (await ws.receive_str()).startswith("40")
    total_ready[0] += 1
    if total_ready[0] == n:
        ready.set()

    async def read() -> None:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            data = msg.data
            if data.startswith('42["message"'):
                counter.messages += 1
                if counter.messages >= counter.target:
                    counter.done.set()
            elif data == "2":
                await ws.send_str("3")

    asyncio.get_running_loop().create_task(read())
    return ws


async def run_one(impl: str, sockets: int, messages: int, cpus: tuple[str, str]) -> dict[str, Any]:
    import aiohttp
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pin = ["taskset", "-c", cpus[0]] if shutil.which("taskset") else []
    proc = subprocess.Popen([*pin, sys.executable, __file__, "serve", impl, str(port)], cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                httpx.get(url + "/cpu", timeout=1)
                break
            except httpx.HTTPError:
                await asyncio.sleep(0.1)
        counter, ready, n_ready = Counter(), asyncio.Event(), [0]
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            conns = []
            for i in range(0, sockets, 100):
                conns += await asyncio.gather(*(client(session, url, counter, ready, n_ready, sockets)
                                                for _ in range(i, min(i + 100, sockets))))
            await ready.wait()
            # Warm-up (imports, first-call paths), not measured.
            counter.target = sockets * 20
            await conns[0].send_str('420["blast",{"n":20}]')
            await asyncio.wait_for(counter.done.wait(), 120)
            counter.messages, counter.target = 0, sockets * messages
            counter.done.clear()
            async with httpx.AsyncClient() as http:
                cpu0 = (await http.get(url + "/cpu")).json()["cpu"]
                t0 = time.perf_counter()
                await conns[0].send_str(f'421["blast",{{"n":{messages}}}]')
                await asyncio.wait_for(counter.done.wait(), 300)
                wall = time.perf_counter() - t0
                cpu1 = (await http.get(url + "/cpu")).json()["cpu"]
            for ws in conns:
                await ws.close()
    finally:
        proc.terminate()
        proc.wait(10)
    deliveries = sockets * messages
    cpu_us = (cpu1 - cpu0) * 1e6 / deliveries
    return {"impl": impl, "sockets": sockets, "messages": messages, "deliveries": deliveries,
            "wall_s": round(wall, 3), "deliveries_per_s": round(deliveries / wall),
            "server_cpu_us_per_delivery": round(cpu_us, 2), "cpu_bound_deliveries_per_s": round(1e6 / cpu_us)}


async def main(args: argparse.Namespace) -> None:
    rows = []
    for n in [int(x) for x in args.sockets.split(",")]:
        for rep in range(args.reps):
            for impl in (("stock", "fanout") if rep % 2 == 0 else ("fanout", "stock")):
                row = await run_one(impl, n, args.messages, (args.server_cpu, args.client_cpu))
                row["rep"] = rep
                rows.append(row)
                print(json.dumps(row), flush=True)
    print()
    print("| sockets | impl | deliveries/s (wall) | server CPU µs/delivery | CPU-bound deliveries/s |")
    print("|---|---|---|---|---|")
    for n in sorted({r["sockets"] for r in rows}):
        base = None
        for impl in ("stock", "fanout"):
            rs = [r for r in rows if r["sockets"] == n and r["impl"] == impl]
            cpu = sorted(r["server_cpu_us_per_delivery"] for r in rs)[len(rs) // 2]
            dps = sorted(r["deliveries_per_s"] for r in rs)[len(rs) // 2]
            if impl == "stock":
                base = cpu
            ratio = f" ({base / cpu:.1f}x less)" if impl == "fanout" and base else ""
            print(f"| {n} | {impl} | {dps:,} | {cpu:.1f}{ratio} | {round(1e6 / cpu):,} |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]))
        sys.exit(0)
    ap = argparse.ArgumentParser()
    ap.add_argument("--sockets", default="50,500")
    ap.add_argument("--messages", type=int, default=200)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--server-cpu", default="0")
    ap.add_argument("--client-cpu", default="1")
    args = ap.parse_args()
    pin = ["taskset", "-c", args.client_cpu] if shutil.which("taskset") else []
    if pin and os.environ.get("_FANOUT_BENCH_PINNED") != "1":
        os.environ["_FANOUT_BENCH_PINNED"] = "1"
        os.execvp(pin[0], [*pin, sys.executable, *sys.argv])
    asyncio.run(main(args))
