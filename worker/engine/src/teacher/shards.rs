//! A causal-LM job's teacher outputs computed by N pods (an Indexed Job) instead of the pod that
//! distils: pod `i` runs the teacher over shard `i` of the training sequences and of the held-out
//! sequences ([`shard_range`]) and writes it under one URI (a directory, `file://` or `s3://`):
//!
//! - `shard-<i>-of-<n>.safetensors`: the shard's top-k outputs ([`TopK`]) as `train.ids`,
//!   `train.logits`, `train.remainder`, `held_out.ids`, `held_out.logits`,
//!   `held_out.remainder` (a part with no positions has no tensors);
//! - `shard-<i>-of-<n>.json`: its record ([`ShardRecord`]): what it was computed from (the
//!   teacher's digest, the digests of the whole training and held-out sequence sets, `k`, the
//!   temperature grids), which sequences it holds, how many positions, the held-out figures' raw
//!   sums ([`Tally`]) and the sha256 of the tensors file.
//!
//! The tensors are written first and the record last (a local file through a temporary name and
//! a rename; an `s3://` object uploaded after the tensors), so a record's presence means its
//! shard is complete. The distilling pod joins the shards ([`join_shards`]): every record must
//! describe the job it runs — same teacher, same sequences, same `k` and grids, the same shard
//! count and the ranges [`shard_range`] gives — or the join fails naming the shard and what
//! differs. Shards are cut at whole scoring batches ([`SCORING_BATCH`]), so each runs exactly the
//! forward passes one pod's pass over all the sequences would, and the joined outputs are those.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::evaluate::lm::Tally;
use crate::store::{self, Kind, Location, Resolver, StoreError, is_remote, sha256_file, write_atomically};
use crate::teacher::lm_outputs::{SCORING_BATCH, sequences_digest};
use crate::train::token_kd::TopK;

/// The version of the record's layout; a record of another is refused.
pub const FORMAT: u32 = 1;

/// The work-directory area an `s3://` shard is written in before its upload.
const STAGING_AREA: &str = "teacher-outputs";

/// Relative tolerance of grid points read back from a record (JSON numbers may come back one
/// unit in the last place off).
const GRID_TOLERANCE: f64 = 1e-12;

/// The sequences of shard `shard` of `shards` out of `total`: contiguous, cut at whole batches of
/// [`SCORING_BATCH`], deterministic, every sequence in exactly one shard. A shard past the
/// batches (more shards than batches) is empty, as is any `shard ≥ shards`.
pub fn shard_range(total: usize, shard: usize, shards: usize) -> Range<usize> {
    batch_aligned_range(total, shard, shards, SCORING_BATCH)
}

/// [`shard_range`] for batches of `batch` sequences: the `⌈total / batch⌉` batches are dealt out
/// in order, shard `s` taking batches `⌊B·s/n⌋ .. ⌊B·(s+1)/n⌋` (shares differ by one at most).
pub fn batch_aligned_range(total: usize, shard: usize, shards: usize, batch: usize) -> Range<usize> {
    let (batch, shards) = (batch.max(1), shards.max(1));
    let batches = total.div_ceil(batch);
    let start_of = |s: usize| (batches * s.min(shards) / shards * batch).min(total);
    start_of(shard)..start_of(shard.saturating_add(1))
}

/// Why sharded teacher outputs cannot be written or joined.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// The shard count is 0, or the index is not below it.
    #[error(
        "--shard {shard} of --shards {shards}: shards are numbered from 0 to one less than their count (an Indexed Job's JOB_COMPLETION_INDEX), and there is at least one"
    )]
    Index {
        /// The index.
        shard: usize,
        /// The count.
        shards: usize,
    },
    /// A shard's record or tensors are not there.
    #[error(
        "teacher outputs {uri}: shard {shard} of {shards} is missing ({file} not found): its teacher-outputs pod has not written it; run `distillery-worker teacher-outputs --shard {shard} --shards {shards}` for this job"
    )]
    Missing {
        /// Where the shards are.
        uri: String,
        /// The shard.
        shard: usize,
        /// The shard count.
        shards: usize,
        /// The file not found.
        file: String,
    },
    /// A shard was computed for something other than this job.
    #[error(
        "teacher outputs {uri}: shard {shard} of {shards} was computed for another {what} ({found}; this job's: {expected}): the job's spec, teacher or data changed since; compute the teacher outputs again"
    )]
    Mismatch {
        /// Where the shards are.
        uri: String,
        /// The shard.
        shard: usize,
        /// The shard count.
        shards: usize,
        /// What differs.
        what: &'static str,
        /// The shard's.
        found: String,
        /// The job's.
        expected: String,
    },
    /// A shard's files cannot be used as they are.
    #[error("teacher outputs {uri}: shard {shard} of {shards}: {message}")]
    Damaged {
        /// Where the shards are.
        uri: String,
        /// The shard.
        shard: usize,
        /// The shard count.
        shards: usize,
        /// What is wrong.
        message: String,
    },
    /// The URI cannot be used, or the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A local file could not be written or read.
    #[error("teacher outputs {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The tensors could not be written or read.
    #[error("teacher outputs: {0}")]
    Candle(#[from] candle_core::Error),
}

