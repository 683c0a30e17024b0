#!/usr/bin/env python3
"""Two `braid serve` processes behind a real nginx load balancer on loopback,
under load, while one replica is killed, restarted and drained: the path past
one machine that DESIGN and the README describe (N replicas behind a Service),
tested as an orchestrator would exercise it.

Owns: starting the replicas and nginx (a temporary config), the load
(stdlib HTTP clients, bounded in time and count), the faults, and the verdict.

Timeline (--seconds S, default 16):
  0      load starts: C clients post one-text /embed requests through nginx
  S/4    replica A is killed with SIGKILL (a crash: no draining)
  S/2    replica A is started again on the same port (a restarted pod)
  3S/4   replica B gets SIGTERM (a graceful scale-down: it drains and exits)
  S      load stops

Every answer is compared with the embedding the same replica binary gave for
that text before the load (cosine >= 0.99999): a wrong answer fails the test
whatever the error budget. Errors (non-200 or connection failures seen by a
client) must stay within --error-budget (a fraction, default 0.01): nginx
retries a failed upstream (proxy_next_upstream error timeout http_502
http_503 non_idempotent: embedding is idempotent), so a crash should cost
nothing or a handful of requests. Exit status 0 on pass, 1 on fail, 2 when
something it needs is missing (then it prints SKIPPED).

Usage: scripts/failover.py --braid target/release/braid --model models/all-MiniLM-L6-v2
"""

import argparse
import http.client
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

TEXTS = [
    "The cat sat on the mat.",
    "A replica went away and the balancer noticed.",
    "braid serves sentence embeddings over HTTP.",
    "Kubernetes restarts pods that fail their liveness probe.",
    "Graceful shutdown answers what was accepted.",
    "Le chat est assis sur le tapis.",
    "One endpoint, many replicas.",
    "Load balancers retry idempotent requests on another upstream.",
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port, path, body, timeout=60):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def wait_ready(port, deadline):
    while time.time() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


class Replica:
    def __init__(self, name, braid, model, port, logdir):
        self.name, self.braid, self.model, self.port = name, braid, model, port
        self.log = open(os.path.join(logdir, f"replica-{name}.log"), "ab")
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            [self.braid, "serve", "--device", "cpu", "--host", "127.0.0.1", "--port", str(self.port), "--model", self.model, "--workers", "1"],
            stdout=self.log, stderr=self.log)
        if not wait_ready(self.port, time.time() + 120):
            raise SystemExit(f"replica {self.name} did not become ready on port {self.port}")

    def kill(self, sig):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout):
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return "hung"


