//! Building models' variable maps reproducibly: from a pretrained file, from chosen teacher layers
//! (DistilBERT-style), or from a seeded random initialisation.
//!
//! candle's own initialisers draw from an unseeded generator, so a `VarMap` filled by them would
//! differ between runs. Every variable here is created explicitly, from a file or from ChaCha8
//! seeded by the job's seed, before the model is built over the map.

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::VarMap;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::model::encoder::EncoderConfig;

/// Inserts a copy of `tensor` into `map` as a trainable variable named `name`. The copy matters:
/// `Var::from_tensor` shares storage with its source, so training a student built from teacher
/// tensors would otherwise change the teacher too.
pub fn insert(map: &VarMap, name: &str, tensor: &Tensor) -> Result<()> {
    let var = Var::from_tensor(&tensor.to_dtype(DType::F32)?.copy()?)?;
    map.data().lock().expect("the var map lock is never poisoned").insert(name.to_string(), var);
    Ok(())
}

/// The (name, shape) of every encoder variable for `config`, HuggingFace names.
pub fn encoder_shapes(c: &EncoderConfig) -> Vec<(String, Vec<usize>)> {
    let (h, i) = (c.hidden_size, c.intermediate_size);
    let mut out = vec![
        ("embeddings.word_embeddings.weight".into(), vec![c.vocab_size, c.embedding_size.unwrap_or(h)]),
        ("embeddings.position_embeddings.weight".into(), vec![c.max_position_embeddings, h]),
        ("embeddings.token_type_embeddings.weight".into(), vec![c.type_vocab_size, h]),
        ("embeddings.LayerNorm.weight".into(), vec![h]),
        ("embeddings.LayerNorm.bias".into(), vec![h]),
    ];
    if let Some(e) = c.embedding_size {
        out.push(("embeddings.word_projection.weight".into(), vec![h, e]));
    }
    for l in 0..c.num_hidden_layers {
        let p = format!("encoder.layer.{l}");
        for (name, shape) in [
            ("attention.self.query.weight", vec![h, h]),
            ("attention.self.query.bias", vec![h]),
            ("attention.self.key.weight", vec![h, h]),
            ("attention.self.key.bias", vec![h]),
            ("attention.self.value.weight", vec![h, h]),
            ("attention.self.value.bias", vec![h]),
            ("attention.output.dense.weight", vec![h, h]),
            ("attention.output.dense.bias", vec![h]),
            ("attention.output.LayerNorm.weight", vec![h]),
            ("attention.output.LayerNorm.bias", vec![h]),
            ("intermediate.dense.weight", vec![i, h]),
            ("intermediate.dense.bias", vec![i]),
            ("output.dense.weight", vec![h, i]),
            ("output.dense.bias", vec![h]),
            ("output.LayerNorm.weight", vec![h]),
            ("output.LayerNorm.bias", vec![h]),
        ] {
            out.push((format!("{p}.{name}"), shape));
        }
    }
    out
}

/// BERT's initialisation for a variable: LayerNorm weights 1, biases 0, everything else
/// N(0, 0.02²), drawn from `rng`.
fn init_tensor(name: &str, shape: &[usize], rng: &mut ChaCha8Rng, device: &Device) -> Result<Tensor> {
    if name.ends_with("LayerNorm.weight") {
        return Tensor::ones(shape, DType::F32, device);
    }
    if name.ends_with(".bias") {
        return Tensor::zeros(shape, DType::F32, device);
    }
    let normal = Normal::new(0.0f32, 0.02).expect("a valid normal distribution");
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|_| normal.sample(rng)).collect();
    Tensor::from_vec(data, shape, device)
}

/// A fresh encoder's variables, seeded.
pub fn random_encoder(config: &EncoderConfig, seed: u64, device: &Device) -> Result<VarMap> {
    let map = VarMap::new();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for (name, shape) in encoder_shapes(config) {
        insert(&map, &name, &init_tensor(&name, &shape, &mut rng, device)?)?;
    }
    Ok(map)
}

