//! The embedded default's dataset, read through the spec in examples/local/distill.yaml, matches
//! the corpus figures measured independently (docs/toolchain.md): 7,403 fresh, 5,405 rotten and
//! 1,097 plot rows; 12,752 unique review snippets. The split by movie keeps every movie on one side.

use std::collections::HashSet;
use std::path::PathBuf;

use distillery_worker::data::{dataset as data, inputs};
use distillery_worker::{spec, store};

/// The local file of the job's dataset.
fn dataset_path(job: &distillery_crds::DistillationJob) -> PathBuf {
    inputs::resolver(job).unwrap().materialize(&job.spec.dataset.uri, store::Kind::File).unwrap()
}

#[test]
fn rotten_tomatoes_reads_and_splits_by_movie() {
    let job = spec::load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/local/distill.yaml")).unwrap();
    let ds_spec = &job.spec.dataset;
    let path = dataset_path(&job);
    assert!(path.is_file(), "{} missing: run scripts/setup.sh", path.display());
    let ds = data::read_dataset(&path, ds_spec).unwrap();
    assert_eq!(ds.labels, ["fresh", "rotten"]);
    assert_eq!(ds.skipped, 1097, "plot rows");
    assert_eq!(ds.examples.len(), 12_752, "unique snippets");
    assert_eq!(ds.examples.len() + ds.duplicates, 7_403 + 5_405);
    let fresh = ds.examples.iter().filter(|e| e.label == 0).count();
    assert!(fresh > 7_300 && fresh <= 7_403, "{fresh}");

    let split = data::split(&ds.examples, &ds_spec.validation_split);
    let train_movies: HashSet<&str> = split.train.iter().map(|&i| ds.examples[i].group.as_str()).collect();
    assert!(split.validation.iter().all(|&i| !train_movies.contains(ds.examples[i].group.as_str())));
    let share = split.validation.len() as f64 / ds.examples.len() as f64;
    assert!((0.15..0.25).contains(&share), "held-out share {share}");
}

#[test]
fn bag_of_words_baseline_reaches_the_published_figure() {
    use distillery_worker::evaluate::baseline::{BagOfWords, BagOfWordsSettings};
    let job = spec::load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/local/distill.yaml")).unwrap();
    let ds_spec = &job.spec.dataset;
    let ds = data::read_dataset(&dataset_path(&job), ds_spec).unwrap();
    let split = data::split(&ds.examples, &ds_spec.validation_split);
    let pick = |idx: &[usize]| -> (Vec<&str>, Vec<usize>) {
        idx.iter().map(|&i| (ds.examples[i].text.as_str(), ds.examples[i].label)).unzip()
    };
    let (train_texts, train_labels) = pick(&split.train);
    let (test_texts, test_labels) = pick(&split.validation);
    let model = BagOfWords::fit(&train_texts, &train_labels, 2, BagOfWordsSettings::default());
    let accuracy = model.accuracy(&test_texts, &test_labels);
    // The figure for unigram TF-IDF + logistic regression on this split protocol: 76.9%.
    assert!((0.745..0.80).contains(&accuracy), "held-out accuracy {accuracy}");
    eprintln!("bag-of-words held-out accuracy {accuracy:.4} (vocabulary {})", model.vocabulary_size());
}

#[test]
fn pruned_vocabulary_tokenizes_the_training_texts_unchanged() {
    use distillery_worker::data::inputs;
    use distillery_worker::student::vocab::Pruning;
    let job = spec::load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/local/distill.yaml")).unwrap();
    let inp = inputs::load(&job).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(inp.teacher_dir.join("tokenizer.json")).unwrap()).unwrap();
    let used = inp.split.train.iter().flat_map(|&i| inp.ids[i].iter().copied());
    let pruning = Pruning::new(&json, used).unwrap();
    let pruned = distillery_worker::data::batch::truncating(
        pruning.tokenizer(&json).unwrap(),
        job.spec.dataset.max_sequence_length as usize,
    )
    .unwrap();
    for &i in &inp.split.train {
        let expect: Vec<u32> = inp.ids[i].iter().map(|&t| pruning.map(t).unwrap()).collect();
        let got = pruned.encode(inp.dataset.examples[i].text.as_str(), true).unwrap().get_ids().to_vec();
        assert_eq!(got, expect, "example {i}: {}", inp.dataset.examples[i].text);
    }
    let unk = pruned.token_to_id("[UNK]").unwrap();
    let held_out_unk = inp
        .split
        .validation
        .iter()
        .map(|&i| pruned.encode(inp.dataset.examples[i].text.as_str(), true).unwrap())
        .filter(|e| e.get_ids().contains(&unk))
        .count();
    eprintln!(
        "pruned vocabulary: {} of 30522 tokens; held-out texts with [UNK]: {held_out_unk} of {}",
        pruning.len(),
        inp.split.validation.len()
    );
    assert!(pruning.len() < 30522 / 2);
}
