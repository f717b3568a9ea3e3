#!/usr/bin/env python3
"""Opens N TLS connections to HOST:PORT, sends one HTTP/1.1 request on each,
reads the answer and keeps the connection open (idle keep-alive).

Prints `open <count>` once all are open, then on each `check` line read from
stdin prints `alive <count>` (connections the server has not closed); exits
on end of input. Used by scenario 7 of compare.sh; only for 127.0.0.1.
"""

import asyncio
import resource
import ssl
import sys

HOST, PORT, COUNT = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
PARALLEL = 64


async def open_one(ctx, sem, conns):
    async with sem:
        reader, writer = await asyncio.open_connection(HOST, PORT, ssl=ctx, server_hostname="bench.local")
        writer.write(b"GET / HTTP/1.1\r\nHost: bench.local\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        if length:
            await reader.readexactly(length)
        conns.append((reader, writer))


async def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, COUNT + 1000)), hard))
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    sem = asyncio.Semaphore(PARALLEL)
    conns = []
    results = await asyncio.gather(*(open_one(ctx, sem, conns) for _ in range(COUNT)),
                                   return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        print(f"{len(errors)} connections failed, first: {errors[0]!r}", file=sys.stderr)
    print(f"open {len(conns)}", flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        # A connection the server closed reads EOF at once.
        alive = 0
        for reader, _ in conns:
            if not reader.at_eof():
                try:
                    await asyncio.wait_for(reader.read(1), 0.0001)
                except asyncio.TimeoutError:
                    alive += 1
                    continue
                except (ConnectionError, ssl.SSLError):
                    continue
        print(f"alive {alive}", flush=True)
    for _, writer in conns:
        writer.close()


asyncio.run(main())
