#!/usr/bin/env bash
# Install the deployer for the composite action: a prebuilt release binary when action.yml
# names one (version and SHA-256 per architecture, written in action.yml itself: a SHA-pinned
# or local action has no usable ref to derive them from), verified before it is installed;
# otherwise a build from source. Puts the binary's folder on GITHUB_PATH.
#
# Environment: DEPLOYER_VERSION (e.g. v0.2.0; empty: build from source),
# DEPLOYER_SHA256_X86_64, DEPLOYER_SHA256_AARCH64, DEPLOYER_RELEASE_URL (default
# https://github.com/<GITHUB_ACTION_REPOSITORY or GITHUB_REPOSITORY>/releases/download),
# DEPLOYER_INSTALL_DIR (default $RUNNER_TEMP/deployer-bin), GITHUB_PATH.
set -euo pipefail

dest="${DEPLOYER_INSTALL_DIR:-${RUNNER_TEMP:-/tmp}/deployer-bin}"
version="${DEPLOYER_VERSION:-}"

from_source() {
  echo "deployer: building from source (${1})" >&2
  cargo build --release --locked -p deployer >&2
  mkdir -p "$dest"
  install -m 0755 "${CARGO_TARGET_DIR:-target}/release/deployer" "$dest/deployer"
}

case "$(uname -m)" in
  x86_64 | amd64) arch=x86_64; sum="${DEPLOYER_SHA256_X86_64:-}" ;;
  aarch64 | arm64) arch=aarch64; sum="${DEPLOYER_SHA256_AARCH64:-}" ;;
  *) arch=""; sum="" ;;
esac

if [ -z "$version" ] || [ -z "$arch" ] || [ -z "$sum" ]; then
  from_source "no release binary named for this runner in action.yml"
else
  repo="${GITHUB_ACTION_REPOSITORY:-${GITHUB_REPOSITORY:-}}"
  base="${DEPLOYER_RELEASE_URL:-https://github.com/$repo/releases/download}"
  asset="deployer-$version-$arch-unknown-linux-gnu"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  if ! curl -fsSL --retry 3 -o "$tmp/deployer" "$base/$version/$asset"; then
    from_source "release $version has no $asset (or it could not be downloaded)"
  else
    got="$(sha256sum "$tmp/deployer" | cut -d' ' -f1)"
    if [ "$got" != "$sum" ]; then
      echo "::error::deployer $version ($arch): SHA-256 mismatch: expected $sum, got $got; nothing was installed" >&2
      exit 1
    fi
    mkdir -p "$dest"
    install -m 0755 "$tmp/deployer" "$dest/deployer"
    echo "deployer: installed $version ($arch, sha256 $got)" >&2
  fi
fi
if [ -n "${GITHUB_PATH:-}" ]; then
  echo "$dest" >> "$GITHUB_PATH"
fi