/// A linear head `classifier.{weight,bias}` (`classes × hidden`), seeded.
pub fn random_head(hidden: usize, classes: usize, seed: u64, device: &Device) -> Result<VarMap> {
    let map = VarMap::new();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_4ead);
    insert(&map, "classifier.weight", &init_tensor("classifier.weight", &[classes, hidden], &mut rng, device)?)?;
    insert(&map, "classifier.bias", &Tensor::zeros(classes, DType::F32, device)?)?;
    Ok(map)
}

/// Adds BERT's pooler (`pooler.dense.{weight,bias}`, `hidden × hidden`) to a head map: the
/// weights of `source` when it has them (a pretrained or teacher model), else seeded random ones.
pub fn add_pooler(
    map: &VarMap,
    source: Option<&HashMap<String, Tensor>>,
    hidden: usize,
    seed: u64,
    device: &Device,
) -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x0090_01e4);
    for (name, shape) in [("pooler.dense.weight", vec![hidden, hidden]), ("pooler.dense.bias", vec![hidden])] {
        let tensor = match source.and_then(|s| s.get(name)) {
            Some(t) if t.dims() == shape.as_slice() => t.clone(),
            Some(t) => candle_core::bail!("{name} has shape {:?}, expected {shape:?}", t.dims()),
            None => init_tensor(name, &shape, &mut rng, device)?,
        };
        insert(map, name, &tensor)?;
    }
    Ok(())
}

/// The encoder variables of `config` taken from `tensors` (a pretrained file's contents).
pub fn pretrained_encoder(config: &EncoderConfig, tensors: &HashMap<String, Tensor>) -> Result<VarMap> {
    let map = VarMap::new();
    for (name, shape) in encoder_shapes(config) {
        let t = tensors.get(&name).ok_or_else(|| candle_core::Error::Msg(format!("weights lack {name}")))?;
        if t.dims() != shape.as_slice() {
            candle_core::bail!("{name} has shape {:?}, the config implies {shape:?}", t.dims());
        }
        insert(&map, &name, t)?;
    }
    Ok(map)
}

/// A student encoder built from teacher layers `layers` (student layer k = teacher layer
/// `layers[k]`), with the teacher's embeddings: DistilBERT's initialisation.
pub fn from_teacher_layers(
    teacher: &EncoderConfig,
    tensors: &HashMap<String, Tensor>,
    layers: &[usize],
) -> Result<(EncoderConfig, VarMap)> {
    if let Some(&bad) = layers.iter().find(|&&l| l >= teacher.num_hidden_layers) {
        candle_core::bail!("teacher layer {bad} does not exist: the teacher has {} layers", teacher.num_hidden_layers);
    }
    let config = EncoderConfig { num_hidden_layers: layers.len(), ..teacher.clone() };
    let map = VarMap::new();
    for (name, _) in encoder_shapes(&config) {
        let source = match layer_of(&name) {
            Some(k) => name.replacen(&format!("encoder.layer.{k}."), &format!("encoder.layer.{}.", layers[k]), 1),
            None => name.clone(),
        };
        let t = tensors.get(&source).ok_or_else(|| candle_core::Error::Msg(format!("teacher lacks {source}")))?;
        insert(&map, &name, t)?;
    }
    Ok((config, map))
}

