#!/usr/bin/env python3
"""Load for `braid serve`: C keep-alive clients, each sending one-text
requests back to back for S seconds, spread over P processes (so the
Python client is not the bottleneck). For each text length (about 50 and
about 500 tokens by default; the server cuts a text to the model's maximum,
256 for all-MiniLM-L6-v2, and the tokens counted are those the server
reports in `x-compute-tokens`) and each client count, prints requests/s,
tokens/s, p50 and p99 latency, and the server's mean batch over that step
(from /metrics/json). Standard library only; every step is bounded by
--seconds.

The Python client costs ~100-300 us of CPU a request, so on a busy host it
can be the limit. `--oha PATH` drives each step with oha instead (a Rust
HTTP load generator: `cargo install oha --locked`), C connections sending
the same one-text request back to back. `--pid PID` adds the server's CPU
time per request (from /proc/PID/stat), which measures the host path's cost
whatever the client.

    braid serve --port 8080 --log-requests false &
    python3 bench/serve_load.py --url http://127.0.0.1:8080 --clients 1 4 16 64 256 --tokens 50 500 --seconds 10 [--json out.json]
"""
import argparse, http.client, json, multiprocessing as mp, os, subprocess, threading, time, urllib.parse

# Common words: about one token each for a BERT WordPiece vocabulary.
WORDS = ("the of and to in is was for on that with as by at from his an were are which this be or had not first one their its new after who they have her she two been other when there all during into school time may years more most only over city some world would where later up such used many can state about national out known university united then made").split()


def text_of(tokens, i):
    """About `tokens` tokens ([CLS] and [SEP] included), different per i."""
    words = [WORDS[(i * 7 + k * 13) % len(WORDS)] for k in range(max(1, tokens - 2))]
    return f"{i} " + " ".join(words)


def get_json(host, port, path, headers):
    c = http.client.HTTPConnection(host, port, timeout=30)
    c.request("GET", path, headers=headers)
    r = c.getresponse()
    body = r.read()
    c.close()
    if r.status != 200:
        raise SystemExit(f"GET {path}: {r.status} {body[:200]!r}")
    return json.loads(body)


def client(host, port, path, openai, tokens, end, headers, seed, out):
    c = http.client.HTTPConnection(host, port, timeout=120)
    lat, toks, errors, n = [], 0, 0, 0
    while time.perf_counter() < end:
        t = text_of(tokens, seed * 1000 + n % 64)
        body = json.dumps({"input": [t], "encoding_format": "float"} if openai else {"inputs": [t]})
        t0 = time.perf_counter()
        try:
            c.request("POST", path, body, {"Content-Type": "application/json", **headers})
            r = c.getresponse()
            r.read()
            ok = r.status == 200
            toks += int(r.getheader("x-compute-tokens") or 0) if ok else 0
        except (OSError, http.client.HTTPException):
            ok = False
            c.close()
            c = http.client.HTTPConnection(host, port, timeout=120)
        if ok:
            lat.append(time.perf_counter() - t0)
        else:
            errors += 1
        n += 1
    c.close()
    out.append((lat, toks, errors))


def proc(host, port, path, openai, tokens, end, headers, seeds, q):
    out = []
    ts = [threading.Thread(target=client, args=(host, port, path, openai, tokens, end, headers, s, out)) for s in seeds]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    q.put(out)


def cpu_seconds(pid):
    """User + system CPU seconds of process `pid` (all its threads)."""
    if not pid:
        return None
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def oha_step(oha, host, port, path, openai, tokens, n, seconds, headers):
    """One step with oha: n connections, the same one-text body, `seconds`."""
    t = text_of(tokens, 1)
    body = json.dumps({"input": [t], "encoding_format": "float"} if openai else {"inputs": [t]})
    # Tokens per text as the server counts them (x-compute-tokens).
    c = http.client.HTTPConnection(host, port, timeout=60)
    c.request("POST", path, body, {"Content-Type": "application/json", **headers})
    r = c.getresponse()
    r.read()
    per_text = int(r.getheader("x-compute-tokens") or 0)
    c.close()
    hs = [a for k, v in {"Content-Type": "application/json", **headers}.items() for a in ("-H", f"{k}: {v}")]
    cmd = [oha, "--no-tui", "--output-format", "json", "-z", f"{seconds}s", "-c", str(n), "-m", "POST", *hs, "-d", body, f"http://{host}:{port}{path}"]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"oha failed ({out.returncode}): {out.stderr[-2000:]}")
    j = json.loads(out.stdout)
    codes = j.get("statusCodeDistribution", {})
    ok = int(codes.get("200", 0))
    # Requests still in flight when -z ends are "aborted due to deadline":
    # cut off by the step's end, not errors of the server.
    total = sum(int(v) for v in codes.values()) + sum(int(v) for k, v in j.get("errorDistribution", {}).items() if "deadline" not in k)
    secs = j["summary"].get("total") or wall
    lp = j.get("latencyPercentiles", {})
    ms = lambda k: (lp.get(k) or float("nan")) * 1e3
    return {"requests": ok, "seconds": secs, "req_s": ok / secs, "tokens_s": ok * per_text / secs, "tokens_per_text": per_text,
            "p50_ms": ms("p50"), "p99_ms": ms("p99"), "errors": total - ok, "client": "oha"}


