//! Where the embedded default keeps what `scripts/setup.sh` fetched (the ONNX Runtime library, the
//! teacher, the dataset): one definition for the worker, which expands `${DISTILLERY_CACHE}` in
//! local specs, and for the tests.

use std::path::PathBuf;

/// `$DISTILLERY_CACHE`, else `$XDG_CACHE_HOME/distillery`, else `~/.cache/distillery` — the same
/// rule as scripts/setup.sh.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DISTILLERY_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache"));
    base.join("distillery")
}
