//! Authentication by bearer token and RBAC authorization, as the real API server does them, so
//! that a cluster test proves the chart's roles are enough (and that nothing works without them).
//!
//! - **Who.** A request's bearer token names its user: `serviceaccount:<namespace>:<name>` (what
//!   the simulated kubelet mounts for a pod's `serviceAccountName`, and
//!   [`service_account_token`] hands a test) is the service account's user
//!   `system:serviceaccount:<namespace>:<name>`, in the groups `system:serviceaccounts`,
//!   `system:serviceaccounts:<namespace>` and `system:authenticated`. The harness's own clients
//!   (no token, or `harness`) are cluster administrators (`system:masters`); any other token is a
//!   user of that name. Tokens are not signed: the harness trusts them, as it trusts its tests.
//! - **What.** With enforcement on ([`super::ApiServer::enforce_rbac`]), a resource request is
//!   allowed only when a rule of a Role or ClusterRole bound to the user (ClusterRoleBindings
//!   everywhere, RoleBindings in their namespace) names its API group, resource (with
//!   `/subresource`), verb and — when the rule lists `resourceNames` — the object's name; `*`
//!   matches anything. Discovery and OpenAPI paths are open to every user (`system:discovery`).
//!   Binding a role needs the `bind` verb on it, or every permission it grants (the escalation
//!   check). Anything else is a 403 with the real server's `Status`.

use serde_json::{Value, json};

use super::status::ApiError;
use super::store::State;

/// An authenticated user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// `system:serviceaccount:<namespace>:<name>`, or another user name.
    pub name: String,
    /// The groups it belongs to.
    pub groups: Vec<String>,
}

impl User {
    fn administrator(&self) -> bool {
        self.groups.iter().any(|g| g == "system:masters")
    }
}

/// The bearer token of a service account.
pub fn service_account_token(namespace: &str, name: &str) -> String {
    format!("serviceaccount:{namespace}:{name}")
}

/// The user a request's bearer token names (`None`: no `Authorization` header).
pub fn authenticate(token: Option<&str>) -> User {
    match token {
        None | Some("harness") => {
            User { name: "harness".into(), groups: vec!["system:masters".into(), "system:authenticated".into()] }
        }
        Some(t) => match t.strip_prefix("serviceaccount:").and_then(|rest| rest.split_once(':')) {
            Some((namespace, name)) => User {
                name: format!("system:serviceaccount:{namespace}:{name}"),
                groups: vec![
                    "system:serviceaccounts".into(),
                    format!("system:serviceaccounts:{namespace}"),
                    "system:authenticated".into(),
                ],
            },
            None => User { name: t.to_string(), groups: vec!["system:authenticated".into()] },
        },
    }
}

/// One resource request, as the authorizer sees it.
#[derive(Clone, Debug)]
pub struct Attributes<'a> {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `bind`, ….
    pub verb: &'a str,
    /// API group (`""` for core).
    pub group: &'a str,
    /// Plural of the resource.
    pub resource: &'a str,
    /// `status`, …, if any.
    pub subresource: Option<&'a str>,
    /// The object's name, for requests on one object.
    pub name: Option<&'a str>,
    /// The namespace, for namespaced requests.
    pub namespace: Option<&'a str>,
}

fn contains(list: &Value, wanted: &str) -> bool {
    list.as_array().into_iter().flatten().any(|v| v == "*" || v == wanted)
}

fn rule_allows(rule: &Value, a: &Attributes) -> bool {
    let resource = match a.subresource {
        Some(sub) => format!("{}/{sub}", a.resource),
        None => a.resource.to_string(),
    };
    let resource_ok = rule["resources"].as_array().into_iter().flatten().any(|r| {
        r == "*"
            || *r == Value::String(resource.clone())
            || a.subresource.is_some_and(|sub| *r == Value::String(format!("*/{sub}")))
    });
    let names = rule["resourceNames"].as_array().filter(|n| !n.is_empty());
    contains(&rule["apiGroups"], a.group)
        && resource_ok
        && contains(&rule["verbs"], a.verb)
        && names.is_none_or(|n| a.name.is_some_and(|name| n.iter().any(|v| v == name)))
}

fn bound(subjects: &Value, user: &User) -> bool {
    subjects.as_array().into_iter().flatten().any(|s| match s["kind"].as_str() {
        Some("ServiceAccount") => {
            let namespace = s["namespace"].as_str().unwrap_or_default();
            user.name == format!("system:serviceaccount:{namespace}:{}", s["name"].as_str().unwrap_or_default())
        }
        Some("User") => s["name"] == user.name.as_str(),
        Some("Group") => user.groups.iter().any(|g| s["name"] == g.as_str()),
        _ => false,
    })
}

