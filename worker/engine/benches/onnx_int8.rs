//! fp32 against int8 in ONNX Runtime, single-threaded, on the embedded default's artifact (the
//! README's main job writes it): latency per batch at batch 1 and batch 32 over the held-out
//! texts in arrival order (padded to each batch's longest), sizes, and held-out accuracy. Both
//! models run alternately, round after round, and the fastest round of each counts, so both see
//! the same machine. Not a test: it prints a table.
//!
//! ```text
//! cargo run --release -p distillery-worker -- distill -f examples/local/distill.yaml   # once
//! cargo bench -p distillery-worker --bench onnx_int8 [-- ARTIFACT_DIR]
//! ```
#![allow(missing_docs)]
use std::path::PathBuf;

use candle_onnx::onnx::ModelProto;
use distillery_crds::manifest::{FP32_MODEL, INT8_MODEL};
use distillery_worker::onnx::artifact::eval_set;
use distillery_worker::onnx::quantize::{QuantizeOptions, quantize};
use distillery_worker::onnx::runtime::{self, OnnxModel, batches, compare_latency};
use distillery_worker::train::accuracy;
use prost::Message;

fn main() {
    let dir = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(PathBuf::from)
        .unwrap_or_else(|| distillery_crds::cache::cache_dir().join("artifacts/local-reviews"));
    runtime::init(None).expect("ONNX Runtime (run scripts/setup.sh)");
    let fp32 = std::fs::read(dir.join(FP32_MODEL))
        .unwrap_or_else(|e| panic!("{}: {e}; run the README's main job first", dir.join(FP32_MODEL).display()));
    let int8 = match std::fs::read(dir.join(INT8_MODEL)) {
        Ok(b) => b,
        Err(_) => {
            eprintln!("{INT8_MODEL} absent (int8 failed its gate); timing a fully quantized graph instead");
            let model = ModelProto::decode(fp32.as_slice()).unwrap();
            quantize(&model, &QuantizeOptions::default()).unwrap().model.encode_to_vec()
        }
    };
    let eval = eval_set(&dir, None).expect("the artifact's held-out split");
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let acc =
        |bytes: &[u8]| accuracy(&OnnxModel::new(bytes, threads).unwrap().logits(&eval.ids, 32).unwrap(), &eval.labels);
    let (acc_fp32, acc_int8) = (acc(&fp32), acc(&int8));
    let mean_len = eval.ids.iter().map(Vec::len).sum::<usize>() as f64 / eval.ids.len() as f64;
    println!(
        "artifact {} — {} held-out texts, mean {mean_len:.1} tokens; ONNX Runtime, 1 intra-op thread",
        dir.display(),
        eval.ids.len()
    );
    println!(
        "size: fp32 {:.2} MB, int8 {:.2} MB ({:.2}× smaller); held-out accuracy: fp32 {:.2}%, int8 {:.2}% ({:+.2} points)",
        fp32.len() as f64 / 1e6,
        int8.len() as f64 / 1e6,
        fp32.len() as f64 / int8.len() as f64,
        acc_fp32 * 100.0,
        acc_int8 * 100.0,
        (acc_int8 - acc_fp32) * 100.0
    );
    let mut a = OnnxModel::new(&fp32, 1).unwrap();
    let mut b = OnnxModel::new(&int8, 1).unwrap();
    println!(
        "{:>6} {:>8} {:>12} {:>12} {:>14} {:>14} {:>8}",
        "batch", "batches", "fp32 ms", "int8 ms", "fp32 texts/s", "int8 texts/s", "speedup"
    );
    for (size, count) in [(1usize, 512usize), (32, 48)] {
        let set = batches(&eval.ids, size, count);
        let (f, i) = compare_latency(&mut a, &mut b, &set, 5).unwrap();
        let (f, i) = (f.as_secs_f64() * 1e3, i.as_secs_f64() * 1e3);
        println!(
            "{size:>6} {:>8} {f:>12.3} {i:>12.3} {:>14.0} {:>14.0} {:>7.2}×",
            set.len(),
            size as f64 * 1e3 / f,
            size as f64 * 1e3 / i,
            f / i
        );
    }
}
