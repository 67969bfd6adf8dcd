//! A causal-LM teacher's outputs: one forward pass over packed sequences gives, at every predicted
//! position, the top-k compression of its next-token distribution the students learn from
//! ([`TopK`]) and — on held-out sequences — its own perplexity and top-1 accuracy. The top-k
//! outputs are cached on disk, keyed by everything they depend on (the teacher file's digest, the
//! sequences, `k` and the temperature grid), so a rerun or a second student reuses them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use crate::evaluate::lm::{LmFigures, Tally};
use crate::model::decoder::Decoder;
use crate::progress::{Event, ProgressStage, Reporter};
use crate::store::sha256;
use crate::train::lm::{batch_tensors, predicted_logits};
use crate::train::token_kd::TopK;

/// Sequences per forward pass when scoring (teacher outputs, evaluation). Shards of the teacher
/// outputs are cut at multiples of it ([`super::shards::shard_range`]), so each runs exactly the
/// batches one pass over all the sequences would.
pub const SCORING_BATCH: usize = 4;

/// What one pass of the teacher over some sequences gives.
pub struct TeacherPass {
    /// Its top-k outputs at every predicted position.
    pub outputs: TopK,
    /// Its own figures on them.
    pub figures: LmFigures,
}

/// A stable digest of `sequences` (what a cache of outputs on them is keyed by).
pub fn sequences_digest(sequences: &[Vec<u32>]) -> String {
    let mut bytes = Vec::with_capacity(sequences.iter().map(Vec::len).sum::<usize>() * 4 + 8);
    for s in sequences {
        bytes.extend((s.len() as u32).to_le_bytes());
        bytes.extend(s.iter().flat_map(|t| t.to_le_bytes()));
    }
    sha256(&bytes)
}

/// What a teacher pass keeps, and how it runs.
#[derive(Clone, Debug)]
pub struct PassSettings {
    /// Tokens kept per position.
    pub k: usize,
    /// Inverse temperatures the remainder's mass is kept at ([`TopK::grid`]).
    pub grid: Vec<f64>,
    /// Sequences per forward pass.
    pub batch: usize,
}

/// Runs `teacher` over `sequences`, `settings.batch` at a time, compressing every predicted
/// position's logits to its top `k` with remainders at `grid`. Reports progress as `what`.
pub fn teacher_pass(
    teacher: &Decoder,
    sequences: &[Vec<u32>],
    settings: &PassSettings,
    device: &Device,
    what: &str,
    reporter: &mut dyn Reporter,
) -> candle_core::Result<TeacherPass> {
    let (outputs, tally) = teacher_pass_tally(teacher, sequences, settings, device, what, reporter)?;
    Ok(TeacherPass { outputs, figures: tally.figures(false) })
}

/// [`teacher_pass`] with the running sums its figures come from rather than the figures: passes
/// over parts of the same sequences add up ([`Tally::merge`]).
pub fn teacher_pass_tally(
    teacher: &Decoder,
    sequences: &[Vec<u32>],
    settings: &PassSettings,
    device: &Device,
    what: &str,
    reporter: &mut dyn Reporter,
) -> candle_core::Result<(TopK, Tally)> {
    let PassSettings { k, ref grid, batch } = *settings;
    let mut outputs = TopK { k, grid: grid.to_vec(), ..Default::default() };
    let mut tally = Tally::default();
    let all: Vec<usize> = (0..sequences.len()).collect();
    let started = std::time::Instant::now();
    let chunks: Vec<&[usize]> = all.chunks(batch.max(1)).collect();
    for (c, chunk) in chunks.iter().enumerate() {
        let (ids, targets) = batch_tensors(sequences, chunk, device)?;
        let logits = predicted_logits(teacher, &ids)?.to_dtype(DType::F32)?;
        tally.add(&logits, &targets, None)?;
        let rows: Vec<Vec<f32>> = logits.to_vec2()?;
        let compressed: Vec<TopK> = rows
            .par_iter()
            .map(|row| {
                let mut one = TopK { k, grid: grid.to_vec(), ..Default::default() };
                one.push_row(row);
                one
            })
            .collect();
        for one in &compressed {
            outputs.extend(one);
        }
        if (c + 1) % 10 == 0 || c + 1 == chunks.len() {
            let done = (c + 1) * batch;
            let rate = done.min(sequences.len()) as f64 / started.elapsed().as_secs_f64().max(1e-9);
            reporter.report(&Event::Stage {
                stage: ProgressStage::CachingTeacherOutputs,
                message: format!(
                    "{what}: {} of {} sequences ({rate:.1}/s)",
                    done.min(sequences.len()),
                    sequences.len()
                ),
            });
        }
    }
    Ok((outputs, tally))
}