impl ShardError {
    /// Whether running again with the same spec fails again: a missing, damaged or mismatched
    /// shard stays so until the teacher outputs are computed again; storage trouble may pass.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::Store(e) => e.is_permanent(),
            Self::Io { .. } | Self::Candle(candle_core::Error::Io(_)) => false,
            _ => true,
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ShardError + '_ {
    move |source| ShardError::Io { path: path.display().to_string(), source }
}

/// Where a job's sharded teacher outputs are, and how many shards there are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardedOutputs {
    /// A directory, or a `file://` or `s3://` URI.
    pub uri: String,
    /// The shard count.
    pub shards: usize,
}

impl ShardedOutputs {
    /// `shards` shards under `uri` (at least one).
    pub fn new(uri: impl Into<String>, shards: usize) -> Result<Self, ShardError> {
        if shards == 0 {
            return Err(ShardError::Index { shard: 0, shards });
        }
        Ok(Self { uri: uri.into(), shards })
    }

    /// Refuses an index that is not below the shard count.
    pub fn check_shard(&self, shard: usize) -> Result<(), ShardError> {
        if shard < self.shards {
            return Ok(());
        }
        Err(ShardError::Index { shard, shards: self.shards })
    }

    /// The record's file name: `shard-<i>-of-<n>.json`.
    pub fn record_name(&self, shard: usize) -> String {
        format!("shard-{shard}-of-{}.json", self.shards)
    }

    /// The tensors' file name: `shard-<i>-of-<n>.safetensors`.
    pub fn tensors_name(&self, shard: usize) -> String {
        format!("shard-{shard}-of-{}.safetensors", self.shards)
    }

    fn missing(&self, shard: usize, file: String) -> ShardError {
        ShardError::Missing { uri: self.uri.clone(), shard, shards: self.shards, file }
    }

    fn damaged(&self, shard: usize, message: String) -> ShardError {
        ShardError::Damaged { uri: self.uri.clone(), shard, shards: self.shards, message }
    }
}

/// Where the shards go: a local directory, or an `s3://` prefix.
enum Place {
    Local(PathBuf),
    Remote(String),
}

fn place(uri: &str) -> Result<Place, ShardError> {
    if is_remote(uri) {
        return Ok(Place::Remote(uri.trim_end_matches('/').to_string()));
    }
    if !uri.contains("://") {
        return Ok(Place::Local(PathBuf::from(uri)));
    }
    match Location::parse(uri)? {
        Location::File(path) => Ok(Place::Local(path)),
        Location::S3 { .. } => Ok(Place::Remote(uri.trim_end_matches('/').to_string())),
    }
}

/// The local directory shards of `uri` are written in: the directory itself, or for `s3://` its
/// copy in the `teacher-outputs` area of `resolver`'s work directory (uploaded from there).
pub fn local_dir(resolver: &Resolver, uri: &str) -> Result<PathBuf, ShardError> {
    match place(uri)? {
        Place::Local(dir) => Ok(dir),
        Place::Remote(base) => resolver.staging(STAGING_AREA, &base).map_err(ShardError::from),
    }
}

/// What one part (the training or the held-out sequences) of a shard holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartRecord {
    /// Sequences in the whole part (all shards).
    pub sequences: usize,
    /// [`sequences_digest`] of the whole part.
    pub sequences_digest: String,
    /// The sequences this shard holds.
    pub range: Range<usize>,
    /// Inverse temperatures of the remainders ([`TopK::grid`]).
    pub grid: Vec<f64>,
    /// Positions this shard holds.
    pub positions: usize,
    /// The teacher's figures on them, as raw sums.
    pub tally: Tally,
}

