//! Token-level knowledge distillation for causal LMs, against a compact cache of the teacher's
//! next-token distributions.
//!
//! Per position: `alpha · CE(next token) + (1 − alpha) · T² · KL(teacher_T ‖ student_T)`.
//!
//! The teacher's whole distribution (49,152 numbers per token for SmolLM2) is not kept. The cache
//! holds, per position, the teacher's `k` largest logits and their token ids, and the log of the
//! rest of its mass, `log R(β) = log Σ_{j ∉ top-k} exp(β·z_j)`, at a few inverse temperatures
//! `β = 1/T` spanning the temperature schedule ([`TopK::grid`]). The KL is then taken over
//! `k + 1` buckets — the top-k tokens and one remainder — on both sides: the student's remainder
//! is the exact sum of its probabilities of the other tokens. `log R(β)` is convex in `β` (a
//! log-sum-exp of linear functions), so between grid points it is interpolated linearly, an
//! over-estimate bounded by the curvature; at a grid point (and with a constant temperature,
//! whose grid is that one point) it is exact. What `k` costs: the bucketed KL is a lower bound of
//! the full KL (grouping outcomes never increases a divergence), missing only how the teacher
//! spreads its remainder among the tokens it ranks below `k`.

use candle_core::{D, DType, Device, Result, Tensor};
use candle_nn::ops::log_softmax;

/// The teacher's outputs on some positions, compressed to its top `k` tokens.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TopK {
    /// Tokens kept per position.
    pub k: usize,
    /// Inverse temperatures at which the remainder's log-mass is stored, ascending.
    pub grid: Vec<f64>,
    /// Token ids, `positions × k`, most likely first.
    pub ids: Vec<u32>,
    /// Their logits, `positions × k`.
    pub logits: Vec<f32>,
    /// `log Σ_{j ∉ top-k} exp(β·z_j)` per position and grid point, `positions × grid.len()`
    /// (`f32::NEG_INFINITY` when the top-k is the whole vocabulary).
    pub remainder: Vec<f32>,
}

impl TopK {
    /// Positions held.
    pub fn positions(&self) -> usize {
        self.ids.len().checked_div(self.k).unwrap_or(0)
    }

    /// The inverse temperatures to store for a schedule running between `t_start` and `t_end`:
    /// `points` values evenly spaced in `β = 1/T` (one when the two are equal).
    pub fn grid_for(t_start: f64, t_end: f64, points: usize) -> Vec<f64> {
        let (lo, hi) = (1.0 / t_start.max(t_end), 1.0 / t_start.min(t_end));
        if (hi - lo).abs() < 1e-12 || points < 2 {
            return vec![lo];
        }
        (0..points).map(|i| lo + (hi - lo) * i as f64 / (points - 1) as f64).collect()
    }

    /// Compresses full teacher logits `(positions, vocab)` (f32, on any device).
    pub fn from_logits(logits: &Tensor, k: usize, grid: &[f64]) -> Result<Self> {
        let rows: Vec<Vec<f32>> = logits.to_dtype(DType::F32)?.to_vec2()?;
        let mut out = TopK { k, grid: grid.to_vec(), ..Default::default() };
        for row in &rows {
            out.push_row(row);
        }
        Ok(out)
    }

