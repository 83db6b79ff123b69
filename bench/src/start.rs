//! Watcher start to first decision, and the watcher's memory, beside the floor (kube's bare
//! reflector on the same objects), taking turns.
//!
//! Before each start, with no controller running, one pod in each of a few HSDs (spread over
//! the set, different ones each repetition) is flipped busy: those HSDs need a Deployment write
//! (20 -> 21 replicas). The first decision is the first of those writes, stamped when the
//! benchmark's own Deployment watch delivers it, from just before the process was spawned. A
//! watcher decides nothing before its caches are synced, so this is process start, sync and the
//! first reconciles. `all_decided` is until every HSD has its `hsd_desired_replicas` series
//! (polled); the memory is read 5 s after that. The floor runs as a process of its own (this
//! binary again), timed from its spawn to its synced stores; its memory is read 5 s later.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::deployments::DeploymentWatch;
use crate::populate::{Layout, PODS_PER_HSD, set_busy};
use crate::util::{Res, load_average, median, round, say};
use crate::{Bench, floor};

/// HSDs flipped busy before each start.
const FLIPPED: usize = 5;

pub async fn measure(
    bench: &Bench<'_>,
    deployments: &mut DeploymentWatch,
    total_hsds: usize,
    repetitions: usize,
) -> Res<Value> {
    let pods = total_hsds * PODS_PER_HSD;
    say(format!(
        "watcher start at {pods} pods ({total_hsds} HSDs), {repetitions} starts beside the reflector floor"
    ));
    bench.converge().await?;
    let load = load_average();
    let flipped = FLIPPED.min(total_hsds);
    // From the end of the set, away from the HSDs the reaction flips.
    let stride = (total_hsds / (flipped * repetitions + 1)).max(1);
    let poll = if total_hsds > 1000 {
        Duration::from_millis(1000)
    } else {
        Duration::from_millis(500)
    };
    let mut runs = Vec::new();
    for r in 0..repetitions {
        let kubeconfig = bench.cluster.kubeconfig.clone();
        let (listed, floor_time, floor_rss, floor_hwm) = tokio::task::spawn_blocking(move || {
            floor::reflector_process(&kubeconfig, Duration::from_secs(5))
        })
        .await
        .map_err(|e| format!("the reflector floor: {e}"))??;
        // The HSDs flipped in an earlier start keep their 21st pod until the converging pass
        // after the last start: the floor and the product see the same objects either way.
        if listed.pods < pods || listed.deployments != total_hsds {
            return Err(format!(
                "the reflector floor holds {listed:?}, expected {total_hsds} Deployments and at least {pods} pods"
            ));
        }

        // A few HSDs that need a decision.
        let mut busy = Vec::new();
        for j in 0..flipped {
            let h = total_hsds - 1 - ((r * flipped + j) * stride) % total_hsds;
            let (namespace, app) = (bench.layout.namespace(h), Layout::name(h));
            let pod = bench
                .tracker
                .pods_of(&namespace, &app)
                .into_iter()
                .find(|p| p.ready && !p.busy)
                .ok_or_else(|| format!("no ready idle pod of {namespace}/{app}"))?;
            set_busy(&bench.client, &namespace, &pod.name, true).await?;
            busy.push((h, pod.name));
        }
        bench.settle().await?;

        deployments.drain();
        let mut watcher = bench
            .product
            .start_watcher(&format!("start-{pods}-{r}"))
            .await?;
        let timeout = Duration::from_secs(120) + Duration::from_millis(30) * pods as u32;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut decided: Vec<Duration> = Vec::new();
        let mut all_decided: Option<Duration> = None;
        let wanted: Vec<(String, String)> = busy
            .iter()
            .map(|(h, _)| (bench.layout.namespace(*h), Layout::workload(*h)))
            .collect();
        while (decided.len() < wanted.len() || all_decided.is_none())
            && tokio::time::Instant::now() < deadline
        {
            watcher.alive()?;
            if all_decided.is_none()
                && matches!(watcher.get("/readyz").await, Ok((200, _)))
                && watcher.reconciled_hsds().await.unwrap_or(0) >= total_hsds
            {
                all_decided = Some(watcher.spawned.elapsed());
            }
            let until = (tokio::time::Instant::now() + poll).min(deadline);
            if decided.len() == wanted.len() {
                tokio::time::sleep_until(until).await;
                continue;
            }
            while let Some(change) = deployments.next_change(until).await {
                if change.replicas == PODS_PER_HSD as i32 + 1
                    && wanted.contains(&(change.namespace, change.name))
                {
                    decided.push(change.at.saturating_duration_since(watcher.spawned));
                }
            }
        }
        let result = match (decided.first(), decided.last(), all_decided) {
            (Some(first), Some(last), Some(all)) if decided.len() == wanted.len() => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let (rss, hwm) = watcher.memory_kb()?;
                let anon = watcher.anon_kb()?;
                Ok(json!({
                    "first_decision_s": first.as_secs_f64(),
                    "last_flipped_s": last.as_secs_f64(),
                    "all_decided_s": all.as_secs_f64(),
                    "floor_s": floor_time.as_secs_f64(),
                    "floor_rss_kb": floor_rss,
                    "floor_hwm_kb": floor_hwm,
                    "rss_kb": rss,
                    "hwm_kb": hwm,
                    "anon_kb": anon,
                    "cpu_s": watcher.cpu_seconds()?,
                }))
            }
            _ => Err(format!(
                "watcher start at {pods} pods: {} of {} flipped HSDs decided, all decided: {all_decided:?}, within {timeout:?}:\n{}",
                decided.len(),
                wanted.len(),
                crate::product::tail(&watcher.log_text(), 10)
            )),
        };
        watcher.stop().await;
        // Back to idle; the Deployments stay at 21 until the converging pass below.
        for (h, pod) in &busy {
            set_busy(&bench.client, &bench.layout.namespace(*h), pod, false).await?;
        }
        let run = result?;
        say(format!(
            "  start {}: first decision {:.2}s (floor sync {:.2}s), all decided {:.1}s, VmRSS {:.1} MB (floor {:.1} MB)",
            r + 1,
            run["first_decision_s"].as_f64().unwrap_or(f64::NAN),
            floor_time.as_secs_f64(),
            run["all_decided_s"].as_f64().unwrap_or(f64::NAN),
            run["rss_kb"].as_f64().unwrap_or(f64::NAN) / 1024.0,
            floor_rss as f64 / 1024.0
        ));
        runs.push(run);
        bench.settle().await?;
    }
    let started = Instant::now();
    bench.converge().await?;
    deployments
        .wait_all(
            &bench.layout,
            total_hsds,
            PODS_PER_HSD as i32,
            Duration::from_secs(300),
        )
        .await?;
    say(format!(
        "  back to idle in {:.1}s",
        started.elapsed().as_secs_f64()
    ));

    let field = |key: &str| -> Vec<f64> { runs.iter().filter_map(|r| r[key].as_f64()).collect() };
    let first = median(&field("first_decision_s"));
    let floor = median(&field("floor_s"));
    let mb = |kb: f64| round(kb / 1024.0, 1);
    Ok(json!({
        "pods": pods,
        "hsds": total_hsds,
        "repetitions": runs.len(),
        "flipped_hsds": flipped,
        "first_decision_s": round(first, 2),
        "last_flipped_s": round(median(&field("last_flipped_s")), 2),
        "all_decided_s": round(median(&field("all_decided_s")), 2),
        "all_decided_poll_s": poll.as_secs_f64(),
        "floor_sync_s": round(floor, 2),
        "ratio": round(first / floor, 2),
        "first_decision_runs": field("first_decision_s").iter().map(|v| round(*v, 2)).collect::<Vec<_>>(),
        "floor_runs": field("floor_s").iter().map(|v| round(*v, 2)).collect::<Vec<_>>(),
        "rss_mb": mb(field("rss_kb").into_iter().fold(0.0, f64::max)),
        "rss_runs_mb": field("rss_kb").iter().map(|v| mb(*v)).collect::<Vec<_>>(),
        "hwm_mb": mb(field("hwm_kb").into_iter().fold(0.0, f64::max)),
        "anon_mb": mb(field("anon_kb").into_iter().fold(0.0, f64::max)),
        "floor_rss_mb": mb(field("floor_rss_kb").into_iter().fold(0.0, f64::max)),
        "floor_rss_runs_mb": field("floor_rss_kb").iter().map(|v| mb(*v)).collect::<Vec<_>>(),
        "floor_hwm_mb": mb(field("floor_hwm_kb").into_iter().fold(0.0, f64::max)),
        "cpu_seconds": round(median(&field("cpu_s")), 2),
        "load": load,
    }))
}
