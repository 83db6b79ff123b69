//! The command line as a kubectl user meets it (#17): one-line errors, `--dry-run=server`,
//! `--field-manager`, `-o jsonpath|custom-columns`, `get` beside `kubectl get hsd`, `describe`,
//! JSON logs on every stderr line, `-v 6`, completion through kubectl in bash, the metrics
//! address and Lease namespace of a watcher started off-cluster, and the view/edit roles.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{DynamicObject, PostParams};
use kube::{Api, ResourceExt};
use kubectl_hsd::observe::hsd_resource;
use serde_json::{Value, json};

use crate::common::{
    TestNs, create_hsd, ensure_crd, example, hsd, kubeconfig, kubectl, kubectl_path,
    metrics_addr_of_line, replicas, wait_for,
};

fn with_namespace(mut manifest: Value, ns: &TestNs) -> Value {
    manifest["metadata"]["namespace"] = json!(ns.name);
    manifest
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// No Debug dump of any kind reached the user.
fn assert_no_debug(text: &str) {
    for debug in [
        "Status {",
        "ErrorResponse",
        "Some(",
        "Api(",
        "Service(",
        "Box(",
    ] {
        assert!(!text.contains(debug), "Debug output ({debug}) in: {text}");
    }
}

#[tokio::test]
async fn an_api_error_is_one_line_with_the_servers_reason_and_field_causes() {
    ensure_crd();
    let ns = TestNs::new("cli-errors").await;
    let output = ns.hsd(&["create", "Bad_Name", "--image", "x:1"]);
    assert_eq!(output.status.code(), Some(1));
    let text = stderr(&output);
    assert_eq!(
        text,
        format!(
            "error: creating hotstandbydeployment.apps.paia.tech \"Bad_Name\" in namespace {}: Invalid: HotStandbyDeployment.apps.paia.tech \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')\n",
            ns.name
        )
    );
    // A CEL rule of the CRD, with its field.
    let output = ns.hsd(&[
        "create", "bounds", "--image", "x:1", "--min", "5", "--max", "2",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let text = stderr(&output);
    assert!(
        text.starts_with("error: creating hotstandbydeployment.apps.paia.tech \"bounds\"")
            && text.contains(": Invalid: ")
            && text.contains("spec.minReplicas")
            && text.contains("minReplicas must be less than or equal to maxReplicas")
            && text.lines().count() == 1,
        "{text}"
    );
    // Conflicts and unreachable servers name the fix.
    ns.hsd_ok(&["create", "taken", "--image", "x:1"]);
    let text = stderr(&ns.hsd(&["create", "taken", "--image", "x:1"]));
    assert!(
        text.contains(": AlreadyExists: ") && text.contains("Fix: choose another name"),
        "{text}"
    );
    let unreachable = std::env::temp_dir().join(format!("hsd-{}-unreachable.kubeconfig", ns.name));
    let config = std::fs::read_to_string(kubeconfig())
        .unwrap()
        .lines()
        .map(|line| match line.trim_start().strip_prefix("server:") {
            // A loopback port nothing listens on.
            Some(_) => "    server: https://127.0.0.1:9".to_string(),
            None => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&unreachable, config).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_kubectl-hsd"))
        .args(["get", "--kubeconfig"])
        .arg(&unreachable)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output),
        "error: listing HotStandbyDeployments: cannot reach the API server at https://127.0.0.1:9: connection refused. Is the cluster running, and is the server of the kubeconfig context right? (`kubectl cluster-info`)\n"
    );
    for text in [stderr(&output), text] {
        assert_no_debug(&text);
    }
}

#[tokio::test]
async fn dry_run_server_sends_every_write_and_nothing_persists() {
    ensure_crd();
    let ns = TestNs::new("cli-dry").await;
    let out = ns.hsd_ok(&["create", "web", "--image", "x:1", "--dry-run=server"]);
    assert_eq!(
        out,
        "hotstandbydeployment.apps.paia.tech/web created (server dry run)\n"
    );
    let hsds: Api<DynamicObject> =
        Api::namespaced_with(ns.client.clone(), &ns.name, &hsd_resource());
    assert!(
        hsds.get_opt("web").await.unwrap().is_none(),
        "nothing was created"
    );
    // A bare --dry-run is client: no request at all, the manifest on -o yaml.
    let out = ns.hsd_ok(&["create", "web", "--image", "x:1", "--dry-run", "-o", "yaml"]);
    assert!(
        out.contains("kind: HotStandbyDeployment") && out.contains("name: web"),
        "{out}"
    );
    let usage = ns.hsd(&["create", "web", "--image", "x:1", "--dry-run=maybe"]);
    assert_eq!(usage.status.code(), Some(2), "{}", stderr(&usage));

    // A pass: the API server sees (and validates) every write, and keeps none.
    create_hsd(&ns, &with_namespace(example("hsd-annotation.yaml"), &ns))
        .await
        .unwrap();
    let mut broken = with_namespace(example("hsd-annotation.yaml"), &ns);
    broken["metadata"]["name"] = json!("broken");
    broken["spec"]["podTemplate"]["spec"]["containers"] = json!([{"name": "no-image"}]);
    create_hsd(&ns, &broken).await.unwrap();
    let output = ns.hsd(&["reconcile", "--dry-run=server", "--stats"]);
    assert_eq!(
        output.status.code(),
        Some(1),
        "the broken template is refused"
    );
    let out = stdout(&output);
    assert!(out.contains("(server dry run)"), "{out}");
    let text = stderr(&output);
    assert!(
        text.lines().any(|l| l
            .starts_with(&format!("error: {}/broken: applying Deployment", ns.name))
            && l.contains("image")),
        "the server's own validation: {text}"
    );
    assert!(!text.contains(" 0 writes)"), "writes were sent: {text}");
    assert_no_debug(&text);
    assert_eq!(
        replicas(&ns, "game-ws-workload").await,
        None,
        "nothing persisted"
    );
    let status = crate::common::hsd_status(&ns, "game-ws").await;
    assert!(status.is_null(), "no status persisted: {status}");
}

#[tokio::test]
async fn field_manager_names_the_owner_of_every_write() {
    ensure_crd();
    let ns = TestNs::new("cli-manager").await;
    ns.hsd_ok(&[
        "create",
        "web",
        "--image",
        "x:1",
        "--field-manager",
        "platform-tool",
    ]);
    let hsds: Api<DynamicObject> =
        Api::namespaced_with(ns.client.clone(), &ns.name, &hsd_resource());
    let managers = |object: &DynamicObject| -> Vec<String> {
        object
            .managed_fields()
            .iter()
            .filter_map(|m| m.manager.clone())
            .collect()
    };
    let web = hsds.get("web").await.unwrap();
    assert!(
        managers(&web).contains(&"platform-tool".to_string()),
        "{:?}",
        managers(&web)
    );
    ns.hsd_ok(&["reconcile", "--field-manager", "ops-reconciler"]);
    let deployments: Api<Deployment> = ns.api();
    let child = deployments.get("web-workload").await.unwrap();
    let owners: Vec<String> = child
        .managed_fields()
        .iter()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(owners.contains(&"ops-reconciler".to_string()), "{owners:?}");
    assert!(!owners.contains(&"kubectl-hsd".to_string()), "{owners:?}");
}

#[tokio::test]
async fn get_shows_what_kubectl_get_hsd_shows_and_every_output_format() {
    ensure_crd();
    let ns = TestNs::new("cli-get").await;
    create_hsd(&ns, &with_namespace(example("hsd-annotation.yaml"), &ns))
        .await
        .unwrap();
    ns.hsd_ok(&["create", "fresh", "--image", "x:1", "--max", "4"]);
    ns.hsd_ok(&["reconcile"]);
    // Ages may differ by a second between the two commands: compare all but the last column.
    let without_age = |text: &str| -> Vec<Vec<String>> {
        text.lines()
            .map(|l| {
                let mut cells: Vec<String> = l.split_whitespace().map(String::from).collect();
                cells.pop();
                cells
            })
            .collect()
    };
    for extra in [&[][..], &["-o", "wide"]] {
        let mut args = vec!["get", "hsd", "-n", &ns.name];
        args.extend(extra);
        let theirs = kubectl(&args);
        assert!(theirs.status.success(), "{}", stderr(&theirs));
        let mut ours_args = vec!["get"];
        ours_args.extend(extra);
        let ours = ns.hsd_ok(&ours_args);
        assert_eq!(
            without_age(&ours),
            without_age(&stdout(&theirs)),
            "kubectl hsd get{extra:?}:\n{ours}\nkubectl get hsd{extra:?}:\n{}",
            stdout(&theirs)
        );
        // The same column positions, not only the same words.
        let header = |text: &str| text.lines().next().unwrap_or_default().to_string();
        assert_eq!(header(&ours), header(&stdout(&theirs)));
    }
    assert_eq!(
        ns.hsd_ok(&["get", "-o", "jsonpath={.items[*].metadata.name}"]),
        "fresh game-ws",
        "like kubectl: no newline added"
    );
    assert_eq!(
        ns.hsd_ok(&[
            "get",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}:{.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}"
        ]),
        "fresh:True\ngame-ws:True\n"
    );
    assert_eq!(
        ns.hsd_ok(&["get", "-o", "custom-columns=NAME:.metadata.name,MAX:.spec.maxReplicas,PAUSED:.metadata.annotations.paia\\.tech/paused"]),
        "NAME      MAX   PAUSED\nfresh     4     <none>\ngame-ws   50    <none>\n"
    );
    assert_eq!(
        ns.hsd_ok(&["get", "fresh", "-o", "name"]),
        "hotstandbydeployment.apps.paia.tech/fresh\n"
    );
    let output = ns.hsd(&["get", "-o", "jsonpath={.items[0"]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "a bad template is a usage error"
    );
    let output = ns.hsd(&["reconcile", "-o", "jsonpath={.items[*].name}"]);
    assert_eq!(stdout(&output), "fresh game-ws", "{}", stderr(&output));
}

#[tokio::test]
async fn describe_shows_labels_annotations_conditions_and_events_like_kubectl() {
    ensure_crd();
    let ns = TestNs::new("cli-describe").await;
    let mut manifest = with_namespace(example("hsd-annotation.yaml"), &ns);
    manifest["metadata"]["labels"] = json!({"team": "games", "tier": "edge"});
    manifest["metadata"]["annotations"] = json!({"owner": "alice"});
    create_hsd(&ns, &manifest).await.unwrap();
    ns.hsd_ok(&["reconcile"]);
    let text = ns.hsd_ok(&["describe", "game-ws"]);
    for needle in [
        "Labels:       team=games\n              tier=edge\n",
        "Annotations:  owner: alice\n",
        "API Version:  apps.paia.tech/v1alpha1\n",
        "Conditions:\n  Type ",
        "Events:\n  Type    Reason   Age",
        "  ----    ------   ---",
        "paia.tech/kubectl-hsd",
        "created Deployment game-ws-workload with 3 replicas",
    ] {
        assert!(text.contains(needle), "{needle:?} in:\n{text}");
    }
    let events = text.split("Events:\n").nth(1).unwrap();
    let header: Vec<&str> = events.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["Type", "Reason", "Age", "From", "Message"]);
    let created = events.lines().find(|l| l.contains("Created")).unwrap();
    let cells: Vec<&str> = created.split_whitespace().collect();
    assert_eq!(&cells[..2], ["Normal", "Created"]);
    assert!(
        cells[2].ends_with('s') || cells[2].ends_with('m'),
        "an age: {created}"
    );
    assert_eq!(cells[3], "paia.tech/kubectl-hsd", "{created}");
}

