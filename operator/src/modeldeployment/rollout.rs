//! The rollout state machine: from a ModelDeployment, its stored status and what the reconciler
//! observed, decide what each track should serve, the canary's weight, which analysis to run, and
//! the new status — without a client. Pure, so every transition is unit-tested.
//!
//! The rules, in order:
//! - the first model goes straight to stable, no canary;
//! - a new model (new digest) becomes the canary at step 0; each step sets its weight once the
//!   canary's pods are ready, holds for its `pause` with an analysis every `interval`, and moves
//!   on only after a **Passed** analysis whose window lies in the step; after the last step the
//!   canary is promoted: stable takes the new model while the canary carries all traffic, then
//!   the canary's weight goes to 0 and its pods away;
//! - `failureLimit` Failed analyses roll the canary back — weight 0 first, pods only once the
//!   split is observed at 0 — or pause the rollout without `autoRollback`; stable is untouched;
//! - a rejected digest is not tried again while the spec names it (phase RolledBack, nothing
//!   written), unless `distillery.dev/retry` is set;
//! - the spec naming the stable model again (a GitOps revert) stops the canary at once;
//! - a canary whose pods are not ready within the deadline is rolled back.

use std::time::Duration;

use distillery_crds::ModelDeployment;
use distillery_crds::analysis::{AnalysisRun, CONFIDENCE, Thresholds, judge};
use distillery_crds::conditions::{reasons, set_condition, types};
use distillery_crds::deployment::{
    AnalysisResult, AnalysisVerdict, ModelDeploymentStatus, RejectedModel, ResolvedModel, RolloutPhase, TrackStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::build::{achieved_weight, canary_replicas};

/// How long a canary's pods may take to become ready at a step before it is rolled back, unless
/// the operator is configured otherwise.
pub const DEFAULT_CANARY_READY_DEADLINE: Duration = Duration::from_secs(600);
/// The slow resync of a settled ModelDeployment (watches bring every change before it).
const RESYNC: Duration = Duration::from_secs(300);
/// How soon to look again while waiting on pods or a split to settle.
const SETTLE: Duration = Duration::from_secs(2);

/// Where the spec's model stands.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelState {
    /// Not servable yet (the DistillationJob has not succeeded, or the artifact is being read):
    /// `reason` and `message` go into `ModelReady=False`.
    Waiting {
        /// Condition reason.
        reason: String,
        /// Condition message.
        message: String,
    },
    /// Cannot be served as it stands (bad artifact): `ModelReady=False`, phase Degraded when
    /// nothing serves, stable untouched otherwise.
    Invalid {
        /// Condition reason.
        reason: String,
        /// Condition message.
        message: String,
    },
    /// Resolved: an artifact, variant and digest.
    Resolved(ResolvedModel),
}

/// What the reconciler observed of one track's Deployment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrackObservation {
    /// The Deployment exists.
    pub exists: bool,
    /// Its pods are all of the current template and as many as asked for.
    pub rolled_out: bool,
    /// Ready pods of the current template.
    pub ready: i32,
}

/// The analysis Job of the next run, as observed.
#[derive(Clone, Debug, PartialEq)]
pub enum AnalysisObservation {
    /// No Job for the next run exists.
    None,
    /// It is measuring; its window ends at `due`.
    Running {
        /// When its window ends.
        due: Timestamp,
    },
    /// It finished and left what it measured.
    Done {
        /// When its window started.
        started: Timestamp,
        /// When its window ended (its verdict was due).
        due: Timestamp,
        /// What it measured.
        run: AnalysisRun,
    },
    /// It failed without a result.
    Failed {
        /// When its window started.
        started: Timestamp,
        /// When its window ended.
        due: Timestamp,
        /// Why, in words.
        message: String,
    },
}

/// Manual controls found on the object.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Controls {
    /// `distillery.dev/promote`.
    pub promote: bool,
    /// `distillery.dev/abort`.
    pub abort: bool,
    /// `distillery.dev/retry`.
    pub retry: bool,
}

/// Everything the state machine reads besides the object.
#[derive(Clone, Debug)]
pub struct Observed {
    /// Now.
    pub now: Timestamp,
    /// The spec's model.
    pub model: ModelState,
    /// The stable Deployment.
    pub stable: TrackObservation,
    /// The canary Deployment.
    pub canary: TrackObservation,
    /// The canary weight the live split gives now (`None` when it cannot be read).
    pub split_weight: Option<i32>,
    /// Why the traffic split cannot be applied (a missing HTTPRoute or Gateway API CRD).
    pub routing_problem: Option<String>,
    /// The next analysis run's Job.
    pub analysis: AnalysisObservation,
    /// Manual controls.
    pub controls: Controls,
    /// How long a canary's pods may take to become ready.
    pub canary_ready_deadline: Duration,
}

/// An Event to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedEvent {
    /// Warning rather than Normal.
    pub warning: bool,
    /// Reason (CamelCase).
    pub reason: &'static str,
    /// Note.
    pub note: String,
}

/// What a track's Deployment should be.
#[derive(Clone, Debug, PartialEq)]
pub struct TrackPlan {
    /// The model, revision and claim it serves.
    pub model: TrackStatus,
    /// Pods.
    pub replicas: i32,
}

/// What the reconciler should make true.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The new status.
    pub status: ModelDeploymentStatus,
    /// The stable Deployment (`None`: none yet).
    pub stable: Option<TrackPlan>,
    /// The canary Deployment (`None`: it should not exist).
    pub canary: Option<TrackPlan>,
    /// Percent of traffic the split should give the canary.
    pub canary_weight: i32,
    /// The analysis run (1-based) whose Job should exist, for the canary's revision.
    pub analysis_run: Option<u32>,
    /// Events to record.
    pub events: Vec<PlannedEvent>,
    /// Annotations to remove (handled controls).
    pub clear: Vec<&'static str>,
    /// When to look again (besides watches).
    pub requeue: Duration,
    /// A rollout ended: `promoted`, `rolled-back`, `reverted`, `aborted` or `paused`.
    pub outcome: Option<&'static str>,
    /// An analysis run was judged with this verdict.
    pub verdict: Option<AnalysisVerdict>,
    /// Seconds from the first failed analysis's due time to the canary's weight 0.
    pub time_to_safety: Option<f64>,
}

/// `30s`, `5m`, `1h30m`, `250ms` as a duration.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut total = 0.0f64;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).filter(|&i| i > 0)?;
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, seconds) = [("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)]
            .into_iter()
            .find(|(u, _)| rest.starts_with(u) && !(*u == "m" && rest.starts_with("ms")))?;
        rest = &rest[unit.len()..];
        total += value * seconds;
    }
    Some(Duration::from_secs_f64(total))
}