/// A shard's record, `shard-<i>-of-<n>.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShardRecord {
    /// [`FORMAT`].
    pub format: u32,
    /// This shard's index, from 0.
    pub shard: usize,
    /// The shard count.
    pub shards: usize,
    /// sha256 of the teacher's GGUF file.
    pub teacher_digest: String,
    /// Tokens kept per position.
    pub k: usize,
    /// The tensors' file name.
    pub tensors: String,
    /// Its sha256.
    pub tensors_sha256: String,
    /// The training sequences' part.
    pub train: PartRecord,
    /// The held-out sequences' part.
    pub held_out: PartRecord,
}

/// What a job expects of one part of every shard.
pub struct ExpectedPart<'a> {
    sequences: &'a [Vec<u32>],
    digest: String,
    grid: Vec<f64>,
}

impl<'a> ExpectedPart<'a> {
    /// The part over `sequences`, with remainders at the inverse temperatures `grid`.
    pub fn new(sequences: &'a [Vec<u32>], grid: Vec<f64>) -> Self {
        Self { sequences, digest: sequences_digest(sequences), grid }
    }

    /// All its sequences.
    pub fn sequences(&self) -> &'a [Vec<u32>] {
        self.sequences
    }

    /// Its grid.
    pub fn grid(&self) -> &[f64] {
        &self.grid
    }

    /// Positions predicted in the sequences `range` (every token but each sequence's last).
    pub fn positions(&self, range: &Range<usize>) -> usize {
        self.sequences[range.clone()].iter().map(|s| s.len().saturating_sub(1)).sum()
    }

    fn record(&self, range: Range<usize>, part: &PartOutputs) -> PartRecord {
        PartRecord {
            sequences: self.sequences.len(),
            sequences_digest: self.digest.clone(),
            range,
            grid: self.grid.clone(),
            positions: part.outputs.positions(),
            tally: part.tally,
        }
    }

    fn empty(&self, k: usize) -> PartOutputs {
        PartOutputs { outputs: TopK { k, grid: self.grid.clone(), ..Default::default() }, tally: Tally::default() }
    }
}

/// What a job expects of every shard: its teacher, sequences, `k` and grids.
pub struct Expected<'a> {
    /// sha256 of the teacher's GGUF file.
    pub teacher_digest: String,
    /// Tokens kept per position.
    pub k: usize,
    /// The training sequences (remainders on the temperature schedule's grid).
    pub train: ExpectedPart<'a>,
    /// The held-out sequences (remainders at T = 1).
    pub held_out: ExpectedPart<'a>,
}

/// The teacher's outputs on one part of a shard (or of all of them, joined).
#[derive(Clone, Debug, PartialEq)]
pub struct PartOutputs {
    /// Its top-k outputs.
    pub outputs: TopK,
    /// Its figures' raw sums.
    pub tally: Tally,
}

impl PartOutputs {
    /// Appends the outputs of the sequences that follow these.
    pub fn append(&mut self, other: &PartOutputs) {
        self.outputs.extend(&other.outputs);
        self.tally.merge(&other.tally);
    }
}

/// A shard's outputs (or all of them, joined).
#[derive(Clone, Debug, PartialEq)]
pub struct ShardOutputs {
    /// On the training sequences.
    pub train: PartOutputs,
    /// On the held-out sequences.
    pub held_out: PartOutputs,
}

impl ShardOutputs {
    /// Appends the next shard's outputs.
    pub fn append(&mut self, other: &ShardOutputs) {
        self.train.append(&other.train);
        self.held_out.append(&other.held_out);
    }
}

