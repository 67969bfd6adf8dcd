//! The chart's identities in the harness: the operator's ServiceAccount, ClusterRoles, bindings and
//! leader-election Role exactly as `helm install` renders them, applied to the in-process API
//! server with RBAC enforced, and the operator started as that ServiceAccount with the chart's
//! environment — so a cluster test proves the chart grants enough, not just that an
//! administrator can do it.

use std::path::{Path, PathBuf};

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::{Value, json};

use crate::apiserver::ApiServer;

/// The namespace the chart is rendered into (`chart::render`'s release namespace).
pub const RELEASE_NAMESPACE: &str = "distillery-system";

/// The value of the `metadata.name` field reference in [`OperatorIdentity::env`]: each started
/// operator gets its own pod name in its place.
pub const POD_NAME_PLACEHOLDER: &str = "$(POD_NAME)";

/// The kinds of the rendered chart that make up its identities.
const RBAC_KINDS: [&str; 5] = ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"];

/// The operator as the chart runs it.
pub struct OperatorIdentity {
    /// A kubeconfig that authenticates as the chart's operator ServiceAccount.
    pub kubeconfig: PathBuf,
    /// The environment the chart's Deployment gives the operator container (field references
    /// resolved: the release namespace; the pod name is [`POD_NAME_PLACEHOLDER`], which
    /// [`crate::operator::OperatorProcess::start_as`] replaces with a new name for each start, as
    /// a Deployment's replacement pod gets one).
    pub env: Vec<(String, String)>,
    /// `system:serviceaccount:<namespace>:<name>`.
    pub user: String,
    /// Its bearer token, by which the server's request log and fault injection name it.
    pub token: String,
}

/// Renders the chart with default values, lets `edit` change the rendered RBAC objects (a test
/// that removes a rule), applies them to `server`, turns RBAC enforcement on, and writes the
/// operator's kubeconfig into `dir`.
pub async fn install_chart_rbac(
    server: &ApiServer,
    dir: &Path,
    edit: impl FnOnce(&mut Vec<Value>),
) -> Result<OperatorIdentity, String> {
    let rendered = crate::chart::render(&json!({})).map_err(|e| e.to_string())?;
    let mut objects: Vec<Value> =
        rendered.iter().filter(|o| RBAC_KINDS.contains(&o["kind"].as_str().unwrap_or_default())).cloned().collect();
    edit(&mut objects);
    let client = server.client();
    let namespaces: Api<DynamicObject> =
        Api::all_with(client.clone(), &ApiResource::erase::<k8s_openapi::api::core::v1::Namespace>(&()));
    let namespace = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": RELEASE_NAMESPACE}});
    namespaces
        .patch(RELEASE_NAMESPACE, &PatchParams::apply("helm"), &Patch::Apply(&namespace))
        .await
        .map_err(|e| format!("namespace {RELEASE_NAMESPACE}: {e}"))?;
    for object in &objects {
        let (group, version) = match object["apiVersion"].as_str().unwrap_or_default().split_once('/') {
            Some((g, v)) => (g.to_string(), v.to_string()),
            None => (String::new(), object["apiVersion"].as_str().unwrap_or_default().to_string()),
        };
        let kind = object["kind"].as_str().unwrap_or_default();
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(&group, &version, kind));
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        let api: Api<DynamicObject> = if matches!(kind, "ClusterRole" | "ClusterRoleBinding") {
            Api::all_with(client.clone(), &resource)
        } else {
            let ns = object["metadata"]["namespace"].as_str().unwrap_or(RELEASE_NAMESPACE);
            Api::namespaced_with(client.clone(), ns, &resource)
        };
        api.patch(name, &PatchParams::apply("helm"), &Patch::Apply(object))
            .await
            .map_err(|e| format!("{kind} {name}: {e}"))?;
    }
    server.enforce_rbac();

    let deployment =
        rendered.iter().find(|o| o["kind"] == "Deployment").ok_or("the chart renders no operator Deployment")?;
    let pod = &deployment["spec"]["template"]["spec"];
    let account = pod["serviceAccountName"].as_str().ok_or("the operator Deployment names no serviceAccountName")?;
    let kubeconfig = dir.join("operator.kubeconfig");
    server
        .write_service_account_kubeconfig(&kubeconfig, RELEASE_NAMESPACE, account)
        .map_err(|e| format!("{}: {e}", kubeconfig.display()))?;
    let mut env = vec![];
    for e in pod["containers"][0]["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap_or_default().to_string();
        let value = match (&e["value"], e["valueFrom"]["fieldRef"]["fieldPath"].as_str()) {
            (Value::String(v), _) => v.clone(),
            (_, Some("metadata.namespace")) => RELEASE_NAMESPACE.to_string(),
            (_, Some("metadata.name")) => POD_NAME_PLACEHOLDER.to_string(),
            _ => continue,
        };
        env.push((name, value));
    }
    Ok(OperatorIdentity {
        kubeconfig,
        env,
        user: format!("system:serviceaccount:{RELEASE_NAMESPACE}:{account}"),
        token: crate::apiserver::rbac::service_account_token(RELEASE_NAMESPACE, account),
    })
}

/// Removes from the rendered ClusterRole named `role` every rule for `resource`, as a test of
/// least privilege does.
pub fn remove_rule(objects: &mut [Value], role: &str, resource: &str) {
    for object in objects.iter_mut().filter(|o| o["kind"] == "ClusterRole" && o["metadata"]["name"] == role) {
        if let Some(rules) = object["rules"].as_array_mut() {
            rules.retain(|r| !r["resources"].as_array().into_iter().flatten().any(|x| x == resource));
        }
    }
}
