#!/usr/bin/env bash
# hack/cluster.sh - a real, local Kubernetes control plane for kubectl-hsd (tests, demo, benchmarks).
#
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok (fake nodes and kubelets)
# built from Go modules (hack/k8s-bins) and run as plain processes on 127.0.0.1: no Docker, and no
# traffic to any address outside 127.0.0.0/8 (pod IPs come from a 127.N.0.0/16 range, the node IP is
# 127.0.0.1, the service range is only allocated from, nothing ever connects to it).
# Besides the ordinary nodes there is one tainted data node, whose pods get 198.18.0.x IPs so that
# EndpointSlices can list them: those addresses are data only, nothing may ever connect to them.
# kwok serves the kubelet API (exec through kwok's Exec objects) on 127.0.0.1. hack/cluster_helper.py
# holds the parts that read better in Python (API answers, readiness waits, the nodes).
#
# Usage: hack/cluster.sh COMMAND [ARGS]
#   build [k8s|helm]       build the six control plane binaries and helm (hack/tools/helm), each
#                          skipped when its stamp matches; with an argument, only that one
#   up                     start a cluster, or say it is already up (idempotent); waits for /readyz,
#                          Ready nodes and the default ServiceAccount; last stdout line: kubeconfig path
#   down                   stop every recorded process (TERM, wait, KILL) and delete the cluster dir
#   status                 components, pids, alive or not, ports, kubeconfig (exit 3 unless all run)
#   env                    print `export KUBECONFIG=<absolute path>`
#   stop|start|restart C   one component C: etcd apiserver controller-manager scheduler kwok
#                          (same args, ports and certificates; `start` waits until C is healthy)
#   logs C [-f] [-n N]     tail a component's log (C may also be watchdog)
#   kubectl ARGS...        run the bin dir's kubectl against this cluster
#   help                   this text
#
# Environment:
#   HSD_CLUSTER_DIR        cluster directory (default <repo>/.cluster/default); one cluster per dir,
#                          several dirs may run at once
#   HSD_BIN_DIR            binaries root (default ~/.cache/kubectl-hsd/bin); binaries go to
#                          <root>/<k8s version>/, with kwok-stages/ (kwok's stages and Exec CRD),
#                          .build-stamp and .helm-stamp
#   HSD_CACHE_DIR          Go caches (default ~/.cache/kubectl-hsd/go, with mod/ and build/)
#   HSD_CLUSTER_OWNER_PID  with `up`: a watchdog runs `down` once that process has exited (if `up`
#                          finds the cluster already up with a watchdog, the pid is added as a
#                          further owner: down happens when the last owner is gone)
#   HSD_NODES              number of ordinary fake nodes (default 2: hsd-node-1, hsd-node-2); the
#                          data node hsd-data-node comes on top
#   HSD_POD_CIDR           pod IP range (default 127.N.0.0/16, N in 10..89 derived from the dir)
#   HSD_SERVICE_CIDR       service IP range, allocation only (default 127.96.0.0/16)
#   HSD_TIMEOUT            seconds to wait for each readiness step (default 60)
#
# Cluster dir layout: state.env (sourceable KEY=value: ports, CIDRs, bin dir, kubeconfig path,
#   nodes), kubeconfig, pki/, args/<component>.args (one argument a line, reused by `start`),
#   kwok-stages/ (this repo's kwok stages, copied at `up`), pids/<component>.pid (+ watchdog.pid),
#   logs/<component>.log, owners, etcd-data/.
#   A lock file .<dir name>.lock next to the dir serialises up/down/start/stop.
set -euo pipefail

SCRIPT_PATH=$(readlink -f "${BASH_SOURCE[0]}")
HACK_DIR=$(dirname "$SCRIPT_PATH")
REPO_ROOT=$(dirname "$HACK_DIR")
MOD_DIR="$HACK_DIR/k8s-bins"
GO_CACHE="${HSD_CACHE_DIR:-$HOME/.cache/kubectl-hsd/go}"
BIN_ROOT="${HSD_BIN_DIR:-$HOME/.cache/kubectl-hsd/bin}"
CLUSTER_DIR=$(realpath -m "${HSD_CLUSTER_DIR:-$REPO_ROOT/.cluster/default}")
COMPONENTS=(etcd apiserver controller-manager scheduler kwok)
BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok)
# kwok's own files, copied from its module into <bin dir>/kwok-stages by `build`.
KWOK_STAGES=(node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml
  pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml)
KWOK_CRDS=(kwok.x-k8s.io_execs.yaml)
# The stages a cluster runs: kwok's, except pod-complete, which this repo's hack/kwok/ replaces
# (Jobs whose pods keep running until told to finish); and kwok's options (kwok-config.yaml).
CLUSTER_STAGES=(node-initialize.yaml node-heartbeat-with-lease.yaml pod-ready.yaml pod-delete.yaml)
REPO_STAGES=(pod-complete.yaml pod-finish-on-request.yaml kwok-config.yaml)
# The data node: tainted, pod IPs from a range EndpointSlices accept (data only, never dialled).
DATA_NODE=hsd-data-node
DATA_NODE_CIDR=198.18.0.0/24
DATA_NODE_TAINT=paia.tech/data-only
HELM_MOD_DIR="$HACK_DIR/tools/helm"
MARKER=.hsd-cluster

