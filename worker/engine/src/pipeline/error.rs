//! Why a run fails, and what the operator does about each failure ([`ErrorPolicy`]).

use crate::data::inputs::InputError;
use crate::onnx::OnnxError;
use crate::store::StoreError;
use crate::student::StudentError;
use crate::teacher::prepare::PrepareError;
use crate::teacher::shards::ShardError;
use crate::train::checkpoint::CheckpointError;
use crate::train::runner::RunError;

/// Why a run failed, and what the operator should do about it ([`DistillError::policy`]).
#[derive(Debug, thiserror::Error)]
pub enum DistillError {
    /// A URI cannot be used, or the store failed (downloading an input, checking or publishing
    /// an `s3://` output).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The data or the teacher's tokenizer could not be read.
    #[error(transparent)]
    Input(#[from] InputError),
    /// The teacher could not be prepared.
    #[error(transparent)]
    Teacher(Box<PrepareError>),
    /// The student could not be built.
    #[error(transparent)]
    Student(#[from] StudentError),
    /// Sharded teacher outputs could not be written or joined.
    #[error(transparent)]
    Shards(Box<ShardError>),
    /// The spec contradicts the teacher or the student it describes.
    #[error("spec.{0}")]
    InvalidSpec(String),
    /// A spec feature this worker does not run yet.
    #[error("{0}")]
    NotSupported(String),
    /// Training failed.
    #[error(transparent)]
    Run(Box<RunError>),
    /// A tensor operation failed.
    #[error("{0}")]
    Candle(#[from] candle_core::Error),
    /// The ONNX export or int8 quantization failed.
    #[error(transparent)]
    Onnx(Box<OnnxError>),
    /// The output already holds a complete artifact of another spec, which may be serving.
    #[error(
        "output {path} {why}: artifacts are immutable once written (a server may be serving this one), so this job will not write over it; choose a new spec.output.uri (or --output) for this spec"
    )]
    Immutable {
        /// The output directory.
        path: String,
        /// What it holds.
        why: String,
    },
    /// The artifact could not be written.
    #[error("output {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

impl From<PrepareError> for DistillError {
    fn from(e: PrepareError) -> Self {
        Self::Teacher(Box::new(e))
    }
}

impl From<ShardError> for DistillError {
    fn from(e: ShardError) -> Self {
        Self::Shards(Box::new(e))
    }
}

impl From<OnnxError> for DistillError {
    fn from(e: OnnxError) -> Self {
        Self::Onnx(Box::new(e))
    }
}

impl From<RunError> for DistillError {
    fn from(e: RunError) -> Self {
        Self::Run(Box::new(e))
    }
}

/// What to do about a failed run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorPolicy {
    /// The spec (or what it points at) must change; retrying the same spec fails again.
    WaitForSpecChange,
    /// Transient (storage, a killed process): retry; the run resumes from its checkpoint.
    Retry,
}

impl DistillError {
    /// How the operator should treat this failure.
    pub fn policy(&self) -> ErrorPolicy {
        match self {
            Self::Io { .. } => ErrorPolicy::Retry,
            // A bad URI or setting, denied access, a missing bucket or object, a damaged file:
            // the spec (or the store) must change. Anything else the store said after its own
            // retries (5xx, timeouts) and local disk trouble: retry.
            Self::Store(e) | Self::Input(InputError::Store(e)) => {
                if e.is_permanent() {
                    ErrorPolicy::WaitForSpecChange
                } else {
                    ErrorPolicy::Retry
                }
            }
            Self::Run(e) => run_policy(e),
            // A missing, damaged or mismatched shard stays so until the outputs are computed
            // again; storage trouble may pass.
            Self::Shards(e) if !e.is_permanent() => ErrorPolicy::Retry,
            Self::Teacher(e) => match &**e {
                PrepareError::Io { .. } => ErrorPolicy::Retry,
                PrepareError::Run(run) => run_policy(run),
                // Reading or writing the teacher cache's tensor files (on a claim): storage.
                PrepareError::Candle(candle_core::Error::Io(_)) => ErrorPolicy::Retry,
                _ => ErrorPolicy::WaitForSpecChange,
            },
            Self::Onnx(e) if matches!(**e, OnnxError::Artifact { .. }) => ErrorPolicy::Retry,
            _ => ErrorPolicy::WaitForSpecChange,
        }
    }
}

/// A training run's failure: storage trouble with its checkpoints may pass on a retry; a
/// checkpoint of another spec, or an unreadable state file, will be found again by every retry.
fn run_policy(e: &RunError) -> ErrorPolicy {
    match e {
        RunError::Checkpoint(c) => match **c {
            CheckpointError::Io { .. } | CheckpointError::Tensors { .. } => ErrorPolicy::Retry,
            _ => ErrorPolicy::WaitForSpecChange,
        },
        RunError::Candle { .. } => ErrorPolicy::WaitForSpecChange,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_failures_are_retried_and_what_a_retry_finds_again_is_permanent() {
        let io = || std::io::Error::other("disk full");
        let checkpoint = |c: CheckpointError| DistillError::Run(Box::new(RunError::from(c)));
        let retried = [
            DistillError::Io { path: "/artifacts/x".into(), source: io() },
            checkpoint(CheckpointError::Io { path: "c".into(), source: io() }),
            DistillError::Teacher(Box::new(PrepareError::Run(RunError::from(CheckpointError::Io {
                path: "/artifacts/.distillery-cache/teachers/k.partial-x/checkpoint".into(),
                source: io(),
            })))),
            DistillError::Teacher(Box::new(PrepareError::Candle(candle_core::Error::Io(io())))),
        ];
        for e in &retried {
            assert_eq!(e.policy(), ErrorPolicy::Retry, "{e}");
        }
        let permanent = [
            checkpoint(CheckpointError::State { path: "c".into(), message: "unreadable".into() }),
            DistillError::InvalidSpec("student.initFromTeacher.layers".into()),
            DistillError::NotSupported("task causal-lm".into()),
        ];
        for e in &permanent {
            assert_eq!(e.policy(), ErrorPolicy::WaitForSpecChange, "{e}");
        }
    }

    #[test]
    fn a_missing_or_mismatched_shard_is_permanent_and_storage_trouble_is_retried() {
        let missing = ShardError::Missing { uri: "/o".into(), shard: 1, shards: 2, file: "shard-1-of-2.json".into() };
        let mismatch = ShardError::Mismatch {
            uri: "/o".into(),
            shard: 0,
            shards: 2,
            what: "teacher (sha256 of its GGUF file)",
            found: "a".into(),
            expected: "b".into(),
        };
        for e in [missing, mismatch] {
            assert_eq!(DistillError::from(e).policy(), ErrorPolicy::WaitForSpecChange);
        }
        let io = ShardError::Io { path: "/o/shard-0-of-2.json".into(), source: std::io::Error::other("disk") };
        let slow = ShardError::Store(StoreError::Store { uri: "s3://b/o".into(), message: "503".into() });
        for e in [io, slow] {
            assert_eq!(DistillError::from(e).policy(), ErrorPolicy::Retry);
        }
    }

    #[test]
    fn a_store_error_is_retried_only_when_a_retry_can_help() {
        let transient = StoreError::Store { uri: "s3://b/k".into(), message: "503 SlowDown".into() };
        let denied = StoreError::Denied { uri: "s3://b/k".into(), message: "403".into() };
        let missing = StoreError::NotFound { uri: "s3://b/k".into(), message: "NoSuchBucket".into() };
        assert_eq!(DistillError::Store(transient).policy(), ErrorPolicy::Retry);
        assert_eq!(DistillError::Store(denied).policy(), ErrorPolicy::WaitForSpecChange);
        assert_eq!(DistillError::Input(InputError::Store(missing)).policy(), ErrorPolicy::WaitForSpecChange);
        let slow = StoreError::Store { uri: "s3://b/d.csv".into(), message: "timeout".into() };
        assert_eq!(DistillError::Input(InputError::Store(slow)).policy(), ErrorPolicy::Retry);
    }
}
