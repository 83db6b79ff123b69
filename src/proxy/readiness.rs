//! Whether the app can take connections: the EndpointSlices labelled
//! `kubernetes.io/service-name=<--endpoints>` (any slice name, so a Service named unlike the
//! Deployment works), or the core/v1 Endpoints of that name where EndpointSlices are unavailable
//! or forbidden. Terminating and not-ready endpoints never count as ready.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Endpoints;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::ListParams;
use kube::runtime::reflector::store::Writer;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::ErrorLog;
use super::metrics::ProxyMetrics;

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The endpoints of the watched Service, summed over its slices.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Readiness {
    /// The first complete list has been seen.
    pub synced: bool,
    /// Endpoints that are ready and not terminating.
    pub ready: usize,
    pub not_ready: usize,
    pub terminating: usize,
    /// The addresses of the ready endpoints (for routes that pick a pod).
    pub ready_addresses: Arc<[IpAddr]>,
    /// HSD mode: the pods that may take a connection, busy or not.
    pub pods: Arc<[super::hsd::PodCandidate]>,
}

/// Where readiness is read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    EndpointSlices,
    Endpoints,
}

/// Sums the endpoints of some EndpointSlices. An endpoint is ready when its `ready` condition is
/// not false (unset means ready, as the API documents) and it is not terminating.
pub fn from_slices<'a>(slices: impl IntoIterator<Item = &'a EndpointSlice>) -> Readiness {
    let mut readiness = Readiness::default();
    let mut addresses = Vec::new();
    for slice in slices {
        for endpoint in &slice.endpoints {
            let conditions = endpoint.conditions.as_ref();
            let terminating = conditions.and_then(|c| c.terminating) == Some(true);
            let ready = conditions.and_then(|c| c.ready) != Some(false);
            if terminating {
                readiness.terminating += 1;
            } else if ready {
                readiness.ready += 1;
                addresses.extend(
                    endpoint
                        .addresses
                        .iter()
                        .filter_map(|a| a.parse::<IpAddr>().ok()),
                );
            } else {
                readiness.not_ready += 1;
            }
        }
    }
    readiness.ready_addresses = addresses.into();
    readiness
}

/// The same from core/v1 Endpoints: `addresses` are ready, `notReadyAddresses` are not.
/// (Endpoints list no terminating pods: they move to notReadyAddresses.)
pub fn from_endpoints(endpoints: Option<&Endpoints>) -> Readiness {
    let mut readiness = Readiness::default();
    let mut addresses = Vec::new();
    for subset in endpoints
        .and_then(|e| e.subsets.as_ref())
        .into_iter()
        .flatten()
    {
        let ready = subset.addresses.as_deref().unwrap_or_default();
        readiness.ready += ready.len();
        addresses.extend(ready.iter().filter_map(|a| a.ip.parse::<IpAddr>().ok()));
        readiness.not_ready += subset.not_ready_addresses.as_ref().map_or(0, Vec::len);
    }
    readiness.ready_addresses = addresses.into();
    readiness
}

/// EndpointSlices unless listing them is forbidden (403) or the API does not serve them (404).
async fn choose_source(client: &Client, namespace: &str, selector: &str) -> kube::Result<Source> {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
    match slices
        .list_metadata(&ListParams::default().labels(selector).limit(1))
        .await
    {
        Ok(_) => Ok(Source::EndpointSlices),
        Err(kube::Error::Api(status)) if status.code == 403 || status.code == 404 => {
            tracing::info!(message = %status.message, "EndpointSlices unavailable: using Endpoints");
            Ok(Source::Endpoints)
        }
        Err(error) => Err(error),
    }
}

fn publish(sender: &watch::Sender<Readiness>, metrics: &ProxyMetrics, next: Readiness) {
    metrics.set_endpoints(next.ready, next.not_ready, next.terminating);
    sender.send_if_modified(|current| {
        if *current == next {
            false
        } else {
            tracing::info!(
                ready = next.ready,
                not_ready = next.not_ready,
                terminating = next.terminating,
                "endpoints changed"
            );
            *current = next;
            true
        }
    });
}

