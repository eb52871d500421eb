#!/usr/bin/env bash
# No-op `up` against moto: wall time and AWS API calls of an `up` that has nothing to change
# (goal: under 1 s, zero mutating calls), plus `plan` and `status` for comparison.
#
#   bench/deployer/noop_up.sh [RUNS]      (default 10; builds the release binary first)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"
runs="${1:-10}"
work="$(mktemp -d)"
venv "$root/.venv-test" "$MOTO_PIN" "$CFN_LINT_PIN" "$DUCKDB_PIN"
cargo build -q --release -p deployer
bin="${CARGO_TARGET_DIR:-$root/target}/release/deployer"

port=$(free_port)
start_moto "$root/.venv-test" "$port" "$work/moto.log"
trap 'kill $MOTO_PID 2>/dev/null || true; rm -rf "$work"' EXIT
export AWS_ENDPOINT_URL="http://127.0.0.1:$port" AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing \
  AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
unset AWS_PROFILE
wait_http "$AWS_ENDPOINT_URL/moto-api/" 60 "$work/moto.log"

image=$(moto_ecr_image "$root/.venv-test" "$AWS_ENDPOINT_URL" bench)
cat >"$work/deployer.yaml" <<YAML
project: bench
data_lake: {bucket: bench-lake, prefix: crypto/}
services:
  flow:
    image: $image
YAML
cd "$work"
t0=$(date +%s.%N)
"$bin" up -q >/dev/null
t1=$(date +%s.%N)
echo "first up (creates 4 stacks on moto): $(echo "$t1 - $t0" | bc) s"

measure() { # NAME ARGS...: median wall time over $runs runs, and the last run's API calls
  local name="$1"; shift
  local times=()
  for _ in $(seq "$runs"); do
    local s e
    s=$(date +%s.%N); "$bin" "$@" --json >"$work/out.json" 2>/dev/null; e=$(date +%s.%N)
    times+=("$(echo "$e - $s" | bc)")
  done
  local median
  median=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  python3 - "$name" "$median" "$work/out.json" <<'PY'
import json, sys
name, median, path = sys.argv[1], float(sys.argv[2]), sys.argv[3]
out = json.load(open(path))
calls = out.get("api_calls", {})
print(f"{name}: median {median:.3f} s; API calls {calls.get('total', '-')}, mutating {calls.get('mutating', '-')}")
PY
}
measure "no-op up" up
measure "plan (no changes)" plan
"$bin" destroy --yes -q >/dev/null
