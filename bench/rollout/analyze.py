"""What Prefect saw of a streaming flow across redeploys.

    python analyze.py PREFECT_API_URL FLOW_NAME [--json]

Reads every flow run of FLOW_NAME (the bundled flow tags each run with `revision:<r>` and
`instance:<i>`, src/identity.rs) and prints:
  - runs by state, and runs left RUNNING/PENDING (the goal is 0);
  - the largest gap between one run's end and the next run's start (downtime);
  - per revision change: how long two revisions both ran iterations (from the new revision's
    first start to the old one's last end), how many runs each made in that window, and the
    seconds during which iterations of two instances actually ran at the same time.
Standard library only.
"""
import json
import sys
import urllib.request
from datetime import datetime


def post(base, path, body):
    req = urllib.request.Request(
        base.rstrip("/") + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    for _ in range(20):
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            if e.code != 503:
                raise
    raise RuntimeError(f"{path}: Prefect kept answering 503")


def ts(v):
    return datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp() if v else None


def tag(run, prefix):
    for t in run.get("tags", []):
        if t.startswith(prefix + ":"):
            return t[len(prefix) + 1 :]
    return "unknown"


def runs_of(base, flow):
    out, offset = [], 0
    while True:
        page = post(base, "/flow_runs/filter", {
            "flows": {"name": {"any_": [flow]}}, "sort": "START_TIME_ASC",
            "limit": 200, "offset": offset,
        })
        out += page
        if len(page) < 200:
            return out
        offset += 200


def concurrent_seconds(a, b):
    """Seconds during which some run of `a` and some run of `b` were both in flight."""
    total = 0.0
    for x in a:
        for y in b:
            lo, hi = max(x[0], y[0]), min(x[1], y[1])
            if hi > lo:
                total += hi - lo
    return total


def analyze(base, flow):
    runs = runs_of(base, flow)
    states = {}
    for r in runs:
        states[r["state_type"]] = states.get(r["state_type"], 0) + 1
    spans = [(ts(r["start_time"]), ts(r["end_time"]), tag(r, "revision"), tag(r, "instance"), r["state_type"])
             for r in runs if r.get("start_time")]
    spans.sort()
    ended = [s for s in spans if s[1] is not None]
    gap = 0.0
    last_end = None
    for s in ended:
        if last_end is not None and s[0] - last_end > gap:
            gap = s[0] - last_end
        last_end = s[1] if last_end is None else max(last_end, s[1])
    order = []
    for s in spans:
        if s[2] not in order:
            order.append(s[2])
    changes = []
    for old, new in zip(order, order[1:]):
        o = [s for s in ended if s[2] == old]
        n = [s for s in ended if s[2] == new]
        if not o or not n:
            continue
        start, end = min(s[0] for s in n), max(s[1] for s in o)
        window = max(0.0, end - start)
        changes.append({
            "from": old, "to": new,
            "overlap_seconds": round(window, 3),
            "old_runs_in_overlap": sum(1 for s in o if s[1] > start),
            "new_runs_in_overlap": sum(1 for s in n if s[0] < end),
            "concurrent_iteration_seconds": round(concurrent_seconds(
                [(s[0], s[1]) for s in o], [(s[0], s[1]) for s in n]), 3),
        })
    return {
        "flow": flow,
        "runs": len(runs),
        "states": states,
        "stuck": states.get("RUNNING", 0) + states.get("PENDING", 0),
        "largest_gap_seconds": round(gap, 3),
        "revisions": order,
        "changes": changes,
    }


def main():
    base, flow = sys.argv[1], sys.argv[2]
    result = analyze(base, flow)
    if "--json" in sys.argv:
        print(json.dumps(result))
        return
    print(f"{result['runs']} runs {result['states']}; left RUNNING/PENDING: {result['stuck']}; "
          f"largest gap between runs: {result['largest_gap_seconds']:.2f} s")
    for c in result["changes"]:
        print(f"  revision {c['from'][:12]} -> {c['to'][:12]}: overlap {c['overlap_seconds']:.2f} s "
              f"({c['old_runs_in_overlap']} old / {c['new_runs_in_overlap']} new runs in it), "
              f"concurrent iterations {c['concurrent_iteration_seconds']:.2f} s")


if __name__ == "__main__":
    main()
