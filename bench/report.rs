//! The results: a table on stdout, `latest.json` and `latest.md` (plus `quick.*` or `full.*`).

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

fn fmt(value: &Value) -> String {
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

/// The tables, as (title, header, rows).
fn tables(results: &Value, goals: &[Goal]) -> Vec<(String, Vec<String>, Vec<Vec<String>>)> {
    let mut out = Vec::new();
    let r = &results["reaction"];
    if r.is_object() {
        let row = |label: &str, prefix: &str| -> Vec<String> {
            let mut row = vec![label.to_string()];
            for key in [
                "p50_ms",
                "p99_ms",
                "max_ms",
                "up_p50_ms",
                "down_p50_ms",
                "pod_watch_p50_ms",
                "pod_watch_p99_ms",
            ] {
                row.push(fmt(&r[format!("{prefix}{key}")]));
            }
            row
        };
        out.push((
            format!(
                "Reaction latency in --watch mode ({} HSDs x 20 pods, {} events each)",
                fmt(&r["hsds"]),
                fmt(&r["samples"])
            ),
            [
                "",
                "p50 ms",
                "p99 ms",
                "max ms",
                "busy p50",
                "idle p50",
                "pod watch p50",
                "pod watch p99",
            ]
            .map(String::from)
            .to_vec(),
            vec![
                row("kubectl-hsd --watch", ""),
                row("floor (watch pods + PATCH)", "floor_"),
                vec![
                    "ratio".into(),
                    fmt(&r["ratio_p50"]),
                    fmt(&r["ratio_p99"]),
                    "".into(),
                    "".into(),
                    "".into(),
                    "".into(),
                    "".into(),
                ],
            ],
        ));
    }
    if let Some(passes) = results["pass"].as_array() {
        out.push((
            "One-shot pass (reconcile -A --stats, nothing to change)".into(),
            [
                "pods",
                "HSDs",
                "wall s",
                "pass s",
                "CPU s",
                "requests",
                "no-op writes",
                "peak RSS MB",
            ]
            .map(String::from)
            .to_vec(),
            passes
                .iter()
                .map(|p| {
                    [
                        "pods",
                        "hsds",
                        "seconds",
                        "pass_seconds",
                        "cpu_seconds",
                        "requests",
                        "noop_writes",
                        "peak_rss_mb",
                    ]
                    .iter()
                    .map(|k| fmt(&p[*k]))
                    .collect()
                })
                .collect(),
        ));
    }
    let w = &results["watch"];
    if w.is_object() {
        out.push((
            "Watch mode after sync".into(),
            ["pods", "HSDs", "VmRSS MB", "VmHWM MB", "sync s"]
                .map(String::from)
                .to_vec(),
            vec![
                ["pods", "hsds", "rss_mb", "hwm_mb", "sync_seconds"]
                    .iter()
                    .map(|k| fmt(&w[*k]))
                    .collect(),
            ],
        ));
    }
    let p = &results["probes"];
    if p.is_object() {
        out.push((
            format!("HTTP probes ({})", fmt(&p["method"])),
            [
                "pods",
                "probes/s",
                "one-shot pass probes/s",
                "slow server extra ms",
                "slow round s",
            ]
            .map(String::from)
            .to_vec(),
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
    let f = &results["failover"];
    if f.is_object() {
        let row = |label: &str, prefix: &str| -> Vec<String> {
            let mut row = vec![label.to_string()];
            for key in ["p50_ms", "p99_ms", "max_ms"] {
                row.push(fmt(&f[format!("{prefix}{key}")]));
            }
            row
        };
        out.push((
            format!(
                "Active-standby failover (master deleted -> new master alone in the EndpointSlice, {} each)",
                fmt(&f["failovers"])
            ),
            ["", "p50 ms", "p99 ms", "max ms"].map(String::from).to_vec(),
            vec![row("kubectl-hsd", ""), row("floor", "floor_")],
        ));
    }
    out.push((
        "Goals".into(),
        ["goal", "target", "measured", ""]
            .map(String::from)
            .to_vec(),
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
        table.load_preset(comfy_table::presets::ASCII_MARKDOWN);
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

/// Writes `<name>.{json,md}`; a complete run also writes `quick.*` or `full.*`.
pub fn write(dir: &Path, name: &str, results: &Value, goals: &[Goal]) -> Res<()> {
    std::fs::create_dir_all(dir).ctx(format!("creating {}", dir.display()))?;
    let mut json_value = results.clone();
    json_value["goals"] =
        json!(goals
        .iter()
        .map(|g| json!({"goal": g.name, "target": g.target, "measured": g.value, "met": g.met}))
        .collect::<Vec<_>>());
    let json_text =
        serde_json::to_string_pretty(&json_value).ctx("serializing the results")? + "\n";
    let md = markdown(results, goals);
    let mode = if results["quick"] == true {
        "quick"
    } else {
        "full"
    };
    let names = if name == "latest" {
        vec![name, mode]
    } else {
        vec![name]
    };
    for name in names {
        std::fs::write(dir.join(format!("{name}.json")), &json_text)
            .ctx("writing the JSON results")?;
        std::fs::write(dir.join(format!("{name}.md")), &md).ctx("writing the Markdown results")?;
    }
    Ok(())
}
