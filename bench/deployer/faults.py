"""Fault benchmarks for the deployer (driven by bench/deployer/faults.sh, which starts moto).

Prints figures and ratios, asserts nothing:
  1. time to a clear error against a hung endpoint (accepts connections, never answers),
     per --api-timeout, and its ratio to that timeout;
  2. interrupt-to-exit latency for SIGINT/SIGTERM at random moments of `up`, and the exit
     codes seen;
  3. a 16-service `up` from nothing, N runs in a row (wall, API calls, failures), and the
     no-op `up` after it.
"""

import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

BIN, MOTO, RUNS = sys.argv[1], sys.argv[2], int(sys.argv[3])
# moto gives every pushed image this digest; faults.sh puts `bench` into moto's ECR first
# (the deployer checks that prebuilt ECR images exist).
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/bench@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
ENV = dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
           AWS_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
ENV.pop("AWS_PROFILE", None)


def project(name, services):
    d = tempfile.mkdtemp(prefix="bench-faults-")
    with open(os.path.join(d, "deployer.yaml"), "w") as f:
        f.write(f"project: {name}\nregion: us-east-1\nservices:\n")
        for i in range(services):
            f.write(f"  s{i}:\n    image: {IMAGE}\n")
    return d


def deployer(d, args, endpoint=MOTO, **kw):
    return subprocess.Popen([BIN, *args], cwd=d, env=dict(ENV, AWS_ENDPOINT_URL=endpoint),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def hung_endpoint():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    held = []

    def accept():
        while True:
            c, _ = s.accept()
            held.append(c)  # never answered, never closed

    threading.Thread(target=accept, daemon=True).start()
    return f"http://127.0.0.1:{s.getsockname()[1]}"


def bench_hung():
    url = hung_endpoint()
    d = project("bench-hung", 1)
    for timeout in (3, 10):
        walls = []
        for _ in range(3):
            t = time.monotonic()
            p = deployer(d, ["status", "--api-timeout", str(timeout)], endpoint=url)
            _, err = p.communicate()
            walls.append(time.monotonic() - t)
        m = statistics.median(walls)
        named = "describe stack" in err and "--api-timeout" in err
        print(f"hung endpoint, --api-timeout {timeout}: clear error after median {m:.2f} s "
              f"(ratio to the timeout {m / timeout:.2f}); exit {p.returncode}; call named: {named}")


def bench_interrupts():
    rng = random.Random(12)
    d = project("bench-intr-probe", 2)
    t = time.monotonic()
    deployer(d, ["up", "-q"]).communicate()
    full = time.monotonic() - t
    subprocess.run([BIN, "destroy", "--yes", "-q"], cwd=d, env=dict(ENV, AWS_ENDPOINT_URL=MOTO))
    lat, codes = [], {}
    for i in range(RUNS):
        d = project(f"bench-intr-{i}-{os.getpid()}", 2)
        sig = rng.choice([signal.SIGINT, signal.SIGTERM])
        at = rng.uniform(0.1, full)
        p = deployer(d, ["up", "-q"])
        time.sleep(at)
        sent = time.monotonic()
        p.send_signal(sig)
        p.communicate()
        lat.append(time.monotonic() - sent)
        codes[p.returncode] = codes.get(p.returncode, 0) + 1
        conv = deployer(d, ["up", "-q"])
        conv.communicate()
        if conv.returncode != 0:
            codes["converge-failed"] = codes.get("converge-failed", 0) + 1
    print(f"interrupt at random moments of a {full:.2f} s `up` ({RUNS} runs): exit latency "
          f"median {statistics.median(lat) * 1000:.0f} ms, max {max(lat) * 1000:.0f} ms "
          f"(max / 7.5 s budget {max(lat) / 7.5:.2f}); exit codes {codes}")


def calls(out):
    c = json.loads(out).get("api_calls", {})
    return c.get("total"), sum(c.get("mutating", {}).values())


def bench_wide():
    walls, fails, last = [], 0, None
    for i in range(RUNS):
        d = project(f"bench-wide-{i}-{os.getpid()}", 16)
        t = time.monotonic()
        p = deployer(d, ["up", "--json"])
        out, err = p.communicate()
        walls.append(time.monotonic() - t)
        if p.returncode != 0:
            fails += 1
            print(f"  run {i}: exit {p.returncode}: {err.strip().splitlines()[-3:]}")
        else:
            last = (d, calls(out))
    print(f"16-service up from nothing, {RUNS} runs: {RUNS - fails}/{RUNS} succeeded; wall median "
          f"{statistics.median(walls):.2f} s, max {max(walls):.2f} s; API calls (total, mutating) "
          f"{last[1] if last else '-'}")
    if last:
        walls = []
        for _ in range(5):
            t = time.monotonic()
            out, _ = deployer(last[0], ["up", "--json"]).communicate()
            walls.append(time.monotonic() - t)
        print(f"16-service no-op up: median {statistics.median(walls):.2f} s; API calls "
              f"(total, mutating) {calls(out)}; lock calls {json.loads(out)['api_calls']['lock']}")


bench_hung()
bench_interrupts()
bench_wide()