/// Writes shard `shard` of `target` — its tensors, then its record — and returns the record. An
/// `s3://` shard is written in [`local_dir`] first, then uploaded in the same order.
pub fn write_shard(
    resolver: &Resolver,
    target: &ShardedOutputs,
    shard: usize,
    expected: &Expected,
    outputs: &ShardOutputs,
) -> Result<ShardRecord, ShardError> {
    target.check_shard(shard)?;
    let dir = local_dir(resolver, &target.uri)?;
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let (tensors_name, record_name) = (target.tensors_name(shard), target.record_name(shard));
    let tensors_path = dir.join(&tensors_name);
    save_tensors(&tensors_path, outputs)?;
    let range = |part: &ExpectedPart| shard_range(part.sequences.len(), shard, target.shards);
    let record = ShardRecord {
        format: FORMAT,
        shard,
        shards: target.shards,
        teacher_digest: expected.teacher_digest.clone(),
        k: expected.k,
        tensors_sha256: sha256_file(&tensors_path).map_err(io(&tensors_path))?,
        tensors: tensors_name.clone(),
        train: expected.train.record(range(&expected.train), &outputs.train),
        held_out: expected.held_out.record(range(&expected.held_out), &outputs.held_out),
    };
    let record_path = dir.join(&record_name);
    let json = serde_json::to_vec_pretty(&record).expect("a shard record serializes");
    write_atomically(&record_path, &json).map_err(io(&record_path))?;
    if let Place::Remote(base) = place(&target.uri)? {
        store::block_on(async {
            // The record last: only then does the shard exist for a reader.
            resolver.store().put_file(&tensors_path, &format!("{base}/{tensors_name}")).await?;
            resolver.store().put_file(&record_path, &format!("{base}/{record_name}")).await
        })?;
    }
    Ok(record)
}

