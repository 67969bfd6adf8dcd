//! Writes the CRD YAML of all three resources into the Helm chart, or with `--check` fails when
//! the committed files differ from what the types generate.
//!
//! ```text
//! cargo run -p distillery-crds --bin crdgen              # regenerate charts/distillery/crds/
//! cargo run -p distillery-crds --bin crdgen -- --check   # exit 1 if stale
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let check = std::env::args().any(|a| a == "--check");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../charts/distillery/crds");
    let mut stale = vec![];
    for crd in distillery_crds::crds() {
        let path = dir.join(distillery_crds::crd_file_name(&crd));
        let yaml = match distillery_crds::crd_yaml(&crd) {
            Ok(y) => y,
            Err(e) => {
                eprintln!("crdgen: cannot serialise {}: {e}", crd.spec.names.kind);
                return ExitCode::FAILURE;
            }
        };
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if current == yaml {
            continue;
        }
        if check {
            stale.push(path.display().to_string());
        } else if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, yaml)) {
            eprintln!("crdgen: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        } else {
            println!("wrote {}", path.display());
        }
    }
    if stale.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("crdgen: stale CRD YAML (run `cargo run -p distillery-crds --bin crdgen`):");
        for s in stale {
            eprintln!("  {s}");
        }
        ExitCode::FAILURE
    }
}
