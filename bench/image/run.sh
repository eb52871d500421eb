#!/usr/bin/env bash
# Image pipeline benchmarks (issue 3). Prints figures for BENCHMARKS.md; asserts nothing.
#
#   bench/image/run.sh
#
# Needs the Docker engine (`docker info`), gcc-free; starts its own local registry
# (scripts/start-registry.sh; or set BENCH_REGISTRY=HOST:PORT to use a running one).
# Everything runs in release mode, as users run the deployer. Work files: target/bench-image.
#
# Figures:
#   1. default flow image size (goal <= 20 MB)
#   2. cold build + push of the flow image (engine cache of the bench's image cleared, empty
#      registry), and the static binary's compile time (no-op when already built)
#   3. unchanged `deployer build --push`: tag already in the registry (goal <= 2 s, 0 bytes),
#      and the same content under a new tag (rebuilt from cache, every layer already present)
#   4. build-context creation for a 200 MB directory whose .dockerignore excludes 95 %,
#      against the same tree unfiltered and a tree holding only the 5 % (time, peak RSS)
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
work="$root/target/bench-image"
mkdir -p "$work"

log() { echo "bench: $*" >&2; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$(now)"; }
field() { # JSON-FILE EXPR: python expression over `i` (the first image of `deployer build --json`)
  python3 -c "import json,sys; i=json.load(open(sys.argv[1]))['images'][0]; print($2)" "$1"
}

docker info >/dev/null 2>&1 || { log "the Docker engine is not reachable (docker info failed)"; exit 1; }

registry_pid=""
cleanup() { [ -n "$registry_pid" ] && kill "$registry_pid" 2>/dev/null || true; }
trap cleanup EXIT
if [ -n "${BENCH_REGISTRY:-}" ]; then
  registry="$BENCH_REGISTRY"
else
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  rm -rf "$work/registry"
  scripts/start-registry.sh "$port" "$work/registry" >&2
  registry_pid=$(cat "$work/registry/registry.pid")
  registry="127.0.0.1:$port"
fi

log "building release binaries (deployer, context bench)"
cargo build --release -q -p deployer --bin deployer
cargo test --release -q -p deployer --test image_bench --no-run 2>/dev/null
deployer="${CARGO_TARGET_DIR:-$root/target}/release/deployer"

# AWS is never called (the registry is overridden); make sure of it.
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1 \
  AWS_EC2_METADATA_DISABLED=true AWS_ENDPOINT_URL=http://127.0.0.1:9
unset AWS_PROFILE DEPLOYER_REGISTRY DEPLOYER_CONFIG

# The config lives inside the work tree (target/ is git-ignored), so tags come from git:
# an unchanged tree means an unchanged tag, checked before any prebuild or build.
project="bench-image-$$"
cat > "$work/deployer.yaml" <<YAML
project: $project
region: us-east-1
services:
  flow:
    build:
      context: flow-image
      prebuild: ../../scripts/build-flow-binary.sh
YAML

log "static flow binary (scripts/build-flow-binary.sh)"
t=$(now)
scripts/build-flow-binary.sh "$work/flow-image" >&2
compile_s=$(since "$t")

# Cold: no local image of this content (classic builder cache = local images), empty registry.
mapfile -t old < <(docker image ls --format '{{.Repository}}:{{.Tag}}' | grep -E '/bench-image-[0-9]+:' || true)
[ "${#old[@]}" -gt 0 ] && docker image rm -f "${old[@]}" >/dev/null
log "cold build + push"
t=$(now)
"$deployer" -c "$work/deployer.yaml" build --push --registry "$registry" --json > "$work/cold.json"
cold_s=$(since "$t")
ref=$(field "$work/cold.json" "i['tagged_ref']")
size=$(docker image inspect --format '{{.Size}}' "$ref")

log "unchanged: build --push again"
t=$(now)
"$deployer" -c "$work/deployer.yaml" build --push --registry "$registry" --json > "$work/warm.json"
warm_s=$(since "$t")

# The same content under a new tag: a copy of the config outside git names the sources by
# the context hash, so the deployer runs the prebuild, rebuilds (from cache) and pushes.
outside=$(mktemp -d)
sed -e "s#prebuild: ../../scripts/build-flow-binary.sh#prebuild: $root/scripts/build-flow-binary.sh#" \
    -e "s#context: flow-image#context: $work/flow-image#" "$work/deployer.yaml" > "$outside/deployer.yaml"
t=$(now)
"$deployer" -c "$outside/deployer.yaml" build --push --registry "$registry" --json > "$work/retag.json"
retag_s=$(since "$t")
rm -rf "$outside"

log "context creation (200 MB tree, 95 % ignored)"
ctx_lines=()
for case in filtered unfiltered kept-only; do
  line=$(BENCH_DIR="$work/context" BENCH_CASE="$case" \
    cargo test --release -q -p deployer --test image_bench -- --ignored --nocapture 2>/dev/null \
    | grep '^BENCH context' || true)
  [ -n "$line" ] || { log "context bench case $case failed"; exit 1; }
  ctx_lines+=("$line")
done

echo "## Image pipeline ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, Docker $(docker version --format '{{.Server.Version}}'))"
echo
echo "| figure | value | goal |"
echo "|---|---|---|"
echo "| default flow image size | $(python3 -c "print(f'{$size/1e6:.1f} MB')") | <= 20 MB |"
echo "| static flow binary compile (scripts/build-flow-binary.sh) | ${compile_s} s | - |"
echo "| cold build + push (\`deployer build --push\`) | ${cold_s} s: build $(field "$work/cold.json" "f\"{i['build_seconds']:.2f} s, {i['cached_steps']}/{i['build_steps']} steps cached\""), push $(field "$work/cold.json" "f\"{i['push_seconds']:.2f} s, {i['layers_pushed']} layers, {i['bytes_pushed']/1e6:.1f} MB\"") | - |"
echo "| unchanged rebuild + push (tag in registry) | ${warm_s} s, skipped=$(field "$work/warm.json" "i['skipped_push']"), $(field "$work/warm.json" "i['bytes_pushed']") bytes uploaded | <= 2 s, 0 bytes |"
echo "| same content, new tag (prebuild + cached build + push) | ${retag_s} s, $(field "$work/retag.json" "f\"{i['cached_steps']}/{i['build_steps']} steps cached, {i['layers_pushed']} layers / {i['bytes_pushed']} bytes uploaded, {i['layers_skipped']} already present\"") | 0 bytes |"
echo
echo "Build context (streamed as the engine reads it):"
echo
echo "| case | tree | sent | time | peak RSS (growth) |"
echo "|---|---|---|---|---|"
for line in "${ctx_lines[@]}"; do
  python3 - "$line" <<'PY'
import sys
kv = dict(p.split("=", 1) for p in sys.argv[1].split()[2:])
print(f"| {kv['case']} | {kv['dir_mb']} MB | {kv['sent_mb']} MB ({kv['files_sent']} files, {kv['excluded']} excluded) "
      f"| {kv['seconds']} s | {kv['peak_rss_mib']} MiB (+{kv['peak_rss_growth_mib']} MiB) |")
PY
done
docker image rm -f "$ref" "$(field "$work/retag.json" "i['tagged_ref']")" >/dev/null 2>&1 || true