fn objects(state: &State, plural: &str, namespace: Option<&str>) -> Vec<Value> {
    match state.registry.find("rbac.authorization.k8s.io", "v1", plural) {
        Some(rt) => state.list(rt, namespace),
        None => vec![],
    }
}

/// The rules of the role `role_ref` names, or `None` when it does not exist (a binding to a
/// missing role grants nothing).
fn find_role_rules(state: &State, role_ref: &Value, namespace: &str) -> Option<Vec<Value>> {
    let name = role_ref["name"].as_str().unwrap_or_default();
    let (plural, ns) = match role_ref["kind"].as_str() {
        Some("ClusterRole") => ("clusterroles", None),
        _ => ("roles", Some(namespace)),
    };
    let role = objects(state, plural, ns).into_iter().find(|r| r["metadata"]["name"] == name)?;
    Some(role["rules"].as_array().cloned().unwrap_or_default())
}

fn role_rules(state: &State, role_ref: &Value, namespace: &str) -> Vec<Value> {
    find_role_rules(state, role_ref, namespace).unwrap_or_default()
}

/// Every rule that applies to `user` in `namespace` (cluster-wide rules only when `None`).
fn rules_for(state: &State, user: &User, namespace: Option<&str>) -> Vec<Value> {
    let mut rules = vec![];
    for binding in objects(state, "clusterrolebindings", None) {
        if bound(&binding["subjects"], user) {
            rules.extend(role_rules(state, &binding["roleRef"], ""));
        }
    }
    if let Some(namespace) = namespace {
        for binding in objects(state, "rolebindings", Some(namespace)) {
            if bound(&binding["subjects"], user) {
                rules.extend(role_rules(state, &binding["roleRef"], namespace));
            }
        }
    }
    rules
}

/// Whether `user` may do `a`.
pub fn allowed(state: &State, user: &User, a: &Attributes) -> bool {
    user.administrator() || rules_for(state, user, a.namespace).iter().any(|rule| rule_allows(rule, a))
}

/// The 403 the real server answers, e.g. `jobs.batch "x" is forbidden: User
/// "system:serviceaccount:ns:sa" cannot patch resource "jobs" in API group "batch" in the
/// namespace "default"`.
pub fn forbidden(user: &User, a: &Attributes) -> ApiError {
    let group_resource =
        if a.group.is_empty() { a.resource.to_string() } else { format!("{}.{}", a.resource, a.group) };
    let what = match a.name {
        Some(name) => format!("{group_resource} \"{name}\""),
        None => group_resource,
    };
    let resource = match a.subresource {
        Some(sub) => format!("resource \"{}/{sub}\"", a.resource),
        None => format!("resource \"{}\"", a.resource),
    };
    let scope = match a.namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".into(),
    };
    ApiError {
        code: 403,
        reason: "Forbidden",
        message: format!(
            "{what} is forbidden: User \"{}\" cannot {} {resource} in API group \"{}\" {scope}",
            user.name, a.verb, a.group
        ),
        details: Some(json!({"name": a.name.unwrap_or_default(), "group": a.group, "kind": a.resource})),
    }
}

