//! What the causal-LM tests share: the worker binary, the tiny causal-LM job and its corpus.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The `distillery-worker` binary of this build.
pub fn worker() -> Command {
    Command::new(env!("CARGO_BIN_EXE_distillery-worker"))
}

/// `tests/fixtures/tiny-lm.yaml`: the real SmolLM2 teacher, a 2-layer student, 40 steps; its
/// corpus is `${DISTILLERY_TEST_CORPUS}` ([`corpus`]).
pub fn tiny_lm() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-lm.yaml")
}

/// Eight documents: the first 1,500 characters of eight State of the Union speeches.
pub fn corpus(dir: &Path) {
    let sotu = distillery_crds::cache::cache_dir().join("data/sotu");
    let mut speeches: Vec<PathBuf> = std::fs::read_dir(&sotu)
        .unwrap_or_else(|e| panic!("{}: {e}: run scripts/setup.sh", sotu.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    speeches.sort();
    for speech in speeches.iter().step_by(29).take(8) {
        let text = std::fs::read_to_string(speech).unwrap();
        let cut: String = text.chars().take(1500).collect();
        std::fs::write(dir.join(speech.file_name().unwrap()), cut).unwrap();
    }
}
