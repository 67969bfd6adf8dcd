//! A causal-LM job's teacher outputs computed in shards by separate `teacher-outputs` runs (what
//! the pods of an Indexed Job run) and joined by `distill --teacher-outputs`: two shards join into
//! exactly what one pod computes, `distill` trains on them and reports the same teacher figures,
//! and a missing shard, an index past the count or a classification job are refused, as permanent
//! failures (exit 2).

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{corpus, tiny_lm, worker};
use distillery_worker::store::{Resolver, S3Settings};
use distillery_worker::teacher::shards::{ShardOutputs, ShardRecord, ShardedOutputs, read_shard};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `teacher-outputs -f tiny-lm.yaml --shard SHARD --shards SHARDS --output OUT`.
fn teacher_outputs(docs: &Path, out: &Path, shard: usize, shards: usize) -> Output {
    worker()
        .env("DISTILLERY_TEST_CORPUS", docs)
        .args(["teacher-outputs", "-f"])
        .arg(tiny_lm())
        .args(["--shard", &shard.to_string(), "--shards", &shards.to_string(), "--output"])
        .arg(out)
        .output()
        .unwrap()
}

/// `distill -f tiny-lm.yaml --output OUT` with `extra` arguments.
fn distill(docs: &Path, out: &Path, extra: &[&str]) -> Output {
    worker()
        .env("DISTILLERY_TEST_CORPUS", docs)
        .env_remove("DISTILLERY_TEACHER_OUTPUTS")
        .env_remove("DISTILLERY_TEACHER_SHARDS")
        .args(["distill", "-f"])
        .arg(tiny_lm())
        .arg("--output")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

/// Every shard under `dir`, read and appended in shard order, with their records.
fn read_all(dir: &Path, shards: usize, work: &Path) -> (Vec<ShardRecord>, ShardOutputs) {
    let resolver = Resolver::new(S3Settings::default(), work.to_path_buf());
    let source = ShardedOutputs::new(dir.display().to_string(), shards).unwrap();
    let read = |shard| read_shard(&resolver, &source, shard).unwrap();
    let (first, mut all) = read(0);
    let mut records = vec![first];
    for shard in 1..shards {
        let (record, outputs) = read(shard);
        all.append(&outputs);
        records.push(record);
    }
    (records, all)
}

fn relative(a: f64, b: f64) -> f64 {
    (a - b).abs() / a.abs().max(b.abs()).max(f64::MIN_POSITIVE)
}

/// Within 1e-6 (relative above 1), infinities equal.
fn assert_close(what: &str, a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let ok = x == y || (x - y).abs() <= 1e-6 * x.abs().max(y.abs()).max(1.0);
        assert!(ok, "{what}[{i}]: {x} vs {y}");
    }
}

