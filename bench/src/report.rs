//! The results: tables on stdout, and one `<date>-<quick|full>.{json,md}` per run.

use std::path::Path;

use comfy_table::Table;
use serde_json::{Value, json};

use crate::util::{Context, Res};

/// A goal of the issue and whether this run met it.
pub struct Goal {
    pub name: String,
    pub target: String,
    pub value: String,
    pub met: Option<bool>,
}

pub fn fmt(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.2}"),
            _ => n.to_string(),
        },
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn mark(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "n/a",
    }
}

type Table3 = (String, Vec<String>, Vec<Vec<String>>);

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// One row per entry of `list`, one cell per key.
fn rows(list: &Value, keys: &[&str]) -> Vec<Vec<String>> {
    list.as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|e| keys.iter().map(|k| fmt(&e[*k])).collect())
                .collect()
        })
        .unwrap_or_default()
}

/// A reaction measurement: the product, the floor and their ratio.
fn reaction_rows(r: &Value, label: &str) -> Vec<Vec<String>> {
    let row = |who: &str, prefix: &str| -> Vec<String> {
        let mut row = vec![format!("{label}: {who}")];
        for key in [
            "p50_ms",
            "p99_ms",
            "max_ms",
            "up_p50_ms",
            "up_p99_ms",
            "down_p50_ms",
            "down_p99_ms",
            "pod_watch_p50_ms",
            "pod_watch_p99_ms",
        ] {
            row.push(fmt(&r[format!("{prefix}{key}")]));
        }
        row
    };
    let mut ratio = vec![
        format!("{label}: ratio"),
        fmt(&r["ratio_p50"]),
        fmt(&r["ratio_p99"]),
    ];
    ratio.extend(std::iter::repeat_n(String::new(), 7));
    vec![
        row("kubectl-hsd --watch", ""),
        row("floor", "floor_"),
        ratio,
    ]
}

