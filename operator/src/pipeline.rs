//! What every controller's pipeline shares: reconcile bookkeeping (metrics, per-object backoff,
//! error categories), server-side apply of children and of the status fields the operator owns
//! (under one field manager, and only when they differ), and Events.
//!
//! A controller module keeps what is its own — reading what it needs, the pure `build` and
//! decision logic, and its status — and calls these for the I/O every controller does the same
//! way.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Instant;

use kube::api::{Api, Patch, PatchParams};
use kube::core::NamespaceResourceScope;
use kube::runtime::controller::{self, Action};
use kube::runtime::events::{Event, EventType};
use kube::runtime::{Controller, WatchStreamExt, reflector, watcher};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::context::Context;
use crate::error::Error;

/// A custom resource one of the operator's controllers reconciles.
pub trait Reconciled:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + DeserializeOwned
    + Serialize
    + Send
    + Sync
    + 'static
{
    /// The status fields the operator owns (everything but what workers report themselves).
    type Status: Serialize + PartialEq + Send + Sync;

    /// Name of the controller in metrics and logs.
    const CONTROLLER: &'static str;

    /// The operator's part of the stored status, to compare a newly computed one with.
    fn operator_status(&self) -> Self::Status;
}

/// A controller for `K` whose cache keeps each object without its `managedFields` — by far the
/// largest part of an object applied by several field managers, and never read by a reconcile —
/// so that the cache of a thousand objects stays small. Reconciles run at most `concurrency` at
/// a time.
pub fn controller<K: Reconciled>(api: Api<K>, concurrency: u16) -> Controller<K> {
    let (reader, writer) = reflector::store();
    let objects = watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(|obj| obj.managed_fields_mut().clear())
        .reflect(writer)
        .applied_objects();
    Controller::for_stream(objects, reader).with_config(controller::Config::default().concurrency(concurrency))
}

/// The key of an object's retry backoff: its controller's name and `namespace/name` (a
/// DistillationJob and a ModelDeployment may share a name).
fn backoff_key<K: Reconciled>(obj: &K) -> String {
    format!("{}:{}", K::CONTROLLER, key(obj))
}

/// `namespace/name`, the key of logs.
pub fn key<K: ResourceExt>(obj: &K) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

/// Runs one reconcile of `obj` with its metrics, and forgets its backoff when it succeeds —
/// unless `obj` (from the controller's cache) is older than the operator's own last status write
/// of it: then it waits for the cache rather than act on a status it has replaced. A
/// reconcile refused for a permission the operator lacks (403) is reported on `obj` as a
/// `Forbidden` Warning Event, one whose child object the API server refused (422, 400, e.g. an
/// admission policy) as `Rejected` — where a platform team looks first (`kubectl describe`),
/// not only in the operator's log. Both are retried with the object's backoff.
pub async fn instrumented<K: Reconciled>(
    obj: &K,
    ctx: &Context,
    reconcile: impl Future<Output = Result<Action, Error>>,
) -> Result<Action, Error> {
    if cache_behind_own_write(obj, ctx) {
        // The cache has not seen the status this operator last wrote: acting on the older one
        // would redo what that status records as done (make a deleted child again). The watch
        // event of the write brings the object back soon; this is a fallback.
        return Ok(Action::requeue(std::time::Duration::from_millis(500)));
    }
    let started = Instant::now();
    ctx.metrics.reconcile_started(K::CONTROLLER);
    let result = reconcile.await;
    ctx.metrics.reconcile_finished(K::CONTROLLER, started.elapsed());
    // What the API server refused is classified once, by `Error::category` (also the metric's).
    match &result {
        Ok(_) => ctx.backoff.reset(&backoff_key(obj)),
        Err(error @ Error::Kube(kube::Error::Api(status))) => match error.category() {
            "forbidden" => {
                // RBAC's denials read "User … cannot <verb> resource …"; quotas, PodSecurity and
                // a terminating namespace answer 403 too, and a ClusterRole does not fix those.
                let hint = if status.message.contains(" cannot ") && status.message.contains("resource") {
                    "grant it in the operator's ClusterRole (the chart's templates/rbac.yaml)"
                } else {
                    "check the namespace's quotas and admission policies"
                };
                let note = format!(
                    "the API server refused a request for this {}: {} — {hint}; it retries",
                    K::kind(&()),
                    status.message
                );
                publish(ctx, obj, EventType::Warning, "Forbidden", note).await;
            }
            "rejected" => {
                let note = format!(
                    "the API server refused a write the operator made for this {}: {} — an admission policy of the cluster, or a bug in the operator (please report it); it retries",
                    K::kind(&()),
                    status.message
                );
                publish(ctx, obj, EventType::Warning, "Rejected", note).await;
            }
            _ => {}
        },
        Err(_) => {}
    }
    result
}

