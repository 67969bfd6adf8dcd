//! Hidden-state feature alignment (`featureAlignment.kind: hidden-mse`, as in TinyBERT: Jiao et al.,
//! 2020): chosen student layers learn to reproduce chosen teacher layers' token states, through a
//! learned linear projection when the student is narrower than the teacher.
//!
//! The teacher's states are computed once per example ([`HiddenTargets::compute`]) and kept as one
//! `(tokens, hidden)` table per teacher layer, every example's tokens one after another; a batch
//! gathers its rows with one `index_select`, padding positions pointing at a zero row that the
//! attention mask then leaves out of the loss.

use std::collections::HashMap;

use crate::model::encoder::Dense;
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{Module, VarBuilder, VarMap};

use crate::model::classifier::{Classifier, ClassifierOutput};
use crate::train::loss::masked_mse;

/// The teacher's hidden states of the examples distillation trains on, for the layers it aligns to.
pub struct HiddenTargets {
    /// Teacher layer of each table.
    pub layers: Vec<usize>,
    /// One `(tokens + 1, hidden)` table per layer; the last row is zeros (padding).
    tables: Vec<Tensor>,
    /// `(first row, tokens)` of each example index that has states.
    spans: HashMap<usize, (usize, usize)>,
}

impl HiddenTargets {
    /// Runs `teacher` on examples `indices` of `ids` and keeps the outputs of `layers`.
    pub fn compute(
        teacher: &Classifier,
        ids: &[Vec<u32>],
        indices: &[usize],
        layers: &[usize],
        device: &Device,
    ) -> Result<Self> {
        let mut order: Vec<usize> = indices.to_vec();
        order.sort_by_key(|&i| ids[i].len());
        let mut rows: Vec<Vec<Tensor>> = vec![vec![]; layers.len()];
        let mut placed = vec![];
        for chunk in order.chunks(64) {
            let sequences: Vec<&[u32]> = chunk.iter().map(|&i| ids[i].as_slice()).collect();
            let (input_ids, mask) = crate::data::batch::pad(&sequences, device)?;
            let out = teacher.forward(&input_ids, &mask)?;
            for (k, &layer) in layers.iter().enumerate() {
                let states = out.encoder.hidden_states[layer].detach();
                for (row, &i) in chunk.iter().enumerate() {
                    rows[k].push(states.get(row)?.narrow(0, 0, ids[i].len())?);
                }
            }
            placed.extend_from_slice(chunk);
        }
        let tables = rows.into_iter().map(|r| Tensor::cat(&r, 0)).collect::<Result<Vec<_>>>()?;
        Self::from_tables(layers.to_vec(), tables, &placed, ids)
    }

    /// Targets from saved `tables` (one per layer, `(tokens, hidden)`, without the zero row)
    /// holding the states of examples `order` of `ids`, in that order.
    pub fn from_tables(layers: Vec<usize>, tables: Vec<Tensor>, order: &[usize], ids: &[Vec<u32>]) -> Result<Self> {
        let mut spans = HashMap::with_capacity(order.len());
        let mut next = 0;
        for &i in order {
            spans.insert(i, (next, ids[i].len()));
            next += ids[i].len();
        }
        let tables = tables
            .into_iter()
            .map(|t| {
                let (tokens, hidden) = t.dims2()?;
                if tokens != next {
                    candle_core::bail!("hidden-state table has {tokens} rows, the examples have {next} tokens");
                }
                let zero = Tensor::zeros((1, hidden), DType::F32, t.device())?;
                Tensor::cat(&[&t, &zero], 0)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers, tables, spans })
    }

    /// The tables as saved by [`Self::from_tables`] (zero row dropped), and the example order.
    pub fn tables(&self) -> Result<(Vec<Tensor>, Vec<usize>)> {
        let mut order: Vec<(usize, usize)> = self.spans.iter().map(|(&i, &(start, _))| (start, i)).collect();
        order.sort_unstable();
        let tables = self.tables.iter().map(|t| t.narrow(0, 0, t.dim(0)? - 1)).collect::<Result<Vec<_>>>()?;
        Ok((tables, order.into_iter().map(|(_, i)| i).collect()))
    }

    /// Width of the teacher's states.
    pub fn width(&self) -> Result<usize> {
        self.tables.first().map_or(Ok(0), |t| t.dim(1))
    }

    /// The states of table `k` for `batch`, zero-padded to `longest` tokens: `(batch, longest, hidden)`.
    pub fn batch(&self, k: usize, batch: &[usize], longest: usize) -> Result<Tensor> {
        let table = &self.tables[k];
        let zero = (table.dim(0)? - 1) as u32;
        let mut index = Vec::with_capacity(batch.len() * longest);
        for i in batch {
            let &(start, len) = self
                .spans
                .get(i)
                .ok_or_else(|| candle_core::Error::Msg(format!("no teacher hidden states for example {i}")))?;
            if len > longest {
                candle_core::bail!("example {i} has {len} teacher tokens but the student's batch has {longest}");
            }
            index.extend((start..start + len).map(|r| r as u32));
            index.extend(std::iter::repeat_n(zero, longest - len));
        }
        let index = Tensor::from_vec(index, batch.len() * longest, table.device())?;
        table.index_select(&index, 0)?.reshape((batch.len(), longest, table.dim(1)?))
    }
}

