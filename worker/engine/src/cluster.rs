//! What the worker does when the operator runs it in a pod: it reports live progress into its
//! DistillationJob's `status.progress` by server-side apply under its own field manager
//! (`distillery-worker`; the operator owns every other status field), and leaves its final summary
//! — or its error — in the container's termination message, which the operator reads back into
//! `status.result`.
//!
//! Reporting never fails a training run: an API error is printed once and the run goes on.

use std::path::Path;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use distillery_crds::DistillationJob;
use distillery_crds::distillation::{DistillationResult, Int8Figures, ModelFigures, Progress};
use distillery_crds::manifest::MANIFEST_FILE;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::pipeline::Outcome;
use crate::progress::{Event, ProgressStage, Reporter};

/// The worker's field manager.
pub const FIELD_MANAGER: &str = "distillery-worker";
/// The most a termination message may hold (the kubelet keeps 4096 bytes).
pub const TERMINATION_MESSAGE_LIMIT: usize = 4000;
/// How often progress is applied at most, except on a stage change.
const REPORT_EVERY: Duration = Duration::from_secs(2);

/// The summary the operator copies into `status.result`.
pub fn summary(outcome: &Outcome, artifact_uri: &str) -> Result<DistillationResult, std::io::Error> {
    let digest = crate::store::sha256_file(&outcome.output.join(MANIFEST_FILE))?;
    let m = &outcome.manifest.metrics;
    let get = |k: &str| m.get(k).copied();
    Ok(DistillationResult {
        artifact_uri: artifact_uri.to_string(),
        artifact_digest: digest,
        teacher: ModelFigures {
            parameters: get("teacherParameters").unwrap_or_default() as u64,
            accuracy: get("teacherAccuracy"),
            perplexity: get("teacherPerplexity"),
        },
        student: ModelFigures {
            parameters: get("studentParameters").unwrap_or_default() as u64,
            accuracy: get("studentAccuracy"),
            perplexity: get("studentPerplexity"),
        },
        label_only_accuracy: get("labelOnlyAccuracy"),
        corpus_only_perplexity: get("corpusOnlyPerplexity"),
        gap_closed: get("gapClosed"),
        retention: get("retention"),
        compression_ratio: get("compressionRatio"),
        int8: outcome.manifest.variants.get("int8").map(|v| Int8Figures {
            size_bytes: v.size_bytes,
            accuracy: Some(v.accuracy),
            speedup: outcome.manifest.variants.get("fp32").map(|f| f.latency_ms_batch1 / v.latency_ms_batch1),
            passed_gate: v.passed_gate.unwrap_or(false),
        }),
        served_variant: outcome.manifest.served_variant.clone(),
        served_variant_reason: outcome.manifest.served_variant_reason.clone(),
        warnings: outcome.manifest.warnings.clone(),
    })
}

/// Writes `message` (cut to [`TERMINATION_MESSAGE_LIMIT`] bytes on a character boundary) to the
/// termination-message file.
pub fn write_termination_message(path: &Path, message: &str) -> std::io::Result<()> {
    let mut end = message.len().min(TERMINATION_MESSAGE_LIMIT);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    std::fs::write(path, &message[..end])
}

/// The progress an event stands for, if any: steps and stage changes.
pub fn progress_of(event: &Event, previous: &Progress) -> Option<Progress> {
    let mut p = previous.clone();
    match event {
        Event::Step { run, step, total_steps, epoch, loss, .. } => {
            p.stage = Some(match run.as_str() {
                "teacher" => ProgressStage::PreparingTeacher,
                "label-only" | "corpus-only" => ProgressStage::TrainingLabelOnly,
                _ => ProgressStage::Training,
            });
            p.step = Some(*step);
            p.total_steps = Some(*total_steps);
            p.epoch = Some(*epoch as u32);
            p.loss = loss.is_finite().then_some((*loss * 1e4).round() / 1e4);
        }
        Event::Stage { stage, .. } => {
            if p.stage == Some(*stage) {
                return None;
            }
            p = Progress { stage: Some(*stage), ..Default::default() };
        }
        _ => return None,
    }
    Some(p)
}

/// Forwards events to `inner` and applies progress to the DistillationJob's status from a
/// background thread (its own small runtime), at most every two seconds and on every stage change.
pub struct StatusReporter {
    inner: Box<dyn Reporter>,
    last: Progress,
    sender: Option<Sender<Progress>>,
    thread: Option<JoinHandle<()>>,
}

