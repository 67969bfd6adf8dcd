//! What every reconcile shares: the client, settings, the Event recorder, metrics and the retry
//! backoff.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// The `resourceVersion` of the operator's last write of each object's status, until the
    /// controller's cache has caught up with it ([`crate::pipeline::instrumented`]).
    pub written: Mutex<HashMap<String, u64>>,
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
            written: Mutex::new(HashMap::new()),
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
///
/// Exponential in time, not in failures: a failure while the object is still inside its current
/// delay (a reconcile that a watch event started early) does not double the delay again, it only
/// keeps the retry where it was. Otherwise a burst of events under a flaky API server (each
/// reconcile failing within the same second) would push one object's retry minutes out.
#[derive(Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, Failing>>,
}

/// How an object has been failing.
struct Failing {
    /// Delays handed out so far (the next one is 2^n seconds).
    doublings: u32,
    /// When the current delay ends.
    until: Instant,
}

impl Backoff {
    /// The longest delay.
    pub const MAX: Duration = Duration::from_secs(300);

    /// Records a failure of `key` and returns how long to wait before retrying it.
    pub fn next(&self, key: &str) -> Duration {
        self.next_at(key, Instant::now())
    }

    fn next_at(&self, key: &str, now: Instant) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let failing = failures.entry(key.to_string()).or_insert(Failing { doublings: 0, until: now });
        if failing.until > now {
            return failing.until - now;
        }
        let delay = Duration::from_secs(1u64 << failing.doublings.min(9)).min(Self::MAX);
        failing.doublings += 1;
        failing.until = now + delay;
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
        let start = Instant::now();
        // Each failure after the previous delay ended doubles it.
        let mut at = start;
        let mut delays = vec![];
        for _ in 0..12 {
            let delay = b.next_at("a", at);
            delays.push(delay.as_secs());
            at += delay;
        }
        assert_eq!(&delays[..4], &[1, 2, 4, 8]);
        assert_eq!(*delays.last().unwrap(), 300);
        assert_eq!(b.next_at("other", start).as_secs(), 1, "per object");
        b.reset("a");
        assert_eq!(b.next_at("a", at).as_secs(), 1);
    }

    #[test]
    fn failures_inside_the_current_delay_do_not_double_it() {
        let b = Backoff::default();
        let start = Instant::now();
        assert_eq!(b.next_at("a", start), Duration::from_secs(1));
        assert_eq!(b.next_at("a", start + Duration::from_millis(1001)), Duration::from_secs(2));
        // Seven failures in the next half second (watch events) keep the retry 2 s after the
        // second failure, instead of pushing it out to 2 minutes.
        let burst: Vec<Duration> =
            (1..=7).map(|i| b.next_at("a", start + Duration::from_millis(1001 + 70 * i))).collect();
        assert!(burst.iter().all(|d| *d < Duration::from_secs(2)), "{burst:?}");
        assert_eq!(burst[6], Duration::from_millis(2000 - 490));
        assert_eq!(b.next_at("a", start + Duration::from_millis(3001)), Duration::from_secs(4));
    }
}
