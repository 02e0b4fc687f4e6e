"""Splits each request's latency from a loopback capture (see latency_split).

    latency_split.py CAPTURE.pcap GATEWAY_PORT UPSTREAM_PORT...

Requests and responses are paired in order on each connection (keep-alive, no
pipelining); an upstream request is tied to the caller's request by the trace id
of their `traceparent` fields. Prints, per upstream port, the percentiles of: the
whole request as the gateway's socket saw it, the caller's request to the
gateway's request to that upstream, the upstream's own time, and its answer to the
gateway's response."""
import collections
import re
import struct
import sys

TRACE = re.compile(rb"(?i)traceparent: *00-([0-9a-f]{32})")


def packets(path):
    """(time in seconds, source port, destination port, TCP payload) of each packet
    that carries data, in capture order."""
    with open(path, "rb") as f:
        magic, _, _, _, _, _, link = struct.unpack("<IHHiIII", f.read(24))
        scale = 1e-9 if magic == 0xA1B23C4D else 1e-6
        link_header = {1: 14, 113: 16, 276: 20}.get(link, 14)  # Ethernet (lo), SLL, SLL2
        while True:
            head = f.read(16)
            if len(head) < 16:
                return
            sec, frac, captured, _ = struct.unpack("<IIII", head)
            ip = f.read(captured)[link_header:]
            if len(ip) < 20 or ip[0] >> 4 != 4:
                continue
            ihl = (ip[0] & 15) * 4
            total = struct.unpack(">H", ip[2:4])[0]
            tcp = ip[ihl:total]
            sport, dport = struct.unpack(">HH", tcp[:4])
            payload = tcp[(tcp[12] >> 4) * 4:]
            if payload:
                yield sec + frac * scale, sport, dport, bytes(payload)


def exchanges(pkts, server_port):
    """{trace id: (request time, response time)} for requests to `server_port`: each
    connection's requests paired in order with the responses that follow them
    (responses to requests sent before the capture began are skipped)."""
    requests, responses = collections.defaultdict(list), collections.defaultdict(list)
    for t, sport, dport, payload in pkts:
        if dport == server_port and re.match(rb"[A-Z]+ ", payload):
            m = TRACE.search(payload)
            requests[sport].append((t, m.group(1).decode() if m else None))
        elif sport == server_port and payload.startswith(b"HTTP/1."):
            responses[dport].append(t)
    out = {}
    for port, reqs in requests.items():
        later = [t for t in responses[port] if t > reqs[0][0]]
        for (t, trace), answered in zip(reqs, later):
            if trace:
                out[trace] = (t, answered)
    return out


def main():
    path, gateway = sys.argv[1], int(sys.argv[2])
    pkts = list(packets(path))
    callers = exchanges(pkts, gateway)
    print(f"  {len(callers)} requests to the gateway in the capture")
    for upstream in map(int, sys.argv[3:]):
        legs = exchanges(pkts, upstream)
        rows = [((d - a) * 1e3, (b - a) * 1e3, (c - b) * 1e3, (d - c) * 1e3)
                for trace, (a, d) in callers.items() if trace in legs
                for b, c in [legs[trace]]]
        if not rows:
            continue
        n = len(rows)
        print(f"  upstream port {upstream}: {n} requests (ms)")
        names = ["whole request", "request -> upstream request sent", "upstream's own time",
                 "upstream answer -> response sent"]
        for i, name in enumerate(names):
            v = sorted(r[i] for r in rows)
            print(f"    {name:34s} p50 {v[n // 2]:7.3f}  p90 {v[int(n * .9)]:7.3f}  "
                  f"p99 {v[int(n * .99)]:7.3f}  max {v[-1]:7.3f}")
        slowest = sorted(rows)[int(n * .99):]
        parts = [sum(r[i] for r in slowest) / len(slowest) for i in (1, 2, 3)]
        print(f"    the slowest 1 %, on average: before the upstream {parts[0]:.2f}, "
              f"upstream {parts[1]:.2f}, after it {parts[2]:.2f}")


main()
