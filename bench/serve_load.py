#!/usr/bin/env python3
"""Load for `braid serve`: C client threads, each sending one-text POST /embed
requests back to back for S seconds over keep-alive connections. Prints
requests/s, p50 and p99 latency per client count, and the server's mean batch
(from /metrics) for that step. Standard library only.

    braid serve --port 8080 &
    python3 bench/serve_load.py --url http://127.0.0.1:8080 --clients 1 4 16 64 --seconds 5
"""
import argparse, http.client, json, threading, time, urllib.parse

TEXTS = ["The cat sat on the mat.", "A quick brown fox jumps over the lazy dog.", "Many threads, one GPU.", "braid serves embeddings."]


def metrics(host, port):
    c = http.client.HTTPConnection(host, port, timeout=30)
    c.request("GET", "/metrics")
    m = json.loads(c.getresponse().read())
    c.close()
    return m


def client(host, port, end, lat, errors, i):
    c = http.client.HTTPConnection(host, port, timeout=60)
    n = 0
    while time.perf_counter() < end:
        body = json.dumps({"inputs": [TEXTS[(i + n) % len(TEXTS)]]})
        t = time.perf_counter()
        c.request("POST", "/embed", body, {"Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
        if r.status != 200 or len(json.loads(data)[0]) == 0:
            errors.append(r.status)
        lat.append(time.perf_counter() - t)
        n += 1
    c.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--seconds", type=float, default=5.0)
    a = ap.parse_args()
    u = urllib.parse.urlparse(a.url)
    host, port = u.hostname, u.port or 80
    print("| clients | req/s | p50 ms | p99 ms | mean batch | errors |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in a.clients:
        before = metrics(host, port)
        lats, errors = [[] for _ in range(n)], []
        end = time.perf_counter() + a.seconds
        t0 = time.perf_counter()
        ts = [threading.Thread(target=client, args=(host, port, end, lats[i], errors, i)) for i in range(n)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        wall = time.perf_counter() - t0
        after = metrics(host, port)
        lat = sorted(x for l in lats for x in l)
        batches = after["batches"] - before["batches"]
        done = after["completed"] - before["completed"]
        mean_batch = done / batches if batches else 0.0
        p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1e3
        print(f"| {n} | {len(lat) / wall:.0f} | {p(0.5):.2f} | {p(0.99):.2f} | {mean_batch:.1f} | {len(errors)} |")


if __name__ == "__main__":
    main()