/// A factorized word-embedding table for `table` `(vocab, hidden)`: `(rows, projection)` with
/// `rows` `(vocab, rank)` and `projection` `(hidden, rank)` (a `Linear` weight, so a token's vector
/// is `rows[id] · projectionᵀ`) such that `rows · projectionᵀ` is the best rank-`rank`
/// approximation of `table` (truncated SVD). The projection's columns are the top eigenvectors of
/// `tableᵀ · table`, found by seeded subspace iteration; `rows = table · projection`.
pub fn factorize_embeddings(table: &Tensor, rank: usize, seed: u64) -> Result<(Tensor, Tensor)> {
    let (_, hidden) = table.dims2()?;
    if rank == 0 || rank > hidden {
        candle_core::bail!("embedding size {rank} must be between 1 and the hidden size {hidden}");
    }
    let e = table.to_dtype(DType::F64)?;
    let gram = e.t()?.matmul(&e)?; // (hidden, hidden)
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xfac7_0e15);
    let normal = Normal::new(0.0f64, 1.0).expect("a valid normal distribution");
    let start: Vec<f64> = (0..hidden * rank).map(|_| normal.sample(&mut rng)).collect();
    let mut q = orthonormal_columns(Tensor::from_vec(start, (hidden, rank), table.device())?)?;
    for _ in 0..SUBSPACE_ITERATIONS {
        q = orthonormal_columns(gram.matmul(&q)?)?;
    }
    let rows = e.matmul(&q)?.to_dtype(DType::F32)?;
    Ok((rows, q.to_dtype(DType::F32)?))
}

/// Subspace-iteration rounds of [`factorize_embeddings`]; the error of its approximation is within
/// a fraction of a percent of the exact truncated SVD's on the teacher's table.
const SUBSPACE_ITERATIONS: usize = 60;

/// Modified Gram–Schmidt on the columns of `m` `(n, k)`, f64.
fn orthonormal_columns(m: Tensor) -> Result<Tensor> {
    let (n, k) = m.dims2()?;
    let mut cols: Vec<Vec<f64>> = m.t()?.to_vec2()?;
    for j in 0..k {
        let (done, rest) = cols.split_at_mut(j);
        let col = &mut rest[0];
        for prev in done.iter() {
            let dot: f64 = prev.iter().zip(col.iter()).map(|(a, b)| a * b).sum();
            col.iter_mut().zip(prev).for_each(|(c, p)| *c -= dot * p);
        }
        let norm = col.iter().map(|c| c * c).sum::<f64>().sqrt().max(1e-300);
        col.iter_mut().for_each(|c| *c /= norm);
    }
    Tensor::from_vec(cols.into_iter().flatten().collect::<Vec<_>>(), (k, n), m.device())?.t()?.contiguous()
}

/// The encoder layer a variable name belongs to (`encoder.layer.N.…`), if any.
pub fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("encoder.layer.")?.split('.').next()?.parse().ok()
}

