//! What a Benchmark's targets resolve to, and what its status should say, computed from what the
//! read step found — without a client. Pure, so every mapping is unit-tested.
//!
//! The rules: no Job until every target resolves (a deployment target's track serves from ready
//! pods, a DistillationJob target has succeeded with an artifact); while waiting, `Pending` with
//! `Progressing=False` naming each missing target; a DistillationJob that failed fails the
//! Benchmark; `Running` only while the worker pod runs now; `Succeeded` and `Failed` from the
//! Job's own terminal conditions, the figures from the worker's termination message; conditions
//! whose `lastTransitionTime` moves only when their status flips, so a reconcile that observes
//! nothing new computes the status already stored and writes nothing.

use distillery_crds::benchmark::{BenchmarkSummary, Track};
use distillery_crds::conditions::{find, reasons, set_condition, types};
use distillery_crds::distillation::JobPhase;
use distillery_crds::{Benchmark, BenchmarkStatus, DistillationJob, ModelDeployment};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::events::EventType;

use super::build::{CONTAINER, ResolvedTarget, SpecError};
use crate::distillation::observe::{creating_conditions, refused_conditions};
use crate::modeldeployment::build::{Names, SERVER_PORT};
use crate::objects::{job_condition, pod_phase, quote, terminated};

/// The most of the worker's message quoted in a condition.
pub const QUOTED_MESSAGE: usize = 400;

/// What the read step found for one target, in spec order.
#[derive(Clone, Debug)]
pub enum Found {
    /// A deployment target.
    Deployment {
        /// The ModelDeployment, if it exists (boxed: a resource is large beside the other variants).
        md: Option<Box<ModelDeployment>>,
        /// The track Service's cluster IP, if the track serves and the Service has one.
        service_ip: Option<String>,
        /// IPs of the track's ready pods.
        ready_pod_ips: Vec<String>,
    },
    /// An artifact target naming a DistillationJob, if it exists.
    Distillation(Option<Box<DistillationJob>>),
    /// An artifact target with a `uri`: nothing to wait for.
    Uri,
}

/// What the targets resolve to.
#[derive(Clone, Debug, PartialEq)]
pub enum Resolution {
    /// Every target, in spec order.
    Ready(Vec<ResolvedTarget>),
    /// Some target cannot be measured yet.
    Waiting {
        /// The first waiting target's reason (`TargetNotFound`, `WaitingForDistillation`,
        /// `ReferenceNotFound`).
        reason: &'static str,
        /// Each waiting target and what is missing, joined.
        message: String,
    },
    /// A DistillationJob target failed: nothing to measure.
    DistillationFailed {
        /// Which and why.
        message: String,
    },
}

/// The status of `track` in `md`'s status, when that track exists.
pub fn track_status(md: &ModelDeployment, track: Track) -> Option<&distillery_crds::deployment::TrackStatus> {
    let status = md.status.as_ref()?;
    match track {
        Track::Stable => status.stable.as_ref(),
        Track::Canary => status.canary.as_ref(),
    }
}

/// The Service (and Deployment) name of `track` of the ModelDeployment `name`.
pub fn track_service(name: &str, track: Track) -> String {
    let names = Names::of(name);
    match track {
        Track::Stable => names.stable,
        Track::Canary => names.canary,
    }
}

/// IPs of the pods that are ready now (Ready condition true, not being deleted), in name order.
pub fn ready_pod_ips(pods: &[Pod]) -> Vec<String> {
    let mut ready: Vec<(&str, String)> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            let conditions = p.status.as_ref().and_then(|s| s.conditions.as_ref());
            conditions.is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter_map(|p| {
            let ip = p.status.as_ref()?.pod_ip.clone().filter(|ip| !ip.is_empty())?;
            Some((p.metadata.name.as_deref().unwrap_or_default(), ip))
        })
        .collect();
    ready.sort();
    ready.into_iter().map(|(_, ip)| ip).collect()
}

fn track_name(track: Track) -> &'static str {
    match track {
        Track::Stable => "stable",
        Track::Canary => "canary",
    }
}

