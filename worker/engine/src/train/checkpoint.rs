//! Training checkpoints: the student's variables, the optimiser's moments, the step and what is
//! needed to recompute the data order (the seed; every epoch's order follows from it), written
//! every N steps into the output location. A restarted worker with the same output and the same
//! spec resumes from the last one.
//!
//! A checkpoint is written to a temporary directory and renamed over the previous one, so a worker
//! killed while writing leaves the previous checkpoint intact.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// Why a checkpoint could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// File-system trouble.
    #[error("checkpoint {path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A tensor file could not be written or parsed.
    #[error("checkpoint {path}: {source}")]
    Tensors {
        /// The file.
        path: String,
        /// The cause.
        source: candle_core::Error,
    },
    /// The state file is unreadable.
    #[error("checkpoint {path}: {message}")]
    State {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The checkpoint belongs to another spec: resuming it would mix two runs.
    #[error(
        "checkpoint {path} was written for a different spec (run key {found}, this run {expected}); \
         point --output (or spec.output.uri) elsewhere, or delete that directory to start over"
    )]
    OtherRun {
        /// The checkpoint directory.
        path: String,
        /// The key it was written with.
        found: String,
        /// This run's key.
        expected: String,
    },
}

/// What `state.json` holds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointState {
    /// Hash of everything that decides the run (spec, data, teacher); a checkpoint is resumed only
    /// by the same run.
    pub run_key: String,
    /// Optimiser steps done.
    pub step: u64,
    /// Total steps planned.
    pub total_steps: u64,
    /// Seed of the data order (every epoch's batches follow from it and the epoch number).
    pub seed: u64,
    /// Loss of every step done so far (the training curve).
    pub losses: Vec<f64>,
    /// Training seconds spent before this checkpoint, over all attempts.
    pub seconds: f64,
}

/// A checkpoint in memory.
pub struct Checkpoint {
    /// Progress and curve.
    pub state: CheckpointState,
    /// The trained variables by name.
    pub variables: HashMap<String, Tensor>,
    /// The optimiser state ([`crate::train::optim::Trainer::state`]).
    pub optimizer: HashMap<String, Tensor>,
}

const STATE: &str = "state.json";
const VARIABLES: &str = "variables.safetensors";
const OPTIMIZER: &str = "optimizer.safetensors";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io { path: path.display().to_string(), source }
}

/// Writes `checkpoint` as directory `dir`, replacing what was there only once the new one is
/// complete.
pub fn save(dir: &Path, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "checkpoint".into());
    let staging = parent.join(format!(".{name}.writing"));
    let old = parent.join(format!(".{name}.old"));
    for stale in [&staging, &old] {
        if stale.exists() {
            std::fs::remove_dir_all(stale).map_err(io(stale))?;
        }
    }
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
    for (file, tensors) in [(VARIABLES, &checkpoint.variables), (OPTIMIZER, &checkpoint.optimizer)] {
        let path = staging.join(file);
        candle_core::safetensors::save(tensors, &path)
            .map_err(|source| CheckpointError::Tensors { path: path.display().to_string(), source })?;
    }
    let state_path = staging.join(STATE);
    let json = serde_json::to_vec_pretty(&checkpoint.state).expect("checkpoint state serializes");
    std::fs::write(&state_path, json).map_err(io(&state_path))?;
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(io(dir))?;
    }
    std::fs::rename(&staging, dir).map_err(io(dir))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    }
    Ok(())
}

/// The checkpoint in `dir`, if there is one; an error when it is unreadable or was written by a
/// different run (`run_key`).
pub fn load(dir: &Path, run_key: &str, device: &Device) -> Result<Option<Checkpoint>, CheckpointError> {
    let state_path = dir.join(STATE);
    if !state_path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&state_path).map_err(io(&state_path))?;
    let state: CheckpointState = serde_json::from_str(&text)
        .map_err(|e| CheckpointError::State { path: state_path.display().to_string(), message: e.to_string() })?;
    if state.run_key != run_key {
        return Err(CheckpointError::OtherRun {
            path: dir.display().to_string(),
            found: state.run_key,
            expected: run_key.to_string(),
        });
    }
    let read = |file: &str| {
        let path: PathBuf = dir.join(file);
        candle_core::safetensors::load(&path, device)
            .map_err(|source| CheckpointError::Tensors { path: path.display().to_string(), source })
    };
    Ok(Some(Checkpoint { variables: read(VARIABLES)?, optimizer: read(OPTIMIZER)?, state }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint(step: u64) -> Checkpoint {
        let t = |v: f32| Tensor::new(&[v, v + 1.0], &Device::Cpu).unwrap();
        Checkpoint {
            state: CheckpointState {
                run_key: "k1".into(),
                step,
                total_steps: 10,
                seed: 3,
                losses: vec![0.7, 0.5],
                seconds: 1.5,
            },
            variables: HashMap::from([("w".to_string(), t(step as f32))]),
            optimizer: HashMap::from([("adam.m.w".to_string(), t(0.5))]),
        }
    }

    #[test]
    fn a_saved_checkpoint_loads_back_and_a_newer_one_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let at = dir.path().join("student");
        assert!(load(&at, "k1", &Device::Cpu).unwrap().is_none(), "no checkpoint yet");
        save(&at, &checkpoint(2)).unwrap();
        save(&at, &checkpoint(4)).unwrap();
        let back = load(&at, "k1", &Device::Cpu).unwrap().unwrap();
        assert_eq!(back.state, checkpoint(4).state);
        assert_eq!(back.variables["w"].to_vec1::<f32>().unwrap(), [4.0, 5.0]);
        assert_eq!(back.optimizer["adam.m.w"].to_vec1::<f32>().unwrap(), [0.5, 1.5]);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers, ["student"], "no staging directories left behind");
    }

    #[test]
    fn a_checkpoint_of_another_run_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let at = dir.path().join("student");
        save(&at, &checkpoint(2)).unwrap();
        let err = load(&at, "k2", &Device::Cpu).err().unwrap().to_string();
        assert!(err.contains("different spec") && err.contains("--output"), "{err}");
    }

    #[test]
    fn a_corrupt_state_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let at = dir.path().join("student");
        save(&at, &checkpoint(2)).unwrap();
        std::fs::write(at.join(STATE), "{not json").unwrap();
        let err = load(&at, "k1", &Device::Cpu).err().unwrap().to_string();
        assert!(err.contains("state.json"), "{err}");
    }
}
