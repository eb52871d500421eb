#!/usr/bin/env bash
# The whole test suite in one command, on a fresh machine:
#   1. Python venvs with pinned moto[server] + cfn-lint and Prefect (reused when the pins match);
#   2. the Docker daemon if `docker info` fails, and a local registry (Debian docker-registry);
#   3. moto (AWS APIs) and a Prefect server with a throw-away PREFECT_HOME, on free loopback ports;
#   4. the lint gate: cargo fmt --check and cargo clippy (workspace, all targets, -D warnings;
#      lints in Cargo.toml [workspace.lints]); any finding fails the run;
#   5. cfn-lint on templates/, zizmor and checkov on .github/ and templates/ (pinned venv
#      .venv-lint), the static flow binary, then every Rust test (cargo nextest, or cargo test
#      without it);
#   6. stops everything it started.
# Extra arguments go to the test runner (e.g. scripts/test.sh -E 'test(config)').
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"
run="$root/.test-run"
rm -rf "$run"
mkdir -p "$run"

# Build caches outside the clone, keyed by what they are built from (the toolchain and
# Cargo.lock): a fresh clone on a machine that built this lock before recompiles only the
# workspace's own crates, not the AWS SDK. Set CARGO_TARGET_DIR to opt out.
if [ -z "${CARGO_TARGET_DIR:-}" ]; then
  cache="${DEPLOYER_BUILD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/deployer-build}"
  key=$({ rustc -vV; cat Cargo.lock; } | sha256sum | cut -c1-16)
  export CARGO_TARGET_DIR="$cache/target-$key"
  export FLOW_CARGO_TARGET_DIR="$cache/static-$key"
  mkdir -p "$cache"
  # A new key (a dependency added or bumped) starts from a copy of the newest cache, so cargo
  # recompiles what the lock change touched instead of the whole AWS SDK; cargo's own
  # fingerprints decide what is stale, the key only keeps caches from growing without bound.
  for kind in target static; do
    rm -rf "$cache/$kind-$key.tmp"
    newest=$({ ls -dt "$cache/$kind"-* 2>/dev/null || true; } | { grep -v '\.tmp$' || true; } | head -n 1)
    if [ ! -d "$cache/$kind-$key" ] && [ -n "$newest" ]; then
      log "build cache: seeding $kind-$key from $(basename "$newest")"
      cp -a "$newest" "$cache/$kind-$key.tmp" && mv "$cache/$kind-$key.tmp" "$cache/$kind-$key"
      touch "$cache/$kind-$key" # newest by mtime, so the pruning below keeps it
    fi
  done
  # Keep the caches of the two newest keys.
  for kind in target static; do
    { ls -dt "$cache/$kind"-* 2>/dev/null || true; } | tail -n +3 | xargs -r rm -rf
  done
  log "build cache $CARGO_TARGET_DIR"
fi

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$run/registry/registry.pid" ] && kill "$(cat "$run/registry/registry.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

venv "$root/.venv-test" "$MOTO_PIN" "$CFN_LINT_PIN" "$DUCKDB_PIN" &
venv_aws=$!
venv "$root/.venv-prefect" "$PREFECT_PIN" &
venv_prefect=$!
venv "$root/.venv-lint" "$ZIZMOR_PIN" "$CHECKOV_PIN" &
venv_lint=$!

ensure_dockerd "$run/dockerd.log"

# The lint gate (while pip works): a fmt or clippy finding fails the run before any test.
log "cargo fmt --check"
cargo fmt --all --check || { log "cargo fmt found unformatted code: run \`cargo fmt --all\`"; exit 1; }
log "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy -q --workspace --all-targets -- -D warnings || { log "clippy found problems (above)"; exit 1; }


# The static flow binary (release, +crt-static) that the image tests put in the default image:
# built up front, while pip works, so no test pays a multi-minute compile while others
# measure timings.
log "static flow binary (scripts/build-flow-binary.sh)"
scripts/build-flow-binary.sh "$run/flow-image" >"$run/flow-binary.log" 2>&1 &
flow_binary=$!

registry_port=$(free_port)
scripts/start-registry.sh "$registry_port" "$run/registry" >&2
export DEPLOYER_TEST_REGISTRY="127.0.0.1:$registry_port"

wait "$venv_aws"
wait "$venv_prefect"

moto_port=$(free_port)
start_moto "$root/.venv-test" "$moto_port" "$run/moto.log"
pids+=("$MOTO_PID")
export DEPLOYER_TEST_MOTO_URL="http://127.0.0.1:$moto_port"

prefect_port=$(free_port)
PREFECT_HOME="$run/prefect-home" PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_UI_ENABLED=false \
  "$root/.venv-prefect/bin/prefect" server start --host 127.0.0.1 --port "$prefect_port" >"$run/prefect.log" 2>&1 &
pids+=($!)
export DEPLOYER_TEST_PREFECT_URL="http://127.0.0.1:$prefect_port/api"
export DEPLOYER_TEST_PREFECT_PYTHON="$root/.venv-prefect/bin/python"
export DEPLOYER_TEST_DUCKDB_PYTHON="$root/.venv-test/bin/python"

export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
unset AWS_PROFILE AWS_ENDPOINT_URL AWS_SESSION_TOKEN

log "cfn-lint templates/"
"$root/.venv-test/bin/cfn-lint" --regions us-east-1 -- templates/*.yaml
# The workflows and templates: any zizmor finding at medium or above, and any checkov check
# not skipped inline with its reason, fails the run.
wait "$venv_lint"
log "zizmor --offline .github/"
"$root/.venv-lint/bin/zizmor" --offline --min-severity medium --no-progress .github/ \
  || { log "zizmor found problems (above)"; exit 1; }
log "checkov templates/ .github/"
"$root/.venv-lint/bin/checkov" --quiet --compact -d templates --framework cloudformation \
  || { log "checkov found problems in templates/ (above)"; exit 1; }
"$root/.venv-lint/bin/checkov" --quiet --compact -d .github --framework github_actions \
  || { log "checkov found problems in .github/ (above)"; exit 1; }

wait_http "$DEPLOYER_TEST_MOTO_URL/moto-api/" 60 "$run/moto.log"
wait_http "$DEPLOYER_TEST_PREFECT_URL/health" 120 "$run/prefect.log"
log "moto $DEPLOYER_TEST_MOTO_URL, prefect $DEPLOYER_TEST_PREFECT_URL, registry $DEPLOYER_TEST_REGISTRY"

wait "$flow_binary" || { log "static flow binary failed"; tail -40 "$run/flow-binary.log" >&2; exit 1; }

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
