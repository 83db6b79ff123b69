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

# shellcheck source=hack/lib.sh
source "$REPO_ROOT/hack/lib.sh"
ensure_tools openssl:openssl curl:curl python3:python3 ss:iproute2 \
  /usr/share/bash-completion/bash_completion:bash-completion
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
  cargo clippy --workspace --all-targets --locked -- -D warnings # the bench crate too
fi

log "cargo test (cluster: $HSD_TEST_KUBECONFIG)"
cargo test --all-targets --locked "$@"
log "all tests passed in $(($(date +%s) - started))s"
