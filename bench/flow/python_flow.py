"""The Python baseline: a Prefect 3 flow of three tasks (extract, transform, load) called in
`while True`, the way the system we replace ran (one flow run per iteration).

    python python_flow.py SOURCE_URL OUT_FILE ITERATIONS
Prints one JSON line per iteration: {"event":"iteration","i":..,"data_path_ms":..,"cpu_ms":..}.
The data path of this flow is the whole flow call: Prefect reporting is inline.
"""
import json
import os
import sys
import time
import urllib.request
from datetime import datetime, timezone

from prefect import flow, task

SOURCE_URL, OUT_FILE, ITERATIONS = sys.argv[1], sys.argv[2], int(sys.argv[3])


@task
def extract(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


@task
def transform(payload: dict) -> list:
    now = datetime.now(timezone.utc).isoformat()
    return [
        {"symbol": s, "currency": c, "price": p, "time": now}
        for s, cur in payload.items()
        for c, p in cur.items()
    ]


@task
def load(rows: list) -> int:
    with open(OUT_FILE, "a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return len(rows)


@flow(name=os.environ.get("FLOW_NAME", "price-stream-python"))
def price_flow(url: str) -> int:
    payload = extract(url)
    rows = transform(payload)
    return load(rows)


if __name__ == "__main__":
    i = 0
    while True:
        i += 1
        t0, c0 = time.perf_counter(), time.process_time()
        price_flow(SOURCE_URL)
        t1, c1 = time.perf_counter(), time.process_time()
        print(
            json.dumps(
                {
                    "event": "iteration",
                    "i": i,
                    "data_path_ms": (t1 - t0) * 1000,
                    "cpu_ms": (c1 - c0) * 1000,
                }
            ),
            flush=True,
        )
        if i >= ITERATIONS:
            break
