//! One-shot pass cost at the current size, beside its floor: `reconcile -A --stats` (the release
//! binary under `/usr/bin/time -v`) with nothing to change, and the bare paginated list of the
//! same objects (`floor::list`), taking turns.

use std::time::Duration;

use serde_json::{Value, json};

use crate::populate::PODS_PER_HSD;
use crate::util::{Res, load_average, median, round, say};
use crate::{Bench, floor};

pub async fn measure(bench: &Bench<'_>, hsds: usize) -> Res<Value> {
    let pods = hsds * PODS_PER_HSD;
    say(format!("one-shot pass at {pods} pods ({hsds} HSDs)"));
    // Converge (statuses catch up with the ready pods), let the cluster settle, then measure.
    bench.converge().await?;
    let load = load_average();
    let mut runs = Vec::new();
    let mut floors = Vec::new();
    for i in 0..bench.options.pass_repetitions {
        // The floor first, then the product: a change of background load weighs on both alike.
        let kubeconfig = bench.cluster.kubeconfig.clone();
        let (listed, floor_time) = tokio::task::spawn_blocking(move || floor::list(&kubeconfig))
            .await
            .map_err(|e| format!("the list floor: {e}"))??;
        if listed.pods != pods || listed.deployments != hsds || listed.hsds < hsds {
            return Err(format!(
                "the list floor read {listed:?}, expected {hsds} HSDs and Deployments and {pods} pods"
            ));
        }
        floors.push(floor_time.as_secs_f64());
        let run = bench
            .product
            .measured_pass(&["-A"], Duration::from_secs(900))
            .await?;
        say(format!(
            "  pass {}: {:.3}s wall ({:.3}s floor), {:.3}s pass, {:.2}s CPU, {} requests ({} writes), peak RSS {:.1} MB",
            i + 1,
            run.wall.as_secs_f64(),
            floor_time.as_secs_f64(),
            run.stats.seconds,
            run.cpu_seconds,
            run.stats.requests,
            run.stats.writes,
            run.peak_rss_kb as f64 / 1024.0
        ));
        if run.stats.hsds as usize != hsds {
            return Err(format!(
                "the pass saw {} HSDs, expected {hsds}",
                run.stats.hsds
            ));
        }
        runs.push(run);
    }
    let walls: Vec<f64> = runs.iter().map(|r| r.wall.as_secs_f64()).collect();
    let pass_seconds: Vec<f64> = runs.iter().map(|r| r.stats.seconds).collect();
    let seconds = median(&walls);
    let floor_seconds = median(&floors);
    Ok(json!({
        "pods": pods,
        "hsds": hsds,
        "namespaces": hsds.min(bench.layout.namespaces),
        "seconds": round(seconds, 3),
        "pass_seconds": round(median(&pass_seconds), 3),
        "floor_seconds": round(floor_seconds, 3),
        "ratio": round(seconds / floor_seconds, 2),
        "seconds_runs": walls.iter().map(|v| round(*v, 3)).collect::<Vec<_>>(),
        "floor_runs": floors.iter().map(|v| round(*v, 3)).collect::<Vec<_>>(),
        "requests": runs.iter().map(|r| r.stats.requests).max(),
        "reads": runs.iter().map(|r| r.stats.reads).max(),
        "noop_writes": runs.iter().map(|r| r.stats.writes).max(),
        "peak_rss_mb": round(runs.iter().map(|r| r.peak_rss_kb).max().unwrap_or(0) as f64 / 1024.0, 1),
        "repetitions": runs.len(),
        // The product's own CPU (user + system) next to its wall time: the rest is waiting
        // for the API server.
        "cpu_seconds": round(median(&runs.iter().map(|r| r.cpu_seconds).collect::<Vec<_>>()), 2),
        "load": load,
    }))
}
