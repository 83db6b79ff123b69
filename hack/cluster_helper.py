#!/usr/bin/env python3
"""hack/cluster_helper.py - the parts of hack/cluster.sh that read better in Python (stdlib only).

hack/cluster.sh calls it; it is not meant to be run by hand. It reads the API server's JSON
answers, picks free ports, creates the nodes and CRDs, and runs the readiness checks and waits.
Every connection it makes goes to 127.0.0.1, never through a proxy.

Commands (DIR is a cluster dir with state.env):
  free-ports N                        N free TCP ports on 127.0.0.1, space-separated
  healthy DIR COMPONENT               one readiness probe; exit 0 if healthy
  wait-healthy DIR COMPONENT [WHAT]   poll until healthy; fail if the component dies or
                                      HSD_TIMEOUT seconds pass
  wait-get DIR WHAT PATH [CONDITION]  poll GET PATH until it answers 200 (and, with CONDITION,
                                      until status.conditions has CONDITION=True)
  create-nodes-and-crds DIR CRD...    create the nodes and the CRDs (YAML files), wait until the
                                      CRDs are established
  outdated-replaces GOMOD VERSION     read `go mod edit -json` on stdin; print each staging module
                                      of GOMOD (k8s.io/kubernetes' go.mod) whose replace is not
                                      `=> k8s.io/X VERSION`
"""

import http.client
import json
import os
import re
import shlex
import socket
import ssl
import sys
import time

# What a live process of each component has in its command line (guards against recycled pids).
BINARIES = {
    "etcd": "etcd",
    "apiserver": "kube-apiserver",
    "controller-manager": "kube-controller-manager",
    "scheduler": "kube-scheduler",
    "kwok": "kwok",
}


def log(message):
    print(f"cluster.sh: {message}", file=sys.stderr)


def load_state(cluster_dir):
    """state.env (KEY=value lines written with printf %q) as a dict."""
    state = {}
    with open(os.path.join(cluster_dir, "state.env")) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                key, _, value = line.partition("=")
                words = shlex.split(value)
                state[key] = words[0] if words else ""
    return state


class Cluster:
    def __init__(self, cluster_dir):
        self.dir = cluster_dir
        self.state = load_state(cluster_dir)
        self._admin_tls = None

    def port(self, key):
        return int(self.state[key])

    def admin_tls(self):
        """TLS as the cluster admin, verifying the API server against the cluster's CA."""
        if self._admin_tls is None:
            pki = os.path.join(self.dir, "pki")
            self._admin_tls = ssl.create_default_context(cafile=os.path.join(pki, "ca.crt"))
            self._admin_tls.load_cert_chain(os.path.join(pki, "admin.crt"), os.path.join(pki, "admin.key"))
        return self._admin_tls

    def api(self, method, path, body=None, content_type="application/json", timeout=3):
        """(status, parsed JSON or text) of a request to the API server as admin."""
        port = self.port("APISERVER_PORT")
        return request(port, method, path, self.admin_tls(), timeout, body, content_type)

    def api_get(self, path):
        return self.api("GET", path)

    def create(self, path, body, content_type="application/json"):
        """POSTs an object; one that already exists is fine. Returns its name."""
        status, answer = self.api("POST", path, body, content_type, timeout=10)
        if status == 201:
            return answer["metadata"]["name"]
        if status == 409:
            return answer["details"]["name"]
        sys.exit(f"cluster.sh: error: POST {path}: {status} {answer}")

    def nodes(self):
        """Every node this cluster creates: the ordinary ones, then the data node (a cluster
        started by an older hack/cluster.sh has none)."""
        return self.state["NODES"].split() + self.state.get("DATA_NODE", "").split()

    def healthy(self, component):
        if component == "etcd":
            status, body = request(self.port("ETCD_CLIENT_PORT"), "GET", "/health", None, 2)
            return status == 200 and isinstance(body, dict) and body.get("health") == "true"
        if component == "apiserver":
            status, body = self.api_get("/readyz")
            return status == 200 and body == "ok"
        if component in ("controller-manager", "scheduler"):
            # Their serving certificates are self-signed: this checks liveness and sends nothing secret.
            unverified = ssl.create_default_context()
            unverified.check_hostname = False
            unverified.verify_mode = ssl.CERT_NONE
            port = self.port(component.upper().replace("-", "_") + "_PORT")
            return request(port, "GET", "/healthz", unverified, 2)[0] == 200
        if component == "kwok":
            return self.nodes_ready()
        raise SystemExit(f"unknown component {component}")

    def nodes_ready(self):
        status, body = self.api_get("/api/v1/nodes")
        if status != 200 or not isinstance(body, dict):
            return False
        ready = {
            node["metadata"]["name"]
            for node in body["items"]
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in node.get("status", {}).get("conditions") or []
            )
        }
        return set(self.nodes()) <= ready

    def alive(self, component):
        try:
            with open(os.path.join(self.dir, "pids", f"{component}.pid")) as f:
                pid = f.read().strip()
        except FileNotFoundError:
            return False
        return pid_alive(pid, os.path.join(self.state["BIN_DIR"], BINARIES[component]))


