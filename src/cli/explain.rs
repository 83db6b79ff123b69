//! `explain NAME` (or `explain hsj/NAME`): the decision of a pass for one HSD (HSJ), as a person
//! reads it (or `-o json`).
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
            &Prober::new(DEFAULT_CONCURRENCY).with_exec(
                client.clone(),
                crate::observe::probe::DEFAULT_EXEC_CONCURRENCY,
            ),
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
    let format = global.output.clone().unwrap_or(OutputFormat::Table);
    let value = serde_json::to_value(&decision).map_err(|e| Error::Serialize {
        what: "the decision".into(),
        message: e.to_string(),
    })?;
    if format == OutputFormat::Name {
        println!("hotstandbydeployment.apps.paia.tech/{name}");
    } else if !output::print_generic(&format, &value, "")? {
        let exec = hsd
            .spec
            .as_ref()
            .is_ok_and(|s| s.busy_probe.mode == crate::api::probe::ProbeMode::Exec);
        print!("{}", render(&namespace, name, &decision, hsd.paused, exec));
    }
    Ok(0)
}

fn render(namespace: &str, name: &str, d: &plan::Decision, paused: bool, exec: bool) -> String {
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
        "  busy         {busy} ({} by annotation, {} by {} probe, {} by an unreadable annotation{masters})",
        d.busy_by_annotation,
        d.busy_by_probe,
        if exec { "exec" } else { "HTTP" },
        d.busy_by_invalid_annotation
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

/// `explain hsj/NAME`: the decision of a pass for one HSJ. It reads and probes exactly as a pass
/// does (exec probes go through the API server, so they work from anywhere the caller may exec),
/// and writes nothing.
pub async fn explain_hsj(global: &GlobalArgs, name: &str) -> Result<i32> {
    let (client, _, default_ns) = crate::client::connect(&global.client_options()).await?;
    let Scope::Namespace(namespace) = global.scope(&default_ns) else {
        return Err(Error::Invalid("explain takes one namespace, not -A".into()));
    };
    let (_, mut observed, pods) = super::describe::read_one_hsj(&client, &namespace, name).await?;
    let targets = observe::jobs::probe_targets(&observed, &pods);
    let prober = Prober::new(DEFAULT_CONCURRENCY).with_exec(
        client.clone(),
        crate::observe::probe::DEFAULT_EXEC_CONCURRENCY,
    );
    let deadline = tokio::time::Instant::now() + crate::once::DEFAULT_PASS_DEADLINE;
    observe::jobs::probe_hsj(&prober, &mut observed, targets, deadline).await;
    let plan = crate::plan::hsj::plan(&observed, jiff::Timestamp::now());
    let Some(decision) = plan.decision.clone() else {
        let reason = plan
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == plan::condition::INVALID_SPEC)
            .map_or_else(String::new, |c| c.message.clone());
        return Err(Error::Invalid(format!(
            "{namespace}/hsj/{name} has an invalid spec: {reason}"
        )));
    };
    match global.output {
        Some(OutputFormat::Json) => print!("{}", output::to_json(&decision)),
        Some(OutputFormat::Yaml) => print!("{}", output::to_yaml(&decision)),
        _ => print!(
            "{}",
            render_hsj(&namespace, name, &decision, &plan, observed.paused)
        ),
    }
    Ok(0)
}

fn render_hsj(
    namespace: &str,
    name: &str,
    d: &crate::plan::hsj::HsjDecision,
    plan: &crate::plan::hsj::HsjPlan,
    paused: bool,
) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "{namespace}/hsj/{name}: {} Jobs{}",
        d.target,
        if paused { " (paused)" } else { "" }
    );
    let _ = writeln!(
        text,
        "  busy         {}{}",
        d.busy,
        if d.outdated_working > 0 {
            format!(
                " ({} busy or unknown of an older template)",
                d.outdated_working
            )
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        text,
        "  unknown      {} (no answer: counted as busy, never deleted)",
        d.unknown
    );
    let _ = writeln!(text, "  idle         {}", d.idle);
    let _ = writeln!(
        text,
        "  starting     {} (their pods do not run yet: capacity)",
        d.starting
    );
    let _ = writeln!(
        text,
        "  finished     {} (left to ttlSecondsAfterFinished)",
        d.finished
    );
    let _ = writeln!(text, "  terminating  {}", d.terminating);
    let _ = writeln!(text, "  idle target  {}", d.idle_target);
    let _ = writeln!(
        text,
        "  bounds       min {}, max {}",
        d.min_replicas, d.max_replicas
    );
    let _ = writeln!(
        text,
        "  delay        {}s{}",
        d.scale_down_delay_seconds,
        d.held_by_delay
            .map_or(String::new(), |held| format!(": holding {held}"))
    );
    let _ = writeln!(text, "  capacity     {} Job(s) now", d.capacity);
    if !plan.creates.is_empty() {
        let _ = writeln!(text, "  create       {}", plan.creates.join(", "));
    }
    if !plan.deletions.is_empty() {
        let names: Vec<&str> = plan.deletions.iter().map(|d| d.job.as_str()).collect();
        let _ = writeln!(
            text,
            "  delete       {} (each only after a fresh idle answer)",
            names.join(", ")
        );
    }
    let _ = writeln!(text, "why:");
    for step in &d.why {
        let _ = writeln!(text, "  - {step}");
    }
    text
}