/// Watches the endpoints of Service `name` and publishes their readiness until `stop`.
pub async fn run(
    client: Client,
    namespace: String,
    name: String,
    sender: &watch::Sender<Readiness>,
    metrics: Arc<ProxyMetrics>,
    stop: CancellationToken,
) {
    let selector = format!("{SERVICE_NAME_LABEL}={name}");
    let mut errors = ErrorLog::new("choosing the readiness source");
    let source = loop {
        match choose_source(&client, &namespace, &selector).await {
            Ok(source) => break source,
            Err(error) => errors.failed(&error),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    };
    match source {
        Source::EndpointSlices => {
            eprintln!("readiness from EndpointSlices labelled {selector} in namespace {namespace}")
        }
        Source::Endpoints => eprintln!(
            "readiness from Endpoints {namespace}/{name} (EndpointSlices are not available to this identity)"
        ),
    }
    match source {
        Source::EndpointSlices => {
            let api: Api<EndpointSlice> = Api::namespaced(client, &namespace);
            let config = watcher::Config::default().labels(&selector);
            follow(
                api,
                config,
                Writer::default(),
                sender,
                &metrics,
                &stop,
                |slices| from_slices(slices.iter().map(|s| s.as_ref())),
            )
            .await
        }
        Source::Endpoints => {
            let api: Api<Endpoints> = Api::namespaced(client, &namespace);
            let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
            follow(
                api,
                config,
                Writer::default(),
                sender,
                &metrics,
                &stop,
                |endpoints| from_endpoints(endpoints.first().map(|e| e.as_ref())),
            )
            .await
        }
    }
}

/// Caches the objects of one watch in `writer`'s store (others may read it too) and publishes
/// `summarize` of them after every event.
pub(super) async fn follow<K>(
    api: Api<K>,
    config: watcher::Config,
    writer: Writer<K>,
    sender: &watch::Sender<Readiness>,
    metrics: &ProxyMetrics,
    stop: &CancellationToken,
    summarize: impl Fn(&[Arc<K>]) -> Readiness,
) where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let reader = writer.as_reader();
    let mut events = watcher(api, config)
        .backoff(super::watch_backoff())
        .modify(|object: &mut K| object.meta_mut().managed_fields = None)
        .reflect(writer)
        .boxed();
    let mut errors = ErrorLog::new("watching endpoints");
    let mut synced = false;
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            event = events.next() => event,
        };
        match event {
            None => return,
            Some(Err(error)) => errors.failed(&error),
            Some(Ok(event)) => {
                errors.recovered();
                if matches!(event, watcher::Event::InitDone) {
                    synced = true;
                }
                if synced {
                    let mut next = summarize(&reader.state());
                    next.synced = true;
                    publish(sender, metrics, next);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn slice(endpoints: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": "app-abc", "labels": {SERVICE_NAME_LABEL: "app"}},
            "addressType": "IPv4",
            "endpoints": endpoints,
        }))
        .unwrap()
    }

    #[test]
    fn ready_means_ready_and_not_terminating() {
        let slices = [
            slice(json!([
                {"addresses": ["192.0.2.1"], "conditions": {"ready": true}},
                {"addresses": ["192.0.2.2"], "conditions": {}},
                {"addresses": ["192.0.2.3"], "conditions": {"ready": false}},
                {"addresses": ["192.0.2.4"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                // Terminating wins even where a writer left ready true.
                {"addresses": ["192.0.2.5"], "conditions": {"ready": true, "terminating": true}},
            ])),
            slice(json!([{"addresses": ["192.0.2.6"]}])),
        ];
        let readiness = from_slices(&slices);
        assert_eq!(
            (readiness.ready, readiness.not_ready, readiness.terminating),
            (3, 1, 2)
        );
        let ready: Vec<String> = readiness
            .ready_addresses
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(ready, ["192.0.2.1", "192.0.2.2", "192.0.2.6"]);
        assert_eq!(from_slices(&[slice(json!([]))]), Readiness::default());
    }

    #[test]
    fn endpoints_count_addresses_and_not_ready_addresses() {
        let endpoints: Endpoints = serde_json::from_value(json!({
            "metadata": {"name": "app"},
            "subsets": [
                {"addresses": [{"ip": "192.0.2.1"}], "notReadyAddresses": [{"ip": "192.0.2.2"}]},
                {"addresses": [{"ip": "192.0.2.3"}, {"ip": "not-an-ip"}]},
            ],
        }))
        .unwrap();
        let readiness = from_endpoints(Some(&endpoints));
        assert_eq!((readiness.ready, readiness.not_ready), (3, 1));
        assert_eq!(readiness.ready_addresses.len(), 2);
        assert_eq!(from_endpoints(None), Readiness::default());
    }
}
