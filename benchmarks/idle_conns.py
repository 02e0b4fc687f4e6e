#!/usr/bin/env python3
"""Opens N keep-alive connections to a gateway, sends one request on each,
reads the response, then leaves every connection open and idle.

Used by `benchmarks/run` to measure the gateway's RSS with 10,000 idle
keep-alive connections. Protocol on stdout/stdin:
  prints  "OPEN ok=<n> failed=<n> non200=<n> seconds=<s>"  once all are open,
  waits for one line on stdin (the harness reads the RSS meanwhile),
  prints  "CLOSED_BY_SERVER <n>"  (connections the server closed while idle),
  closes everything and exits.

Usage: idle_conns.py HOST PORT PATH N [BATCH]
"""
import resource
import selectors
import socket
import sys
import time


def main():
    host, port, path, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    batch = int(sys.argv[5]) if len(sys.argv) > 5 else 500
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, n + 1000) if hard != resource.RLIM_INFINITY else n + 1000
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: keep-alive\r\n\r\n".encode()
    socks = []
    ok = failed = non200 = 0
    t0 = time.monotonic()
    sel = selectors.DefaultSelector()
    remaining = n
    while remaining > 0:
        k = min(batch, remaining)
        remaining -= k
        pending = {}
        for _ in range(k):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.connect_ex((host, port))
            pending[s.fileno()] = [s, b"", False]  # socket, received bytes, request sent
            sel.register(s, selectors.EVENT_WRITE)
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            for key, ev in sel.select(timeout=1):
                st = pending.get(key.fd)
                if st is None:
                    continue
                s = st[0]
                if not st[2]:
                    if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
                        failed += 1
                        sel.unregister(s); s.close(); del pending[key.fd]
                        continue
                    try:
                        s.send(request)
                    except OSError:
                        failed += 1
                        sel.unregister(s); s.close(); del pending[key.fd]
                        continue
                    st[2] = True
                    sel.modify(s, selectors.EVENT_READ)
                    continue
                try:
                    data = s.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    failed += 1
                    sel.unregister(s); s.close(); del pending[key.fd]
                    continue
                st[1] += data
                buf = st[1]
                he = buf.find(b"\r\n\r\n")
                if he < 0:
                    continue
                length = 0
                for line in buf[:he].split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                if len(buf) - (he + 4) < length:
                    continue
                if not buf.startswith(b"HTTP/1.1 200"):
                    non200 += 1
                ok += 1
                sel.unregister(s)
                socks.append(s)
                del pending[key.fd]
        for fd, st in list(pending.items()):
            failed += 1
            sel.unregister(st[0]); st[0].close()
    print(f"OPEN ok={ok} failed={failed} non200={non200} seconds={time.monotonic() - t0:.2f}", flush=True)
    sys.stdin.readline()
    closed = 0
    for s in socks:
        try:
            d = s.recv(1)
            if d == b"":
                closed += 1
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
    print(f"CLOSED_BY_SERVER {closed}", flush=True)
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
