//! Training data: labelled text from CSV or JSON Lines (optionally gzip- or bzip2-compressed),
//! unlabelled transfer texts, and the held-out split — by group when asked, so that no group
//! (e.g. no movie) is on both sides.
//!
//! Every error names the file, the row (1-based line number, the CSV header being line 1) and the
//! field, so a user can fix the data without guessing.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use distillery_crds::common::{Compression, DataFormat};
use distillery_crds::distillation::{DatasetSpec, TransferSet, ValidationSplit};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// One labelled example.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    /// The input text.
    pub text: String,
    /// Index into [`Dataset::labels`].
    pub label: usize,
    /// The group it belongs to (empty when the spec names no group field).
    pub group: String,
    /// 1-based line number in the file, for messages.
    pub row: usize,
}

/// A labelled dataset read from one file.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// The file it came from.
    pub path: PathBuf,
    /// Label names in class-index order.
    pub labels: Vec<String>,
    /// The examples, in file order, duplicates removed.
    pub examples: Vec<Example>,
    /// Rows dropped because their label is in `skipLabels`.
    pub skipped: usize,
    /// Rows dropped because their text repeats an earlier row's (kept once, so a text cannot land
    /// on both sides of the split).
    pub duplicates: usize,
}

/// Why data could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be opened.
    #[error("{path}: cannot open: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A row could not be parsed (bad CSV quoting, invalid JSON, broken compression).
    #[error("{path}, row {row}: {message}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        row: usize,
        /// What is wrong.
        message: String,
    },
    /// A field named by the spec is absent.
    #[error("{path}, row {row}: no field {field:?} ({hint})")]
    MissingField {
        /// The file.
        path: PathBuf,
        /// 1-based line (1 = the CSV header).
        row: usize,
        /// The field.
        field: String,
        /// What fields there are, or which spec field names it.
        hint: String,
    },
    /// The text field is empty.
    #[error("{path}, row {row}: field {field:?} is empty")]
    EmptyText {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        row: usize,
        /// The field.
        field: String,
    },
    /// A label not in `spec.dataset.labels` nor `skipLabels`.
    #[error(
        "{path}, row {row}: field {field:?} has label {value:?}, which is not one of {known:?} (add it to spec.dataset.labels, or to skipLabels to drop such rows)"
    )]
    UnknownLabel {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        row: usize,
        /// The label field.
        field: String,
        /// The value found.
        value: String,
        /// The labels allowed.
        known: Vec<String>,
    },
    /// Fewer than two classes, or no examples at all.
    #[error("{path}: {message}")]
    TooLittle {
        /// The file.
        path: PathBuf,
        /// What is missing.
        message: String,
    },
}

/// Opens `path`, decompressing by `compression` (`auto`: by the file name).
fn open(path: &Path, compression: Compression) -> Result<Box<dyn BufRead>, DataError> {
    let file = File::open(path).map_err(|source| DataError::Open { path: path.into(), source })?;
    let name = path.to_string_lossy();
    let compression = match compression {
        Compression::Auto if name.ends_with(".gz") => Compression::Gzip,
        Compression::Auto if name.ends_with(".bz2") => Compression::Bz2,
        Compression::Auto => Compression::None,
        other => other,
    };
    let reader: Box<dyn Read> = match compression {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(file))),
        Compression::Bz2 => Box::new(bzip2::read::MultiBzDecoder::new(BufReader::new(file))),
        _ => Box::new(file),
    };
    Ok(Box::new(BufReader::with_capacity(1 << 16, reader)))
}

/// One raw row: (1-based line, text, label, group).
type RawRow = (usize, Option<String>, Option<String>, Option<String>);

