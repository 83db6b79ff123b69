#!/usr/bin/env bash
# hack/demo.sh - the main job on a local control plane, from a fresh machine: builds kubectl-hsd
# and the control plane, starts a cluster, installs the CRD, applies examples/hsd-annotation.yaml,
# runs `kubectl hsd reconcile --watch`, marks 2 pods busy (3 -> 5 replicas) and idle again (-> 3).
#
# Usage: hack/demo.sh          run the demo (the cluster and the watcher keep running)
#        hack/demo.sh down     stop the watcher and the cluster
# Environment: HSD_DEMO_CLUSTER_DIR (default <repo>/.cluster/demo)
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_ROOT"
export HSD_CLUSTER_DIR="${HSD_DEMO_CLUSTER_DIR:-$REPO_ROOT/.cluster/demo}"
WATCHER_PID_FILE="$HSD_CLUSTER_DIR/demo-watcher.pid"

step() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'demo.sh: error: %s\n' "$*" >&2; exit 1; }

stop_watcher() {
  [[ -f $WATCHER_PID_FILE ]] || return 0
  local pid
  pid=$(cat "$WATCHER_PID_FILE")
  # Only our own watcher: the pid must still run kubectl-hsd.
  if [[ -n $pid ]] && grep -q kubectl-hsd "/proc/$pid/cmdline" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$WATCHER_PID_FILE"
}

if [[ ${1:-} == down ]]; then
  stop_watcher
  hack/cluster.sh down
  exit 0
fi
[[ $# == 0 ]] || die "usage: hack/demo.sh [down]"

# Same set-up as the tests: the tools a fresh machine of this kind may lack.
# shellcheck source=hack/lib.sh
source "$REPO_ROOT/hack/lib.sh"
ensure_tools openssl:openssl curl:curl python3:python3

step "Building kubectl-hsd"
cargo build --locked --bin kubectl-hsd
export PATH="$REPO_ROOT/target/debug:$PATH" # kubectl finds plugins named kubectl-* on PATH

step "Building the control plane (skipped when cached)"
hack/cluster.sh build k8s # the control plane only, no helm

step "Starting the local control plane in $HSD_CLUSTER_DIR"
KUBECONFIG=$(hack/cluster.sh up | tail -n 1)
export KUBECONFIG
# shellcheck source=/dev/null
source "$HSD_CLUSTER_DIR/state.env"
kubectl() { "$BIN_DIR/kubectl" "$@"; }
export -f kubectl 2>/dev/null || true
kubectl get nodes

step "kubectl hsd install"
kubectl hsd install

step "kubectl apply -f examples/hsd-annotation.yaml"
kubectl apply -f examples/hsd-annotation.yaml

step "kubectl hsd reconcile --watch (in the background; log: $HSD_CLUSTER_DIR/logs/watcher.log)"
stop_watcher
kubectl-hsd reconcile --watch -n default --metrics-addr 127.0.0.1:0 -v 1 >"$HSD_CLUSTER_DIR/logs/watcher.log" 2>&1 &
echo $! >"$WATCHER_PID_FILE"

wait_replicas() { # N: the Deployment asks for N replicas and N pods are ready
  local want=$1 spec ready
  for _ in $(seq 300); do
    spec=$(kubectl get deployment game-ws-workload -o jsonpath='{.spec.replicas}' 2>/dev/null || true)
    ready=$(kubectl get deployment game-ws-workload -o jsonpath='{.status.readyReplicas}' 2>/dev/null || true)
    [[ $spec == "$want" && $ready == "$want" ]] && return 0
    sleep 0.1
  done
  die "the Deployment did not reach $want ready replicas (spec ${spec:-?}, ready ${ready:-?}); see $HSD_CLUSTER_DIR/logs/watcher.log"
}
wait_hsd() { # BUSY IDLE: the status shows them
  for _ in $(seq 100); do
    [[ $(kubectl get hsd game-ws -o jsonpath='{.status.busyCount}/{.status.idleCount}') == "$1/$2" ]] && return 0
    sleep 0.1
  done
}

wait_replicas 3
wait_hsd 0 3
kubectl hsd get

step "Marking 2 pods busy: the buffer of 3 idle pods is refilled"
mapfile -t pods < <(kubectl get pods -l app=game-ws -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}' | head -n 2)
started=$(date +%s%3N)
kubectl hsd mark-busy "${pods[@]}"
wait_replicas 5
printf 'the Deployment went 3 -> 5 within %d ms of the mark\n' $(($(date +%s%3N) - started))
wait_hsd 2 3
kubectl hsd get
kubectl get deployment game-ws-workload

step "Marking them idle again: back to 3"
kubectl hsd mark-idle "${pods[@]}"
wait_replicas 3
wait_hsd 0 3
kubectl hsd get
kubectl get events --field-selector involvedObject.kind=HotStandbyDeployment \
  -o custom-columns=TYPE:.type,REASON:.reason,MESSAGE:.message

step "Done. The cluster and the watcher keep running."
cat <<MSG
Reach the cluster:
  export KUBECONFIG=$KUBECONFIG
  export PATH=$BIN_DIR:$REPO_ROOT/target/debug:\$PATH    # kubectl, and kubectl-hsd as a plugin
  kubectl hsd get && kubectl hsd describe game-ws
Stop it:
  hack/demo.sh down
MSG
