#!/usr/bin/env python3
"""A loopback HTTP receiver that answers every request after a fixed delay, on several ports at once.

    python bench/delayed_receiver.py --ports 8001,8002 --delay-ms 50 [--status 204]
    python bench/delayed_receiver.py --count 1000 --delay-ms 200   # ports chosen by the kernel

With ``--count N`` it listens on N ports the kernel picks (no race with other processes choosing free ports)
and prints them, comma-separated, as its first line on standard output once every one listens.

The shape of real receivers (tens of milliseconds away) for the peer benchmark: one process, one asyncio
loop, any number of listening ports (one per "endpoint"), HTTP/1.1 keep-alive, no per-connection thread, so
it stays cheap next to the senders being measured. Each request's body is read in full, then the answer
(``--status``, empty body) is written ``--delay-ms`` later; requests on other connections are not held up.
Listens on 127.0.0.1 only (no project imports) and stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

_REASONS = {200: "OK", 204: "No Content", 500: "Internal Server Error"}


async def _serve(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float, status: int
) -> None:
    answer = f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\n".encode()
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            close = False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                key = name.strip().lower()
                if key == b"content-length":
                    length = int(value.strip())
                elif key == b"connection" and value.strip().lower() == b"close":
                    close = True
            if length:
                await reader.readexactly(length)
            await asyncio.sleep(delay)
            extra = b"Connection: close\r\n" if close else b""
            body_header = b"" if status == 204 else b"Content-Length: 0\r\n"
            writer.write(answer + body_header + extra + b"\r\n")
            await writer.drain()
            if close:
                break
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def _main(ports: Sequence[int], delay: float, status: int, count: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    servers = [
        await asyncio.start_server(
            lambda r, w: _serve(r, w, delay, status), "127.0.0.1", port, backlog=1024, reuse_address=True
        )
        for port in [*ports, *[0] * count]
    ]
    if count:
        chosen = [server.sockets[0].getsockname()[1] for server in servers[len(ports) :]]
        print(",".join(map(str, chosen)), flush=True)
    await stop.wait()
    for server in servers:
        server.close()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ports", default="", help="comma-separated ports to listen on (127.0.0.1)")
    p.add_argument("--count", type=int, default=0, help="also listen on this many ports the kernel picks")
    p.add_argument(
        "--delay-ms", type=float, default=50.0, help="milliseconds before each answer (default 50)"
    )
    p.add_argument("--status", type=int, default=204, help="HTTP status of every answer (default 204)")
    args = p.parse_args(argv)
    ports = [int(port) for port in args.ports.split(",") if port]
    if not ports and not args.count:
        p.error("give --ports or --count")
    asyncio.run(_main(ports, args.delay_ms / 1000.0, args.status, args.count))
    return 0


if __name__ == "__main__":
    sys.exit(main())
