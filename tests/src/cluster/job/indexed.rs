//! Indexed Jobs (`completionMode: Indexed`), as the real Job controller runs them
//! (`pkg/controller/job/indexed_job_utils.go`): each pod holds one completion index in
//! `0..completions`, in the `batch.kubernetes.io/job-completion-index` annotation and label, in
//! `JOB_COMPLETION_INDEX` (a downward-API reference to that label, added to every container that
//! does not set it) and in its hostname `<job>-<index>`; its name starts `<job>-<index>-`. An
//! index is complete once one of its pods succeeded (`status.completedIndexes`); a failed pod's
//! index is pending again and gets a new pod, never a complete index. With
//! `backoffLimitPerIndex` each index counts its own failures, carried from pod to pod in the
//! `batch.kubernetes.io/job-index-failure-count` annotation: an index that fails more often than
//! the limit (or whose pod matches a `FailIndex` rule) is failed (`status.failedIndexes`) and gets
//! no new pod, and its delay before a new pod is its own. To carry the count, the failed pod of a
//! pending index keeps its tracking finalizer (and is not counted yet) until its index has a new
//! pod, as in the real controller.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{JobSpec, JobStatus};
use k8s_openapi::api::core::v1::{Container, EnvVar, EnvVarSource, ObjectFieldSelector, Pod};
use kube::ResourceExt;

use super::{Action_, Judged, Verdict, finished_at, phase, retry_delay};
use crate::cluster::pod_ready;

/// Annotation and label with a pod's completion index.
pub const COMPLETION_INDEX_KEY: &str = "batch.kubernetes.io/job-completion-index";
/// Annotation with the failures of a pod's index counted before the pod was made
/// (`backoffLimitPerIndex`).
pub const INDEX_FAILURE_COUNT_KEY: &str = "batch.kubernetes.io/job-index-failure-count";
/// Annotation with the failures of a pod's index that the failure policy ignored before the pod
/// was made (`backoffLimitPerIndex`; written only when there are some).
pub const INDEX_IGNORED_FAILURE_COUNT_KEY: &str = "batch.kubernetes.io/job-index-ignored-failure-count";
/// The variable with the completion index in every container of an Indexed Job's pod.
pub const COMPLETION_INDEX_ENV: &str = "JOB_COMPLETION_INDEX";
/// The longest `generateName` the API server keeps whole: 63 characters less the 5 random ones.
const MAX_GENERATED_NAME_LENGTH: usize = 58;

/// What an Indexed Job's spec asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct IndexedSpec {
    /// `completions`: the indexes are `0..completions` (the API server requires it).
    pub completions: i32,
    /// `parallelism` (default 1): at most this many pods at once.
    pub parallelism: i32,
    /// `backoffLimitPerIndex`: the failures each index may have; more fail the index.
    pub backoff_limit_per_index: Option<i32>,
    /// `maxFailedIndexes`: the failed indexes the Job may have; more fail the Job.
    pub max_failed_indexes: Option<i32>,
}

impl IndexedSpec {
    /// The Indexed part of `spec`; `None` for a NonIndexed Job (the default mode).
    pub fn of(spec: &JobSpec) -> Option<Self> {
        if spec.completion_mode.as_deref() != Some("Indexed") {
            return None;
        }
        Some(Self {
            completions: spec.completions.unwrap_or(0),
            parallelism: spec.parallelism.unwrap_or(1),
            backoff_limit_per_index: spec.backoff_limit_per_index,
            max_failed_indexes: spec.max_failed_indexes,
        })
    }
}

/// A set of completion indexes, written as the real controller writes `status.completedIndexes`
/// and `status.failedIndexes`: ordered runs separated by commas, `first-last` for a run of three
/// or more and `a,b` for a run of two ("0-2,5,7,8").
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Indexes(BTreeSet<i32>);

