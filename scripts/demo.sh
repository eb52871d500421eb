#!/usr/bin/env bash
# Quick start without an AWS account: the bundled pipeline running for real on this machine.
#
#   scripts/demo.sh               # up -> runs in Prefect -> redeploy (zero downtime) -> status -> logs -> destroy
#   DEMO_KEEP=1 scripts/demo.sh   # leave the pipeline and Prefect running (prints how to look and how to stop)
#
# The services run on the local Docker engine (`--target local`), rolled with ECS's rules. The
# config is ./deployer.yaml, written from the embedded starter (`deployer init`) when missing;
# the demo adds laptop settings with --set (file data lake under .deployer/lake, a 2 s
# interval, health checks every 5 s). A Prefect server is started from a pinned venv unless
# PREFECT_API_URL is set; the price API is a local stand-in (bench/flow/price_server.py), so no
# internet is needed. Without a Docker engine the demo runs the emulator path instead
# (scripts/demo-aws.sh: stacks against moto, no live pipeline). The run ends by validating the
# data: the file lake read with DuckDB (pinned venv) through the same partitioning as the
# Athena table, the same query README.md shows for Athena.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"
run="$root/.demo"
mkdir -p "$run"
keep="${DEMO_KEEP:-}"
started=$SECONDS

if ! docker info >/dev/null 2>&1; then
  log "no Docker engine answers (\`docker info\` failed): running the emulator path instead (scripts/demo-aws.sh)"
  exec "$root/scripts/demo-aws.sh"
fi

log "building deployer"
cargo build -q --workspace --bins
deployer="${CARGO_TARGET_DIR:-$root/target}/debug/deployer"
[ -f deployer.yaml ] || "$deployer" init

pids=()
stop() {
  [ -n "$keep" ] && return
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap stop EXIT

if [ -n "${PREFECT_API_URL:-}" ]; then
  prefect_url="$PREFECT_API_URL"
  flow="price-stream-demo-$(date +%s)"
  log "using the Prefect server at $prefect_url (flow name $flow)"
else
  venv "$root/.venv-prefect" "$PREFECT_PIN"
  port=4200
  curl -fsS -o /dev/null "http://127.0.0.1:$port/api/health" 2>/dev/null && port=$(free_port)
  rm -rf "$run/prefect-home"
  PREFECT_HOME="$run/prefect-home" PREFECT_SERVER_ANALYTICS_ENABLED=false \
    "$root/.venv-prefect/bin/prefect" server start --host 127.0.0.1 --port "$port" >"$run/prefect.log" 2>&1 &
  pids+=($!)
  prefect_url="http://127.0.0.1:$port/api"
  flow="price-stream"
  wait_http "$prefect_url/health" 120 "$run/prefect.log"
  log "Prefect UI: http://127.0.0.1:$port (every iteration of the pipeline is a flow run there)"
fi

price_port=$(free_port)
python3 "$root/bench/flow/price_server.py" "$price_port" &
pids+=($!)
wait_http "http://127.0.0.1:$price_port/" 10 /dev/null

env_set() { printf -- '--set\nlocal.services.price-stream.environment.%s=%s\n' "$1" "$2"; }
mapfile -t sets < <(
  printf -- '--set\nlocal.lake_dir=.deployer/lake\n'
  printf -- '--set\nservices.price-stream.health_check.interval=5\n'
  env_set SINK_URL file:///lake
  env_set PREFECT_API_URL "$prefect_url"
  env_set SOURCE_URL "http://127.0.0.1:$price_port/data/pricemulti?fsyms=BTC,ETH&tsyms=USD"
  env_set INTERVAL_SECONDS 2
  env_set FLOW_NAME "$flow"
)

# wait_runs N: until the flow has N completed runs in Prefect.
wait_runs() {
  local deadline=$((SECONDS + 120))
  until python3 - "$prefect_url" "$flow" "$1" <<'EOF'
import json, sys, urllib.request
base, flow, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
body = json.dumps({"flows": {"name": {"any_": [flow]}}, "flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}}).encode()
req = urllib.request.Request(base + "/flow_runs/count", data=body, headers={"Content-Type": "application/json"})
try:
    sys.exit(0 if json.loads(urllib.request.urlopen(req, timeout=10).read()) >= n else 1)
except Exception:
    sys.exit(1)
EOF
  do
    [ "$SECONDS" -lt "$deadline" ] || { log "fewer than $1 completed flow runs after 120 s"; return 1; }
    sleep 1
  done
}

set -x
"$deployer" up --target local "${sets[@]}"
{ set +x; } 2>/dev/null
wait_runs 3
log "the pipeline runs: 3 flow runs completed; now a visible change: an alert threshold above the price"
set -x
"$deployer" redeploy --target local "${sets[@]}" \
  --set local.services.price-stream.environment.PRICE_THRESHOLD=1000000 --json >"$run/redeploy.json"
{ set +x; } 2>/dev/null
python3 - "$run/redeploy.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
for s in r["services"]:
    roll = s.get("roll") or {}
    codes = [x["exit_code"] for x in roll.get("stopped", [])]
    print(f"redeploy: {s['service']} revision {s['revision']} rolled in {roll.get('seconds', 0):.1f} s; "
          f"old container(s) exited {codes}; both revisions ran for {roll.get('overlap_seconds', 0):.1f} s", file=sys.stderr)
EOF
wait_runs 6
set -x
"$deployer" status --target local
"$deployer" logs --target local --tail 2
{ set +x; } 2>/dev/null
log "validate the data: the lake read with DuckDB through the Glue table's partitioning (README \"Data lake\")"
venv "$root/.venv-duckdb" "$DUCKDB_PIN"
"$root/.venv-duckdb/bin/python" "$root/scripts/validate-lake.py" "$root/.deployer/lake"

if [ -n "$keep" ]; then
  log "left running. Prefect UI: ${prefect_url%/api}; logs: $deployer logs --target local --follow"
  log "stop with: $deployer destroy --target local --yes; kill ${pids[*]}"
  exit 0
fi
set -x
"$deployer" destroy --target local --yes
{ set +x; } 2>/dev/null
log "what Prefect saw (bench/rollout/analyze.py):"
python3 "$root/bench/rollout/analyze.py" "$prefect_url" "$flow" >&2
log "done in $((SECONDS - started)) s"