/// Reads the rows of a CSV or JSONL file, extracting the named fields.
fn read_rows(
    path: &Path,
    format: DataFormat,
    compression: Compression,
    fields: [&str; 3],
) -> Result<Vec<RawRow>, DataError> {
    let reader = open(path, compression)?;
    let malformed = |row: usize, message: String| DataError::Malformed { path: path.into(), row, message };
    let mut rows = vec![];
    match format {
        DataFormat::Csv => {
            let mut csv = csv::ReaderBuilder::new().has_headers(true).flexible(false).from_reader(reader);
            let headers = csv.headers().map_err(|e| malformed(1, e.to_string()))?.clone();
            let mut index = [None; 3];
            for (i, field) in fields.iter().enumerate() {
                if field.is_empty() {
                    continue;
                }
                index[i] = Some(headers.iter().position(|h| h == *field).ok_or_else(|| DataError::MissingField {
                    path: path.into(),
                    row: 1,
                    field: field.to_string(),
                    hint: format!("the header has {:?}", headers.iter().collect::<Vec<_>>()),
                })?);
            }
            for record in csv.records() {
                let record = record.map_err(|e| {
                    let row = e.position().map_or(0, |p| p.line() as usize);
                    malformed(row, e.to_string())
                })?;
                let row = record.position().map_or(0, |p| p.line() as usize);
                let get = |i: Option<usize>| i.and_then(|i| record.get(i)).map(str::to_string);
                rows.push((row, get(index[0]), get(index[1]), get(index[2])));
            }
        }
        DataFormat::Jsonl => {
            for (i, line) in reader.lines().enumerate() {
                let row = i + 1;
                let line = line.map_err(|e| malformed(row, e.to_string()))?;
                if line.trim().is_empty() {
                    continue;
                }
                let value: serde_json::Value =
                    serde_json::from_str(&line).map_err(|e| malformed(row, format!("invalid JSON: {e}")))?;
                let get = |field: &str| -> Result<Option<String>, DataError> {
                    if field.is_empty() {
                        return Ok(None);
                    }
                    match value.get(field) {
                        None | Some(serde_json::Value::Null) => Ok(None),
                        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                        Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                            Ok(Some(v.to_string()))
                        }
                        Some(other) => Err(malformed(row, format!("field {field:?} must be a string, found {other}"))),
                    }
                };
                rows.push((row, get(fields[0])?, get(fields[1])?, get(fields[2])?));
            }
        }
        DataFormat::Text => {
            for (i, line) in reader.lines().enumerate() {
                let line = line.map_err(|e| malformed(i + 1, e.to_string()))?;
                rows.push((i + 1, Some(line), None, None));
            }
        }
        // A directory of documents, read by `data::corpus` (causal-lm only: the API server
        // refuses it elsewhere).
        DataFormat::Documents => {
            return Err(malformed(0, "format documents (a causal-lm corpus) is not a table of rows".into()));
        }
    }
    Ok(rows)
}

/// Reads the labelled dataset a DistillationJob names. `path` is the resolved `spec.uri`.
pub fn read_dataset(path: &Path, spec: &DatasetSpec) -> Result<Dataset, DataError> {
    let rows = read_rows(
        path,
        spec.format,
        spec.compression,
        [spec.text_field.as_str(), spec.label_field.as_str(), spec.group_field.as_str()],
    )?;
    let skip: HashSet<&str> = spec.skip_labels.iter().map(String::as_str).collect();
    let mut kept = vec![];
    let mut skipped = 0;
    for (row, text, label, group) in rows {
        let label = label.ok_or_else(|| DataError::MissingField {
            path: path.into(),
            row,
            field: spec.label_field.clone(),
            hint: "spec.dataset.labelField".into(),
        })?;
        if skip.contains(label.as_str()) {
            skipped += 1;
            continue;
        }
        let text = text.ok_or_else(|| DataError::MissingField {
            path: path.into(),
            row,
            field: spec.text_field.clone(),
            hint: "spec.dataset.textField".into(),
        })?;
        if text.trim().is_empty() {
            return Err(DataError::EmptyText { path: path.into(), row, field: spec.text_field.clone() });
        }
        kept.push((row, text, label, group.unwrap_or_default()));
    }
    let labels: Vec<String> = match &spec.labels {
        Some(labels) => labels.clone(),
        None => kept.iter().map(|(_, _, l, _)| l.clone()).collect::<BTreeSet<_>>().into_iter().collect(),
    };
    let index: HashMap<&str, usize> = labels.iter().enumerate().map(|(i, l)| (l.as_str(), i)).collect();
    let mut seen = HashSet::new();
    let mut examples = Vec::with_capacity(kept.len());
    let mut duplicates = 0;
    for (row, text, label, group) in kept {
        let Some(&label) = index.get(label.as_str()) else {
            return Err(DataError::UnknownLabel {
                path: path.into(),
                row,
                field: spec.label_field.clone(),
                value: label,
                known: labels.clone(),
            });
        };
        if !seen.insert(text.clone()) {
            duplicates += 1;
            continue;
        }
        examples.push(Example { text, label, group, row });
    }
    if labels.len() < 2 {
        return Err(DataError::TooLittle {
            path: path.into(),
            message: format!("classification needs at least two labels, found {labels:?}"),
        });
    }
    if examples.is_empty() {
        return Err(DataError::TooLittle { path: path.into(), message: "no examples left to train on".into() });
    }
    Ok(Dataset { path: path.into(), labels, examples, skipped, duplicates })
}