/// Resolves every target of `bench` from `found` (one entry per target, in spec order).
pub fn resolve(bench: &Benchmark, found: &[Found]) -> Resolution {
    let mut resolved = Vec::new();
    let mut waiting: Vec<(&'static str, String)> = Vec::new();
    let mut failed: Vec<String> = Vec::new();
    for (i, (target, found)) in bench.spec.targets.iter().zip(found).enumerate() {
        let name = &target.name;
        match (target.deployment.as_ref(), target.artifact.as_ref(), found) {
            (Some(d), _, Found::Deployment { md, service_ip, ready_pod_ips }) => {
                let track = track_name(d.track);
                let what = format!("target {name}: waiting for ModelDeployment {}'s {track} track", d.name);
                let Some(md) = md else {
                    waiting.push((
                        reasons::TARGET_NOT_FOUND,
                        format!("target {name}: waiting for ModelDeployment {}: it does not exist", d.name),
                    ));
                    continue;
                };
                if track_status(md, d.track).is_none() {
                    let missing = match d.track {
                        Track::Canary => "it exists only during a rollout",
                        Track::Stable => "the ModelDeployment serves no model yet",
                    };
                    waiting.push((reasons::TARGET_NOT_FOUND, format!("{what}: {missing}")));
                    continue;
                }
                let service = track_service(&d.name, d.track);
                let Some(ip) = service_ip else {
                    waiting.push((reasons::TARGET_NOT_FOUND, format!("{what}: Service {service} has no address yet")));
                    continue;
                };
                if ready_pod_ips.is_empty() {
                    waiting.push((reasons::TARGET_NOT_FOUND, format!("{what}: it has no ready server pod")));
                    continue;
                }
                resolved.push(ResolvedTarget::Deployment {
                    url: format!("http://{ip}:{SERVER_PORT}"),
                    metrics: ready_pod_ips.iter().map(|ip| format!("http://{ip}:{SERVER_PORT}/metrics")).collect(),
                });
            }
            (_, Some(artifact), Found::Distillation(dj)) => {
                let Some(reference) = &artifact.distillation_job_ref else { continue };
                let Some(dj) = dj else {
                    waiting.push((
                        reasons::REFERENCE_NOT_FOUND,
                        format!("target {name}: waiting for DistillationJob {}: it does not exist", reference.name),
                    ));
                    continue;
                };
                let status = dj.status.clone().unwrap_or_default();
                match (status.phase, status.result) {
                    (Some(JobPhase::Succeeded), Some(result)) => resolved.push(ResolvedTarget::Artifact {
                        uri: result.artifact_uri,
                        claim: dj.spec.output.volume_claim.clone(),
                        claim_field: format!("DistillationJob {}'s spec.output.volumeClaim", reference.name),
                    }),
                    (Some(JobPhase::Succeeded), None) => failed.push(format!(
                        "target {name}: DistillationJob {} succeeded but reports no artifact (status.result is empty)",
                        reference.name
                    )),
                    (Some(JobPhase::Failed), _) => {
                        let why = find(&status.conditions, types::FAILED)
                            .filter(|c| c.status == "True")
                            .map(|c| format!(": {}", quote(&c.message, QUOTED_MESSAGE)))
                            .unwrap_or_default();
                        failed.push(format!("target {name}: DistillationJob {} failed{why}", reference.name));
                    }
                    (phase, _) => waiting.push((
                        reasons::WAITING_FOR_DISTILLATION,
                        format!(
                            "target {name}: waiting for DistillationJob {} to succeed; it is {:?}",
                            reference.name,
                            phase.unwrap_or(JobPhase::Pending)
                        ),
                    )),
                }
            }
            (_, Some(artifact), _) => resolved.push(ResolvedTarget::Artifact {
                uri: artifact.uri.clone().unwrap_or_default(),
                claim: artifact.volume_claim.clone(),
                claim_field: format!("spec.targets[{i}].artifact.volumeClaim"),
            }),
            // The read step found what each target names, and the schema lets no target be
            // neither: these do not occur.
            (Some(_), None, _) | (None, None, _) => {}
        }
    }
    if !failed.is_empty() {
        return Resolution::DistillationFailed { message: failed.join("; ") };
    }
    match waiting.first() {
        Some((reason, _)) => Resolution::Waiting {
            reason,
            message: waiting.iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>().join("; "),
        },
        None => Resolution::Ready(resolved),
    }
}

/// The status fields the operator owns (all of them: the worker writes none), as stored now.
pub fn operator_part(bench: &Benchmark) -> BenchmarkStatus {
    bench.status.clone().unwrap_or_default()
}

/// The stored status as the start of a new one: the current generation and target count, and
/// none of an earlier generation's run (Job, times, figures).
fn base(bench: &Benchmark) -> BenchmarkStatus {
    let generation = bench.metadata.generation;
    let mut status = operator_part(bench);
    if status.observed_generation != generation {
        status = BenchmarkStatus { conditions: status.conditions, ..Default::default() };
    }
    status.observed_generation = generation;
    status.target_count = Some(u32::try_from(bench.spec.targets.len()).unwrap_or(u32::MAX));
    status
}

/// Whether `bench` ran to an end for its current spec: it is not run again, even if its Job is
/// deleted, until the spec changes.
pub fn finished(bench: &Benchmark) -> bool {
    let Some(status) = &bench.status else { return false };
    status.observed_generation == bench.metadata.generation
        && matches!(status.phase, Some(JobPhase::Succeeded | JobPhase::Failed))
}

/// The status while a target cannot be measured yet: `Pending`, `Progressing=False` with the
/// reason and a message naming each waiting target.
pub fn waiting_status(bench: &Benchmark, reason: &str, message: &str, now: &Time) -> BenchmarkStatus {
    let generation = bench.metadata.generation;
    let mut status = base(bench);
    status.phase = Some(JobPhase::Pending);
    let c = &mut status.conditions;
    set_condition(c, types::ACCEPTED, true, reasons::SPEC_VALID, "the spec is valid", generation, now);
    set_condition(c, types::PROGRESSING, false, reason, message, generation, now);
    set_condition(c, types::COMPLETE, false, reasons::NOT_FINISHED, "", generation, now);
    set_condition(c, types::FAILED, false, reasons::NOT_FINISHED, "", generation, now);
    status
}

/// The status for a spec that cannot run: `Failed`, `Accepted=False` with the reason, and nothing
/// retried until the spec changes.
pub fn invalid_status(bench: &Benchmark, error: &SpecError, now: &Time) -> BenchmarkStatus {
    let generation = bench.metadata.generation;
    let mut status = base(bench);
    status.phase = Some(JobPhase::Failed);
    refused_conditions(&mut status.conditions, &error.to_string(), generation, now);
    status
}

/// The status when a DistillationJob target failed: `Failed`, not run again until the spec
/// changes.
pub fn distillation_failed_status(bench: &Benchmark, message: &str, now: &Time) -> BenchmarkStatus {
    let generation = bench.metadata.generation;
    let mut status = base(bench);
    status.phase = Some(JobPhase::Failed);
    status.completion_time = status.completion_time.or_else(|| Some(now.clone()));
    let message = format!(
        "{message}; there is no artifact to measure. Change the Benchmark's spec (or re-create it) to run it once the DistillationJob has succeeded"
    );
    let c = &mut status.conditions;
    set_condition(c, types::ACCEPTED, true, reasons::SPEC_VALID, "the spec is valid", generation, now);
    set_condition(c, types::PROGRESSING, false, reasons::DISTILLATION_FAILED, "stopped", generation, now);
    set_condition(c, types::COMPLETE, false, reasons::DISTILLATION_FAILED, "", generation, now);
    set_condition(c, types::FAILED, true, reasons::DISTILLATION_FAILED, message, generation, now);
    status
}

/// What the reconciler found of the current generation's Job.
#[derive(Clone, Debug, Default)]
pub struct Observed<'a> {
    /// The Job, if it exists.
    pub job: Option<&'a Job>,
    /// Its pods.
    pub pods: &'a [Pod],
    /// The Job's name.
    pub job_name: &'a str,
}

