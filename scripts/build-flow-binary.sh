#!/usr/bin/env bash
# Stage the default flow image's build context: the statically linked `price-stream` binary,
# a CA bundle and flows/Dockerfile, in OUT_DIR (created; relative paths are relative to the
# current directory). Used as `build.prebuild` of the bundled service:
#
#   scripts/build-flow-binary.sh target/flow-image
#
# The binary is built with its own CARGO_TARGET_DIR (default target/static) so the static
# RUSTFLAGS do not invalidate the normal build cache. The Rust target comes from
# DEPLOYER_RUST_TARGET (set by the deployer from the service's architecture), default
# x86_64-unknown-linux-gnu.
set -euo pipefail

out_dir="${1:?usage: build-flow-binary.sh OUT_DIR}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${DEPLOYER_RUST_TARGET:-x86_64-unknown-linux-gnu}"
target_dir="${FLOW_CARGO_TARGET_DIR:-${repo}/target/static}"
ca_bundle="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"

if [ ! -f "${ca_bundle}" ]; then
  echo "build-flow-binary: no CA bundle at ${ca_bundle} (install Debian's ca-certificates or set CA_BUNDLE)" >&2
  exit 1
fi

# --target makes RUSTFLAGS apply to the flow only, not to build scripts and proc macros.
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" CARGO_TARGET_DIR="${target_dir}" \
  cargo build --release --locked -p price-stream --target "${target}" \
  --manifest-path "${repo}/Cargo.toml"

binary="${target_dir}/${target}/release/price-stream"
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
chmod 0755 "${out_dir}/price-stream"
chmod 0644 "${out_dir}/ca-certificates.crt" "${out_dir}/Dockerfile"
