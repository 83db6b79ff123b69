#!/usr/bin/env bash
# hack/test.sh - the one test command. Installs what is missing, builds the local control plane
# if needed, starts one cluster for the whole run, runs every test (unit, property, generated-file
# drift, and integration tests against the cluster), and stops what it started.
#
# Usage: hack/test.sh [cargo test args...]     e.g. hack/test.sh -- --nocapture
# Environment: HSD_TEST_CLUSTER_DIR (default <repo>/target/test-cluster), HSD_SKIP_LINT=1.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_ROOT"
log() { printf 'test.sh: %s\n' "$*" >&2; }
started=$(date +%s)

# Tools from the machine's package manager when missing (a clean clone is not a fresh machine,
# and a fresh machine of this kind has Go and Rust but maybe not these).
missing=()
for tool in openssl:openssl curl:curl python3:python3 ss:iproute2; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool#*:}")
done
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  sudo_cmd=()
  [[ $(id -u) == 0 ]] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v go >/dev/null || { log "error: Go is required (the control plane is built from Go modules)"; exit 1; }
command -v cargo >/dev/null || { log "error: cargo is required"; exit 1; }
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt >/dev/null 2>&1 || true

hack/cluster.sh build

export HSD_CLUSTER_DIR="${HSD_TEST_CLUSTER_DIR:-$REPO_ROOT/target/test-cluster}"
cleanup() { hack/cluster.sh down >/dev/null 2>&1 || true; }
trap cleanup EXIT
hack/cluster.sh down >/dev/null 2>&1 || true
HSD_TEST_KUBECONFIG=$(hack/cluster.sh up | tail -n 1)
export HSD_TEST_KUBECONFIG

if [[ -z ${HSD_SKIP_LINT:-} ]]; then
  log "cargo fmt --check and cargo clippy"
  cargo fmt --all -- --check
  cargo clippy --all-targets --locked -- -D warnings
fi

log "cargo test (cluster: $HSD_TEST_KUBECONFIG)"
cargo test --all-targets --locked "$@"
log "all tests passed in $(($(date +%s) - started))s"
