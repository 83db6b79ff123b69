//! `explain NAME`: the decision of a pass for one HSD, as a person reads it (or `-o json`).
//! It observes and probes exactly as a pass does, and writes nothing.

use std::fmt::Write as _;

use super::GlobalArgs;
use super::output::{self, OutputFormat};
use crate::error::{Error, Result};
use crate::observe::probe::{DEFAULT_CONCURRENCY, Prober};
use crate::observe::{self, Scope};
use crate::plan;

pub async fn explain(global: &GlobalArgs, name: &str) -> Result<i32> {
    let (client, _, default_ns) = crate::client::connect(&global.client_options()).await?;
    let Scope::Namespace(namespace) = global.scope(&default_ns) else {
        return Err(Error::Invalid("explain takes one namespace, not -A".into()));
    };
    let scope = Scope::Namespace(namespace.clone());
    let snapshot = observe::read_snapshot(&client, &scope).await?;
    let Some(object) = snapshot
        .hsds
        .iter()
        .find(|o| kube::ResourceExt::name_any(*o) == name)
    else {
        return Err(Error::NotFound {
            what: format!("hotstandbydeployments.apps.paia.tech {name:?} in namespace {namespace}"),
        });
    };
    let (mut observed, pods) = observe::observe_hsd(object, &snapshot.index, |_| None);
    // Best effort: without the right to list Services, no master's place is kept.
    if let Ok(services) = observe::services::list_services(&client, &scope).await {
        observed.master_slot = observe::services::master_slot(&observed, &services);
    }
    if let Ok(spec) = observed.spec.clone() {
        let targets = observe::probe_targets(&spec, &pods);
        let deadline = tokio::time::Instant::now() + crate::once::DEFAULT_PASS_DEADLINE;
        observe::probe_hsd(
            &Prober::new(DEFAULT_CONCURRENCY),
            &mut observed,
            targets,
            deadline,
        )
        .await;
    }
    observe::confirm_missing_child(&client, &mut observed).await?;
    let hsd = &observed;
    let plan = plan::plan(hsd, jiff::Timestamp::now());
    let Some(decision) = plan.decision.clone() else {
        let reason = plan
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == plan::condition::INVALID_SPEC)
            .map_or_else(String::new, |c| c.message.clone());
        return Err(Error::Invalid(format!(
            "{namespace}/{name} has an invalid spec: {reason}"
        )));
    };
    match global.output {
        Some(OutputFormat::Json) => print!("{}", output::to_json(&decision)),
        Some(OutputFormat::Yaml) => print!("{}", output::to_yaml(&decision)),
        _ => print!("{}", render(&namespace, name, &decision, hsd.paused)),
    }
    Ok(0)
}

fn render(namespace: &str, name: &str, d: &plan::Decision, paused: bool) -> String {
    let mut text = String::new();
    let busy = d.busy_by_annotation
        + d.busy_by_probe
        + d.busy_by_invalid_annotation
        + d.busy_as_master
        + d.master_reserved;
    let _ = writeln!(
        text,
        "{namespace}/{name}: {} replicas{}",
        d.replicas,
        if paused { " (paused)" } else { "" }
    );
    let masters = if d.busy_as_master + d.master_reserved > 0 {
        format!(
            ", {} as an active-standby master",
            d.busy_as_master + d.master_reserved
        )
    } else {
        String::new()
    };
    let _ = writeln!(
        text,
        "  busy         {busy} ({} by annotation, {} by HTTP probe, {} by an unreadable annotation{masters})",
        d.busy_by_annotation, d.busy_by_probe, d.busy_by_invalid_annotation
    );
    let _ = writeln!(
        text,
        "  unknown      {} (probe failed: counted as busy)",
        d.unknown
    );
    let _ = writeln!(text, "  idle         {}", d.idle);
    let _ = writeln!(
        text,
        "  starting     {} ({} unschedulable)",
        d.starting, d.unschedulable
    );
    let _ = writeln!(text, "  terminating  {}", d.terminating);
    match d.idle_target_from_percent {
        Some(percent) => {
            let _ = writeln!(
                text,
                "  idle target  {} = max(idleTarget {}, {percent} from idlePercent)",
                d.idle_target, d.idle_target_fixed
            );
        }
        None => {
            let _ = writeln!(text, "  idle target  {} (fixed)", d.idle_target);
        }
    }
    let _ = writeln!(
        text,
        "  bounds       min {}, max {}",
        d.min_replicas,
        d.max_replicas.map_or("none".into(), |m| m.to_string())
    );
    if d.scale_down_delay_seconds > 0 {
        let _ = writeln!(
            text,
            "  delay        {}s{}",
            d.scale_down_delay_seconds,
            d.held_by_delay
                .map_or(String::new(), |held| format!(": holding {held}"))
        );
    } else {
        let _ = writeln!(text, "  delay        none (scale down at once)");
    }
    let _ = writeln!(
        text,
        "  deployment   {}",
        d.current_replicas
            .map_or("not created yet".into(), |c| format!("{c} replicas now"))
    );
    let _ = writeln!(text, "why:");
    for step in &d.why {
        let _ = writeln!(text, "  - {step}");
    }
    text
}