/// Every line of `text` is a JSON object with a level and a message.
fn assert_every_line_is_json(text: &str) -> Vec<Value> {
    assert!(!text.trim().is_empty(), "no output at all");
    text.lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}\nin:\n{text}"));
            assert!(value["level"].is_string(), "{line}");
            assert!(value["fields"]["message"].is_string(), "{line}");
            value
        })
        .collect()
}

#[tokio::test]
async fn log_format_json_makes_every_stderr_line_json() {
    ensure_crd();
    let ns = TestNs::new("cli-json").await;
    create_hsd(&ns, &with_namespace(example("hsd-annotation.yaml"), &ns))
        .await
        .unwrap();
    // A watcher from start to SIGTERM, at -v 6 (debug, and every request).
    let log = std::env::temp_dir().join(format!("hsd-{}-json.log", ns.name));
    let mut child = Command::new(env!("CARGO_BIN_EXE_kubectl-hsd"))
        .args([
            "reconcile",
            "--watch",
            "-n",
            &ns.name,
            "--metrics-addr",
            "127.0.0.1:0",
            "--lease-duration",
            "3s",
            "--log-format",
            "json",
            "-v",
            "6",
        ])
        .env("KUBECONFIG", kubeconfig())
        .env_remove("POD_NAME")
        .env_remove("POD_NAMESPACE")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for(
        "the watcher to scale the HSD",
        Duration::from_secs(30),
        || async { (replicas(&ns, "game-ws-workload").await == Some(3)).then_some(()) },
    )
    .await;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "{exit}");
    let text = std::fs::read_to_string(&log).unwrap();
    let lines = assert_every_line_is_json(&text);
    let messages: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["fields"]["message"].as_str())
        .collect();
    for expected in [
        "serving /metrics",
        "waiting for Lease",
        "leading: reconciling",
        "shutting down",
        "released Lease",
    ] {
        assert!(
            messages.iter().any(|m| m.starts_with(expected)),
            "{expected:?} in {messages:?}"
        );
    }
    assert!(
        text.lines().any(|l| metrics_addr_of_line(l).is_some()),
        "the fixture reads the JSON line"
    );
    assert!(
        lines.iter().any(|l| l["level"] == "DEBUG"),
        "-v 6 logs debug lines too"
    );

    // A one-shot pass with a failure, a usage error, and a command error.
    let mut broken = with_namespace(example("hsd-annotation.yaml"), &ns);
    broken["metadata"]["name"] = json!("broken");
    broken["spec"]["podTemplate"]["spec"]["containers"] = json!([{"name": "no-image"}]);
    create_hsd(&ns, &broken).await.unwrap();
    let output = ns.hsd(&["reconcile", "--stats", "--log-format", "json", "-v", "1"]);
    assert_eq!(output.status.code(), Some(1));
    let lines = assert_every_line_is_json(&stderr(&output));
    assert!(lines.iter().any(|l| {
        l["level"] == "ERROR"
            && l["fields"]["message"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{}/broken: ", ns.name))
    }));
    assert!(lines.iter().any(|l| {
        l["fields"]["message"]
            .as_str()
            .unwrap()
            .starts_with("stats: ")
    }));
    let output = hsd(&["reconcile", "--no-such-flag", "--log-format", "json"]);
    assert_eq!(output.status.code(), Some(2));
    assert_every_line_is_json(&stderr(&output));
    let output = ns.hsd(&["get", "nothing", "--log-format", "json"]);
    assert_eq!(output.status.code(), Some(1));
    let lines = assert_every_line_is_json(&stderr(&output));
    assert_eq!(lines[0]["level"], "ERROR");
    // The same lines read as plain text in text mode.
    let output = ns.hsd(&["get", "nothing"]);
    assert_eq!(
        stderr(&output),
        "error: hotstandbydeployments.apps.paia.tech \"nothing\" not found\n"
    );
}

