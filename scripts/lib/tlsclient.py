# The TLS client of the benchmark scripts (bench-tls.sh, bench-passthrough.sh):
# bulk throughput, idle-connection memory and a smoke test, with Python's ssl
# (OpenSSL). Certificates are verified against CA, names against SNI.
#
#   tlsclient.py bulk  PORT CA SNI SECONDS up|down   -> {"value": Gbit/s, ...}
#   tlsclient.py idle  PORT CA SNI CONNS PID...      -> {"value": KiB/conn, ...}
#   tlsclient.py smoke PORT CA SNI                   -> "ok"
#
# bulk and smoke talk to the loadgen sink server (first byte U: it reads,
# D: it writes); idle to redis (one PING per connection).
import json, socket, ssl, sys, time


def connect(port, ca, sni):
    c = ssl.create_default_context(cafile=ca)
    return c.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname=sni)


def rss_kib(pids):
    total = 0
    for p in pids:
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def bulk(port, ca, sni, seconds, direction):
    s = connect(port, ca, sni)
    buf = bytearray(1 << 20)
    total = 0
    start = time.monotonic()
    if direction == "up":
        s.sendall(b"U")
        while time.monotonic() - start < seconds:
            s.sendall(buf)
            total += len(buf)
    else:
        s.sendall(b"D")
        view = memoryview(buf)
        while time.monotonic() - start < seconds:
            n = s.recv_into(view)
            if n == 0:
                break
            total += n
    el = time.monotonic() - start
    s.close()
    print(json.dumps({"value": total * 8 / el / 1e9, "extra": {"bytes": total}}))


def idle(port, ca, sni, n, pids):
    before = rss_kib(pids)
    conns = []
    for _ in range(n):
        s = connect(port, ca, sni)
        s.sendall(b"PING\r\n")
        assert s.recv(16) == b"+PONG\r\n"
        conns.append(s)
    time.sleep(1.0)
    after = rss_kib(pids)
    for s in conns:
        s.close()
    print(json.dumps({"value": (after - before) / n, "extra": {"rss_before_kib": before, "rss_after_kib": after}}))


def smoke(port, ca, sni):
    # Full certificate and name verification, then 64 KiB down.
    s = connect(port, ca, sni)
    s.settimeout(5)
    s.sendall(b"D")
    got = 0
    while got < 65536:
        n = len(s.recv(65536))
        if n == 0:
            raise SystemExit("eof")
        got += n
    s.close()
    print("ok")


mode, port, ca, sni = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
if mode == "bulk":
    bulk(port, ca, sni, float(sys.argv[5]), sys.argv[6])
elif mode == "idle":
    idle(port, ca, sni, int(sys.argv[5]), [int(p) for p in sys.argv[6:]])
elif mode == "smoke":
    smoke(port, ca, sni)
else:
    raise SystemExit(f"unknown mode {mode}")
