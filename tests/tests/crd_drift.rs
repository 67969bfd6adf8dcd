//! The CRD YAML committed in the chart is exactly what the Rust types generate.

use distillery_tests::repo_root;

#[test]
fn committed_crd_yaml_matches_the_types() {
    let dir = repo_root().join("charts/distillery/crds");
    let crds = distillery_crds::crds();
    assert_eq!(crds.len(), 3);
    for crd in crds {
        let path = dir.join(distillery_crds::crd_file_name(&crd));
        let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let generated = distillery_crds::crd_yaml(&crd).unwrap();
        assert!(
            committed == generated,
            "{} is stale: run `cargo run -p distillery-crds --bin crdgen` and commit the result",
            path.display()
        );
    }
    // Nothing else hides in the directory (a renamed kind would leave an old file behind).
    let files = distillery_tests::yaml_files(&dir);
    assert_eq!(files.len(), 3, "unexpected files in {}: {files:?}", dir.display());
}
