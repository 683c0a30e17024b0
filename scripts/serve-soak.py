#!/usr/bin/env python3
"""The load and the measurements of scripts/serve-soak.sh (see there).

Drives a running `braid serve` with CLIENTS keep-alive clients (Python's
http.client over real sockets): each request is 1-8 texts of 1-400 words,
to /embed or /v1/embeddings; about 1 request in 20 is deliberately bad (a
wrong shape, a 3 MB body, a foreign Host) and must get its JSON 4xx. Samples
the server's RSS (/proc/PID/status) and, where nvidia-smi sees the process,
its device memory, every SAMPLE seconds into a CSV, draws both against time
(memory.png via matplotlib, see scripts/serve-soak-plot.py; memory.svg
always), and writes summary.md (duration, requests, errors by kind, host RSS
and device memory at start and end). Exits 1 when an accepted request failed,
or when RSS after warm-up grew more than TOLERANCE (fraction) above its
value at the end of warm-up (falling is memory given back, not a failure;
both directions are printed).
"""

import argparse
import http.client
import json
import os
import random
import subprocess
import sys
import threading
import time

WORDS = ("the cat sat on a mat while many threads share one device and every request gets its own "
         "embedding from the batcher quickly brown fox jumps over lazy dogs near river banks").split()


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def gpu_mb(pid):
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] == str(pid):
            return float(parts[1])
    return None


class Counts:
    def __init__(self):
        self.lock = threading.Lock()
        self.ok = 0
        self.bad_ok = 0
        self.errors = 0
        self.refused_early = 0
        self.texts = 0
        self.first_errors = []
        # "kind" (an exception type, or "HTTP <status>") -> count.
        self.kinds = {}

    def add(self, field, n=1, err=None, kind=None):
        with self.lock:
            setattr(self, field, getattr(self, field) + n)
            if err and len(self.first_errors) < 10:
                self.first_errors.append(err)
            if kind:
                self.kinds[kind] = self.kinds.get(kind, 0) + 1


def client(host, port, stop, counts, seed):
    rng = random.Random(seed)
    conn = None
    # Whether the last request on this connection was a deliberately bad one
    # (issue 16's broken pipes followed those: errors are told apart by it).
    after_bad = False
    while not stop.is_set():
        if conn is None:
            conn = http.client.HTTPConnection(host, port, timeout=120)
            after_bad = False
        n = rng.randint(1, 8)
        texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 400))) for _ in range(n)]
        roll = rng.random()
        headers = {"Content-Type": "application/json", "Host": f"localhost:{port}"}
        want = 200
        if roll < 0.02:
            path, body, want = "/embed", json.dumps({"input": texts}), 400
        elif roll < 0.03:
            path, body, want = "/embed", json.dumps({"inputs": ["x" * (3 << 20)]}), 413
        elif roll < 0.05:
            path, body, want = "/embed", json.dumps({"inputs": texts}), 403
            headers["Host"] = "evil.example"
        elif roll < 0.5:
            path, body = "/v1/embeddings", json.dumps({"input": texts})
        else:
            path, body = "/embed", json.dumps({"inputs": texts})
        try:
            conn.request("POST", path, body=body, headers=headers)
            r = conn.getresponse()
            data = r.read()
            if r.status != want:
                counts.add("errors", err=f"{path} want {want} got {r.status}: {data[:200]!r}", kind=f"HTTP {r.status} (wanted {want})")
            elif want == 200:
                counts.add("ok")
                counts.add("texts", n)
            else:
                j = json.loads(data)
                assert isinstance(j.get("error"), str)
                counts.add("bad_ok")
            after_bad = want != 200
            if r.getheader("connection", "").lower() == "close" or want == 413:
                conn.close()
                conn = None
        except Exception as e:  # a failed accepted request is the soak's finding
            if want == 413 and isinstance(e, (BrokenPipeError, ConnectionResetError)):
                # The server may answer 413 and close before the client has
                # sent all of a body over the limit (so does any HTTP server
                # with a body limit); the client then cannot send the rest.
                # Not a lost request: counted apart.
                counts.add("refused_early")
            else:
                counts.add("errors", err=f"{path}: {type(e).__name__}: {e}", kind=f"{type(e).__name__} ({'after a bad request' if after_bad else 'ordinary'})")
            try:
                conn.close()
            except Exception:
                pass
            conn = None