#[test]
fn two_shards_join_into_one_pods_outputs_and_distill_trains_on_them() {
    let tmp = tempfile::tempdir().unwrap();
    let path = |name: &str| tmp.path().join(name);
    let docs = path("docs");
    std::fs::create_dir(&docs).unwrap();
    corpus(&docs);
    let (one, two) = (path("one"), path("two"));

    // An index past the count is refused before any work, as permanent.
    let o = teacher_outputs(&docs, &two, 2, 2);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--shard 2 of --shards 2"), "{}", stderr(&o));
    assert!(!two.exists());

    for (dir, shard, shards) in [(&one, 0, 1), (&two, 0, 2), (&two, 1, 2)] {
        let o = teacher_outputs(&docs, dir, shard, shards);
        assert!(o.status.success(), "shard {shard} of {shards}:\n{}", stderr(&o));
        let progress = format!("shard {shard} of {shards}: training sequences");
        assert!(stderr(&o).contains(&progress), "{progress} missing from\n{}", stderr(&o));
        let record = dir.join(format!("shard-{shard}-of-{shards}.json"));
        assert!(record.is_file() && dir.join(format!("shard-{shard}-of-{shards}.safetensors")).is_file());
    }

    let work = path("work");
    let (records, sharded) = read_all(&two, 2, &work);
    let (_, whole) = read_all(&one, 1, &work);
    // Contiguous ranges cut at a whole scoring batch, covering every sequence.
    for (a, b) in [(&records[0].train, &records[1].train), (&records[0].held_out, &records[1].held_out)] {
        assert_eq!((a.range.start, a.range.end, b.range.end), (0, b.range.start, a.sequences), "{a:?} {b:?}");
        assert!(a.range.end.is_multiple_of(4) || a.range.end == a.sequences, "{a:?}");
        assert_eq!(a.sequences_digest, b.sequences_digest);
    }
    assert!(records[0].train.positions > 0 && records[1].train.positions > 0, "{records:?}");

    // The same outputs as one pod's pass: same tokens, the same logits and remainders.
    for (what, s, w) in [("train", &sharded.train, &whole.train), ("held-out", &sharded.held_out, &whole.held_out)] {
        assert_eq!(s.outputs.positions(), w.outputs.positions(), "{what}");
        assert_eq!(s.outputs.ids, w.outputs.ids, "{what} ids");
        assert_close(&format!("{what} logits"), &s.outputs.logits, &w.outputs.logits);
        assert_close(&format!("{what} remainders"), &s.outputs.remainder, &w.outputs.remainder);
    }
    let (joined, one_pod) = (sharded.held_out.tally.figures(false), whole.held_out.tally.figures(false));
    assert_eq!(joined.tokens, one_pod.tokens);
    assert!(relative(joined.perplexity, one_pod.perplexity) <= 1e-9, "{joined:?} vs {one_pod:?}");
    assert!(relative(joined.top1, one_pod.top1) <= 1e-9, "{joined:?} vs {one_pod:?}");

    // distill joins them instead of running the teacher, and reports the same teacher figures.
    let artifact = path("artifact");
    let o = distill(&docs, &artifact, &["--teacher-outputs", two.to_str().unwrap(), "--teacher-shards", "2"]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "stdout:\n{stdout}\nstderr:\n{}", stderr(&o));
    assert!(stdout.contains("joined 2 shards of teacher outputs"), "{stdout}");
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(artifact.join("distillery.json")).unwrap()).unwrap();
    let teacher = m["metrics"]["teacherPerplexity"].as_f64().unwrap();
    assert!(relative(teacher, one_pod.perplexity) <= 1e-9, "{teacher} vs {}", one_pod.perplexity);
    assert_eq!(m["lineage"]["teacherPreparation"]["outputs"]["shards"], 2, "{}", m["lineage"]);
    assert_eq!(m["training"]["student"]["steps"], 40);

    // A shard missing: named, permanent, nothing written.
    let missing = path("missing");
    std::fs::create_dir(&missing).unwrap();
    for name in ["shard-0-of-2.json", "shard-0-of-2.safetensors", "shard-1-of-2.safetensors"] {
        std::fs::copy(two.join(name), missing.join(name)).unwrap();
    }
    let never = path("never");
    let o = distill(&docs, &never, &["--teacher-outputs", missing.to_str().unwrap(), "--teacher-shards", "2"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    for part in ["shard 1 of 2 is missing", "shard-1-of-2.json"] {
        assert!(stderr(&o).contains(part), "{part} missing from\n{}", stderr(&o));
    }
    assert!(!never.join("distillery.json").exists());

    // Both flags or neither.
    let o = distill(&docs, &never, &["--teacher-outputs", two.to_str().unwrap()]);
    assert!(!o.status.success() && stderr(&o).contains("--teacher-shards"), "{}", stderr(&o));
}

#[test]
fn a_classification_job_has_no_sharded_teacher_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let small = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/small.yaml");
    let o = worker()
        .args(["teacher-outputs", "-f"])
        .arg(&small)
        .args(["--shard", "0", "--shards", "1", "--output"])
        .arg(tmp.path().join("outputs"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("causal-lm jobs only"), "{}", stderr(&o));
    let o = worker()
        .args(["distill", "-f"])
        .arg(&small)
        .arg("--output")
        .arg(tmp.path().join("artifact"))
        .arg("--teacher-outputs")
        .arg(tmp.path().join("outputs"))
        .args(["--teacher-shards", "1"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--teacher-outputs: spec.task is SequenceClassification"), "{}", stderr(&o));
}
