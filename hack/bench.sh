#!/usr/bin/env bash
# hack/bench.sh - the kubectl-hsd benchmark, end to end.
#
# Builds what it needs (cargo build --release, hack/cluster.sh build), starts its own local
# control plane in target/bench-cluster (never the dev or test cluster), fills it with
# HotStandbyDeployments of 20 pods, measures the release binary, prints a table and writes
# bench/results/latest.json and bench/results/latest.md (plus quick.* or full.*). The cluster
# is stopped at exit, also on error or Ctrl-C.
#
# Usage: hack/bench.sh [--quick] [driver options...]
#   --quick    reduced run: one-shot passes at 100 and 1,000 pods, reaction with 20 HSDs x 50
#              events, 200 probed pods; under 5 minutes once the binaries are built
#   (default)  passes at 100, 1,000, 10,000 and 20,000 pods, reaction with 100 HSDs x 200
#              events, watch memory at 20,000 pods, 1,000 probed pods; populating 20,000 pods
#              takes the real controllers and kwok a while (expect 30-60 min on 2 cores)
#   Other options go to the driver (bench/main.rs): --sizes 100,1000 --reaction-hsds N
#   --events N --probe-pods N --keep-cluster --out DIR. `cargo bench --bench hsd -- --help`.
#
# Measured (bench/README.md has the details):
#   reaction  busy-annotation PATCH acknowledged -> new spec.replicas on the benchmark's own
#             watch, for `reconcile --watch` and for a minimal floor client (p50, p99, ratio)
#   pass      `reconcile -A --stats` with nothing to change: wall time, API requests, writes
#             (must be 0), peak RSS (/usr/bin/time -v)
#   watch     VmRSS of `reconcile --watch -A` after it reconciled every HSD
#   probes    HTTP probes per second against servers bound on the pods' 127.x IPs, and the
#             delay one never-answering server adds to the others
#
# Environment: HSD_POD_CIDR (default here 127.91.0.0/16, a range of its own, because the probe
# servers bind on pod IPs) and hack/cluster.sh's HSD_BIN_DIR / HSD_CACHE_DIR apply. The cluster
# dir is always target/bench-cluster. Nothing connects outside 127.0.0.0/8.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_ROOT"
log() { printf 'bench.sh: %s\n' "$*" >&2; }
started=$(date +%s)

# shellcheck source=hack/lib.sh
source "$REPO_ROOT/hack/lib.sh"
ensure_tools openssl:openssl curl:curl python3:python3 /usr/bin/time:time

export HSD_CLUSTER_DIR="$REPO_ROOT/target/bench-cluster"
export HSD_POD_CIDR="${HSD_POD_CIDR:-127.91.0.0/16}"
keep=0
for arg in "$@"; do [[ $arg == --keep-cluster ]] && keep=1; done
cleanup() {
  local rc=$?
  # The driver stops its cluster itself; this covers a driver killed before it could.
  ((keep)) || hack/cluster.sh down >/dev/null 2>&1 || true
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "cargo build --release"
cargo build --release
log "hack/cluster.sh build k8s"
hack/cluster.sh build k8s # the control plane only, no helm

log "running the benchmark (cargo bench --bench hsd -- $*)"
cargo bench --bench hsd -- "$@"
log "done in $(($(date +%s) - started))s: bench/results/latest.md"
