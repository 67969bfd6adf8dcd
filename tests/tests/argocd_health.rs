//! The Argo CD health checks in `charts/distillery/argocd/health/` (one `health.lua` per kind, in
//! Argo CD's own layout: `health_test.yaml` and `testdata/` beside each script) give exactly the
//! health and message their `health_test.yaml` expects. They run in Lua 5.1 with only the
//! libraries Argo CD opens for a custom check from `argocd-cm` (base and table: no `string`, no
//! `math`), so a script that would fail under Argo CD fails here. Every phase of every kind has a
//! case (the phases are read from the generated CRD schemas, so a new one cannot slip in
//! untested), no script raises a Lua error on missing or malformed fields, and
//! `charts/distillery/argocd/argocd-cm-health.yaml` holds exactly the three scripts.
//!
//! Regenerate the `argocd-cm` snippet after changing a script:
//! `DISTILLERY_BLESS=1 cargo test -p distillery-tests --test argocd_health`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use distillery_tests::{read_documents, repo_root};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use mlua::{Lua, LuaOptions, StdLib, Table};
use serde::Deserialize;
use serde_json::{Value, json};

/// The statuses Argo CD accepts from a health script; any other is reported as `Unknown`.
const VALID_STATUSES: [&str; 6] = ["Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"];

/// Key prefix of a health check in `argocd-cm`.
const CM_KEY_PREFIX: &str = "resource.customizations.health.";

/// Set to write `argocd-cm-health.yaml` from the scripts instead of checking it.
const BLESS_VAR: &str = "DISTILLERY_BLESS";

/// A `health_test.yaml`, in Argo CD's format.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HealthTests {
    tests: Vec<HealthTest>,
}

/// One case: the object at `input_path` must get `health_status`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HealthTest {
    health_status: HealthStatus,
    input_path: String,
}

/// What a health script returns (Argo CD reads a missing message as empty).
#[derive(Deserialize, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
struct HealthStatus {
    status: String,
    #[serde(default)]
    message: String,
}

fn health_root() -> PathBuf {
    repo_root().join("charts/distillery/argocd/health")
}

