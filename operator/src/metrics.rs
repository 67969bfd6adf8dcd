//! Prometheus metrics of the operator.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of the build-info gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    /// Crate version.
    pub version: String,
}

/// Labels naming a controller.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// `distillationjob`, `modeldeployment` or `benchmark`.
    pub controller: String,
}

/// Labels of a reconcile error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The controller.
    pub controller: String,
    /// The error's category (`invalid-spec`, `kube-api`, …), which decides its retry policy.
    pub category: String,
}

/// Labels of a finished rollout.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `promoted`, `rolled-back`, `reverted`, `aborted` or `paused`.
    pub outcome: String,
}

/// Labels of an analysis run.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    /// `Passed`, `Failed`, `Inconclusive` or `Error`.
    pub verdict: String,
}

/// Labels naming a ModelDeployment.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelDeploymentLabels {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub modeldeployment: String,
}

/// All operator metrics, registered in one registry.
pub struct Metrics {
    /// The registry `/metrics` encodes.
    pub registry: Registry,
    /// Reconciles run, by controller.
    pub reconciles: Family<ControllerLabels, Counter>,
    /// Reconcile errors, by controller and category.
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    /// Reconcile durations in seconds, by controller.
    pub reconcile_duration: Family<ControllerLabels, Histogram>,
    /// 1 while this replica holds the leader lease (or leader election is off).
    pub leader: Gauge,
    /// ModelDeployment rollouts that ended, by outcome.
    pub rollouts: Family<OutcomeLabels, Counter>,
    /// Canary analysis runs judged, by verdict.
    pub analysis_runs: Family<VerdictLabels, Counter>,
    /// Seconds from the first failed analysis's due time to the canary's weight 0.
    pub time_to_safety: Histogram,
    /// Percent of traffic each ModelDeployment's canary gets (0 without a canary).
    pub canary_weight: Family<ModelDeploymentLabels, Gauge>,
}

impl Metrics {
    /// Creates and registers every metric under the `distillery_operator` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("distillery_operator");
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info.get_or_create(&BuildLabels { version: env!("CARGO_PKG_VERSION").into() }).set(1);
        registry.register("build_info", "Operator build information", build_info);
        let reconciles = Family::<ControllerLabels, Counter>::default();
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        registry.register("reconcile_errors", "Reconcile errors by category", reconcile_errors.clone());
        let reconcile_duration = Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 14))
        });
        registry.register("reconcile_duration_seconds", "Reconcile duration", reconcile_duration.clone());
        let leader = Gauge::default();
        registry.register("leader", "1 while this replica is the leader", leader.clone());
        let rollouts = Family::<OutcomeLabels, Counter>::default();
        registry.register("rollouts", "ModelDeployment rollouts that ended, by outcome", rollouts.clone());
        let analysis_runs = Family::<VerdictLabels, Counter>::default();
        registry.register("analysis_runs", "Canary analysis runs judged, by verdict", analysis_runs.clone());
        let time_to_safety = Histogram::new([1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 120.0, 300.0]);
        registry.register(
            "time_to_safety_seconds",
            "Seconds from a bad canary's first failed analysis being due to its traffic weight reaching 0",
            time_to_safety.clone(),
        );
        let canary_weight = Family::<ModelDeploymentLabels, Gauge>::default();
        registry.register(
            "canary_weight",
            "Percent of a ModelDeployment's traffic its canary gets, as the operator last set it (0 without a canary)",
            canary_weight.clone(),
        );
        Self {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            leader,
            rollouts,
            analysis_runs,
            time_to_safety,
            canary_weight,
        }
    }

    /// Counts a reconcile of `controller`.
    pub fn reconcile_started(&self, controller: &str) {
        self.reconciles.get_or_create(&ControllerLabels { controller: controller.into() }).inc();
    }

    /// Records how long a reconcile of `controller` took.
    pub fn reconcile_finished(&self, controller: &str, took: std::time::Duration) {
        self.reconcile_duration
            .get_or_create(&ControllerLabels { controller: controller.into() })
            .observe(took.as_secs_f64());
    }

    /// Counts a failed reconcile of `controller` by the error's category.
    pub fn reconcile_error(&self, controller: &str, category: &str) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels { controller: controller.into(), category: category.into() })
            .inc();
    }

    /// Records the traffic weight the canary of `namespace/name` was given.
    pub fn set_canary_weight(&self, namespace: &str, name: &str, weight: i32) {
        self.canary_weight
            .get_or_create(&ModelDeploymentLabels { namespace: namespace.into(), modeldeployment: name.into() })
            .set(i64::from(weight));
    }

    /// Drops the series of a ModelDeployment that is going away.
    pub fn forget_model_deployment(&self, namespace: &str, name: &str) {
        self.canary_weight.remove(&ModelDeploymentLabels { namespace: namespace.into(), modeldeployment: name.into() });
    }

    /// The registry in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
