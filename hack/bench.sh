#!/usr/bin/env bash
# hack/bench.sh - the kubectl-hsd benchmark, end to end.
#
# Builds what it needs (the release binary and the bench crate, hack/cluster.sh build), starts its own local
# control plane in target/bench-cluster (never the dev or test cluster), fills it with
# HotStandbyDeployments of 20 pods, measures the release binary beside floors measured in the same
# run, prints tables and writes bench/results/<date>-<quick|full>.{json,md}. The cluster is
# stopped at exit, also on error or Ctrl-C.
#
# Usage: hack/bench.sh [--quick] [driver options...]
#   --quick    reduced run, up to 2,000 pods: passes at 100 and 1,000 pods, watcher start at
#              1,000, reaction over 20 HSDs x 50 events (with and without 2,000 other pods),
#              2 shards at 2,000 pods against one watcher at 1,000, failover at 1,000, 200
#              probed pods; under 10 minutes once the binaries are built
#   (default)  passes at 100 to 100,000 pods, watcher start at 20,000 and 100,000, reaction over
#              100 HSDs x 200 events (with and without 20,000 other pods), 2 shards at 40,000
#              pods against one watcher at 20,000, failover at 20,000, 1,000 probed pods;
#              populating 100,000 pods takes the real controllers and kwok a while
#   Other options go to the driver (bench/main.rs), e.g. --max-pods 40000 or --only start,pass;
#   `hack/bench.sh --help` lists them.
#
# Measured (bench/README.md has the details and the definitions):
#   pass      `reconcile -A --stats` with nothing to change, beside a bare paginated list
#   start     watcher start to its first decision, and its memory, beside kube's reflector
#   reaction  busy-annotation PATCH acknowledged -> new spec.replicas on the benchmark's own
#             watch, for `reconcile --watch` and for a minimal floor client, with and without
#             other pods
#   shards    2 sharded replicas against one watcher of half the pods; failover of one
#   probes    HTTP probes per second against servers bound on the pods' 127.x IPs, and the
#             delay one never-answering server adds to the others
#   proxy     `kubectl hsd proxy` beside a minimal tokio proxy
#   hsj       HotStandbyJob exec probes per second and busy flip -> new Job, beside floors
#   standby   active-standby failover: master DELETE acknowledged -> the new master alone in the
#             Service's EndpointSlices, beside a bare label-moving pod watch
#
# Environment: HSD_POD_CIDR (default: the driver's own 127.91.0.0/16, or 127.90.0.0/15 when more
# pods than a /16 holds are planned; the probe servers bind on pod IPs) and hack/cluster.sh's
# HSD_BIN_DIR / HSD_CACHE_DIR apply. The cluster dir is always target/bench-cluster. Nothing
# connects outside 127.0.0.0/8.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_ROOT"
log() { printf 'bench.sh: %s\n' "$*" >&2; }
started=$(date +%s)

# shellcheck source=hack/lib.sh
source "$REPO_ROOT/hack/lib.sh"
ensure_tools openssl:openssl curl:curl python3:python3 /usr/bin/time:time

export HSD_CLUSTER_DIR="$REPO_ROOT/target/bench-cluster"
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

# One build of both packages, so that the measured binary (target/release/kubectl-hsd) and the
# benchmark share one feature set and one compilation of the dependencies.
log "cargo build --release (the measured binary and the benchmark, bench/)"
cargo build --release --locked -p kubectl-hsd --bin kubectl-hsd -p kubectl-hsd-bench --bin hsd-bench
log "hack/cluster.sh build k8s"
hack/cluster.sh build k8s # the control plane only, no helm

target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
log "running the benchmark (hsd-bench $*)"
"$target_dir/release/hsd-bench" "$@"
log "done in $(($(date +%s) - started))s: bench/results/ has the run's files"