fn since(now: Timestamp, then: &Time) -> Duration {
    let d: SignedDuration = now.duration_since(then.0);
    Duration::try_from(d).unwrap_or_default()
}

fn short(digest: &Option<String>) -> String {
    digest.as_deref().map(|d| d.chars().take(12).collect()).unwrap_or_else(|| "?".into())
}

fn describe(track: &TrackStatus) -> String {
    format!(
        "revision {} ({}, {}, sha256 {})",
        track.revision,
        track.model_uri,
        track.variant.as_deref().unwrap_or("auto"),
        short(&track.model_digest)
    )
}

fn track_from(model: &ResolvedModel, revision: i64) -> TrackStatus {
    TrackStatus {
        revision,
        model_uri: model.model_uri.clone(),
        model_digest: Some(model.model_digest.clone()),
        variant: Some(model.variant.clone()),
        volume_claim: model.volume_claim.clone(),
        weight: 0,
        replicas: 0,
        ready_replicas: 0,
    }
}

/// The state machine's step. See the module's documentation for the rules.
pub fn plan(md: &ModelDeployment, observed: &Observed) -> Plan {
    Planner::new(md, observed).run()
}

struct Planner<'a> {
    md: &'a ModelDeployment,
    obs: &'a Observed,
    now: Time,
    generation: Option<i64>,
    plan: Plan,
}

impl<'a> Planner<'a> {
    fn new(md: &'a ModelDeployment, obs: &'a Observed) -> Self {
        let mut status = md.status.clone().unwrap_or_default();
        status.observed_generation = md.metadata.generation;
        let plan = Plan {
            status,
            stable: None,
            canary: None,
            canary_weight: 0,
            analysis_run: None,
            events: vec![],
            clear: vec![],
            requeue: RESYNC,
            outcome: None,
            verdict: None,
            time_to_safety: None,
        };
        Self { md, obs, now: Time(obs.now), generation: md.metadata.generation, plan }
    }

    fn event(&mut self, warning: bool, reason: &'static str, note: impl Into<String>) {
        self.plan.events.push(PlannedEvent { warning, reason, note: note.into() });
    }

    fn condition(&mut self, type_: &str, status: bool, reason: &str, message: impl Into<String>) {
        set_condition(&mut self.plan.status.conditions, type_, status, reason, message, self.generation, &self.now);
    }

    fn requeue_within(&mut self, after: Duration) {
        self.plan.requeue = self.plan.requeue.min(after.max(Duration::from_millis(200)));
    }

    fn replicas(&self) -> i32 {
        self.md.spec.replicas
    }

    fn run(mut self) -> Plan {
        self.condition(types::ACCEPTED, true, reasons::SPEC_VALID, "the spec is valid");
        let model = match &self.obs.model {
            ModelState::Resolved(m) => {
                let m = m.clone();
                let message =
                    format!("{} ({}, sha256 {})", m.model_uri, m.variant, short(&Some(m.model_digest.clone())));
                self.condition(types::MODEL_READY, true, reasons::RESOLVED, message);
                self.plan.status.resolved_model = Some(m.clone());
                Some(m)
            }
            ModelState::Waiting { reason, message } | ModelState::Invalid { reason, message } => {
                let before =
                    distillery_crds::conditions::find(&self.plan.status.conditions, types::MODEL_READY).cloned();
                self.condition(types::MODEL_READY, false, reason, message.clone());
                let changed =
                    before.is_none_or(|c| c.status != "False" || c.reason != *reason || c.message != *message);
                if changed {
                    let warning =
                        matches!(self.obs.model, ModelState::Invalid { .. }) || reason == reasons::REFERENCE_NOT_FOUND;
                    let reason = match reason.as_str() {
                        reasons::REFERENCE_NOT_FOUND => "ReferenceNotFound",
                        reasons::ARTIFACT_INVALID => "ArtifactInvalid",
                        reasons::RESOLVING => "Resolving",
                        _ => "WaitingForModel",
                    };
                    self.event(warning, reason, message.clone());
                }
                None
            }
        };
        match model {
            Some(model) => self.with_model(&model),
            None => self.without_model(),
        }
        self.finish();
        self.plan
    }

    /// The spec's model is not servable: keep whatever serves, start nothing.
    fn without_model(&mut self) {
        let Some(stable) = self.plan.status.stable.clone() else {
            let invalid = matches!(self.obs.model, ModelState::Invalid { .. });
            self.plan.status.phase = Some(if invalid { RolloutPhase::Degraded } else { RolloutPhase::Progressing });
            self.plan.status.message = Some(match &self.obs.model {
                ModelState::Waiting { message, .. } | ModelState::Invalid { message, .. } => message.clone(),
                ModelState::Resolved(_) => unreachable!(),
            });
            return;
        };
        self.keep_stable(&stable);
        // A canary in flight keeps its weight but is not judged or stepped while the spec names
        // a model that cannot be served; a person or a fixed spec decides.
        if let Some(canary) = self.plan.status.canary.clone() {
            self.keep_canary(&canary, canary.weight);
        }
        if matches!(self.obs.model, ModelState::Invalid { .. }) {
            self.plan.status.phase = Some(RolloutPhase::Degraded);
        } else if self.plan.status.phase.is_none() {
            self.plan.status.phase = Some(RolloutPhase::Progressing);
        }
        let reason = match &self.obs.model {
            ModelState::Waiting { message, .. } | ModelState::Invalid { message, .. } => message.clone(),
            ModelState::Resolved(_) => unreachable!(),
        };
        self.plan.status.message = Some(format!("stable serves {}; the spec's model: {reason}", describe(&stable)));
    }

    fn keep_stable(&mut self, stable: &TrackStatus) {
        self.plan.stable = Some(TrackPlan { model: stable.clone(), replicas: self.replicas() });
    }

    fn keep_canary(&mut self, canary: &TrackStatus, weight: i32) {
        let replicas = if weight > 0 || canary.replicas > 0 { canary.replicas.max(1) } else { 0 };
        self.plan.canary = Some(TrackPlan { model: canary.clone(), replicas });
        self.plan.canary_weight = weight;
    }