impl Indexes {
    /// Reads a status field as the real controller does: an interval that starts at or past
    /// `completions` ends the list, one that runs past it is cut, one that is not a number (or a
    /// pair of numbers) is skipped.
    pub fn parse(text: &str, completions: i32) -> Self {
        let mut set = BTreeSet::new();
        if text.is_empty() {
            return Self(set);
        }
        for interval in text.split(',') {
            let mut limits = interval.split('-');
            let Ok(first) = limits.next().unwrap_or_default().parse::<i32>() else { continue };
            if first >= completions {
                break;
            }
            let last = match limits.next() {
                None => first,
                Some(text) => match text.parse::<i32>() {
                    Ok(last) => last.min(completions - 1),
                    Err(_) => continue,
                },
            };
            set.extend(first.max(0)..=last);
        }
        Self(set)
    }

    /// Adds `index`; false when it was there already.
    pub fn insert(&mut self, index: i32) -> bool {
        self.0.insert(index)
    }

    /// Whether `index` is in the set.
    pub fn contains(&self, index: i32) -> bool {
        self.0.contains(&index)
    }

    /// How many indexes the set holds (what `status.succeeded` of an Indexed Job is).
    pub fn total(&self) -> i32 {
        self.0.len() as i32
    }

    /// The indexes, in order.
    pub fn iter(&self) -> impl Iterator<Item = i32> + '_ {
        self.0.iter().copied()
    }
}

impl Extend<i32> for Indexes {
    fn extend<I: IntoIterator<Item = i32>>(&mut self, indexes: I) {
        self.0.extend(indexes);
    }
}

impl FromIterator<i32> for Indexes {
    fn from_iter<I: IntoIterator<Item = i32>>(indexes: I) -> Self {
        Self(indexes.into_iter().collect())
    }
}

impl fmt::Display for Indexes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut runs: Vec<[i32; 2]> = vec![];
        for index in self.iter() {
            match runs.last_mut() {
                Some([_, last]) if *last + 1 == index => *last = index,
                _ => runs.push([index, index]),
            }
        }
        let parts: Vec<String> = runs
            .iter()
            .map(|&[first, last]| match last - first {
                0 => first.to_string(),
                1 => format!("{first},{last}"),
                _ => format!("{first}-{last}"),
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// A pod's completion index, from its annotation as the real controller reads it: `None` when the
/// annotation is missing, not a number or negative.
pub fn completion_index(pod: &Pod) -> Option<i32> {
    pod.annotations().get(COMPLETION_INDEX_KEY)?.parse::<i32>().ok().filter(|i| *i >= 0)
}

/// The failures of a pod's index before the pod was made, from its annotations (0 for one that
/// is missing, not a number or negative, as the real controller reads them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FailureCounts {
    /// Failures counted towards `backoffLimitPerIndex`.
    pub counted: i32,
    /// Failures the failure policy ignored.
    pub ignored: i32,
}

impl FailureCounts {
    /// The counts `pod` carries.
    pub fn of(pod: &Pod) -> Self {
        let read =
            |key: &str| pod.annotations().get(key).and_then(|v| v.parse::<i32>().ok()).filter(|v| *v >= 0).unwrap_or(0);
        Self { counted: read(INDEX_FAILURE_COUNT_KEY), ignored: read(INDEX_IGNORED_FAILURE_COUNT_KEY) }
    }

    /// Every failure of the index before the pod, ignored ones too: what the index's retry delay
    /// grows with.
    pub fn absolute(self) -> i32 {
        self.counted.saturating_add(self.ignored)
    }

    /// The counts of the pod that replaces a pod carrying `self`, once that pod failed and the
    /// failure policy counted the failure (`counted`) or ignored it.
    pub fn after_failure(self, counted: bool) -> Self {
        if counted {
            Self { counted: self.counted.saturating_add(1), ..self }
        } else {
            Self { ignored: self.ignored.saturating_add(1), ..self }
        }
    }
}

/// What makes a pod one index's pod.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IndexPod {
    /// The completion index.
    pub index: i32,
    /// The failure counts it carries (with `backoffLimitPerIndex` only).
    pub failures: Option<FailureCounts>,
}

