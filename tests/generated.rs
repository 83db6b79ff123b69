//! Generated files are build output: the committed copies must equal what the code renders.
//! `HSD_REGENERATE=1 cargo test --test generated` rewrites them.

use std::path::Path;

use kubectl_hsd::api::hsd::HotStandbyDeployment;
use kubectl_hsd::manifests::OperatorMode;

fn check(relative: &str, rendered: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    if std::env::var_os("HSD_REGENERATE").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, rendered).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == rendered,
        "{relative} differs from what the code renders: run `HSD_REGENERATE=1 cargo test --test generated` and commit"
    );
}

#[test]
fn crd_yaml_is_up_to_date() {
    check(
        "crd/hotstandbydeployment.yaml",
        &kubectl_hsd::manifests::crd_yaml(),
    );
}

#[test]
fn hsj_crd_yaml_is_up_to_date() {
    check(
        "crd/hotstandbyjob.yaml",
        &kubectl_hsd::manifests::hsj_crd_yaml(),
    );
}

#[test]
fn cronjob_manifests_are_up_to_date() {
    check(
        "cronjob/cronjob.yaml",
        &kubectl_hsd::manifests::default_operator_yaml(OperatorMode::Cronjob),
    );
    check(
        "cronjob/deployment.yaml",
        &kubectl_hsd::manifests::default_operator_yaml(OperatorMode::Deployment),
    );
}

#[test]
fn the_examples_parse_as_hotstandbydeployments() {
    for name in ["hsd-annotation.yaml", "hsd-http.yaml"] {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("examples")
                .join(name),
        )
        .unwrap();
        let hsd: HotStandbyDeployment =
            serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(hsd.spec.idle_target, 3, "{name}");
        assert_eq!(
            (hsd.spec.min_replicas, hsd.spec.max_replicas),
            (0, Some(50)),
            "{name}"
        );
        assert_eq!(
            kubectl_hsd::plan::validate_spec(&hsd.spec),
            Ok(()),
            "{name}"
        );
    }
}

#[test]
fn the_cronjob_runs_one_pass_a_minute_as_non_root_with_least_privilege() {
    let documents: Vec<serde_json::Value> = serde_saphyr::from_multiple(
        &kubectl_hsd::manifests::default_operator_yaml(OperatorMode::Cronjob),
    )
    .unwrap();
    let cronjob = documents
        .iter()
        .find(|d| d["kind"] == "CronJob")
        .expect("a CronJob");
    assert_eq!(cronjob["spec"]["schedule"], "* * * * *");
    assert_eq!(cronjob["spec"]["concurrencyPolicy"], "Forbid");
    let pod = &cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let container = &pod["containers"][0];
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["args"],
        serde_json::json!(["reconcile", "--deadline", "50s", "--all-namespaces"])
    );
    // The pass ends within its own deadline, inside the Job's: a hung endpoint can never get
    // the Job killed before the other HSDs are written.
    let pass_deadline = humantime::parse_duration(container["args"][2].as_str().unwrap()).unwrap();
    let job_deadline = cronjob["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"]
        .as_u64()
        .unwrap();
    assert!(
        pass_deadline.as_secs() < job_deadline,
        "{pass_deadline:?} vs {job_deadline}s"
    );
    assert!(
        container["env"].to_string().contains("POD_NAMESPACE"),
        "the pass finds the watcher's Lease in its own namespace"
    );
    let role = documents
        .iter()
        .find(|d| {
            d["kind"] == "ClusterRole"
                && d["metadata"]["name"]
                    == kubectl_hsd::manifests::cluster_object_name("hsd-system").as_str()
        })
        .expect("the reconciler's ClusterRole");
    for rule in role["rules"].as_array().unwrap() {
        for verb in rule["verbs"].as_array().unwrap() {
            // delete: Jobs, which HotStandbyJobs retire, and drained pods (each deletion a
            // compare-and-swap on what was read).
            let allowed: &[&str] = if rule["resources"] == serde_json::json!(["jobs"]) {
                &["list", "get", "create", "delete"]
            } else if rule["resources"] == serde_json::json!(["pods"]) {
                &["list", "get", "patch", "delete"]
            } else {
                &["list", "get", "create", "patch"]
            };
            assert!(
                allowed.contains(&verb.as_str().unwrap()),
                "unexpected verb {verb} in {rule}"
            );
        }
        assert!(
            !rule["resources"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r == "*"),
            "no wildcards: {rule}"
        );
        // delete: only pods (the ones a scale-down drained) and Jobs (a HotStandbyJob's idle
        // workers), each with a precondition.
        if rule["verbs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v == "delete")
        {
            assert!(
                rule["resources"] == serde_json::json!(["pods"])
                    || rule["resources"] == serde_json::json!(["jobs"]),
                "{rule}"
            );
        }
    }
}

