"""Leader-lease benchmark (flows/src/lease.rs) against a real Prefect server.

    python lease.py PREFECT_API_URL FLOW_BINARY [--terms N] [--kills K] [--interval S]

Two instances of one service (same DEPLOYER_SERVICE, own DEPLOYER_INSTANCE) at a 1 s
interval (default) with the offline simulated source, sharing a file lake:
  - N graceful handoffs: SIGTERM the holder; takeover = SIGTERM -> the standby's
    "lease acquired" log line (its first iteration follows at once);
  - K crash takeovers: SIGKILL the holder; takeover = kill -> "lease acquired" (bounded below
    by Prefect's 60 s minimum lease);
  - afterwards: runs left RUNNING/PENDING (goal 0), seconds during which two instances' runs
    overlapped (goal 0).
Prints one JSON object. Standard library only.
"""
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime


def post(base, path, body):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    for _ in range(30):
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            if e.code != 503:
                raise
            time.sleep(0.2)
    raise RuntimeError("Prefect kept answering 503")


class Instance:
    def __init__(self, binary, env, name):
        self.name = name
        self.events = {}
        self.proc = subprocess.Popen([binary], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                msg = json.loads(line).get("msg", "")
            except ValueError:
                continue
            self.events.setdefault(msg, time.monotonic())

    def wait(self, msg, timeout):
        deadline = time.monotonic() + timeout
        while msg not in self.events:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: no '{msg}' within {timeout} s")
            time.sleep(0.01)
        return self.events[msg]


ACQUIRED = "lease acquired: this instance runs the iterations"
STANDBY = "standby: another instance holds the lease"


def main():
    base, binary = sys.argv[1].rstrip("/"), sys.argv[2]
    terms = int(sys.argv[sys.argv.index("--terms") + 1]) if "--terms" in sys.argv else 10
    kills = int(sys.argv[sys.argv.index("--kills") + 1]) if "--kills" in sys.argv else 3
    interval = sys.argv[sys.argv.index("--interval") + 1] if "--interval" in sys.argv else "1"
    service = f"lease-bench-{os.getpid()}"
    work = tempfile.mkdtemp()
    n = 0

    def start():
        nonlocal n
        n += 1
        env = {"PATH": os.environ.get("PATH", ""), "PREFECT_API_URL": base, "FLOW_NAME": service,
               "DEPLOYER_SERVICE": service, "DEPLOYER_INSTANCE": f"i{n}", "DEPLOYER_REVISION": "bench",
               "SOURCE_URL": "simulated", "SINK_URL": f"file://{work}/lake", "INTERVAL_SECONDS": interval,
               "HEALTH_FILE": f"{work}/health-{n}", "REPORT_FLUSH_SECONDS": "10"}
        return Instance(binary, env, f"i{n}")

    holder = start()
    holder.wait(ACQUIRED, 60)
    term_latency, kill_latency = [], []
    for _ in range(terms):
        standby = start()
        standby.wait(STANDBY, 60)
        time.sleep(1.0)
        t0 = time.monotonic()
        holder.proc.send_signal(signal.SIGTERM)
        t1 = standby.wait(ACQUIRED, 60)
        term_latency.append(t1 - t0)
        holder.proc.wait(60)
        holder = standby
    for _ in range(kills):
        standby = start()
        standby.wait(STANDBY, 60)
        time.sleep(1.0)
        t0 = time.monotonic()
        holder.proc.send_signal(signal.SIGKILL)
        t1 = standby.wait(ACQUIRED, 180)
        kill_latency.append(t1 - t0)
        holder.proc.wait(10)
        holder = standby
    time.sleep(2)
    holder.proc.send_signal(signal.SIGTERM)
    holder.proc.wait(60)
    time.sleep(3)

    runs = []
    offset = 0
    while True:
        page = post(base, "/flow_runs/filter", {"flows": {"name": {"any_": [service]}},
                                                "limit": 200, "offset": offset})
        runs += page
        if len(page) < 200:
            break
        offset += 200
    states = {}
    for r in runs:
        states[r["state_type"]] = states.get(r["state_type"], 0) + 1

    def ts(v):
        return datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp() if v else None

    def inst(r):
        return next((t[9:] for t in r.get("tags", []) if t.startswith("instance:")), "?")

    spans = sorted((ts(r["start_time"]), ts(r["end_time"]), inst(r)) for r in runs
                   if r.get("start_time") and r.get("end_time"))
    overlap = 0.0
    for i, a in enumerate(spans):
        for b in spans[i + 1:]:
            if b[0] >= a[1]:
                break
            if a[2] != b[2]:
                overlap += min(a[1], b[1]) - b[0]

    def stats(xs):
        xs = sorted(xs)
        return {"n": len(xs), "median": round(xs[len(xs) // 2], 3) if xs else None,
                "max": round(xs[-1], 3) if xs else None}

    print(json.dumps({"service": service, "interval_seconds": float(interval), "runs": len(runs), "states": states,
                      "stuck": states.get("RUNNING", 0) + states.get("PENDING", 0),
                      "sigterm_takeover_seconds": stats(term_latency),
                      "sigkill_takeover_seconds": stats(kill_latency),
                      "overlapping_run_seconds": round(overlap, 3)}))


if __name__ == "__main__":
    main()
