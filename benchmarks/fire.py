#!/usr/bin/env python3
"""Sends exactly N requests to a gateway as fast as C keep-alive connections allow,
and reports how long that took and which statuses came back.

Used by `benchmarks/run` for the callback figure (N async requests with a
`Callback-URL` header). wrk cannot stop after a fixed number of requests; this can.

Prints on stdout (times are time.monotonic(), CLOCK_MONOTONIC: comparable with
the harness's own clock):
  START <t_first_send>
  DONE sent=<n> answered=<n> statuses=<status:count,...> errors=<n> first=<t> last=<t> \
       p50_ms=<x> p99_ms=<x> seconds=<s>

Usage: fire.py HOST PORT PATH N CONNECTIONS [HEADER: VALUE]...
"""
import asyncio
import sys
import time


async def worker(host, port, request, state, lat, statuses, errors):
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        errors[0] += 1
        return
    try:
        while state["next"] < state["n"]:
            state["next"] += 1
            t0 = time.monotonic()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            lat.append(time.monotonic() - t0)
            statuses[status] = statuses.get(status, 0) + 1
            state["last"] = time.monotonic()
    except (OSError, asyncio.IncompleteReadError, ValueError):
        errors[0] += 1
    finally:
        writer.close()


async def main():
    host, port, path, n, conns = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    headers = "".join(h + "\r\n" for h in sys.argv[6:])
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{headers}\r\n".encode()
    state = {"next": 0, "n": n, "last": None}
    lat, statuses, errors = [], {}, [0]
    first = time.monotonic()
    print(f"START {first:.6f}", flush=True)
    await asyncio.gather(*(worker(host, port, request, state, lat, statuses, errors) for _ in range(conns)))
    last = state["last"] or time.monotonic()
    lat.sort()

    def pct(p):
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")
    st = ",".join(f"{k}:{v}" for k, v in sorted(statuses.items()))
    print(f"DONE sent={state['next']} answered={len(lat)} statuses={st} errors={errors[0]} first={first:.6f} "
          f"last={last:.6f} p50_ms={pct(0.5):.2f} p99_ms={pct(0.99):.2f} seconds={last - first:.3f}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