/// The tables, as (title, header, rows).
fn tables(results: &Value, goals: &[Goal]) -> Vec<Table3> {
    let mut out = Vec::new();
    if results["pass"].is_array() {
        out.push((
            "One-shot pass (reconcile -A --stats, nothing to change) and its floor (a bare paginated list)".into(),
            strings(&[
                "pods", "HSDs", "wall s", "floor s", "ratio", "pass s", "CPU s", "requests",
                "no-op writes", "peak RSS MB", "load",
            ]),
            rows(
                &results["pass"],
                &[
                    "pods", "hsds", "seconds", "floor_seconds", "ratio", "pass_seconds",
                    "cpu_seconds", "requests", "noop_writes", "peak_rss_mb", "load",
                ],
            ),
        ));
    }
    if results["start"].is_array() {
        out.push((
            "Watcher start to first decision, and its floor (kube's reflector on the same objects)"
                .into(),
            strings(&[
                "pods",
                "HSDs",
                "first decision s",
                "floor sync s",
                "ratio",
                "5 flipped HSDs decided s",
                "all HSDs decided s",
                "VmRSS MB",
                "VmHWM MB",
                "floor VmRSS MB",
                "CPU s",
                "load",
            ]),
            rows(
                &results["start"],
                &[
                    "pods",
                    "hsds",
                    "first_decision_s",
                    "floor_sync_s",
                    "ratio",
                    "last_flipped_s",
                    "all_decided_s",
                    "rss_mb",
                    "hwm_mb",
                    "floor_rss_mb",
                    "cpu_seconds",
                    "load",
                ],
            ),
        ));
    }
    let header = strings(&[
        "",
        "p50 ms",
        "p99 ms",
        "max ms",
        "busy p50",
        "busy p99",
        "idle p50",
        "idle p99",
        "pod watch p50",
        "pod watch p99",
    ]);
    let r = &results["reaction"];
    if r.is_object() {
        let o = &results["reaction_others"];
        let mut table = reaction_rows(r, "no other pods");
        if o.is_object() {
            table.extend(reaction_rows(
                o,
                &format!("{} other pods", fmt(&o["other_pods"])),
            ));
        }
        out.push((
            format!(
                "Reaction latency in --watch mode (flips over {} HSDs of 20 pods, {} events each)",
                fmt(&r["hsds"]),
                fmt(&r["samples"])
            ),
            header.clone(),
            table,
        ));
    }
    let (single, pair) = (&results["shards"]["single"], &results["shards"]["pair"]);
    if single.is_object() || pair.is_object() {
        let mut table = Vec::new();
        if single.is_object() {
            table.push(vec![
                format!("one watcher, {} pods", fmt(&single["pods"])),
                fmt(&single["samples"]),
                fmt(&single["p50_ms"]),
                fmt(&single["p99_ms"]),
                fmt(&single["floor_p99_ms"]),
                fmt(&single["watcher_rss_mb"]),
            ]);
        }
        if let Some(replicas) = pair["replicas"].as_array() {
            for replica in replicas {
                table.push(vec![
                    format!(
                        "2 shards, {} pods: {} (shard {})",
                        fmt(&pair["pods"]),
                        fmt(&replica["identity"]),
                        fmt(&replica["shard"])
                    ),
                    fmt(&replica["samples"]),
                    fmt(&replica["p50_ms"]),
                    fmt(&replica["p99_ms"]),
                    fmt(&pair["floor_p99_ms"]),
                    fmt(&replica["rss_mb"]),
                ]);
            }
        }
        out.push((
            "Sharding: each of 2 replicas against one watcher of half the pods".into(),
            strings(&["", "flips", "p50 ms", "p99 ms", "floor p99 ms", "VmRSS MB"]),
            table,
        ));
    }
    let f = &results["failover"];
    if f.is_object() {
        out.push((
            "Failover of a sharded replica (kill -9)".into(),
            strings(&[
                "pods",
                "HSDs",
                "lease s",
                "shard taken s",
                "flip acted on s",
                "load",
            ]),
            vec![
                [
                    "pods",
                    "hsds",
                    "lease_seconds",
                    "shard_taken_seconds",
                    "acted_seconds",
                    "load",
                ]
                .iter()
                .map(|k| fmt(&f[*k]))
                .collect(),
            ],
        ));
    }
    // HSJ hook (#14) and active-standby failover hook (#16).
    out.extend(crate::hsj::table(results));
    out.extend(crate::failover::table(results));
    let p = &results["probes"];
    if p.is_object() {
        out.push((
            format!("HTTP probes ({})", fmt(&p["method"])),
            strings(&[
                "pods",
                "probes/s",
                "one-shot pass probes/s",
                "slow server extra ms",
                "slow round s",
            ]),
            vec![
                [
                    "pods",
                    "per_second",
                    "pass_per_second",
                    "slow_server_extra_ms",
                    "slow_round_seconds",
                ]
                .iter()
                .map(|k| fmt(&p[*k]))
                .collect(),
            ],
        ));
    }
    let x = &results["proxy"];
    if x.is_object() {
        let r = &x["round_trip"];
        let c = &x["connection_rate"];
        let t = &x["throughput"];
        let i = &x["idle_forwarded"];
        let row = |label: &str, who: &str| -> Vec<String> {
            vec![
                label.to_string(),
                fmt(&r[format!("{who}_p50_us")]),
                fmt(&r[format!("{who}_p99_us")]),
                fmt(&c[format!("{who}_per_second")]),
                fmt(&t[format!("{who}_mib_s")]),
                if who == "direct" {
                    "".into()
                } else {
                    format!(
                        "{} ({} KiB each)",
                        fmt(&i[who]["rss_mb"]),
                        fmt(&i[who]["per_connection_kib"])
                    )
                },
            ]
        };
        out.push((
            format!(
                "Proxy: kubectl hsd proxy vs a minimal tokio proxy ({} round trips of {} bytes, {} connections, {} idle connections)",
                fmt(&r["samples"]),
                fmt(&r["bytes"]),
                fmt(&c["connections"]),
                fmt(&i["connections"])
            ),
            [
                "",
                "round trip p50 us",
                "round trip p99 us",
                "connections/s",
                "throughput MiB/s",
                "VmRSS MB with idle connections",
            ]
            .map(String::from)
            .to_vec(),
            vec![
                row("direct (no proxy)", "direct"),
                row("floor (copy_bidirectional)", "floor"),
                row("kubectl hsd proxy", "product"),
            ],
        ));
        let h = &x["held"];
        let w = &x["warm_api_requests"];
        out.push((
            "Proxy: held connections and the warm path".into(),
            [
                "held connections",
                "VmRSS before MB",
                "VmRSS MB",
                "KiB per held connection",
                "goal MB",
                "warm connections",
                "API requests",
            ]
            .map(String::from)
            .to_vec(),
            vec![vec![
                fmt(&h["connections"]),
                fmt(&h["rss_before_mb"]),
                fmt(&h["rss_mb"]),
                fmt(&h["per_connection_kib"]),
                fmt(&h["goal_mb"]),
                fmt(&w["connections"]),
                fmt(&w["requests"]),
            ]],
        ));
    }
    out.push((
        "Goals".into(),
        strings(&["goal", "target", "measured", ""]),
        goals
            .iter()
            .map(|g| {
                vec![
                    g.name.clone(),
                    g.target.clone(),
                    g.value.clone(),
                    mark(g.met).into(),
                ]
            })
            .collect(),
    ));
    out
}

