# Shared by scripts/test.sh and scripts/demo.sh: pinned venvs, free ports, readiness waits,
# the Docker daemon and the local AWS emulator. Source it; it defines functions only.

MOTO_PIN='moto[server]==5.2.5'
CFN_LINT_PIN='cfn-lint==1.58.0'
DUCKDB_PIN='duckdb==2.0.1'
ZIZMOR_PIN='zizmor==1.33.1'
CHECKOV_PIN='checkov==3.3.30'
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

# moto_ecr_image VENV ENDPOINT REPO: put a placeholder image into moto's ECR (creating the
# repository) and print its URI by digest, for deploys of a prebuilt image without Docker
# (the deployer checks that prebuilt ECR images exist before changing anything).
moto_ecr_image() {
  "$1/bin/python" - "$2" "$3" <<'PY'
import sys, boto3
endpoint, repo = sys.argv[1], sys.argv[2]
ecr = boto3.client("ecr", endpoint_url=endpoint, region_name="us-east-1",
                   aws_access_key_id="testing", aws_secret_access_key="testing")
try:
    ecr.create_repository(repositoryName=repo)
except ecr.exceptions.RepositoryAlreadyExistsException:
    pass
manifest = '{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","size":1,"digest":"sha256:' + "1" * 64 + '"},"layers":[]}'
try:
    digest = ecr.put_image(repositoryName=repo, imageManifest=manifest)["image"]["imageId"]["imageDigest"]
except ecr.exceptions.ImageAlreadyExistsException:
    digest = ecr.describe_images(repositoryName=repo)["imageDetails"][0]["imageDigest"]
print(f"123456789012.dkr.ecr.us-east-1.amazonaws.com/{repo}@{digest}")
PY
}
