#!/usr/bin/env bash
# Prefect requests per iteration of the bundled flow as deployed (leader lease on), counted by
# a proxy in front of Prefect (lease renewals, variable reads and reports all included), at
# several loop intervals.
#
#   bench/flow/requests.sh PREFECT_API_URL [FLOW_BINARY] [INTERVAL:ITERATIONS ...]
#
# Default cases: 1 s x 30 iterations, 10 s x 9 iterations. Goal: <= 4 per iteration.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
api="${1:?usage: requests.sh PREFECT_API_URL [FLOW_BINARY] [INTERVAL:ITERATIONS ...]}"
binary="${2:-$repo/target/debug/price-stream}"
shift $(( $# >= 2 ? 2 : 1 ))
cases=("$@")
[ ${#cases[@]} -gt 0 ] || cases=(1:30 10:9)
work="$(mktemp -d)"
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
hostport="${api#*://}"; hostport="${hostport%%/*}"
price=$(free_port)
python3 "$here/price_server.py" "$price" >/dev/null 2>&1 & pids+=($!)
printf '%-10s %-11s %-15s %-13s %s\n' interval iterations prefect_requests per_iteration by_path
for c in "${cases[@]}"; do
  interval="${c%%:*}"; n="${c##*:}"
  proxy=$(free_port)
  python3 "$here/count_proxy.py" "$proxy" "${hostport%:*}" "${hostport##*:}" "$work/counts-$interval.json" & pids+=($!)
  sleep 0.5
  PREFECT_API_URL="http://127.0.0.1:$proxy/api" FLOW_NAME="bench-req-$interval-$$" \
    SOURCE_URL="http://127.0.0.1:$price/data/pricemulti?fsyms=BTC,ETH&tsyms=USD" \
    SINK_URL="file://$work/lake-$interval" HEALTH_FILE="$work/health" INTERVAL_SECONDS="$interval" \
    "$binary" --iterations "$n" >"$work/flow-$interval.log"
  sleep 1
  python3 - "$work/counts-$interval.json" "$interval" "$n" <<'PY'
import json, sys
c = json.load(open(sys.argv[1])); n = int(sys.argv[3])
paths = {k: v for k, v in sorted(c["by_path"].items(), key=lambda kv: -kv[1])}
print(f"{sys.argv[2] + ' s':<10} {n:<11} {c['http']:<15} {c['http'] / n:<13.2f} {json.dumps(paths)}")
PY
done
