#!/usr/bin/env bash
# Rollout benchmark on the local target: the bundled flow at a 1 s interval, redeployed N
# times (default 5), measured from both sides:
#   - the deployer: wall time of each `redeploy` (command start -> old containers gone), the
#     seconds both revisions had a running container, the old container's exit code;
#   - Prefect (bench/rollout/analyze.py): the largest gap between runs (downtime), per revision
#     change the overlap window and the runs each revision made in it, seconds of iterations
#     running at the same time, and runs left RUNNING/PENDING.
#
#   bench/rollout/run.sh [N]
#
# Uses a fresh Prefect server from the pinned venv (or PREFECT_API_URL) and the real flow
# image built from source. Prints a Markdown table for BENCHMARKS.md.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"
n="${1:-5}"
work="$(mktemp -d)"
cfg=()
pids=()
cleanup() {
  [ -f "$work/deployer.yaml" ] && "${CARGO_TARGET_DIR:-$root/target}/debug/deployer" destroy "${cfg[@]}" --yes >/dev/null 2>&1 || true
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

cargo build -q --workspace --bins
deployer="${CARGO_TARGET_DIR:-$root/target}/debug/deployer"

if [ -n "${PREFECT_API_URL:-}" ]; then
  prefect_url="$PREFECT_API_URL"
else
  venv "$root/.venv-prefect" "$PREFECT_PIN"
  port=$(free_port)
  PREFECT_HOME="$work/prefect-home" PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_UI_ENABLED=false \
    "$root/.venv-prefect/bin/prefect" server start --host 127.0.0.1 --port "$port" >"$work/prefect.log" 2>&1 &
  pids+=($!)
  prefect_url="http://127.0.0.1:$port/api"
  wait_http "$prefect_url/health" 120 "$work/prefect.log"
fi

project="bench-roll-$$"
flow="flow-$project"
"$deployer" init -c "$work/deployer.yaml" >/dev/null
cfg=(-c "$work/deployer.yaml" --target local
  --set "project=$project"
  --set "services.price-stream.build.context=$root/target/flow-image"
  --set "services.price-stream.build.prebuild=$root/scripts/build-flow-binary.sh"
  --set "services.price-stream.health_check.interval=5"
  --set "services.price-stream.stop_timeout=30"
  --set "local.lake_dir=$work/lake"
  --set "local.services.price-stream.environment.SINK_URL=file:///lake"
  --set "local.services.price-stream.environment.SOURCE_URL=simulated"
  --set "local.services.price-stream.environment.PREFECT_API_URL=$prefect_url"
  --set "local.services.price-stream.environment.INTERVAL_SECONDS=1"
  --set "local.services.price-stream.environment.FLOW_NAME=$flow")

count_completed() {
  python3 "$root/bench/rollout/analyze.py" "$prefect_url" "$flow" --json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["states"].get("COMPLETED", 0))'
}
wait_completed() {
  local deadline=$((SECONDS + 120))
  until [ "$(count_completed)" -ge "$1" ]; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "fewer than $1 completed runs" >&2; exit 1; }
    sleep 0.5
  done
}

"$deployer" up "${cfg[@]}" >/dev/null 2>"$work/up.log"
wait_completed 5
: >"$work/redeploys.jsonl"
for i in $(seq 1 "$n"); do
  t0=$(date +%s.%N)
  "$deployer" redeploy "${cfg[@]}" --json --set "local.services.price-stream.environment.MARK=$i" \
    2>>"$work/redeploy.log" >"$work/r$i.json"
  t1=$(date +%s.%N)
  python3 - "$work/r$i.json" "$t0" "$t1" >>"$work/redeploys.jsonl" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
roll = r["services"][0]["roll"]
print(json.dumps({"wall": float(sys.argv[3]) - float(sys.argv[2]), "overlap": roll["overlap_seconds"],
                  "exit_codes": [s["exit_code"] for s in roll["stopped"]]}))
EOF
  wait_completed $((5 + 3 * i))
done
"$deployer" destroy "${cfg[@]}" --yes >/dev/null 2>&1
sleep 2
python3 "$root/bench/rollout/analyze.py" "$prefect_url" "$flow" --json >"$work/prefect.json"
python3 - "$work/redeploys.jsonl" "$work/prefect.json" <<'EOF'
import json, statistics, sys
deploys = [json.loads(l) for l in open(sys.argv[1])]
p = json.load(open(sys.argv[2]))
changes = p["changes"][1:] if len(p["changes"]) > len(deploys) else p["changes"]
print("| redeploy | wall (s) | overlap, deployer (s) | overlap in Prefect (s) | old/new runs in overlap | concurrent iterations (s) | old exit |")
print("|---|---|---|---|---|---|---|")
for i, d in enumerate(deploys):
    c = changes[i] if i < len(changes) else {}
    print(f"| {i+1} | {d['wall']:.2f} | {d['overlap']:.2f} | {c.get('overlap_seconds', float('nan')):.2f} | "
          f"{c.get('old_runs_in_overlap', '-')}/{c.get('new_runs_in_overlap', '-')} | "
          f"{c.get('concurrent_iteration_seconds', float('nan')):.2f} | {d['exit_codes']} |")
walls = [d["wall"] for d in deploys]
print()
print(f"redeploys: {len(deploys)}; wall median {statistics.median(walls):.2f} s (max {max(walls):.2f}); "
      f"runs {p['runs']} {p['states']}; left RUNNING/PENDING: {p['stuck']}; "
      f"largest gap between runs: {p['largest_gap_seconds']:.2f} s at a 1 s interval "
      f"({p['largest_gap_seconds'] / 1.0:.2f} intervals; goal <= 2)")
EOF
