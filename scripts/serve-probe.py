#!/usr/bin/env python3
"""Issue 16's observations, replayed against a `braid` binary: prints one
line per item with what that binary does. Run it on an old build and a new
one to get the before/after table:

    python3 scripts/serve-probe.py --braid /path/to/old/braid
    python3 scripts/serve-probe.py --braid target/release/braid

Everything is on 127.0.0.1, each wait bounded (a hang shows as "no exit
within N s"). Needs models/all-MiniLM-L6-v2. Runs on the CPU.
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import time

MODEL = os.path.join(os.path.dirname(__file__), "..", "models", "all-MiniLM-L6-v2")


def start(braid, extra=(), env=None, nofile=None):
    cmd = [braid, "serve", "--device", "cpu", "--port", "0", "--model", MODEL, *extra]
    if nofile:
        cmd = ["bash", "-c", f'ulimit -n {nofile} && exec "$@"', "bash", *cmd]
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env={**os.environ, **(env or {})})
    t0 = time.time()
    while time.time() - t0 < 120:
        line = p.stderr.readline()
        if not line:
            break
        if "http://" in line:
            host, port = line.split("http://")[1].split()[0].rsplit(":", 1)
            return p, (host, int(port))
    p.kill()
    raise SystemExit(f"{braid} serve did not start")


def stop(p, timeout=20):
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def raw(addr, data, half_close=False, timeout=15):
    s = socket.create_connection(addr)
    s.settimeout(timeout)
    try:
        s.sendall(data)
    except OSError:
        pass
    if half_close:
        s.shutdown(socket.SHUT_WR)
    out = b""
    try:
        while True:
            b = s.recv(65536)
            if not b:
                break
            out += b
    except (socket.timeout, ConnectionResetError):
        pass
    s.close()
    return out


def status_body(resp):
    if not resp:
        return "0 bytes", ""
    head, _, body = resp.partition(b"\r\n\r\n")
    return head.split(b" ")[1].decode(), body.decode(errors="replace")[:120]


def rss_kb(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])


def req(method, path, host="localhost", body=b"", extra=b""):
    ct = b"Content-Type: application/json\r\n" if body else b""
    return b"%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n%s%sContent-Length: %d\r\n\r\n%s" % (method.encode(), path.encode(), host.encode(), ct, extra, len(body), body)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--braid", required=True)
    ap.add_argument("--only-fd", action="store_true", help="only the fd-limit item")
    a = ap.parse_args()
    b = a.braid

    # 2: fd limit 256, 300 silent sockets, then /health on a new connection.
    p, addr = start(b, nofile=256)
    silent = []
    for _ in range(300):
        try:
            silent.append(socket.create_connection(addr, timeout=5))
        except OSError:
            break
    time.sleep(1)
    t0 = time.time()
    try:
        st, bd = status_body(raw(addr, req("GET", "/health"), timeout=10))
    except OSError as e:
        st, bd = f"connect failed ({e})", ""
    took = time.time() - t0
    for s in silent:
        s.close()
    time.sleep(1)
    st2, _ = status_body(raw(addr, req("GET", "/health"), timeout=10))
    print(f"2 ulimit -n 256, {len(silent)} silent sockets: /health on a new connection: {st} after {took:.2f} s {bd[:60]!r}; after closing them: {st2}")
    stop(p)
    if a.only_fd:
        return

    # 1: SIGTERM with a half-sent request open.
    p, addr = start(b)
    s = socket.create_connection(addr)
    s.sendall(b"GET /health HTTP/1.1\r\nHo")
    time.sleep(0.3)
    t0 = time.time()
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(15)
        r1 = f"exits {time.time()-t0:.1f} s after SIGTERM"
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(5)
            r1 = "no exit within 15 s of SIGTERM; a second signal (SIGINT) ended it"
        except subprocess.TimeoutExpired:
            r1 = "no exit within 15 s of SIGTERM, nor 5 s after a SIGINT"
            p.kill()
            p.wait()
    s.close()
    print(f"1 half-sent request + SIGTERM: {r1}")

    p, addr = start(b)
    # 2: a silent socket.
    s = socket.create_connection(addr)
    s.settimeout(15)
    t0 = time.time()
    try:
        got = s.recv(1)
        r2 = f"closed after {time.time()-t0:.1f} s" if got == b"" else "got data"
    except socket.timeout:
        r2 = "still open after 15 s"
    s.close()
    print(f"2 silent socket: {r2}")
    # 8: half-close.
    body = b'{"inputs": ["half closed"]}'
    st, _ = status_body(raw(addr, req("POST", "/embed", body=body), half_close=True))
    print(f"8 full request then SHUT_WR: {st}")
    # 9: foreign Host.
    st, bd = status_body(raw(addr, req("GET", "/health", host="evil.example")))
    print(f"9 Host: evil.example on loopback, no key: {st} {bd}")
    # 10: 405 / 414 / 431 bodies.
    for name, data in [("405 GET /embed", req("GET", "/embed")), ("414 70 KB URI", req("GET", "/health?" + "x" * 70000)), ("431 200 headers", req("GET", "/health", extra=b"".join(b"X-H%d: v\r\n" % i for i in range(200))))]:
        st, bd = status_body(raw(addr, data))
        print(f"10 {name}: {st} body {bd!r}")
    # 3: one 1.9 MB text.
    base = rss_kb(p.pid)
    body = json.dumps({"inputs": ["a " * 950_000]}).encode()
    t0 = time.time()
    st, _ = status_body(raw(addr, req("POST", "/embed", body=body), timeout=120))
    print(f"3 one 1.9 MB text: {st} in {time.time()-t0:.2f} s, peak RSS +{(rss_kb(p.pid, 'VmHWM') - base)/1024:.0f} MB over {base/1024:.0f} MB")
    stop(p)

    # 5: pool of 2 (one worker stream), --workers 1.
    try:
        p, addr = start(b, ["--workers", "1"], env={"BRAID_STREAM_POOL_SIZE": "2"})
        st, bd = status_body(raw(addr, req("POST", "/embed", body=b'{"inputs": ["x"]}')))
        print(f"5 BRAID_STREAM_POOL_SIZE=2 --workers 1: {st} {bd!r}")
        stop(p)
    except SystemExit as e:
        print(f"5 BRAID_STREAM_POOL_SIZE=2 --workers 1: did not start ({e})")
    try:
        out = subprocess.run([b, "serve", "--device", "cpu", "--port", "0", "--model", MODEL, "--workers", "2"], env={**os.environ, "BRAID_STREAM_POOL_SIZE": "2"}, capture_output=True, text=True, timeout=60)
        print(f"5 BRAID_STREAM_POOL_SIZE=2 --workers 2: exit {out.returncode}: {out.stderr.strip().splitlines()[-1][:200] if out.stderr.strip() else ''}")
    except subprocess.TimeoutExpired:
        print("5 BRAID_STREAM_POOL_SIZE=2 --workers 2: started and still serving after 60 s (no start-up check)")

    # 6: start-up limits.
    for args in (["--max-batch", "18446744073709551615"], ["--workers", "100000"]):
        try:
            out = subprocess.run([b, "serve", "--device", "cpu", "--port", "0", "--model", MODEL, *args], capture_output=True, text=True, timeout=60)
            last = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else ""
            print(f"6 {' '.join(args)}: exit {out.returncode}: {last[:160]}")
        except subprocess.TimeoutExpired:
            print(f"6 {' '.join(args)}: still running after 60 s")

    # 11: port in use.
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    t0 = time.time()
    out = subprocess.run([b, "serve", "--device", "cpu", "--port", str(port), "--model", MODEL], capture_output=True, text=True, timeout=120)
    print(f"11 port in use: exit {out.returncode} after {time.time()-t0:.2f} s; loaded the model first: {'loading' in out.stderr}")
    taken.close()


if __name__ == "__main__":
    main()
