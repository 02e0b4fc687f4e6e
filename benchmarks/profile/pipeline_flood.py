# How long another caller's `GET /healthz` takes while clients flood one gateway with
# pipelined requests it answers at once (no upstream): FLOODERS connections each send
# 64 KiB of `GET /healthz` at a time (reading the answers on their own thread) for
# SECONDS; one more connection sends one `GET /healthz` every 10 ms and times it.
#   python3 benchmarks/profile/pipeline_flood.py PORT [SECONDS=6] [FLOODERS=4]
# As measured for README ("HTTP server behaviour"): the gateway on CPU 1 with one event
# loop, this script on CPU 0 (`taskset -c 0 python3 …`).
import socket, sys, threading, time

port = int(sys.argv[1])
duration = float(sys.argv[2]) if len(sys.argv) > 2 else 6.0
flooders = int(sys.argv[3]) if len(sys.argv) > 3 else 4
req = b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n"
batch = req * (65536 // len(req))
stop = time.time() + duration


def flood():
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(5)

    def drain():
        try:
            while time.time() < stop + 1:
                if not s.recv(1 << 20):
                    break
        except OSError:
            pass

    threading.Thread(target=drain, daemon=True).start()
    try:
        while time.time() < stop:
            s.sendall(batch)
    except OSError:
        pass


for _ in range(flooders):
    threading.Thread(target=flood, daemon=True).start()
time.sleep(0.5)
lat = []
c = socket.create_connection(("127.0.0.1", port))
c.settimeout(10)
while time.time() < stop:
    t0 = time.time()
    c.sendall(req)
    d = b""
    while b"\r\n\r\n" not in d:
        d += c.recv(4096)
    lat.append((time.time() - t0) * 1000)
    time.sleep(0.01)
lat.sort()
print(f"healthz n={len(lat)} p50={lat[len(lat) // 2]:.2f} ms p99={lat[int(len(lat) * 0.99)]:.2f} ms max={lat[-1]:.2f} ms")
