//! The teacher (all-MiniLM-L6-v2 from the setup cache) through our trainable encoder reproduces
//! the reference embedding similarity measured independently with a float64 forward pass
//! (docs/toolchain.md): cos("A man is eating food.", "A man is eating a piece of bread.") = 0.7553.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use distillery_worker::model::encoder::{Encoder, EncoderConfig, mean_pool};

fn teacher_dir() -> PathBuf {
    distillery_crds::cache::cache_dir().join("teacher/all-minilm-l6-v2")
}

#[test]
fn teacher_embeddings_match_the_reference() {
    let dir = teacher_dir();
    assert!(dir.join("model.safetensors").is_file(), "{} missing: run scripts/setup.sh", dir.display());
    let config: EncoderConfig =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let tensors = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let encoder = Encoder::new(&config, VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu)).unwrap();
    assert_eq!(config.parameters(), 22_713_216 - 384 * 384 - 384, "encoder parameters (the pooler excluded)");

    let mut tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    tokenizer.with_padding(Some(tokenizers::PaddingParams::default()));
    let texts = ["A man is eating food.", "A man is eating a piece of bread.", "The sky is blue today."];
    let encodings = tokenizer.encode_batch(texts.to_vec(), true).unwrap();
    let ids: Vec<Vec<u32>> = encodings.iter().map(|e| e.get_ids().to_vec()).collect();
    let mask: Vec<Vec<u32>> = encodings.iter().map(|e| e.get_attention_mask().to_vec()).collect();
    let ids = Tensor::new(ids, &Device::Cpu).unwrap();
    let mask = Tensor::new(mask, &Device::Cpu).unwrap();
    let pooled = mean_pool(encoder.forward(&ids, &mask).unwrap().last(), &mask).unwrap();
    let v: Vec<Vec<f32>> = pooled.to_vec2().unwrap();
    let cos = |a: &[f32], b: &[f32]| {
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        dot / (a.iter().map(|x| x * x).sum::<f32>().sqrt() * b.iter().map(|x| x * x).sum::<f32>().sqrt())
    };
    let similar = cos(&v[0], &v[1]);
    assert!((similar - 0.7553).abs() < 5e-4, "cos = {similar}, reference 0.7553");
    assert!(cos(&v[0], &v[2]) < similar, "an unrelated sentence is less similar");
}