    fn with_model(&mut self, model: &ResolvedModel) {
        let controls = self.obs.controls;
        if controls.retry {
            self.plan.clear.push(distillery_crds::deployment::RETRY_ANNOTATION);
            let rejected_here = self.plan.status.rejected_model.as_ref().and_then(|r| r.model_digest.as_deref())
                == Some(model.model_digest.as_str());
            if rejected_here {
                self.plan.status.rejected_model = None;
                self.event(
                    false,
                    "Retry",
                    format!("retrying the rejected model sha256 {}", short(&Some(model.model_digest.clone()))),
                );
            } else if self.plan.status.phase == Some(RolloutPhase::Paused) {
                self.plan.status.last_analysis = None;
                self.plan.status.step_started = Some(self.now.clone());
                self.plan.status.phase = Some(RolloutPhase::Progressing);
                self.event(false, "Resumed", "analysis resumes from fresh evidence at the current step");
            }
        }
        let Some(stable) = self.plan.status.stable.clone() else {
            self.first_model(model);
            return;
        };
        let digest = Some(model.model_digest.clone());
        if stable.model_digest == digest {
            self.spec_names_stable(&stable);
            return;
        }
        let rejected = self.plan.status.rejected_model.as_ref().is_some_and(|r| r.model_digest == digest);
        if rejected {
            self.keep_stable(&stable);
            self.wind_down_canary();
            self.stable_health(&stable, RolloutPhase::RolledBack);
            let reason = self.plan.status.rejected_model.as_ref().map(|r| r.reason.clone()).unwrap_or_default();
            self.plan.status.message = Some(format!(
                "the spec's model sha256 {} was rolled back and is not tried again until the spec or its digest changes (or distillery.dev/retry): {reason}",
                short(&digest)
            ));
            self.condition(types::PROGRESSING, false, reasons::MODEL_REJECTED, "the spec names a rejected model");
            return;
        }
        self.keep_stable(&stable);
        let canary = match self.plan.status.canary.clone() {
            Some(c) if c.model_digest == digest && c.revision > stable.revision => c,
            previous => self.start_canary(model, previous.as_ref()),
        };
        self.rollout(&canary);
    }

    fn first_model(&mut self, model: &ResolvedModel) {
        let revision = self.plan.status.last_revision + 1;
        self.plan.status.last_revision = revision;
        let stable = TrackStatus { weight: 100, ..track_from(model, revision) };
        self.plan.status.stable = Some(stable.clone());
        self.keep_stable(&stable);
        self.event(false, "Deploying", format!("first model goes straight to stable: {}", describe(&stable)));
        self.stable_health(&stable, RolloutPhase::Healthy);
    }

    /// Phase and conditions from the stable track's readiness; `settled` is the phase when all
    /// of stable's pods are ready.
    fn stable_health(&mut self, stable: &TrackStatus, settled: RolloutPhase) {
        let want = self.replicas();
        let obs = self.obs.stable;
        let ready = obs.ready >= want && obs.rolled_out;
        let phase = if ready {
            settled
        } else if !obs.rolled_out {
            RolloutPhase::Progressing
        } else {
            RolloutPhase::Degraded
        };
        let (status, reason, message) = if ready {
            (true, reasons::REPLICAS_READY, format!("{} of {want} stable replicas ready", obs.ready))
        } else {
            (false, reasons::REPLICAS_NOT_READY, format!("{} of {want} stable replicas ready", obs.ready))
        };
        self.condition(types::AVAILABLE, status, reason, message.clone());
        if !ready {
            self.requeue_within(SETTLE * 5);
        }
        if self.plan.status.canary.is_none() && matches!(phase, RolloutPhase::Healthy | RolloutPhase::Degraded) {
            self.condition(types::PROGRESSING, false, reasons::NO_CANARY, "no canary");
            self.condition(types::ANALYSIS_PASSING, true, reasons::NO_CANARY, "no canary to analyse");
        }
        if phase == RolloutPhase::Progressing && self.plan.status.canary.is_none() {
            self.condition(
                types::PROGRESSING,
                true,
                reasons::REPLICAS_NOT_READY,
                format!("stable rolling out: {message}"),
            );
        }
        self.plan.status.phase = Some(phase);
        if self.plan.status.canary.is_none() {
            self.plan.status.message = Some(format!("stable serves {}; {message}", describe(stable)));
        }
    }

    /// The spec names what stable serves: finish a promotion, or stop a canary (a revert).
    fn spec_names_stable(&mut self, stable: &TrackStatus) {
        self.keep_stable(stable);
        if self.plan.status.rejected_model.is_some() {
            self.plan.status.rejected_model = None;
            self.condition(types::ROLLED_BACK, false, reasons::REVERTED, "the spec names the stable model");
        }
        if let Some(canary) = self.plan.status.canary.clone() {
            if canary.revision == stable.revision {
                self.finish_promotion(stable, &canary);
                return;
            }
            if canary.weight > 0 || self.plan.status.current_step.is_some() {
                self.event(
                    false,
                    "Reverted",
                    format!(
                        "the spec names the stable model again: canary {} stopped without analysis",
                        describe(&canary)
                    ),
                );
                self.plan.outcome = Some("reverted");
                self.plan.status.current_step = None;
                self.plan.status.step_started = None;
                self.plan.status.last_analysis = None;
                self.condition(
                    types::PROGRESSING,
                    false,
                    reasons::REVERTED,
                    "the spec names the stable model; the canary was stopped",
                );
            }
            self.wind_down_canary();
        }
        self.stable_health(stable, RolloutPhase::Healthy);
    }

    /// Weight 0 first; the canary's pods go only once the split is observed at 0.
    fn wind_down_canary(&mut self) {
        let Some(mut canary) = self.plan.status.canary.clone() else { return };
        canary.weight = 0;
        if self.obs.split_weight == Some(0) {
            self.plan.status.canary = None;
            self.plan.canary = None;
        } else {
            self.plan.status.canary = Some(canary.clone());
            self.plan.canary = Some(TrackPlan { replicas: canary.replicas.max(0), model: canary });
            self.requeue_within(SETTLE);
        }
        self.plan.canary_weight = 0;
        self.plan.analysis_run = None;
        self.plan.status.current_step = None;
        self.plan.status.step_started = None;
        if let Some(stable) = self.plan.status.stable.as_mut() {
            stable.weight = 100;
        }
    }

    fn start_canary(&mut self, model: &ResolvedModel, previous: Option<&TrackStatus>) -> TrackStatus {
        let revision = self.plan.status.last_revision + 1;
        self.plan.status.last_revision = revision;
        let canary = track_from(model, revision);
        if let Some(previous) = previous {
            self.event(
                false,
                "CanaryReplaced",
                format!("the spec names another model: canary {} replaced", describe(previous)),
            );
        }
        self.event(false, "CanaryStarted", format!("new model {} goes out as a canary", describe(&canary)));
        self.plan.status.canary = Some(canary.clone());
        self.plan.status.current_step = Some(0);
        self.plan.status.step_started = Some(self.now.clone());
        self.plan.status.last_analysis = None;
        self.plan.status.phase = Some(RolloutPhase::Progressing);
        canary
    }

