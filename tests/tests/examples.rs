//! Every valid example validates against the generated schema and CEL rules; every invalid one is
//! refused with a message that names the offending field (the `# expect:` lines of each file).

use distillery_crds::validation::{ValidationError, validate_document};
use distillery_tests::{read_documents, repo_root, yaml_files};

#[test]
fn valid_examples_pass_schema_and_cel() {
    let dir = repo_root().join("examples");
    let files = yaml_files(&dir);
    assert!(files.len() >= 2, "expected an example of each kind the operator runs in {}", dir.display());
    let mut kinds = vec![];
    let local = [yaml_files(&dir.join("local")), yaml_files(&dir.join("local/playground"))].concat();
    for file in files.iter().chain(local.iter()) {
        for doc in read_documents(file).unwrap() {
            if let Err(e) = validate_document(&doc) {
                panic!("{} should be valid but: {e}", file.display());
            }
            kinds.push(doc["kind"].as_str().unwrap().to_string());
        }
    }
    for kind in ["DistillationJob", "ModelDeployment", "Benchmark"] {
        assert!(kinds.iter().any(|k| k == kind), "no valid {kind} example");
    }
}

#[test]
fn valid_examples_deserialize_into_the_types() {
    for file in yaml_files(&repo_root().join("examples")) {
        let text = std::fs::read_to_string(&file).unwrap();
        let kind = read_documents(&file).unwrap()[0]["kind"].as_str().unwrap().to_string();
        let result = match kind.as_str() {
            "DistillationJob" => distillery_crds::validation::load::<distillery_crds::DistillationJob>(&text).map(drop),
            "ModelDeployment" => distillery_crds::validation::load::<distillery_crds::ModelDeployment>(&text).map(drop),
            "Benchmark" => distillery_crds::validation::load::<distillery_crds::Benchmark>(&text).map(drop),
            other => panic!("unexpected kind {other}"),
        };
        result.unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    }
}

#[test]
fn invalid_examples_are_refused_naming_the_field() {
    let dir = repo_root().join("examples/invalid");
    let files = yaml_files(&dir);
    assert!(files.len() >= 10, "expected invalid examples in {}", dir.display());
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let expects: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# expect: ")).collect();
        assert!(!expects.is_empty(), "{} has no `# expect:` line", file.display());
        let doc = &read_documents(&file).unwrap()[0];
        match validate_document(doc) {
            Ok(()) => panic!("{} was accepted but must be refused", file.display()),
            Err(e @ ValidationError::Invalid { .. }) => {
                let message = e.to_string();
                for expected in &expects {
                    assert!(
                        message.contains(expected),
                        "{}: error does not mention {expected:?}:\n{message}",
                        file.display()
                    );
                }
            }
            Err(other) => panic!("{}: refused for the wrong reason: {other}", file.display()),
        }
    }
}

/// `teacherOutputs.parallelism` above 1 is accepted where every pod reaches the shards — an
/// `s3://` output or an output claim — and refused otherwise, naming the field and what to set.
#[test]
fn teacher_shards_need_an_output_every_pod_reaches() {
    let mut doc = read_documents(&repo_root().join("examples/local/distill-lm.yaml")).unwrap().remove(0);
    validate_document(&doc).expect("the causal-lm example is valid");
    doc["spec"]["teacherOutputs"]["parallelism"] = serde_json::json!(2);
    let message = validate_document(&doc).expect_err("a local file:// output with two teacher pods").to_string();
    assert!(
        message.contains("spec.teacherOutputs.parallelism")
            && message.contains("s3://")
            && message.contains("output.volumeClaim"),
        "{message}"
    );
    doc["spec"]["output"] = serde_json::json!({"uri": "file:///artifacts/lm", "volumeClaim": "artifacts"});
    validate_document(&doc).unwrap_or_else(|e| panic!("an output claim is shared by every pod: {e}"));
    doc["spec"]["output"] = serde_json::json!({"uri": "s3://artifacts/lm"});
    validate_document(&doc).unwrap_or_else(|e| panic!("an s3:// output is shared by every pod: {e}"));
    doc["spec"]["teacherOutputs"]["parallelism"] = serde_json::json!(65);
    let message = validate_document(&doc).expect_err("65 teacher pods").to_string();
    assert!(message.contains("spec.teacherOutputs.parallelism"), "{message}");
}
