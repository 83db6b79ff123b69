//! The benchmark's own local control plane (hack/cluster.sh in its own cluster dir), or an
//! existing one named by `--kubeconfig`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::util::{Context, Res, say};

pub struct Cluster {
    pub repo: PathBuf,
    /// The cluster dir when this process started the cluster (and so stops it).
    pub dir: Option<PathBuf>,
    pub kubeconfig: PathBuf,
    /// Component flags this run added (reported with the results).
    pub tuning: Vec<String>,
    /// The pod IP range of a cluster this process started.
    pub pod_cidr: Option<String>,
}

/// Controller-manager and scheduler client limits. The defaults (20 and 50 QPS) make the
/// population of 20,000 pods take most of an hour; the product's numbers do not depend on them.
pub const CONTROLLER_QPS: u32 = 300;
/// etcd's space quota: the default 2 GiB fills up while 100,000 pods are created and made ready
/// (every pod is written several times between two compactions).
pub const ETCD_QUOTA_BYTES: u64 = 8 << 30;

/// The benchmark's own pod IP range (the probe servers bind on pod IPs, which must not be those
/// of another cluster on this machine; hack/cluster.sh derives 127.10-89.x.x from the dir): a
/// /16, or a /15 when more pods than a /16 holds are planned. `HSD_POD_CIDR` overrides it.
pub fn pod_cidr(most_pods: usize) -> String {
    if let Ok(cidr) = std::env::var("HSD_POD_CIDR") {
        return cidr;
    }
    if most_pods > 60_000 {
        "127.90.0.0/15".into()
    } else {
        "127.91.0.0/16".into()
    }
}

impl Cluster {
    /// Starts a fresh cluster in `dir` (whatever was there is torn down first), with room for
    /// `most_pods` pods. Unless `keep`, the cluster script's watchdog stops it if this process
    /// dies without cleaning up.
    pub fn up(repo: &Path, dir: &Path, keep: bool, most_pods: usize) -> Res<Self> {
        let script = repo.join("hack/cluster.sh");
        let mut cluster = Self {
            repo: repo.to_path_buf(),
            dir: Some(dir.to_path_buf()),
            kubeconfig: PathBuf::new(),
            tuning: Vec::new(),
            pod_cidr: Some(pod_cidr(most_pods)),
        };
        cluster.script(&["down"], false)?;
        say(format!("starting the control plane in {}", dir.display()));
        let mut up = cluster.command(&script, &["up"]);
        if !keep {
            up.env("HSD_CLUSTER_OWNER_PID", std::process::id().to_string());
        }
        let output = up
            .stderr(Stdio::inherit())
            .output()
            .ctx("running hack/cluster.sh up")?;
        if !output.status.success() {
            return Err(format!(
                "hack/cluster.sh up failed ({}); if binaries are missing run hack/cluster.sh build",
                output.status
            ));
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let path = stdout
            .lines()
            .last()
            .ok_or("hack/cluster.sh up printed no kubeconfig path")?;
        cluster.kubeconfig = PathBuf::from(path.trim());
        cluster.tune()?;
        Ok(cluster)
    }

    /// Uses a running cluster; it is neither tuned nor stopped.
    pub fn existing(repo: &Path, kubeconfig: &Path) -> Self {
        Self {
            repo: repo.to_path_buf(),
            dir: None,
            kubeconfig: kubeconfig.to_path_buf(),
            tuning: Vec::new(),
            pod_cidr: None,
        }
    }

    fn command(&self, program: &Path, args: &[&str]) -> Command {
        let mut command = Command::new(program);
        command.args(args).stdin(Stdio::null());
        if let Some(dir) = &self.dir {
            command.env("HSD_CLUSTER_DIR", dir);
        }
        if let Some(cidr) = &self.pod_cidr {
            command.env("HSD_POD_CIDR", cidr);
        }
        command
    }

    fn script(&self, args: &[&str], required: bool) -> Res<()> {
        let status = self
            .command(&self.repo.join("hack/cluster.sh"), args)
            .stdout(Stdio::null())
            .stderr(if required {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .status()
            .ctx(format!("running hack/cluster.sh {}", args.join(" ")))?;
        if required && !status.success() {
            return Err(format!(
                "hack/cluster.sh {} failed ({status})",
                args.join(" ")
            ));
        }
        Ok(())
    }

    /// Adds flags to components' recorded args in this run's cluster dir (hack/cluster.sh has no
    /// variable for them) and restarts them: the controller-manager's and scheduler's API client
    /// limits, and etcd's space quota. Nothing else about the cluster changes.
    fn tune(&mut self) -> Res<()> {
        let Some(dir) = self.dir.clone() else {
            return Ok(());
        };
        let qps = CONTROLLER_QPS;
        for (component, flags) in [
            (
                "etcd",
                vec![format!("--quota-backend-bytes={ETCD_QUOTA_BYTES}")],
            ),
            (
                "controller-manager",
                vec![
                    format!("--kube-api-qps={qps}"),
                    format!("--kube-api-burst={}", qps * 2),
                    "--concurrent-replicaset-syncs=10".to_string(),
                    "--concurrent-deployment-syncs=10".to_string(),
                ],
            ),
            (
                "scheduler",
                vec![
                    format!("--kube-api-qps={qps}"),
                    format!("--kube-api-burst={}", qps * 2),
                ],
            ),
        ] {
            let path = dir.join("args").join(format!("{component}.args"));
            let mut args =
                std::fs::read_to_string(&path).ctx(format!("reading {}", path.display()))?;
            for flag in &flags {
                args.push_str(flag);
                args.push('\n');
                self.tuning.push(format!("{component} {flag}"));
            }
            std::fs::write(&path, args).ctx(format!("writing {}", path.display()))?;
            self.script(&["restart", component], true)?;
        }
        say(format!("tuned: {}", self.tuning.join(", ")));
        Ok(())
    }

    pub async fn client(&self) -> Res<Client> {
        kubectl_hsd::client::install_crypto_provider();
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig)
            .ctx(format!("reading {}", self.kubeconfig.display()))?;
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .ctx("loading the kubeconfig")?;
        kubectl_hsd::client::nodelay_client(config).map_err(|e| format!("building a client: {e}"))
    }

    /// Stops the cluster if this process started it.
    pub fn down(&mut self) {
        if let Some(dir) = self.dir.take() {
            say(format!("stopping the control plane in {}", dir.display()));
            self.dir = Some(dir);
            let _ = self.script(&["down"], false);
            self.dir = None;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.down();
    }
}
