#!/usr/bin/env python3
"""One client, two servers, requests interleaved A B A B ...: the latency of
each server at one client, under the same machine conditions (drift and
other load hit both alike). For comparing `braid serve --batch-policy wait`
with `eager` on a shared or noisy machine. One-text /embed requests of about
--tokens tokens; keep-alive; bounded by --requests and --seconds. Prints and
(--json) writes p50/p90/p99 per server. Standard library only.

    python3 scripts/ab-latency.py --url wait=http://127.0.0.1:8080 --url eager=http://127.0.0.1:8081 --requests 400
"""
import argparse, http.client, json, time, urllib.parse

WORDS = ("the of and to in is was for on that with as by at from his an were are which this be or had not first one their its new after who they have her she two been other when there all during into school time may years more most only over city some world would where later up such used many can state about national out known university united then made").split()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", action="append", required=True, help="NAME=URL, twice or more")
    ap.add_argument("--requests", type=int, default=400, help="per server")
    ap.add_argument("--seconds", type=float, default=120.0, help="upper bound on the whole run")
    ap.add_argument("--tokens", type=int, default=50)
    ap.add_argument("--json")
    a = ap.parse_args()
    servers = []
    for u in a.url:
        name, _, url = u.partition("=")
        p = urllib.parse.urlparse(url)
        servers.append((name, http.client.HTTPConnection(p.hostname, p.port or 80, timeout=60), []))
    end = time.perf_counter() + a.seconds
    errors = 0
    for i in range(a.requests + 5):
        if time.perf_counter() > end:
            break
        words = [WORDS[(i * 7 + k * 13) % len(WORDS)] for k in range(max(1, a.tokens - 2))]
        body = json.dumps({"inputs": [f"{i} " + " ".join(words)]})
        order = servers if i % 2 == 0 else servers[::-1]
        for name, c, lat in order:
            t0 = time.perf_counter()
            c.request("POST", "/embed", body, {"Content-Type": "application/json"})
            r = c.getresponse()
            r.read()
            dt = (time.perf_counter() - t0) * 1e3
            if r.status != 200:
                errors += 1
            elif i >= 5:  # the first 5 of each are warm-up
                lat.append(dt)
    res = {"errors": errors}
    for name, c, lat in servers:
        # The server's own view: mean time a text waited in the batcher's
        # queue (what the batch policy decides) and mean forward time.
        try:
            c.request("GET", "/metrics/json")
            m = json.loads(c.getresponse().read())
        except (OSError, http.client.HTTPException, ValueError):
            m = {}
        lat.sort()
        q = lambda x: lat[min(len(lat) - 1, int(x * len(lat)))] if lat else float("nan")
        qw, mc = m.get("mean_queue_wait_ms", float("nan")), m.get("mean_compute_ms", float("nan"))
        res[name] = {"requests": len(lat), "p50_ms": q(0.5), "p90_ms": q(0.9), "p99_ms": q(0.99), "mean_ms": sum(lat) / max(1, len(lat)), "server_mean_queue_wait_ms": qw, "server_mean_compute_ms": mc}
        print(f"{name}: {len(lat)} requests, p50 {q(0.5):.2f} ms, p90 {q(0.9):.2f} ms, p99 {q(0.99):.2f} ms; server: mean queue wait {qw:.3f} ms, mean forward {mc:.3f} ms")
        c.close()
    if errors:
        print(f"errors: {errors}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
