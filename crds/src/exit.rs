//! The worker's exit codes, the contract between `distillery-worker` and the Jobs the operator
//! builds: a Job's `podFailurePolicy` fails it at once on [`PERMANENT`], and retries anything
//! else up to `backoffLimit`.

/// A failure that running the same spec again cannot fix: an invalid or unsupported spec, data
/// that cannot be read as the spec says, an artifact location that belongs to another spec.
/// (clap's usage errors exit 2 too, and are just as permanent.)
pub const PERMANENT: i32 = 2;

/// A failure a retry may get past (storage, the API server, a killed process): the run resumes
/// from its checkpoint.
pub const TRANSIENT: i32 = 1;