/// The variables of `maps`, named, sorted by name (a deterministic order for the optimiser).
pub fn named_vars(maps: &[&VarMap], keep: impl Fn(&str) -> bool) -> Vec<(String, Var)> {
    let mut out: Vec<(String, Var)> = maps
        .iter()
        .flat_map(|m| {
            m.data()
                .lock()
                .expect("the var map lock is never poisoned")
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<Vec<_>>()
        })
        .filter(|(k, _)| keep(k))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarBuilder;

    #[test]
    fn factorized_embeddings_reconstruct_a_low_rank_table_exactly() {
        let dev = Device::Cpu;
        // A (40 × 12) table of rank 3.
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let normal = Normal::new(0.0f32, 1.0).unwrap();
        let mut draw = |r: usize, c: usize| {
            Tensor::from_vec((0..r * c).map(|_| normal.sample(&mut rng)).collect::<Vec<_>>(), (r, c), &dev).unwrap()
        };
        let table = draw(40, 3).matmul(&draw(3, 12)).unwrap();
        let (rows, projection) = factorize_embeddings(&table, 3, 0).unwrap();
        assert_eq!(rows.dims(), [40, 3]);
        assert_eq!(projection.dims(), [12, 3]);
        let rebuilt = rows.matmul(&projection.t().unwrap()).unwrap();
        let err = (rebuilt - &table).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let scale = table.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(err < 1e-4 * scale, "rank-3 table rebuilt with error {err} (scale {scale})");
        // A lower rank loses something, and the error shrinks as the rank grows.
        let residual = |rank| {
            let (r, p) = factorize_embeddings(&table, rank, 0).unwrap();
            let d = (r.matmul(&p.t().unwrap()).unwrap() - &table).unwrap();
            d.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap()
        };
        assert!(residual(1) > residual(2) && residual(2) > 1e-3);
        assert!(factorize_embeddings(&table, 13, 0).is_err());
    }

    #[test]
    fn layer_names_give_their_layer() {
        assert_eq!(layer_of("encoder.layer.4.output.dense.weight"), Some(4));
        assert_eq!(layer_of("encoder.layer.11.attention.self.query.bias"), Some(11));
        assert_eq!(layer_of("embeddings.word_embeddings.weight"), None);
    }

    fn tiny() -> EncoderConfig {
        EncoderConfig {
            vocab_size: 30,
            hidden_size: 8,
            num_hidden_layers: 3,
            num_attention_heads: 2,
            intermediate_size: 16,
            max_position_embeddings: 16,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            hidden_act: "gelu".into(),
            model_type: "bert".into(),
            embedding_size: None,
        }
    }

    fn snapshot(map: &VarMap) -> Vec<(String, Vec<f32>)> {
        named_vars(&[map], |_| true)
            .into_iter()
            .map(|(k, v)| (k, v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()))
            .collect()
    }

    #[test]
    fn random_init_is_reproducible_and_complete() {
        let a = random_encoder(&tiny(), 1, &Device::Cpu).unwrap();
        assert_eq!(snapshot(&a), snapshot(&random_encoder(&tiny(), 1, &Device::Cpu).unwrap()));
        assert_ne!(snapshot(&a), snapshot(&random_encoder(&tiny(), 2, &Device::Cpu).unwrap()));
        // The model builds over the map without creating anything new.
        let before = a.all_vars().len();
        crate::model::encoder::Encoder::new(&tiny(), VarBuilder::from_varmap(&a, DType::F32, &Device::Cpu)).unwrap();
        assert_eq!(a.all_vars().len(), before);
        let n: usize = a.all_vars().iter().map(|v| v.elem_count()).sum();
        assert_eq!(n as u64, tiny().parameters());
    }

    #[test]
    fn student_takes_the_chosen_teacher_layers() {
        let teacher = random_encoder(&tiny(), 3, &Device::Cpu).unwrap();
        let tensors: HashMap<String, Tensor> =
            named_vars(&[&teacher], |_| true).into_iter().map(|(k, v)| (k, v.as_tensor().clone())).collect();
        let (config, student) = from_teacher_layers(&tiny(), &tensors, &[0, 2]).unwrap();
        assert_eq!(config.num_hidden_layers, 2);
        let s: HashMap<String, Vec<f32>> = snapshot(&student).into_iter().collect();
        let t: HashMap<String, Vec<f32>> = snapshot(&teacher).into_iter().collect();
        assert_eq!(s["encoder.layer.1.output.dense.weight"], t["encoder.layer.2.output.dense.weight"]);
        assert_eq!(s["encoder.layer.0.attention.self.key.bias"], t["encoder.layer.0.attention.self.key.bias"]);
        assert_eq!(s["embeddings.word_embeddings.weight"], t["embeddings.word_embeddings.weight"]);
        // The student's variables are copies: changing them leaves the teacher alone.
        let student_var = named_vars(&[&student], |k| k == "encoder.layer.0.attention.self.key.bias").remove(0).1;
        student_var.set(&student_var.as_tensor().ones_like().unwrap()).unwrap();
        assert_eq!(
            snapshot(&teacher).into_iter().collect::<HashMap<_, _>>()["encoder.layer.0.attention.self.key.bias"],
            t["encoder.layer.0.attention.self.key.bias"]
        );
        let err = from_teacher_layers(&tiny(), &tensors, &[0, 3]).err().expect("layer 3 is refused").to_string();
        assert!(err.contains("teacher layer 3 does not exist"), "{err}");
    }
}