/// Reads unlabelled transfer texts (empty lines skipped).
pub fn read_transfer(path: &Path, spec: &TransferSet) -> Result<Vec<String>, DataError> {
    let rows = read_rows(path, spec.format, spec.compression, [spec.text_field.as_str(), "", ""])?;
    Ok(rows.into_iter().filter_map(|(_, text, _, _)| text).filter(|t| !t.trim().is_empty()).collect())
}

/// Indices of the training and held-out examples.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    /// Training examples (indices into `Dataset::examples`), in file order.
    pub train: Vec<usize>,
    /// Held-out examples, in file order.
    pub validation: Vec<usize>,
}

/// Splits `examples` by `split`: a seeded shuffle of the groups (with `byGroup`) or of the
/// examples, the first `fraction` of which is held out. Deterministic for a given seed.
pub fn split(examples: &[Example], split: &ValidationSplit) -> Split {
    let mut rng = ChaCha8Rng::seed_from_u64(split.seed);
    let held_out: Vec<bool> = if split.by_group {
        // Examples without a group are each their own group.
        let key = |e: &Example| if e.group.is_empty() { format!("\u{0}row{}", e.row) } else { e.group.clone() };
        let mut groups: Vec<String> = examples.iter().map(key).collect::<BTreeSet<_>>().into_iter().collect();
        groups.shuffle(&mut rng);
        let n = ((groups.len() as f64) * split.fraction).round() as usize;
        let chosen: HashSet<&String> = groups[..n.min(groups.len())].iter().collect();
        examples.iter().map(|e| chosen.contains(&key(e))).collect()
    } else {
        let mut order: Vec<usize> = (0..examples.len()).collect();
        order.shuffle(&mut rng);
        let n = ((examples.len() as f64) * split.fraction).round() as usize;
        let mut held = vec![false; examples.len()];
        order[..n.min(order.len())].iter().for_each(|&i| held[i] = true);
        held
    };
    let (validation, train): (Vec<usize>, Vec<usize>) = (0..examples.len()).partition(|&i| held_out[i]);
    Split { train, validation }
}

/// Keeps at most `max` examples in all, taking from each side in proportion (at least one each),
/// in order; for smoke tests.
pub fn limit(split: &Split, max: usize) -> Split {
    let total = split.train.len() + split.validation.len();
    if total <= max {
        return split.clone();
    }
    let validation = ((split.validation.len() * max) / total).max(1).min(max.saturating_sub(1));
    let train = max - validation;
    Split {
        train: split.train.iter().copied().take(train).collect(),
        validation: split.validation.iter().copied().take(validation).collect(),
    }
}

/// The order in which training examples `0..n` are visited in `epoch` (0-based): a shuffle seeded
/// by `(seed, epoch)` alone, so a resumed run can recompute exactly where it stopped.
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch);
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng);
    order
}