    fn rollout(&mut self, canary: &TrackStatus) {
        let spec = &self.md.spec;
        let steps = &spec.rollout.steps;
        let method = spec.rollout.traffic_routing.method;
        let step = (self.plan.status.current_step.unwrap_or(0) as usize).min(steps.len().saturating_sub(1));
        let weight = steps[step].weight;
        let controls = self.obs.controls;
        let paused = self.plan.status.phase == Some(RolloutPhase::Paused);

        if controls.abort {
            self.plan.clear.push(distillery_crds::deployment::ABORT_ANNOTATION);
            self.roll_back(canary, reasons::ABORTED, "aborted by the distillery.dev/abort annotation".into(), vec![]);
            return;
        }
        if controls.promote {
            self.plan.clear.push(distillery_crds::deployment::PROMOTE_ANNOTATION);
            self.event(
                false,
                "PromoteRequested",
                "promoted by the distillery.dev/promote annotation, remaining steps skipped",
            );
            self.promote(canary);
            return;
        }
        let replicas = canary_replicas(method, weight, self.replicas());
        let ready = self.obs.canary.exists && self.obs.canary.rolled_out && self.obs.canary.ready >= replicas;
        let current = self.plan.status.canary.clone().unwrap_or_else(|| canary.clone());
        if paused {
            // The canary keeps its step's weight and pods; the message and condition written
            // when it paused stay as they are.
            self.keep_canary(&current, weight);
            return;
        }
        if let Some(problem) = &self.obs.routing_problem {
            // Nothing can be split: the canary waits at weight 0 and the condition says why.
            self.keep_canary(&current, 0);
            self.plan.canary = Some(TrackPlan { model: current.clone(), replicas });
            let before = distillery_crds::conditions::find(&self.plan.status.conditions, types::PROGRESSING).cloned();
            self.condition(types::PROGRESSING, false, reasons::REFERENCE_NOT_FOUND, problem.clone());
            if before.is_none_or(|c| c.message != *problem) {
                self.event(true, "RoutingUnavailable", problem.clone());
            }
            self.plan.status.message = Some(format!("canary waits: {problem}"));
            self.plan.status.phase = Some(RolloutPhase::Degraded);
            self.update_weights(method, 0, replicas);
            // Nothing watches the route: look again now and then (not a hot loop).
            self.requeue_within(Duration::from_secs(30));
            return;
        }
        self.plan.canary = Some(TrackPlan { model: current.clone(), replicas });
        let started = self.plan.status.step_started.clone().unwrap_or_else(|| self.now.clone());
        if !ready {
            // Hold the previous weight until this step's pods are ready.
            let previous = if step == 0 { 0 } else { current.weight.min(weight) };
            self.plan.canary_weight = previous;
            self.update_weights(method, previous, replicas);
            let waited = since(self.obs.now, &started);
            if waited > self.obs.canary_ready_deadline {
                let message = format!(
                    "{} of {replicas} canary pods ready after {}s (deadline {}s)",
                    self.obs.canary.ready,
                    waited.as_secs(),
                    self.obs.canary_ready_deadline.as_secs()
                );
                self.roll_back(&current, reasons::CANARY_NOT_READY, message.clone(), vec![message]);
                return;
            }
            self.requeue_within((self.obs.canary_ready_deadline - waited).min(SETTLE * 5));
            self.progressing(step, steps.len(), previous, "waiting for canary pods to be ready");
            return;
        }
        self.plan.canary_weight = weight;
        self.update_weights(method, weight, replicas);
        let achieved = self.achieved(method, weight, replicas);
        if achieved > current.weight {
            self.event(
                false,
                "StepStarted",
                format!("step {}/{}: canary weight {weight}% (achieved {achieved}%)", step + 1, steps.len()),
            );
        }
        let next_run = self.plan.status.last_analysis.as_ref().map_or(0, |a| a.run) + 1;
        self.plan.analysis_run = Some(next_run);
        let judged = self.judge_run(canary, next_run);
        if let Some(judged) = judged {
            self.plan.analysis_run = Some(judged.run + 1);
            let failed = judged.runs.failed;
            let limit = self.md.spec.rollout.analysis.failure_limit;
            if judged.verdict == Some(AnalysisVerdict::Failed) && failed >= limit {
                let checks = judged.checks.iter().filter(|c| c.contains("FAILED")).cloned().collect::<Vec<_>>();
                let reason = if checks
                    .iter()
                    .any(|c| c.starts_with("accuracy") || c.starts_with("agreement") || c.starts_with("class-mix"))
                {
                    reasons::ACCURACY_DRIFT
                } else {
                    reasons::SERVING_DEGRADED
                };
                let message = format!("{failed} of {limit} allowed analyses failed: {}", checks.join("; "));
                if self.md.spec.auto_rollback {
                    self.roll_back(&current, reason, message, checks);
                } else {
                    self.pause(&current, step, message);
                }
                return;
            }
        }
        let pause = steps[step].pause.as_deref().and_then(parse_duration).unwrap_or_else(|| self.interval());
        let held = since(self.obs.now, &started);
        let last = self.plan.status.last_analysis.clone();
        let passed_in_step = last.as_ref().is_some_and(|a| {
            a.verdict == Some(AnalysisVerdict::Passed)
                && a.canary_revision == canary.revision
                && a.window_start.as_ref().is_some_and(|w| w.0 >= started.0)
        });
        if held >= pause && passed_in_step {
            if step + 1 >= steps.len() {
                self.promote(canary);
            } else {
                // The next step's analyses start once its weight is reached.
                self.plan.analysis_run = None;
                self.plan.status.current_step = Some(step as u32 + 1);
                self.plan.status.step_started = Some(self.now.clone());
                self.event(
                    false,
                    "StepPassed",
                    format!(
                        "step {}/{} held {}s with analysis passing; next step",
                        step + 1,
                        steps.len(),
                        held.as_secs()
                    ),
                );
                self.requeue_within(Duration::from_millis(200));
                self.progressing(step + 1, steps.len(), weight, "stepping up");
            }
            return;
        }
        if held < pause {
            self.requeue_within(pause - held);
        }
        let waiting = if passed_in_step {
            format!("holding for the step's pause ({}s of {}s)", held.as_secs(), pause.as_secs())
        } else {
            "analysing".to_string()
        };
        self.progressing(step, steps.len(), weight, &waiting);
    }

    fn interval(&self) -> Duration {
        parse_duration(&self.md.spec.rollout.analysis.interval).unwrap_or(Duration::from_secs(60))
    }

    fn achieved(&self, method: distillery_crds::deployment::TrafficMethod, weight: i32, replicas: i32) -> i32 {
        let stable_ready = self.obs.stable.ready.min(self.replicas()).max(0);
        let canary_ready = self.obs.canary.ready.min(replicas).max(0);
        achieved_weight(method, weight, stable_ready, canary_ready)
    }