/// The alignment term of one run: student layers, their projections and the term's weight.
pub struct HiddenAlignment<'a> {
    /// The teacher's states.
    pub targets: &'a HiddenTargets,
    /// The student layer aligned with each of `targets.layers`.
    pub student_layers: Vec<usize>,
    /// `student width → teacher width` per pair, when the widths differ.
    pub projections: Vec<Option<Dense>>,
    /// Weight of the term in the total loss.
    pub weight: f64,
}

impl<'a> HiddenAlignment<'a> {
    /// The term for `student_layers[k]` ↔ `targets.layers[k]`, with the projections' variables
    /// (`alignment.projection.{k}.weight`, seeded by the map's default initialisation) in `map`
    /// so that they are trained with the student.
    pub fn new(
        targets: &'a HiddenTargets,
        student_layers: Vec<usize>,
        student_width: usize,
        weight: f64,
        map: &VarMap,
        device: &Device,
    ) -> Result<Self> {
        let teacher_width = targets.width()?;
        let vb = VarBuilder::from_varmap(map, DType::F32, device);
        let projections = (0..student_layers.len())
            .map(|k| {
                (student_width != teacher_width)
                    .then(|| Dense::new(student_width, teacher_width, false, vb.pp("alignment.projection").pp(k)))
                    .transpose()
            })
            .collect::<Result<_>>()?;
        Ok(Self { targets, student_layers, projections, weight })
    }

    /// `weight ×` the mean over pairs of the masked MSE between the (projected) student states and
    /// the teacher's, for `batch` (example indices) whose student pass is `out`.
    pub fn loss(&self, out: &ClassifierOutput, batch: &[usize], mask: &Tensor) -> Result<Tensor> {
        let longest = mask.dim(1)?;
        let mut total: Option<Tensor> = None;
        for (k, &layer) in self.student_layers.iter().enumerate() {
            let student = &out.encoder.hidden_states[layer];
            let student = match &self.projections[k] {
                Some(p) => p.forward(student)?,
                None => student.clone(),
            };
            let term = masked_mse(&student, &self.targets.batch(k, batch, longest)?, mask)?;
            total = Some(match total {
                Some(t) => (t + term)?,
                None => term,
            });
        }
        let total = total.ok_or_else(|| candle_core::Error::Msg("hidden-mse needs at least one layer pair".into()))?;
        total * (self.weight / self.student_layers.len() as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets() -> HiddenTargets {
        // Examples 3 (2 tokens) and 7 (1 token); states of width 2.
        let ids = {
            let mut ids = vec![vec![]; 8];
            ids[3] = vec![1, 2];
            ids[7] = vec![5];
            ids
        };
        let table = Tensor::new(&[[1.0f32, 2.0], [3.0, 4.0], [5.0, 6.0]], &Device::Cpu).unwrap();
        HiddenTargets::from_tables(vec![4], vec![table], &[3, 7], &ids).unwrap()
    }

    #[test]
    fn a_batch_gathers_each_examples_rows_and_pads_with_zeros() {
        let t = targets();
        let got = t.batch(0, &[7, 3], 3).unwrap().to_vec3::<f32>().unwrap();
        assert_eq!(got, [[[5.0, 6.0], [0.0, 0.0], [0.0, 0.0]], [[1.0, 2.0], [3.0, 4.0], [0.0, 0.0]]]);
        assert!(t.batch(0, &[3], 1).is_err(), "a batch shorter than an example is refused");
        assert!(t.batch(0, &[5], 2).is_err(), "an example without states is refused");
        let (tables, order) = t.tables().unwrap();
        assert_eq!(order, [3, 7]);
        assert_eq!(tables[0].dims(), [3, 2]);
    }

    #[test]
    fn the_projection_is_trained_and_the_loss_matches_by_hand() {
        let t = targets();
        let map = VarMap::new();
        let align = HiddenAlignment::new(&t, vec![0], 3, 2.0, &map, &Device::Cpu).unwrap();
        assert_eq!(map.all_vars().len(), 1, "one projection 3 → 2");
        // Replace the projection by a known one: keep the first two coordinates.
        let w = Tensor::new(&[[1.0f32, 0.0, 0.0], [0.0, 1.0, 0.0]], &Device::Cpu).unwrap();
        map.data().lock().unwrap()["alignment.projection.0.weight"].set(&w).unwrap();
        let student = Tensor::new(&[[[5.0f32, 8.0, 9.0], [7.0, 7.0, 7.0]]], &Device::Cpu).unwrap();
        let out = ClassifierOutput {
            logits: Tensor::zeros((1, 2), DType::F32, &Device::Cpu).unwrap(),
            pooled: Tensor::zeros((1, 3), DType::F32, &Device::Cpu).unwrap(),
            encoder: crate::model::encoder::EncoderOutput { hidden_states: vec![student] },
        };
        let mask = Tensor::new(&[[1u32, 0]], &Device::Cpu).unwrap();
        // Example 7: target [5, 6]; projected student [5, 8] on the one real token:
        // MSE = ((5-5)² + (8-6)²) / 2 = 2; × weight 2 = 4. The padded token is ignored.
        let loss = align.loss(&out, &[7], &mask).unwrap().to_scalar::<f32>().unwrap();
        assert!((loss - 4.0).abs() < 1e-6, "{loss}");
    }
}