pub fn print_tables(results: &Value, goals: &[Goal]) {
    for (title, header, rows) in tables(results, goals) {
        let mut table = Table::new();
        table.load_style(comfy_table::presets::ASCII_MARKDOWN);
        table.set_header(header);
        for row in rows {
            table.add_row(row);
        }
        println!("\n{title}\n{table}");
    }
}

pub fn markdown(results: &Value, goals: &[Goal]) -> String {
    let m = &results["machine"];
    let mut text = format!(
        "# kubectl-hsd benchmark{}\n\n`hack/bench.sh{}` on {}.\n\n| machine | |\n| --- | --- |\n| cores | {} |\n| memory | {} GB |\n| Kubernetes | {} |\n| commit | `{}`{} |\n| date | {} |\n| load average (start, end) | {} / {} |\n",
        if results["quick"] == true {
            " (quick)"
        } else {
            ""
        },
        if results["quick"] == true {
            " --quick"
        } else {
            ""
        },
        fmt(&m["date"]),
        fmt(&m["cores"]),
        fmt(&m["memory_gb"]),
        fmt(&m["kubernetes"]),
        fmt(&m["commit"]),
        if m["dirty"] == true {
            " (with uncommitted changes)"
        } else {
            ""
        },
        fmt(&m["date"]),
        fmt(&m["load_start"]),
        fmt(&m["load_end"]),
    );
    for (title, header, rows) in tables(results, goals) {
        text.push_str(&format!(
            "\n## {title}\n\n| {} |\n|{}\n",
            header.join(" | "),
            " --- |".repeat(header.len())
        ));
        for row in rows {
            text.push_str(&format!("| {} |\n", row.join(" | ")));
        }
    }
    if let Some(notes) = results["notes"].as_array() {
        text.push_str("\n## Notes\n\n");
        for note in notes {
            text.push_str(&format!("- {}\n", note.as_str().unwrap_or_default()));
        }
    }
    text
}

/// The file name of a run, without extension: `<date>-<quick|full>`, date and time of its start
/// in UTC (`2026-12-02-1530-quick`), then the `--only` measurements if any
/// (`2026-12-02-1530-quick-start-pass`), `-partial` added when it failed.
pub fn run_name(results: &Value, failed: bool) -> String {
    let date = results["machine"]["date"].as_str().unwrap_or_default();
    // 2026-12-02T15:30:07Z -> 2026-12-02-1530
    let stamp: String = match date.split_once('T') {
        Some((day, time)) => format!("{day}-{}", time.replace(':', "").get(..4).unwrap_or("")),
        None => "undated".into(),
    };
    let mode = if results["quick"] == true {
        "quick"
    } else {
        "full"
    };
    let only: String = results["only"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|m| format!("-{m}"))
        .collect();
    format!(
        "{stamp}-{mode}{only}{}",
        if failed { "-partial" } else { "" }
    )
}

/// Writes the run's `<name>.{json,md}` into `dir` (one file per run, see [`run_name`]); returns
/// the path without extension.
pub fn write(dir: &Path, results: &Value, goals: &[Goal], failed: bool) -> Res<std::path::PathBuf> {
    std::fs::create_dir_all(dir).ctx(format!("creating {}", dir.display()))?;
    let mut json_value = results.clone();
    json_value["goals"] =
        json!(goals
        .iter()
        .map(|g| json!({"goal": g.name, "target": g.target, "measured": g.value, "met": g.met}))
        .collect::<Vec<_>>());
    let json_text =
        serde_json::to_string_pretty(&json_value).ctx("serializing the results")? + "\n";
    let path = dir.join(run_name(results, failed));
    std::fs::write(path.with_extension("json"), &json_text).ctx("writing the JSON results")?;
    std::fs::write(path.with_extension("md"), markdown(results, goals))
        .ctx("writing the Markdown results")?;
    Ok(path)
}
