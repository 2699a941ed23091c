//! Per-namespace modes from the `kura.dev/mode` label, read through a Namespace reflector
//! (one watch, cached in memory). Only used when a cluster is reachable; without one (local
//! runs, `lint`, `review`) the policy's default mode applies.

use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tracing::warn;

use crate::policy::{Mode, NamespaceModes};

pub const MODE_LABEL: &str = "kura.dev/mode";

/// The reflector's view of namespaces.
#[derive(Debug, Clone)]
pub struct ClusterNamespaces {
    reader: reflector::Store<Namespace>,
}

impl NamespaceModes for ClusterNamespaces {
    fn mode(&self, namespace: &str) -> Option<Mode> {
        let ns = self.reader.get(&ObjectRef::new(namespace))?;
        let value = ns.metadata.labels.as_ref()?.get(MODE_LABEL)?;
        let mode = Mode::parse(value);
        if mode.is_none() {
            warn!(%namespace, %value, "namespace label kura.dev/mode is not enforce, warn or audit; using the policy default");
        }
        mode
    }
}

impl ClusterNamespaces {
    /// Starts the watch. The returned value answers at once; [`ClusterNamespaces::synced`]
    /// resolves once the first list has arrived.
    pub fn start(client: Client) -> Arc<Self> {
        let api: Api<Namespace> = Api::all(client);
        let (reader, writer) = reflector::store();
        let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
            .default_backoff()
            .touched_objects();
        tokio::spawn(async move {
            futures_util::pin_mut!(stream);
            while let Some(ev) = stream.next().await {
                if let Err(e) = ev {
                    warn!(error = %e, "namespace watch error; retrying");
                }
            }
        });
        Arc::new(ClusterNamespaces { reader })
    }

    /// Waits until the reflector has listed every namespace once.
    pub async fn synced(&self) -> bool {
        self.reader.wait_until_ready().await.is_ok()
    }
}
