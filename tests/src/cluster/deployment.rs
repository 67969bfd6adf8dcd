//! The Deployment and ReplicaSet controllers of the simulated cluster.
//!
//! Deployment: one ReplicaSet per pod template (named by a hash of the template, which also labels
//! its pods as `pod-template-hash`), rolled with the `RollingUpdate` strategy's `maxSurge` and
//! `maxUnavailable` (25% each by default, rounded as the real controller rounds: surge up,
//! unavailable down) or `Recreate`; status with `observedGeneration`, replica counts and the
//! `Available` and `Progressing` conditions. ReplicaSet: as many pods as `replicas`, removing
//! not-ready and newest pods first. Both talk to the API server only through the API.

use std::collections::BTreeMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::pod_ready as ready;
use crate::apiserver::store::now;

const DEPLOYMENT_MANAGER: &str = "deployment-controller";
const REPLICASET_MANAGER: &str = "replicaset-controller";
/// Label of a ReplicaSet's pods naming its template's hash.
pub const TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

fn params(manager: &str) -> PatchParams {
    PatchParams { field_manager: Some(manager.into()), ..Default::default() }
}

/// Runs both controllers until the task is aborted.
pub async fn run(client: kube::Client) {
    let deployments = Controller::new(Api::<Deployment>::all(client.clone()), watcher::Config::default())
        .owns(Api::<ReplicaSet>::all(client.clone()), watcher::Config::default())
        .run(reconcile_deployment, |_, _, _| Action::requeue(Duration::from_millis(500)), Arc::new(client.clone()))
        .for_each(|_| async {});
    let replicasets = Controller::new(Api::<ReplicaSet>::all(client.clone()), watcher::Config::default())
        .owns(Api::<Pod>::all(client.clone()), watcher::Config::default().labels(TEMPLATE_HASH_LABEL))
        .run(reconcile_replicaset, |_, _, _| Action::requeue(Duration::from_millis(500)), Arc::new(client))
        .for_each(|_| async {});
    futures::join!(deployments, replicasets);
}

fn owned_by<K: Resource<DynamicType = ()>>(child: &impl Resource, owner: &K) -> bool {
    child
        .meta()
        .owner_references
        .iter()
        .flatten()
        .any(|o| Some(&o.uid) == owner.meta().uid.as_ref() && o.controller == Some(true))
}