/// The error policy of every controller: count the error by category and retry with the
/// object's own exponential backoff.
pub fn error_policy<K: Reconciled>(obj: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_error(K::CONTROLLER, error.category());
    let delay = ctx.backoff.next(&backoff_key(obj.as_ref()));
    tracing::warn!(controller = K::CONTROLLER, object = %key(obj.as_ref()), error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// What a controller's stream yields for each reconcile: failures are logged at debug level
/// (they were already counted and scheduled for retry by [`error_policy`]).
pub async fn log_outcome<T, E: std::fmt::Display>(outcome: Result<T, E>) {
    if let Err(e) = outcome {
        tracing::debug!(error = %e, "reconcile ended with an error");
    }
}

/// Annotation on each child the operator applies: the sha256 of the configuration it applied,
/// so that a reconcile that would apply the same again writes nothing.
pub const APPLIED_HASH: &str = "distillery.dev/applied-hash";

/// Server-side applies `desired` (a child the operator owns) under the operator's field manager
/// and returns what the server stored — unless the live object already is what it would make:
/// the same [`APPLIED_HASH`] (no field was dropped from the configuration since), applied by the
/// operator's field manager (it owns those fields), and every field the configuration sets has
/// its value (nobody changed one; see [`crate::objects::contains`]). Then it writes nothing and
/// returns the live object. A reconcile re-applies its children every time; without this each
/// would be a write, and under a flaky API server a reconcile with several would rarely get
/// through them all. Where the comparison cannot tell (a list another writer added to), it
/// applies: an extra write, never a missed one.
pub async fn apply<C>(
    ctx: &Context,
    namespace: &str,
    name: &str,
    desired: &(impl Serialize + Debug),
) -> Result<C, Error>
where
    C: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + Debug + DeserializeOwned + Serialize,
{
    let api: Api<C> = Api::namespaced(ctx.client.clone(), namespace);
    let live = api.get_opt(name).await?;
    apply_over(ctx, namespace, name, desired, live.as_ref()).await
}

/// [`apply`] when the reconcile has just read the child: `live` is what it read (`None`: absent).
pub async fn apply_over<C>(
    ctx: &Context,
    namespace: &str,
    name: &str,
    desired: &(impl Serialize + Debug),
    live: Option<&C>,
) -> Result<C, Error>
where
    C: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + Debug + DeserializeOwned + Serialize,
{
    let body = with_applied_hash(desired)?;
    if let Some(live) = live
        && applied_by(live, &ctx.field_manager)
        && crate::objects::contains(&serde_json::to_value(live).map_err(|e| Error::Build(e.to_string()))?, &body)
    {
        return Ok(live.clone());
    }
    let api: Api<C> = Api::namespaced(ctx.client.clone(), namespace);
    Ok(api.patch(name, &PatchParams::apply(&ctx.field_manager), &Patch::Apply(&body)).await?)
}

/// Whether `manager` holds fields of `live` by server-side apply.
fn applied_by<C: Resource>(live: &C, manager: &str) -> bool {
    live.meta()
        .managed_fields
        .iter()
        .flatten()
        .any(|m| m.manager.as_deref() == Some(manager) && m.operation.as_deref() == Some("Apply"))
}

/// `desired` as JSON with its [`APPLIED_HASH`] annotation: the sha256 of its JSON without it.
fn with_applied_hash(desired: &(impl Serialize + Debug)) -> Result<serde_json::Value, Error> {
    use sha2::{Digest, Sha256};
    let mut body = serde_json::to_value(desired).map_err(|e| Error::Build(format!("{desired:?}: {e}")))?;
    let hash = hex::encode(Sha256::digest(body.to_string().as_bytes()));
    let metadata = body
        .as_object_mut()
        .map(|o| o.entry("metadata").or_insert_with(|| json!({})))
        .and_then(|m| m.as_object_mut())
        .ok_or_else(|| Error::Build(format!("{desired:?} is not an object with metadata")))?;
    let annotations = metadata.entry("annotations").or_insert_with(|| json!({}));
    if annotations.is_null() {
        *annotations = json!({});
    }
    annotations
        .as_object_mut()
        .ok_or_else(|| Error::Build("metadata.annotations is not an object".into()))?
        .insert(APPLIED_HASH.into(), hash.into());
    Ok(body)
}

/// Applies the operator's status fields of `obj` when they differ from the stored ones; returns
/// whether anything was written. A reconcile that computes the stored status writes nothing, so
/// it cannot wake itself up.
pub async fn write_status<K: Reconciled>(ctx: &Context, obj: &K, status: &K::Status) -> Result<bool, Error> {
    if *status == obj.operator_status() {
        return Ok(false);
    }
    let namespace = obj.namespace().ok_or(Error::MissingField("metadata.namespace"))?;
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &namespace);
    let body = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": {"name": obj.name_any()},
        "status": status,
    });
    let written =
        api.patch_status(&obj.name_any(), &PatchParams::apply(&ctx.field_manager), &Patch::Apply(&body)).await?;
    remember_write(ctx, &written);
    Ok(true)
}

/// Remembers the `resourceVersion` of an object the operator wrote, for [`cache_behind_own_write`].
/// (A `resourceVersion` is opaque to clients in principle; every API server numbers them from
/// etcd's revision, and one that does not parse as a number is not tracked.)
pub fn remember_write<K: Reconciled>(ctx: &Context, written: &K) {
    if let Some(rv) = written.meta().resource_version.as_deref().and_then(|v| v.parse::<u64>().ok()) {
        ctx.written.lock().unwrap_or_else(|p| p.into_inner()).insert(backoff_key(written), rv);
    }
}

/// Whether `obj` from the cache is older than the operator's own last write of it; forgets the
/// write once the cache has caught up.
fn cache_behind_own_write<K: Reconciled>(obj: &K, ctx: &Context) -> bool {
    let mut written = ctx.written.lock().unwrap_or_else(|p| p.into_inner());
    let key = backoff_key(obj);
    let Some(&mine) = written.get(&key) else { return false };
    match obj.meta().resource_version.as_deref().and_then(|v| v.parse::<u64>().ok()) {
        Some(seen) if seen < mine => true,
        _ => {
            written.remove(&key);
            false
        }
    }
}

/// Records an Event on `obj`; a failure to record is logged, never fatal.
pub async fn publish<K: Reconciled>(ctx: &Context, obj: &K, type_: EventType, reason: &str, note: impl Into<String>) {
    let note: String = note.into();
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(note.chars().take(1000).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &obj.object_ref(&())).await {
        tracing::warn!(controller = K::CONTROLLER, object = %key(obj), error = %e, "cannot record an Event");
    }
}