#[test]
fn the_watch_deployment_is_highly_available_non_root_and_probed() {
    let documents: Vec<serde_json::Value> = serde_saphyr::from_multiple(
        &kubectl_hsd::manifests::default_operator_yaml(OperatorMode::Deployment),
    )
    .unwrap();
    let deployment = documents
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let container = &pod["containers"][0];
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(&args[..2], ["reconcile", "--watch"]);
    assert!(args.contains(&"--all-namespaces"), "{args:?}");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["ports"][0]["containerPort"], 8080);
    let lease_role = documents
        .iter()
        .find(|d| d["kind"] == "Role")
        .expect("a lease Role");
    assert_eq!(
        lease_role["rules"][0]["resources"],
        serde_json::json!(["leases"])
    );
    assert_eq!(
        lease_role["rules"][0]["resourceNames"],
        serde_json::json!(["kubectl-hsd"]),
        "get/update/patch on the one Lease by name"
    );
    assert_eq!(
        lease_role["metadata"]["namespace"], "hsd-system",
        "lease rights only in the operator namespace"
    );
}

#[test]
fn namespace_scoped_installs_use_a_role_and_watch_one_namespace() {
    use kubectl_hsd::manifests::{OperatorOptions, operator};
    for mode in [OperatorMode::Cronjob, OperatorMode::Deployment] {
        let documents = operator(&OperatorOptions {
            namespace_scoped: true,
            ..OperatorOptions::new(mode, "team-a", "img:1")
        });
        assert!(
            !documents
                .iter()
                .any(|d| d["kind"] == "ClusterRole" || d["kind"] == "ClusterRoleBinding"),
            "{mode:?}"
        );
        let role = documents
            .iter()
            .find(|d| d["kind"] == "Role")
            .expect("a Role");
        assert_eq!(role["metadata"]["namespace"], "team-a");
        let rules = role["rules"].as_array().unwrap();
        assert!(
            rules.iter().any(|r| r["resources"][0] == "leases"),
            "the lease rights are in the same Role"
        );
        let workload = documents
            .iter()
            .find(|d| d["kind"] == "CronJob" || d["kind"] == "Deployment")
            .unwrap();
        let text = workload.to_string();
        assert!(
            text.contains("\"--namespace\",\"team-a\"") && !text.contains("--all-namespaces"),
            "{text}"
        );
    }
}

#[test]
fn a_sharded_watcher_takes_its_replicas_and_shards_and_may_keep_member_leases() {
    use kubectl_hsd::manifests::{OperatorOptions, operator};
    let documents = operator(&OperatorOptions {
        mode: OperatorMode::Deployment,
        replicas: 3,
        shards: 4,
        ..OperatorOptions::default()
    });
    let deployment = documents
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .unwrap();
    assert_eq!(deployment["spec"]["replicas"], 3);
    let args = deployment["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(args.contains("\"--shards\",\"4\""), "{args}");
    let lease_role = documents.iter().find(|d| d["kind"] == "Role").unwrap();
    let verbs = lease_role["rules"][0]["verbs"].to_string();
    assert!(
        verbs.contains("list") && verbs.contains("delete"),
        "{verbs}"
    );
    // Unsharded, the Lease stays named.
    let plain = operator(&OperatorOptions {
        mode: OperatorMode::Deployment,
        ..OperatorOptions::default()
    });
    let role = plain.iter().find(|d| d["kind"] == "Role").unwrap();
    assert_eq!(
        role["rules"][0]["resourceNames"],
        serde_json::json!(["kubectl-hsd"])
    );
    assert!(
        !plain
            .iter()
            .find(|d| d["kind"] == "Deployment")
            .unwrap()
            .to_string()
            .contains("--shards")
    );
}

