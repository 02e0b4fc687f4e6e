# Splits sampled CPU time (perf record -e cpu-clock --call-graph dwarf) of one
# process by where it was spent: kernel time by the system call it ran under,
# libcurl (with the libc and vDSO calls libcurl made), and Switchboard's own code
# by source module (with the Swift runtime and libc calls it made).
#   python3 perf_split.py PERF_DATA CPU_US_PER_REQUEST
# Prints each part's share of the samples and, scaled by CPU_US_PER_REQUEST (measured
# without perf attached), microseconds per request. Samples, not instruction counts:
# a `rep stosb` clearing 8 KiB is one cheap instruction here, thousands in callgrind.
import collections, re, subprocess, sys

data, us_per_req = sys.argv[1], float(sys.argv[2])
script = subprocess.run(["perf", "script", "-i", data, "-F", "ip,sym,dso"],
                        capture_output=True, text=True, errors="replace").stdout

MODULE = re.compile(r"^\$s(\d+)([A-Za-z0-9_]+)")
OURS = {"EventLoop", "HTTP1", "Gateway", "Flows", "Routes", "JSON", "Upstream", "Jobs",
        "Journal", "Locking", "Crypto", "switchboard"}


def module_of(sym):
    """Switchboard module of a mangled Swift symbol (`$s7Gateway...` → Gateway), or None."""
    m = MODULE.match(sym)
    if not m:
        return None
    n = int(m.group(1))
    name = m.group(2)[:n]
    return name if name in OURS else None


def classify(frames):
    """frames: innermost first, each (sym, dso). Returns the part a sample belongs to."""
    sym0, dso0 = frames[0]
    if "kernel" in dso0:
        for sym, dso in frames:
            if "kernel" not in dso:
                break
            m = re.match(r"__x64_sys_(\w+)", sym)
            if m:
                name = m.group(1)
                if name in ("sendto", "sendmsg", "writev", "write"):
                    return "kernel: send/write (incl. loopback delivery to the peer)"
                if name in ("recvfrom", "read", "recvmsg"):
                    return "kernel: recv/read"
                if name in ("poll", "ppoll"):
                    return "kernel: poll (libcurl's socket checks)"
                if name.startswith("epoll"):
                    return "kernel: epoll"
                return "kernel: other system calls"
        return "kernel: interrupts, softirqs, page faults"
    # User space: the innermost frame that is libcurl or Switchboard decides.
    for sym, dso in frames:
        if "libcurl" in dso:
            return "libcurl (and the libc/vDSO calls it makes)"
        mod = module_of(sym)
        if mod:
            if dso0.startswith("libswiftCore") or "libswift" in dso0:
                return "Swift runtime (retain/release, allocation) for ours"
            if "libc.so" in dso0:
                return "libc (malloc/free, memcpy) for ours"
            return f"ours: {mod}"
    if "libswift" in dso0:
        return "Swift runtime (retain/release, allocation) for ours"
    if "libc.so" in dso0 or "vdso" in dso0:
        return "libc/vDSO, caller unknown"
    return f"other: {dso0}"


# Inside libcurl, by transfer phase: only when libcurl has symbols (a build of
# Debian's source, see libcurl_with_symbols), as the stripped system library shows
# only its exported functions. Every sample under a libcurl frame counts, kernel
# time included (the send of the request, the recv of the response, the polls).
CURL_PHASES = [  # the innermost marker on the call chain decides
    ({"curl_easy_init", "curl_easy_cleanup", "curl_easy_setopt", "curl_easy_reset"},
     "per-transfer options and handle replacement (setopt; init, cleanup)"),
    ({"Curl_connect", "create_conn"}, "choosing a connection (URL into a connection, pool lookup, liveness poll)"),
    ({"Curl_http_bodysend"}, "sending the request (kernel send included)"),
    ({"Curl_http", "multi_do"}, "building the request (headers, printf engine)"),
    ({"Curl_readwrite"}, "reading the response (recv, status line and fields, our callbacks)"),
    ({"Curl_pretransfer", "multi_done", "Curl_posttransfer", "Curl_preconnect"},
     "starting and finishing a transfer (pretransfer, multi_done)"),
]


def curl_phase(frames):
    """The transfer phase a sample under libcurl belongs to, or None outside libcurl."""
    if not any("libcurl" in dso for _, dso in frames):
        return None
    for sym, _ in frames:  # innermost first
        for markers, label in CURL_PHASES:
            if sym in markers:
                return label
    return "multi bookkeeping (socket_action, timers, socket callbacks)"


parts = collections.Counter()
curl_parts = collections.Counter()
curl_symbols = False
frames = []
total = 0
for line in script.splitlines() + [""]:
    line = line.strip()
    if not line:
        if frames:
            parts[classify(frames)] += 1
            phase = curl_phase(frames)
            if phase:
                curl_parts[phase] += 1
                curl_symbols = curl_symbols or any(sym == "multi_runsingle" for sym, _ in frames)
            total += 1
        frames = []
        continue
    m = re.match(r"^[0-9a-f]+\s+(.*?)\s+\(([^)]*)\)$", line)
    if m:
        sym = re.sub(r"\+0x[0-9a-f]+$", "", m.group(1))
        frames.append((sym, m.group(2).split("/")[-1]))

print(f"{total} samples; CPU per request {us_per_req:.1f} µs (measured without perf)")
for part, n in sorted(parts.items(), key=lambda kv: -kv[1]):
    print(f"{100 * n / total:6.1f}%  {us_per_req * n / total:6.1f} µs  {part}")

if curl_symbols:
    n_curl = sum(curl_parts.values())
    print(f"\nInside libcurl, by transfer phase (kernel time under libcurl included): "
          f"{100 * n_curl / total:.1f}% of samples, {us_per_req * n_curl / total:.1f} µs")
    for part, n in sorted(curl_parts.items(), key=lambda kv: -kv[1]):
        print(f"{100 * n / total:6.1f}%  {us_per_req * n / total:6.1f} µs  {part}")