/// The escalation check on a write of a RoleBinding or ClusterRoleBinding whose `roleRef` is
/// `role_ref`: allowed with `bind` on that role, or when the user holds every permission it
/// grants where the binding applies. Without `bind`, a role that does not exist is refused (its
/// permissions cannot be confirmed), as the real server refuses it.
pub fn may_bind(state: &State, user: &User, role_ref: &Value, binding: &Attributes) -> Result<(), ApiError> {
    if user.administrator() {
        return Ok(());
    }
    let role_name = role_ref["name"].as_str().unwrap_or_default();
    let plural = if role_ref["kind"] == "ClusterRole" { "clusterroles" } else { "roles" };
    let bind = Attributes {
        verb: "bind",
        group: "rbac.authorization.k8s.io",
        resource: plural,
        subresource: None,
        name: Some(role_name),
        namespace: binding.namespace,
    };
    if allowed(state, user, &bind) {
        return Ok(());
    }
    let kind = if binding.resource == "clusterrolebindings" { "clusterrolebindings" } else { "rolebindings" };
    let refused = |why: String| ApiError {
        code: 403,
        reason: "Forbidden",
        message: format!(
            "{kind}.rbac.authorization.k8s.io \"{}\" is forbidden: {why}",
            binding.name.unwrap_or_default()
        ),
        details: Some(
            json!({"name": binding.name.unwrap_or_default(), "group": "rbac.authorization.k8s.io", "kind": kind}),
        ),
    };
    let Some(granted) = find_role_rules(state, role_ref, binding.namespace.unwrap_or_default()) else {
        return Err(refused(format!("{plural}.rbac.authorization.k8s.io \"{role_name}\" not found")));
    };
    let held = rules_for(state, user, binding.namespace);
    let covered = granted.iter().all(|rule| {
        let each = |k: &str| rule[k].as_array().cloned().unwrap_or_default();
        let names = each("resourceNames");
        each("apiGroups").iter().all(|g| {
            each("resources").iter().all(|r| {
                each("verbs").iter().all(|v| {
                    let (resource, subresource) = match r.as_str().unwrap_or_default().split_once('/') {
                        Some((r, s)) => (r.to_string(), Some(s.to_string())),
                        None => (r.as_str().unwrap_or_default().to_string(), None),
                    };
                    let check = |name: Option<&str>| {
                        let a = Attributes {
                            verb: v.as_str().unwrap_or_default(),
                            group: g.as_str().unwrap_or_default(),
                            resource: &resource,
                            subresource: subresource.as_deref(),
                            name,
                            namespace: binding.namespace,
                        };
                        held.iter().any(|h| rule_allows(h, &a))
                    };
                    if names.is_empty() { check(None) } else { names.iter().all(|n| check(n.as_str())) }
                })
            })
        })
    });
    if covered {
        return Ok(());
    }
    Err(refused(format!(
        "user \"{}\" (groups={:?}) is attempting to grant RBAC permissions not currently held: {} {role_name} (and has no bind permission on it)",
        user.name,
        user.groups,
        role_ref["kind"].as_str().unwrap_or_default()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attributes<'a>(verb: &'a str, group: &'a str, resource: &'a str, name: Option<&'a str>) -> Attributes<'a> {
        Attributes { verb, group, resource, subresource: None, name, namespace: Some("default") }
    }

    #[test]
    fn rules_match_groups_resources_subresources_verbs_and_names() {
        let rule = json!({"apiGroups": ["batch"], "resources": ["jobs", "jobs/status"], "verbs": ["get", "patch"]});
        assert!(rule_allows(&rule, &attributes("get", "batch", "jobs", Some("a"))));
        assert!(!rule_allows(&rule, &attributes("delete", "batch", "jobs", Some("a"))));
        assert!(!rule_allows(&rule, &attributes("get", "apps", "jobs", Some("a"))));
        let status = Attributes { subresource: Some("status"), ..attributes("patch", "batch", "jobs", Some("a")) };
        assert!(rule_allows(&rule, &status));
        let finalizers = Attributes { subresource: Some("finalizers"), ..status.clone() };
        assert!(!rule_allows(&rule, &finalizers), "a subresource is its own resource");
        let named = json!({"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "verbs": ["bind"], "resourceNames": ["w"]});
        assert!(rule_allows(&named, &attributes("bind", "rbac.authorization.k8s.io", "clusterroles", Some("w"))));
        assert!(!rule_allows(&named, &attributes("bind", "rbac.authorization.k8s.io", "clusterroles", Some("admin"))));
        let any = json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]});
        assert!(rule_allows(&any, &status));
    }

    #[test]
    fn tokens_name_service_accounts_and_the_harness() {
        let sa = authenticate(Some("serviceaccount:ops:distillery"));
        assert_eq!(sa.name, "system:serviceaccount:ops:distillery");
        assert!(sa.groups.contains(&"system:serviceaccounts:ops".to_string()) && !sa.administrator());
        assert!(authenticate(None).administrator() && authenticate(Some("harness")).administrator());
        assert!(!authenticate(Some("someone")).administrator());
    }

    #[test]
    fn a_denial_reads_as_the_real_servers() {
        let user = authenticate(Some(&service_account_token("ops", "op")));
        let e = forbidden(&user, &attributes("create", "batch", "jobs", None));
        assert_eq!(e.code, 403);
        assert_eq!(
            e.message,
            "jobs.batch is forbidden: User \"system:serviceaccount:ops:op\" cannot create resource \"jobs\" in API group \"batch\" in the namespace \"default\""
        );
    }
}