    /// Records the weights and replica counts each track has in status.
    fn update_weights(&mut self, method: distillery_crds::deployment::TrafficMethod, weight: i32, replicas: i32) {
        let achieved = self.achieved(method, weight, replicas);
        let stable_ready = self.obs.stable.ready;
        let canary_ready = self.obs.canary.ready;
        let want = self.replicas();
        if let Some(c) = self.plan.status.canary.as_mut() {
            c.weight = achieved;
            c.replicas = replicas;
            c.ready_replicas = canary_ready;
        }
        if let Some(s) = self.plan.status.stable.as_mut() {
            s.weight = 100 - achieved;
            s.replicas = want;
            s.ready_replicas = stable_ready;
        }
    }

    fn progressing(&mut self, step: usize, steps: usize, weight: i32, what: &str) {
        let revision = self.plan.status.canary.as_ref().map_or(0, |c| c.revision);
        let achieved = self.plan.status.canary.as_ref().map_or(0, |c| c.weight);
        self.plan.status.phase = Some(RolloutPhase::Progressing);
        let message = format!(
            "canary revision {revision} at step {}/{steps} (weight {weight}%, achieved {achieved}%): {what}",
            step + 1
        );
        self.condition(types::PROGRESSING, true, reasons::CANARY_STEP, message.clone());
        self.plan.status.message = Some(message);
    }

    /// Judges the observed analysis Job of `run`, if it finished; returns the new analysis.
    fn judge_run(&mut self, canary: &TrackStatus, run: u32) -> Option<AnalysisResult> {
        let (started, due, measured) = match &self.obs.analysis {
            AnalysisObservation::None => return None,
            AnalysisObservation::Running { due } => {
                let left = Duration::try_from(due.duration_since(self.obs.now)).unwrap_or_default();
                self.requeue_within(left + Duration::from_secs(1));
                return None;
            }
            AnalysisObservation::Done { started, due, run } => (*started, *due, run.clone()),
            AnalysisObservation::Failed { started, due, message } => (
                *started,
                *due,
                AnalysisRun { errors: vec![format!("the analysis Job failed: {message}")], ..Default::default() },
            ),
        };
        let previous = self.plan.status.last_analysis.clone().filter(|a| a.canary_revision == canary.revision);
        let mut evidence = previous.as_ref().and_then(|a| a.evidence.clone());
        if let Some(golden) = &measured.golden {
            evidence.get_or_insert_default().add(golden);
        }
        let thresholds = Thresholds::from(&self.md.spec.rollout.analysis);
        let judgement = judge(evidence.as_ref(), measured.live.as_ref(), &measured.errors, &thresholds);
        let mut runs = previous.as_ref().map(|a| a.runs.clone()).unwrap_or_default();
        match judgement.verdict {
            AnalysisVerdict::Passed => runs.passed += 1,
            AnalysisVerdict::Failed => runs.failed += 1,
            AnalysisVerdict::Inconclusive => runs.inconclusive += 1,
            AnalysisVerdict::Error => runs.error += 1,
        }
        let first_failure_due = previous
            .as_ref()
            .and_then(|a| a.first_failure_due.clone())
            .or_else(|| (judgement.verdict == AnalysisVerdict::Failed).then_some(Time(due)));
        let mut checks: Vec<String> = judgement.checks.iter().map(ToString::to_string).collect();
        checks.extend(measured.errors.iter().map(|e| format!("measurement error: {e}")));
        let failed = judgement.failed();
        let message = match judgement.verdict {
            AnalysisVerdict::Passed => "every check holds".to_string(),
            AnalysisVerdict::Failed => failed.join("; "),
            AnalysisVerdict::Inconclusive => {
                "not enough evidence yet: ".to_string()
                    + &judgement
                        .checks
                        .iter()
                        .filter(|c| c.outcome == distillery_crds::analysis::Outcome::Inconclusive)
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
            }
            AnalysisVerdict::Error => measured.errors.join("; "),
        };
        let live = measured.live.as_ref();
        let result = AnalysisResult {
            time: Some(self.now.clone()),
            window_start: Some(Time(started)),
            canary_revision: canary.revision,
            run,
            verdict: Some(judgement.verdict),
            confidence: CONFIDENCE,
            samples: evidence.as_ref().map_or(0, |e| e.samples as u32),
            stable_accuracy: evidence.as_ref().and_then(|e| e.stable_accuracy()),
            canary_accuracy: evidence.as_ref().and_then(|e| e.canary_accuracy()),
            accuracy_drop_upper: judgement.accuracy_drop.map(|b| b.upper),
            accuracy_drop_lower: judgement.accuracy_drop.map(|b| b.lower),
            agreement: judgement.agreement.map(|b| b.estimate),
            agreement_lower: judgement.agreement.map(|b| b.lower),
            evidence,
            canary_requests: live.map(|l| l.canary.requests),
            stable_requests: live.map(|l| l.stable.requests),
            p99_latency_ms: live.and_then(|l| l.canary.p99_ms),
            stable_p99_latency_ms: live.and_then(|l| l.stable.p99_ms),
            error_rate: judgement.error_rate,
            class_mix_p_value: judgement.class_mix_p_value,
            passed: judgement.verdict == AnalysisVerdict::Passed,
            consecutive_failures: runs.failed,
            runs,
            first_failure_due,
            checks,
            message: Some(message.clone()),
        };
        let (warning, reason, condition_reason) = match judgement.verdict {
            AnalysisVerdict::Passed => (false, "AnalysisPassed", reasons::ANALYSIS_PASSED),
            AnalysisVerdict::Failed => (true, "AnalysisFailed", reasons::ANALYSIS_FAILED),
            AnalysisVerdict::Inconclusive => (false, "AnalysisInconclusive", reasons::ANALYSIS_INCONCLUSIVE),
            AnalysisVerdict::Error => (true, "AnalysisError", reasons::ANALYSIS_ERROR),
        };
        self.event(warning, reason, format!("run {run} of canary revision {}: {message}", canary.revision));
        self.condition(
            types::ANALYSIS_PASSING,
            judgement.verdict == AnalysisVerdict::Passed,
            condition_reason,
            format!("run {run}: {message}"),
        );
        self.plan.verdict = Some(judgement.verdict);
        self.plan.status.last_analysis = Some(result.clone());
        Some(result)
    }

