//! Why a reconcile failed, and what the controller does about it.
//!
//! Only transient failures are errors here: they are retried with exponential backoff
//! ([`crate::context::Backoff`]). An invalid spec is not an error: it becomes a `Failed` status
//! with `Accepted=False` and waits for the spec to change.

/// A reconcile failure.
///
/// A 403 is retried like the rest (a platform team may grant the permission without restarting
/// the operator), and is also reported on the object as a `Forbidden` Warning Event naming what
/// the operator's ServiceAccount may not do ([`crate::pipeline::instrumented`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a request (conflicts, timeouts, 5xx, a permission the
    /// operator lacks). Retried with backoff.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The object lacks a field the API server always sets. Retried with backoff (a cache
    /// inconsistency clears itself).
    #[error("the object has no {0}")]
    MissingField(&'static str),
    /// A child could not be built from a spec that passed validation: a bug in the operator,
    /// retried with backoff so that it shows in metrics and logs rather than in a hot loop.
    #[error("cannot build a child object: {0}")]
    Build(String),
}

impl Error {
    /// The category in the `reconcile_errors` metric.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(status)) if status.code == 409 => "conflict",
            Error::Kube(kube::Error::Api(status)) if status.code == 403 => "forbidden",
            Error::Kube(kube::Error::Api(status)) if status.code == 422 || status.code == 400 => "rejected",
            Error::Kube(kube::Error::Api(_)) => "kube-api",
            Error::Kube(_) => "kube-transport",
            Error::MissingField(_) => "missing-field",
            Error::Build(_) => "build",
        }
    }
}