/// The folders under `health/`, sorted: one per kind, named `<group>_<Kind>`.
fn check_dirs() -> Vec<PathBuf> {
    let root = health_root();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

fn dir_name(dir: &Path) -> String {
    dir.file_name().unwrap().to_str().unwrap().to_string()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `<group>_<Kind>` name Argo CD keys a CRD's customizations by.
fn argo_name(crd: &CustomResourceDefinition) -> String {
    format!("{}_{}", crd.spec.group, crd.spec.names.kind)
}

fn crd_for(dir: &Path) -> CustomResourceDefinition {
    let name = dir_name(dir);
    distillery_crds::crds()
        .into_iter()
        .find(|crd| argo_name(crd) == name)
        .unwrap_or_else(|| panic!("{}: no CRD is named {name}", dir.display()))
}

/// The values `status.phase` may take, from the CRD's schema.
fn schema_phases(crd: &CustomResourceDefinition) -> BTreeSet<String> {
    let version = crd.spec.versions.iter().find(|v| v.storage).expect("a storage version");
    let schema = serde_json::to_value(&version.schema.as_ref().unwrap().open_api_v3_schema).unwrap();
    let phases: BTreeSet<String> = schema
        .pointer("/properties/status/properties/phase/enum")
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("{}: status.phase has no enum in the schema", crd.spec.names.kind))
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    assert!(!phases.is_empty(), "{}: status.phase enum is empty", crd.spec.names.kind);
    phases
}

fn health_tests(dir: &Path) -> HealthTests {
    let path = dir.join("health_test.yaml");
    serde_norway::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn input(dir: &Path, case: &HealthTest) -> Value {
    let path = dir.join(&case.input_path);
    let mut docs = read_documents(&path).unwrap();
    assert_eq!(docs.len(), 1, "{}: one object expected", path.display());
    docs.remove(0)
}

/// A JSON value as Argo CD hands it to Lua: objects and arrays as tables (arrays 1-based),
/// every number a Lua number, null as nil.
fn to_lua(lua: &Lua, value: &Value) -> mlua::Result<mlua::Value> {
    Ok(match value {
        Value::Null => mlua::Value::Nil,
        Value::Bool(b) => mlua::Value::Boolean(*b),
        Value::Number(n) => mlua::Value::Number(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => mlua::Value::String(lua.create_string(s)?),
        Value::Array(items) => {
            let table = lua.create_table()?;
            for (i, item) in items.iter().enumerate() {
                table.raw_set(i + 1, to_lua(lua, item)?)?;
            }
            mlua::Value::Table(table)
        }
        Value::Object(map) => {
            let table = lua.create_table()?;
            for (key, item) in map {
                table.raw_set(key.as_str(), to_lua(lua, item)?)?;
            }
            mlua::Value::Table(table)
        }
    })
}

/// A Lua 5.1 state with the libraries Argo CD opens for a custom health check: base and table.
/// (Argo CD also opens `package` and a cut-down `os`; the scripts need neither.)
fn argo_lua() -> Lua {
    Lua::new_with(StdLib::TABLE, LuaOptions::new()).unwrap()
}

/// Runs `script` with `object` as the global `obj`, as Argo CD does.
fn run(script: &str, chunk_name: &str, object: &Value) -> Result<HealthStatus, String> {
    let lua = argo_lua();
    let obj = to_lua(&lua, object).map_err(|e| e.to_string())?;
    lua.globals().set("obj", obj).map_err(|e| e.to_string())?;
    let returned: Table = lua.load(script).set_name(chunk_name).eval().map_err(|e| e.to_string())?;
    let status: Option<String> = returned.get("status").map_err(|e| e.to_string())?;
    let message: Option<String> = returned.get("message").map_err(|e| e.to_string())?;
    let status = status.ok_or("the returned table has no status")?;
    if !VALID_STATUSES.contains(&status.as_str()) {
        return Err(format!("invalid health status {status:?} (Argo CD reports Unknown)"));
    }
    Ok(HealthStatus { status, message: message.unwrap_or_default() })
}

/// Every kind has a health check, and every check is for a kind.
#[test]
fn every_kind_has_a_health_check() {
    let expected: BTreeSet<String> = distillery_crds::crds().iter().map(argo_name).collect();
    let found: BTreeSet<String> = check_dirs().iter().map(|d| dir_name(d)).collect();
    assert_eq!(found, expected, "folders under {}", health_root().display());
    for dir in check_dirs() {
        for file in ["health.lua", "health_test.yaml"] {
            assert!(dir.join(file).is_file(), "{} has no {file}", dir.display());
        }
    }
}

/// Each script gives, for each case of its `health_test.yaml`, exactly the status and message
/// expected.
#[test]
fn health_checks_give_what_their_tests_expect() {
    let mut failures = vec![];
    let mut cases = 0;
    for dir in check_dirs() {
        let script = read(&dir.join("health.lua"));
        let name = dir_name(&dir);
        for case in health_tests(&dir).tests {
            cases += 1;
            let object = input(&dir, &case);
            match run(&script, &name, &object) {
                Ok(got) if got == case.health_status => {}
                Ok(got) => {
                    failures.push(format!("{name} {}: expected {:?}, got {got:?}", case.input_path, case.health_status))
                }
                Err(e) => failures.push(format!("{name} {}: {e}", case.input_path)),
            }
        }
    }
    assert!(failures.is_empty(), "{} of {cases} cases failed:\n{}", failures.len(), failures.join("\n"));
    assert!(cases >= 18, "only {cases} cases");
}

/// Every file in a `testdata/` is some case's input, and each kind has the cases every check
/// needs: no status, a generation the operator has not observed, no phase, and every value
/// `status.phase` may take as the CRD schema lists it.
#[test]
fn every_phase_has_a_case() {
    let mut missing = vec![];
    for dir in check_dirs() {
        let name = dir_name(&dir);
        let tests = health_tests(&dir);
        let used: BTreeSet<PathBuf> = tests.tests.iter().map(|c| dir.join(&c.input_path)).collect();
        for file in distillery_tests::yaml_files(&dir.join("testdata")) {
            assert!(used.contains(&file), "{} is not used by {name}/health_test.yaml", file.display());
        }
        let mut covered = BTreeSet::new();
        for case in &tests.tests {
            let object = input(&dir, case);
            let generation = object.pointer("/metadata/generation").and_then(Value::as_i64);
            let observed = object.pointer("/status/observedGeneration").and_then(Value::as_i64);
            let label = match (object.get("status"), observed) {
                (None, _) => "no status".to_string(),
                (Some(_), Some(observed)) if generation.is_none_or(|g| observed >= g) => {
                    match object.pointer("/status/phase") {
                        None => "no phase".to_string(),
                        Some(phase) => format!("phase {}", phase.as_str().unwrap_or("(not a string)")),
                    }
                }
                (Some(_), _) => "unobserved generation".to_string(),
            };
            covered.insert(label);
        }
        let needed = ["no status", "unobserved generation", "no phase"]
            .map(str::to_string)
            .into_iter()
            .chain(schema_phases(&crd_for(&dir)).into_iter().map(|p| format!("phase {p}")));
        for need in needed {
            if !covered.contains(&need) {
                missing.push(format!("{name}: no case with {need}"));
            }
        }
    }
    assert!(missing.is_empty(), "add cases to health_test.yaml:\n{}", missing.join("\n"));
}

/// No script raises a Lua error or returns an invalid status, whatever is missing or of the
/// wrong type: for every phase of its kind, bare and with each status field of the wrong type.
#[test]
fn scripts_survive_missing_and_malformed_fields() {
    let mut failures = vec![];
    for dir in check_dirs() {
        let script = read(&dir.join("health.lua"));
        let name = dir_name(&dir);
        let mut objects = vec![
            Value::Null,
            json!({}),
            json!({"metadata": "x", "status": "x"}),
            json!({"metadata": {"generation": "1"}, "status": {"observedGeneration": "1"}}),
            json!({"status": {"observedGeneration": 1}}),
        ];
        let mut phases: Vec<Value> =
            schema_phases(&crd_for(&dir)).into_iter().map(Value::String).chain([json!("Unheard"), json!(7)]).collect();
        phases.push(Value::Null);
        for phase in phases {
            let base = json!({"metadata": {"generation": 1}, "status": {"observedGeneration": 1, "phase": phase}});
            objects.push(base.clone());
            for wrong in [json!("x"), json!(3), json!([]), json!({}), json!([{"type": 1}, "x", 2])] {
                let mut object = base.clone();
                for field in [
                    "message",
                    "conditions",
                    "progress",
                    "result",
                    "report",
                    "canary",
                    "stable",
                    "currentStep",
                    "rejectedModel",
                ] {
                    object["status"][field] = wrong.clone();
                }
                object["spec"] = json!({"rollout": {"steps": wrong.clone()}});
                objects.push(object);
            }
            let mut nested = base.clone();
            nested["status"]["result"] = json!({"student": "x"});
            nested["status"]["canary"] = json!({"weight": "50", "revision": {}});
            nested["status"]["rejectedModel"] = json!({"modelDigest": 5, "reason": [], "failedChecks": [1, {}]});
            nested["status"]["stable"] = json!({"modelDigest": "not-hex", "readyReplicas": "2"});
            nested["status"]["conditions"] = json!([{"type": "Failed", "status": "False", "message": 1}]);
            objects.push(nested);
        }
        for object in &objects {
            match run(&script, &name, object) {
                Ok(got) if !got.message.is_empty() => {}
                Ok(got) => failures.push(format!("{name}: empty message {got:?} for {object}")),
                Err(e) => failures.push(format!("{name}: {e} for {object}")),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The sandbox is as strict as Argo CD's: a script that used `string` or `math` would fail here.
#[test]
fn the_sandbox_has_no_string_or_math_library() {
    let lua = argo_lua();
    for code in ["return string.sub('abc', 1, 1)", "return ('abc'):sub(1, 1)", "return math.floor(1.5)"] {
        assert!(lua.load(code).eval::<String>().is_err(), "{code} ran in the sandbox");
    }
    assert_eq!(lua.load("return table.concat({'a', 'b'}, '-')").eval::<String>().unwrap(), "a-b");
    for dir in check_dirs() {
        let script = read(&dir.join("health.lua"));
        for library in ["string.", "math.", ":sub(", ":find(", ":format(", ":match(", ":gsub("] {
            assert!(!script.contains(library), "{}/health.lua uses {library}", dir.display());
        }
    }
}

/// `argocd-cm-health.yaml` as generated from the scripts.
fn generated_argocd_cm() -> String {
    let mut out = String::from(
        "# Generated from charts/distillery/argocd/health/*/health.lua by\n\
         # `DISTILLERY_BLESS=1 cargo test -p distillery-tests --test argocd_health`. Do not edit.\n\
         #\n\
         # Argo CD health checks for Distillery's kinds. Merge into the argocd-cm ConfigMap of your Argo CD:\n\
         #   kubectl -n argocd patch configmap argocd-cm --type merge --patch-file argocd-cm-health.yaml\n\
         # or copy the data keys into your own argocd-cm (the Argo CD Helm chart: configs.cm).\n\
         apiVersion: v1\n\
         kind: ConfigMap\n\
         metadata:\n  name: argocd-cm\n\
         data:\n",
    );
    for dir in check_dirs() {
        let path = dir.join("health.lua");
        let script = read(&path);
        // A literal block scalar keeps the text as it is when it ends in exactly one newline and
        // its first line is not indented.
        assert!(
            script.ends_with('\n') && !script.ends_with("\n\n") && !script.starts_with([' ', '\t', '\n']),
            "{}: start without indentation and end with exactly one newline",
            path.display()
        );
        out.push_str(&format!("  {CM_KEY_PREFIX}{}: |\n", dir_name(&dir)));
        for line in script.lines() {
            if !line.is_empty() {
                out.push_str("    ");
                out.push_str(line);
            }
            out.push('\n');
        }
    }
    out
}

/// The committed `argocd-cm` snippet is what the scripts generate, and its data keys hold the
/// scripts byte for byte.
#[test]
fn argocd_cm_snippet_holds_the_scripts() {
    let path = repo_root().join("charts/distillery/argocd/argocd-cm-health.yaml");
    let generated = generated_argocd_cm();
    if std::env::var_os(BLESS_VAR).is_some() {
        std::fs::write(&path, &generated).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is stale or missing: run `{BLESS_VAR}=1 cargo test -p distillery-tests --test argocd_health` and commit the result",
        path.display()
    );
    let docs = read_documents(&path).unwrap();
    assert_eq!(docs.len(), 1);
    let cm = &docs[0];
    assert_eq!((cm["kind"].as_str(), cm["metadata"]["name"].as_str()), (Some("ConfigMap"), Some("argocd-cm")));
    let data = cm["data"].as_object().expect("data");
    let dirs = check_dirs();
    assert_eq!(data.len(), dirs.len(), "one key per health check");
    for dir in dirs {
        let key = format!("{CM_KEY_PREFIX}{}", dir_name(&dir));
        assert_eq!(data[&key].as_str(), Some(read(&dir.join("health.lua")).as_str()), "{key}");
    }
}
