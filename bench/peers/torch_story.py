#!/usr/bin/env python3
"""The complete-story benchmark in PyTorch: the peer braid is compared with.

Same workloads and sections as `braid bench story` (see DESIGN.md, "The braid
command" and "JSON report"): correctness, thread scaling (per-thread streams,
one shared stream, CUDA graph replay), batching, sync pattern, pipeline depth,
dynamic batching. f32 with TF32 off, or (MiniLM) the model in f16/bf16 with
`--dtype` (nothing else changed: SDPA attention, the padded batch HF makes).
`--workload mixed` is MiniLM on the mixed-length set braid's `mixed`
workload builds (same rows: see `mixed_rows`). `--sections` runs a subset.
Writes the shared JSON format.

    python3 bench/peers/torch_story.py --workload mlp --json torch-mlp.json [--quick] [--device cuda]
    python3 bench/peers/torch_story.py --workload mixed --dtype bf16 --sections batching
"""
import argparse
import json
import os
import queue
import statistics
import sys
import threading
import time

import torch
import torch.nn as nn

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.set_grad_enabled(False)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- workloads
class Workload:
    name = ""
    batches = (1, 8, 64, 256)

    def make_input(self, batch):
        raise NotImplementedError

    def forward(self, x):
        return self.model(x)


class Mlp(Workload):
    name = "mlp"

    def __init__(self, dev):
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 512)).to(dev).eval()
        self.dev = dev

    def make_input(self, batch):
        return torch.randn(batch, 512, device=self.dev)


class Encoder(Workload):
    name = "encoder"

    def __init__(self, dev):
        torch.manual_seed(0)
        self.model = nn.TransformerEncoderLayer(256, 4, 1024, dropout=0.0, batch_first=True).to(dev).eval()
        self.dev = dev

    def make_input(self, batch):
        return torch.randn(batch, 64, 256, device=self.dev)


def mixed_rows(n, cls=101, sep=102, max_len=256):
    """braid's mixed-length set (crates/cli/src/workloads.rs `mixed_rows`):
    lengths 8 + floor(249 u^4) (8..256, mean ~58), ids 1000..21000, drawn
    from splitmix64 seeded 2026."""
    m64 = (1 << 64) - 1
    state = 2026

    def nxt():
        nonlocal state
        state = (state + 0x9E3779B97F4A7C15) & m64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m64
        return z ^ (z >> 31)
    rows = []
    for _ in range(n):
        u = (nxt() >> 11) / float(1 << 53)
        length = max(2, min(max_len, 8 + int(249.0 * u ** 4)))
        rows.append([cls] + [1000 + nxt() % 20000 for _ in range(length - 2)] + [sep])
    return rows


class _MeanPooled(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        h = self.model(**x).last_hidden_state
        m = x["attention_mask"].unsqueeze(-1).to(h.dtype)
        e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return {"sentence_embedding": torch.nn.functional.normalize(e, dim=-1)}


DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


class MiniLm(Workload):
    """sentence-transformers' all-MiniLM-L6-v2 on pre-tokenised input of
    sequence length 128 (the tokenizer is timed separately by `encode`)."""
    name = "minilm"
    batches = (1, 8, 32, 128, 512)

    def __init__(self, dev, model_dir, dtype="f32"):
        try:
            from sentence_transformers import SentenceTransformer
            self.st = SentenceTransformer(model_dir, device=str(dev))
        except ImportError:
            # No sentence-transformers: transformers' AutoModel with SDPA,
            # mean pooling and L2 normalisation (what all-MiniLM-L6-v2's
            # modules do).
            from transformers import AutoModel
            self.st = _MeanPooled(AutoModel.from_pretrained(model_dir, attn_implementation="sdpa")).to(dev)
        self.st.to(DTYPES[dtype])
        self.st.eval()
        self.dev = dev
        self.model = self.st

    def make_input(self, batch):
        ids = torch.randint(1000, 20000, (batch, 128), device=self.dev)
        ids[:, 0] = 101
        ids[:, -1] = 102
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}

    def forward(self, x):
        return self.st(x)["sentence_embedding"]


class Mixed(MiniLm):
    """MiniLM on the first `batch` rows of the mixed-length set, padded to
    the longest with an attention mask (what HF does)."""
    name = "mixed"
    batches = (32, 128, 512)

    def make_input(self, batch):
        rows = mixed_rows(batch)
        s = max(len(r) for r in rows)
        ids = torch.zeros(batch, s, dtype=torch.long)
        mask = torch.zeros(batch, s, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r)
            mask[i, :len(r)] = 1
        ids, mask = ids.to(self.dev), mask.to(self.dev)
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


# ---------------------------------------------------------------- timing
def timed_loop(fn, seconds):
    """Run fn until `seconds` have passed; return calls per second."""
    n = 0
    t0 = time.perf_counter()
    while True:
        fn()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= seconds:
            return n / dt


def median_of(f, repeats):
    return statistics.median(f() for _ in range(repeats))