def request(port, method, path, tls, timeout, body=None, content_type="application/json"):
    """(status, body) of one request to 127.0.0.1:port, over TLS unless `tls` is None; the body
    is parsed when it is JSON. (0, None) on any error. Plain http.client: no proxy is consulted,
    and no other host can be reached."""
    if tls is None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    else:
        connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=tls)
    try:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        body = response.read().decode(errors="replace")
        try:
            return response.status, json.loads(body)
        except ValueError:
            return response.status, body
    except (OSError, http.client.HTTPException):
        return 0, None
    finally:
        connection.close()


def pid_alive(pid, signature):
    """The process exists, is not a zombie and its command line contains `signature`."""
    if not pid.isdigit():
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(") ", 1)[1].split()[0]
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, IndexError):
        return False
    return state != "Z" and signature in cmdline


def poll(what, check, give_up=lambda: None):
    """Calls check() every 0.1 s until it is true. Exits 1 after HSD_TIMEOUT seconds, or as soon
    as give_up() returns a reason."""
    timeout = float(os.environ.get("HSD_TIMEOUT", "60"))
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        reason = give_up()
        if reason:
            log(f"error: {reason} while waiting for: {what}")
            sys.exit(1)
        if time.monotonic() > deadline:
            log(f"error: timed out after {timeout:g}s waiting for: {what}")
            sys.exit(1)
        time.sleep(0.1)


def cmd_free_ports(count):
    sockets = []
    for _ in range(int(count)):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    print(" ".join(str(s.getsockname()[1]) for s in sockets))


def cmd_healthy(cluster_dir, component):
    sys.exit(0 if Cluster(cluster_dir).healthy(component) else 1)


def cmd_wait_healthy(cluster_dir, component, what=None):
    cluster = Cluster(cluster_dir)
    poll(
        what or f"{component} healthy",
        lambda: cluster.healthy(component),
        give_up=lambda: None if cluster.alive(component) else f"{component} exited",
    )


def cmd_wait_get(cluster_dir, what, path, condition=None):
    cluster = Cluster(cluster_dir)

    def check():
        status, body = cluster.api_get(path)
        if status != 200:
            return False
        if condition is None:
            return True
        conditions = (body.get("status") or {}).get("conditions") or []
        return any(c.get("type") == condition and c.get("status") == "True" for c in conditions)

    poll(what, check)


def node_manifests(state):
    """The ordinary nodes, then the data node."""

    def node(name, spec=None, labels=None):
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": {
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "type": "kwok",
                    **(labels or {}),
                },
                # kwok manages nodes with this annotation; a ttl of 0 keeps node caches fresh.
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            },
            "spec": spec or {},
        }

    nodes = [node(name) for name in state["NODES"].split()]
    # The data node: kwok takes its pods' IPs from spec.podCIDR (not loopback, so that
    # EndpointSlices accept them; data only, never dialled). The taint keeps every pod that does
    # not ask for it away.
    cidr = state["DATA_NODE_CIDR"]
    taint = state["DATA_NODE_TAINT"]
    nodes.append(
        node(
            state["DATA_NODE"],
            spec={
                "podCIDR": cidr,
                "podCIDRs": [cidr],
                "taints": [{"key": taint, "value": "true", "effect": "NoSchedule"}],
            },
            labels={taint: "true"},
        )
    )
    return nodes


def cmd_create_nodes_and_crds(cluster_dir, *crd_files):
    """Creates the nodes and the CRDs (YAML files: the API server reads YAML itself), then waits
    until every CRD is established."""
    cluster = Cluster(cluster_dir)
    for node in node_manifests(cluster.state):
        cluster.create("/api/v1/nodes", json.dumps(node))
    crd_path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    names = []
    for crd_file in crd_files:
        with open(crd_file, "rb") as f:
            names.append(cluster.create(crd_path, f.read(), "application/yaml"))
    for name in names:
        cmd_wait_get(cluster_dir, f"CRD {name} established", f"{crd_path}/{name}", "Established")


def cmd_outdated_replaces(gomod, version):
    with open(gomod) as f:
        staging = re.findall(r"^\s*(k8s\.io/[A-Za-z0-9._-]+) => \./staging/src/k8s\.io/", f.read(), re.M)
    if not staging:
        sys.exit(f"no staging replaces found in {gomod}")
    current = {
        (r["Old"]["Path"], r["New"]["Path"], r["New"].get("Version", ""))
        for r in json.load(sys.stdin).get("Replace") or []
    }
    log(f"  {len(staging)} staging modules in k8s.io/kubernetes' go.mod")
    for module in staging:
        if (module, module, version) not in current:
            print(module)


COMMANDS = {
    "free-ports": cmd_free_ports,
    "healthy": cmd_healthy,
    "wait-healthy": cmd_wait_healthy,
    "wait-get": cmd_wait_get,
    "create-nodes-and-crds": cmd_create_nodes_and_crds,
    "outdated-replaces": cmd_outdated_replaces,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(__doc__)
    COMMANDS[sys.argv[1]](*sys.argv[2:])