impl IndexPod {
    /// Makes `pod` (made from the Job's template) this index's pod, as the real controller does:
    /// the index in an annotation and a label, `JOB_COMPLETION_INDEX` in every container and init
    /// container that does not set it (from the label, through the downward API), the hostname
    /// `<job>-<index>`, the name prefix `<job>-<index>-`, and the failure counts.
    pub fn apply(&self, pod: &mut Pod, job_name: &str) {
        let index = self.index.to_string();
        let annotations = pod.metadata.annotations.get_or_insert_with(Default::default);
        annotations.insert(COMPLETION_INDEX_KEY.into(), index.clone());
        if let Some(counts) = self.failures {
            annotations.insert(INDEX_FAILURE_COUNT_KEY.into(), counts.counted.to_string());
            if counts.ignored > 0 {
                annotations.insert(INDEX_IGNORED_FAILURE_COUNT_KEY.into(), counts.ignored.to_string());
            }
        }
        pod.metadata.labels.get_or_insert_with(Default::default).insert(COMPLETION_INDEX_KEY.into(), index);
        pod.metadata.generate_name = Some(generate_name(job_name, self.index));
        if let Some(spec) = pod.spec.as_mut() {
            spec.hostname = Some(format!("{job_name}-{}", self.index));
            for container in spec.init_containers.iter_mut().flatten().chain(spec.containers.iter_mut()) {
                add_index_variable(container);
            }
        }
    }
}

/// Adds `JOB_COMPLETION_INDEX` to `container`, unless it sets it itself, as a reference to the
/// index label (the `PodIndexLabel` behaviour, on by default since Kubernetes 1.28).
fn add_index_variable(container: &mut Container) {
    let env = container.env.get_or_insert_with(Vec::new);
    if env.iter().any(|e| e.name == COMPLETION_INDEX_ENV) {
        return;
    }
    env.push(EnvVar {
        name: COMPLETION_INDEX_ENV.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: format!("metadata.labels['{COMPLETION_INDEX_KEY}']"),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
}

/// `<job>-<index>-`, with the Job's name cut so that the whole fits what the API server keeps of a
/// `generateName` (as `podGenerateNameWithIndex` does).
fn generate_name(job_name: &str, index: i32) -> String {
    let suffix = format!("-{index}-");
    let whole = format!("{job_name}{suffix}");
    if whole.len() <= MAX_GENERATED_NAME_LENGTH {
        return whole;
    }
    format!("{}{suffix}", &whole[..MAX_GENERATED_NAME_LENGTH - suffix.len()])
}

/// The first `count` indexes below `completions` not in `taken`.
pub fn first_pending(taken: &Indexes, count: usize, completions: i32) -> Vec<i32> {
    (0..completions).filter(|i| !taken.contains(*i)).take(count).collect()
}

/// The order in which active pods are removed, roughly the real controller's (`ActivePods`): not
/// running before running, not ready before ready, the newest first.
fn removal_order(a: &&Pod, b: &&Pod) -> Ordering {
    let standing = |p: &Pod| (phase(p) == "Running", pod_ready(p));
    let made = |p: &Pod| p.creation_timestamp().map(|t| t.0);
    standing(a).cmp(&standing(b)).then_with(|| made(b).cmp(&made(a)))
}

/// The active pods an Indexed Job removes, as the real controller picks them: pods without a
/// valid index or with one at or past `completions`, all but one pod of an index held by several,
/// then, while more than `want` would remain (parallelism lowered), in [`removal_order`].
pub fn surplus<'p>(active: &[&'p Pod], completions: i32, want: usize) -> Vec<&'p Pod> {
    let mut remove = vec![];
    let mut by_index: BTreeMap<i32, Vec<&'p Pod>> = BTreeMap::new();
    for &pod in active {
        match completion_index(pod).filter(|i| *i < completions) {
            Some(index) => by_index.entry(index).or_default().push(pod),
            None => remove.push(pod),
        }
    }
    let mut left = vec![];
    for (_, mut pods) in by_index {
        pods.sort_by(removal_order);
        if let Some(keep) = pods.pop() {
            left.push(keep);
        }
        remove.extend(pods);
    }
    if left.len() > want {
        left.sort_by(removal_order);
        let extra = left.len() - want;
        remove.extend(left.drain(..extra));
    }
    remove
}