def step(host, port, path, openai, tokens, n, seconds, procs, headers, oha=None, pid=None):
    before = get_json(host, port, "/metrics/json", headers)
    cpu0 = cpu_seconds(pid)
    if oha:
        r = oha_step(oha, host, port, path, openai, tokens, n, seconds, headers)
        after = get_json(host, port, "/metrics/json", headers)
        batches = after["batches"] - before["batches"]
        done = after["completed"] - before["completed"]
        r.update({"clients": n, "target_tokens": tokens, "mean_batch": done / batches if batches else 0.0})
        if pid:
            r["server_cpu_us_per_req"] = (cpu_seconds(pid) - cpu0) / max(1, r["requests"]) * 1e6
        return r
    p = max(1, min(procs, n))
    q = mp.Queue()
    t0 = time.perf_counter()
    end = t0 + seconds
    ps = [mp.Process(target=proc, args=(host, port, path, openai, tokens, end, headers, list(range(i, n, p)), q)) for i in range(p)]
    for x in ps:
        x.start()
    results = [r for _ in ps for r in q.get(timeout=seconds + 300)]
    for x in ps:
        x.join(60)
    wall = time.perf_counter() - t0
    after = get_json(host, port, "/metrics/json", headers)
    lat = sorted(x for l, _, _ in results for x in l)
    toks = sum(t for _, t, _ in results)
    errors = sum(e for _, _, e in results)
    batches = after["batches"] - before["batches"]
    done = after["completed"] - before["completed"]
    pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1e3 if lat else float("nan")
    r = {"clients": n, "target_tokens": tokens, "requests": len(lat), "seconds": wall, "req_s": len(lat) / wall, "tokens_s": toks / wall, "tokens_per_text": toks / max(1, len(lat)),
         "p50_ms": pct(0.5), "p99_ms": pct(0.99), "mean_batch": done / batches if batches else 0.0, "errors": errors, "client": "python"}
    if pid:
        r["server_cpu_us_per_req"] = (cpu_seconds(pid) - cpu0) / max(1, len(lat)) * 1e6
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--tokens", type=int, nargs="+", default=[50], help="approximate tokens per text (50, 500, ...)")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--procs", type=int, default=max(1, (os.cpu_count() or 2) // 2), help="client processes")
    ap.add_argument("--openai", action="store_true", help="POST /v1/embeddings instead of /embed")
    ap.add_argument("--api-key")
    ap.add_argument("--json", help="write the rows here too")
    ap.add_argument("--oha", help="drive the load with this oha binary instead of Python clients")
    ap.add_argument("--pid", type=int, help="the server's pid: report its CPU time per request")
    a = ap.parse_args()
    if a.seconds <= 0 or a.seconds > 600 or any(c < 1 or c > 4096 for c in a.clients):
        raise SystemExit("--seconds must be in (0, 600] and --clients in 1..4096")
    u = urllib.parse.urlparse(a.url)
    host, port = u.hostname, u.port or 80
    headers = {"Authorization": f"Bearer {a.api_key}"} if a.api_key else {}
    path = "/v1/embeddings" if a.openai else "/embed"
    rows = []
    print(f"| route | client | ~tokens/text | clients | req/s | tokens/s | p50 ms | p99 ms | mean batch | server CPU us/req | errors |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for tokens in a.tokens:
        for n in a.clients:
            r = step(host, port, path, a.openai, tokens, n, a.seconds, a.procs, headers, a.oha, a.pid)
            r["route"] = path
            rows.append(r)
            cpu = f"{r['server_cpu_us_per_req']:.0f}" if "server_cpu_us_per_req" in r else "-"
            print(f"| {path} | {r['client']} | {r['tokens_per_text']:.0f} | {n} | {r['req_s']:.0f} | {r['tokens_s']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['mean_batch']:.1f} | {cpu} | {r['errors']} |", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"url": a.url, "seconds": a.seconds, "procs": a.procs, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
