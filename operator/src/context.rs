//! What every reconcile shares: the client, settings, the Event recorder, metrics and the retry
//! backoff.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::runtime::events::{Recorder, Reporter};

use crate::distillation::build::WorkerSettings;
use crate::metrics::Metrics;
use crate::modeldeployment::build::ServingSettings;

/// Shared state of the controllers.
pub struct Context {
    /// The API client.
    pub client: kube::Client,
    /// How worker Jobs are built.
    pub worker: WorkerSettings,
    /// ClusterRole bound to the worker ServiceAccount in each namespace with jobs.
    pub worker_cluster_role: String,
    /// Field manager of every server-side apply the operator makes.
    pub field_manager: String,
    /// Records Events on the resources.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Retry delays of failing objects.
    pub backoff: Backoff,
    /// Namespaces whose worker ServiceAccount and RoleBinding this run has applied.
    pub accounts_ready: Mutex<HashSet<String>>,
    /// How many objects a controller reconciles at once.
    pub concurrency: u16,
    /// How ModelDeployments' servers and analysis Jobs are built.
    pub serving: ServingSettings,
    /// How long a canary's pods may take to become ready before it is rolled back.
    pub canary_ready_deadline: Duration,
}

impl Context {
    /// A context for `client`; Events are reported as `distillery-operator` from `identity`.
    pub fn new(
        client: kube::Client,
        worker: WorkerSettings,
        worker_cluster_role: String,
        identity: &str,
        metrics: Arc<Metrics>,
    ) -> Self {
        let reporter = Reporter { controller: FIELD_MANAGER.into(), instance: Some(identity.to_string()) };
        let serving =
            ServingSettings { server_image: DEFAULT_SERVER_IMAGE.into(), worker_image: worker.default_image.clone() };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            serving,
            canary_ready_deadline: crate::modeldeployment::rollout::DEFAULT_CANARY_READY_DEADLINE,
            worker,
            worker_cluster_role,
            field_manager: FIELD_MANAGER.into(),
            metrics,
            backoff: Backoff::default(),
            accounts_ready: Mutex::new(HashSet::new()),
            concurrency: DEFAULT_CONCURRENCY,
        }
    }
}

/// Reconciles in flight at once per controller, unless configured otherwise.
pub const DEFAULT_CONCURRENCY: u16 = 8;

/// Server image of ModelDeployments, unless configured otherwise.
pub const DEFAULT_SERVER_IMAGE: &str = "ghcr.io/distillery-dev/distillery-server:0.1.0";

/// The operator's field manager.
pub const FIELD_MANAGER: &str = "distillery-operator";

/// Per-object exponential backoff: 1 s, 2 s, 4 s, … up to 5 minutes; reset by a success.
#[derive(Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    /// The longest delay.
    pub const MAX: Duration = Duration::from_secs(300);

    /// Records a failure of `key` and returns how long to wait before retrying it.
    pub fn next(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = failures.entry(key.to_string()).or_insert(0);
        let delay = Duration::from_secs(1u64 << (*n).min(9)).min(Self::MAX);
        *n += 1;
        delay
    }

    /// Forgets the failures of `key`.
    pub fn reset(&self, key: &str) {
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let b = Backoff::default();
        let delays: Vec<u64> = (0..12).map(|_| b.next("a").as_secs()).collect();
        assert_eq!(&delays[..4], &[1, 2, 4, 8]);
        assert_eq!(*delays.last().unwrap(), 300);
        assert_eq!(b.next("other").as_secs(), 1, "per object");
        b.reset("a");
        assert_eq!(b.next("a").as_secs(), 1);
    }
}