#[tokio::test]
async fn v6_logs_one_line_per_api_request_like_kubectl() {
    ensure_crd();
    let ns = TestNs::new("cli-v6").await;
    let output = ns.hsd(&["get", "-v", "6"]);
    assert!(output.status.success());
    let text = stderr(&output);
    assert!(
        text.lines().any(|l| l.contains("GET https://127.0.0.1:")
            && l.contains(&format!(
                "/apis/apps.paia.tech/v1alpha1/namespaces/{}/hotstandbydeployments",
                ns.name
            ))
            && l.contains("200 OK in ")),
        "{text}"
    );
    let quiet = ns.hsd(&["get", "-v", "5"]);
    assert!(
        !stderr(&quiet).contains("GET https://"),
        "{}",
        stderr(&quiet)
    );
}

/// A bash with kubectl's own completion loaded (and bash-completion, which it needs), and
/// `kubectl`, `kubectl-hsd` and `kubectl_complete-hsd` on PATH, as krew would lay them out.
fn complete_in_bash(line: &str, setup: &str) -> Vec<String> {
    let bash_completion = "/usr/share/bash-completion/bash_completion";
    assert!(
        std::path::Path::new(bash_completion).exists(),
        "{bash_completion} is missing: apt-get install bash-completion (hack/test.sh does)"
    );
    let bin = std::env::temp_dir().join(format!("hsd-completion-bin-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&bin);
    for (name, target) in [
        ("kubectl", kubectl_path()),
        ("kubectl-hsd", env!("CARGO_BIN_EXE_kubectl-hsd").into()),
        (
            "kubectl_complete-hsd",
            env!("CARGO_BIN_EXE_kubectl_complete-hsd").into(),
        ),
    ] {
        let link = bin.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(target, &link).unwrap();
    }
    let script = format!(
        r#"
source {bash_completion}
{setup}
COMP_LINE='{line}'
COMP_POINT=${{#COMP_LINE}}
read -r -a COMP_WORDS <<< "$COMP_LINE"
[[ $COMP_LINE == *" " ]] && COMP_WORDS+=("")
COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
COMPREPLY=()
"$COMPLETER" "${{COMP_WORDS[0]}}" "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}" 2>/dev/null
printf '%s\n' "${{COMPREPLY[@]}}"
"#
    );
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let started = Instant::now();
    let output = Command::new("bash")
        .args(["-c", &script])
        .env("PATH", path)
        .env("KUBECONFIG", kubeconfig())
        .output()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "completion took {:?}",
        started.elapsed()
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.trim().to_string())
        .collect()
}

#[tokio::test]
async fn kubectl_hsd_tab_completes_subcommands_flags_names_and_namespaces_in_bash() {
    ensure_crd();
    let ns = TestNs::new("cli-complete").await;
    ns.hsd_ok(&["create", "alpha", "--image", "x:1"]);
    ns.hsd_ok(&["create", "beta", "--image", "x:1"]);
    // Through kubectl: kubectl's completion runs kubectl_complete-hsd.
    let kubectl = "source <(kubectl completion bash); COMPLETER=__start_kubectl";
    let subcommands = complete_in_bash("kubectl hsd ", kubectl);
    for expected in [
        "get",
        "describe",
        "reconcile",
        "mark-busy",
        "install",
        "completion",
    ] {
        assert!(
            subcommands.contains(&expected.to_string()),
            "{subcommands:?}"
        );
    }
    assert!(
        !subcommands.iter().any(|c| c.starts_with('-')),
        "flags only after -: {subcommands:?}"
    );
    assert_eq!(
        complete_in_bash("kubectl hsd reconcile --dry", kubectl),
        ["--dry-run"]
    );
    let names = complete_in_bash(&format!("kubectl hsd describe -n {} ", ns.name), kubectl);
    assert_eq!(names, ["alpha", "beta"]);
    let names = complete_in_bash(&format!("kubectl hsd get -n {} b", ns.name), kubectl);
    assert_eq!(names, ["beta"]);
    let namespaces = complete_in_bash("kubectl hsd get -n cli-comp", kubectl);
    assert!(namespaces.contains(&ns.name), "{namespaces:?}");
    // kubectl-hsd typed directly, with `kubectl-hsd completion bash`.
    let direct = "source <(kubectl-hsd completion bash); COMPLETER=_clap_complete_kubectl_hsd";
    let names = complete_in_bash(&format!("kubectl-hsd explain -n {} al", ns.name), direct);
    assert_eq!(names, ["alpha"]);
    let subcommands = complete_in_bash("kubectl-hsd mark-", direct);
    assert_eq!(subcommands, ["mark-busy", "mark-idle"]);
}

#[tokio::test]
async fn a_watcher_off_cluster_serves_metrics_on_loopback_and_a_second_one_still_starts() {
    ensure_crd();
    let ns = TestNs::new("cli-metrics").await;
    let start = |identity: &str| {
        let log = std::env::temp_dir().join(format!("hsd-{}-{identity}.log", ns.name));
        let child = Command::new(env!("CARGO_BIN_EXE_kubectl-hsd"))
            .args([
                "reconcile",
                "--watch",
                "-n",
                &ns.name,
                "--leader-elect=false",
                "--identity",
                identity,
            ])
            .env("KUBECONFIG", kubeconfig())
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("POD_NAMESPACE")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        (child, log)
    };
    let addr_of = |log: &std::path::Path| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if let Some(addr) = text.lines().find_map(metrics_addr_of_line) {
                return addr.parse::<std::net::SocketAddr>().unwrap();
            }
            assert!(Instant::now() < deadline, "no metrics line:\n{text}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let (mut first, first_log) = start("first");
    let first_addr = addr_of(&first_log);
    let (mut second, second_log) = start("second");
    let second_addr = addr_of(&second_log);
    for addr in [first_addr, second_addr] {
        assert!(
            addr.ip().is_loopback(),
            "{addr}: never every interface off-cluster"
        );
    }
    assert_ne!(first_addr, second_addr);
    std::thread::sleep(Duration::from_millis(500));
    for child in [&mut first, &mut second] {
        assert!(child.try_wait().unwrap().is_none(), "both keep running");
    }
    let (status, _) = crate::common::http_get(&format!("http://{second_addr}/healthz"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    for child in [&mut first, &mut second] {
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[tokio::test]
async fn a_laptop_watchers_lease_namespace_is_created_or_falls_back_to_the_kubeconfigs() {
    let ns = TestNs::new("cli-lease").await;
    let admin = kubectl_hsd::client::load_config(&kubectl_hsd::client::ClientOptions {
        kubeconfig: Some(kubeconfig().to_path_buf()),
        ..Default::default()
    })
    .await
    .unwrap();
    let wanted = format!("{}-lease", ns.name);
    let chosen = kubectl_hsd::cli::laptop_lease_namespace(&admin, &wanted, "default")
        .await
        .unwrap();
    assert_eq!(chosen, wanted, "created");
    let namespaces: Api<Namespace> = Api::all(ns.client.clone());
    assert!(namespaces.get_opt(&wanted).await.unwrap().is_some());
    let _ = namespaces.delete(&wanted, &Default::default()).await;

    // An identity that may read namespaces but not create them: its kubeconfig's namespace
    // instead. (One that may not even read them cannot tell; it keeps the default and the
    // lease manager names what is missing.)
    let accounts: Api<ServiceAccount> = ns.api();
    accounts
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "dev"}})).unwrap(),
        )
        .await
        .unwrap();
    let reader = format!("{}-ns-reader", ns.name);
    let roles: Api<ClusterRole> = Api::all(ns.client.clone());
    let role_bindings: Api<ClusterRoleBinding> = Api::all(ns.client.clone());
    roles
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": reader},
                "rules": [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"]}],
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    role_bindings
        .create(&PostParams::default(), &serde_json::from_value(json!({
            "metadata": {"name": reader},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": reader},
            "subjects": [{"kind": "ServiceAccount", "name": "dev", "namespace": ns.name}],
        })).unwrap())
        .await
        .unwrap();
    let token = crate::security::token_for(&ns, "dev", None).await;
    let path = crate::security::token_kubeconfig(&ns, "dev", &token);
    let restricted = kubectl_hsd::client::load_config(&kubectl_hsd::client::ClientOptions {
        kubeconfig: Some(path),
        ..Default::default()
    })
    .await
    .unwrap();
    let other = format!("{}-nope", ns.name);
    let chosen = kubectl_hsd::cli::laptop_lease_namespace(&restricted, &other, &ns.name)
        .await
        .unwrap();
    assert_eq!(chosen, ns.name, "fell back");
    assert!(namespaces.get_opt(&other).await.unwrap().is_none());
    let _ = role_bindings.delete(&reader, &Default::default()).await;
    let _ = roles.delete(&reader, &Default::default()).await;
}

#[tokio::test]
async fn namespace_users_may_view_and_edit_hsds_through_the_aggregated_roles() {
    ensure_crd();
    let ns = TestNs::new("cli-roles").await;
    let bindings: Api<RoleBinding> = ns.api();
    for (user, role) in [("viewer", "view"), ("editor", "edit")] {
        let binding: RoleBinding = serde_json::from_value(json!({
            "metadata": {"name": user},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "User", "name": user, "apiGroup": "rbac.authorization.k8s.io"}],
        }))
        .unwrap();
        bindings
            .create(&PostParams::default(), &binding)
            .await
            .unwrap();
    }
    let can = |user: &str, verb: &str| {
        let output = kubectl(&[
            "auth",
            "can-i",
            verb,
            "hotstandbydeployments.apps.paia.tech",
            "-n",
            &ns.name,
            "--as",
            user,
        ]);
        String::from_utf8_lossy(&output.stdout).trim() == "yes"
    };
    // The aggregation controller fills the built-in roles shortly after install.
    wait_for("the aggregated rules", Duration::from_secs(20), || async {
        (can("viewer", "list") && can("editor", "create")).then_some(())
    })
    .await;
    assert!(can("viewer", "get") && can("viewer", "watch"));
    assert!(
        !can("viewer", "create") && !can("viewer", "delete"),
        "view is read-only"
    );
    assert!(can("editor", "delete") && can("editor", "patch") && can("editor", "list"));
    let status = kubectl(&[
        "auth",
        "can-i",
        "patch",
        "hotstandbydeployments.apps.paia.tech",
        "--subresource",
        "status",
        "-n",
        &ns.name,
        "--as",
        "editor",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&status.stdout).trim(),
        "no",
        "the status stays the reconciler's"
    );
}
