# Shared by scripts/test.sh and scripts/demo.sh: pinned venvs, free ports, readiness waits,
# the Docker daemon and the local AWS emulator. Source it; it defines functions only.

MOTO_PIN='moto[server]==5.2.5'
CFN_LINT_PIN='cfn-lint==1.58.0'
PREFECT_PIN='prefect==3.9.1'

log() { echo "$(basename "$0"): $*" >&2; }

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

# wait_http URL SECONDS LOGFILE: poll until URL answers 2xx; on timeout show the log and fail.
wait_http() {
  local deadline=$((SECONDS + $2))
  until curl -fsS -o /dev/null "$1" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "$1 did not answer within $2 s"; tail -30 "$3" >&2 || true; return 1
    fi
    sleep 0.2
  done
}

# ensure_dockerd LOGFILE: start the Docker daemon if `docker info` fails (fresh CI hosts).
ensure_dockerd() {
  docker info >/dev/null 2>&1 && return
  log "starting dockerd"
  (setsid dockerd >"$1" 2>&1 &)
  for _ in $(seq 1 100); do docker info >/dev/null 2>&1 && return; sleep 0.3; done
  log "dockerd did not start"; tail -30 "$1" >&2; return 1
}

# start_moto VENV PORT LOGFILE: moto with the change-set patch (scripts/moto_server.py) in the
# background; sets MOTO_PID. MOTO_ECS_SERVICE_RUNNING makes services report running tasks so
# rollouts can complete.
start_moto() {
  MOTO_ECS_SERVICE_RUNNING=1 "$1/bin/python" "$(dirname "${BASH_SOURCE[0]}")/moto_server.py" \
    -H 127.0.0.1 -p "$2" >"$3" 2>&1 &
  MOTO_PID=$!
}
