#!/usr/bin/env python3
"""Steady load for a failover drill (issue 18) against a running `braid serve`:
C keep-alive clients post one-text /embed requests back to back for S seconds
(spread over P processes, so the Python client is not the bottleneck), while
the main process polls /health every --health-every seconds. Records every
request's completion time, so it reports throughput per second of the run;
counts lost requests (anything but a 200 with one embedding: a 5xx, a refused
or dropped connection); keeps the /health answers, and the first one that
shows a device out of rotation. Standard library only; bounded by --seconds.

    BRAID_INJECT_FAULT=cuda:1@10s braid serve --device cuda:all --port 8080 &
    python3 scripts/drill-load.py --url http://127.0.0.1:8080 --clients 64 --seconds 30 --json drill.json

Exit status 0 whatever happened (the caller judges from the JSON); 2 when the
server cannot be reached at the start.
"""
import argparse, http.client, json, multiprocessing as mp, os, threading, time, urllib.parse

WORDS = ("the of and to in is was for on that with as by at from his an were are which this be or had not first one their its new after who they have her she two been other when there all during into school time may years more most only over city some world would where later up such used many can state about national out known university united then made").split()


def text_of(tokens, i):
    """About `tokens` tokens, different per i (as bench/serve_load.py's)."""
    words = [WORDS[(i * 7 + k * 13) % len(WORDS)] for k in range(max(1, tokens - 2))]
    return f"{i} " + " ".join(words)


def client(host, port, tokens, end, seed, out):
    c = http.client.HTTPConnection(host, port, timeout=120)
    done, lost, n = [], [], 0
    while time.time() < end:
        body = json.dumps({"inputs": [text_of(tokens, seed * 1000 + n % 64)]})
        try:
            c.request("POST", "/embed", body, {"Content-Type": "application/json"})
            r = c.getresponse()
            data = r.read()
            ok = r.status == 200 and len(json.loads(data)) == 1
            why = None if ok else f"{r.status} {data[:160]!r}"
        except (OSError, http.client.HTTPException, ValueError) as e:
            ok, why = False, f"{type(e).__name__}: {e}"
            c.close()
            c = http.client.HTTPConnection(host, port, timeout=120)
        (done if ok else lost).append(time.time() if ok else (time.time(), why))
        n += 1
    c.close()
    out.append((done, lost))


def proc(host, port, tokens, end, seeds, q):
    out = []
    ts = [threading.Thread(target=client, args=(host, port, tokens, end, s, out)) for s in seeds]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    q.put(out)


def health(host, port):
    try:
        c = http.client.HTTPConnection(host, port, timeout=10)
        c.request("GET", "/health")
        r = c.getresponse()
        body = r.read()
        c.close()
        return r.status, json.loads(body)
    except (OSError, http.client.HTTPException, ValueError) as e:
        return 0, {"error": str(e)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--procs", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    ap.add_argument("--health-every", type=float, default=0.5)
    ap.add_argument("--json", help="write the result here")
    a = ap.parse_args()
    if not (0 < a.seconds <= 600) or not (1 <= a.clients <= 4096):
        raise SystemExit("--seconds must be in (0, 600] and --clients in 1..4096")
    u = urllib.parse.urlparse(a.url)
    host, port = u.hostname, u.port or 80
    if health(host, port)[0] == 0:
        print(f"drill-load: {a.url} does not answer /health")
        raise SystemExit(2)
    t0 = time.time()
    end = t0 + a.seconds
    p = max(1, min(a.procs, a.clients))
    q = mp.Queue()
    ps = [mp.Process(target=proc, args=(host, port, a.tokens, end, list(range(i, a.clients, p)), q)) for i in range(p)]
    for x in ps:
        x.start()
    polls, first_out = [], None
    while time.time() < end:
        st, h = health(host, port)
        now = time.time() - t0
        polls.append({"t": round(now, 3), "status": st, "health": h})
        out = [d.get("device") for d in h.get("devices", []) if d.get("serving") is False] if isinstance(h, dict) else []
        if out and first_out is None:
            first_out = {"t": round(now, 3), "status": st, "out": out, "health": h}
        time.sleep(a.health_every)
    results = [r for _ in ps for r in q.get(timeout=a.seconds + 300)]
    for x in ps:
        x.join(60)
    done = sorted(t - t0 for d, _ in results for t in d)
    lost = sorted(((t - t0, why) for _, l in results for t, why in l), key=lambda x: x[0])
    secs = int(a.seconds + 0.999)
    per_second = [0] * secs
    for t in done:
        if 0 <= t < secs:
            per_second[int(t)] += 1
    final = polls[-1] if polls else None
    res = {"url": a.url, "clients": a.clients, "seconds": a.seconds, "answered": len(done), "lost": len(lost), "lost_examples": [{"t": round(t, 3), "why": w} for t, w in lost[:10]],
           "per_second": per_second, "first_health_with_a_device_out": first_out, "last_health": final, "health_polls": len(polls)}
    print(f"drill-load: {len(done)} answered, {len(lost)} lost; per second: {per_second}")
    if first_out:
        print(f"drill-load: /health shows {first_out['out']} out at t={first_out['t']} s")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