/// The tensors of `outputs` into `path`, through a temporary name renamed into place.
fn save_tensors(path: &Path, outputs: &ShardOutputs) -> Result<(), ShardError> {
    let device = &Device::Cpu;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (prefix, part) in [("train", &outputs.train), ("held_out", &outputs.held_out)] {
        let o = &part.outputs;
        let n = o.positions();
        // An empty part has no tensors (its record says 0 positions).
        if n == 0 {
            continue;
        }
        tensors.insert(format!("{prefix}.ids"), Tensor::from_vec(o.ids.clone(), (n, o.k), device)?);
        tensors.insert(format!("{prefix}.logits"), Tensor::from_vec(o.logits.clone(), (n, o.k), device)?);
        let remainder = Tensor::from_vec(o.remainder.clone(), (n, o.grid.len()), device)?;
        tensors.insert(format!("{prefix}.remainder"), remainder);
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let staging = path.with_file_name(format!(".{name}.tmp"));
    candle_core::safetensors::save(&tensors, &staging)?;
    std::fs::rename(&staging, path).map_err(io(path))
}

/// The local path of the file `name` of `source`: where it is, or downloaded from `s3://` into
/// the work directory; absent: [`ShardError::Missing`].
fn fetch(resolver: &Resolver, source: &ShardedOutputs, shard: usize, name: String) -> Result<PathBuf, ShardError> {
    match place(&source.uri)? {
        Place::Local(dir) => {
            let path = dir.join(&name);
            if path.is_file() { Ok(path) } else { Err(source.missing(shard, name)) }
        }
        Place::Remote(base) => match resolver.materialize(&format!("{base}/{name}"), Kind::File) {
            Err(StoreError::NotFound { .. }) => Err(source.missing(shard, name)),
            other => other.map_err(ShardError::from),
        },
    }
}

/// Reads shard `shard` of `source`: its record, and its tensors checked against the record's
/// sha256 and position counts (not yet against a job: [`join_shards`] does that).
pub fn read_shard(
    resolver: &Resolver,
    source: &ShardedOutputs,
    shard: usize,
) -> Result<(ShardRecord, ShardOutputs), ShardError> {
    source.check_shard(shard)?;
    let record_path = fetch(resolver, source, shard, source.record_name(shard))?;
    let bytes = std::fs::read(&record_path).map_err(io(&record_path))?;
    let record: ShardRecord = serde_json::from_slice(&bytes).map_err(|e| {
        source.damaged(shard, format!("{} is not a shard record this worker reads: {e}", source.record_name(shard)))
    })?;
    let tensors_path = fetch(resolver, source, shard, source.tensors_name(shard))?;
    let digest = sha256_file(&tensors_path).map_err(io(&tensors_path))?;
    if digest != record.tensors_sha256 {
        return Err(source.damaged(
            shard,
            format!(
                "{} has sha256 {digest} but its record says {}: it was written over or damaged",
                source.tensors_name(shard),
                record.tensors_sha256
            ),
        ));
    }
    let mut tensors = candle_core::safetensors::load(&tensors_path, &Device::Cpu)?;
    let mut part = |prefix: &str, p: &PartRecord| {
        take_part(&mut tensors, prefix, record.k, p).map_err(|e| match e {
            TakeError::Bad(message) => source.damaged(shard, message),
            TakeError::Candle(e) => ShardError::Candle(e),
        })
    };
    let outputs = ShardOutputs { train: part("train", &record.train)?, held_out: part("held_out", &record.held_out)? };
    Ok((record, outputs))
}

/// Why a part's tensors could not be taken.
enum TakeError {
    Bad(String),
    Candle(candle_core::Error),
}

impl From<candle_core::Error> for TakeError {
    fn from(e: candle_core::Error) -> Self {
        Self::Candle(e)
    }
}

/// The part `prefix` of a shard's tensors, as its record describes it.
fn take_part(
    tensors: &mut HashMap<String, Tensor>,
    prefix: &str,
    k: usize,
    part: &PartRecord,
) -> Result<PartOutputs, TakeError> {
    let mut outputs = TopK { k, grid: part.grid.clone(), ..Default::default() };
    if part.positions > 0 {
        let mut take = |name: &str, width: usize| -> Result<Tensor, TakeError> {
            let key = format!("{prefix}.{name}");
            let tensor = tensors.remove(&key).ok_or_else(|| TakeError::Bad(format!("no tensor {key}")))?;
            if tensor.dims() != [part.positions, width].as_slice() {
                return Err(TakeError::Bad(format!(
                    "{key} has shape {:?}, its record says {} × {width}",
                    tensor.dims(),
                    part.positions
                )));
            }
            Ok(tensor)
        };
        outputs.ids = take("ids", k)?.flatten_all()?.to_vec1::<u32>()?;
        outputs.logits = take("logits", k)?.flatten_all()?.to_vec1::<f32>()?;
        outputs.remainder = take("remainder", part.grid.len())?.flatten_all()?.to_vec1::<f32>()?;
    }
    Ok(PartOutputs { outputs, tally: part.tally })
}

/// Joins the `source.shards` shards under `source.uri` into the outputs one pass over all the
/// sequences gives: every record checked against `expected` first (teacher, sequences, `k`,
/// grids, shard count, ranges, positions), the tensors in shard order, the tallies merged.
pub fn join_shards(
    resolver: &Resolver,
    source: &ShardedOutputs,
    expected: &Expected,
) -> Result<ShardOutputs, ShardError> {
    let mut joined =
        ShardOutputs { train: expected.train.empty(expected.k), held_out: expected.held_out.empty(expected.k) };
    for shard in 0..source.shards {
        let (record, outputs) = read_shard(resolver, source, shard)?;
        verify(&record, source, shard, expected)?;
        joined.append(&outputs);
    }
    Ok(joined)
}

/// Refuses a record that does not describe shard `shard` of `source` for the job `expected`.
fn verify(record: &ShardRecord, source: &ShardedOutputs, shard: usize, expected: &Expected) -> Result<(), ShardError> {
    let mismatch = |what: &'static str, found: String, wanted: String| ShardError::Mismatch {
        uri: source.uri.clone(),
        shard,
        shards: source.shards,
        what,
        found,
        expected: wanted,
    };
    let checks = [
        ("record format", record.format.to_string(), FORMAT.to_string()),
        ("shard index", record.shard.to_string(), shard.to_string()),
        ("shard count", record.shards.to_string(), source.shards.to_string()),
        ("teacher (sha256 of its GGUF file)", record.teacher_digest.clone(), expected.teacher_digest.clone()),
        ("teacherOutputs.topK", record.k.to_string(), expected.k.to_string()),
    ];
    for (what, found, wanted) in checks {
        if found != wanted {
            return Err(mismatch(what, found, wanted));
        }
    }
    let parts = [(true, &record.train, &expected.train), (false, &record.held_out, &expected.held_out)];
    for (training, part, want) in parts {
        if let Some((what, found, wanted)) = part_mismatch(part, want, shard, source.shards, training) {
            return Err(mismatch(what, found, wanted));
        }
    }
    Ok(())
}

