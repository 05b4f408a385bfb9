"""A bounded load run of `ragless serve` on loopback: concurrent clients asking (half of them streamed) and updating
documents, against the shipped models over the demo corpus.

The server runs as its own process (with API keys, the default limits: one model worker, 8 jobs waiting, then 429
with Retry-After); each client loops for the duration: mostly questions from demo/questions.txt, sometimes a document
replaced (POST /v1/documents, the same ids over and over) or listed. A client that gets 429 waits Retry-After seconds
and goes on: those refusals are the intended back-pressure and are counted apart; any other non-2xx, or a failed
connection, is an error. Reported: throughput, p50/p95/p99 latency per kind of request (and the time to the first
streamed token), errors, the server's peak RSS (sampled every 0.2 s) and the machine's load average at the start and
the end of the run (other processes sharing the cores make every latency an upper bound: the section says so).

    python bench/serve_load.py                      # 16 clients for 60 s; writes bench/results/serve_load.json
    python bench/serve_load.py --clients 4 --duration 20 --no-record     # a quick look, nothing written
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import httpx
import psutil

# the repository root first, and not bench/ itself: bench/kernels.py would shadow the `kernels` package that
# transformers imports
sys.path[:] = [str(Path(__file__).resolve().parents[1])] + [
    p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from bench.common import ROOT, markdown_table, save_results, update_benchmarks_md  # noqa: E402

COMMAND = "python bench/serve_load.py"
SHARED_CORES = 0.25  # other processes busy on more than this many cores on average: the run is marked as shared
KEY = "bench-admin-key-0123456789"
MIX = (("ask", 0.4), ("ask-stream", 0.4), ("update", 0.1), ("list", 0.1))  # kinds of request, their share


def build_index(index: Path) -> None:
    """The demo corpus with the shipped models (the learned segmenter, MiniLM, the lexical channel): `make demo`'s."""
    subprocess.run([sys.executable, "-m", "ragless.cli", "ingest", str(ROOT / "demo" / "corpus"), "--index",
                    str(index), "--quiet"], check=True, cwd=ROOT)


def start_server(index: Path, work: Path) -> tuple[subprocess.Popen, str, Path]:
    keys = work / "keys.txt"
    keys.write_text(f"{KEY} admin\n")
    log = work / "server.log"
    proc = subprocess.Popen([sys.executable, "-m", "ragless.cli", "serve", "--index", str(index), "--port", "0",
                             "--api-keys", str(keys)], cwd=ROOT, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    url = None
    while time.monotonic() < deadline and proc.poll() is None:
        found = re.search(r"Uvicorn running on (http://[\d.]+:\d+)", log.read_text(errors="replace"))
        if found:
            url = found.group(1)
            with httpx.Client(base_url=url) as c:
                if c.get("/readyz").status_code == 200:
                    return proc, url, log
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"the server did not become ready:\n{log.read_text(errors='replace')}")


