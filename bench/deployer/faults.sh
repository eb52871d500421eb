#!/usr/bin/env bash
# Fault benchmarks (bench/deployer/faults.py): time to a clear error against a hung endpoint,
# interrupt-to-exit latency at random moments of `up`, the 16-service `up` (RUNS in a row) and
# the no-op `up` after it. Figures only; nothing is asserted.
#
#   bench/deployer/faults.sh [RUNS]    (default 10; BIN=path to use another deployer binary,
#                                       default the debug build: these figures are waits,
#                                       not CPU)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"
runs="${1:-10}"
work="$(mktemp -d)"
venv "$root/.venv-test" "$MOTO_PIN" "$CFN_LINT_PIN" "$DUCKDB_PIN"
if [ -z "${BIN:-}" ]; then
  cargo build -q -p deployer
  BIN="${CARGO_TARGET_DIR:-$root/target}/debug/deployer"
fi
port=$(free_port)
start_moto "$root/.venv-test" "$port" "$work/moto.log"
trap 'kill $MOTO_PID 2>/dev/null || true; rm -rf "$work"' EXIT
wait_http "http://127.0.0.1:$port/moto-api/" 60 "$work/moto.log"
moto_ecr_image "$root/.venv-test" "http://127.0.0.1:$port" bench >/dev/null
python3 "$root/bench/deployer/faults.py" "$BIN" "http://127.0.0.1:$port" "$runs"
