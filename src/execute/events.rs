//! Events on the HSD and on active-standby Services (`events.k8s.io/v1`), best effort.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::PostParams;
use kube::core::ObjectMeta;
use kube::{Api, Client, Resource};

use super::{FIELD_MANAGER, REPORTING_CONTROLLER};
use crate::api::HotStandbyDeployment;
use crate::error::{Result, kube_error};
use crate::plan::{EventType, ObservedHsd, PlannedEvent};

/// Creates one `events.k8s.io/v1` Event about the HSD.
///
/// Not kube's `events::Recorder`, though it writes to the same events API: the Recorder folds
/// events of the same reason within six minutes into a series that keeps the *first* note, so
/// a second `ScaledUp` would show "from 3 to 5" while the Deployment went from 5 to 7. Every
/// number this tool publishes must be the one it acted on, so each event is its own object.
pub async fn publish(client: &Client, hsd: &ObservedHsd, event: &PlannedEvent) -> Result<()> {
    let regarding = Regarding {
        api_version: HotStandbyDeployment::api_version(&()).to_string(),
        kind: HotStandbyDeployment::kind(&()).to_string(),
        name: hsd.name.clone(),
        namespace: hsd.namespace.clone(),
        uid: hsd.uid.clone(),
    };
    publish_about(client, &regarding, event).await
}

/// The object an event is about.
#[derive(Clone, Debug)]
pub struct Regarding {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

/// Creates one `events.k8s.io/v1` Event about any object of this tool's kinds.
pub async fn publish_about(
    client: &Client,
    regarding: &Regarding,
    event: &PlannedEvent,
) -> Result<()> {
    let now = jiff::Timestamp::now();
    let hsd = regarding;
    let (namespace, object) = (&hsd.namespace, &hsd.name);
    let api: Api<Event> = Api::namespaced(client.clone(), namespace);
    let body = Event {
        metadata: ObjectMeta {
            name: Some(format!("{object}.{:x}", now.as_nanosecond())),
            namespace: Some(namespace.to_string()),
            ..Default::default()
        },
        event_time: Some(MicroTime(now)),
        action: Some(event.reason.to_string()),
        reason: Some(event.reason.to_string()),
        note: Some(truncate(&event.note, 1000)),
        type_: Some(
            match event.type_ {
                EventType::Normal => "Normal",
                EventType::Warning => "Warning",
            }
            .to_string(),
        ),
        reporting_controller: Some(REPORTING_CONTROLLER.to_string()),
        reporting_instance: Some(reporting_instance()),
        regarding: Some(ObjectReference {
            api_version: Some(hsd.api_version.clone()),
            kind: Some(hsd.kind.clone()),
            name: Some(hsd.name.clone()),
            namespace: Some(hsd.namespace.clone()),
            uid: Some(hsd.uid.clone()),
            ..Default::default()
        }),
        ..Default::default()
    };
    api.create(&PostParams::default(), &body)
        .await
        .map_err(kube_error(
            format!("recording event {} on {namespace}/{object}", event.reason),
            "create",
            "events.events.k8s.io",
            Some(namespace),
        ))?;
    Ok(())
}

fn reporting_instance() -> String {
    std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| FIELD_MANAGER.to_string())
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}
