//! Rendering and linting the Helm chart with Helm's own Go SDK, through the `helm-python-sdk`
//! package that `scripts/setup.sh` extracts into the cache (no helm binary needed).

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

/// What Helm's linter reported.
#[derive(Debug)]
pub struct LintReport {
    /// Error messages (severity error).
    pub errors: Vec<String>,
    /// Warnings.
    pub warnings: Vec<String>,
}

/// Why Helm could not be driven.
#[derive(Debug, thiserror::Error)]
pub enum HelmError {
    /// The SDK is not in the cache.
    #[error("helm-python-sdk not found in {0}; run scripts/setup.sh")]
    NotInstalled(PathBuf),
    /// The helper failed to run or Helm refused the input.
    #[error("helm: {0}")]
    Failed(String),
}

fn helper(args: &[&str], values: &Value) -> Result<Value, HelmError> {
    let sdk = crate::cache_dir().join("python");
    if !sdk.join("helm_python/lib/libhelm_c.so").exists() {
        return Err(HelmError::NotInstalled(sdk));
    }
    let script = crate::repo_root().join("tests/helm/helm_tool.py");
    let chart = crate::repo_root().join("charts/distillery");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let output = Command::new(python)
        .arg(&script)
        .args(args)
        .arg(&chart)
        .arg(values.to_string())
        .env("PYTHONPATH", &sdk)
        .output()
        .map_err(|e| HelmError::Failed(format!("cannot run python3: {e}")))?;
    if !output.status.success() {
        return Err(HelmError::Failed(String::from_utf8_lossy(&output.stderr).into_owned()));
    }
    serde_json::from_slice(&output.stdout).map_err(|e| HelmError::Failed(format!("helper output: {e}")))
}

/// Lints the chart with the given values (strict: warnings are reported separately).
pub fn lint(values: &Value) -> Result<LintReport, HelmError> {
    let report = helper(&["lint"], values)?;
    let mut errors = vec![];
    let mut warnings = vec![];
    for m in report["messages"].as_array().into_iter().flatten() {
        let text = format!("{}: {}", m["path"].as_str().unwrap_or(""), m["error"].as_str().unwrap_or(""));
        match m["severity"].as_i64() {
            Some(3) => errors.push(text),
            Some(2) => warnings.push(text),
            _ => {}
        }
    }
    errors.extend(report["errors"].as_array().into_iter().flatten().filter_map(|e| e.as_str().map(str::to_string)));
    Ok(LintReport { errors, warnings })
}

/// Renders the chart (release `distillery` in namespace `distillery-system`) and returns every
/// object, CRDs included, parsed.
pub fn render(values: &Value) -> Result<Vec<Value>, HelmError> {
    let rendered = helper(&["render"], values)?;
    let mut objects = vec![];
    let mut files: Vec<(&String, &Value)> = rendered.as_object().into_iter().flatten().collect();
    files.sort_by_key(|(k, _)| k.as_str());
    // NOTES.txt is printed to the user, not applied.
    for (file, text) in files.into_iter().filter(|(f, _)| !f.ends_with("NOTES.txt")) {
        let text = text.as_str().unwrap_or_default();
        let docs = crate::parse_documents(text).map_err(|e| HelmError::Failed(format!("{file} is not YAML: {e}")))?;
        objects.extend(docs);
    }
    Ok(objects)
}
