//! Sharding with the real control plane: two watchers split two shards, each watching only its
//! shard's pods; when one is killed, the other takes its shard within the lease time, and every
//! HSD keeps reacting.

use std::time::{Duration, Instant};

use kube::ResourceExt;
use kubectl_hsd::labels::bucket;
use serde_json::json;

use crate::common::{TestNs, Watcher, ensure_crd, wait_for};
use crate::core::{annotate, create_hsd, example, ready_pods, replicas};

/// HSD names: two in shard 0 and two in shard 1 of 2 (by their bucket).
fn names_per_shard(namespace: &str) -> [Vec<String>; 2] {
    let mut shards: [Vec<String>; 2] = Default::default();
    for i in 0.. {
        let name = format!("g{i}");
        let shard = (bucket(namespace, &name) % 2) as usize;
        if shards[shard].len() < 2 {
            shards[shard].push(name);
        }
        if shards.iter().all(|s| s.len() == 2) {
            break;
        }
    }
    shards
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_watchers_split_two_shards_and_one_takes_both_when_the_other_dies() {
    ensure_crd();
    let ns = TestNs::new("shards").await;
    let shards = names_per_shard(&ns.name);
    for name in shards.iter().flatten() {
        let mut manifest = example("hsd-annotation.yaml");
        manifest["metadata"] = json!({"name": name, "namespace": ns.name});
        manifest["spec"]["idleTarget"] = json!(2);
        manifest["spec"]["selector"]["matchLabels"] = json!({"app": name});
        manifest["spec"]["podTemplate"]["metadata"]["labels"] = json!({"app": name});
        create_hsd(&ns, &manifest).await.unwrap();
    }
    let args = ["--shards", "2"];
    let first = Watcher::start(&ns.name, "first", &args);
    let second = Watcher::start(&ns.name, "second", &args);
    // Each holds one shard.
    wait_for(
        "each watcher to lead one shard",
        Duration::from_secs(30),
        || async {
            let (a, b) = (
                first.metric("hsd_shards_led").await,
                second.metric("hsd_shards_led").await,
            );
            (a == Some(1.0) && b == Some(1.0)).then_some(())
        },
    )
    .await;
    for name in shards.iter().flatten() {
        let workload = format!("{name}-workload");
        wait_for(
            &format!("{workload} at 2"),
            Duration::from_secs(30),
            || async { (replicas(&ns, &workload).await == Some(2)).then_some(()) },
        )
        .await;
        ready_pods(&ns, &format!("app={name}"), 2).await;
    }
    // Each watches only its shard's pods: 4 each (2 HSDs x 2 pods), 8 in all.
    wait_for(
        "each cache to hold its shard's pods",
        Duration::from_secs(20),
        || async {
            let cached = |w: &Watcher| {
                let w = w.metrics.clone();
                async move {
                    let text = crate::common::http_get(&format!("{w}/metrics"))
                        .await
                        .ok()?
                        .1;
                    text.lines()
                        .filter(|l| l.starts_with("hsd_cached_pods{"))
                        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                        .reduce(|a, b| a + b)
                }
            };
            let (a, b) = (cached(&first).await?, cached(&second).await?);
            eprintln!("cached pods: {a} and {b}");
            // Other tests' pods are in other namespaces: these watchers see only their own (-n).
            (a == 4.0 && b == 4.0).then_some(())
        },
    )
    .await;

    // Both react, each to its own shard.
    for (shard, names) in shards.iter().enumerate() {
        let name = &names[0];
        let pods = ready_pods(&ns, &format!("app={name}"), 2).await;
        annotate(&ns, &pods[0].name_any(), "paia.tech/busy", "true").await;
        let workload = format!("{name}-workload");
        wait_for(
            &format!("shard {shard} to react"),
            Duration::from_secs(10),
            || async { (replicas(&ns, &workload).await == Some(3)).then_some(()) },
        )
        .await;
    }

    // kill -9 the first: the second takes its shard within the lease (3 s) + 5 s.
    let mut first = first;
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let killed = Instant::now();
    wait_for(
        "the survivor to lead both shards",
        Duration::from_secs(30),
        || async { (second.metric("hsd_shards_led").await == Some(2.0)).then_some(()) },
    )
    .await;
    let took_over = killed.elapsed();
    // And it decides for the dead replica's HSDs: one more busy pod in each shard.
    for names in &shards {
        let name = &names[1];
        let pods = ready_pods(&ns, &format!("app={name}"), 2).await;
        annotate(&ns, &pods[0].name_any(), "paia.tech/busy", "true").await;
        let workload = format!("{name}-workload");
        wait_for(
            &format!("{workload} to react after the failover"),
            Duration::from_secs(15),
            || async { (replicas(&ns, &workload).await == Some(3)).then_some(()) },
        )
        .await;
    }
    let reacted = killed.elapsed();
    eprintln!("survivor led both shards {took_over:?} after the kill; both reacted by {reacted:?}");
    assert!(
        took_over <= Duration::from_secs(8),
        "failover within lease + 5 s, took {took_over:?}:\n{}",
        second.log()
    );
}
