#!/usr/bin/env bash
# The whole test suite in one command, on a fresh machine:
#   1. Python venvs with pinned moto[server] + cfn-lint and Prefect (reused when the pins match);
#   2. the Docker daemon if `docker info` fails, and a local registry (Debian docker-registry);
#   3. moto (AWS APIs) and a Prefect server with a throw-away PREFECT_HOME, on free loopback ports;
#   4. cfn-lint on templates/, then every Rust test (cargo nextest, or cargo test without it);
#   5. stops everything it started.
# Extra arguments go to the test runner (e.g. scripts/test.sh -E 'test(config)').
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
run="$root/.test-run"
rm -rf "$run"
mkdir -p "$run"

MOTO_PIN='moto[server]==5.2.5'
CFN_LINT_PIN='cfn-lint==1.58.0'
PREFECT_PIN='prefect==3.9.1'

log() { echo "test.sh: $*" >&2; }

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$run/registry/registry.pid" ] && kill "$(cat "$run/registry/registry.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

# venv DIR PIN...: create DIR and install the pins unless DIR/.pins already lists them.
venv() {
  local dir="$1"; shift
  local want="$*"
  if [ -x "$dir/bin/python" ] && [ "$(cat "$dir/.pins" 2>/dev/null)" = "$want" ]; then return; fi
  log "creating $dir ($want)"
  rm -rf "$dir"
  python3 -m venv "$dir"
  "$dir/bin/pip" install -q --disable-pip-version-check "$@"
  echo "$want" > "$dir/.pins"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_http() { # URL SECONDS NAME
  local deadline=$((SECONDS + $2))
  until curl -fsS -o /dev/null "$1" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then log "$3 did not answer $1 within $2 s"; tail -30 "$run/$3.log" >&2 || true; exit 1; fi
    sleep 0.2
  done
}

venv "$root/.venv-test" "$MOTO_PIN" "$CFN_LINT_PIN" &
venv_aws=$!
venv "$root/.venv-prefect" "$PREFECT_PIN" &
venv_prefect=$!

# Docker daemon (the machine usually has it running; CI on a fresh host may not).
if ! docker info >/dev/null 2>&1; then
  log "starting dockerd"
  (setsid dockerd >"$run/dockerd.log" 2>&1 &)
  for _ in $(seq 1 100); do docker info >/dev/null 2>&1 && break; sleep 0.3; done
  docker info >/dev/null 2>&1 || { log "dockerd did not start"; tail -30 "$run/dockerd.log" >&2; exit 1; }
fi

registry_port=$(free_port)
scripts/start-registry.sh "$registry_port" "$run/registry" >&2
export DEPLOYER_TEST_REGISTRY="127.0.0.1:$registry_port"

wait "$venv_aws"
wait "$venv_prefect"

moto_port=$(free_port)
# MOTO_ECS_SERVICE_RUNNING: services report a running task, so rollouts can complete.
MOTO_ECS_SERVICE_RUNNING=1 "$root/.venv-test/bin/python" scripts/moto_server.py -H 127.0.0.1 -p "$moto_port" >"$run/moto.log" 2>&1 &
pids+=($!)
export DEPLOYER_TEST_MOTO_URL="http://127.0.0.1:$moto_port"

prefect_port=$(free_port)
PREFECT_HOME="$run/prefect-home" PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_UI_ENABLED=false \
  "$root/.venv-prefect/bin/prefect" server start --host 127.0.0.1 --port "$prefect_port" >"$run/prefect.log" 2>&1 &
pids+=($!)
export DEPLOYER_TEST_PREFECT_URL="http://127.0.0.1:$prefect_port/api"
export DEPLOYER_TEST_PREFECT_PYTHON="$root/.venv-prefect/bin/python"

export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
unset AWS_PROFILE AWS_ENDPOINT_URL AWS_SESSION_TOKEN

log "cfn-lint templates/"
"$root/.venv-test/bin/cfn-lint" --regions us-east-1 -- templates/*.yaml

wait_http "$DEPLOYER_TEST_MOTO_URL/moto-api/" 60 moto
wait_http "$DEPLOYER_TEST_PREFECT_URL/health" 120 prefect
log "moto $DEPLOYER_TEST_MOTO_URL, prefect $DEPLOYER_TEST_PREFECT_URL, registry $DEPLOYER_TEST_REGISTRY"

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