    /// Appends one position's full logits.
    pub fn push_row(&mut self, row: &[f32]) {
        let k = self.k.min(row.len());
        let mut order: Vec<u32> = (0..row.len() as u32).collect();
        // Largest first; ties by id, so the cache is deterministic.
        order.select_nth_unstable_by(k.saturating_sub(1).min(row.len() - 1), |&a, &b| {
            row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b))
        });
        let mut top: Vec<u32> = order[..k].to_vec();
        top.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b)));
        let mut kept = vec![false; row.len()];
        for &t in &top {
            kept[t as usize] = true;
        }
        for &beta in &self.grid {
            // log-sum-exp in f64 over the rest, shifted by its maximum.
            let max = row
                .iter()
                .zip(&kept)
                .filter(|(_, k)| !**k)
                .map(|(&z, _)| f64::from(z) * beta)
                .fold(f64::NEG_INFINITY, f64::max);
            let value = if max == f64::NEG_INFINITY {
                f64::NEG_INFINITY
            } else {
                let sum: f64 =
                    row.iter().zip(&kept).filter(|(_, k)| !**k).map(|(&z, _)| (f64::from(z) * beta - max).exp()).sum();
                max + sum.ln()
            };
            self.remainder.push(value as f32);
        }
        for &t in &top {
            self.ids.push(t);
            self.logits.push(row[t as usize]);
        }
        // Fewer tokens than k in the vocabulary: pad with the last one at -inf mass.
        for _ in k..self.k {
            self.ids.push(top[k - 1]);
            self.logits.push(f32::NEG_INFINITY);
        }
    }

    /// The remainder's log-mass at inverse temperature `beta` for position `p`, interpolated
    /// linearly between grid points (clamped at the ends).
    pub fn remainder_at(&self, p: usize, beta: f64) -> f64 {
        let g = self.grid.len();
        let values = &self.remainder[p * g..(p + 1) * g];
        if g == 1 || beta <= self.grid[0] {
            return f64::from(values[0]);
        }
        if beta >= self.grid[g - 1] {
            return f64::from(values[g - 1]);
        }
        let i = self.grid.partition_point(|&b| b <= beta) - 1;
        let w = (beta - self.grid[i]) / (self.grid[i + 1] - self.grid[i]);
        let (a, b) = (f64::from(values[i]), f64::from(values[i + 1]));
        if a == f64::NEG_INFINITY || b == f64::NEG_INFINITY {
            return f64::NEG_INFINITY;
        }
        a + w * (b - a)
    }

    /// The positions `range` of this cache, in order, as a new one.
    pub fn slice(&self, positions: std::ops::Range<usize>) -> TopK {
        let (k, g) = (self.k, self.grid.len());
        TopK {
            k,
            grid: self.grid.clone(),
            ids: self.ids[positions.start * k..positions.end * k].to_vec(),
            logits: self.logits[positions.start * k..positions.end * k].to_vec(),
            remainder: self.remainder[positions.start * g..positions.end * g].to_vec(),
        }
    }

    /// Appends `other` (same `k` and grid).
    pub fn extend(&mut self, other: &TopK) {
        self.ids.extend_from_slice(&other.ids);
        self.logits.extend_from_slice(&other.logits);
        self.remainder.extend_from_slice(&other.remainder);
    }

    /// The teacher's bucketed log-probabilities at temperature `t` for the positions `rows`:
    /// `(rows.len(), k + 1)`, the top-k tokens then the remainder.
    pub fn log_probs(&self, rows: &[usize], t: f64, device: &Device) -> Result<Tensor> {
        let beta = 1.0 / t;
        let k = self.k;
        let mut out = Vec::with_capacity(rows.len() * (k + 1));
        for &p in rows {
            let mut row: Vec<f64> = self.logits[p * k..(p + 1) * k].iter().map(|&z| f64::from(z) * beta).collect();
            row.push(self.remainder_at(p, beta));
            let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
            out.extend(row.iter().map(|v| (v - lse) as f32));
        }
        Tensor::from_vec(out, (rows.len(), k + 1), device)
    }

    /// The top-k token ids of positions `rows`, `(rows.len(), k)` u32.
    pub fn ids_of(&self, rows: &[usize], device: &Device) -> Result<Tensor> {
        let k = self.k;
        let ids: Vec<u32> = rows.iter().flat_map(|&p| self.ids[p * k..(p + 1) * k].iter().copied()).collect();
        Tensor::from_vec(ids, (rows.len(), k), device)
    }
}

/// The smallest probability a bucket is given before its log is taken (the student's remainder
/// when its top-k holds all its mass).
const FLOOR: f64 = 1e-12;

/// The student's bucketed log-probabilities at temperature `t`: `student_logits` `(n, vocab)`,
/// `teacher_ids` `(n, k)` u32 → `(n, k + 1)`, the teacher's top-k tokens then the rest.
pub fn student_bucket_log_probs(student_logits: &Tensor, teacher_ids: &Tensor, t: f64) -> Result<Tensor> {
    let log_p = log_softmax(&(student_logits / t)?, D::Minus1)?;
    let top = log_p.gather(teacher_ids, D::Minus1)?;
    let rest = (1.0 - top.exp()?.sum_keepdim(D::Minus1)?)?.clamp(FLOOR, 1.0)?.log()?;
    Tensor::cat(&[&top, &rest], D::Minus1)
}

