//! A causal-LM student: a Llama-family decoder of the spec's shape with the teacher's
//! vocabulary, special tokens, RMSNorm ε and rotary base — either freshly initialised (seeded) or
//! made of chosen teacher layers with the teacher's embedding and final norm (DistilBERT style).

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};
use distillery_crds::distillation::StudentSpec;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::model::decoder::{Decoder, DecoderConfig, DecoderError, StudentShape};
use crate::student::init::insert;

/// The student's configuration from the spec: `architecture` (family llama) or
/// `initFromTeacher` (the teacher's widths, fewer layers).
pub fn student_config(spec: &StudentSpec, teacher: &DecoderConfig) -> std::result::Result<DecoderConfig, DecoderError> {
    if let Some(from) = &spec.init_from_teacher {
        if let Some(&l) = from.layers.iter().find(|&&l| l as usize >= teacher.num_hidden_layers) {
            return Err(DecoderError::Student(format!(
                "student.initFromTeacher.layers: layer {l} does not exist; the teacher has {} layers (0–{})",
                teacher.num_hidden_layers,
                teacher.num_hidden_layers - 1
            )));
        }
        let config = DecoderConfig { num_hidden_layers: from.layers.len(), ..teacher.clone() };
        config.validate()?;
        return Ok(config);
    }
    let arch = spec.architecture.as_ref().ok_or_else(|| {
        DecoderError::Student("set student.architecture (family llama) or student.initFromTeacher".into())
    })?;
    let hidden = arch.hidden_size as usize;
    let shape = StudentShape {
        layers: arch.layers as usize,
        hidden,
        heads: arch.attention_heads as usize,
        kv_heads: arch.key_value_heads.unwrap_or(arch.attention_heads) as usize,
        intermediate: arch.intermediate_size.map_or(3 * hidden, |i| i as usize),
        vocab: teacher.vocab_size,
    };
    DecoderConfig::student_of(teacher, &shape)
}

/// A fresh decoder's variables for `config`, seeded: RMSNorm weights 1, every matrix N(0,
/// `initializer_range`²), drawn in the order of the variables' names.
pub fn random_decoder(config: &DecoderConfig, seed: u64, device: &Device) -> std::result::Result<VarMap, DecoderError> {
    // Building once over an empty map names and shapes every variable; they are then redrawn
    // from the seeded generator, so the same seed gives the same student.
    let map = VarMap::new();
    Decoder::new(config, VarBuilder::from_varmap(&map, DType::F32, device))?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, config.initializer_range as f32).expect("a valid normal distribution");
    let data = map.data().lock().expect("the map's lock");
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let value = if name.ends_with("norm.weight") {
            Tensor::ones(var.shape(), DType::F32, device)?
        } else {
            let values: Vec<f32> = (0..var.elem_count()).map(|_| normal.sample(&mut rng)).collect();
            Tensor::from_vec(values, var.shape(), device)?
        };
        var.set(&value)?;
    }
    drop(data);
    Ok(map)
}

/// A student of `config` made of teacher layers `layers` (student layer k = teacher layer
/// `layers[k]`), with the teacher's token embedding and final norm (and output layer when untied).
pub fn decoder_from_teacher_layers(teacher: &HashMap<String, Tensor>, layers: &[u32]) -> Result<VarMap> {
    let map = VarMap::new();
    let mut names: Vec<&String> = teacher.keys().collect();
    names.sort();
    for name in names {
        let tensor = &teacher[name];
        match name.strip_prefix("model.layers.") {
            Some(rest) => {
                let (index, suffix) = rest.split_once('.').unwrap_or((rest, ""));
                let Ok(index) = index.parse::<u32>() else { continue };
                for (k, _) in layers.iter().enumerate().filter(|(_, l)| **l == index) {
                    insert(&map, &format!("model.layers.{k}.{suffix}"), tensor)?;
                }
            }
            None => insert(&map, name, tensor)?,
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use distillery_crds::distillation::{InitFromTeacher, ModelFamily, StudentArchitecture};

    fn teacher() -> DecoderConfig {
        DecoderConfig {
            num_hidden_layers: 4,
            ..DecoderConfig::student(&StudentShape {
                layers: 4,
                hidden: 16,
                heads: 4,
                kv_heads: 2,
                intermediate: 24,
                vocab: 50,
            })
        }
    }

    fn spec(arch: Option<StudentArchitecture>, layers: Option<Vec<u32>>) -> StudentSpec {
        StudentSpec {
            architecture: arch,
            init_from_teacher: layers.map(|layers| InitFromTeacher { layers }),
            prune_vocabulary: false,
            embedding_size: None,
        }
    }

    #[test]
    fn the_spec_shapes_the_student_and_the_teacher_gives_vocabulary_and_norms() {
        let arch = StudentArchitecture {
            family: ModelFamily::Llama,
            layers: 2,
            hidden_size: 8,
            attention_heads: 2,
            intermediate_size: None,
            key_value_heads: Some(1),
        };
        let c = student_config(&spec(Some(arch), None), &teacher()).unwrap();
        assert_eq!((c.num_hidden_layers, c.hidden_size, c.num_key_value_heads, c.intermediate_size), (2, 8, 1, 24));
        assert_eq!((c.vocab_size, c.rms_norm_eps, c.rope_theta), (50, teacher().rms_norm_eps, teacher().rope_theta));
        let c = student_config(&spec(None, Some(vec![0, 3])), &teacher()).unwrap();
        assert_eq!((c.num_hidden_layers, c.hidden_size), (2, 16));
        let e = student_config(&spec(None, Some(vec![4])), &teacher()).unwrap_err();
        assert!(e.to_string().contains("layer 4 does not exist"), "{e}");
    }

    #[test]
    fn a_seeded_student_is_reproducible_and_teacher_layers_are_copied_not_shared() {
        let device = Device::Cpu;
        let c = teacher();
        let snapshot = |m: &VarMap| crate::train::runner::snapshot(&[m]).unwrap();
        let (a, b) =
            (snapshot(&random_decoder(&c, 7, &device).unwrap()), snapshot(&random_decoder(&c, 7, &device).unwrap()));
        let other = snapshot(&random_decoder(&c, 8, &device).unwrap());
        let name = "model.layers.1.self_attn.q_proj.weight";
        let diff =
            |x: &Tensor, y: &Tensor| x.sub(y).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(diff(&a[name], &b[name]), 0.0);
        assert!(diff(&a[name], &other[name]) > 0.0);
        assert_eq!(a["model.norm.weight"].to_vec1::<f32>().unwrap(), vec![1.0; 16]);

        let student = decoder_from_teacher_layers(&a, &[3, 1]).unwrap();
        let s = snapshot(&student);
        assert_eq!(diff(&s["model.layers.0.mlp.up_proj.weight"], &a["model.layers.3.mlp.up_proj.weight"]), 0.0);
        assert_eq!(diff(&s["model.layers.1.mlp.up_proj.weight"], &a["model.layers.1.mlp.up_proj.weight"]), 0.0);
        assert!(!s.contains_key("model.layers.2.mlp.up_proj.weight"));
        Decoder::new(
            &DecoderConfig { num_hidden_layers: 2, ..c },
            VarBuilder::from_varmap(&student, DType::F32, &device),
        )
        .unwrap();
    }
}