/// The failed pod of a pending index that keeps its tracking finalizer until the index has a new
/// pod (`podsWithDelayedDeletionPerIndex`).
#[derive(Clone, Copy, Debug)]
pub(super) struct Held<'p> {
    /// The pod.
    pub pod: &'p Pod,
    /// Whether the failure policy counted its failure (else it ignored it).
    pub counted: bool,
}

/// An Indexed Job's indexes as one reconcile finds them.
#[derive(Debug)]
pub(super) struct IndexTally<'p> {
    /// What the Job's spec asks for.
    pub spec: IndexedSpec,
    /// Complete indexes: `status.completedIndexes` and the indexes of the pods that succeeded now.
    pub completed: Indexes,
    /// With `backoffLimitPerIndex`, failed indexes: `status.failedIndexes` and those failed now.
    pub failed: Option<Indexes>,
    /// With `backoffLimitPerIndex`, per pending index, its failed pod held until it has a new one.
    pub held: BTreeMap<i32, Held<'p>>,
}

impl<'p> IndexTally<'p> {
    /// The tally from the Job's status, the pods that ended and are not counted yet (`judged`),
    /// and the indexes of its active pods.
    pub fn new(spec: &IndexedSpec, status: &JobStatus, judged: &[Judged<'p>], active: &[&Pod]) -> Self {
        let parse = |text: &Option<String>| Indexes::parse(text.as_deref().unwrap_or_default(), spec.completions);
        let mut completed = parse(&status.completed_indexes);
        completed
            .extend(judged.iter().filter(|j| j.verdict == Verdict::Succeeded).filter_map(|j| completion_index(j.pod)));
        let Some(limit) = spec.backoff_limit_per_index else {
            return Self { spec: spec.clone(), completed, failed: None, held: BTreeMap::new() };
        };
        let mut failed = parse(&status.failed_indexes);
        for j in judged {
            if let Verdict::Failed(action) = &j.verdict
                && index_failed(j.pod, action, limit)
                && let Some(index) = completion_index(j.pod)
            {
                failed.insert(index);
            }
        }
        let busy: Indexes = active.iter().filter_map(|p| completion_index(p)).collect();
        let mut held: BTreeMap<i32, Held<'p>> = BTreeMap::new();
        for j in judged {
            let Verdict::Failed(action) = &j.verdict else { continue };
            let Some(index) = completion_index(j.pod) else { continue };
            if completed.contains(index) || failed.contains(index) || busy.contains(index) {
                continue;
            }
            // The pod with the most failures before it, the last to end among equals.
            let later = held.get(&index).is_none_or(|last| {
                FailureCounts::of(last.pod).absolute() <= FailureCounts::of(j.pod).absolute()
                    && finished_at(j.pod) >= finished_at(last.pod)
            });
            if later {
                held.insert(index, Held { pod: j.pod, counted: *action != Action_::Ignore });
            }
        }
        Self { spec: spec.clone(), completed, failed: Some(failed), held }
    }

    /// Whether `pod` is held (not counted nor let go yet).
    pub fn holds(&self, pod: &Pod) -> bool {
        self.held.values().any(|h| h.pod.uid() == pod.uid())
    }

    /// Indexes no new pod may take: complete, failed, or held by an active or terminating pod.
    pub fn taken(&self, active: &[&Pod], terminating: &[&Pod]) -> Indexes {
        let mut taken = self.completed.clone();
        taken.extend(self.failed.iter().flat_map(|f| f.iter()));
        taken.extend(active.iter().chain(terminating).filter_map(|p| completion_index(p)));
        taken
    }

    /// The failure counts the next pod of `index` carries (with `backoffLimitPerIndex`).
    pub fn next_failure_counts(&self, index: i32) -> FailureCounts {
        let after = |h: &Held| FailureCounts::of(h.pod).after_failure(h.counted);
        self.held.get(&index).map_or_else(FailureCounts::default, after)
    }

    /// How long `index`'s next pod must still wait (with `backoffLimitPerIndex`), as the real
    /// controller computes it: the retry delay for the index's failures so far, including the one
    /// of its held pod, from when that pod ended.
    pub fn remaining_delay(&self, index: i32) -> Duration {
        let Some(held) = self.held.get(&index) else { return Duration::ZERO };
        let Some(ended) = finished_at(held.pod) else { return Duration::ZERO };
        let failures = FailureCounts::of(held.pod).absolute().saturating_add(1);
        let elapsed = Duration::try_from(jiff::Timestamp::now().duration_since(ended)).unwrap_or(Duration::ZERO);
        retry_delay(failures).saturating_sub(elapsed)
    }
}

/// Whether the failure of `pod` fails its index (`isIndexFailed`): a `FailIndex` rule matched, or
/// the failure counts and the index had `limit` counted failures before it.
fn index_failed(pod: &Pod, action: &Action_, limit: i32) -> bool {
    match action {
        Action_::FailIndex => true,
        Action_::Ignore => false,
        _ => FailureCounts::of(pod).counted >= limit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_are_written_and_read_as_the_real_controller_writes_and_reads_them() {
        fn written(indexes: &[i32]) -> String {
            indexes.iter().copied().collect::<Indexes>().to_string()
        }
        assert_eq!(written(&[]), "");
        assert_eq!(written(&[0, 1, 2]), "0-2");
        assert_eq!(written(&[3, 4]), "3,4", "a run of two is written as two");
        assert_eq!(written(&[0, 1, 2, 5, 7, 8, 9]), "0-2,5,7-9");
        let read = |text: &str, completions: i32| Indexes::parse(text, completions).iter().collect::<Vec<_>>();
        assert_eq!(read("0-2,5", 10), [0, 1, 2, 5]);
        assert_eq!(read("3,4", 10), [3, 4]);
        assert_eq!(read("1-3,x,7", 10), [1, 2, 3, 7], "a corrupt interval is skipped");
        assert_eq!(read("1,4-9,12", 6), [1, 4, 5], "cut at completions, and what starts past it ends the list");
        assert_eq!(Indexes::parse("0-2,5", 10).total(), 4);
    }

    #[test]
    fn pending_indexes_skip_taken_ones_and_stop_at_completions() {
        let taken: Indexes = [0, 2].into_iter().collect();
        assert_eq!(first_pending(&taken, 2, 5), [1, 3]);
        assert_eq!(first_pending(&taken, 9, 5), [1, 3, 4]);
        assert!(first_pending(&taken, 0, 5).is_empty());
    }

    #[test]
    fn an_index_pod_gets_its_annotation_label_variable_hostname_and_name_prefix() {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"labels": {"app": "a"}},
            "spec": {"containers": [
                {"name": "main", "image": "shell:1"},
                {"name": "own", "image": "shell:1", "env": [{"name": "JOB_COMPLETION_INDEX", "value": "mine"}]}]}
        }))
        .unwrap();
        IndexPod { index: 2, failures: Some(FailureCounts { counted: 1, ignored: 0 }) }.apply(&mut pod, "shards");
        assert_eq!(completion_index(&pod), Some(2));
        assert_eq!(pod.labels().get(COMPLETION_INDEX_KEY).map(String::as_str), Some("2"));
        assert_eq!(pod.annotations().get(INDEX_FAILURE_COUNT_KEY).map(String::as_str), Some("1"));
        assert!(!pod.annotations().contains_key(INDEX_IGNORED_FAILURE_COUNT_KEY), "none ignored: not written");
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("shards-2-"));
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("shards-2"));
        let env = |c: usize| spec.containers[c].env.clone().unwrap_or_default();
        let reference = env(0)[0].value_from.as_ref().and_then(|f| f.field_ref.clone()).unwrap();
        assert_eq!(reference.field_path, "metadata.labels['batch.kubernetes.io/job-completion-index']");
        assert_eq!(env(1).len(), 1, "a container's own JOB_COMPLETION_INDEX is kept");
        assert_eq!(FailureCounts::of(&pod).after_failure(false), FailureCounts { counted: 1, ignored: 1 });
    }

    #[test]
    fn a_long_job_name_is_cut_so_that_the_index_stays_in_the_generated_name() {
        let name = "j".repeat(60);
        let prefix = generate_name(&name, 12);
        assert_eq!(prefix.len(), MAX_GENERATED_NAME_LENGTH);
        assert!(prefix.ends_with("j-12-"), "{prefix}");
    }
}