/// The summary the worker wrote as its termination message.
pub fn parse_summary(message: &str) -> Result<BenchmarkSummary, String> {
    serde_json::from_str(message.trim()).map_err(|e| format!("the worker's summary is not readable ({e})"))
}

/// The status the observed Job and pods call for.
pub fn desired_status(bench: &Benchmark, observed: &Observed, now: &Time) -> BenchmarkStatus {
    let generation = bench.metadata.generation;
    let mut status = base(bench);
    status.job_name = Some(observed.job_name.to_string());
    let c = &mut status.conditions;
    set_condition(c, types::ACCEPTED, true, reasons::SPEC_VALID, "the spec is valid", generation, now);
    let Some(job) = observed.job else {
        status.phase = Some(JobPhase::Pending);
        creating_conditions(c, observed.job_name, generation, now);
        return status;
    };
    let job_status = job.status.clone().unwrap_or_default();
    status.start_time = job_status.start_time.clone().or(status.start_time);
    let mut pods: Vec<&Pod> = observed.pods.iter().collect();
    pods.sort_by(|a, b| a.metadata.creation_timestamp.cmp(&b.metadata.creation_timestamp));
    let ended =
        |phase: &str| pods.iter().rev().filter(|p| pod_phase(p) == phase).find_map(|p| terminated(p, CONTAINER));

    if job_condition(job, "Complete").is_some() {
        status.phase = Some(JobPhase::Succeeded);
        status.completion_time =
            job_status.completion_time.clone().or(status.completion_time).or_else(|| Some(now.clone()));
        let message = match ended("Succeeded").map(|(_, m)| parse_summary(&m)) {
            Some(Ok(summary)) => {
                let (best_accuracy, best_p99) = summary.winners();
                let message = format!("{} targets measured; report in {}", summary.results.len(), summary.report);
                status.report = Some(summary.report);
                status.results = summary.results;
                status.best_accuracy = best_accuracy;
                status.best_p99 = best_p99;
                message
            }
            Some(Err(e)) => e,
            // The pod is gone (its summary was read before, or never): the stored figures stay.
            None if let Some(report) = &status.report => {
                format!("{} targets measured; report in {report}", status.results.len())
            }
            None => "the worker's pod is gone; its summary could not be read".to_string(),
        };
        set_condition(c, types::PROGRESSING, false, reasons::SUCCEEDED, "finished", generation, now);
        set_condition(c, types::COMPLETE, true, reasons::SUCCEEDED, message, generation, now);
        set_condition(c, types::FAILED, false, reasons::SUCCEEDED, "", generation, now);
        return status;
    }
    if let Some(failed) = job_condition(job, "Failed") {
        status.phase = Some(JobPhase::Failed);
        status.completion_time = status.completion_time.or_else(|| Some(now.clone()));
        let reason = match failed.reason.as_deref() {
            Some("DeadlineExceeded") => reasons::DEADLINE_EXCEEDED,
            _ => reasons::BACKOFF_LIMIT_EXCEEDED,
        };
        let job_message = failed.message.clone().unwrap_or_else(|| format!("Job {} failed", observed.job_name));
        let message = match ended("Failed") {
            Some((code, message)) => {
                format!("the benchmark failed (exit code {code}): {}", quote(&message, QUOTED_MESSAGE))
            }
            None => job_message,
        };
        set_condition(c, types::PROGRESSING, false, reason, "stopped", generation, now);
        set_condition(c, types::COMPLETE, false, reason, "", generation, now);
        set_condition(c, types::FAILED, true, reason, message, generation, now);
        return status;
    }
    set_condition(c, types::COMPLETE, false, reasons::NOT_FINISHED, "", generation, now);
    set_condition(c, types::FAILED, false, reasons::NOT_FINISHED, "", generation, now);
    let running = pods.iter().rev().find(|p| {
        pod_phase(p) == "Running" && p.metadata.deletion_timestamp.is_none() && terminated(p, CONTAINER).is_none()
    });
    match running {
        Some(pod) => {
            status.phase = Some(JobPhase::Running);
            let message = format!("load generator pod {} is running", pod.metadata.name.as_deref().unwrap_or_default());
            set_condition(c, types::PROGRESSING, true, reasons::RUNNING, message, generation, now);
        }
        None => {
            status.phase = Some(JobPhase::Pending);
            let message = "waiting for the load generator pod";
            set_condition(c, types::PROGRESSING, true, reasons::PENDING, message, generation, now);
        }
    }
    status
}