    fn promote(&mut self, canary: &TrackStatus) {
        let mut stable = canary.clone();
        stable.weight = 0;
        self.plan.status.stable = Some(stable.clone());
        self.keep_stable(&stable);
        let mut current = self.plan.status.canary.clone().unwrap_or_else(|| canary.clone());
        current.weight = 100;
        self.plan.status.canary = Some(current.clone());
        let method = self.md.spec.rollout.traffic_routing.method;
        let replicas = canary_replicas(method, 100, self.replicas());
        self.plan.canary = Some(TrackPlan { model: current.clone(), replicas });
        self.plan.canary_weight = 100;
        self.plan.analysis_run = None;
        self.event(
            false,
            "Promoting",
            format!(
                "canary {} promoted: stable takes the new model while the canary carries all traffic",
                describe(canary)
            ),
        );
        self.plan.status.phase = Some(RolloutPhase::Progressing);
        let message = format!(
            "promoting revision {}: stable rolls to the new model while the canary serves all traffic",
            canary.revision
        );
        self.condition(types::PROGRESSING, true, reasons::PROMOTED, message.clone());
        self.plan.status.message = Some(message);
        self.requeue_within(SETTLE);
    }

    fn finish_promotion(&mut self, stable: &TrackStatus, canary: &TrackStatus) {
        let obs = self.obs.stable;
        if !(obs.rolled_out && obs.ready >= self.replicas()) {
            // Stable rolls to the new model while the canary still carries all traffic.
            let method = self.md.spec.rollout.traffic_routing.method;
            self.plan.canary =
                Some(TrackPlan { model: canary.clone(), replicas: canary_replicas(method, 100, self.replicas()) });
            self.plan.canary_weight = 100;
            self.plan.status.phase = Some(RolloutPhase::Progressing);
            let message = format!(
                "promoting revision {}: {} of {} stable replicas on the new model",
                stable.revision,
                obs.ready,
                self.replicas()
            );
            self.condition(types::PROGRESSING, true, reasons::PROMOTED, message.clone());
            self.plan.status.message = Some(message);
            self.requeue_within(SETTLE);
            return;
        }
        if canary.weight > 0 {
            self.event(false, "Promoted", format!("stable serves {}; the canary's weight goes to 0", describe(stable)));
            self.plan.outcome = Some("promoted");
        }
        self.wind_down_canary();
        self.condition(types::PROGRESSING, false, reasons::PROMOTED, format!("revision {} promoted", stable.revision));
        self.condition(types::ROLLED_BACK, false, reasons::PROMOTED, "the last rollout was promoted");
        self.stable_health(stable, RolloutPhase::Healthy);
        if let Some(s) = self.plan.status.stable.as_mut() {
            s.weight = 100;
            s.replicas = self.md.spec.replicas;
            s.ready_replicas = obs.ready;
        }
    }

    fn roll_back(&mut self, canary: &TrackStatus, reason: &'static str, message: String, failed_checks: Vec<String>) {
        let first_failure = self.plan.status.last_analysis.as_ref().and_then(|a| a.first_failure_due.clone());
        if let Some(first) = first_failure {
            self.plan.time_to_safety = Some(since(self.obs.now, &first).as_secs_f64());
        }
        self.plan.status.rejected_model = Some(RejectedModel {
            model_uri: canary.model_uri.clone(),
            model_digest: canary.model_digest.clone(),
            reason: message.clone(),
            failed_checks,
            time: Some(self.now.clone()),
        });
        self.plan.outcome = Some(if reason == reasons::ABORTED { "aborted" } else { "rolled-back" });
        self.event(true, "RolledBack", format!("canary {} rolled back: {message}", describe(canary)));
        self.condition(types::ROLLED_BACK, true, reason, message.clone());
        self.condition(types::PROGRESSING, false, reason, "rolled back");
        let stable = self.plan.status.stable.clone().expect("a canary has a stable track");
        self.wind_down_canary();
        self.plan.status.phase = Some(RolloutPhase::RolledBack);
        self.plan.status.message = Some(format!("rolled back to {}: {message}", describe(&stable)));
        self.requeue_within(SETTLE);
    }

    fn pause(&mut self, canary: &TrackStatus, step: usize, message: String) {
        self.plan.outcome = Some("paused");
        self.plan.status.phase = Some(RolloutPhase::Paused);
        self.plan.analysis_run = None;
        self.event(
            true,
            "Paused",
            format!("canary {} paused at step {} (autoRollback is false): {message}", describe(canary), step + 1),
        );
        self.condition(types::PROGRESSING, false, reasons::PAUSED, message.clone());
        self.plan.status.message = Some(format!(
            "paused: {message}; the canary keeps its weight; annotate distillery.dev/promote, distillery.dev/abort or distillery.dev/retry"
        ));
    }

