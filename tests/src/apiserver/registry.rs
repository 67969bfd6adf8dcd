//! The resource types the server knows: the built-in kinds the operator and the simulated cluster
//! use, and every served version of every registered CustomResourceDefinition. Discovery documents
//! are generated from here. The Gateway API kinds (Gateway, HTTPRoute) are served from the start,
//! from their (trimmed) CRDs as a cluster with the Gateway API installed serves them, without the
//! CRD objects; `ApiServer::remove_gateway_api` takes them away.

use std::sync::Arc;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{Value, json};

/// One resource type at one version.
#[derive(Clone, Debug)]
pub struct ResourceType {
    /// API group; empty for the core group.
    pub group: String,
    /// Version, e.g. `v1`.
    pub version: String,
    /// Plural, lower case: the URL segment.
    pub plural: String,
    /// Singular, lower case.
    pub singular: String,
    /// Kind, e.g. `Job`.
    pub kind: String,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Has a `/status` subresource: the main endpoint ignores `status`, `/status` changes only it.
    pub status_subresource: bool,
    /// The server maintains `metadata.generation` (bumped when anything but metadata and status
    /// changes).
    pub generation: bool,
    /// Short names (`kubectl get dj`).
    pub short_names: Vec<String>,
    /// Categories (`kubectl get distillery`).
    pub categories: Vec<String>,
    /// The CRD that defines it; `None` for built-in kinds.
    pub crd: Option<Arc<CustomResourceDefinition>>,
}

impl ResourceType {
    /// `group/version`, or `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.clone() } else { format!("{}/{}", self.group, self.version) }
    }

    /// `plural.group` (`jobs.batch`), or `plural` for the core group: how errors name it.
    pub fn group_resource(&self) -> String {
        if self.group.is_empty() { self.plural.clone() } else { format!("{}.{}", self.plural, self.group) }
    }

    /// `Kind.group` (`Job.batch`), or `Kind` for the core group.
    pub fn qualified_kind(&self) -> String {
        if self.group.is_empty() { self.kind.clone() } else { format!("{}.{}", self.kind, self.group) }
    }

    /// The key objects of this type are stored under: the same for every version of a type.
    pub fn storage_key(&self) -> String {
        self.group_resource()
    }

    fn builtin(group: &str, version: &str, plural: &str, kind: &str, namespaced: bool) -> Self {
        Self {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
            singular: kind.to_lowercase(),
            kind: kind.into(),
            namespaced,
            status_subresource: false,
            generation: false,
            short_names: vec![],
            categories: vec![],
            crd: None,
        }
    }

    fn with_status(mut self) -> Self {
        self.status_subresource = true;
        self
    }

    fn with_generation(mut self) -> Self {
        self.generation = true;
        self
    }

    fn with_short_names(mut self, names: &[&str]) -> Self {
        self.short_names = names.iter().map(|s| s.to_string()).collect();
        self
    }

    /// The `APIResource` entries of discovery: the resource and its subresources.
    fn discovery(&self) -> Vec<Value> {
        let verbs = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];
        let mut main = json!({
            "name": self.plural, "singularName": self.singular, "namespaced": self.namespaced,
            "kind": self.kind, "verbs": verbs,
        });
        if !self.short_names.is_empty() {
            main["shortNames"] = json!(self.short_names);
        }
        if !self.categories.is_empty() {
            main["categories"] = json!(self.categories);
        }
        let mut entries = vec![main];
        if self.status_subresource {
            entries.push(json!({
                "name": format!("{}/status", self.plural), "singularName": "", "namespaced": self.namespaced,
                "kind": self.kind, "verbs": ["get", "patch", "update"],
            }));
        }
        entries
    }
}

/// Every resource type the server serves.
#[derive(Clone, Debug)]
pub struct Registry {
    types: Vec<ResourceType>,
}

