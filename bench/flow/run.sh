#!/usr/bin/env bash
# Side-by-side benchmark of the bundled flow (price-stream, release build) and an equivalent
# Python Prefect 3 flow (python_flow.py), against one Prefect server, with a local price API
# stand-in (price_server.py) and counting proxies in front of Prefect (count_proxy.py).
#
#   bench/flow/run.sh
#
# Environment (all optional):
#   PREFECT_API_URL          use this server instead of starting one (http://host:port/api)
#   BENCH_VENV               venv with prefect==3.9.1 (default .venv-bench; created if missing)
#   FLOW_BINARY              price-stream binary to measure (default: cargo build --release)
#   BENCH_RUST_ITERATIONS    default 200;  BENCH_PY_ITERATIONS default 30
#   BENCH_RESULTS            write raw JSON results there
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${BENCH_VENV:-$repo/.venv-bench}"
work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
log() { echo "bench/flow: $*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_http() {
  for _ in $(seq 1 600); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.2; done
  log "$1 did not answer"; exit 1
}

[ -x /usr/bin/time ] || { log "needs /usr/bin/time (Debian package: time)"; exit 1; }
if [ ! -x "$venv/bin/prefect" ]; then
  log "creating $venv (prefect==3.9.1)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check 'prefect==3.9.1'
fi

binary="${FLOW_BINARY:-}"
if [ -z "$binary" ]; then
  log "building price-stream (release)"
  cargo build --release --locked -p price-stream --manifest-path "$repo/Cargo.toml" >&2
  binary="${CARGO_TARGET_DIR:-$repo/target}/release/price-stream"
fi

if [ -z "${PREFECT_API_URL:-}" ]; then
  port=$(free_port)
  log "starting Prefect on 127.0.0.1:$port"
  PREFECT_HOME="$work/prefect-home" PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_UI_ENABLED=false \
    "$venv/bin/prefect" server start --host 127.0.0.1 --port "$port" >"$work/prefect.log" 2>&1 &
  pids+=($!)
  PREFECT_API_URL="http://127.0.0.1:$port/api"
fi
wait_http "$PREFECT_API_URL/health"
hostport="${PREFECT_API_URL#*://}"; hostport="${hostport%%/*}"
up_host="${hostport%:*}"; up_port="${hostport##*:}"

price_port=$(free_port)
python3 "$here/price_server.py" "$price_port" & pids+=($!)
rust_proxy=$(free_port); py_proxy=$(free_port)
python3 "$here/count_proxy.py" "$rust_proxy" "$up_host" "$up_port" "$work/rust-counts.json" & pids+=($!)
python3 "$here/count_proxy.py" "$py_proxy" "$up_host" "$up_port" "$work/py-counts.json" & pids+=($!)
wait_http "http://127.0.0.1:$price_port/data/pricemulti"
wait_http "http://127.0.0.1:$rust_proxy/api/health"
wait_http "http://127.0.0.1:$py_proxy/api/health"

BENCH_PREFECT_URL="$PREFECT_API_URL" \
BENCH_RUST_PROXY_URL="http://127.0.0.1:$rust_proxy/api" \
BENCH_PY_PROXY_URL="http://127.0.0.1:$py_proxy/api" \
BENCH_RUST_COUNTS="$work/rust-counts.json" BENCH_PY_COUNTS="$work/py-counts.json" \
BENCH_SOURCE_URL="http://127.0.0.1:$price_port/data/pricemulti?fsyms=BTC,ETH&tsyms=USD" \
BENCH_FLOW_BINARY="$binary" BENCH_PYTHON="$venv/bin/python" \
  python3 "$here/bench.py"