/// The first check of a part (the training one when `training`) that fails, if any: what
/// differs, the record's and the job's.
fn part_mismatch(
    part: &PartRecord,
    expected: &ExpectedPart,
    shard: usize,
    shards: usize,
    training: bool,
) -> Option<(&'static str, String, String)> {
    let pick = |train: &'static str, held_out: &'static str| if training { train } else { held_out };
    if part.sequences != expected.sequences.len() || part.sequences_digest != expected.digest {
        let found = format!("{} sequences, sha256 {}", part.sequences, part.sequences_digest);
        let wanted = format!("{} sequences, sha256 {}", expected.sequences.len(), expected.digest);
        return Some((pick("set of training sequences", "set of held-out sequences"), found, wanted));
    }
    if !same_grid(&part.grid, &expected.grid) {
        let what = pick("temperature grid of the training outputs", "temperature grid of the held-out outputs");
        return Some((what, format!("{:?}", part.grid), format!("{:?}", expected.grid)));
    }
    let range = shard_range(expected.sequences.len(), shard, shards);
    if part.range != range {
        let what = pick("range of training sequences", "range of held-out sequences");
        return Some((what, format!("{:?}", part.range), format!("{range:?}")));
    }
    let positions = expected.positions(&range);
    if part.positions != positions || part.tally.tokens() != positions {
        let what = pick("count of training positions", "count of held-out positions");
        let found = format!("{} positions, {} scored", part.positions, part.tally.tokens());
        return Some((what, found, positions.to_string()));
    }
    None
}

