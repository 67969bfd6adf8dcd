//! A causal-LM DistillationJob end to end on the real SmolLM2 teacher (from the setup cache) and a
//! few real documents: the distilled and the corpus-only student are trained and evaluated on the
//! held-out documents, the artifact is a HuggingFace-layout Llama model with a manifest, and
//! `generate` continues a prompt from it.

mod common;

use common::{corpus, tiny_lm, worker};

#[test]
fn a_tiny_causal_lm_job_distils_compares_and_generates() {
    let tmp = tempfile::tempdir().unwrap();
    let (docs, out) = (tmp.path().join("docs"), tmp.path().join("artifact"));
    std::fs::create_dir(&docs).unwrap();
    corpus(&docs);
    let fixture = tiny_lm();
    let run = worker()
        .env("DISTILLERY_TEST_CORPUS", &docs)
        .args(["distill", "-f"])
        .arg(&fixture)
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "stdout:\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&run.stderr));
    for row in [
        "teacher (30 layers",
        "student (2 layers, distilled)",
        "student on the corpus alone",
        "model.onnx (ONNX Runtime)",
        "closed",
    ] {
        assert!(stdout.contains(row), "{row} missing from\n{stdout}");
    }

    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("distillery.json")).unwrap()).unwrap();
    let metric = |k: &str| m["metrics"][k].as_f64().unwrap_or_else(|| panic!("metric {k} missing: {}", m["metrics"]));
    // A 135M teacher on real prose is far better than a 2-layer student after 40 steps, and both
    // students are far better than a uniform guess over 49,152 tokens.
    assert!(metric("teacherPerplexity") > 1.0 && metric("teacherPerplexity") < metric("studentPerplexity"));
    for k in ["studentPerplexity", "corpusOnlyPerplexity"] {
        assert!(metric(k) < 49_152.0 / 4.0, "{k} {}", metric(k));
    }
    assert!(metric("studentKlToTeacher") >= 0.0 && metric("corpusOnlyKlToTeacher") >= 0.0);
    assert!(metric("gapClosed").is_finite());
    assert_eq!(metric("trainDocuments") + metric("heldOutDocuments"), 8.0);
    assert_eq!(m["training"]["student"]["steps"], 40);
    assert_eq!(m["training"]["corpus-only"]["steps"], 40);
    for file in ["model.safetensors", "config.json", "tokenizer.json", "job.json"] {
        let bytes = std::fs::read(out.join(file)).unwrap();
        assert_eq!(m["files"][file]["sha256"], distillery_worker::store::sha256(&bytes), "{file}");
    }
    // The student is exported to ONNX and matches candle at every held-out position; it is
    // recorded but not served (the server runs classifiers only).
    let onnx = std::fs::read(out.join("model.onnx")).unwrap();
    assert_eq!(m["files"]["model.onnx"]["sha256"], distillery_worker::store::sha256(&onnx));
    let fp32 = &m["variants"]["fp32"];
    assert!(fp32["maxAbsLogitDiff"].as_f64().unwrap() <= 1e-4, "{fp32}");
    assert_eq!(fp32["labelAgreement"].as_f64(), Some(1.0), "{fp32}");
    assert!(m.get("servedVariant").is_none() && m["servedVariantReason"].is_string(), "{m}");
    // int8 (the fixture's quantization.mode) went through the gate: held-out perplexity and top-1
    // in ONNX Runtime recorded for both, the file written only when it passed, and the table says
    // which.
    let int8 = &m["variants"]["int8"];
    assert!(fp32["perplexity"].as_f64().is_some_and(f64::is_finite), "{fp32}");
    assert!(int8["perplexity"].as_f64().is_some_and(f64::is_finite), "{int8}");
    assert!(int8["gateReason"].is_string() && int8["maxAbsLogitDiff"].as_f64().is_some(), "{int8}");
    let passed = int8["passedGate"].as_bool().unwrap();
    assert_eq!(out.join("model.int8.onnx").exists(), passed, "{int8}");
    if passed {
        let bytes = std::fs::read(out.join("model.int8.onnx")).unwrap();
        assert_eq!(m["files"]["model.int8.onnx"]["sha256"], distillery_worker::store::sha256(&bytes));
        assert_eq!(int8["sha256"], m["files"]["model.int8.onnx"]["sha256"]);
        assert!(stdout.contains("model.int8.onnx (ONNX Runtime): ") && stdout.contains("× fp32's speed)"), "{stdout}");
    } else {
        assert!(m["files"].get("model.int8.onnx").is_none(), "{m}");
        let line = format!("int8: refused — {}", int8["gateReason"].as_str().unwrap());
        assert!(stdout.contains(&line), "{line} missing from\n{stdout}");
    }
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "LlamaForCausalLM");
    assert_eq!((config["num_hidden_layers"].as_u64(), config["vocab_size"].as_u64()), (Some(2), Some(49_152)));
    assert!(!out.join("checkpoints").exists());

    // Greedy generation is deterministic; sampling at a temperature follows its seed.
    let generate = |extra: &[&str]| {
        let o = worker()
            .args(["generate", "-a"])
            .arg(&out)
            .args(["--prompt", "Fellow citizens", "--max-tokens", "8"])
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let greedy = generate(&[]);
    assert!(greedy.starts_with("Fellow citizens") && greedy.trim().len() > "Fellow citizens".len(), "{greedy}");
    assert_eq!(greedy, generate(&[]));
    let sampled = generate(&["--temperature", "1.5", "--seed", "3"]);
    assert_eq!(sampled, generate(&["--temperature", "1.5", "--seed", "3"]));

    // `export -a` and `quantize -a` rebuild classifiers' ONNX files; on a causal-lm artifact they
    // say that its distill run builds them, and change nothing.
    let before = std::fs::read(out.join("distillery.json")).unwrap();
    for command in ["export", "quantize"] {
        let o = worker().args([command, "-a"]).arg(&out).output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && stderr.contains("a causal-lm artifact") && stderr.contains("distill"),
            "{stderr}"
        );
    }
    assert_eq!(std::fs::read(out.join("distillery.json")).unwrap(), before);

    // A classification artifact is not a causal LM: generate says so.
    let not_lm = tmp.path().join("not-lm");
    std::fs::create_dir(&not_lm).unwrap();
    std::fs::write(not_lm.join("config.json"), r#"{"model_type": "bert", "hidden_size": 8}"#).unwrap();
    let o = worker().args(["generate", "-a"]).arg(&not_lm).args(["--prompt", "x"]).output().unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("causal-lm artifact"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
