//! The causal-LM teacher's tokenizer, rebuilt with the `tokenizers` crate from SmolLM2's GGUF
//! metadata, gives llama.cpp's ids on real text: State of the Union speeches (years, figures,
//! punctuation, blank lines) and the cases where a GPT-2-style pre-tokenizer without smollm's
//! digit split would differ. The reference is llama.cpp itself (PyPI's xllamacpp, installed by
//! scripts/setup-lm-reference.sh; scripts/test.sh exports DISTILLERY_LM_REFERENCE_PYTHON).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use distillery_worker::teacher::gguf;
use distillery_worker::teacher::tokenizer_from_gguf::build_tokenizer;

fn teacher_gguf() -> PathBuf {
    let path =
        distillery_crds::cache::cache_dir().join("teacher/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.is_file(), "{} missing: run scripts/setup.sh", path.display());
    path
}

/// llama.cpp's ids for `texts`.
fn reference_ids(texts: &[String]) -> Vec<Vec<u32>> {
    let python = std::env::var("DISTILLERY_LM_REFERENCE_PYTHON").expect(
        "DISTILLERY_LM_REFERENCE_PYTHON is not set: run the tests through scripts/test.sh, or eval \"$(scripts/setup-lm-reference.sh)\"",
    );
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/lm-reference/tokenize.py");
    let mut child = Command::new(python)
        .arg(script)
        .arg(teacher_gguf())
        .arg("--json")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the reference python runs");
    child.stdin.take().unwrap().write_all(serde_json::to_string(texts).unwrap().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "reference tokenizer failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("a JSON list of id lists")
}

#[test]
fn rebuilt_tokenizer_matches_llama_cpp_on_speeches_and_digit_edge_cases() {
    let (content, _) = gguf::read_header(&teacher_gguf()).unwrap();
    let meta = gguf::tokenizer_metadata(&content).unwrap();
    let tokenizer = build_tokenizer(&meta).unwrap();
    assert_eq!(tokenizer.get_vocab_size(true), 49_152);

    let sotu = distillery_crds::cache::cache_dir().join("data/sotu");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&sotu)
        .unwrap_or_else(|e| panic!("{}: {e}: run scripts/setup.sh", sotu.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 233, "the SOTU corpus has 233 speeches");
    // Every 12th speech (20, 1790–2021) and the edge cases: whitespace runs before numbers,
    // non-ASCII numerals, a year range, a decimal, a thousands separator.
    let mut texts: Vec<String> = files.iter().step_by(12).map(|f| std::fs::read_to_string(f).unwrap()).collect();
    texts.extend(
        ["  1", "\n\n1. The", "\t\t3", " ½ of it", "1790–1791", "$3.14 and 1,000,000", "Hello world", "don't  stop\n"]
            .map(String::from),
    );
    let expected = reference_ids(&texts);
    let mut tokens = 0;
    for (text, want) in texts.iter().zip(&expected) {
        let got = tokenizer.encode(text.as_str(), false).unwrap().get_ids().to_vec();
        if &got != want {
            let at = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
            panic!(
                "ids differ at token {at} of {:?}…: ours {:?}, llama.cpp {:?}",
                text.chars().take(60).collect::<String>(),
                &got[at.saturating_sub(2)..(at + 5).min(got.len())],
                &want[at.saturating_sub(2)..(at + 5).min(want.len())]
            );
        }
        // Byte-level BPE loses nothing: decoding gives the text back.
        assert_eq!(&tokenizer.decode(&got, false).unwrap(), text);
        tokens += got.len();
    }
    assert!(tokens > 100_000, "compared {tokens} tokens");
}