impl StatusReporter {
    /// Reports on `job` (which must carry its name and namespace) through `inner` and the API.
    pub fn new(job: &DistillationJob, inner: Box<dyn Reporter>) -> Result<Self, String> {
        let name = job.metadata.name.clone().ok_or("the DistillationJob has no metadata.name")?;
        let namespace = job.metadata.namespace.clone().ok_or("the DistillationJob has no metadata.namespace")?;
        let (sender, receiver) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("status-reporter".into())
            .spawn(move || apply_loop(&name, &namespace, receiver))
            .map_err(|e| format!("cannot start the status reporter: {e}"))?;
        Ok(Self { inner, last: Progress::default(), sender: Some(sender), thread: Some(thread) })
    }
}

impl Reporter for StatusReporter {
    fn report(&mut self, event: &Event) {
        self.inner.report(event);
        if let Some(p) = progress_of(event, &self.last) {
            self.last = p.clone();
            if let Some(s) = &self.sender {
                let _ = s.send(p);
            }
        }
    }
}

impl Drop for StatusReporter {
    /// Sends the last progress and waits for it to be applied.
    fn drop(&mut self) {
        self.sender.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn apply_loop(name: &str, namespace: &str, receiver: Receiver<Progress>) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => return eprintln!("distillery-worker: progress is not reported: {e}"),
    };
    let api = match runtime.block_on(kube::Client::try_default()) {
        Ok(client) => Api::<DistillationJob>::namespaced(client, namespace),
        Err(e) => return eprintln!("distillery-worker: progress is not reported (no Kubernetes client: {e})"),
    };
    let mut pending: Option<Progress> = None;
    let mut sent_at: Option<Instant> = None;
    let mut sent_stage: Option<ProgressStage> = None;
    let mut warned = false;
    loop {
        let (next, closed) = match receiver.recv_timeout(REPORT_EVERY) {
            Ok(p) => (Some(p), false),
            Err(RecvTimeoutError::Timeout) => (None, false),
            Err(RecvTimeoutError::Disconnected) => (None, true),
        };
        if let Some(p) = next {
            pending = Some(p);
        }
        let due = sent_at.is_none_or(|t| t.elapsed() >= REPORT_EVERY)
            || pending.as_ref().is_some_and(|p| p.stage != sent_stage);
        if let Some(mut p) = pending.take_if(|_| due || closed) {
            p.updated = Some(Time(k8s_openapi::jiff::Timestamp::now()));
            let body = json!({
                "apiVersion": "distillery.dev/v1alpha1", "kind": "DistillationJob",
                "metadata": {"name": name}, "status": {"progress": p},
            });
            let result =
                runtime.block_on(api.patch_status(name, &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(&body)));
            if let Err(e) = result
                && !warned
            {
                eprintln!("distillery-worker: cannot report progress to {namespace}/{name}: {e}");
                warned = true;
            }
            sent_at = Some(Instant::now());
            sent_stage = p.stage;
        }
        if closed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(run: &str, step: u64) -> Event {
        Event::Step {
            run: run.into(),
            step,
            total_steps: 100,
            epoch: 2,
            loss: 0.123456,
            learning_rate: 1e-4,
            examples_per_second: 10.0,
            eta_seconds: 1.0,
        }
    }

    #[test]
    fn steps_and_stage_changes_become_progress() {
        let p = progress_of(&step("student", 7), &Progress::default()).unwrap();
        assert_eq!(
            (p.stage, p.step, p.total_steps, p.epoch),
            (Some(ProgressStage::Training), Some(7), Some(100), Some(2))
        );
        assert_eq!(p.loss, Some(0.1235));
        let teacher = progress_of(&step("teacher", 1), &p).unwrap();
        assert_eq!(teacher.stage, Some(ProgressStage::PreparingTeacher));
        let label_only = progress_of(&step("label-only", 1), &p).unwrap();
        assert_eq!(label_only.stage, Some(ProgressStage::TrainingLabelOnly));
        let stage = Event::Stage { stage: ProgressStage::WritingArtifact, message: "writing".into() };
        let next = progress_of(&stage, &p).unwrap();
        assert_eq!(
            (next.stage, next.step),
            (Some(ProgressStage::WritingArtifact), None),
            "a new stage clears the step"
        );
        assert!(progress_of(&stage, &next).is_none(), "the same stage again is nothing new");
        assert!(progress_of(&Event::Checkpoint { run: "student".into(), step: 5 }, &p).is_none());
        let written = serde_json::to_value(&next).unwrap();
        assert_eq!(written["stage"], "writing-artifact", "status shows the documented kebab-case value");
    }

    #[test]
    fn termination_messages_are_cut_on_a_character_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("termination-log");
        write_termination_message(&path, &"é".repeat(3000)).unwrap();
        let written = std::fs::read_to_string(&path).unwrap();
        assert!(written.len() <= TERMINATION_MESSAGE_LIMIT && written.chars().all(|c| c == 'é'));
    }
}
