"""Side-by-side benchmark: price-stream (Rust) vs an equivalent Python Prefect 3 flow, against
one Prefect server. Driven by run.sh; see there for the environment it needs.

Figures per implementation:
  data-path ms/iteration   Rust: the `data_path_ms` of each iteration log line (reporting on,
                           off the data path); Python: the whole flow call (reporting inline)
  CPU ms/iteration         process user+sys CPU (/usr/bin/time -v) / iterations; for Python also
                           the in-loop median (excludes `import prefect`)
  Prefect requests/iter.   HTTP requests seen by a counting proxy (+ WebSocket event messages)
  max RSS                  /usr/bin/time -v
  start -> first run       process start to the server's end_time of the first finished run
"""
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime

PREFECT = os.environ["BENCH_PREFECT_URL"].rstrip("/")  # upstream, e.g. http://127.0.0.1:4200/api
RUST_PROXY = os.environ["BENCH_RUST_PROXY_URL"].rstrip("/")
PY_PROXY = os.environ["BENCH_PY_PROXY_URL"].rstrip("/")
RUST_COUNTS = os.environ["BENCH_RUST_COUNTS"]
PY_COUNTS = os.environ["BENCH_PY_COUNTS"]
SOURCE = os.environ["BENCH_SOURCE_URL"]
BINARY = os.environ["BENCH_FLOW_BINARY"]
PYTHON = os.environ["BENCH_PYTHON"]
N_RS = int(os.environ.get("BENCH_RUST_ITERATIONS", "200"))
N_PY = int(os.environ.get("BENCH_PY_ITERATIONS", "30"))
HERE = os.path.dirname(os.path.abspath(__file__))
TAG = datetime.now().strftime("%H%M%S")