/// `T² · KL(teacher_T ‖ student_T)` over the buckets, averaged over the `n` positions:
/// `teacher_log_probs` from [`TopK::log_probs`] (a constant), student logits `(n, vocab)`.
pub fn bucket_kl(student_logits: &Tensor, teacher_ids: &Tensor, teacher_log_probs: &Tensor, t: f64) -> Result<Tensor> {
    let student = student_bucket_log_probs(student_logits, teacher_ids, t)?;
    let teacher = teacher_log_probs.detach();
    let p = teacher.exp()?;
    // p · (log p − log q); a bucket with p = 0 contributes 0 (its log p is -inf, so mask it).
    let log_ratio = (teacher.clamp(FLOOR.ln(), 0.0)? - &student)?;
    let kl = (p * log_ratio)?.sum(D::Minus1)?.mean_all()?;
    kl * (t * t)
}

/// The token-level distillation loss on `n` positions: `alpha · CE(student, targets) + (1 −
/// alpha) · T² · KL`; `alpha = 1` is next-token cross-entropy alone (the teacher is not used).
pub fn token_distillation(
    student_logits: &Tensor,
    targets: &Tensor,
    teacher: Option<(&Tensor, &Tensor)>,
    alpha: f64,
    t: f64,
) -> Result<Tensor> {
    let hard = candle_nn::loss::cross_entropy(student_logits, targets)?;
    match teacher {
        Some((ids, log_probs)) if alpha < 1.0 => {
            let soft = bucket_kl(student_logits, ids, log_probs, t)?;
            (hard * alpha)? + (soft * (1.0 - alpha))?
        }
        _ => Ok(hard),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random_logits(rows: usize, vocab: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..rows).map(|_| (0..vocab).map(|_| rng.random_range(-4.0f32..4.0)).collect()).collect()
    }

    /// The bucketed KL written out in f64 from the definition, sharing no code with the above.
    fn reference_kl(teacher: &[f32], student: &[f32], k: usize, t: f64) -> f64 {
        let softmax = |z: &[f32]| -> Vec<f64> {
            let s: Vec<f64> = z.iter().map(|&v| f64::from(v) / t).collect();
            let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
            let sum: f64 = e.iter().sum();
            e.iter().map(|v| v / sum).collect()
        };
        let (p, q) = (softmax(teacher), softmax(student));
        let mut order: Vec<usize> = (0..teacher.len()).collect();
        order.sort_by(|&a, &b| teacher[b].total_cmp(&teacher[a]));
        let top = &order[..k];
        let mut kl = 0.0;
        for &i in top {
            kl += p[i] * (p[i].ln() - q[i].ln());
        }
        let (pr, qr): (f64, f64) = (0..teacher.len())
            .filter(|i| !top.contains(i))
            .map(|i| (p[i], q[i]))
            .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
        if pr > 0.0 {
            kl += pr * (pr.ln() - qr.ln());
        }
        kl * t * t
    }

    #[test]
    fn the_bucketed_kl_equals_the_definition_at_grid_temperatures() {
        let (rows, vocab, k) = (5, 40, 6);
        let teacher = random_logits(rows, vocab, 1);
        let student = random_logits(rows, vocab, 2);
        let device = Device::Cpu;
        let grid = TopK::grid_for(4.0, 1.0, 4);
        let flat = |m: &[Vec<f32>]| Tensor::from_vec(m.concat(), (rows, vocab), &device).unwrap();
        let cache = TopK::from_logits(&flat(&teacher), k, &grid).unwrap();
        let all: Vec<usize> = (0..rows).collect();
        for &t in &[4.0, 2.0, 1.0] {
            let lp = cache.log_probs(&all, t, &device).unwrap();
            let ids = cache.ids_of(&all, &device).unwrap();
            let ours = bucket_kl(&flat(&student), &ids, &lp, t).unwrap().to_scalar::<f32>().unwrap() as f64;
            let want: f64 = (0..rows).map(|r| reference_kl(&teacher[r], &student[r], k, t)).sum::<f64>() / rows as f64;
            assert!((ours - want).abs() < 1e-4 * want.max(1.0), "T={t}: {ours} vs {want}");
        }
    }

    #[test]
    fn with_the_whole_vocabulary_kept_it_is_the_full_kl_and_zero_against_itself() {
        let (rows, vocab) = (3, 16);
        let device = Device::Cpu;
        let teacher = random_logits(rows, vocab, 3);
        let student = random_logits(rows, vocab, 4);
        let t_tensor = Tensor::from_vec(teacher.concat(), (rows, vocab), &device).unwrap();
        let s_tensor = Tensor::from_vec(student.concat(), (rows, vocab), &device).unwrap();
        let cache = TopK::from_logits(&t_tensor, vocab, &[0.5]).unwrap();
        assert!(cache.remainder.iter().all(|r| *r == f32::NEG_INFINITY));
        let all: Vec<usize> = (0..rows).collect();
        let (ids, lp) = (cache.ids_of(&all, &device).unwrap(), cache.log_probs(&all, 2.0, &device).unwrap());
        let ours = bucket_kl(&s_tensor, &ids, &lp, 2.0).unwrap().to_scalar::<f32>().unwrap() as f64;
        let full = crate::train::loss::soft_kl(&s_tensor, &t_tensor, 2.0).unwrap().to_scalar::<f32>().unwrap() as f64;
        assert!((ours - full).abs() < 1e-4, "{ours} vs {full}");
        let itself = bucket_kl(&t_tensor, &ids, &lp, 2.0).unwrap().to_scalar::<f32>().unwrap();
        assert!(itself.abs() < 1e-5, "{itself}");
    }

    #[test]
    fn between_grid_points_the_remainder_is_close_and_never_below_the_truth() {
        let device = Device::Cpu;
        let teacher = random_logits(4, 200, 5);
        let t_tensor = Tensor::from_vec(teacher.concat(), (4, 200), &device).unwrap();
        let cache = TopK::from_logits(&t_tensor, 8, &TopK::grid_for(4.0, 1.0, 8)).unwrap();
        for (p, row) in teacher.iter().enumerate() {
            let mut sorted = row.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            for t in [3.7, 2.5, 1.3] {
                let beta = 1.0 / t;
                let truth = sorted[8..].iter().map(|&z| (f64::from(z) * beta).exp()).sum::<f64>().ln();
                let ours = cache.remainder_at(p, beta);
                assert!(ours >= truth - 1e-5 && ours - truth < 0.01, "T={t}: {ours} vs {truth}");
            }
        }
    }

    #[test]
    fn alpha_one_is_cross_entropy_alone_and_the_loss_has_gradients() {
        let device = Device::Cpu;
        let logits = candle_core::Var::from_tensor(
            &Tensor::from_vec(random_logits(4, 10, 6).concat(), (4, 10), &device).unwrap(),
        )
        .unwrap();
        let targets = Tensor::new(&[1u32, 2, 3, 4], &device).unwrap();
        let teacher = Tensor::from_vec(random_logits(4, 10, 7).concat(), (4, 10), &device).unwrap();
        let cache = TopK::from_logits(&teacher, 3, &[1.0]).unwrap();
        let all = [0, 1, 2, 3];
        let (ids, lp) = (cache.ids_of(&all, &device).unwrap(), cache.log_probs(&all, 1.0, &device).unwrap());
        let ce = candle_nn::loss::cross_entropy(&logits, &targets).unwrap().to_scalar::<f32>().unwrap();
        let only_ce =
            token_distillation(&logits, &targets, Some((&ids, &lp)), 1.0, 1.0).unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(ce, only_ce);
        let loss = token_distillation(&logits, &targets, Some((&ids, &lp)), 0.5, 1.0).unwrap();
        let grads = loss.backward().unwrap();
        let g = grads.get(&logits).expect("the logits get a gradient");
        assert!(g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
    }
}