# Loopback traffic must never go through a proxy.
export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}" no_proxy="127.0.0.1,localhost${no_proxy:+,$no_proxy}"

log() { printf 'cluster.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$SCRIPT_PATH"; }
now_ms() { date +%s%3N; }
since() { local ms=$(($(now_ms) - $1)); printf '%d.%01ds' $((ms / 1000)) $((ms % 1000 / 100)); }
helper() { python3 "$HACK_DIR/cluster_helper.py" "$@"; }

# ---------------------------------------------------------------------------------------------
# versions, paths

mod_version() { # mod_version MODULE [GO.MOD]: the version required (default: hack/k8s-bins/go.mod)
  awk -v m="$1" '($1 == m) {print $2; exit} ($1 == "require" && $2 == m) {print $3; exit}' "${2:-$MOD_DIR/go.mod}"
}
k8s_version() {
  local v
  v=$(mod_version k8s.io/kubernetes)
  [[ -n $v ]] || die "no k8s.io/kubernetes requirement in $MOD_DIR/go.mod"
  printf '%s\n' "$v"
}
bin_dir() { printf '%s/%s\n' "$BIN_ROOT" "$(k8s_version)"; }
inputs_hash() { (cd "$MOD_DIR" && sha256sum go.mod go.sum cmd/*/main.go) | sha256sum | cut -d' ' -f1; }

go_env() {
  env GOMODCACHE="$GO_CACHE/mod" GOCACHE="$GO_CACHE/build" GOTOOLCHAIN=local \
    GOFLAGS="-modcacherw -buildvcs=false" CGO_ENABLED=0 "$@"
}

# A go command that may need the network. If the checksum database cannot be reached, retry
# once with GOSUMDB=off: go.sum keeps being checked, only new modules go unverified.
go_net() {
  local err rc=0
  err=$(mktemp)
  go_env "$@" 2>"$err" || rc=$?
  if ((rc != 0)) && grep -qiE 'sum\.golang\.org|GOSUMDB|checksum database|verifying .*module' "$err"; then
    cat "$err" >&2
    log "checksum database unreachable: retrying with GOSUMDB=off (go.sum is still enforced)"
    rc=0
    GOSUMDB=off go_env "$@" 2>"$err" || rc=$?
  fi
  cat "$err" >&2
  rm -f "$err"
  return "$rc"
}

# ---------------------------------------------------------------------------------------------
# build

# Make the replace block match the Kubernetes version: every `k8s.io/X => ./staging/src/k8s.io/X`
# of k8s.io/kubernetes' own go.mod becomes `k8s.io/X => k8s.io/X v0.MINOR.PATCH`.
sync_replaces() {
  local kv=$1 sv gomod m out outdated=()
  sv="v0.${kv#v1.}"
  gomod=$(cd "$MOD_DIR" && go_net go mod download -json "k8s.io/kubernetes@$kv" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  out=$(cd "$MOD_DIR" && go_env go mod edit -json | helper outdated-replaces "$gomod" "$sv") ||
    die "could not compare the replace block with $gomod"
  [[ -z $out ]] || mapfile -t outdated <<<"$out"
  if ((${#outdated[@]} == 0)); then
    log "  replace block matches $kv"
    return 0
  fi
  for m in "${outdated[@]}"; do (cd "$MOD_DIR" && go_env go mod edit -replace="$m=$m@$sv"); done
  log "  replace block updated for $kv (${#outdated[@]} modules); running go mod tidy"
  (cd "$MOD_DIR" && go_net go mod tidy)
}

# The control plane binaries. The stamp format is shared with every checkout that uses this bin
# dir: changing it rebuilds everything for everyone.
build_k8s() {
  local kv kwv gv bdir stamp_file ldflags stamp t b missing=0
  kv=$(k8s_version)
  kwv=$(mod_version sigs.k8s.io/kwok)
  gv=$(go_env go env GOVERSION)
  bdir=$(bin_dir)
  stamp_file="$bdir/.build-stamp"
  local major minor
  major=${kv#v}; major=${major%%.*}
  minor=${kv#v*.}; minor=${minor%%.*}
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$kv -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
  done
  make_stamp() { printf 'k8s=%s\nkwok=%s\ngo=%s\nldflags=%s\ninputs=%s\n' "$kv" "$kwv" "$gv" "$ldflags" "$(inputs_hash)"; }
  stamp=$(make_stamp)
  for b in "${BINARIES[@]}"; do [[ -x $bdir/$b ]] || missing=1; done
  if ((missing == 0)) && [[ -f $stamp_file && $(<"$stamp_file") == "$stamp" ]]; then
    log "binaries up to date in $bdir (Kubernetes $kv, kwok $kwv, $gv)"
    install_kwok_files "$bdir" if-missing
    return 0
  fi
  log "building Kubernetes $kv + kwok $kwv with $gv into $bdir"
  log "  (cold: expect 10-30 min on 2 cores and several GB in $GO_CACHE)"
  mkdir -p "$bdir" "$GO_CACHE"

  t=$(now_ms)
  log "step 1/3: resolving the staging replaces"
  sync_replaces "$kv"
  log "  done in $(since "$t")"

  t=$(now_ms)
  log "step 2/3: downloading modules into $GO_CACHE/mod"
  (cd "$MOD_DIR" && go_net go mod download)
  log "  done in $(since "$t")"

  t=$(now_ms)
  log "step 3/3: compiling ${BINARIES[*]}"
  local tmp="$bdir/.build.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  if ! (cd "$MOD_DIR" && go_env go build -trimpath -ldflags "$ldflags" -o "$tmp/" ./cmd/...); then
    rm -rf "$tmp"
    die "go build failed"
  fi
  for b in "${BINARIES[@]}"; do
    [[ -x $tmp/$b ]] || { rm -rf "$tmp"; die "go build produced no $b"; }
    mv -f "$tmp/$b" "$bdir/$b" # rename: safe even while an old binary runs
  done
  rm -rf "$tmp"
  log "  done in $(since "$t")"
  install_kwok_files "$bdir" always
  make_stamp >"$stamp_file"
  log "built: $(cd "$bdir" && echo "${BINARIES[@]}") + kwok-stages/ in $bdir"
}

# install_kwok_files BDIR always|if-missing: kwok's stages and Exec CRD, from its module, into
# BDIR/kwok-stages (a copy: files missing from an older build need no compiling).
install_kwok_files() {
  local bdir=$1 kwok_dir f missing=0
  for f in "${KWOK_STAGES[@]}" "${KWOK_CRDS[@]}"; do [[ -f $bdir/kwok-stages/$(basename "$f") ]] || missing=1; done
  [[ $2 == always ]] || ((missing)) || return 0
  kwok_dir=$(cd "$MOD_DIR" && go_net go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)
  mkdir -p "$bdir/kwok-stages"
  for f in "${KWOK_STAGES[@]}"; do
    install -m 0644 "$kwok_dir/kustomize/stage/$f" "$bdir/kwok-stages/$(basename "$f")"
  done
  for f in "${KWOK_CRDS[@]}"; do install -m 0644 "$kwok_dir/kustomize/crd/bases/$f" "$bdir/kwok-stages/$f"; done
  log "kwok stages and CRDs copied into $bdir/kwok-stages"
}

# helm, from its own wrapper module (hack/tools/helm), with a stamp of its own: it never rebuilds
# the control plane, and the control plane never rebuilds it.
build_helm() {
  local hv gv bdir stamp_file ldflags stamp t tmp
  hv=$(mod_version helm.sh/helm/v4 "$HELM_MOD_DIR/go.mod")
  [[ -n $hv ]] || die "no helm.sh/helm/v4 requirement in $HELM_MOD_DIR/go.mod"
  gv=$(go_env go env GOVERSION)
  bdir=$(bin_dir)
  stamp_file="$bdir/.helm-stamp"
  ldflags="-s -w -X helm.sh/helm/v4/internal/version.version=$hv -X helm.sh/helm/v4/internal/version.gitTreeState=clean"
  stamp=$(printf 'helm=%s\ngo=%s\nldflags=%s\ninputs=%s\n' "$hv" "$gv" "$ldflags" \
    "$( (cd "$HELM_MOD_DIR" && sha256sum go.mod go.sum) | sha256sum | cut -d' ' -f1)")
  if [[ -x $bdir/helm && -f $stamp_file && $(<"$stamp_file") == "$stamp" ]]; then
    log "helm $hv up to date in $bdir"
    return 0
  fi
  log "building helm $hv with $gv into $bdir (cold: a few minutes)"
  mkdir -p "$bdir" "$GO_CACHE"
  t=$(now_ms)
  (cd "$HELM_MOD_DIR" && go_net go mod download)
  tmp="$bdir/.build-helm.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  if ! (cd "$HELM_MOD_DIR" && go_env go build -trimpath -ldflags "$ldflags" -o "$tmp/helm" helm.sh/helm/v4/cmd/helm); then
    rm -rf "$tmp"
    die "go build of helm failed"
  fi
  mv -f "$tmp/helm" "$bdir/helm"
  rm -rf "$tmp"
  printf '%s\n' "$stamp" >"$stamp_file"
  log "built helm $hv in $(since "$t")"
}

cmd_build() {
  command -v go >/dev/null || die "go is not installed"
  mkdir -p "$BIN_ROOT"
  # One build at a time per bin root (tests in several checkouts may call build at once).
  exec 8>>"$BIN_ROOT/.build.lock"
  flock -w 3600 8 || die "another build held $BIN_ROOT/.build.lock for an hour"
  case ${1:-all} in
    all) build_k8s && build_helm ;;
    k8s) build_k8s ;;
    helm) build_helm ;;
    *) log "unknown build target '$1' (k8s or helm)"; exit 2 ;;
  esac
}

# ---------------------------------------------------------------------------------------------
# processes

binary_of() {
  case $1 in
    etcd) echo etcd ;;
    apiserver) echo kube-apiserver ;;
    controller-manager) echo kube-controller-manager ;;
    scheduler) echo kube-scheduler ;;
    kwok) echo kwok ;;
    *) return 1 ;;
  esac
}
is_component() { local c; for c in "${COMPONENTS[@]}"; do [[ $1 == "$c" ]] && return 0; done; return 1; }

# pid_alive PID [STRING]: the process exists, is not a zombie and (if given) its command line
# contains STRING (guards against a recycled pid).
pid_alive() {
  local pid=$1 want=${2:-} st
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  st=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null) || return 1
  [[ ${st%% *} != Z ]] || return 1
  [[ -z $want ]] && return 0
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$want"
}
pid_file() { printf '%s/pids/%s.pid\n' "$CLUSTER_DIR" "$1"; }
recorded_pid() { local f; f=$(pid_file "$1"); [[ -f $f ]] && cat "$f"; return 0; }
# what a live process of this component must have in its command line
signature() {
  if [[ $1 == watchdog ]]; then echo "__watchdog $CLUSTER_DIR"; else echo "$BIN_DIR/$(binary_of "$1")"; fi
}
component_alive() {
  local pid
  pid=$(recorded_pid "$1")
  [[ -n $pid ]] && pid_alive "$pid" "$(signature "$1")"
}

load_state() {
  [[ -f $CLUSTER_DIR/state.env ]] || return 1
  # shellcheck source=/dev/null
  source "$CLUSTER_DIR/state.env"
}
require_state() { load_state || die "no cluster in $CLUSTER_DIR (run: hack/cluster.sh up)"; }

port_of() {
  case $1 in
    etcd) echo "$ETCD_CLIENT_PORT" ;;
    apiserver) echo "$APISERVER_PORT" ;;
    controller-manager) echo "$CONTROLLER_MANAGER_PORT" ;;
    scheduler) echo "$SCHEDULER_PORT" ;;
    kwok) echo "$KWOK_PORT" ;;
    *) echo - ;;
  esac
}

show_log_tail() {
  local f="$CLUSTER_DIR/logs/$1.log"
  if [[ -f $f ]]; then
    log "last lines of $f:"
    tail -n "${2:-25}" "$f" | sed 's/^/    /' >&2
  fi
}

spawn() { # spawn COMPONENT: start it detached with its recorded args, record the pid
  local c=$1 bin args=()
  bin="$BIN_DIR/$(binary_of "$c")"
  [[ -x $bin ]] || die "$bin is missing (run: hack/cluster.sh build)"
  mapfile -t args <"$CLUSTER_DIR/args/$c.args"
  printf '\n=== %s: %s starting\n' "$(date -u +%FT%TZ)" "$c" >>"$CLUSTER_DIR/logs/$c.log"
  # New session (not killed by a terminal's Ctrl-C), no inherited stdout (a caller reading our
  # stdout through a pipe must not wait for the daemons), lock fd closed.
  (cd "$CLUSTER_DIR" && KWOK_WORKDIR="$CLUSTER_DIR/kwok" exec setsid "$bin" "${args[@]}") \
    >>"$CLUSTER_DIR/logs/$c.log" 2>&1 </dev/null 9>&- &
  echo $! >"$(pid_file "$c")"
}

healthy() { helper healthy "$CLUSTER_DIR" "$1"; } # one readiness probe of COMPONENT

# wait_healthy COMPONENT [WHAT]: poll until healthy; fail with the log tail if it dies or times out
wait_healthy() {
  helper wait-healthy "$CLUSTER_DIR" "$1" "${2:-$1 healthy}" || { show_log_tail "$1"; return 1; }
}

start_component() { # start_component C [wait]: start if not running, wait until healthy
  local c=$1 t
  if component_alive "$c"; then
    log "$c already running (pid $(recorded_pid "$c"))"
    return 0
  fi
  t=$(now_ms)
  spawn "$c"
  if [[ ${2:-wait} == wait ]]; then
    wait_healthy "$c" || return 1
    log "$c up (pid $(recorded_pid "$c"), port $(port_of "$c")) in $(since "$t")"
  fi
}

stop_pid() { # stop_pid NAME PID SIGNATURE: TERM, wait up to 10s, then KILL
  local name=$1 pid=$2 sig=$3 i
  pid_alive "$pid" "$sig" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    pid_alive "$pid" "$sig" || { log "stopped $name (pid $pid)"; return 0; }
    sleep 0.1
  done
  log "$name (pid $pid) ignored TERM for 10s: sending KILL"
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    pid_alive "$pid" "$sig" || return 0
    sleep 0.1
  done
  log "warning: $name (pid $pid) is still alive"
  return 1
}
stop_component() {
  local c=$1 pid
  pid=$(recorded_pid "$c")
  if [[ -z $pid ]]; then
    log "$c is not running"
    return 0
  fi
  if [[ $c == watchdog && $pid == "$$" ]]; then return 0; fi # the watchdog tearing down
  stop_pid "$c" "$pid" "$(signature "$c")" || return 1
  rm -f "$(pid_file "$c")"
}
stop_all() { # reverse start order, watchdog first
  local c i rc=0
  [[ -z $(recorded_pid watchdog) ]] || stop_component watchdog || rc=1
  for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
    c=${COMPONENTS[i]}
    stop_component "$c" || rc=1
  done
  return "$rc"
}

lock() { # serialise commands that change this cluster dir (fd 9, closed in spawned daemons)
  mkdir -p "$(dirname "$CLUSTER_DIR")"
  exec 9>>"$(dirname "$CLUSTER_DIR")/.$(basename "$CLUSTER_DIR").lock"
  flock -w 300 9 || die "could not lock $CLUSTER_DIR within 300s"
}

wipe_dir() {
  [[ -e $CLUSTER_DIR ]] || return 0
  if [[ ! -f $CLUSTER_DIR/$MARKER ]] && [[ -n $(ls -A "$CLUSTER_DIR") ]]; then
    die "$CLUSTER_DIR is not a cluster dir (no $MARKER): not deleting it"
  fi
  rm -rf "$CLUSTER_DIR"
}

# ---------------------------------------------------------------------------------------------
# up

gen_pki() {
  local p="$CLUSTER_DIR/pki"
  mkdir -p "$p"
  (
    cd "$p"
    umask 077
    ossl() { openssl "$@" 2>>openssl.log; }
    ossl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key
    ossl req -x509 -new -key ca.key -sha256 -days 3650 -subj "/CN=kubectl-hsd-test-ca" -out ca.crt \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -addext "subjectKeyIdentifier=hash"
    leaf() { # leaf NAME SUBJECT EXTENSIONS
      ossl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.key"
      ossl req -new -key "$1.key" -subj "$2" -out "$1.csr"
      printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
        "authorityKeyIdentifier=keyid" "$3" >"$1.ext"
      ossl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 -days 3650 \
        -extfile "$1.ext" -out "$1.crt"
      rm -f "$1.csr" "$1.ext"
    }
    leaf apiserver "/CN=kube-apiserver" "$(printf '%s\n' 'extendedKeyUsage=serverAuth' \
      'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc')"
    leaf admin "/O=system:masters/CN=kubectl-hsd-admin" "extendedKeyUsage=clientAuth"
    ossl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out sa.key # tokens signed ES256
    ossl pkey -in sa.key -pubout -out sa.pub
    chmod 0644 ./*.crt sa.pub
  ) || { cat "$p/openssl.log" >&2; die "openssl failed"; }
}

write_kubeconfig() {
  cat >"$KUBECONFIG_PATH" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: hsd
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority: $CLUSTER_DIR/pki/ca.crt
users:
- name: hsd-admin
  user:
    client-certificate: $CLUSTER_DIR/pki/admin.crt
    client-key: $CLUSTER_DIR/pki/admin.key
contexts:
- name: hsd
  context:
    cluster: hsd
    user: hsd-admin
    namespace: default
current-context: hsd
EOF
}

write_args() {
  local d=$CLUSTER_DIR k=$KUBECONFIG_PATH a=$CLUSTER_DIR/args s
  mkdir -p "$a"
  printf '%s\n' --name=hsd "--data-dir=$d/etcd-data" \
    "--listen-client-urls=http://127.0.0.1:$ETCD_CLIENT_PORT" \
    "--advertise-client-urls=http://127.0.0.1:$ETCD_CLIENT_PORT" \
    "--listen-peer-urls=http://127.0.0.1:$ETCD_PEER_PORT" \
    "--initial-advertise-peer-urls=http://127.0.0.1:$ETCD_PEER_PORT" \
    "--initial-cluster=hsd=http://127.0.0.1:$ETCD_PEER_PORT" --initial-cluster-state=new \
    --unsafe-no-fsync=true --log-level=warn \
    --heartbeat-interval=25 --election-timeout=250 >"$a/etcd.args" # single member: elected in ~0.1s
  # --disable-admission-plugins=TaintNodesByCondition: that plugin puts node.kubernetes.io/not-ready
  # (NoSchedule) on every new Node and only the node-lifecycle-controller, not run here, lifts it.
  # --endpoint-reconciler-type=none: the `kubernetes` Endpoints would reject the loopback address.
  # --shutdown-watch-termination-grace-period=2s: without it, TERM leaves the apiserver waiting up to
  # --request-timeout (60s) for the open watches of the other components; with it, it exits in ~1s.
  # --kubelet-preferred-address-types=InternalIP: exec and logs go to the node's InternalIP
  # (127.0.0.1, kwok's kubelet API), never to a Hostname address, whose DNS lookup would leave
  # 127.0.0.0/8 (kwok publishes none today, but the default order tries Hostname first).
  printf '%s\n' "--etcd-servers=http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 "--secure-port=$APISERVER_PORT" \
    "--cert-dir=$d/pki/apiserver-generated" \
    "--tls-cert-file=$d/pki/apiserver.crt" "--tls-private-key-file=$d/pki/apiserver.key" \
    "--client-ca-file=$d/pki/ca.crt" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    "--service-account-key-file=$d/pki/sa.pub" "--service-account-signing-key-file=$d/pki/sa.key" \
    "--service-cluster-ip-range=$SERVICE_CIDR" \
    --authorization-mode=Node,RBAC --allow-privileged=true --endpoint-reconciler-type=none \
    --disable-admission-plugins=TaintNodesByCondition --shutdown-watch-termination-grace-period=2s \
    --kubelet-preferred-address-types=InternalIP >"$a/apiserver.args"
  printf '%s\n' "--kubeconfig=$k" --bind-address=127.0.0.1 "--secure-port=$CONTROLLER_MANAGER_PORT" \
    "--cert-dir=$d/pki/controller-manager-generated" --leader-elect=false \
    --controllers=deployment-controller,replicaset-controller,garbage-collector-controller,namespace-controller,job-controller,serviceaccount-controller,endpointslice-controller,clusterrole-aggregation-controller \
    >"$a/controller-manager.args"
  printf '%s\n' "--kubeconfig=$k" --bind-address=127.0.0.1 "--secure-port=$SCHEDULER_PORT" \
    "--cert-dir=$d/pki/scheduler-generated" --leader-elect=false >"$a/scheduler.args"
  # kwok's kubelet API on 127.0.0.1:KWOK_PORT, which node-initialize publishes as every node's
  # kubeletEndpoint; exec commands come from Exec objects (--enable-crds), not from --config.
  {
    printf '%s\n' "--kubeconfig=$k" --manage-all-nodes=true "--cidr=$POD_CIDR" "--node-ip=$NODE_IP" \
      "--node-port=$KWOK_PORT" "--server-address=127.0.0.1:$KWOK_PORT" --enable-crds=Exec
    for s in "${CLUSTER_STAGES[@]}"; do printf -- '--config=%s/kwok-stages/%s\n' "$BIN_DIR" "$s"; done
    for s in "${REPO_STAGES[@]}"; do printf -- '--config=%s/kwok-stages/%s\n' "$d" "$s"; done
  } >"$a/kwok.args"
}

register_owner() { # with HSD_CLUSTER_OWNER_PID: add an owner, start the watchdog if `fresh`
  local owner=${HSD_CLUSTER_OWNER_PID:-} fresh=$1
  [[ -n $owner ]] || return 0
  [[ $owner =~ ^[0-9]+$ ]] || die "HSD_CLUSTER_OWNER_PID=$owner is not a pid"
  pid_alive "$owner" || die "HSD_CLUSTER_OWNER_PID=$owner: no such process"
  if [[ $fresh != fresh ]] && ! component_alive watchdog; then
    log "note: this cluster was started without an owner; it stays up after pid $owner exits"
    return 0
  fi
  grep -qxF "$owner" "$CLUSTER_DIR/owners" 2>/dev/null || echo "$owner" >>"$CLUSTER_DIR/owners"
  if ! component_alive watchdog; then
    setsid bash "$SCRIPT_PATH" __watchdog "$CLUSTER_DIR" >>"$CLUSTER_DIR/logs/watchdog.log" 2>&1 </dev/null 9>&- &
    echo $! >"$(pid_file watchdog)"
    log "watchdog (pid $!) runs down once pid $owner has exited"
  else
    log "pid $owner added to the owners watched by the watchdog (pid $(recorded_pid watchdog))"
  fi
}

UP_CLEANUP=0
on_up_exit() {
  local rc=$1
  if ((rc != 0 && UP_CLEANUP)); then
    log "up failed: stopping what was started (logs kept in $CLUSTER_DIR/logs)"
    stop_all || true
  fi
}

cmd_up() {
  local t0 bdir b
  t0=$(now_ms)
  bdir=$(bin_dir)
  for b in "${BINARIES[@]}"; do
    [[ -x $bdir/$b ]] || die "$bdir/$b is missing: run hack/cluster.sh build first (15-30 min cold)"
  done
  for b in "${CLUSTER_STAGES[@]}" "${KWOK_CRDS[@]}"; do
    [[ -f $bdir/kwok-stages/$b ]] || die "$bdir/kwok-stages/$b is missing: run hack/cluster.sh build"
  done
  if [[ ! -f $bdir/.build-stamp ]] || ! grep -qxF "inputs=$(inputs_hash)" "$bdir/.build-stamp"; then
    log "warning: binaries in $bdir do not match hack/k8s-bins (run hack/cluster.sh build)"
  fi
  lock

  if load_state; then
    if component_alive apiserver && healthy apiserver 2>/dev/null; then
      log "cluster in $CLUSTER_DIR is already up (apiserver https://127.0.0.1:$APISERVER_PORT)"
      local c
      for c in "${COMPONENTS[@]}"; do
        component_alive "$c" || { log "$c is not running: starting it"; start_component "$c"; }
      done
      register_owner existing
      printf '%s\n' "$KUBECONFIG_PATH"
      return 0
    fi
    log "stale cluster dir $CLUSTER_DIR (apiserver not running): cleaning it"
    stop_all || die "could not stop the old processes"
    wipe_dir
  elif [[ -e $CLUSTER_DIR ]]; then
    wipe_dir
  fi

  # fresh cluster
  UP_CLEANUP=1
  trap 'on_up_exit $?' EXIT
  mkdir -p "$CLUSTER_DIR"/{logs,pids,args,kwok,kwok-stages}
  touch "$CLUSTER_DIR/$MARKER"
  BIN_DIR=$bdir
  KUBECONFIG_PATH="$CLUSTER_DIR/kubeconfig"
  local n i v
  read -r ETCD_CLIENT_PORT ETCD_PEER_PORT APISERVER_PORT CONTROLLER_MANAGER_PORT SCHEDULER_PORT KWOK_PORT \
    < <(helper free-ports 6)
  POD_CIDR=${HSD_POD_CIDR:-127.$((10 + $(cksum <<<"$CLUSTER_DIR" | cut -d' ' -f1) % 80)).0.0/16}
  SERVICE_CIDR=${HSD_SERVICE_CIDR:-127.96.0.0/16}
  NODE_IP=127.0.0.1
  n=${HSD_NODES:-2}
  [[ $n =~ ^[1-9][0-9]*$ ]] || die "HSD_NODES=$n is not a positive number"
  NODES=$(for ((i = 1; i <= n; i++)); do printf 'hsd-node-%d ' "$i"; done)
  NODES=${NODES% }
  {
    printf '# written by hack/cluster.sh up; sourced by the other subcommands\n'
    for v in CLUSTER_DIR BIN_DIR KUBECONFIG_PATH ETCD_CLIENT_PORT ETCD_PEER_PORT APISERVER_PORT \
      CONTROLLER_MANAGER_PORT SCHEDULER_PORT KWOK_PORT POD_CIDR SERVICE_CIDR NODE_IP NODES \
      DATA_NODE DATA_NODE_CIDR DATA_NODE_TAINT; do
      printf '%s=%q\n' "$v" "${!v}"
    done
    printf 'K8S_VERSION=%q\nCREATED=%q\n' "$(k8s_version)" "$(date -u +%FT%TZ)"
  } >"$CLUSTER_DIR/state.env"

  local t
  t=$(now_ms)
  gen_pki
  write_kubeconfig
  for b in "${REPO_STAGES[@]}"; do install -m 0644 "$HACK_DIR/kwok/$b" "$CLUSTER_DIR/kwok-stages/$b"; done
  write_args
  log "PKI, kubeconfig and args written in $(since "$t") (pods $POD_CIDR, services $SERVICE_CIDR)"

  start_component etcd
  start_component apiserver
  t=$(now_ms)
  spawn controller-manager
  spawn scheduler
  # kwok watches Exec objects from its start: their CRD must be established before.
  local crds=()
  for b in "${KWOK_CRDS[@]}"; do crds+=("$BIN_DIR/kwok-stages/$b"); done
  helper create-nodes-and-crds "$CLUSTER_DIR" "${crds[@]}" || die "could not create the nodes and kwok's CRDs"
  spawn kwok
  wait_healthy controller-manager
  wait_healthy scheduler
  wait_healthy kwok "nodes Ready ($NODES $DATA_NODE)"
  helper wait-get "$CLUSTER_DIR" "ServiceAccount default/default (serviceaccount-controller)" \
    /api/v1/namespaces/default/serviceaccounts/default || { show_log_tail controller-manager; exit 1; }
  log "controller-manager, scheduler, kwok and $((n + 1)) Ready nodes in $(since "$t")"
  register_owner fresh
  UP_CLEANUP=0
  log "cluster up in $(since "$t0"): https://127.0.0.1:$APISERVER_PORT"
  printf '%s\n' "$KUBECONFIG_PATH"
}

# ---------------------------------------------------------------------------------------------
# other subcommands

cmd_down() {
  if [[ ! -e $CLUSTER_DIR ]]; then
    log "no cluster in $CLUSTER_DIR"
    return 0
  fi
  [[ ${1:-} == locked ]] || lock
  load_state || BIN_DIR=$(bin_dir)
  stop_all || die "some processes would not stop; $CLUSTER_DIR kept"
  wipe_dir
  log "cluster in $CLUSTER_DIR is down"
}

cmd_status() {
  if ! load_state; then
    log "no cluster in $CLUSTER_DIR"
    return 3
  fi
  local c pid state rc=0 extra
  printf 'cluster dir: %s\nkubeconfig:  %s\nkubernetes:  %s (bins %s)\npods: %s  services: %s  nodes: %s\n' \
    "$CLUSTER_DIR" "$KUBECONFIG_PATH" "$K8S_VERSION" "$BIN_DIR" "$POD_CIDR" "$SERVICE_CIDR" "$NODES"
  [[ -z ${DATA_NODE:-} ]] || printf 'data node: %s (pods %s, data only; taint %s=true:NoSchedule)\n' \
    "$DATA_NODE" "$DATA_NODE_CIDR" "$DATA_NODE_TAINT"
  printf '%-19s %-8s %-8s %s\n' COMPONENT PID STATE PORT
  for c in "${COMPONENTS[@]}" watchdog; do
    pid=$(recorded_pid "$c")
    if component_alive "$c"; then state=alive; else state=dead; [[ $c == watchdog ]] || rc=3; fi
    [[ -n $pid ]] || state=stopped
    extra=$(port_of "$c")
    [[ $c == etcd ]] && extra+=" (peer $ETCD_PEER_PORT)"
    if [[ $c == watchdog ]]; then
      [[ -n $pid ]] || continue
      extra="owners: $(tr '\n' ' ' <"$CLUSTER_DIR/owners" 2>/dev/null)"
    fi
    printf '%-19s %-8s %-8s %s\n' "$c" "${pid:--}" "$state" "$extra"
  done
  if component_alive apiserver && healthy apiserver 2>/dev/null; then echo "apiserver: ready"; else echo "apiserver: NOT ready"; rc=3; fi
  return "$rc"
}

cmd_component() { # stop|start|restart COMPONENT
  local action=$1 c=${2:-}
  is_component "$c" || { log "unknown component '${c}' (one of: ${COMPONENTS[*]})"; exit 2; }
  lock
  require_state
  case $action in
    stop) stop_component "$c" ;;
    start) start_component "$c" ;;
    restart) stop_component "$c" && start_component "$c" ;;
  esac
}

cmd_logs() {
  local c=${1:-} f
  [[ -n $c ]] || { log "usage: hack/cluster.sh logs COMPONENT [-f] [-n N]"; exit 2; }
  shift
  f="$CLUSTER_DIR/logs/$c.log"
  [[ -f $f ]] || die "no log $f"
  local follow=() lines=50
  while (($#)); do
    case $1 in
      -f) follow=(-f) ;;
      -n) lines=${2:?-n needs a number}; shift ;;
      *) log "unknown logs option $1"; exit 2 ;;
    esac
    shift
  done
  exec tail -n "$lines" "${follow[@]}" "$f"
}

# __watchdog DIR: poll the owner pids every second; once none is alive, run down.
cmd_watchdog() {
  local owners=() alive p
  log "watchdog $$ started for $CLUSTER_DIR"
  while [[ -f $CLUSTER_DIR/owners ]]; do
    alive=0
    mapfile -t owners <"$CLUSTER_DIR/owners"
    for p in "${owners[@]}"; do pid_alive "$p" && alive=1 && break; done
    if ((alive == 0)); then
      lock
      mapfile -t owners <"$CLUSTER_DIR/owners"
      for p in "${owners[@]}"; do pid_alive "$p" && alive=1 && break; done
      if ((alive == 0)); then
        log "watchdog: owner(s) ${owners[*]} gone: running down"
        cmd_down locked
        exit 0
      fi
      flock -u 9
    fi
    sleep 1
  done
}

main() {
  local cmd=${1:-help}
  (($#)) && shift
  case $cmd in
    build) cmd_build "$@" ;;
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env)
      load_state || die "no cluster in $CLUSTER_DIR (run: hack/cluster.sh up)"
      printf 'export KUBECONFIG=%s\n' "$KUBECONFIG_PATH"
      ;;
    stop | start | restart) cmd_component "$cmd" "$@" ;;
    logs) cmd_logs "$@" ;;
    kubectl)
      require_state
      exec "$BIN_DIR/kubectl" --kubeconfig="$KUBECONFIG_PATH" "$@"
      ;;
    __watchdog)
      CLUSTER_DIR=${1:?}
      load_state || exit 0
      cmd_watchdog
      ;;
    help | -h | --help) usage ;;
    *)
      usage >&2
      log "unknown command '$cmd'"
      exit 2
      ;;
  esac
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then main "$@"; fi
