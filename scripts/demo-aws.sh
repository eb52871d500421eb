#!/usr/bin/env bash
# The AWS path on this machine, against the local AWS API emulator (scripts/demo.sh runs the
# live pipeline on the local Docker engine instead; it falls back to this script without one).
#
#   scripts/demo-aws.sh            # init -> up (build from source) -> status -> up again -> destroy
#   DEMO_KEEP=1 scripts/demo-aws.sh  # stop after `up` and leave moto running (prints how to use it)
#
# AWS is the local emulator moto (pinned venv .venv-test, started on a free loopback port). The
# image is built from flows/ by the Docker engine and pushed to a local registry standing in for
# ECR (the emulator has no registry endpoint). Without a Docker engine the demo deploys a
# prebuilt image URI instead (`up --image`), which is also how deploys without Docker work.
# The config is the embedded starter (`deployer init`), written to ./deployer.yaml if missing.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"
run="$root/.demo"
mkdir -p "$run"

venv "$root/.venv-test" "$MOTO_PIN" "$CFN_LINT_PIN" "$DUCKDB_PIN"
log "building deployer"
cargo build -q --workspace --bins
deployer="${CARGO_TARGET_DIR:-$root/target}/debug/deployer"

moto_port=$(free_port)
start_moto "$root/.venv-test" "$moto_port" "$run/moto.log"
keep="${DEMO_KEEP:-}"
stop() {
  [ -n "$keep" ] && return
  kill "$MOTO_PID" 2>/dev/null || true
  [ -f "$run/registry/registry.pid" ] && kill "$(cat "$run/registry/registry.pid")" 2>/dev/null || true
}
trap stop EXIT
export AWS_ENDPOINT_URL="http://127.0.0.1:$moto_port"
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
unset AWS_PROFILE AWS_SESSION_TOKEN
wait_http "$AWS_ENDPOINT_URL/moto-api/" 60 "$run/moto.log"
log "moto (local AWS API emulator) on $AWS_ENDPOINT_URL"

[ -f deployer.yaml ] || "$deployer" init

image_args=()
if docker info >/dev/null 2>&1; then
  registry_port=$(free_port)
  scripts/start-registry.sh "$registry_port" "$run/registry" >&2
  image_args=(--registry "127.0.0.1:$registry_port")
  log "building the flow image from source; local registry 127.0.0.1:$registry_port stands in for ECR"
else
  image_args=(--image "$(moto_ecr_image "$root/.venv-test" "$AWS_ENDPOINT_URL" price-stream-prebuilt)")
  log "no Docker engine: deploying a prebuilt image URI instead of building"
fi

set -x
"$deployer" up "${image_args[@]}"
"$deployer" status
{ set +x; } 2>/dev/null
if [ -n "$keep" ]; then
  log "left running: export AWS_ENDPOINT_URL=$AWS_ENDPOINT_URL AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing; stop with: kill $MOTO_PID"
  exit 0
fi
set -x
"$deployer" up "${image_args[@]}"
"$deployer" destroy --yes
{ set +x; } 2>/dev/null