def run_threads(nthreads, body, seconds):
    """Each thread builds its step with body(tid) (warm-up included), then
    calls it until time is up; returns total ops/s. A failure in any thread
    is raised here (never a hang)."""
    barrier = threading.Barrier(nthreads + 1)
    setup_lock = threading.Lock()
    cuda_sync = torch.cuda.synchronize if torch.cuda.is_available() else None
    counts = [0] * nthreads
    errors = []
    stop = threading.Event()

    def worker(tid):
        step = None
        try:
            # Set-up (inputs, warm-up, graph capture) one thread at a time: a
            # capture must not see another thread's RNG or allocations.
            with setup_lock:
                step = body(tid)
                step()
                if cuda_sync is not None:
                    cuda_sync()
        except Exception as e:  # reported after the join
            errors.append(repr(e))
        try:
            barrier.wait(timeout=120)
        except threading.BrokenBarrierError:
            return
        n = 0
        while step is not None and not errors and not stop.is_set():
            step()
            n += 1
        counts[tid] = n

    ths = [threading.Thread(target=worker, args=(i,)) for i in range(nthreads)]
    for t in ths:
        t.start()
    barrier.wait(timeout=120)
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in ths:
        t.join()
    if errors:
        raise RuntimeError(errors[0])
    return sum(counts) / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workload", default="mlp", choices=["mlp", "encoder", "minilm", "mixed"])
    ap.add_argument("--dtype", default="f32", choices=sorted(DTYPES), help="model dtype (minilm, mixed)")
    ap.add_argument("--sections", default="correctness,threads,batching,sync,pipeline,dynamic",
                    help="comma-separated subset of the sections to run")
    ap.add_argument("--batches", help="comma-separated batch sizes for the batching section (default: the workload's)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--model", default="models/all-MiniLM-L6-v2")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args()
    dev = torch.device(a.device)
    secs = 0.3 if a.quick else 1.0
    reps = 1 if a.quick else 3
    cuda = dev.type == "cuda"
    if a.workload == "mlp":
        w = Mlp(dev)
    elif a.workload == "encoder":
        w = Encoder(dev)
    elif a.workload == "minilm":
        w = MiniLm(dev, a.model, a.dtype)
    else:
        w = Mixed(dev, a.model, a.dtype)
        for b in w.batches:
            t = sum(len(r) for r in mixed_rows(b))
            log(f"mixed set, batch {b}: {t} tokens, mean {t / b:.1f} a text")
    if a.batches:
        w.batches = tuple(int(b) for b in a.batches.split(","))
        if any(b < 1 for b in w.batches):
            sys.exit("--batches takes batch sizes of at least 1")
    if a.dtype != "f32" and a.workload not in ("minilm", "mixed"):
        sys.exit("--dtype applies to --workload minilm or mixed")
    wanted = set(a.sections.split(","))
    results = []
    devname = torch.cuda.get_device_name(dev) if cuda else "cpu"
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    if "correctness" in wanted:
        # correctness vs float64 on the CPU
        log("[1/6] correctness")
        x = w.make_input(8)
        out = w.forward(x).float().cpu()
        if a.workload in ("mlp", "encoder"):
            import copy
            m64 = copy.deepcopy(w.model).to("cpu").double()
            ref = m64(x.cpu().double())
            err = float(torch.linalg.norm(out.double() - ref) / torch.linalg.norm(ref))
            results.append({"kind": "correctness", "name": f"{a.workload} f32 vs f64 (batch 8)", "max_rel_err": err})

    if "threads" in wanted:
        # thread scaling
        log("[2/6] thread scaling")
        threads = (1, 2, 4, 8, 16)
        for mode in ("per-thread-stream", "shared-stream", "graph"):
            if mode == "graph" and (not cuda or a.workload == "minilm"):
                continue
            for t in threads:
                def body(tid, mode=mode):
                    x = w.make_input(1)
                    if mode == "per-thread-stream" and cuda:
                        s = torch.cuda.Stream()

                        def step():
                            with torch.cuda.stream(s):
                                w.forward(x)
                            s.synchronize()
                        return step
                    if mode == "graph":
                        s = torch.cuda.Stream()
                        with torch.cuda.stream(s):
                            for _ in range(3):
                                w.forward(x)
                        s.synchronize()
                        g = torch.cuda.CUDAGraph()
                        with torch.cuda.graph(g, stream=s, capture_error_mode="thread_local"):
                            w.forward(x)

                        def step():
                            g.replay()
                            s.synchronize()
                        return step

                    def step():
                        w.forward(x)
                        sync()
                    return step
                try:
                    ops = median_of(lambda: run_threads(t, body, secs), reps)
                except Exception as e:  # graph capture from many threads can fail
                    log(f"  {mode} x{t}: {e}")
                    continue
                results.append({"kind": "threads", "threads": t, "mode": mode, "ops_per_s": ops})
                log(f"  {mode:18} {t:2} threads: {ops:10.0f} ops/s")

    if "batching" in wanted:
        # batching
        log("[3/6] batching")
        for b in w.batches:
            x = w.make_input(b)
            w.forward(x)
            sync()

            def one():
                w.forward(x)
                sync()
            per_s = median_of(lambda: timed_loop(one, secs), reps)
            results.append({"kind": "batching", "batch": b, "latency_ms": 1e3 / per_s, "samples_per_s": per_s * b})
            log(f"  batch {b:4}: {1e3 / per_s:8.3f} ms  {per_s * b:12.0f} samples/s")

    if "sync" in wanted:
        # sync pattern
        log("[4/6] sync pattern")
        for t in (1, 8):
            for pattern in ("every-op", "at-end"):
                def body(tid, pattern=pattern):
                    x = w.make_input(1)
                    s = torch.cuda.Stream() if cuda else None

                    def step():
                        if cuda:
                            with torch.cuda.stream(s):
                                for _ in range(10):
                                    w.forward(x)
                                    if pattern == "every-op":
                                        torch.cuda.synchronize()
                            s.synchronize()
                        else:
                            for _ in range(10):
                                w.forward(x)
                    return step
                ops = 10 * median_of(lambda: run_threads(t, body, secs), reps)
                results.append({"kind": "sync", "pattern": pattern, "threads": t, "ops_per_s": ops})
                log(f"  {pattern:8} {t} threads: {ops:10.0f} ops/s")

    if "pipeline" in wanted:
        # pipeline depth
        log("[5/6] pipeline depth")
        if cuda:
            x = w.make_input(1)
            for depth in (1, 2, 4, 8, 16, 32):
                def run():
                    inflight = []
                    n = 0
                    t0 = time.perf_counter()
                    while time.perf_counter() - t0 < secs:
                        w.forward(x)
                        ev = torch.cuda.Event()
                        ev.record()
                        inflight.append(ev)
                        if len(inflight) >= depth:
                            inflight.pop(0).synchronize()
                        n += 1
                    for ev in inflight:
                        ev.synchronize()
                    return n / (time.perf_counter() - t0)
                ops = median_of(run, reps)
                results.append({"kind": "pipeline", "depth": depth, "ops_per_s": ops})
                log(f"  depth {depth:2}: {ops:10.0f} ops/s")

    if "dynamic" in wanted:
        # dynamic batching: a simple gatherer thread, clients send single samples
        log("[6/6] dynamic batching")
        max_batch, max_delay = 256, 0.002
        for clients in (1, 4, 16, 64, 256):
            q = queue.Queue()
            stop = threading.Event()
            sizes = []

            def batcher():
                while not stop.is_set() or not q.empty():
                    try:
                        first = q.get(timeout=0.01)
                    except queue.Empty:
                        continue
                    reqs = [first]
                    deadline = time.perf_counter() + max_delay
                    while len(reqs) < max_batch:
                        rem = deadline - time.perf_counter()
                        if rem <= 0:
                            break
                        try:
                            reqs.append(q.get(timeout=rem))
                        except queue.Empty:
                            break
                    if a.workload in ("minilm", "mixed"):
                        xs = {k: torch.cat([r[0][k] for r in reqs]) for k in reqs[0][0]}
                    else:
                        xs = torch.cat([r[0] for r in reqs])
                    out = w.forward(xs)
                    sync()
                    sizes.append(len(reqs))
                    for i, r in enumerate(reqs):
                        r[1].append(out[i:i + 1])
                        r[2].set()
            bt = threading.Thread(target=batcher)
            bt.start()
            lat = []
            lat_lock = threading.Lock()
            t_end = time.perf_counter() + secs * 2

            def client():
                x = w.make_input(1)
                mine = []
                while time.perf_counter() < t_end:
                    box, ev = [], threading.Event()
                    t0 = time.perf_counter()
                    q.put((x, box, ev))
                    ev.wait()
                    mine.append(time.perf_counter() - t0)
                with lat_lock:
                    lat.extend(mine)
            t0 = time.perf_counter()
            cs = [threading.Thread(target=client) for _ in range(clients)]
            for c in cs:
                c.start()
            for c in cs:
                c.join()
            dt = time.perf_counter() - t0
            stop.set()
            bt.join()
            lat.sort()
            if lat:
                r = {"kind": "dynamic", "clients": clients, "requests_per_s": len(lat) / dt,
                     "p50_ms": 1e3 * lat[len(lat) // 2], "p99_ms": 1e3 * lat[min(len(lat) - 1, int(len(lat) * 0.99))],
                     "mean_batch": sum(sizes) / max(1, len(sizes))}
                results.append(r)
                log(f"  {clients:3} clients: {r['requests_per_s']:10.0f} req/s  p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms  mean batch {r['mean_batch']:.1f}")

    report = {"tool": "torch", "device": devname, "backend": dev.type, "workload": a.workload, "dtype": a.dtype,
              "torch_version": torch.__version__, "date": time.strftime("%Y-%m-%d"), "quick": a.quick, "results": results}
    text = json.dumps(report, indent=1)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