    fn finish(&mut self) {
        if let Some(problem) = &self.obs.routing_problem
            && self.plan.status.canary.is_none()
        {
            // No canary needs the split yet, but the next one will: say so now.
            let before = distillery_crds::conditions::find(&self.plan.status.conditions, types::PROGRESSING).cloned();
            self.condition(types::PROGRESSING, false, reasons::REFERENCE_NOT_FOUND, problem.clone());
            if before.is_none_or(|c| c.message != *problem) {
                self.event(true, "RoutingUnavailable", problem.clone());
            }
            self.requeue_within(Duration::from_secs(30));
        }
        if self.plan.status.canary.is_none() {
            self.plan.analysis_run = None;
            self.plan.status.current_step = None;
            self.plan.status.step_started = None;
        }
        if self.plan.status.phase == Some(RolloutPhase::Paused) {
            self.plan.analysis_run = None;
        }
        if let (Some(track), Some(stable)) = (&self.plan.stable, self.plan.status.stable.as_mut()) {
            stable.replicas = track.replicas;
            stable.ready_replicas = self.obs.stable.ready;
        }
        if self.plan.status.canary.is_none()
            && let Some(stable) = self.plan.status.stable.as_mut()
        {
            stable.weight = 100;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use distillery_crds::ModelDeploymentSpec;
    use distillery_crds::deployment::GoldenEvidence;

    const SPEC: &str = "model: {uri: file:///artifacts/m, volumeClaim: artifacts}\nreplicas: 3\nrollout:\n  steps: [{weight: 10, pause: 10s}, {weight: 50, pause: 10s}, {weight: 100}]\n  analysis: {interval: 10s, failureLimit: 2, maxAccuracyDrop: 0.02, minAgreement: 0.9}\n";

    fn t(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn md(spec: &str, status: Option<ModelDeploymentStatus>) -> ModelDeployment {
        let spec: ModelDeploymentSpec = serde_norway::from_str(spec).unwrap();
        let mut md = ModelDeployment::new("reviews", spec);
        md.metadata.namespace = Some("ml".into());
        md.metadata.generation = Some(1);
        md.status = status;
        md
    }

    fn model(digest: &str) -> ModelState {
        ModelState::Resolved(ResolvedModel {
            model_uri: format!("file:///artifacts/{digest}"),
            variant: "int8".into(),
            model_digest: digest.repeat(64 / digest.len()),
            volume_claim: Some("artifacts".into()),
            source: digest.into(),
        })
    }

    fn ready(n: i32) -> TrackObservation {
        TrackObservation { exists: true, rolled_out: true, ready: n }
    }

    fn observed(now: i64, model: ModelState) -> Observed {
        Observed {
            now: t(now),
            model,
            stable: ready(3),
            canary: TrackObservation::default(),
            split_weight: Some(0),
            routing_problem: None,
            analysis: AnalysisObservation::None,
            controls: Controls::default(),
            canary_ready_deadline: Duration::from_secs(60),
        }
    }

    /// Applies `plan`'s status as the API server would store it.
    fn next(md: &ModelDeployment, plan: &Plan) -> ModelDeployment {
        let mut md = md.clone();
        md.status = Some(plan.status.clone());
        md
    }

    fn golden(n: u64, b: u64, c: u64) -> GoldenEvidence {
        GoldenEvidence {
            samples: n,
            labelled: n,
            stable_correct: n * 8 / 10,
            canary_correct: n * 8 / 10 - b + c,
            stable_only: b,
            canary_only: c,
            agreed: n - b - c,
        }
    }

    fn done(started: i64, golden: GoldenEvidence) -> AnalysisObservation {
        AnalysisObservation::Done {
            started: t(started),
            due: t(started + 10),
            run: AnalysisRun { golden: Some(golden), ..Default::default() },
        }
    }

    /// A ModelDeployment whose stable serves "a" and whose spec names "b", with the canary's
    /// pods ready at step 0.
    fn canary_at_step_0() -> (ModelDeployment, Plan) {
        let first = md(SPEC, None);
        let plan = plan(&first, &observed(0, model("a")));
        let healthy = next(&first, &plan);
        let plan = super::plan(&healthy, &observed(5, model("b")));
        let started = next(&healthy, &plan);
        let mut obs = observed(8, model("b"));
        obs.canary = ready(1);
        let plan = super::plan(&started, &obs);
        (next(&started, &plan), plan)
    }

    #[test]
    fn the_first_model_goes_straight_to_stable() {
        let first = md(SPEC, None);
        let plan = plan(&first, &observed(0, model("a")));
        assert_eq!(plan.status.phase, Some(RolloutPhase::Healthy));
        assert_eq!(plan.status.stable.as_ref().unwrap().revision, 1);
        assert!(plan.canary.is_none() && plan.status.canary.is_none());
        assert_eq!(plan.stable.as_ref().unwrap().replicas, 3);
        assert_eq!(plan.analysis_run, None);
        // Nothing changes on the next look: the stored status is recomputed exactly.
        let again = super::plan(&next(&first, &plan), &observed(60, model("a")));
        assert_eq!(again.status, plan.status);
        assert!(again.events.is_empty());
    }

    #[test]
    fn a_new_model_waits_for_its_pods_before_it_gets_weight_then_is_analysed() {
        let first = md(SPEC, None);
        let healthy = next(&first, &plan(&first, &observed(0, model("a"))));
        let started = plan(&healthy, &observed(5, model("b")));
        let canary = started.status.canary.as_ref().unwrap();
        assert_eq!((canary.revision, canary.weight), (2, 0));
        assert_eq!(started.canary_weight, 0, "no weight before the canary's pods are ready");
        assert_eq!(started.canary.as_ref().unwrap().replicas, 1, "10% beside 3 stable replicas");
        assert_eq!(started.analysis_run, None);
        let (_, at_step) = canary_at_step_0();
        assert_eq!(at_step.canary_weight, 10);
        assert_eq!(at_step.status.canary.as_ref().unwrap().weight, 25, "1 of 4 ready pods");
        assert_eq!(at_step.analysis_run, Some(1));
        assert!(at_step.events.iter().any(|e| e.reason == "StepStarted"));
    }

    #[test]
    fn a_passed_analysis_after_the_pause_moves_to_the_next_step_and_only_a_passed_one() {
        let (md, _) = canary_at_step_0();
        let mut obs = observed(20, model("b"));
        obs.canary = ready(1);
        obs.split_weight = Some(25);
        // Inconclusive (few samples): holds the step whatever the time.
        obs.analysis = done(9, golden(30, 2, 1));
        let plan = plan(&md, &obs);
        assert_eq!(plan.status.last_analysis.as_ref().unwrap().verdict, Some(AnalysisVerdict::Inconclusive));
        assert_eq!(plan.status.current_step, Some(0));
        assert_eq!(plan.analysis_run, Some(2), "the next run is due");
        // Passed with enough evidence: the next step.
        let md = next(&md, &plan);
        obs.now = t(32);
        obs.analysis = done(21, golden(5000, 30, 30));
        let plan = super::plan(&md, &obs);
        assert_eq!(
            plan.status.last_analysis.as_ref().unwrap().verdict,
            Some(AnalysisVerdict::Passed),
            "{:?}",
            plan.status.last_analysis
        );
        assert_eq!(plan.status.current_step, Some(1));
        assert_eq!(plan.analysis_run, None, "the next step's analyses wait for its weight");
        assert_eq!(plan.status.last_analysis.as_ref().unwrap().runs.passed, 1);
    }

    #[test]
    fn failure_limit_failed_runs_roll_back_weight_first_and_the_model_is_not_tried_again() {
        let (md, _) = canary_at_step_0();
        let mut obs = observed(20, model("b"));
        obs.canary = ready(1);
        obs.split_weight = Some(25);
        obs.analysis = done(9, golden(1000, 200, 10));
        let first = plan(&md, &obs);
        assert_eq!(first.status.last_analysis.as_ref().unwrap().verdict, Some(AnalysisVerdict::Failed));
        assert_eq!(first.status.phase, Some(RolloutPhase::Progressing), "one failure is below the limit");
        assert_eq!(first.status.last_analysis.as_ref().unwrap().first_failure_due, Some(Time(t(19))));
        let md = next(&md, &first);
        obs.now = t(31);
        obs.analysis = done(20, golden(1000, 200, 10));
        let rolled = plan(&md, &obs);
        let status = &rolled.status;
        assert_eq!(status.phase, Some(RolloutPhase::RolledBack));
        assert_eq!(rolled.canary_weight, 0, "weight 0 first");
        assert!(rolled.canary.is_some(), "the canary's pods stay until the split is observed at 0");
        assert_eq!(rolled.time_to_safety, Some(12.0));
        assert_eq!(rolled.outcome, Some("rolled-back"));
        let rejected = status.rejected_model.as_ref().unwrap();
        assert_eq!(rejected.model_digest.as_deref(), Some("b".repeat(64).as_str()));
        assert!(
            rejected.failed_checks.iter().any(|c| c.starts_with("accuracy FAILED")),
            "{:?}",
            rejected.failed_checks
        );
        assert_eq!(rolled.stable.as_ref().unwrap().model.revision, 1, "stable untouched");
        // The split is at 0: the pods go. Then nothing changes while the spec names the model.
        let md = next(&md, &rolled);
        let mut settled = observed(33, model("b"));
        settled.canary = ready(1);
        let gone = plan(&md, &settled);
        assert!(gone.canary.is_none() && gone.status.canary.is_none());
        assert_eq!(gone.status.phase, Some(RolloutPhase::RolledBack));
        let md = next(&md, &gone);
        let quiet = plan(&md, &observed(400, model("b")));
        assert_eq!(quiet.status, gone.status, "no write in a loop");
        assert!(quiet.canary.is_none() && quiet.events.is_empty() && quiet.analysis_run.is_none());
        // A retry annotation tries it again.
        let mut retry = observed(401, model("b"));
        retry.controls.retry = true;
        let again = plan(&md, &retry);
        assert!(again.status.canary.is_some() && again.status.rejected_model.is_none());
        assert_eq!(again.clear, vec![distillery_crds::deployment::RETRY_ANNOTATION]);
    }

    #[test]
    fn without_auto_rollback_it_pauses_and_keeps_the_weight() {
        let (md, _) = canary_at_step_0();
        let mut md = md;
        md.spec.auto_rollback = false;
        let mut obs = observed(20, model("b"));
        obs.canary = ready(1);
        obs.split_weight = Some(25);
        obs.analysis = done(9, golden(1000, 200, 10));
        let md = next(&md, &plan(&md, &obs));
        obs.analysis = done(20, golden(1000, 200, 10));
        obs.now = t(31);
        let paused = plan(&md, &obs);
        assert_eq!(paused.status.phase, Some(RolloutPhase::Paused));
        assert_eq!(paused.canary_weight, 10);
        assert_eq!(paused.analysis_run, None);
        assert!(paused.status.rejected_model.is_none());
        let md = next(&md, &paused);
        obs.analysis = AnalysisObservation::None;
        obs.now = t(90);
        let still = plan(&md, &obs);
        assert_eq!(still.status, paused.status);
        assert_eq!(still.canary_weight, 10, "the canary keeps its weight while paused");
        obs.controls.abort = true;
        let aborted = plan(&md, &obs);
        assert_eq!(aborted.status.phase, Some(RolloutPhase::RolledBack));
        assert_eq!(aborted.canary_weight, 0);
        assert_eq!(aborted.outcome, Some("aborted"));
    }

    #[test]
    fn the_last_step_promotes_stable_first_then_the_canary_goes() {
        let (md, _) = canary_at_step_0();
        let mut status = md.status.clone().unwrap();
        status.current_step = Some(2);
        status.step_started = Some(Time(t(40)));
        let md = next(&md, &Plan { status, ..plan(&md, &observed(40, model("b"))) });
        let mut obs = observed(60, model("b"));
        obs.canary = ready(3);
        obs.split_weight = Some(100);
        obs.analysis = done(45, golden(5000, 30, 30));
        let promoting = plan(&md, &obs);
        assert_eq!(promoting.status.stable.as_ref().unwrap().model_digest.as_deref(), Some("b".repeat(64).as_str()));
        assert_eq!(promoting.canary_weight, 100, "the canary carries all traffic while stable rolls");
        let md = next(&md, &promoting);
        // Stable not rolled out yet: the canary keeps everything.
        let mut rolling = observed(62, model("b"));
        rolling.canary = ready(3);
        rolling.split_weight = Some(100);
        rolling.stable = TrackObservation { exists: true, rolled_out: false, ready: 1 };
        let waiting = plan(&md, &rolling);
        assert_eq!(waiting.canary_weight, 100);
        assert_eq!(waiting.status.phase, Some(RolloutPhase::Progressing));
        // Rolled out: weight 0, then the canary goes once the split shows it.
        rolling.stable = ready(3);
        let promoted = plan(&md, &rolling);
        assert_eq!(promoted.canary_weight, 0);
        assert_eq!(promoted.outcome, Some("promoted"));
        assert!(promoted.canary.is_some());
        let md = next(&md, &promoted);
        rolling.split_weight = Some(0);
        let done = plan(&md, &rolling);
        assert!(done.canary.is_none() && done.status.canary.is_none());
        assert_eq!(done.status.phase, Some(RolloutPhase::Healthy));
    }

    #[test]
    fn a_revert_to_the_stable_model_stops_the_canary_without_analysis() {
        let (md, _) = canary_at_step_0();
        let mut obs = observed(20, model("a"));
        obs.canary = ready(1);
        obs.split_weight = Some(25);
        let reverted = plan(&md, &obs);
        assert_eq!(reverted.canary_weight, 0);
        assert_eq!(reverted.analysis_run, None);
        assert_eq!(reverted.outcome, Some("reverted"));
        assert_eq!(reverted.status.phase, Some(RolloutPhase::Healthy));
        assert!(reverted.status.rejected_model.is_none());
    }

    #[test]
    fn a_canary_not_ready_within_the_deadline_is_rolled_back() {
        let first = md(SPEC, None);
        let healthy = next(&first, &plan(&first, &observed(0, model("a"))));
        let started = next(&healthy, &plan(&healthy, &observed(5, model("b"))));
        let mut obs = observed(70, model("b"));
        obs.canary = TrackObservation { exists: true, rolled_out: false, ready: 0 };
        let rolled = plan(&started, &obs);
        assert_eq!(rolled.status.phase, Some(RolloutPhase::RolledBack));
        let condition = distillery_crds::conditions::find(&rolled.status.conditions, types::ROLLED_BACK).unwrap();
        assert_eq!(condition.reason, reasons::CANARY_NOT_READY);
    }

    #[test]
    fn a_measurement_error_is_counted_apart_and_never_moves_the_rollout() {
        let (md, _) = canary_at_step_0();
        let mut obs = observed(30, model("b"));
        obs.canary = ready(1);
        obs.split_weight = Some(25);
        obs.analysis = AnalysisObservation::Done {
            started: t(9),
            due: t(19),
            run: AnalysisRun { errors: vec!["golden set unreadable".into()], ..Default::default() },
        };
        let plan = plan(&md, &obs);
        let analysis = plan.status.last_analysis.as_ref().unwrap();
        assert_eq!(analysis.verdict, Some(AnalysisVerdict::Error));
        assert_eq!((analysis.runs.error, analysis.runs.failed), (1, 0));
        assert_eq!(plan.status.current_step, Some(0));
    }

    #[test]
    fn durations_parse_like_the_schema_allows() {
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5m"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("5x"), None);
        assert_eq!(parse_duration(""), None);
    }
}