/// Whether two grids are the same to [`GRID_TOLERANCE`].
fn same_grid(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= GRID_TOLERANCE * x.abs().max(y.abs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_every_sequence_once_in_order_at_batch_boundaries() {
        for total in [0, 1, 3, 4, 5, 23, 24, 25, 97] {
            for shards in 1..=9 {
                let ranges: Vec<_> = (0..shards).map(|s| shard_range(total, s, shards)).collect();
                assert_eq!(ranges[0].start, 0);
                assert_eq!(ranges[shards - 1].end, total, "{total} in {shards}");
                for pair in ranges.windows(2) {
                    assert_eq!(pair[0].end, pair[1].start, "contiguous and disjoint: {ranges:?}");
                }
                for r in &ranges {
                    assert!(r.start <= r.end);
                    assert!(r.start.is_multiple_of(SCORING_BATCH) || r.start == total, "{r:?} of {total}");
                    assert!(r.end.is_multiple_of(SCORING_BATCH) || r.end == total, "{r:?} of {total}");
                }
                let batches: Vec<usize> = ranges.iter().map(|r| r.len().div_ceil(SCORING_BATCH)).collect();
                let (most, least) = (batches.iter().max().unwrap(), batches.iter().min().unwrap());
                assert!(most - least <= 1, "batches dealt evenly: {batches:?}");
            }
        }
    }

    #[test]
    fn each_shard_runs_the_batches_one_pass_would() {
        // One pass batches 0..4, 4..8, …; every shard's batches are some of those.
        let (total, shards) = (23, 3);
        let whole: Vec<Range<usize>> =
            (0..total).step_by(SCORING_BATCH).map(|s| s..(s + SCORING_BATCH).min(total)).collect();
        let mut sharded = vec![];
        for s in 0..shards {
            let r = shard_range(total, s, shards);
            sharded.extend(r.clone().step_by(SCORING_BATCH).map(|b| b..(b + SCORING_BATCH).min(r.end)));
        }
        assert_eq!(sharded, whole);
    }

    #[test]
    fn ranges_are_deterministic() {
        for s in 0..4 {
            assert_eq!(shard_range(1000, s, 4), shard_range(1000, s, 4));
        }
        assert_eq!(shard_range(24, 1, 3), 8..16);
        assert_eq!(batch_aligned_range(10, 0, 2, 3), 0..6);
        assert_eq!(batch_aligned_range(10, 1, 2, 3), 6..10);
    }

    #[test]
    fn more_shards_than_batches_leaves_some_empty() {
        let ranges: Vec<_> = (0..5).map(|s| shard_range(6, s, 5)).collect();
        assert_eq!(ranges.iter().filter(|r| !r.is_empty()).count(), 2, "{ranges:?}");
        assert_eq!(ranges.iter().map(|r| r.len()).sum::<usize>(), 6);
        assert!(shard_range(6, 5, 5).is_empty() && shard_range(6, 9, 5).is_empty());
        assert!(shard_range(0, 0, 3).is_empty());
    }

    #[test]
    fn an_index_at_or_past_the_count_is_refused() {
        let target = ShardedOutputs::new("/tmp/x", 2).unwrap();
        assert!(target.check_shard(1).is_ok());
        let e = target.check_shard(2).unwrap_err();
        assert!(e.is_permanent() && e.to_string().contains("--shard 2 of --shards 2"), "{e}");
        assert!(ShardedOutputs::new("/tmp/x", 0).is_err());
        assert_eq!(target.record_name(1), "shard-1-of-2.json");
    }

    fn part(sequences: &[Vec<u32>], range: Range<usize>, grid: &[f64]) -> PartOutputs {
        let k = 2;
        let mut outputs = TopK { k, grid: grid.to_vec(), ..Default::default() };
        for s in &sequences[range] {
            for (p, &t) in s.iter().enumerate().skip(1) {
                outputs.push_row(&[t as f32, p as f32, 0.5, -1.0]);
            }
        }
        let mut tally = Tally::default();
        let n = outputs.positions();
        if n > 0 {
            let logits = Tensor::from_vec(outputs.logits.clone(), (n, k), &Device::Cpu).unwrap();
            let targets = Tensor::zeros(n, candle_core::DType::U32, &Device::Cpu).unwrap();
            tally.add(&logits, &targets, None).unwrap();
        }
        PartOutputs { outputs, tally }
    }

    #[test]
    fn written_shards_join_into_the_whole_and_a_changed_job_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let resolver = Resolver::new(Default::default(), dir.path().join("work"));
        let train: Vec<Vec<u32>> = (0..9).map(|i| vec![i, i + 1, i + 2]).collect();
        let held_out: Vec<Vec<u32>> = (0..3).map(|i| vec![i + 7, 1, 2]).collect();
        let grid = vec![0.5, 0.75, 1.0];
        let expected = Expected {
            teacher_digest: "t".into(),
            k: 2,
            train: ExpectedPart::new(&train, grid.clone()),
            held_out: ExpectedPart::new(&held_out, vec![1.0]),
        };
        let target = ShardedOutputs::new(dir.path().join("out").display().to_string(), 3).unwrap();
        for shard in 0..3 {
            let outputs = ShardOutputs {
                train: part(&train, shard_range(train.len(), shard, 3), &grid),
                held_out: part(&held_out, shard_range(held_out.len(), shard, 3), &[1.0]),
            };
            write_shard(&resolver, &target, shard, &expected, &outputs).unwrap();
        }
        let joined = join_shards(&resolver, &target, &expected).unwrap();
        assert_eq!(joined.train.outputs, part(&train, 0..train.len(), &grid).outputs);
        assert_eq!(joined.held_out.outputs, part(&held_out, 0..3, &[1.0]).outputs);
        assert_eq!((joined.train.tally.tokens(), joined.held_out.tally.tokens()), (18, 6));
        let (record, _) = read_shard(&resolver, &target, 1).unwrap();
        assert_eq!(
            (record.train.range.clone(), record.held_out.range.clone()),
            (4..8, 0..0),
            "one held-out batch: the last shard's"
        );

        // Tensors written over by another shard's: refused by their digest.
        let out = dir.path().join("out");
        let saved = std::fs::read(out.join(target.tensors_name(1))).unwrap();
        std::fs::copy(out.join(target.tensors_name(0)), out.join(target.tensors_name(1))).unwrap();
        let e = join_shards(&resolver, &target, &expected).unwrap_err();
        assert!(matches!(e, ShardError::Damaged { shard: 1, .. }) && e.to_string().contains("sha256"), "{e}");
        std::fs::write(out.join(target.tensors_name(1)), saved).unwrap();

        // Another teacher: named, and permanent.
        let other = Expected { teacher_digest: "u".into(), ..expected };
        let e = join_shards(&resolver, &target, &other).unwrap_err();
        assert!(e.is_permanent() && e.to_string().contains("shard 0 of 3") && e.to_string().contains("teacher"), "{e}");

        // A shard missing: named.
        std::fs::remove_file(out.join(target.record_name(2))).unwrap();
        let e = join_shards(&resolver, &target, &other).unwrap_err();
        assert!(matches!(e, ShardError::Mismatch { .. }), "the first shard is checked first: {e}");
        let expected = Expected { teacher_digest: "t".into(), ..other };
        let e = join_shards(&resolver, &target, &expected).unwrap_err();
        assert!(
            matches!(e, ShardError::Missing { shard: 2, .. }) && e.to_string().contains("shard-2-of-3.json"),
            "{e}"
        );
    }
}