/// The batches of `epoch`: examples `0..lengths.len()` in [`epoch_order`], cut into windows of
/// `batch_size × window` examples, each window sorted by length and cut into batches, and the
/// batches shuffled. Batches then hold sequences of similar length, so padding to the longest
/// wastes little, while every example is still seen once per epoch in a seeded order.
pub fn bucketed_batches(lengths: &[usize], batch_size: usize, window: usize, seed: u64, epoch: u64) -> Vec<Vec<usize>> {
    let order = epoch_order(lengths.len(), seed, epoch);
    let mut batches: Vec<Vec<usize>> = vec![];
    for chunk in order.chunks(batch_size * window.max(1)) {
        let mut chunk = chunk.to_vec();
        chunk.sort_by_key(|&i| lengths[i]);
        batches.extend(chunk.chunks(batch_size).map(<[usize]>::to_vec));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x0ba7_c4e5);
    rng.set_stream(epoch);
    batches.shuffle(&mut rng);
    batches
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn spec(uri_path: &Path, format: DataFormat) -> DatasetSpec {
        serde_json::from_value(serde_json::json!({
            "uri": format!("file://{}", uri_path.display()),
            "format": format,
            "textField": "text",
            "labelField": "label",
            "groupField": "group",
        }))
        .unwrap()
    }

    const CSV: &str = "text,label,group\n\"a film, \"\"great\"\"\",pos,m1\nboring,neg,m2\n\"two\nlines\",pos,m2\nboring,neg,m3\nplot summary,plot,m1\n";

    #[test]
    fn reads_csv_with_quotes_multiline_skips_and_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.csv");
        std::fs::write(&path, CSV).unwrap();
        let mut s = spec(&path, DataFormat::Csv);
        s.skip_labels = vec!["plot".into()];
        let ds = read_dataset(&path, &s).unwrap();
        assert_eq!(ds.labels, ["neg", "pos"], "discovered labels are sorted");
        let texts: Vec<&str> = ds.examples.iter().map(|e| e.text.as_str()).collect();
        assert_eq!(texts, ["a film, \"great\"", "boring", "two\nlines"]);
        assert_eq!(ds.examples[0].label, 1);
        assert_eq!(ds.examples[1].group, "m2");
        assert_eq!(ds.examples[2].row, 4, "line numbers count the header as line 1");
        assert_eq!(ds.duplicates, 1);
        assert_eq!(ds.skipped, 1);
    }

    #[test]
    fn reads_gzip_and_bzip2_by_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let gz = dir.path().join("d.csv.gz");
        let mut enc = flate2::write::GzEncoder::new(File::create(&gz).unwrap(), flate2::Compression::default());
        enc.write_all(CSV.as_bytes()).unwrap();
        enc.finish().unwrap();
        let bz = dir.path().join("d.csv.bz2");
        let mut enc = bzip2::write::BzEncoder::new(File::create(&bz).unwrap(), bzip2::Compression::default());
        enc.write_all(CSV.as_bytes()).unwrap();
        enc.finish().unwrap();
        for path in [gz, bz] {
            let mut s = spec(&path, DataFormat::Csv);
            s.skip_labels = vec!["plot".into()];
            assert_eq!(read_dataset(&path, &s).unwrap().examples.len(), 3, "{}", path.display());
        }
    }

    #[test]
    fn reads_jsonl_with_numeric_labels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        std::fs::write(&path, "{\"text\":\"good\",\"label\":1}\n\n{\"text\":\"bad\",\"label\":0,\"group\":\"g\"}\n")
            .unwrap();
        let ds = read_dataset(&path, &spec(&path, DataFormat::Jsonl)).unwrap();
        assert_eq!(ds.labels, ["0", "1"]);
        assert_eq!(ds.examples[0].label, 1);
        assert_eq!(ds.examples[1].row, 3);
    }

    #[test]
    fn errors_name_file_row_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.csv");
        let cases: [(&str, &[&str]); 4] = [
            ("text,label,group\nfine,pos,m\n   ,neg,m\n", &["d.csv", "row 3", "\"text\"", "empty"]),
            ("text,label,group\nfine,pos,m\nhmm,maybe,m\n", &["row 3", "\"label\"", "\"maybe\"", "skipLabels"]),
            ("txt,label,group\nfine,pos,m\n", &["row 1", "no field \"text\"", "txt"]),
            ("text,label,group\nfine,pos,m\nshort,row\n", &["row 3"]),
        ];
        for (content, expected) in cases {
            std::fs::write(&path, content).unwrap();
            let mut s = spec(&path, DataFormat::Csv);
            s.labels = Some(vec!["neg".into(), "pos".into()]);
            let err = read_dataset(&path, &s).unwrap_err().to_string();
            for e in expected {
                assert!(err.contains(e), "{err:?} lacks {e:?}");
            }
        }
        std::fs::write(&path, "{\"text\": 3\n").unwrap();
        let err = read_dataset(&path, &spec(&path, DataFormat::Jsonl)).unwrap_err().to_string();
        assert!(err.contains("row 1") && err.contains("invalid JSON"), "{err}");
        let missing = dir.path().join("absent.csv");
        let err = read_dataset(&missing, &spec(&missing, DataFormat::Csv)).unwrap_err().to_string();
        assert!(err.contains("absent.csv") && err.contains("cannot open"), "{err}");
    }

    fn examples(groups: usize, per_group: usize) -> Vec<Example> {
        (0..groups * per_group)
            .map(|i| Example { text: format!("t{i}"), label: i % 2, group: format!("g{}", i / per_group), row: i + 2 })
            .collect()
    }

    #[test]
    fn group_split_keeps_groups_on_one_side_and_is_deterministic() {
        let ex = examples(50, 7);
        let s = ValidationSplit { fraction: 0.2, by_group: true, seed: 0 };
        let a = split(&ex, &s);
        assert_eq!(a, split(&ex, &s), "same seed, same split");
        assert_eq!(a.validation.len(), 10 * 7, "20% of 50 groups");
        assert_eq!(a.train.len() + a.validation.len(), ex.len());
        let train_groups: HashSet<&str> = a.train.iter().map(|&i| ex[i].group.as_str()).collect();
        assert!(a.validation.iter().all(|&i| !train_groups.contains(ex[i].group.as_str())));
        let b = split(&ex, &ValidationSplit { seed: 1, ..s });
        assert_ne!(a.validation, b.validation, "another seed, another split");
    }

    #[test]
    fn row_split_and_limit() {
        let ex = examples(10, 10);
        let s = split(&ex, &ValidationSplit { fraction: 0.25, by_group: false, seed: 3 });
        assert_eq!(s.validation.len(), 25);
        let l = limit(&s, 20);
        assert_eq!(l.train.len() + l.validation.len(), 20);
        assert_eq!(l.validation.len(), 5);
        assert!(l.train.iter().all(|i| s.train.contains(i)));
    }

    #[test]
    fn epoch_order_is_a_seeded_permutation() {
        let a = epoch_order(100, 7, 0);
        assert_eq!(a, epoch_order(100, 7, 0));
        assert_ne!(a, epoch_order(100, 7, 1), "each epoch is shuffled anew");
        assert_ne!(a, epoch_order(100, 8, 0));
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn bucketed_batches_cover_every_example_once_with_little_padding() {
        let lengths: Vec<usize> = (0..1000).map(|i| 5 + (i * 37) % 60).collect();
        let batches = bucketed_batches(&lengths, 32, 20, 0, 0);
        assert_eq!(batches, bucketed_batches(&lengths, 32, 20, 0, 0), "deterministic");
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..1000).collect::<Vec<_>>());
        let padded = |bs: &[Vec<usize>]| -> usize {
            bs.iter().map(|b| b.len() * b.iter().map(|&i| lengths[i]).max().unwrap()).sum()
        };
        let plain: Vec<Vec<usize>> = epoch_order(1000, 0, 0).chunks(32).map(<[usize]>::to_vec).collect();
        let real: usize = lengths.iter().sum();
        assert!(padded(&batches) < real * 11 / 10, "bucketed padding {} vs {real} real tokens", padded(&batches));
        assert!(padded(&plain) > padded(&batches) * 13 / 10, "plain batches pad much more");
    }

    #[test]
    fn transfer_texts_skip_blank_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.txt");
        std::fs::write(&path, "one\n\n  \ntwo\n").unwrap();
        let spec: TransferSet = serde_json::from_value(serde_json::json!({"uri": "file:///t.txt"})).unwrap();
        assert_eq!(read_transfer(&path, &spec).unwrap(), ["one", "two"]);
    }
}
