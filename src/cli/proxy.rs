//! `proxy`: run the wake-on-connect proxy, or print its manifests with `--zpa-manifest`.

use super::GlobalArgs;
use crate::error::{Error, Result};
use crate::proxy::{self, ProxyArgs};

pub async fn proxy(global: &GlobalArgs, args: ProxyArgs) -> Result<i32> {
    if global.all_namespaces {
        eprintln!("error: the proxy works in one namespace: use -n, not -A");
        return Ok(2);
    }
    let config = match args.config() {
        Ok(config) => config,
        Err(message) => {
            eprintln!("error: {message}");
            return Ok(2);
        }
    };
    if args.zpa_manifest {
        // Printing needs no cluster: -n, else the kubeconfig context's namespace, else default.
        let namespace = match &global.namespace {
            Some(namespace) => namespace.clone(),
            None => crate::client::load_config(&global.client_options())
                .await
                .map(|c| c.default_namespace)
                .unwrap_or_else(|_| "default".to_string()),
        };
        let documents =
            proxy::manifest::render(&args, &config, &namespace).map_err(Error::Invalid)?;
        print!("{}", crate::manifests::to_yaml_documents(&documents));
        return Ok(0);
    }
    let (client, stats, default_namespace) =
        crate::client::connect(&global.client_options()).await?;
    let namespace = global.namespace.clone().unwrap_or(default_namespace);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        crate::watch::shutdown_signal().await;
        eprintln!("shutting down");
        on_signal.cancel();
    });
    proxy::run(client, stats, namespace, config, shutdown).await?;
    Ok(0)
}
