"""A throw-away ``redis-server`` on 127.0.0.1 (no persistence), the broker of the Celery tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from sensei_airflow.local_postgres import free_port

#: how long a starting redis-server may take to answer PING on a busy machine.
START_TIMEOUT = 60.0


class RedisNotStarted(RuntimeError):
    """redis-server is missing or did not answer; the message says why and how to install it."""


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen[bytes]
    workdir: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_redis() -> RedisServer:
    """Start ``redis-server --port P --save ''`` and wait until it answers PING."""
    binary = os.environ.get("SENSEI_REDIS_SERVER") or shutil.which("redis-server")
    if not binary:
        raise RedisNotStarted(
            "redis-server is not installed: run `make redis` (Debian/Ubuntu: apt-get install redis-server)"
        )
    workdir = Path(tempfile.mkdtemp(prefix="sensei-redis-"))
    port = free_port()
    log = open(workdir / "redis.log", "ab")  # noqa: SIM115 - the child keeps it
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    log.close()
    server = RedisServer(port=port, process=process, workdir=workdir)
    deadline = time.monotonic() + START_TIMEOUT
    while not server.ping():
        if process.poll() is not None or time.monotonic() > deadline:
            tail = (workdir / "redis.log").read_text(errors="replace")[-2000:]
            server.stop()
            raise RedisNotStarted(f"redis-server on port {port} did not answer PING:\n{tail}")
        time.sleep(0.2)
    return server