#[test]
fn the_helm_chart_is_up_to_date() {
    for (path, content) in kubectl_hsd::manifests::package::helm_chart_files() {
        check(&path, &content);
    }
}

#[test]
fn the_hsj_examples_parse_and_are_valid() {
    use kubectl_hsd::api::hsj::HotStandbyJob;
    for (name, mode) in [
        ("hsj-exec.yaml", kubectl_hsd::api::probe::ProbeMode::Exec),
        (
            "hsj-shorthand.yaml",
            kubectl_hsd::api::probe::ProbeMode::Annotation,
        ),
    ] {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("examples")
                .join(name),
        )
        .unwrap();
        let hsj: HotStandbyJob =
            serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(hsj.spec.busy_probe.mode, mode, "{name}");
        let hsj_name = hsj.metadata.name.clone().unwrap();
        assert_eq!(
            kubectl_hsd::plan::hsj::validate("ns", &hsj_name, &hsj.spec),
            Ok(()),
            "{name}"
        );
    }
}

#[test]
fn the_kustomize_tree_is_up_to_date() {
    for (path, content) in kubectl_hsd::manifests::package::kustomize_files() {
        check(&path, &content);
    }
}

#[test]
fn only_the_reconciler_may_exec_into_pods() {
    for mode in [OperatorMode::Cronjob, OperatorMode::Deployment] {
        let documents: Vec<serde_json::Value> =
            serde_saphyr::from_multiple(&kubectl_hsd::manifests::default_operator_yaml(mode))
                .unwrap();
        let exec_rules: Vec<(&serde_json::Value, &serde_json::Value)> = documents
            .iter()
            .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
            .flat_map(|d| {
                d["rules"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(move |rule| (d, rule))
            })
            .filter(|(_, rule)| rule["resources"].to_string().contains("pods/exec"))
            .collect();
        assert_eq!(exec_rules.len(), 1, "{mode:?}: one rule grants pods/exec");
        let (role, rule) = exec_rules[0];
        assert_eq!(role["kind"], "ClusterRole", "the reconciler's own role");
        assert_eq!(rule["verbs"], serde_json::json!(["get", "create"]));
        assert_eq!(rule["resources"], serde_json::json!(["pods/exec"]));
        let bound_to: Vec<&serde_json::Value> = documents
            .iter()
            .filter(|d| {
                d["kind"] == "ClusterRoleBinding"
                    && d["roleRef"]["name"] == role["metadata"]["name"]
            })
            .flat_map(|d| d["subjects"].as_array().unwrap())
            .collect();
        assert_eq!(bound_to.len(), 1, "{mode:?}");
        assert_eq!(bound_to[0]["name"], "kubectl-hsd");
        assert_eq!(bound_to[0]["kind"], "ServiceAccount");
    }
}

#[test]
fn the_pod_policy_covers_hsd_and_hsj_workers_alike() {
    let documents = kubectl_hsd::manifests::pod_policy("hsd-system", "paia.tech/busy", false);
    let policies: Vec<&serde_json::Value> = documents
        .iter()
        .filter(|d| d["kind"] == "ValidatingAdmissionPolicy")
        .collect();
    let labels: Vec<&serde_json::Value> = policies
        .iter()
        .map(|p| &p["spec"]["matchConstraints"]["objectSelector"]["matchExpressions"][0]["key"])
        .collect();
    assert_eq!(
        labels,
        [
            kubectl_hsd::labels::HSD_LABEL,
            kubectl_hsd::labels::HSJ_LABEL
        ]
    );
    // The same rules for both.
    assert_eq!(
        policies[0]["spec"]["validations"],
        policies[1]["spec"]["validations"]
    );
    let bindings: Vec<&serde_json::Value> = documents
        .iter()
        .filter(|d| d["kind"] == "ValidatingAdmissionPolicyBinding")
        .collect();
    assert_eq!(bindings.len(), 2);
    for (policy, binding) in policies.iter().zip(bindings) {
        assert_eq!(binding["spec"]["policyName"], policy["metadata"]["name"]);
    }
}

/// `kubectl hsd proxy --zpa-manifest` for the ZPA README's example (`myapp`, port 80).
fn proxy_manifest(extra: &[&str]) -> Vec<serde_json::Value> {
    use clap::Parser;
    let mut args = vec![
        "kubectl-hsd",
        "proxy",
        "--zpa-manifest",
        "-n",
        "apps",
        "--address",
        ":80",
        "--deployment",
        "myapp",
        "--target",
        "myapp:80",
    ];
    args.extend(extra);
    let cli = kubectl_hsd::cli::Cli::try_parse_from(args).unwrap();
    let kubectl_hsd::cli::Command::Proxy(proxy) = cli.command else {
        panic!("a proxy command")
    };
    let config = proxy.config().unwrap();
    kubectl_hsd::proxy::manifest::render(&proxy, &config, "apps").unwrap()
}

#[test]
fn the_zpa_example_manifest_is_up_to_date() {
    check(
        "examples/proxy-zpa.yaml",
        &format!(
            "# `kubectl hsd proxy --zpa-manifest -n apps --address :80 --deployment myapp --target myapp:80`:\n\
             # the objects that replace the Zero Pod Autoscaler example of ZPA's README.\n{}",
            kubectl_hsd::manifests::to_yaml_documents(&proxy_manifest(&[]))
        ),
    );
}

#[test]
fn the_proxy_manifest_is_least_privilege_non_root_and_its_args_parse() {
    use clap::Parser;
    let documents = proxy_manifest(&["--ttl", "30m", "--allow-dial-cidr", "10.0.0.0/8"]);
    let kinds: Vec<&str> = documents
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "Deployment",
            "Service"
        ]
    );
    let role = &documents[1];
    for rule in role["rules"].as_array().unwrap() {
        let resources: Vec<&str> = rule["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap())
            .collect();
        let verbs: Vec<&str> = rule["verbs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        match resources.as_slice() {
            ["deployments"] => {
                assert_eq!(verbs, ["get", "list", "watch", "patch"]);
                assert_eq!(rule["resourceNames"], serde_json::json!(["myapp"]));
            }
            ["endpointslices"] => assert_eq!(verbs, ["list", "watch"]),
            ["endpoints"] => {
                assert_eq!(verbs, ["list", "watch"]);
                assert_eq!(rule["resourceNames"], serde_json::json!(["myapp"]));
            }
            other => panic!("unexpected rule for {other:?}"),
        }
    }
    let deployment = &documents[3];
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let container = &pod["containers"][0];
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    // The container's arguments are a valid command line with the given flags.
    let mut args: Vec<String> = vec!["kubectl-hsd".into()];
    args.extend(
        container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string()),
    );
    let cli = kubectl_hsd::cli::Cli::try_parse_from(&args).unwrap();
    assert_eq!(cli.global.namespace.as_deref(), Some("apps"));
    let kubectl_hsd::cli::Command::Proxy(proxy) = cli.command else {
        panic!("a proxy command")
    };
    assert_eq!(proxy.ttl, std::time::Duration::from_secs(1800));
    assert_eq!(proxy.address, ":80");
    assert_eq!(proxy.allow_dial_cidr.len(), 1);
    assert!(!proxy.zpa_manifest);
    // The Service sends clients to the proxy's port.
    let service = &documents[4];
    assert_eq!(service["spec"]["ports"][0]["port"], 80);
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "proxy");
}
