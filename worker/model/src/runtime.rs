//! Loading the ONNX Runtime shared library. ort is built with `load-dynamic`: nothing is linked at
//! build time, and the library (`libonnxruntime.so.1.31.1`, fetched by scripts/setup.sh) is
//! loaded here, once, before any other ort call.

use std::path::{Path, PathBuf};

/// The ONNX Runtime version ort 2.0.0-rc.15 is built against.
pub const EXPECTED_ORT_VERSION: &str = "1.31.1";

/// Why ONNX Runtime could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// No path was given and the setup cache has none.
    #[error(
        "no ONNX Runtime library: {0} does not exist; run scripts/setup.sh (it puts libonnxruntime.so.{EXPECTED_ORT_VERSION} there), or pass --ort-library / set ORT_DYLIB_PATH"
    )]
    NotConfigured(PathBuf),
    /// The file does not exist.
    #[error(
        "ONNX Runtime library {0} does not exist (run scripts/setup.sh, or point ORT_DYLIB_PATH at libonnxruntime.so.{EXPECTED_ORT_VERSION})"
    )]
    Missing(PathBuf),
    /// The file exists but could not be loaded, or is a version ort refuses.
    #[error("cannot load ONNX Runtime from {path}: {message} (ort needs ONNX Runtime {EXPECTED_ORT_VERSION})")]
    Load {
        /// The library path.
        path: PathBuf,
        /// ort's message.
        message: String,
    },
}

/// ONNX Runtime, loaded: the process's one environment, which every session is built in.
pub struct Runtime {
    /// The environment (`Session::builder` takes it).
    pub environment: ort::environment::Environment,
    /// ORT's build info string.
    pub info: String,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("info", &self.info).finish_non_exhaustive()
    }
}

/// Where scripts/setup.sh puts the library: `$DISTILLERY_CACHE/onnxruntime/` (by default
/// `~/.cache/distillery/onnxruntime/`).
pub fn setup_library() -> PathBuf {
    distillery_crds::cache::cache_dir().join("onnxruntime").join(format!("libonnxruntime.so.{EXPECTED_ORT_VERSION}"))
}

/// Loads ONNX Runtime from `path` — when `None`, from where scripts/setup.sh puts it — and
/// creates the process's environment (ort allows one). The server and the worker follow this one
/// rule. ort checks the library's version while loading and refuses one it does not support.
pub fn load(path: Option<&Path>) -> Result<Runtime, RuntimeError> {
    let setup = setup_library();
    let path = match path {
        Some(path) => path,
        None if setup.is_file() => setup.as_path(),
        None => return Err(RuntimeError::NotConfigured(setup)),
    };
    if !path.is_file() {
        return Err(RuntimeError::Missing(path.to_path_buf()));
    }
    let load_error = |message: String| RuntimeError::Load { path: path.to_path_buf(), message };
    let builder = ort::init_from(path).map_err(|e| load_error(e.to_string()))?;
    let environment = builder.with_name("distillery").build().map_err(|e| load_error(e.to_string()))?;
    Ok(Runtime { environment, info: ort::info().to_string() })
}
