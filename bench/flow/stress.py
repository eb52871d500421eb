"""The flow under stress: peak memory while the source sends huge replies, and reports
delivered after Prefect outages.

    python3 bench/flow/stress.py PREFECT_API_URL FLOW_BINARY [--outages 10,300] [--skip-rss]

1. RSS: price-stream (no Prefect) against a local source that answers, per case, a normal
   reply, 10 MB with its Content-Length, and 1 GB streamed chunked (generated as it is sent,
   never stored); the flow's own `peak_rss_kib` (VmHWM) from its stop line.
2. Outages: price-stream (1 s interval, LEADER_LEASE=off so the loop goes on) reporting through
   a proxy that answers 503 to everything during the outage; after it, how many iterations
   appear in Prefect (COMPLETED, with their 4 task runs) against how many ran, and what the
   flow counted as dropped.
"""
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FINE = b'{"BTC":{"USD":91000.5},"ETH":{"USD":3000.25}}'


class Flood(BaseHTTPRequestHandler):
    mode = "fine"
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_GET(self):
        mode = Flood.mode
        self.send_response(200)
        self.send_header("content-type", "application/json")
        if mode == "fine":
            self.send_header("content-length", str(len(FINE)))
            self.end_headers()
            self.wfile.write(FINE)
            return
        chunk = b" " * 65536
        try:
            if mode == "10MB":
                n = 10 << 20
                self.send_header("content-length", str(n))
                self.end_headers()
                while n > 0:
                    self.wfile.write(chunk[: min(n, len(chunk))])
                    n -= len(chunk)
            else:  # 1GB streamed, chunked
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                n = 1 << 30
                while n > 0:
                    piece = chunk[: min(n, len(chunk))]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    n -= len(piece)
                self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass


def serve(handler):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv.server_address[1]


def run_flow(binary, env, args):
    with tempfile.TemporaryDirectory() as d:
        full = {
            "PATH": os.environ.get("PATH", ""),
            "SINK_URL": f"file://{d}/lake",
            "HEALTH_FILE": f"{d}/health",
            "SOURCE_RETRIES": "0",
            **env,
        }
        # /usr/bin/time measures the peak from outside too (works for builds that predate
        # the flow's own peak_rss_kib).
        out = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", f"{d}/maxrss", binary, *args],
                             env=full, capture_output=True, text=True, check=True)
        maxrss = int(open(f"{d}/maxrss").read().split()[-1])
    lines = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]
    lines[-1].setdefault("peak_rss_kib", maxrss)
    return lines


def rss(binary):
    port = serve(Flood)
    print("RSS (flow's own peak_rss_kib, 3 iterations per case, no Prefect)")
    print(f"{'source reply':<24}{'peak RSS MiB':>14}  {'wall s':>7}  runs")
    for mode, label in [("fine", "normal (46 B)"), ("10MB", "10 MB, Content-Length"), ("1GB", "1 GB streamed")]:
        Flood.mode = mode
        started = time.monotonic()
        lines = run_flow(
            binary,
            {"SOURCE_URL": f"http://127.0.0.1:{port}/data/pricemulti", "INTERVAL_SECONDS": "0"},
            ["--iterations", "3"],
        )
        stop = lines[-1]
        wall = time.monotonic() - started
        runs = [l for l in lines if l.get("event") == "iteration"]
        why = next((l["msg"][:110] for l in runs if l["state"] != "COMPLETED"), "")
        states = ",".join(l["state"] for l in runs)
        print(f"{label:<24}{stop['peak_rss_kib'] / 1024:>14.1f}  {wall:>7.1f}  {states} {why}")


class Gate:
    down = False
    refused = 0


async def proxy_conn(reader, writer, upstream):
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        body = await reader.readexactly(length) if length else b""
        if Gate.down:
            Gate.refused += 1
            msg = b'{"exception_message":"Service Unavailable"}'
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                         b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(msg), msg))
        else:
            lines = [l for l in head.split(b"\r\n")
                     if l and not l.lower().startswith((b"connection:", b"keep-alive:"))]
            up_r, up_w = await asyncio.open_connection(*upstream)
            up_w.write(b"\r\n".join(lines) + b"\r\nconnection: close\r\n\r\n" + body)
            await up_w.drain()
            writer.write(await up_r.read())
            up_w.close()
        await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def prefect(api, path, body):
    req = urllib.request.Request(api + path, data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    for _ in range(20):
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.load(r)
        except Exception:
            time.sleep(0.5)
    raise SystemExit(f"Prefect failed for {path}")


def outage(api, binary, seconds):
    host, port = api.split("://")[1].split("/")[0].split(":")
    loop = asyncio.new_event_loop()
    srv = loop.run_until_complete(asyncio.start_server(
        lambda r, w: proxy_conn(r, w, (host, int(port))), "127.0.0.1", 0))
    threading.Thread(target=loop.run_forever, daemon=True).start()
    proxy = f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}/api"
    price = serve(Flood)
    Flood.mode = "fine"
    flow = f"bench-outage-{seconds}-{os.getpid()}"
    env = {"PREFECT_API_URL": proxy, "FLOW_NAME": flow, "LEADER_LEASE": "off",
           "SOURCE_URL": f"http://127.0.0.1:{price}/data/pricemulti", "INTERVAL_SECONDS": "1",
           "REPORT_FLUSH_SECONDS": "60"}
    # 10 s before, the outage, 20 s after; the flow runs throughout.
    before, after = 10, 20
    total = before + seconds + after
    Gate.down = False
    t = threading.Timer(before, lambda: setattr(Gate, "down", True))
    t.start()
    u = threading.Timer(before + seconds, lambda: setattr(Gate, "down", False))
    u.start()
    lines = run_flow(binary, env, ["--iterations", str(total)])
    stop = lines[-1]
    time.sleep(3)
    runs = prefect(api, "/flow_runs/filter", {"flows": {"name": {"any_": [flow]}}, "limit": 200})
    runs = runs + prefect(api, "/flow_runs/filter",
                          {"flows": {"name": {"any_": [flow]}}, "limit": 200, "offset": 200})
    completed = [r for r in runs if r["state_type"] == "COMPLETED"]
    with_tasks = 0
    late_labelled = 0
    for r in completed:
        tasks = prefect(api, "/task_runs/filter", {"flow_runs": {"id": {"any_": [r["id"]]}}})
        with_tasks += len([x for x in tasks if x["state_type"] == "COMPLETED"]) == 4
        late_labelled += "observed.end" in (r.get("labels") or {})
    iterations = {r["parameters"]["iteration"] for r in runs}
    print(f"{seconds:>7} s {stop['iterations']:>11} {len(runs):>9} {len(iterations):>9} "
          f"{with_tasks:>14} {late_labelled:>13} {stop['reports_dropped']:>8} "
          f"{stop['reports_held_peak']:>10} {stop['peak_rss_kib'] / 1024:>9.1f}")


def main():
    api, binary = sys.argv[1].rstrip("/"), sys.argv[2]
    outages = [10, 300]
    if "--outages" in sys.argv:
        outages = [int(x) for x in sys.argv[sys.argv.index("--outages") + 1].split(",") if x]
    if "--skip-rss" not in sys.argv:
        rss(binary)
        print()
    print("Outages (1 s interval; runs counted in Prefect afterwards)")
    print(f"{'outage':>9} {'iterations':>11} {'runs':>9} {'distinct':>9} {'with 4 tasks':>14} "
          f"{'observed.end':>13} {'dropped':>8} {'held peak':>10} {'RSS MiB':>9}")
    for s in outages:
        outage(api, binary, s)


if __name__ == "__main__":
    main()