/// Where [`cached_teacher_pass`] keeps a pass: `dir/lm-<key>.safetensors`.
pub fn cache_path(dir: &Path, teacher_digest: &str, sequences: &[Vec<u32>], settings: &PassSettings) -> PathBuf {
    let what = serde_json::json!({
        "teacher": teacher_digest,
        "sequences": sequences_digest(sequences),
        "k": settings.k,
        "grid": settings.grid,
        "format": 1,
    });
    dir.join(format!("lm-{}.safetensors", &sha256(what.to_string().as_bytes())[..24]))
}

/// [`teacher_pass`], reused from `path` when a previous run saved it there, saved there
/// otherwise (written to a temporary name, then renamed). `teacher` is built only when needed.
pub fn cached_teacher_pass(
    path: &Path,
    teacher: &dyn Fn() -> candle_core::Result<Decoder>,
    sequences: &[Vec<u32>],
    settings: &PassSettings,
    device: &Device,
    what: &str,
    reporter: &mut dyn Reporter,
) -> candle_core::Result<TeacherPass> {
    let k = settings.k;
    if let Some(pass) = load(path, k, &settings.grid)? {
        reporter.report(&Event::Stage {
            stage: ProgressStage::CachingTeacherOutputs,
            message: format!("{what}: reusing {} positions ({})", pass.outputs.positions(), path.display()),
        });
        return Ok(pass);
    }
    reporter.report(&Event::Stage {
        stage: ProgressStage::CachingTeacherOutputs,
        message: format!(
            "{what}: computing its top-{k} next-token outputs on {} sequences — once; cached",
            sequences.len()
        ),
    });
    let pass = teacher_pass(&teacher()?, sequences, settings, device, what, reporter)?;
    save(path, &pass)?;
    Ok(pass)
}

fn save(path: &Path, pass: &TeacherPass) -> candle_core::Result<()> {
    let device = &Device::Cpu;
    let o = &pass.outputs;
    let n = o.positions();
    let f = &pass.figures;
    let tensors = HashMap::from([
        ("ids".to_string(), Tensor::from_vec(o.ids.clone(), (n, o.k), device)?),
        ("logits".to_string(), Tensor::from_vec(o.logits.clone(), (n, o.k), device)?),
        ("remainder".to_string(), Tensor::from_vec(o.remainder.clone(), (n, o.grid.len()), device)?),
        ("grid".to_string(), Tensor::new(o.grid.as_slice(), device)?),
        ("figures".to_string(), Tensor::new(&[f.perplexity, f.top1, f.tokens as f64], device)?),
    ]);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let staging = path.with_extension("partial");
    candle_core::safetensors::save(&tensors, &staging)?;
    std::fs::rename(&staging, path)?;
    Ok(())
}

fn load(path: &Path, k: usize, grid: &[f64]) -> candle_core::Result<Option<TeacherPass>> {
    if !path.is_file() {
        return Ok(None);
    }
    let mut t = candle_core::safetensors::load(path, &Device::Cpu)?;
    let mut take = |name: &str| {
        t.remove(name).ok_or_else(|| candle_core::Error::Msg(format!("{}: no tensor {name}", path.display())))
    };
    let (ids, logits, remainder, saved_grid, figures) =
        (take("ids")?, take("logits")?, take("remainder")?, take("grid")?, take("figures")?);
    if saved_grid.to_vec1::<f64>()? != grid || ids.dim(1)? != k {
        return Ok(None);
    }
    let figures = figures.to_vec1::<f64>()?;
    Ok(Some(TeacherPass {
        outputs: TopK {
            k,
            grid: grid.to_vec(),
            ids: ids.flatten_all()?.to_vec1()?,
            logits: logits.flatten_all()?.to_vec1()?,
            remainder: remainder.flatten_all()?.to_vec1()?,
        },
        figures: LmFigures {
            perplexity: figures[0],
            top1: figures[1],
            kl_to_teacher: None,
            tokens: figures[2] as usize,
        },
    }))
}
