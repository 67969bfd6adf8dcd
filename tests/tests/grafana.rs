//! The Grafana dashboard (`charts/distillery/dashboards/distillery.json`) queries only metrics that
//! exist: every metric name in every PromQL expression (panel targets and template-variable
//! queries) is one a real `distillery-server` exports after answering a request, or one the
//! operator's real registry exports after recording a sample of each family — matched against the
//! text format itself, so a histogram is queried by `_bucket`/`_sum`/`_count` and a counter by
//! `_total`. And the chart ships the dashboard as the ConfigMap the Grafana chart's sidecar loads.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use distillery_tests::chart::{lint, render};
use distillery_tests::repo_root;
use distillery_tests::server_process::ServerProcess;
use serde_json::{Value, json};

fn dashboard_text() -> String {
    std::fs::read_to_string(repo_root().join("charts/distillery/dashboards/distillery.json")).unwrap()
}

fn dashboard() -> Value {
    serde_json::from_str(&dashboard_text()).expect("the dashboard is JSON")
}

/// Every panel, those inside rows included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            walk(&p["panels"], out);
        }
    }
    let mut out = vec![];
    walk(&dashboard["panels"], &mut out);
    out
}

/// (where, PromQL) of every query: each panel target's `expr`, and the metric selector of each
/// `label_values(selector, label)` template variable.
fn queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = vec![];
    for p in panels(dashboard) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap_or_else(|| panic!("panel {:?}: a target without expr", p["title"]));
            out.push((format!("panel {:?}", p["title"].as_str().unwrap_or("")), expr.to_string()));
        }
    }
    for v in dashboard["templating"]["list"].as_array().into_iter().flatten().filter(|v| v["type"] == "query") {
        let query = v["query"]["query"].as_str().or(v["query"].as_str()).unwrap_or_default().trim();
        let inner = query.strip_prefix("label_values(").and_then(|q| q.strip_suffix(')'));
        let inner =
            inner.unwrap_or_else(|| panic!("variable {}: only label_values(…) is understood: {query}", v["name"]));
        // label_values(label) names no metric; label_values(selector, label) names the selector's.
        if let Some((selector, _label)) = inner.rsplit_once(',') {
            out.push((format!("variable {}", v["name"]), selector.to_string()));
        }
    }
    out
}

/// PromQL words that are never metric names: keywords and aggregation operators (which, unlike
/// functions, need not be followed by a parenthesis: `sum by (x) (…)`).
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
    "atan2",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// Modifiers whose parenthesised list holds label names.
const LABEL_LISTS: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];