def served_by(access_log, port, since):
    """Has nginx answered a request from the upstream on `port` with 200
    after `since` (epoch seconds)? Reads the `up` log format below."""
    try:
        with open(access_log) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 4 and float(parts[0]) >= since and parts[2].endswith(f":{port}") and parts[3] == "200":
                    return True
    except OSError:
        pass
    return False


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return dot / (na * nb) if na and nb else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--braid", default="target/release/braid")
    ap.add_argument("--model", default="models/all-MiniLM-L6-v2")
    ap.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=16.0)
    ap.add_argument("--error-budget", type=float, default=0.01)
    ap.add_argument("--logdir", default=None)
    a = ap.parse_args()

    for what, path in (("braid binary", a.braid), ("nginx", a.nginx), ("model", os.path.join(a.model, "model.safetensors"))):
        if not os.path.exists(path):
            print(f"failover: SKIPPED ({what} not found at {path})")
            return 2

    # Absolute: nginx resolves -c and the paths in its config against -p.
    logdir = os.path.abspath(a.logdir or tempfile.mkdtemp(prefix="braid-failover-"))
    os.makedirs(logdir, exist_ok=True)
    pa, pb, plb = free_port(), free_port(), free_port()
    ra = Replica("a", a.braid, a.model, pa, logdir)
    rb = Replica("b", a.braid, a.model, pb, logdir)
    conf = os.path.join(logdir, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""
daemon off;
worker_processes 1;
pid {logdir}/nginx.pid;
error_log {logdir}/nginx-error.log warn;
events {{ worker_connections 256; }}
http {{
  log_format up '$msec $status $upstream_addr $upstream_status';
  access_log {logdir}/nginx-access.log up;
  client_body_temp_path {logdir}/body;
  proxy_temp_path {logdir}/proxy;
  fastcgi_temp_path {logdir}/fastcgi;
  uwsgi_temp_path {logdir}/uwsgi;
  scgi_temp_path {logdir}/scgi;
  upstream braid {{
    server 127.0.0.1:{pa} max_fails=1 fail_timeout=2s;
    server 127.0.0.1:{pb} max_fails=1 fail_timeout=2s;
  }}
  server {{
    listen 127.0.0.1:{plb};
    location / {{
      proxy_pass http://braid;
      # braid bound to loopback without --api-key serves only loopback Host
      # names (DNS-rebinding guard): pass the client's own (127.0.0.1:port).
      proxy_set_header Host $host;
      proxy_connect_timeout 1s;
      proxy_read_timeout 60s;
      proxy_next_upstream error timeout http_502 http_503 non_idempotent;
      proxy_next_upstream_tries 3;
    }}
  }}
}}
""")
    procs = []
    nginx = None
    try:
        print(f"failover: replicas on :{pa} and :{pb}, nginx on :{plb}, logs in {logdir}", flush=True)
        ra.start()
        rb.start()
        nginx = subprocess.Popen([a.nginx, "-c", conf, "-p", logdir], stdout=subprocess.DEVNULL, stderr=open(os.path.join(logdir, "nginx-stderr.log"), "wb"))
        if not wait_ready(plb, time.time() + 20):
            print("failover: FAILED (nginx did not come up)")
            return 1
        # The expected answer for each text, from a replica directly.
        ref = {}
        for t in TEXTS:
            st, body = post(pa, "/embed", {"inputs": t})
            assert st == 200, (st, body)
            ref[t] = json.loads(body)[0]

        stop = time.time() + a.seconds
        lock = threading.Lock()
        counts = {"ok": 0, "wrong": 0, "error": 0}
        errors = []
        latencies = []

        def client(seed):
            rng = random.Random(seed)
            while time.time() < stop:
                t = rng.choice(TEXTS)
                t0 = time.time()
                try:
                    st, body = post(plb, "/embed", {"inputs": t})
                    if st != 200:
                        outcome, detail = "error", f"HTTP {st}: {body[:200]!r}"
                    else:
                        c = cosine(json.loads(body)[0], ref[t])
                        outcome, detail = ("ok", None) if c >= 0.99999 else ("wrong", f"cosine {c}")
                except (OSError, http.client.HTTPException, ValueError) as e:
                    outcome, detail = "error", repr(e)
                with lock:
                    counts[outcome] += 1
                    latencies.append(time.time() - t0)
                    if detail:
                        errors.append((round(time.time() - (stop - a.seconds), 2), outcome, detail))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(a.clients)]
        t_start = time.time()
        for th in threads:
            th.start()
        events = []

        def at(frac):
            time.sleep(max(0.0, t_start + frac * a.seconds - time.time()))
            return round(time.time() - t_start, 2)

        events.append((at(0.25), "SIGKILL replica a"))
        ra.kill(signal.SIGKILL)
        ra.wait(10)
        events.append((at(0.5), "restart replica a"))
        ra.start()
        events.append((round(time.time() - t_start, 2), "replica a ready"))
        # A rolling update waits for the new pod to be ready *in the balancer*
        # before it takes the next one down (maxUnavailable: 0). nginx's
        # passive checks may still hold A as failed for fail_timeout after
        # the restart; wait until it has answered a request through nginx.
        ready_since = time.time()
        while not served_by(os.path.join(logdir, "nginx-access.log"), pa, ready_since) and time.time() < ready_since + 30:
            time.sleep(0.1)
        events.append((round(time.time() - t_start, 2), "nginx routes to replica a again"))
        events.append((at(0.75), "SIGTERM replica b (graceful)"))
        rb.kill(signal.SIGTERM)
        for th in threads:
            th.join(timeout=a.seconds + 120)
        b_exit = rb.wait(60)
        events.append((round(time.time() - t_start, 2), f"replica b exited with {b_exit}"))

        total = sum(counts.values())
        budget = math.floor(a.error_budget * total)
        latencies.sort()
        p = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1e3 if latencies else float("nan")
        report = {"requests": total, **counts, "error_budget": budget, "p50_ms": round(p(0.5), 1), "p99_ms": round(p(0.99), 1),
                  "replica_b_exit": b_exit, "events": events, "first_errors": errors[:10]}
        print(json.dumps(report, indent=1))
        ok = total > 0 and counts["wrong"] == 0 and counts["error"] <= budget and b_exit == 0
        print(f"failover: {'PASSED' if ok else 'FAILED'}: {total} requests through nginx, {counts['ok']} ok, {counts['wrong']} wrong, "
              f"{counts['error']} errors (budget {budget}); replica a killed and restarted, replica b drained (exit {b_exit})")
        return 0 if ok else 1
    finally:
        if nginx:
            nginx.terminate()
            try:
                nginx.wait(10)
            except subprocess.TimeoutExpired:
                nginx.kill()
        for r in (ra, rb):
            r.kill(signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
