"""Fault injection for tests: a TCP proxy that really cuts a connection, and waits on conditions.

A test points a server (or a Redis/database client) at TcpProxy.port instead of the real
service. stop() resets every open connection and refuses new ones, which is what a crashed
or unreachable Redis/MariaDB looks like to the client; start() brings the service back on
the same port.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy.engine import make_url

from tests.support import free_port

T = TypeVar("T")


class TcpProxy:
    """127.0.0.1:port → target. stop() resets every connection and refuses new ones;
    start() listens again on the same port."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def redis_url(self, real_url: str) -> str:
        """real_url (redis://host:port/db) with host and port replaced by this proxy's."""
        u = make_url(real_url)
        return u.set(host="127.0.0.1", port=self.port).render_as_string(hide_password=False)

    def start(self) -> TcpProxy:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(128)
        self._listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()
        return self

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                client, _ = ls.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                # stop() may have run while this connection was being set up: it would have
                # missed it, and the connection would live on through the "stopped" proxy.
                current = self._listener is ls
                if current:
                    self._conns += [client, upstream]
            if not current:
                self._reset([client, upstream])
                return
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, []
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
            except OSError:
                pass
            listener.close()
        self._reset(conns)

    @staticmethod
    def _reset(conns: list[socket.socket]) -> None:
        """Ends every connection, the silent ones too (a transaction waiting for a lock, an idle
        pooled connection): close() alone does not wake a pump thread blocked in recv() on the
        socket, which then stays open and silent through the "stopped" proxy (a database cut
        hung test_writer that way, docs/reliability.md); shutdown() wakes it."""
        for s in conns:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


def wait_until(pred: Callable[[], Any], timeout: float = 30, interval: float = 0.1) -> Any:
    """Polls pred() until it returns something truthy (returned); fails after timeout seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met in {timeout}s (last: {last!r})")


async def eventually(probe: Callable[[], Awaitable[T]], expected: T, timeout: float = 30,
                     interval: float = 0.05) -> T:
    """Awaits probe() until it returns `expected`; fails after timeout seconds with the last value."""
    deadline = time.monotonic() + timeout
    while True:
        last = await probe()
        if last == expected:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {expected!r} within {timeout}s, last got {last!r}")
        await asyncio.sleep(interval)


class OwnRedis:
    """A throwaway redis-server on a port of its own; stopped and started again on that port."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True).stdout.strip() != b"PONG":
            assert time.monotonic() < deadline, "redis-server not ready"
            time.sleep(0.05)

    def signal(self, sig: int) -> None:
        assert self.proc is not None and self.proc.poll() is None
        os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
            self.proc.wait(30)