/// Whether `reason` says the Benchmark waits for a target.
fn is_waiting(reason: &str) -> bool {
    [reasons::TARGET_NOT_FOUND, reasons::WAITING_FOR_DISTILLATION, reasons::REFERENCE_NOT_FOUND].contains(&reason)
}

/// The Event for going from `before` to `after` (stored, then written), if it is a transition:
/// a new phase or generation, or — while waiting — a change in what is waited for. `None` for
/// anything else, so a reconcile that finds the same again records nothing.
pub fn transition_event(before: &BenchmarkStatus, after: &BenchmarkStatus) -> Option<(EventType, String, String)> {
    let phase = after.phase?;
    let message = |status: &BenchmarkStatus, type_: &str| find(&status.conditions, type_).map(|c| c.message.clone());
    let progressing = find(&after.conditions, types::PROGRESSING);
    let waiting = progressing.filter(|c| is_waiting(&c.reason));
    let changed = before.phase != after.phase || before.observed_generation != after.observed_generation;
    if !changed && (waiting.is_none() || message(before, types::PROGRESSING) == message(after, types::PROGRESSING)) {
        return None;
    }
    let note = |type_: &str| message(after, type_).unwrap_or_default();
    Some(match (phase, waiting) {
        (JobPhase::Pending, Some(c)) => {
            let kind =
                if c.reason == reasons::WAITING_FOR_DISTILLATION { EventType::Normal } else { EventType::Warning };
            (kind, c.reason.clone(), c.message.clone())
        }
        (JobPhase::Succeeded, _) => (EventType::Normal, "Succeeded".into(), note(types::COMPLETE)),
        (JobPhase::Failed, _) => {
            let reason = find(&after.conditions, types::FAILED)
                .map(|c| c.reason.as_str())
                .filter(|r| [reasons::INVALID_SPEC, reasons::DISTILLATION_FAILED].contains(r))
                .unwrap_or("Failed");
            (EventType::Warning, reason.into(), note(types::FAILED))
        }
        (phase, _) => (EventType::Normal, format!("{phase:?}"), note(types::PROGRESSING)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;
    use serde_json::{Value, json};

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn bench() -> Benchmark {
        let mut b: Benchmark = serde_norway::from_str(include_str!("../../../examples/03-benchmark.yaml")).unwrap();
        b.metadata.generation = Some(1);
        b
    }

    fn md(status: Value) -> ModelDeployment {
        serde_json::from_value(json!({
            "apiVersion": "distillery.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "reviews-classifier"},
            "spec": {"model": {"uri": "file:///artifacts/x", "volumeClaim": "artifacts"}},
            "status": status,
        }))
        .unwrap()
    }

    fn serving() -> ModelDeployment {
        md(json!({"stable": {"revision": 1, "modelUri": "file:///artifacts/x", "weight": 100, "readyReplicas": 2}}))
    }

    fn dj(status: Value) -> DistillationJob {
        let mut dj: DistillationJob =
            serde_norway::from_str(include_str!("../../../examples/01-distillationjob.yaml")).unwrap();
        dj.status = serde_json::from_value(status).unwrap();
        dj
    }

    fn succeeded_dj() -> DistillationJob {
        dj(json!({"phase": "Succeeded", "result": {"artifactUri": "file:///artifacts/minilm-reviews/g1-abc",
                  "artifactDigest": "ab", "teacher": {"parameters": 1}, "student": {"parameters": 1}}}))
    }

    fn found(md: Option<ModelDeployment>, dj: Option<DistillationJob>) -> Vec<Found> {
        vec![
            Found::Deployment {
                md: md.map(Box::new),
                service_ip: Some("10.96.0.7".into()),
                ready_pod_ips: vec!["10.0.0.5".into(), "10.0.0.6".into()],
            },
            Found::Distillation(dj.clone().map(Box::new)),
            Found::Distillation(dj.map(Box::new)),
        ]
    }

    fn condition(status: &BenchmarkStatus, type_: &str) -> (String, String, String) {
        let c = find(&status.conditions, type_).unwrap();
        (c.status.clone(), c.reason.clone(), c.message.clone())
    }

    #[test]
    fn every_target_resolved_gives_urls_metrics_and_the_artifact_on_the_jobs_claim() {
        let r = resolve(&bench(), &found(Some(serving()), Some(succeeded_dj())));
        let Resolution::Ready(targets) = r else { panic!("{r:?}") };
        assert_eq!(
            targets[0],
            ResolvedTarget::Deployment {
                url: "http://10.96.0.7:8080".into(),
                metrics: vec!["http://10.0.0.5:8080/metrics".into(), "http://10.0.0.6:8080/metrics".into()],
            }
        );
        assert_eq!(
            targets[1],
            ResolvedTarget::Artifact {
                uri: "file:///artifacts/minilm-reviews/g1-abc".into(),
                claim: Some("artifacts".into()),
                claim_field: "DistillationJob minilm-reviews's spec.output.volumeClaim".into(),
            }
        );
        assert_eq!(targets.len(), 3);
    }

    #[test]
    fn a_missing_deployment_or_track_waits_naming_the_target_and_what_is_missing() {
        let b = bench();
        let waiting = |found: &[Found]| match resolve(&b, found) {
            Resolution::Waiting { reason, message } => (reason, message),
            other => panic!("{other:?}"),
        };
        let (reason, message) = waiting(&found(None, Some(succeeded_dj())));
        assert_eq!(reason, reasons::TARGET_NOT_FOUND);
        assert_eq!(message, "target live-stable: waiting for ModelDeployment reviews-classifier: it does not exist");

        let mut canary = bench();
        canary.spec.targets[0].deployment.as_mut().unwrap().track = Track::Canary;
        let Resolution::Waiting { reason, message } = resolve(&canary, &found(Some(serving()), Some(succeeded_dj())))
        else {
            panic!()
        };
        assert_eq!(reason, reasons::TARGET_NOT_FOUND);
        assert_eq!(
            message,
            "target live-stable: waiting for ModelDeployment reviews-classifier's canary track: it exists only during a rollout"
        );

        let mut no_pods = found(Some(serving()), Some(succeeded_dj()));
        no_pods[0] = Found::Deployment {
            md: Some(Box::new(serving())),
            service_ip: Some("10.96.0.7".into()),
            ready_pod_ips: vec![],
        };
        assert!(waiting(&no_pods).1.ends_with("stable track: it has no ready server pod"));
        no_pods[0] = Found::Deployment { md: Some(Box::new(serving())), service_ip: None, ready_pod_ips: vec![] };
        assert!(waiting(&no_pods).1.ends_with("Service reviews-classifier-stable has no address yet"));
        let (_, message) = waiting(&found(Some(md(json!({}))), Some(succeeded_dj())));
        assert!(message.ends_with("stable track: the ModelDeployment serves no model yet"), "{message}");
    }

    #[test]
    fn a_distillation_target_waits_until_it_succeeds_and_a_failed_one_fails_the_benchmark() {
        let b = bench();
        let running = dj(json!({"phase": "Running"}));
        let r = resolve(&b, &found(Some(serving()), Some(running)));
        let Resolution::Waiting { reason, message } = r else { panic!("{r:?}") };
        assert_eq!(reason, reasons::WAITING_FOR_DISTILLATION);
        assert_eq!(
            message,
            "target student-fp32: waiting for DistillationJob minilm-reviews to succeed; it is Running; \
             target student-int8: waiting for DistillationJob minilm-reviews to succeed; it is Running"
        );
        let r = resolve(&b, &found(None, None));
        let Resolution::Waiting { reason, message } = r else { panic!("{r:?}") };
        assert_eq!(reason, reasons::TARGET_NOT_FOUND, "the first waiting target's reason");
        assert!(message.contains("DistillationJob minilm-reviews: it does not exist"), "{message}");

        let failed = dj(json!({"phase": "Failed", "conditions": [{"type": "Failed", "status": "True",
            "reason": "BackoffLimitExceeded", "message": "exit code 2: no such file",
            "lastTransitionTime": "2026-01-01T00:00:00Z"}]}));
        let r = resolve(&b, &found(None, Some(failed)));
        let Resolution::DistillationFailed { message } = r else { panic!("{r:?}") };
        assert!(
            message
                .starts_with("target student-fp32: DistillationJob minilm-reviews failed: exit code 2: no such file")
        );
        let s = distillation_failed_status(&b, &message, &t(5));
        assert_eq!(s.phase, Some(JobPhase::Failed));
        assert!(finished(&Benchmark { status: Some(s.clone()), ..b.clone() }), "not run again");
        assert_eq!(condition(&s, types::FAILED).1, reasons::DISTILLATION_FAILED);
    }

    #[test]
    fn waiting_is_pending_with_progressing_false_and_recomputing_it_changes_nothing() {
        let b = bench();
        let s = waiting_status(&b, reasons::TARGET_NOT_FOUND, "target x: waiting", &t(1));
        assert_eq!(s.phase, Some(JobPhase::Pending));
        assert_eq!(s.target_count, Some(3));
        assert_eq!(
            condition(&s, types::PROGRESSING),
            ("False".into(), reasons::TARGET_NOT_FOUND.into(), "target x: waiting".into())
        );
        let stored = Benchmark { status: Some(s.clone()), ..b.clone() };
        assert_eq!(
            waiting_status(&stored, reasons::TARGET_NOT_FOUND, "target x: waiting", &t(99)),
            s,
            "a no-op writes nothing"
        );
        assert!(!finished(&stored));
        // One Event when it starts waiting, none when it finds the same, one when what it waits for changes.
        let event = transition_event(&BenchmarkStatus::default(), &s).unwrap();
        assert_eq!(
            (event.0, event.1.as_str(), event.2.as_str()),
            (EventType::Warning, "TargetNotFound", "target x: waiting")
        );
        assert_eq!(transition_event(&s, &s), None);
        let other = waiting_status(&stored, reasons::WAITING_FOR_DISTILLATION, "target y: waiting", &t(2));
        assert_eq!(
            transition_event(&s, &other).map(|e| (e.0, e.1)),
            Some((EventType::Normal, "WaitingForDistillation".into()))
        );
    }

    fn job(status: Value) -> Job {
        serde_json::from_value(json!({"metadata": {"name": "j"}, "spec": {"template": {}}, "status": status})).unwrap()
    }

    fn pod(name: &str, phase: &str, terminated: Option<(i32, &str)>) -> Pod {
        let state = match terminated {
            Some((code, message)) => json!({"terminated": {"exitCode": code, "message": message}}),
            None => json!({"running": {}}),
        };
        serde_json::from_value(json!({
            "metadata": {"name": name, "creationTimestamp": t(1)},
            "status": {"phase": phase, "containerStatuses": [{"name": "worker", "state": state, "ready": true,
                        "restartCount": 0, "image": "w", "imageID": ""}]},
        }))
        .unwrap()
    }

    fn observe(b: &Benchmark, job: Option<&Job>, pods: &[Pod]) -> BenchmarkStatus {
        desired_status(b, &Observed { job, pods, job_name: "j" }, &t(100))
    }

    #[test]
    fn running_only_while_the_pod_runs() {
        let b = bench();
        assert_eq!(observe(&b, None, &[]).phase, Some(JobPhase::Pending));
        let active = job(json!({"active": 1, "startTime": t(50)}));
        let s = observe(&b, Some(&active), &[pod("p", "Running", None)]);
        assert_eq!(s.phase, Some(JobPhase::Running));
        assert_eq!(s.start_time, Some(t(50)));
        assert_eq!(s.job_name.as_deref(), Some("j"));
        let s = observe(&b, Some(&active), &[pod("p", "Failed", Some((1, "boom")))]);
        assert_eq!(s.phase, Some(JobPhase::Pending), "not Running after the pod died");
    }

    #[test]
    fn success_copies_the_summary_in_spec_order_with_the_winners() {
        let b = bench();
        let summary = json!({"report": "file:///artifacts/minilm-reviews/benchmarks/r", "results": [
            {"name": "live-stable", "requests": 2000, "accuracy": 0.81, "p99Ms": 30.0},
            {"name": "student-fp32", "requests": 2000, "accuracy": 0.86, "p99Ms": 12.0},
            {"name": "student-int8", "requests": 2000, "accuracy": 0.85, "p99Ms": 7.5}]});
        let done = job(
            json!({"succeeded": 1, "completionTime": t(90), "conditions": [{"type": "Complete", "status": "True"}]}),
        );
        let s = observe(&b, Some(&done), &[pod("p", "Succeeded", Some((0, &summary.to_string())))]);
        assert_eq!(s.phase, Some(JobPhase::Succeeded));
        let names: Vec<&str> = s.results.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, vec!["live-stable", "student-fp32", "student-int8"]);
        assert_eq!((s.best_accuracy.as_deref(), s.best_p99.as_deref()), (Some("student-fp32"), Some("student-int8")));
        assert_eq!(s.report.as_deref(), Some("file:///artifacts/minilm-reviews/benchmarks/r"));
        assert_eq!(s.completion_time, Some(t(90)));
        assert_eq!(
            condition(&s, types::COMPLETE).2,
            "3 targets measured; report in file:///artifacts/minilm-reviews/benchmarks/r"
        );
        // The pod is gone: recomputed from its own output, nothing changes.
        let stored = Benchmark { status: Some(s.clone()), ..b.clone() };
        assert_eq!(observe(&stored, Some(&done), &[]), s);
        assert!(finished(&stored));
        let event = transition_event(&BenchmarkStatus::default(), &s).unwrap();
        assert_eq!((event.0, event.1.as_str()), (EventType::Normal, "Succeeded"));
        // A new generation starts from nothing of the earlier run.
        let mut next = stored.clone();
        next.metadata.generation = Some(2);
        assert!(!finished(&next));
        let s2 = observe(&next, None, &[]);
        assert!(
            s2.results.is_empty() && s2.report.is_none() && s2.best_accuracy.is_none() && s2.completion_time.is_none()
        );
    }

    #[test]
    fn failure_quotes_the_workers_message_and_is_final() {
        let b = bench();
        let long = format!("cannot reach target live-stable: {}", "x".repeat(600));
        let failed = job(json!({"failed": 1, "conditions": [{"type": "Failed", "status": "True",
                                "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]}));
        let s = observe(&b, Some(&failed), &[pod("p", "Failed", Some((2, &long)))]);
        assert_eq!(s.phase, Some(JobPhase::Failed));
        let (status, reason, message) = condition(&s, types::FAILED);
        assert_eq!((status.as_str(), reason.as_str()), ("True", reasons::BACKOFF_LIMIT_EXCEEDED));
        assert!(
            message.starts_with("the benchmark failed (exit code 2): cannot reach target live-stable"),
            "{message}"
        );
        assert!(message.ends_with('…') && message.chars().count() < 460, "{message}");
        let deadline = job(json!({"failed": 1, "conditions": [{"type": "Failed", "status": "True",
                                  "reason": "DeadlineExceeded", "message": "Job was active longer than specified deadline"}]}));
        let s = observe(&b, Some(&deadline), &[]);
        assert_eq!(
            condition(&s, types::FAILED),
            ("True".into(), reasons::DEADLINE_EXCEEDED.into(), "Job was active longer than specified deadline".into())
        );
        assert!(finished(&Benchmark { status: Some(s.clone()), ..b.clone() }));
        assert_eq!(transition_event(&BenchmarkStatus::default(), &s).map(|e| e.1), Some("Failed".into()));
        let invalid = invalid_status(&b, &SpecError::NoReportLocation, &t(1));
        assert_eq!(condition(&invalid, types::ACCEPTED).1, reasons::INVALID_SPEC);
        assert_eq!(transition_event(&BenchmarkStatus::default(), &invalid).map(|e| e.1), Some("InvalidSpec".into()));
    }

    #[test]
    fn only_ready_pods_serve_metrics() {
        let pod = |name: &str, ip: &str, ready: &str| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": name},
                "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": ready}]}}))
            .unwrap()
        };
        let mut going = pod("d", "10.0.0.4", "True");
        going.metadata.deletion_timestamp = Some(t(1));
        let pods = [pod("b", "10.0.0.2", "True"), pod("a", "10.0.0.1", "True"), pod("c", "10.0.0.3", "False"), going];
        assert_eq!(ready_pod_ips(&pods), vec!["10.0.0.1".to_string(), "10.0.0.2".to_string()]);
    }
}