def svg(rows, path):
    w, h, pad = 900, 360, 50
    t_max = max(r[0] for r in rows) or 1
    series = [("host RSS (MB)", 1, "#1f77b4")]
    if any(r[2] is not None for r in rows):
        series.append(("device memory (MB)", 2, "#d62728"))
    v_max = max((r[i] for r in rows for _, i, _ in series if r[i] is not None), default=1) * 1.1 or 1
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<line x1="{pad}" y1="{h-pad}" x2="{w-pad}" y2="{h-pad}" stroke="black"/>',
           f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h-pad}" stroke="black"/>',
           f'<text x="{w/2}" y="{h-10}" text-anchor="middle">seconds (0..{t_max:.0f})</text>',
           f'<text x="10" y="{pad-10}">MB (0..{v_max:.0f})</text>']
    for k, (name, i, color) in enumerate(series):
        pts = " ".join(f"{pad + (r[0]/t_max)*(w-2*pad):.1f},{h-pad - (r[i]/v_max)*(h-2*pad):.1f}" for r in rows if r[i] is not None)
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{pts}"/>')
        out.append(f'<text x="{w-pad-200}" y="{pad + 16*k}" fill="{color}">{name}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out))


def plot_png(out):
    """memory.png from memory.csv via scripts/serve-soak-plot.py; None when
    matplotlib is absent (the GPU machine has no network to install it)."""
    here = os.path.dirname(os.path.abspath(__file__))
    r = subprocess.run([sys.executable, os.path.join(here, "serve-soak-plot.py"), out], capture_output=True, text=True)
    if r.returncode != 0:
        print(f"no PNG: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
        return None
    return f"{out}/memory.png"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--seconds", type=float, default=180)
    ap.add_argument("--warmup", type=float, default=60)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--sample", type=float, default=5)
    ap.add_argument("--tolerance", type=float, default=0.15)
    ap.add_argument("--out", default="target/serve-soak")
    ap.add_argument("--label", default="", help="what ran (device, binary), for summary.md")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    stop = threading.Event()
    counts = Counts()
    threads = [threading.Thread(target=client, args=("127.0.0.1", a.port, stop, counts, i), daemon=True) for i in range(a.clients)]
    for t in threads:
        t.start()
    rows = []
    t0 = time.time()
    while True:
        el = time.time() - t0
        rows.append((el, rss_mb(a.pid), gpu_mb(a.pid), counts.ok, counts.errors))
        if el >= a.seconds:
            break
        time.sleep(min(a.sample, a.seconds - el + 0.01))
    stop.set()
    for t in threads:
        t.join(timeout=150)
    with open(f"{a.out}/memory.csv", "w") as f:
        f.write("seconds,rss_mb,device_mb,requests_ok,errors\n")
        for r in rows:
            f.write(f"{r[0]:.1f},{r[1]:.1f},{'' if r[2] is None else r[2]},{r[3]},{r[4]}\n")
    svg(rows, f"{a.out}/memory.svg")
    warm = [r for r in rows if r[0] >= a.warmup] or rows
    base = warm[0][1]
    hi = max(r[1] for r in warm)
    lo = min(r[1] for r in warm)
    growth = (hi - base) / base if base else float("nan")
    fall = (base - lo) / base if base else float("nan")
    dev = [r[2] for r in rows if r[2] is not None]
    print(f"serve soak: {a.seconds:.0f} s, {a.clients} clients: {counts.ok} requests answered ({counts.texts} texts), "
          f"{counts.bad_ok} bad requests answered with their JSON 4xx, {counts.refused_early} over-limit bodies refused (413) before they were fully sent, {counts.errors} errors")
    print(f"host RSS: start {rows[0][1]:.0f} MB, end of warm-up ({a.warmup:.0f} s) {base:.0f} MB, end {rows[-1][1]:.0f} MB, "
          f"after warm-up min {lo:.0f} / max {hi:.0f} MB: growth {growth*100:+.1f}%, fall {fall*100:.1f}% (growth tolerance {a.tolerance*100:.0f}%)")
    if dev:
        print(f"device memory: start {dev[0]:.0f} MB, end {dev[-1]:.0f} MB, max {max(dev):.0f} MB")
    else:
        print("device memory: not sampled (no nvidia-smi entry for the process)")
    png = plot_png(a.out)
    lines = [f"# braid serve soak{(' - ' + a.label) if a.label else ''}", "",
             f"- duration: {rows[-1][0]:.0f} s ({a.clients} keep-alive clients; warm-up {a.warmup:.0f} s)",
             f"- requests answered 200: {counts.ok} ({counts.texts} texts); deliberately bad requests answered with their JSON 4xx: {counts.bad_ok}; over-limit bodies refused before fully sent: {counts.refused_early}",
             f"- errors: {counts.errors}" + ("" if not counts.kinds else ": " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.kinds.items(), key=lambda kv: -kv[1]))),
             f"- host RSS: start {rows[0][1]:.0f} MB, end of warm-up {base:.0f} MB, end {rows[-1][1]:.0f} MB (after warm-up min {lo:.0f} / max {hi:.0f} MB, growth {growth*100:+.1f}%, tolerance {a.tolerance*100:.0f}%)",
             (f"- device memory (nvidia-smi, this process): start {dev[0]:.0f} MB, end {dev[-1]:.0f} MB, max {max(dev):.0f} MB" if dev else "- device memory: not sampled (no nvidia-smi entry for the process)"),
             f"- plot: {'memory.png' if png else 'memory.svg (matplotlib absent: python3 scripts/serve-soak-plot.py ' + a.out + ' makes memory.png)'}; samples: memory.csv",
             f"- verdict: {'FAIL' if (counts.errors > 0 or counts.ok == 0 or growth > a.tolerance) else 'pass'}"]
    if counts.first_errors:
        lines += ["", "First errors:", ""] + [f"    {e}" for e in counts.first_errors]
    with open(f"{a.out}/summary.md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"written: {a.out}/memory.csv, {a.out}/memory.svg{', ' + png if png else ''}, {a.out}/summary.md")
    for e in counts.first_errors:
        print("  error:", e)
    bad = counts.errors > 0 or counts.ok == 0 or growth > a.tolerance
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
