//! ONNX Runtime loads from the library scripts/setup.sh fetched, and a bad path gives an error
//! that says what to do instead of a panic.

use std::path::PathBuf;

use distillery_model::runtime::{RuntimeError, load};

#[test]
fn bad_paths_are_explained() {
    let missing = PathBuf::from("/nonexistent/libonnxruntime.so");
    let err = load(Some(&missing)).unwrap_err();
    assert!(matches!(err, RuntimeError::Missing(_)));
    assert!(err.to_string().contains("scripts/setup.sh"), "{err}");
}

#[test]
fn a_file_that_is_not_a_library_fails_cleanly() {
    // ORT is loaded once per process, so this runs in the binary, not in this test process.
    let not_a_library = tempfile_path();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_distillery-server"))
        .args(["--model", "/nonexistent"])
        .env("ORT_DYLIB_PATH", &not_a_library)
        .output()
        .unwrap();
    std::fs::remove_file(&not_a_library).ok();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot load ONNX Runtime from"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn loads_the_pinned_runtime_from_the_setup_cache() {
    let lib = distillery_crds::cache::cache_dir().join("onnxruntime/libonnxruntime.so.1.31.1");
    assert!(lib.is_file(), "{} missing: run scripts/setup.sh", lib.display());
    // ort checks the library's version while loading it and refuses versions it does not support
    // (1.30 is refused), so a successful load is the version check.
    let info = load(Some(&lib)).unwrap().info;
    assert!(info.starts_with("ORT Build Info"), "unexpected ORT build info: {info}");
}

/// `distillery-server --model /nonexistent` with no `ORT_DYLIB_PATH` and `DISTILLERY_CACHE` set to
/// `cache`: its stderr (it always exits 1, for want of a model or of ONNX Runtime).
fn server_without_ort_dylib_path(cache: &std::path::Path) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_distillery-server"))
        .args(["--model", "/nonexistent"])
        .env_remove("ORT_DYLIB_PATH")
        .env("DISTILLERY_CACHE", cache)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn without_a_path_the_server_loads_the_runtime_from_the_setup_cache_like_the_worker() {
    // The real cache: ONNX Runtime loads, and the server gets as far as looking for its model.
    let stderr = server_without_ort_dylib_path(&distillery_crds::cache::cache_dir());
    assert!(stderr.contains("no such artifact directory"), "{stderr}");
    // An empty cache: the error names where the library was looked for and what to run.
    let empty = std::env::temp_dir().join(format!("no-ort-cache-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let stderr = server_without_ort_dylib_path(&empty);
    std::fs::remove_dir_all(&empty).ok();
    let expected = empty.join("onnxruntime/libonnxruntime.so.1.31.1");
    assert!(stderr.contains(&expected.display().to_string()) && stderr.contains("run scripts/setup.sh"), "{stderr}");
}

fn tempfile_path() -> PathBuf {
    let p = std::env::temp_dir().join(format!("not-ort-{}.so", std::process::id()));
    std::fs::write(&p, b"this is not an ELF file").unwrap();
    p
}