def busy_seconds() -> float:
    """CPU seconds the whole machine spent busy since boot (all cores; idle and I/O wait left out)."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def own_seconds(server: psutil.Process) -> float:
    """CPU seconds of the server process (and its children) and of this process (the clients)."""
    total = 0.0
    for proc in [server, *server.children(recursive=True), psutil.Process()]:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))], 3)


class Load:
    def __init__(self, url: str, questions: list[str], duration: float, seed: int):
        self.url, self.questions, self.duration, self.seed = url, questions, duration, seed
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.first_token: list[float] = []
        self.rejected: dict[str, int] = defaultdict(int)
        self.errors: list[str] = []
        self.lock = threading.Lock()

    def client(self, n: int) -> None:
        rng = random.Random(self.seed * 1000 + n)
        kinds, weights = zip(*MIX)
        end = time.monotonic() + self.duration
        with httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=300) as c:
            while time.monotonic() < end:
                kind = rng.choices(kinds, weights)[0]
                t0 = time.perf_counter()
                first = None
                try:
                    if kind == "ask":
                        r = c.post("/v1/ask", json={"question": rng.choice(self.questions)})
                    elif kind == "ask-stream":
                        body = {"question": rng.choice(self.questions), "stream": True}
                        with c.stream("POST", "/v1/ask", json=body) as r:
                            text = ""
                            for chunk in r.iter_text():
                                if first is None and "event: token" in chunk:
                                    first = time.perf_counter() - t0
                                text += chunk
                            if r.status_code == 200 and "event: answer" not in text:
                                raise RuntimeError("stream ended without an answer event: " + text[-300:])
                    elif kind == "update":
                        doc = {"doc_id": f"load-{n}", "title": f"Load note {n}",
                               "text": f"Note {n} was updated at step {rng.randrange(10**6)}.\nIt is about load."}
                        r = c.post("/v1/documents", json={"documents": [doc]})
                    else:
                        r = c.get("/v1/documents", params={"limit": 50})
                except Exception as e:  # noqa: BLE001 -- a failed connection or stream is an error, counted
                    with self.lock:
                        self.errors.append(f"{kind}: {type(e).__name__}: {e}")
                    continue
                elapsed = time.perf_counter() - t0
                with self.lock:
                    if r.status_code == 429:
                        self.rejected[kind] += 1
                    elif r.status_code >= 300:
                        self.errors.append(f"{kind}: HTTP {r.status_code}: {r.text[:200]}")
                    else:
                        self.latency[kind].append(elapsed)
                        if first is not None:
                            self.first_token.append(first)
                if r.status_code == 429:
                    time.sleep(float(r.headers.get("Retry-After", "1")))

    def run(self, clients: int) -> float:
        threads = [threading.Thread(target=self.client, args=(n,)) for n in range(clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds each client keeps sending")
    parser.add_argument("--index", help="an existing index to serve (a copy is used); default: the demo corpus")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--note", default="", help="a remark recorded with the numbers (e.g. what else ran)")
    parser.add_argument("--no-record", action="store_true", help="print the numbers; write nothing")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ragless-serve-load-"))
    try:
        index = work / "index"
        if args.index:
            shutil.copytree(args.index, index)
        else:
            print("ingesting demo/corpus ...", file=sys.stderr)
            build_index(index)
        questions = [q for q in (ROOT / "demo" / "questions.txt").read_text().splitlines() if q.strip()]
        print("starting the server (loading the models) ...", file=sys.stderr)
        proc, url, log = start_server(index, work)
        server = psutil.Process(proc.pid)
        peak = [server.memory_info().rss]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.2):
                try:
                    peak[0] = max(peak[0], server.memory_info().rss)
                except psutil.Error:
                    return

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        print(f"{args.clients} clients for {args.duration:g} s ...", file=sys.stderr)
        load = Load(url, questions, args.duration, args.seed)
        load_before = os.getloadavg()[0]  # 1-minute averages: of the minute before the run, and of its last minute
        busy_before, ours_before = busy_seconds(), own_seconds(server)
        wall = load.run(args.clients)
        load_after = os.getloadavg()[0]
        # what else ran: the machine's busy CPU time less the server's and these clients' own, per second of the run
        others = max(0.0, (busy_seconds() - busy_before) - (own_seconds(server) - ours_before)) / wall
        stop.set()
        with httpx.Client(base_url=url) as c:
            metrics = c.get("/metrics").text
        proc.terminate()
        proc.wait(30)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    done = sum(len(v) for v in load.latency.values())
    kinds = {}
    for kind, _ in MIX:
        lat = load.latency[kind]
        kinds[kind] = {"ok": len(lat), "rejected_429": load.rejected[kind], "per_s": round(len(lat) / wall, 3),
                       "p50_s": percentile(lat, 50), "p95_s": percentile(lat, 95), "p99_s": percentile(lat, 99)}
    result = {
        "command": COMMAND + (f" --clients {args.clients}" if args.clients != 16 else "")
        + (f" --duration {args.duration:g}" if args.duration != 60 else ""),
        "clients": args.clients, "duration_s": args.duration, "wall_s": round(wall, 2),
        "requests_ok": done, "throughput_per_s": round(done / wall, 3),
        "rejected_429": sum(load.rejected.values()), "errors": len(load.errors), "error_samples": load.errors[:10],
        "first_token_s": {"p50": percentile(load.first_token, 50), "p95": percentile(load.first_token, 95),
                          "p99": percentile(load.first_token, 99)},
        "kinds": kinds, "peak_rss_mb": round(peak[0] / 2**20, 1),
        "server_rejected_total": float(re.search(r"^ragless_queue_rejected_total (\S+)", metrics, re.M).group(1)),
        "index": args.index or "demo/corpus (learned segmenter, lexical channel)", "note": args.note,
        "load_average": {"start": round(load_before, 2), "end": round(load_after, 2)},
        "other_processes_cores": round(others, 2),
    }
    print(json.dumps(result, indent=1))
    if args.no_record:
        return
    path = save_results("serve_load", result)
    saved = json.loads(path.read_text())
    m, commit, rejected = saved["machine"], saved["commit"], result["rejected_429"]
    rows = [[k, v["ok"], v["rejected_429"], v["per_s"], v["p50_s"], v["p95_s"], v["p99_s"]] for k, v in kinds.items()]
    table = markdown_table(["request", "ok", "429", "per s", "p50 s", "p95 s", "p99 s"], rows)
    ttft = result["first_token_s"]
    md = (f"## Serving under load (issue 8)\n\n`{result['command']}` — `ragless serve` over {result['index']}, "
          f"{args.clients} clients for {args.duration:g} s on loopback (mostly questions, half streamed; some "
          f"document updates and listings), one model worker, queue of 8; commit {commit}."
          f"\n\n{table}\n\n"
          f"{done} requests answered in {result['wall_s']} s ({result['throughput_per_s']}/s); {rejected} "
          f"refused with 429 (the intended back-pressure: clients wait Retry-After and retry); **{result['errors']} "
          f"errors**. Streamed questions: first token after p50 {ttft['p50']} s / p95 {ttft['p95']} s. Server peak "
          f"RSS {result['peak_rss_mb']} MB. Latencies include the wait in the queue: with one worker, a question "
          "waits for those ahead of it."
          + (f" {args.note.rstrip('.')}." if args.note else "")
          + f" Machine: {m['cores']} cores ({m['cpu']}), {m['memory_gb']} GB, torch {m['torch']}, "
          f"{'GPU ' + m['gpu'] if m['gpu'] else 'no GPU'}; "
          + (f"**the cores were shared with other jobs** (they used {others:.2f} cores on average during the run, "
             f"load average {load_before:.1f} at its start, {load_after:.1f} at its end): the latencies are upper "
             "bounds." if others > SHARED_CORES else
             f"nothing else ran (other processes used {others:.2f} cores on average during the run; load average "
             f"{load_before:.1f} at its start, {load_after:.1f} at its end, the server's and clients' own work)."))
    update_benchmarks_md("serve_load", md)
    print(f"wrote {path} and BENCHMARKS.md", file=sys.stderr)


if __name__ == "__main__":
    main()