impl Default for Registry {
    fn default() -> Self {
        let core =
            |plural: &str, kind: &str, namespaced: bool| ResourceType::builtin("", "v1", plural, kind, namespaced);
        let mut registry = Self {
            types: vec![
                core("namespaces", "Namespace", false).with_status().with_short_names(&["ns"]),
                core("pods", "Pod", true).with_status().with_short_names(&["po"]),
                core("services", "Service", true).with_status().with_short_names(&["svc"]),
                core("endpoints", "Endpoints", true).with_short_names(&["ep"]),
                core("configmaps", "ConfigMap", true).with_short_names(&["cm"]),
                core("secrets", "Secret", true),
                core("serviceaccounts", "ServiceAccount", true).with_short_names(&["sa"]),
                core("persistentvolumeclaims", "PersistentVolumeClaim", true).with_status().with_short_names(&["pvc"]),
                core("events", "Event", true).with_short_names(&["ev"]),
                ResourceType::builtin("apps", "v1", "deployments", "Deployment", true)
                    .with_status()
                    .with_generation()
                    .with_short_names(&["deploy"]),
                ResourceType::builtin("apps", "v1", "replicasets", "ReplicaSet", true)
                    .with_status()
                    .with_generation()
                    .with_short_names(&["rs"]),
                ResourceType::builtin("batch", "v1", "jobs", "Job", true).with_status().with_generation(),
                ResourceType::builtin("coordination.k8s.io", "v1", "leases", "Lease", true),
                ResourceType::builtin("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", true),
                ResourceType::builtin("rbac.authorization.k8s.io", "v1", "roles", "Role", true),
                ResourceType::builtin("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", false),
                ResourceType::builtin(
                    "rbac.authorization.k8s.io",
                    "v1",
                    "clusterrolebindings",
                    "ClusterRoleBinding",
                    false,
                ),
                ResourceType::builtin("events.k8s.io", "v1", "events", "Event", true).with_short_names(&["ev"]),
                ResourceType::builtin(
                    "apiextensions.k8s.io",
                    "v1",
                    "customresourcedefinitions",
                    "CustomResourceDefinition",
                    false,
                )
                .with_status()
                .with_generation()
                .with_short_names(&["crd", "crds"]),
            ],
        };
        for crd in super::gateway_api_crds() {
            registry.register_crd(crd);
        }
        registry
    }
}

impl Registry {
    /// The type served at `group/version/plural`.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceType> {
        self.types.iter().find(|t| t.group == group && t.version == version && t.plural == plural)
    }

    /// The type of a `apiVersion` + `kind` pair.
    pub fn find_kind(&self, api_version: &str, kind: &str) -> Option<&ResourceType> {
        self.types.iter().find(|t| t.api_version() == api_version && t.kind == kind)
    }

    /// Every type.
    pub fn all(&self) -> &[ResourceType] {
        &self.types
    }

    /// Registers (or re-registers) the served versions of `crd`; returns the storage key.
    pub fn register_crd(&mut self, crd: CustomResourceDefinition) -> String {
        let crd = Arc::new(crd);
        let spec = &crd.spec;
        self.types.retain(|t| !(t.group == spec.group && t.plural == spec.names.plural));
        for version in spec.versions.iter().filter(|v| v.served) {
            self.types.push(ResourceType {
                group: spec.group.clone(),
                version: version.name.clone(),
                plural: spec.names.plural.clone(),
                singular: spec.names.singular.clone().unwrap_or_else(|| spec.names.kind.to_lowercase()),
                kind: spec.names.kind.clone(),
                namespaced: spec.scope == "Namespaced",
                status_subresource: version.subresources.as_ref().is_some_and(|s| s.status.is_some()),
                generation: true,
                short_names: spec.names.short_names.clone().unwrap_or_default(),
                categories: spec.names.categories.clone().unwrap_or_default(),
                crd: Some(crd.clone()),
            });
        }
        format!("{}.{}", spec.names.plural, spec.group)
    }

    /// Removes the types `crd` defined.
    pub fn unregister_crd(&mut self, group: &str, plural: &str) {
        self.types.retain(|t| !(t.group == group && t.plural == plural));
    }

    /// `GET /api`.
    pub fn core_versions(&self, address: &str) -> Value {
        json!({
            "kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": address}],
        })
    }

    /// `GET /apis`.
    pub fn groups(&self) -> Value {
        let mut groups: Vec<(String, Vec<String>)> = vec![];
        for t in self.types.iter().filter(|t| !t.group.is_empty()) {
            match groups.iter_mut().find(|(g, _)| *g == t.group) {
                Some((_, versions)) if !versions.contains(&t.version) => versions.push(t.version.clone()),
                Some(_) => {}
                None => groups.push((t.group.clone(), vec![t.version.clone()])),
            }
        }
        let groups: Vec<Value> = groups
            .into_iter()
            .map(|(name, versions)| {
                let entries: Vec<Value> =
                    versions.iter().map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v})).collect();
                json!({"name": name, "versions": entries, "preferredVersion": entries[0]})
            })
            .collect();
        json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
    }

    /// `GET /apis/{group}` (`group` non-empty), if the group exists.
    pub fn group(&self, group: &str) -> Option<Value> {
        let all = self.groups();
        all["groups"].as_array()?.iter().find(|g| g["name"] == group).map(|g| {
            let mut g = g.clone();
            g["kind"] = json!("APIGroup");
            g["apiVersion"] = json!("v1");
            g
        })
    }

    /// `GET /api/v1` or `GET /apis/{group}/{version}`, if anything is served there.
    pub fn resources(&self, group: &str, version: &str) -> Option<Value> {
        let types: Vec<&ResourceType> =
            self.types.iter().filter(|t| t.group == group && t.version == version).collect();
        if types.is_empty() {
            return None;
        }
        let group_version = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
        let resources: Vec<Value> = types.iter().flat_map(|t| t.discovery()).collect();
        Some(
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}),
        )
    }
}
