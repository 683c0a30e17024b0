#!/usr/bin/env python3
"""The real client libraries against a real `braid serve` process on
127.0.0.1 (ephemeral ports): the OpenAI SDK (default call = base64, float,
dimensions, token ids), huggingface_hub's InferenceClient.feature_extraction,
langchain-openai's OpenAIEmbeddings; /metrics parsed by prometheus_client's
parser; every malformed body gets the right status and a JSON body and the
server keeps serving; the API key; a client that disconnects mid-queue is
counted cancelled and its text never computed; overload gives 429 with
Retry-After and nothing accepted is lost. Every embedding is compared with
`braid embed` for the same text (relative L2 error < 1e-5).

    python3 crates/serve/tests/clients/test_clients.py [--braid target/release/braid] [--model models/all-MiniLM-L6-v2]

Exit status 1 if any check fails; prints SKIPPED and exits 0 if the model
is absent. Needs: pip install openai huggingface_hub langchain-openai prometheus_client numpy
"""
import argparse, base64, http.client, json, math, os, socket, struct, subprocess, sys, threading, time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "../../../.."))
TEXTS = ["The cat sat on the mat.", "A quick brown fox jumps over the lazy dog near the river bank.", "braid", "Many threads, one GPU: every thread gets its own stream."]
MODEL_ID = "all-MiniLM-L6-v2"
RESULTS = []


def rel_err(a, b):
    assert len(a) == len(b), f"lengths {len(a)} vs {len(b)}"
    num = sum((float(x) - float(y)) ** 2 for x, y in zip(a, b))
    den = sum(float(y) ** 2 for y in b)
    assert math.isfinite(num) and den > 0, "NaN or zero embedding"
    return math.sqrt(num / den)


def close(got, want, what):
    e = rel_err(got, want)
    assert e < 1e-5, f"{what}: rel err {e:.2e} against braid embed"


def renorm(v, n):
    v = v[:n]
    s = math.sqrt(sum(x * x for x in v))
    return [x / s for x in v]


def check(name):
    def wrap(f):
        def run(*a):
            t = time.time()
            try:
                f(*a)
                RESULTS.append((name, True, ""))
                print(f"PASS {name} ({time.time() - t:.1f}s)", flush=True)
            except Exception as e:  # noqa: BLE001 -- a failed check is reported, then the next runs
                RESULTS.append((name, False, repr(e)))
                print(f"FAIL {name}: {e!r}", flush=True)
        return run
    return wrap