/// The metric names a PromQL expression selects: identifiers that are not functions (followed by
/// `(`), keywords, aggregation operators, label names (in `{…}` or after by/without/on/ignoring/
/// group_left/group_right), template variables (`$x`, `${x}`), durations or numbers, nor inside
/// string literals or comments.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let skip_ws = |mut j: usize| {
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        j
    };
    // Index just past the bracket that closes the one at `open` (strings inside skipped).
    let close = |open: usize, left: char, right: char| {
        let mut depth = 0;
        let mut j = open;
        while j < chars.len() {
            match chars[j] {
                '"' | '\'' | '`' => j = end_of_string(&chars, j) - 1,
                c if c == left => depth += 1,
                c if c == right => {
                    depth -= 1;
                    if depth == 0 {
                        return j + 1;
                    }
                }
                _ => {}
            }
            j += 1;
        }
        panic!("unbalanced {left} in {expr}")
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = end_of_string(&chars, i);
        } else if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '{' {
            i = close(i, '{', '}');
        } else if c == '[' {
            i = close(i, '[', ']');
        } else if c == '$' {
            i += 1;
            if i < chars.len() && chars[i] == '{' {
                i = close(i, '{', '}');
            } else {
                while i < chars.len() && is_ident(chars[i]) {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            // 0.99, 1e3, 0x1f, 5m, 1h30m.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.' || chars[i] == '_') {
                i += 1;
            }
        } else if is_ident_start(c) {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = skip_ws(i);
            let followed_by_paren = chars.get(next) == Some(&'(');
            if LABEL_LISTS.contains(&word.as_str()) {
                if followed_by_paren {
                    i = close(next, '(', ')');
                }
            } else if !followed_by_paren && !KEYWORDS.contains(&word.as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Index just past the string literal opening at `open` (backslash escapes in "…" and '…').
fn end_of_string(chars: &[char], open: usize) -> usize {
    let quote = chars[open];
    let mut j = open + 1;
    while j < chars.len() && chars[j] != quote {
        if chars[j] == '\\' && quote != '`' {
            j += 1;
        }
        j += 1;
    }
    j + 1
}

/// Sample names of a Prometheus text exposition (what a query can select), and the families its
/// `# TYPE` lines declare.
fn exposition(text: &str) -> (BTreeSet<String>, BTreeMap<String, String>) {
    let mut samples = BTreeSet::new();
    let mut families = BTreeMap::new();
    for line in text.lines() {
        if let Some(declared) = line.strip_prefix("# TYPE ") {
            let mut words = declared.split_whitespace();
            if let (Some(name), Some(kind)) = (words.next(), words.next()) {
                families.insert(name.to_string(), kind.to_string());
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            samples.insert(line[..end].to_string());
        }
    }
    (samples, families)
}

/// The operator's exposition, from its real registry with one sample recorded in every family.
fn operator_exposition() -> String {
    use distillery_operator::metrics::{Metrics, OutcomeLabels, VerdictLabels};
    let m = Metrics::new();
    m.reconcile_started("modeldeployment");
    m.reconcile_finished("modeldeployment", Duration::from_millis(12));
    m.reconcile_error("modeldeployment", "kube-api");
    m.leader.set(1);
    m.rollouts.get_or_create(&OutcomeLabels { outcome: "promoted".into() }).inc();
    m.analysis_runs.get_or_create(&VerdictLabels { verdict: "Passed".into() }).inc();
    m.time_to_safety.observe(12.0);
    m.set_canary_weight("shop", "sentiment", 20);
    m.encode()
}

#[test]
fn operator_exposition_has_a_sample_in_every_family() {
    // Else a family added to the operator without a sample here would be missed below.
    let text = operator_exposition();
    let (samples, families) = exposition(&text);
    for family in families.keys() {
        assert!(
            samples.iter().any(|s| s == family || s.strip_prefix(family.as_str()).is_some_and(|r| r.starts_with('_'))),
            "operator family {family} has no sample: record one in operator_exposition()\n{text}"
        );
    }
}

/// The server's exposition after it answered one inference request.
fn server_exposition() -> String {
    let server = ServerProcess::start(&distillery_tests::shared_small_artifact(), &[]);
    let infer =
        json!({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a warm, funny film"]}]});
    let reply = server.infer("small", &infer);
    let (status, body) = (reply.status, reply.body);
    assert_eq!(status, 200, "{body}");
    let reply = server.get("/metrics");
    let (status, metrics) = (reply.status, reply.body);
    assert_eq!(status, 200, "{metrics}");
    metrics
}

/// Metric names the dashboard queries that `exported` lacks, with where each is queried.
fn missing(queries: &[(String, String)], exported: &BTreeSet<String>, operator: bool) -> Vec<String> {
    let mut out = vec![];
    for (place, expr) in queries {
        for name in metric_names(expr) {
            if name.starts_with("distillery_operator_") == operator && !exported.contains(&name) {
                out.push(format!("{place}: {name}"));
            }
        }
    }
    out
}

#[test]
fn every_metric_the_dashboard_queries_is_exported() {
    let dashboard = dashboard();
    let queries = queries(&dashboard);
    let used: BTreeSet<String> = queries.iter().flat_map(|(_, e)| metric_names(e)).collect();
    // What the brief asks the dashboard to show is there.
    for wanted in [
        "distillery_server_requests_total",
        "distillery_server_request_duration_seconds_bucket",
        "distillery_server_predictions_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "distillery_server_peak_resident_memory_bytes",
        "process_start_time_seconds",
        "distillery_operator_canary_weight",
        "distillery_operator_analysis_runs_total",
        "distillery_operator_reconciles_total",
        "distillery_operator_reconcile_errors_total",
    ] {
        assert!(used.contains(wanted), "no query uses {wanted}: {used:?}");
    }

    let (operator, _) = exposition(&operator_exposition());
    let (server, _) = exposition(&server_exposition());
    let mut unknown = missing(&queries, &operator, true);
    unknown.extend(missing(&queries, &server, false));
    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics nobody exports:\n  {}\nthe server exports {server:?}\nthe operator exports {operator:?}",
        unknown.join("\n  ")
    );
}

#[test]
fn the_dashboard_is_a_grafana_dashboard_with_the_variables_its_queries_use() {
    let d = dashboard();
    assert!(d["schemaVersion"].as_u64().unwrap() >= 39, "schemaVersion {}", d["schemaVersion"]);
    assert_eq!(d["uid"], "distillery");
    let vars = d["templating"]["list"].as_array().unwrap();
    let var = |name: &str| vars.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("no ${name} variable"));
    assert_eq!(
        (var("datasource")["type"].clone(), var("datasource")["query"].clone()),
        (json!("datasource"), json!("prometheus"))
    );
    for name in ["namespace", "modeldeployment"] {
        assert_eq!(var(name)["type"], "query");
        assert_eq!(var(name)["datasource"]["uid"], "${datasource}");
        // "All" must match a present label only: `.*` would also take every pod without one
        // (process_* series of anything else in the namespace).
        assert_eq!(var(name)["allValue"], ".+");
    }
    let mut ids = BTreeSet::new();
    for p in panels(&d) {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "panel id {} twice", p["id"]);
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "panel {:?}", p["title"]);
        assert!(!p["targets"].as_array().unwrap().is_empty(), "panel {:?} has no query", p["title"]);
        for t in p["targets"].as_array().unwrap() {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "panel {:?}", p["title"]);
            let expr = t["expr"].as_str().unwrap();
            // Server panels filter by the variables (the operator's only by what it labels).
            if expr.contains("distillery_server_") || expr.contains("process_") {
                assert!(expr.contains("$namespace") && expr.contains("$modeldeployment"), "{expr}");
            }
        }
    }
}

#[test]
fn metric_names_skip_functions_keywords_labels_variables_durations_numbers_and_strings() {
    let names = |e: &str| metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"histogram_quantile(0.99, sum by (track, le) (rate(a_bucket{namespace=~"$namespace", code!~"2.."}[$__rate_interval])))"#
        ),
        ["a_bucket"]
    );
    assert_eq!(
        names(
            "sum without (pod) (rate(b_total[5m] offset 1h)) / on (track) group_left (class) c\n# d is a comment\n> bool 1e3"
        ),
        ["b_total", "c"]
    );
    assert_eq!(
        names(r#"label_replace(e, "dst", "$1", "src", "(f.*)") and ${x} or time() - g:rule unless topk(3, h)"#),
        ["e", "g:rule", "h"]
    );
    assert_eq!(names(r#"max_over_time(i[1h:5m]) * .5 + count_values("v", j) + sum(k) by (l)"#), ["i", "j", "k"]);
}

#[test]
fn the_chart_ships_the_dashboard_for_the_grafana_sidecar() {
    let configmaps = |objects: &[Value]| -> Vec<Value> {
        objects
            .iter()
            .filter(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == "distillery-grafana-dashboard")
            .cloned()
            .collect()
    };
    assert!(configmaps(&render(&json!({})).unwrap()).is_empty(), "off by default");

    let enabled = json!({"grafana": {"dashboard": {"enabled": true}}});
    let report = lint(&enabled).unwrap();
    assert!(report.errors.is_empty() && report.warnings.is_empty(), "{report:?}");
    let cm = configmaps(&render(&enabled).unwrap());
    assert_eq!(cm.len(), 1);
    let cm = &cm[0];
    assert_eq!(cm["metadata"]["namespace"], "distillery-system");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1", "the sidecar's default label");
    let carried: Value = serde_json::from_str(cm["data"]["distillery.json"].as_str().unwrap()).unwrap();
    assert_eq!(carried, dashboard(), "the ConfigMap carries dashboards/distillery.json");
    assert_eq!(cm["data"]["distillery.json"].as_str().unwrap().trim(), dashboard_text().trim());

    let custom = render(&json!({"grafana": {"dashboard": {
        "enabled": true, "namespace": "monitoring", "label": "grafana.example/dashboard", "labelValue": "distillery",
        "annotations": {"grafana_folder": "Distillery"}}}}))
    .unwrap();
    let cm = &configmaps(&custom)[0];
    assert_eq!(cm["metadata"]["namespace"], "monitoring");
    assert_eq!(cm["metadata"]["labels"]["grafana.example/dashboard"], "distillery");
    assert_eq!(cm["metadata"]["labels"].get("grafana_dashboard"), None);
    assert_eq!(cm["metadata"]["annotations"]["grafana_folder"], "Distillery");

    let err = render(&json!({"grafana": {"dashboard": {"enabled": true, "labelValue": "not a value"}}})).unwrap_err();
    assert!(err.to_string().contains("labelValue"), "{err}");
}

#[test]
fn the_pod_monitor_gives_server_series_the_labels_the_dashboard_groups_by() {
    let values = json!({"metrics": {"podMonitor": {"enabled": true, "labels": {"release": "prom"}}}});
    let report = lint(&values).unwrap();
    assert!(report.errors.is_empty() && report.warnings.is_empty(), "{report:?}");
    let objects = render(&values).unwrap();
    let monitors: Vec<&Value> = objects.iter().filter(|o| o["kind"] == "PodMonitor").collect();
    assert_eq!(monitors.len(), 1);
    let spec = &monitors[0]["spec"];
    assert_eq!(monitors[0]["metadata"]["labels"]["release"], "prom");
    assert_eq!(spec["namespaceSelector"]["any"], true);
    assert_eq!(spec["selector"]["matchLabels"]["app.kubernetes.io/name"], "distillery-server");
    let endpoint = &spec["podMetricsEndpoints"][0];
    assert_eq!((endpoint["port"].clone(), endpoint["path"].clone()), (json!("http"), json!("/metrics")));
    let relabeled: BTreeMap<String, String> = endpoint["relabelings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["targetLabel"].as_str().unwrap().into(), r["sourceLabels"][0].as_str().unwrap().into()))
        .collect();
    assert_eq!(relabeled["track"], "__meta_kubernetes_pod_label_distillery_dev_track");
    assert_eq!(relabeled["modeldeployment"], "__meta_kubernetes_pod_label_distillery_dev_modeldeployment");
    assert!(render(&json!({})).unwrap().iter().all(|o| o["kind"] != "PodMonitor"), "off by default");
}