def api(path, body=None):
    for attempt in range(10):
        req = urllib.request.Request(
            PREFECT + path,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="GET" if body is None else "POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.load(r)
        except urllib.error.HTTPError as e:
            if e.code not in (429, 502, 503):
                raise
            time.sleep(0.2 * (attempt + 1))
    raise RuntimeError(f"Prefect kept failing for {path}")


def parse_ts(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def time_v(path):
    text = open(path).read()

    def grab(label):
        m = re.search(re.escape(label) + r"[^:]*:\s*([0-9.:]+)", text)
        return m.group(1) if m else None

    return {
        "rss_kib": int(grab("Maximum resident set size")),
        "cpu_s": float(grab("User time")) + float(grab("System time")),
    }


def runs_of(flow_name, expect):
    deadline = time.time() + 120
    while True:
        runs = api(
            "/flow_runs/filter",
            {"flows": {"name": {"any_": [flow_name]}}, "limit": 200, "sort": "START_TIME_ASC"},
        )
        done = [r for r in runs if r["state_type"] in ("COMPLETED", "FAILED", "CANCELLED", "CRASHED")]
        if len(done) >= expect or time.time() > deadline:
            return runs
        time.sleep(0.5)


def run(name, argv, env, n, counts_file):
    out_dir = tempfile.mkdtemp(prefix=f"bench-{name}-")
    timing = os.path.join(out_dir, "time.txt")
    full_env = dict(os.environ)
    full_env.update(env)
    # The readiness probes went through the proxy too: count only what this run sends.
    base = json.load(open(counts_file))
    t_start = time.time()
    p = subprocess.run(
        ["/usr/bin/time", "-v", "-o", timing] + argv,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL if name == "python" else None,
        cwd=out_dir,
        text=True,
    )
    t_end = time.time()
    if p.returncode != 0:
        sys.exit(f"{name} exited {p.returncode}")
    lines = [json.loads(l) for l in p.stdout.splitlines() if l.startswith("{")]
    its = [l for l in lines if l.get("event") == "iteration"]
    if len(its) != n:
        sys.exit(f"{name}: expected {n} iterations, saw {len(its)}")
    tv = time_v(timing)
    counts = json.load(open(counts_file))
    counts["http"] -= base["http"]
    counts["ws_messages"] -= base["ws_messages"]
    counts["by_path"] = {
        k: v - base["by_path"].get(k, 0)
        for k, v in counts["by_path"].items()
        if v - base["by_path"].get(k, 0)
    }
    runs = runs_of(env["FLOW_NAME"], n)
    ends = sorted(parse_ts(r["end_time"]) for r in runs if r.get("end_time"))
    completed = sum(1 for r in runs if r["state_type"] == "COMPLETED")
    data_ms = [l["data_path_ms"] for l in its]
    res = {
        "iterations": n,
        "completed_runs": completed,
        "data_path_ms_median": statistics.median(data_ms),
        "data_path_ms_p95": sorted(data_ms)[int(0.95 * (len(data_ms) - 1))],
        "cpu_ms_per_iteration": tv["cpu_s"] * 1000 / n,
        "max_rss_mib": tv["rss_kib"] / 1024,
        "prefect_http_requests": counts["http"],
        "prefect_ws_messages": counts["ws_messages"],
        "prefect_requests_per_iteration": (counts["http"] + counts["ws_messages"]) / n,
        "start_to_first_finished_run_s": (ends[0] - t_start) if ends else None,
        "wall_s": t_end - t_start,
        "requests_by_path": counts["by_path"],
    }
    if name == "python":
        res["cpu_ms_per_iteration_in_loop_median"] = statistics.median(l["cpu_ms"] for l in its)
    return res


def warm_up():
    """A fresh server often answers its first writes with 503: take those before measuring,
    so neither side (Rust runs first) pays the server's cold start."""
    flow = api("/flows/", {"name": f"bench-warmup-{TAG}"})
    for i in range(5):
        api("/flow_runs/", {"flow_id": flow["id"], "name": f"warmup-{i}",
                            "state": {"type": "COMPLETED"}})


def main():
    warm_up()
    lake = tempfile.mkdtemp(prefix="bench-lake-")
    rust = run(
        "rust",
        [BINARY, "--iterations", str(N_RS)],
        {
            "FLOW_NAME": f"bench-rust-{TAG}",
            "PREFECT_API_URL": RUST_PROXY,
            "SOURCE_URL": SOURCE,
            "SINK_URL": f"file://{lake}",
            "INTERVAL_SECONDS": "0",
            "REPORT_FLUSH_SECONDS": "120",
            "HEALTH_FILE": os.path.join(lake, "health"),
        },
        N_RS,
        RUST_COUNTS,
    )
    py_home = tempfile.mkdtemp(prefix="bench-prefect-home-")
    py = run(
        "python",
        [PYTHON, os.path.join(HERE, "python_flow.py"), SOURCE, os.path.join(lake, "py.jsonl"), str(N_PY)],
        {
            "FLOW_NAME": f"bench-python-{TAG}",
            "PREFECT_API_URL": PY_PROXY,
            "PREFECT_HOME": py_home,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        },
        N_PY,
        PY_COUNTS,
    )
    rows = [
        ("data-path ms / iteration (median)", "data_path_ms_median", "<= 1/100"),
        ("data-path ms / iteration (p95)", "data_path_ms_p95", ""),
        ("CPU ms / iteration (process total)", "cpu_ms_per_iteration", ""),
        ("Prefect requests / iteration", "prefect_requests_per_iteration", "<= 4 (absolute)"),
        ("max RSS MiB", "max_rss_mib", "<= 1/10"),
        ("start -> first finished run s", "start_to_first_finished_run_s", "<= 1/20"),
    ]
    print(f"\nRust: {N_RS} iterations ({rust['completed_runs']} COMPLETED runs); "
          f"Python: {N_PY} iterations ({py['completed_runs']} COMPLETED runs); server {PREFECT}\n")
    print("| metric | Rust | Python | Rust/Python | goal |")
    print("|---|---:|---:|---:|---|")
    for label, key, goal in rows:
        r, p = rust[key], py[key]
        ratio = f"1/{p / r:.0f}" if r and p and p > r else (f"{r / p:.2f}" if p else "-")
        print(f"| {label} | {r:.3f} | {p:.3f} | {ratio} | {goal} |")
    print(f"| CPU ms / iteration (Python in-loop median) | | "
          f"{py['cpu_ms_per_iteration_in_loop_median']:.1f} | | |")
    print("\nRust requests by path:", json.dumps(rust["requests_by_path"]))
    print("Python requests by path:", json.dumps(py["requests_by_path"]),
          f"+ {py['prefect_ws_messages']} WebSocket event messages")
    out = os.environ.get("BENCH_RESULTS")
    if out:
        json.dump({"rust": rust, "python": py}, open(out, "w"), indent=2)
        print(f"\nraw results: {out}")


if __name__ == "__main__":
    main()