class Server:
    """`braid serve` on an ephemeral port; stderr drained on a thread."""

    def __init__(self, braid, model, *extra):
        self.p = subprocess.Popen([braid, "serve", "--device", "cpu", "--port", "0", "--model", model, "--model-id", MODEL_ID, *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.log = []
        self.port = None
        ready = threading.Event()

        def drain():
            for line in self.p.stderr:
                self.log.append(line)
                if self.port is None and "listening on http://" in line:
                    self.port = int(line.split("http://")[1].split()[0].rsplit(":", 1)[1])
                    ready.set()
            ready.set()

        threading.Thread(target=drain, daemon=True).start()
        if not ready.wait(120) or self.port is None:
            self.stop()
            raise RuntimeError("braid serve did not start: " + "".join(self.log))
        self.url = f"http://127.0.0.1:{self.port}"

    def request(self, method, path, body=None, headers=None, raw=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        h = {"Content-Type": "application/json", **(headers or {})}
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        c.request(method, path, data, h)
        r = c.getresponse()
        out = r.read()
        c.close()
        return r.status, dict(r.getheaders()), out

    def json(self, method, path, body=None, headers=None):
        s, h, out = self.request(method, path, body, headers)
        return s, h, json.loads(out)

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(60)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


def braid_embed(braid, model, texts):
    out = subprocess.run([braid, "embed", "--device", "cpu", "--json", "--model", model, *texts], check=True, capture_output=True, text=True).stdout
    return [e["embedding"] for e in json.loads(out)["embeddings"]]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--braid", default=os.environ.get("BRAID_BIN", os.path.join(ROOT, "target/release/braid")))
    ap.add_argument("--model", default=os.environ.get("BRAID_MINILM_DIR", os.path.join(ROOT, "models/all-MiniLM-L6-v2")))
    a = ap.parse_args()
    if not os.path.exists(os.path.join(a.model, "model.safetensors")):
        print(f"client tests: SKIPPED (model not found at {a.model}: run scripts/get-minilm.sh)")
        return 0
    import numpy as np
    import openai
    from huggingface_hub import InferenceClient
    from langchain_openai import OpenAIEmbeddings
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    ref = braid_embed(a.braid, a.model, TEXTS)
    srv = Server(a.braid, a.model, "--cors-allow-origin", "http://app.example", "--json-output")
    try:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)

        @check("openai: default call (the SDK asks for base64) matches braid embed")
        def _():
            r = client.embeddings.create(model=MODEL_ID, input=TEXTS)
            assert [d.index for d in r.data] == [0, 1, 2, 3]
            for d, w in zip(r.data, ref):
                close(d.embedding, w, "openai default")
            assert r.usage.prompt_tokens > 0 and r.model == MODEL_ID
        _()

        @check("openai: encoding_format=float, single string")
        def _():
            r = client.embeddings.create(model=MODEL_ID, input=TEXTS[1], encoding_format="float")
            close(r.data[0].embedding, ref[1], "openai float")
        _()

        @check("openai: base64 on the wire is little-endian f32")
        def _():
            s, _, body = srv.json("POST", "/v1/embeddings", {"input": TEXTS[0], "encoding_format": "base64"})
            assert s == 200, body
            raw = base64.b64decode(body["data"][0]["embedding"])
            close(list(struct.unpack(f"<{len(raw) // 4}f", raw)), ref[0], "base64")
        _()

        @check("openai: dimensions=128 keeps the first 128 values, renormalised")
        def _():
            r = client.embeddings.create(model=MODEL_ID, input=TEXTS, dimensions=128, encoding_format="float")
            for d, w in zip(r.data, ref):
                assert len(d.embedding) == 128, len(d.embedding)
                close(d.embedding, renorm(w, 128), "dimensions")
        _()

        @check("openai: token-id input (ids from /tokenize) matches the text's embedding")
        def _():
            s, _, toks = srv.json("POST", "/tokenize", {"inputs": TEXTS[:2]})
            assert s == 200, toks
            ids = [[t["id"] for t in row] for row in toks]
            r = client.embeddings.create(model=MODEL_ID, input=ids, encoding_format="float")
            close(r.data[0].embedding, ref[0], "ids 0")
            close(r.data[1].embedding, ref[1], "ids 1")
            r = client.embeddings.create(model=MODEL_ID, input=ids[0], encoding_format="float")
            close(r.data[0].embedding, ref[0], "flat ids")
        _()

        @check("openai: a bad request is a BadRequestError carrying OpenAI's error body")
        def _():
            try:
                client.embeddings.create(model=MODEL_ID, input=TEXTS[0], dimensions=0)
                raise AssertionError("dimensions=0 accepted")
            except openai.BadRequestError as e:
                assert e.status_code == 400 and "dimensions" in e.message, e.message
                assert e.body["param"] == "dimensions" and e.body["type"] == "invalid_request_error", e.body
        _()

        @check("huggingface_hub: InferenceClient(model=url).feature_extraction")
        def _():
            hf = InferenceClient(model=srv.url)
            v = hf.feature_extraction(TEXTS[3])
            assert isinstance(v, np.ndarray) and v.shape == (1, 384), getattr(v, "shape", v)
            close(v[0].tolist(), ref[3], "hf")
            v = hf.feature_extraction(TEXTS[0], normalize=False)
            n = float(np.linalg.norm(v[0]))
            assert abs(n - 1.0) > 1e-3, f"normalize=False returned a unit vector (norm {n})"
            close((v[0] / n).tolist(), ref[0], "hf unnormalised, renormalised")
        _()

        @check("langchain-openai: OpenAIEmbeddings(check_embedding_ctx_length=False)")
        def _():
            lc = OpenAIEmbeddings(model=MODEL_ID, base_url=srv.url + "/v1", api_key="unused", check_embedding_ctx_length=False, max_retries=0)
            docs = lc.embed_documents(TEXTS)
            for d, w in zip(docs, ref):
                close(d, w, "langchain doc")
            close(lc.embed_query(TEXTS[2]), ref[2], "langchain query")
        _()

        @check("TEI: POST / and /embed, normalize, truncate, direction, dimensions, /similarity, /embed_all, /decode, /info")
        def _():
            s, h, out = srv.json("POST", "/", {"inputs": TEXTS})
            assert s == 200, out
            for g, w in zip(out, ref):
                close(g, w, "POST /")
            for k in ("x-total-time", "x-queue-time", "x-inference-time", "x-tokenization-time", "x-compute-tokens"):
                assert k in {x.lower() for x in h}, f"header {k} missing: {h}"
            long = "word " * 600
            s, _, out = srv.json("POST", "/embed", {"inputs": long, "truncate": False})
            assert s == 413 and "256" in out["error"], (s, out)
            s, _, right = srv.json("POST", "/embed", {"inputs": long + "tail", "truncate": True})
            s2, _, left = srv.json("POST", "/embed", {"inputs": "head " + long, "truncate": True, "truncation_direction": "Left"})
            assert s == 200 and s2 == 200
            # Both keep [CLS] word x 254 [SEP]: "tail" is cut from the right, "head" from the left.
            close(left[0], right[0], "Left truncation drops the head")
            s, _, head_right = srv.json("POST", "/embed", {"inputs": "head " + long, "truncate": True})
            assert rel_err(head_right[0], left[0]) > 1e-4, "Right truncation of 'head ...' kept the same tokens as Left"
            s, _, d = srv.json("POST", "/embed", {"inputs": TEXTS[0], "dimensions": 64})
            assert len(d[0]) == 64
            close(d[0], renorm(ref[0], 64), "tei dimensions")
            s, _, sim = srv.json("POST", "/similarity", {"inputs": {"source_sentence": TEXTS[0], "sentences": [TEXTS[0], TEXTS[1]]}})
            assert s == 200 and abs(sim[0] - 1) < 1e-5 and abs(sim[1] - sum(x * y for x, y in zip(ref[0], ref[1]))) < 1e-5, sim
            s, _, toks = srv.json("POST", "/tokenize", {"inputs": TEXTS[0]})
            ids = [t["id"] for t in toks[0]]
            s, _, all_ = srv.json("POST", "/embed_all", {"inputs": TEXTS[0]})
            assert s == 200 and len(all_[0]) == len(ids) and len(all_[0][0]) == 384, (s, len(all_[0]))
            mean = [sum(col) / len(ids) for col in zip(*all_[0])]
            close(renorm(mean, 384), ref[0], "mean of /embed_all")
            s, _, dec = srv.json("POST", "/decode", {"ids": ids})
            assert s == 200 and dec[0] == TEXTS[0].lower(), dec
            s, _, info = srv.json("GET", "/info")
            assert info["model_id"] == MODEL_ID and info["max_input_length"] == 256 and info["max_client_batch_size"] == 256, info
        _()

        @check("CORS: a preflight from the allowed origin is answered; the request log is one JSON line per request")
        def _():
            s, h, _ = srv.request("OPTIONS", "/v1/embeddings", headers={"Origin": "http://app.example", "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type,authorization"})
            lh = {k.lower(): v for k, v in h.items()}
            assert s == 200 and lh.get("access-control-allow-origin") == "http://app.example", (s, h)
            s, h, _ = srv.request("GET", "/info", headers={"Origin": "http://evil.example"})
            assert "access-control-allow-origin" not in {k.lower() for k in h}, h
            lines = [json.loads(l) for l in srv.log if l.startswith("{")]
            assert any(l["path"] == "/v1/embeddings" and l["status"] == 200 and l["tokens"] > 0 for l in lines), srv.log[-5:]
        _()

        bad = [
            ("/v1/embeddings", {"input": "x", "encoding_format": "int8"}, 400, "float"),
            ("/v1/embeddings", {"input": "x", "dimensions": -1}, 400, "dimensions"),
            ("/v1/embeddings", {"input": "x", "dimensions": 385}, 400, "dimensions"),
            ("/v1/embeddings", {"input": [[1, 2, 999999]]}, 400, "vocabulary"),
            ("/v1/embeddings", {"input": 5}, 400, "input"),
            ("/v1/embeddings", {"input": []}, 400, "no inputs"),
            ("/v1/embeddings", {"inputs": "x"}, 400, "input"),
            ("/v1/embeddings", {"input": "x", "frobnicate": 1}, 400, "frobnicate"),
            ("/embed", {"inputs": "x", "normalize": "yes"}, 400, "normalize"),
            ("/embed", {"inputs": "x", "truncation_direction": "Middle"}, 400, "Middle"),
            ("/embed", {"inputs": "x", "prompt_name": "nope"}, 400, "prompt"),
            ("/embed", {"inputs": "x", "dimensions": 0}, 400, "dimensions"),
            ("/embed", {"inputs": "x", "truncate": False, "unknown": 1}, 400, "unknown"),
            ("/embed", {"inputs": ["x"] * 257}, 413, "257"),
            ("/embed", {"inputs": [1, 2, -3]}, 400, "inputs"),
            ("/", {"inputs": None}, 400, "inputs"),
            ("/similarity", {"inputs": {"source_sentence": "x", "sentences": []}}, 400, "sentences"),
            ("/decode", {"ids": [10**9]}, 400, "vocabulary"),
            ("/tokenize", {"inputs": 3}, 400, "inputs"),
        ]

        @check(f"bad input: {len(bad)} malformed bodies get the right status and a JSON body; the server keeps serving")
        def _():
            for path, body, status, word in bad:
                s, h, raw = srv.request("POST", path, body)
                j = json.loads(raw)
                assert s == status, (path, body, s, j)
                msg = j["error"]["message"] if path.endswith("embeddings") else j["error"]
                assert word.lower() in json.dumps(j).lower(), (path, body, j)
                assert isinstance(msg, str) and msg
            s, _, raw = srv.request("POST", "/embed", raw="{not json")
            assert s == 400 and "error" in json.loads(raw)
            s, _, raw = srv.request("POST", "/v1/embeddings", raw="[1,2")
            assert s == 400 and json.loads(raw)["error"]["type"] == "invalid_request_error"
            s, _, raw = srv.request("GET", "/nope")
            assert s == 404 and "error" in json.loads(raw)
            r = client.embeddings.create(model=MODEL_ID, input=TEXTS[0], encoding_format="float")
            close(r.data[0].embedding, ref[0], "after bad input")
        _()

        @check("/metrics parses with prometheus_client's OpenMetrics parser and has every family")
        def _():
            s, h, raw = srv.request("GET", "/metrics")
            assert s == 200 and h.get("content-type", h.get("Content-Type", "")).startswith("application/openmetrics-text"), h
            fams = {f.name: f for f in text_string_to_metric_families(raw.decode())}
            for name in ["braid_requests", "braid_request_duration_seconds", "braid_tokenization_seconds", "braid_queue_wait_seconds", "braid_inference_seconds", "braid_batch_size_texts", "braid_batch_size_tokens", "braid_queue_depth", "braid_texts_cancelled", "braid_texts_rejected", "braid_allocator_allocated_bytes"]:
                assert name in fams, f"{name} missing; have {sorted(fams)}"
            reqs = [smp for smp in fams["braid_requests"].samples if smp.name == "braid_requests_total"]
            assert any(smp.labels.get("route") == "/v1/embeddings" and smp.labels.get("status") == "200" and smp.value >= 1 for smp in reqs), reqs
            assert any(smp.labels.get("status") == "400" for smp in reqs)
            assert fams["braid_allocator_allocated_bytes"].samples[0].value >= 0
        _()
    finally:
        srv.stop()

    key = "s3cret-key"
    srv = Server(a.braid, a.model, "--api-key", key, "--workers", "1", "--max-batch", "1", "--capacity", "32", "--max-client-batch-size", "32", "--max-delay-ms", "0")
    auth = {"Authorization": f"Bearer {key}"}
    try:
        @check("api key: /health is open; other routes need the Bearer key (401 otherwise); the SDK with the key works")
        def _():
            s, _, raw = srv.request("GET", "/health")
            assert s == 200, raw
            s, h, raw = srv.request("POST", "/embed", {"inputs": "x"})
            assert s == 401 and "error" in json.loads(raw), (s, raw)
            s, _, raw = srv.request("POST", "/embed", {"inputs": "x"}, {"Authorization": "Bearer wrong"})
            assert s == 401
            s, _, raw = srv.request("GET", "/metrics")
            assert s == 401
            try:
                openai.OpenAI(base_url=srv.url + "/v1", api_key="wrong", max_retries=0).embeddings.create(model=MODEL_ID, input="x")
                raise AssertionError("wrong key accepted")
            except openai.AuthenticationError as e:
                assert e.status_code == 401
            r = openai.OpenAI(base_url=srv.url + "/v1", api_key=key, max_retries=0).embeddings.create(model=MODEL_ID, input=TEXTS[2])
            close(r.data[0].embedding, ref[2], "with key")
        _()

        def stats():
            return srv.json("GET", "/metrics/json", headers=auth)[2]

        def settle():
            t = time.time()
            while time.time() - t < 120:
                st = stats()
                if st["queue_depth"] == 0 and st["submitted"] == st["completed"] + st["cancelled"]:
                    return st
                time.sleep(0.05)
            raise AssertionError(f"queue never drained: {stats()}")

        # 31 texts of the model's full length, one a forward (--max-batch 1): the
        # queue holds the disconnecting client's text long enough for the
        # server to see it leave (a few 25 ms ticks) even on a fast CPU.
        long_texts = [f"{i} " + "a long sentence about nothing in particular " * 40 for i in range(31)]

        @check("cancellation: a client that disconnects mid-queue is counted cancelled and its text is never computed")
        def _():
            before = settle()
            blocker = threading.Thread(target=lambda: srv.request("POST", "/embed", {"inputs": long_texts}, auth))
            blocker.start()
            t = time.time()
            while stats()["queue_depth"] < 2 and time.time() - t < 30:
                time.sleep(0.005)
            sock = socket.create_connection(("127.0.0.1", srv.port))
            body = json.dumps({"inputs": "a text whose client goes away"})
            sock.sendall(f"POST /embed HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode())
            t = time.time()
            while stats()["submitted"] < before["submitted"] + len(long_texts) + 1 and time.time() - t < 30:
                time.sleep(0.005)
            mid = stats()
            assert mid["queue_depth"] >= 1, f"the worker finished before the test could disconnect: {mid}"
            sock.close()
            blocker.join(120)
            after = settle()
            d = {k: after[k] - before[k] for k in ("submitted", "completed", "cancelled")}
            assert d == {"submitted": len(long_texts) + 1, "completed": len(long_texts), "cancelled": 1}, d
        _()

        @check("overload: 429 with Retry-After; every accepted text answered (submitted = completed + cancelled + timed out)")
        def _():
            before = settle()
            codes, retry = [], []
            lock = threading.Lock()

            def one(i):
                s, h, raw = srv.request("POST", "/embed", {"inputs": long_texts[:3]}, auth)
                with lock:
                    codes.append(s)
                    if s == 429:
                        retry.append(h.get("retry-after") or h.get("Retry-After"))
                        assert "error" in json.loads(raw)
                    elif s == 200:
                        assert len(json.loads(raw)) == 3

            # 24 x 3 texts against a capacity of 32: some must be refused.
            ts = [threading.Thread(target=one, args=(i,)) for i in range(24)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(300)
            after = settle()
            n429, n200 = codes.count(429), codes.count(200)
            assert n429 >= 1 and n200 >= 1 and n429 + n200 == len(ts), codes
            assert all(r == "1" for r in retry), retry
            d = {k: after[k] - before[k] for k in ("submitted", "completed", "cancelled", "timed_out", "rejected")}
            assert d["submitted"] == 3 * n200 and d["rejected"] == 3 * n429, d
            assert d["submitted"] == d["completed"] + d["cancelled"], d  # completed counts timed-out texts too
        _()
    finally:
        srv.stop()

    failed = [r for r in RESULTS if not r[1]]
    print(f"client tests: {len(RESULTS) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
