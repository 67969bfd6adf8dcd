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
