"""A load-generator worker: holds Server-Sent Events streams and records what arrives on each.

The orchestrator (`bench/run.py`) starts several of these, each bound to its own loopback
source address, and drives them with JSON lines on stdin; each command is answered by one
JSON line on stdout. It speaks plain HTTP/1.1 on asyncio streams (uvloop when installed),
so it can load bellcast and nginx + Nchan alike.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import sys
import time
from typing import Any

CONNECT_TIMEOUT = 30.0
# socket.IP_BIND_ADDRESS_NO_PORT, which Python names from 3.12 on.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


class Stream:
    """One open stream and the payload keys it received, in order."""

    __slots__ = ("arrivals", "changes", "keys", "latencies", "path", "reader", "task", "writer")

    def __init__(self, path: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.path = path
        self.reader = reader
        self.writer = writer
        self.keys: list[str] = []
        self.latencies: list[float] = []
        # bellcast's `changed` events: (what changed and which ids, when it arrived).
        self.changes: list[tuple[str, float]] = []
        # bellcast's notifications: (the notification's id, when it arrived), whoever made them; the
        # watched collection's documents carry no payload of the bench's own, only their `_id`.
        self.arrivals: list[tuple[str, float]] = []
        self.task: asyncio.Task[None] | None = None


def _record(stream: Stream, data: bytes) -> None:
    try:
        payload = json.loads(data)
    except ValueError:
        return
    if isinstance(payload, dict) and "change" in payload and isinstance(payload.get("ids"), list):
        stream.changes.append((f"{payload['change']}:{','.join(map(str, payload['ids']))}", time.time()))
        return
    now = time.time()
    if isinstance(payload, dict) and isinstance(payload.get("id"), str):
        stream.arrivals.append((payload["id"], now))
    inner = payload.get("data") if isinstance(payload, dict) else None
    if isinstance(inner, dict) and "k" in inner:
        stream.keys.append(str(inner["k"]))
        stream.latencies.append(now - float(inner["t0"]))


def _parse_events(stream: Stream, buffer: bytearray) -> None:
    while True:
        end = buffer.find(b"\n\n")
        if end < 0:
            return
        block = bytes(buffer[:end])
        del buffer[: end + 2]
        data = [line[5:].lstrip(b" ") for line in block.split(b"\n") if line.startswith(b"data:")]
        if data:
            _record(stream, b"\n".join(data))


async def _read_forever(stream: Stream, chunked: bool, pending: bytes) -> None:
    raw = bytearray(pending)
    events = bytearray()
    reader = stream.reader
    try:
        while True:
            if chunked:
                while True:
                    line_end = raw.find(b"\r\n")
                    if line_end < 0:
                        break
                    size = int(raw[:line_end].split(b";")[0], 16)
                    if len(raw) < line_end + 2 + size + 2:
                        break
                    events += raw[line_end + 2 : line_end + 2 + size]
                    del raw[: line_end + 2 + size + 2]
                    if size == 0:
                        return
            else:
                events += raw
                raw.clear()
            _parse_events(stream, events)
            more = await reader.read(65536)
            if not more:
                return
            raw += more
    except (ConnectionError, asyncio.IncompleteReadError, ValueError):
        return


async def connect_from(source: str, host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection from the address `source`, its port chosen at connect time.

    bind() to (source, 0) picks a port by searching every port bound on the host, slower with each
    socket held and each left in TIME_WAIT: the workers spent up to 1.5 cores in it while bellcast
    waited, and the connects/s measured the load generator. IP_BIND_ADDRESS_NO_PORT (Linux) leaves
    the choice to connect(), which only needs the 4-tuple to be unique.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((source, 0))
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


async def open_stream(host: str, port: int, path: str, source: str) -> Stream:
    """Connect from `source`, send the GET, read the head; raise unless it is a 200."""
    reader, writer = await connect_from(source, host, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if status != 200:
        writer.close()
        raise ConnectionError(f"status {status}")
    stream = Stream(path, reader, writer)
    chunked = b"transfer-encoding: chunked" in head.lower()
    stream.task = asyncio.ensure_future(_read_forever(stream, chunked, b""))
    return stream


def _close(stream: Stream, reset: bool) -> None:
    if reset:
        # SO_LINGER 0: the kernel answers with RST instead of FIN, as a crashed client would.
        sock = stream.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.writer.close()
    if stream.task is not None:
        stream.task.cancel()


class Worker:
    """Holds the streams of one source address and answers the orchestrator's commands."""

    def __init__(self, host: str, port: int, source: str) -> None:
        self.host, self.port, self.source = host, port, source
        self.streams: list[Stream] = []

    async def connect(self, paths: list[str], concurrency: int) -> dict[str, Any]:
        semaphore = asyncio.Semaphore(concurrency)
        errors: dict[str, int] = {}

        async def one(path: str) -> Stream | None:
            async with semaphore:
                try:
                    return await asyncio.wait_for(open_stream(self.host, self.port, path, self.source), CONNECT_TIMEOUT)
                except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as error:
                    name = type(error).__name__ + (f": {error}" if isinstance(error, ConnectionError) else "")
                    errors[name] = errors.get(name, 0) + 1
                    return None

        started = time.perf_counter()
        opened = await asyncio.gather(*(one(path) for path in paths))
        seconds = time.perf_counter() - started
        new = [s for s in opened if s is not None]
        self.streams.extend(new)
        return {"connected": len(new), "failed": len(paths) - len(new), "seconds": seconds, "errors": errors}

    def report(self) -> dict[str, Any]:
        alive = sum(1 for s in self.streams if s.task is not None and not s.task.done())
        return {
            "open": alive,
            "keys": [[s.path, s.keys] for s in self.streams],
            "latencies": [latency for s in self.streams for latency in s.latencies],
            "changes": [[s.path, s.changes] for s in self.streams],
            "arrivals": [[s.path, s.arrivals] for s in self.streams],
        }

    def reset(self) -> dict[str, Any]:
        for s in self.streams:
            s.keys.clear()
            s.latencies.clear()
            s.changes.clear()
            s.arrivals.clear()
        return {"ok": True}

    def close_all(self, reset: bool) -> dict[str, Any]:
        count = len(self.streams)
        for s in self.streams:
            _close(s, reset)
        self.streams.clear()
        return {"closed": count}

    async def churn(self, paths: list[str], rate: float) -> dict[str, Any]:
        """Open each stream, wait for its head, close it (alternately FIN and RST), at `rate` per second."""
        done = {"ok": 0, "failed": 0}
        tasks = []

        async def one(index: int, path: str) -> None:
            try:
                stream = await asyncio.wait_for(open_stream(self.host, self.port, path, self.source), CONNECT_TIMEOUT)
            except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError):
                done["failed"] += 1
                return
            await asyncio.sleep(0.05)
            _close(stream, reset=index % 2 == 1)
            done["ok"] += 1

        started = time.perf_counter()
        for index, path in enumerate(paths):
            delay = started + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(index, path)))
        await asyncio.gather(*tasks)
        return {**done, "seconds": time.perf_counter() - started}


async def main() -> None:
    host, port, source = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    worker = Worker(host, port, source)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        command = json.loads(line)
        op = command["op"]
        if op == "connect":
            answer = await worker.connect(command["paths"], command.get("concurrency", 100))
        elif op == "report":
            answer = worker.report()
        elif op == "reset":
            answer = worker.reset()
        elif op == "close":
            answer = worker.close_all(command.get("reset", False))
        elif op == "churn":
            answer = await worker.churn(command["paths"], command["rate"])
        else:
            answer = {"error": f"unknown op {op}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
