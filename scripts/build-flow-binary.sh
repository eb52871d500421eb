#!/usr/bin/env bash
# Stage the default flow image's build context: the statically linked `price-stream` binary,
# a CA bundle and flows/Dockerfile, in OUT_DIR (created; relative paths are relative to the
# current directory). Used as `build.prebuild` of the bundled service:
#
#   scripts/build-flow-binary.sh target/flow-image
#
# Without OUT_DIR it stages into DEPLOYER_CONTEXT, the absolute build context the deployer
# exports to prebuild commands, so `prebuild: scripts/build-flow-binary.sh` is enough.
#
# The binary is built with its own CARGO_TARGET_DIR (default target/static) so the static
# RUSTFLAGS do not invalidate the normal build cache. The Rust target comes from
# DEPLOYER_RUST_TARGET (set by the deployer from the service's architecture), default
# x86_64-unknown-linux-gnu.
#
# FLOW_PROFILE picks the cargo profile (see BENCHMARKS.md, "A one-line change deployed fast"):
#   flow     (default) no LTO, 16 codegen units, incremental: a one-line change in flows/src
#            rebuilds in seconds on a warm cache; the image stays well under 20 MB.
#   release  one codegen unit, thin LTO: the smallest binary, but every change re-runs LTO
#            over all dependencies (about 100 s per change on 2 cores).
set -euo pipefail

out_dir="${1:-${DEPLOYER_CONTEXT:-}}"
if [ -z "${out_dir}" ]; then
  echo "usage: build-flow-binary.sh OUT_DIR (or run it as a deployer prebuild step, which sets DEPLOYER_CONTEXT)" >&2
  exit 2
fi
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${DEPLOYER_RUST_TARGET:-x86_64-unknown-linux-gnu}"
target_dir="${FLOW_CARGO_TARGET_DIR:-${repo}/target/static}"
ca_bundle="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"

if [ ! -f "${ca_bundle}" ]; then
  echo "build-flow-binary: no CA bundle at ${ca_bundle} (install Debian's ca-certificates or set CA_BUNDLE)" >&2
  exit 1
fi

# Under `cargo test` (the image tests run this script as a prebuild) cargo exports
# CARGO_MANIFEST_DIR and friends; ring's build script tracks CARGO_MANIFEST_DIR, so they would
# force a full rebuild. Build in the same environment however this script is started.
for v in $(env | sed -n 's/^\(CARGO_\(MANIFEST\|PKG\|CRATE\|BIN\|TARGET_TMPDIR\|PRIMARY\)[A-Z_]*\)=.*/\1/p'); do
  unset "$v"
done

profile="${FLOW_PROFILE:-flow}"
case "${profile}" in
  # One codegen unit: ~7 % smaller (9.5 MB instead of 10.2 MB stripped), for one binary.
  release) export CARGO_PROFILE_RELEASE_CODEGEN_UNITS="${CARGO_PROFILE_RELEASE_CODEGEN_UNITS:-1}" ;;
  flow) ;;
  *)
    echo "build-flow-binary: FLOW_PROFILE=${profile} is not one of: flow, release" >&2
    exit 2
    ;;
esac

# --target makes RUSTFLAGS apply to the flow only, not to build scripts and proc macros.
# Cargo's output folder is named after the profile (release -> release, flow -> flow).
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" CARGO_TARGET_DIR="${target_dir}" \
  cargo build --profile "${profile}" --locked -p price-stream --target "${target}" \
  --manifest-path "${repo}/Cargo.toml"

binary="${target_dir}/${target}/${profile}/price-stream"
if ldd "${binary}" 2>/dev/null | grep -q '=>'; then
  echo "build-flow-binary: ${binary} is dynamically linked; a FROM scratch image cannot run it" >&2
  exit 1
fi

mkdir -p "${out_dir}"
# Copy only when changed, so unchanged inputs leave the staging dir untouched.
stage() { cmp -s "$1" "$2" || cp "$1" "$2"; }
stage "${binary}" "${out_dir}/price-stream"
stage "${ca_bundle}" "${out_dir}/ca-certificates.crt"
stage "${repo}/flows/Dockerfile" "${out_dir}/Dockerfile"
# The image's writable /tmp (see flows/Dockerfile).
mkdir -p "${out_dir}/tmp"
[ -f "${out_dir}/tmp/.keep" ] || : > "${out_dir}/tmp/.keep"
chmod 0755 "${out_dir}/price-stream"
chmod 0644 "${out_dir}/ca-certificates.crt" "${out_dir}/Dockerfile"
