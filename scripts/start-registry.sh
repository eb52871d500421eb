#!/usr/bin/env bash
# Start a local OCI registry (Debian `docker-registry`, the CNCF distribution registry) on
# 127.0.0.1:PORT with its storage in DATA_DIR, and wait until it answers `GET /v2/`.
#
#   scripts/start-registry.sh PORT DATA_DIR
#
# Idempotent: if a registry already answers on PORT it is reused. The registry runs in the
# background; its pid is written to DATA_DIR/registry.pid and its log to DATA_DIR/registry.log.
# The Docker engine treats 127.0.0.0/8 registries as insecure (plain HTTP) by default, so no
# engine configuration is needed.
set -euo pipefail

port="${1:?usage: start-registry.sh PORT DATA_DIR}"
data_dir="${2:?usage: start-registry.sh PORT DATA_DIR}"
addr="127.0.0.1:${port}"

if curl -fsS -o /dev/null "http://${addr}/v2/" 2>/dev/null; then
  echo "registry: reusing http://${addr}"
  exit 0
fi

if ! command -v docker-registry >/dev/null 2>&1; then
  echo "registry: installing the Debian package docker-registry" >&2
  sudo_cmd=""
  if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
  # The package's postinst tries to start a system service; policy-rc.d may deny that, harmless.
  $sudo_cmd apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq docker-registry >/dev/null
fi

mkdir -p "${data_dir}/storage"
data_dir="$(cd "${data_dir}" && pwd)"
config="${data_dir}/config.yml"
cat > "${config}" <<YAML
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: ${data_dir}/storage
  delete:
    enabled: true
http:
  addr: ${addr}
YAML

# setsid: the registry outlives this script and is not killed with the caller's process group.
setsid docker-registry serve "${config}" >"${data_dir}/registry.log" 2>&1 < /dev/null &
echo $! > "${data_dir}/registry.pid"

for _ in $(seq 1 100); do
  if curl -fsS -o /dev/null "http://${addr}/v2/" 2>/dev/null; then
    echo "registry: http://${addr} (pid $(cat "${data_dir}/registry.pid"), data ${data_dir})"
    exit 0
  fi
  if ! kill -0 "$(cat "${data_dir}/registry.pid")" 2>/dev/null; then
    echo "registry: docker-registry exited; log follows" >&2
    cat "${data_dir}/registry.log" >&2
    exit 1
  fi
  sleep 0.1
done
echo "registry: no answer from http://${addr}/v2/ after 10 s; log: ${data_dir}/registry.log" >&2
exit 1