async fn reconcile_replicaset(rs: Arc<ReplicaSet>, client: Arc<kube::Client>) -> Result<Action, kube::Error> {
    let namespace = rs.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced((*client).clone(), &namespace);
    let sets: Api<ReplicaSet> = Api::namespaced((*client).clone(), &namespace);
    let spec = rs.spec.clone().unwrap_or_default();
    let hash = rs.labels().get(TEMPLATE_HASH_LABEL).cloned().unwrap_or_default();
    let mut mine: Vec<Pod> = pods
        .list(&ListParams::default().labels(&format!("{TEMPLATE_HASH_LABEL}={hash}")))
        .await?
        .items
        .into_iter()
        .filter(|p| owned_by(p, rs.as_ref()) && p.metadata.deletion_timestamp.is_none())
        .filter(|p| !matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed")))
        .collect();
    let want = spec.replicas.unwrap_or(1) as usize;
    if mine.len() < want {
        let template = spec.template.clone().unwrap_or_default();
        for _ in mine.len()..want {
            let mut meta = template.metadata.clone().unwrap_or_default();
            meta.generate_name = Some(format!("{}-", rs.name_any()));
            meta.owner_references = rs.controller_owner_ref(&()).map(|o| vec![o]);
            let pod = Pod { metadata: meta, spec: template.spec.clone(), status: None };
            pods.create(&PostParams { field_manager: Some(REPLICASET_MANAGER.into()), ..Default::default() }, &pod)
                .await?;
        }
    } else if mine.len() > want {
        // Not-ready first, then newest.
        mine.sort_by_key(|p| (ready(p), std::cmp::Reverse(p.metadata.creation_timestamp.clone())));
        for pod in &mine[..mine.len() - want] {
            let _ = pods.delete(&pod.name_any(), &DeleteParams::default()).await;
        }
    }
    let ready_count = mine.iter().filter(|p| ready(p)).count().min(want);
    let status = json!({"status": {
        "replicas": mine.len(), "fullyLabeledReplicas": mine.len(),
        "readyReplicas": ready_count, "availableReplicas": ready_count,
        "observedGeneration": rs.metadata.generation,
    }});
    let old = serde_json::to_value(&rs.status).unwrap_or_default();
    if ["replicas", "readyReplicas", "availableReplicas", "observedGeneration"]
        .iter()
        .any(|k| old.get(*k).and_then(|v| v.as_i64()).unwrap_or(0) != status["status"][*k].as_i64().unwrap_or(0))
    {
        sets.patch_status(&rs.name_any(), &params(REPLICASET_MANAGER), &Patch::Merge(&status)).await?;
    }
    Ok(Action::await_change())
}

/// A stable hash of a pod template, as the `pod-template-hash` label.
pub fn template_hash(template: &serde_json::Value) -> String {
    let mut hasher = DefaultHasher::new();
    template.to_string().hash(&mut hasher);
    format!("{:x}", hasher.finish() & 0xff_ffff_ffff)
}

/// `maxSurge`/`maxUnavailable` of `desired` replicas: an absolute number or a percentage, rounded
/// up (`round_up`) or down.
fn scaled(value: Option<&IntOrString>, default: &str, desired: i32, round_up: bool) -> i32 {
    match value {
        Some(IntOrString::Int(n)) => *n,
        other => {
            let text = match other {
                Some(IntOrString::String(s)) => s.as_str(),
                _ => default,
            };
            let percent: f64 = text.trim_end_matches('%').parse().unwrap_or(25.0);
            let exact = percent * f64::from(desired) / 100.0;
            (if round_up { exact.ceil() } else { exact.floor() }) as i32
        }
    }
}

async fn reconcile_deployment(deploy: Arc<Deployment>, client: Arc<kube::Client>) -> Result<Action, kube::Error> {
    let namespace = deploy.namespace().unwrap_or_default();
    let name = deploy.name_any();
    let sets: Api<ReplicaSet> = Api::namespaced((*client).clone(), &namespace);
    let deployments: Api<Deployment> = Api::namespaced((*client).clone(), &namespace);
    let spec = deploy.spec.clone().unwrap_or_default();
    let desired = spec.replicas.unwrap_or(1);
    let template = serde_json::to_value(&spec.template).unwrap_or_default();
    let hash = template_hash(&template);
    let all: Vec<ReplicaSet> =
        sets.list(&ListParams::default()).await?.items.into_iter().filter(|rs| owned_by(rs, deploy.as_ref())).collect();
    let replicas = |rs: &ReplicaSet| rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    let available = |rs: &ReplicaSet| rs.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0);
    let new_name = format!("{name}-{hash}");
    let new = all.iter().find(|rs| rs.name_any() == new_name).cloned();
    let old: Vec<&ReplicaSet> = all.iter().filter(|rs| rs.name_any() != new_name).collect();
    let old_total: i32 = old.iter().map(|rs| replicas(rs)).sum();
    let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
    let rolling = spec.strategy.as_ref().and_then(|s| s.rolling_update.clone()).unwrap_or_default();
    let surge = scaled(rolling.max_surge.as_ref(), "25%", desired, true);
    let unavailable =
        scaled(rolling.max_unavailable.as_ref(), "25%", desired, false).max(if surge == 0 { 1 } else { 0 });

    // Scale the new ReplicaSet up within the surge.
    let new_replicas = new.as_ref().map(replicas).unwrap_or(0);
    let room = if recreate {
        if old_total > 0 || old.iter().any(|rs| available(rs) > 0) { 0 } else { desired }
    } else {
        (desired + surge - old_total - new_replicas).max(0)
    };
    let target = (new_replicas + room).min(desired).max(if old.is_empty() { desired } else { 0 });
    let mut labels: BTreeMap<String, String> =
        spec.template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
    labels.insert(TEMPLATE_HASH_LABEL.into(), hash.clone());
    match &new {
        None => {
            let mut tpl = template.clone();
            tpl["metadata"]["labels"] = json!(labels);
            let mut selector = serde_json::to_value(&spec.selector).unwrap_or_default();
            selector["matchLabels"][TEMPLATE_HASH_LABEL] = json!(hash);
            let rs = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": new_name, "labels": labels, "ownerReferences": [deploy.controller_owner_ref(&())]},
                "spec": {"replicas": target, "selector": selector, "template": tpl}});
            sets.create(
                &PostParams { field_manager: Some(DEPLOYMENT_MANAGER.into()), ..Default::default() },
                &serde_json::from_value(rs).expect("a ReplicaSet"),
            )
            .await?;
        }
        Some(_) if target != new_replicas => {
            sets.patch(&new_name, &params(DEPLOYMENT_MANAGER), &Patch::Merge(json!({"spec": {"replicas": target}})))
                .await?;
        }
        Some(_) => {}
    }
    // Scale old ReplicaSets down while enough pods stay available. As the real controller does,
    // count pods by the ReplicaSets' specs, not their (possibly stale) statuses: an old
    // ReplicaSet's status may still show pods its spec has already given up.
    let new_available = new.as_ref().map(available).unwrap_or(0);
    let old_available: i32 = old.iter().map(|rs| available(rs)).sum();
    let new_unavailable = (target - new_available).max(0);
    let mut can_remove =
        if recreate { old_total } else { (old_total + target - (desired - unavailable) - new_unavailable).max(0) };
    let mut oldest = old.clone();
    oldest.sort_by_key(|rs| rs.metadata.creation_timestamp.clone());
    for rs in oldest {
        let current = replicas(rs);
        if current == 0 || can_remove == 0 {
            continue;
        }
        let down = current.min(can_remove);
        can_remove -= down;
        sets.patch(
            &rs.name_any(),
            &params(DEPLOYMENT_MANAGER),
            &Patch::Merge(json!({"spec": {"replicas": current - down}})),
        )
        .await?;
    }

    // Status.
    let total_available = new_available + old_available;
    let updated = new.as_ref().and_then(|rs| rs.status.as_ref()).map(|s| s.replicas).unwrap_or(0);
    let ready_total: i32 = all.iter().map(|rs| rs.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0)).sum();
    let replicas_total: i32 = all.iter().map(|rs| rs.status.as_ref().map(|s| s.replicas).unwrap_or(0)).sum();
    let complete = new_available >= desired && old_total == 0;
    let is_available = total_available >= desired - unavailable;
    let condition = |type_: &str, ok: bool, reason: &str, message: String| {
        let previous = deploy
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == type_));
        let status = if ok { "True" } else { "False" };
        let since = match previous {
            Some(p) if p.status == status => serde_json::to_value(&p.last_transition_time).unwrap_or(json!(now())),
            _ => json!(now()),
        };
        json!({"type": type_, "status": status, "reason": reason, "message": message,
               "lastUpdateTime": since, "lastTransitionTime": since})
    };
    let conditions = vec![
        condition(
            "Available",
            is_available,
            if is_available { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" },
            format!("{total_available} of {desired} replicas available"),
        ),
        condition(
            "Progressing",
            true,
            if complete { "NewReplicaSetAvailable" } else { "ReplicaSetUpdated" },
            format!(
                "ReplicaSet \"{new_name}\" {}",
                if complete { "has successfully progressed" } else { "is progressing" }
            ),
        ),
    ];
    let status = json!({
        "observedGeneration": deploy.metadata.generation, "replicas": replicas_total, "updatedReplicas": updated,
        "readyReplicas": ready_total, "availableReplicas": total_available,
        "unavailableReplicas": (desired - total_available).max(0), "conditions": conditions,
    });
    let old_status = serde_json::to_value(&deploy.status).unwrap_or_default();
    let differs = [
        "observedGeneration",
        "replicas",
        "updatedReplicas",
        "readyReplicas",
        "availableReplicas",
        "unavailableReplicas",
    ]
    .iter()
    .any(|k| old_status.get(*k).and_then(|v| v.as_i64()).unwrap_or(0) != status[*k].as_i64().unwrap_or(0))
        || conditions.iter().any(|c| {
            !old_status["conditions"].as_array().is_some_and(|cs| {
                cs.iter().any(|o| o["type"] == c["type"] && o["status"] == c["status"] && o["reason"] == c["reason"])
            })
        });
    if differs {
        deployments.patch_status(&name, &params(DEPLOYMENT_MANAGER), &Patch::Merge(json!({"status": status}))).await?;
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn surge_rounds_up_and_unavailability_down() {
        assert_eq!(scaled(None, "25%", 3, true), 1);
        assert_eq!(scaled(None, "25%", 3, false), 0);
        assert_eq!(scaled(Some(&IntOrString::String("50%".into())), "25%", 5, true), 3);
        assert_eq!(scaled(Some(&IntOrString::Int(2)), "25%", 5, false), 2);
        assert_eq!(template_hash(&json!({"a": 1})), template_hash(&json!({"a": 1})));
        assert_ne!(template_hash(&json!({"a": 1})), template_hash(&json!({"a": 2})));
    }
}
