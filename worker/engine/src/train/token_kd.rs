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
        // The rest's largest logit (scaled by β > 0 it stays the largest): found once.
        let rest_max =
            row.iter().zip(&kept).filter(|(_, k)| !**k).map(|(&z, _)| f64::from(z)).fold(f64::NEG_INFINITY, f64::max);
        for &beta in &self.grid {
            // log-sum-exp in f64 over the rest, shifted by its maximum.
            let max = rest_max * beta;
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

    /// The teacher's bucketed log-probabilities at temperature `t` for the positions `rows`,
    /// `rows.len() × (k + 1)` values: the top-k tokens then the remainder.
    pub fn bucket_log_probs(&self, rows: &[usize], t: f64) -> Vec<f32> {
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
        out
    }

    /// [`Self::bucket_log_probs`] as a `(rows.len(), k + 1)` tensor.
    pub fn log_probs(&self, rows: &[usize], t: f64, device: &Device) -> Result<Tensor> {
        Tensor::from_vec(self.bucket_log_probs(rows, t), (rows.len(), self.k + 1), device)
    }

    /// The top-k token ids of positions `rows`, `rows.len() × k` values.
    pub fn bucket_ids(&self, rows: &[usize]) -> Vec<u32> {
        let k = self.k;
        rows.iter().flat_map(|&p| self.ids[p * k..(p + 1) * k].iter().copied()).collect()
    }

    /// [`Self::bucket_ids`] as a `(rows.len(), k)` u32 tensor.
    pub fn ids_of(&self, rows: &[usize], device: &Device) -> Result<Tensor> {
        Tensor::from_vec(self.bucket_ids(rows), (rows.len(), self.k), device)
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

/// [`token_distillation`] as one fused CPU operation with a hand-written backward pass: on a
/// vocabulary of 49,152 tokens the composed form's log-softmaxes, gathers and their gradients
/// are passes over `positions × vocabulary` buffers, several times the cost of the output layer's
/// matrix product. Here each row is read twice forward (maximum, then the sums at temperatures 1
/// and `t`) and twice backward, in parallel over rows. Off the CPU, the composed form.
pub fn fused_token_distillation(
    student_logits: &Tensor,
    targets: &[u32],
    teacher: Option<(&[u32], &[f32])>,
    alpha: f64,
    t: f64,
) -> Result<Tensor> {
    let device = student_logits.device();
    if !device.is_cpu() {
        let targets = Tensor::new(targets, device)?;
        let n = targets.dim(0)?;
        return match teacher {
            Some((ids, log_probs)) => {
                let k = ids.len() / n.max(1);
                let ids = Tensor::from_vec(ids.to_vec(), (n, k), device)?;
                let log_probs = Tensor::from_vec(log_probs.to_vec(), (n, k + 1), device)?;
                token_distillation(student_logits, &targets, Some((&ids, &log_probs)), alpha, t)
            }
            None => token_distillation(student_logits, &targets, None, 1.0, t),
        };
    }
    let op = TokenKd {
        targets: targets.to_vec(),
        teacher: teacher.filter(|_| alpha < 1.0).map(|(ids, lp)| (ids.to_vec(), lp.to_vec())),
        alpha: if teacher.is_some() { alpha } else { 1.0 },
        t,
    };
    student_logits.to_dtype(DType::F32)?.contiguous()?.apply_op1(op)
}

/// The fused loss: its inputs besides the logits.
struct TokenKd {
    targets: Vec<u32>,
    /// Teacher top-k ids `(n × k)` and bucket log-probabilities `(n × (k + 1))`.
    teacher: Option<(Vec<u32>, Vec<f32>)>,
    alpha: f64,
    t: f64,
}

impl TokenKd {
    /// One row's loss and, when `grad` is given, its gradient (not yet divided by the rows).
    fn row(&self, r: usize, z: &[f32], grad: Option<&mut [f32]>) -> f64 {
        let (alpha, t) = (self.alpha, self.t);
        let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let (mut sum1, mut sum_t) = (0f64, 0f64);
        for &v in z {
            sum1 += f64::from(v - max).exp();
            sum_t += (f64::from(v - max) / t).exp();
        }
        let lse1 = f64::from(max) + sum1.ln();
        let lse_t = f64::from(max) / t + sum_t.ln();
        let target = self.targets[r] as usize;
        let mut loss = alpha * (lse1 - f64::from(z[target]));
        // The teacher's buckets: p (its probabilities) and Q (the student's) per bucket.
        let mut ratios: Vec<(usize, f64)> = vec![];
        let mut rest_ratio = 0.0;
        if let Some((ids, log_probs)) = &self.teacher {
            let k = ids.len() / self.targets.len();
            let ids = &ids[r * k..(r + 1) * k];
            let lp = &log_probs[r * (k + 1)..(r + 1) * (k + 1)];
            let mut covered = 0.0;
            let mut kl = 0.0;
            for (i, &id) in ids.iter().enumerate() {
                let q = (f64::from(z[id as usize]) / t - lse_t).exp();
                covered += q;
                let p = f64::from(lp[i]).exp();
                if p > 0.0 {
                    kl += p * (f64::from(lp[i]) - q.max(FLOOR).ln());
                }
                ratios.push((id as usize, p / q.max(FLOOR)));
            }
            let q_rest = (1.0 - covered).clamp(FLOOR, 1.0);
            let p_rest = f64::from(lp[k]).exp();
            if p_rest > 0.0 {
                kl += p_rest * (f64::from(lp[k]) - q_rest.ln());
            }
            rest_ratio = p_rest / q_rest;
            loss += (1.0 - alpha) * t * t * kl;
        }
        if let Some(g) = grad {
            // d/dz_j: alpha·(softmax_j − [j = target]) + (1 − alpha)·T·q_j·(1 − p_b/Q_b), b the
            // bucket of j (from d/ds_j of −Σ_b p_b log Q_b = q_j (1 − p_b/Q_b), s = z/T, times T²).
            let soft = (1.0 - alpha) * t;
            for (j, (g, &v)) in g.iter_mut().zip(z).enumerate() {
                let p1 = (f64::from(v) - lse1).exp();
                let mut d = alpha * p1;
                if self.teacher.is_some() {
                    let q = (f64::from(v) / t - lse_t).exp();
                    d += soft * q * (1.0 - rest_ratio);
                }
                if j == target {
                    d -= alpha;
                }
                *g = d as f32;
            }
            if self.teacher.is_some() {
                for &(id, ratio) in &ratios {
                    let q = (f64::from(z[id]) / t - lse_t).exp();
                    // Replace the remainder's factor with the token's own bucket's.
                    g[id] += (soft * q * (rest_ratio - ratio)) as f32;
                }
            }
        }
        loss
    }
}

impl candle_core::CustomOp1 for TokenKd {
    fn name(&self) -> &'static str {
        "token-kd"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use rayon::prelude::*;
        let (n, width) = layout.shape().dims2()?;
        let all = storage.as_slice::<f32>()?;
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("token-kd: needs contiguous logits")
        };
        let z = &all[start..end];
        let total: f64 = z.par_chunks(width).enumerate().map(|(r, row)| self.row(r, row, None)).sum();
        Ok((candle_core::CpuStorage::F32(vec![(total / n.max(1) as f64) as f32]), candle_core::Shape::from(())))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        use rayon::prelude::*;
        let (n, width) = arg.dims2()?;
        let z: Vec<f32> = arg.flatten_all()?.to_vec1()?;
        let mut g = vec![0f32; z.len()];
        g.par_chunks_mut(width).zip(z.par_chunks(width)).enumerate().for_each(|(r, (g, row))| {
            self.row(r, row, Some(g));
        });
        let scale = f64::from(grad_res.to_dtype(DType::F32)?.to_scalar::<f32>()?) / n.max(1) as f64;
        Ok(Some((Tensor::from_vec(g, (n, width), arg.device())? * scale)?))
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

    #[test]
    fn the_fused_loss_equals_the_composed_one_in_value_and_gradient() {
        let device = Device::Cpu;
        let (rows, vocab, k) = (6, 50, 5);
        let student = Tensor::from_vec(random_logits(rows, vocab, 8).concat(), (rows, vocab), &device).unwrap();
        let teacher = Tensor::from_vec(random_logits(rows, vocab, 9).concat(), (rows, vocab), &device).unwrap();
        let targets: Vec<u32> = (0..rows as u32).map(|r| (r * 7) % vocab as u32).collect();
        let cache = TopK::from_logits(&teacher, k, &TopK::grid_for(3.0, 1.0, 4)).unwrap();
        let all: Vec<usize> = (0..rows).collect();
        for (alpha, t) in [(0.5, 2.0), (0.2, 1.0), (1.0, 1.5)] {
            let (ids, lp) = (cache.ids_of(&all, &device).unwrap(), cache.log_probs(&all, t, &device).unwrap());
            let var = candle_core::Var::from_tensor(&student).unwrap();
            let composed = token_distillation(
                &var,
                &Tensor::new(targets.as_slice(), &device).unwrap(),
                Some((&ids, &lp)),
                alpha,
                t,
            )
            .unwrap();
            let g_composed = composed.backward().unwrap().get(&var).unwrap().clone();
            let var2 = candle_core::Var::from_tensor(&student).unwrap();
            let (ids_v, lp_v): (Vec<u32>, Vec<f32>) =
                (ids.flatten_all().unwrap().to_vec1().unwrap(), lp.flatten_all().unwrap().to_vec1().unwrap());
            let fused = fused_token_distillation(&var2, &targets, Some((&ids_v, &lp_v)), alpha, t).unwrap();
            let g_fused = fused.backward().unwrap().get(&var2).unwrap().clone();
            let (a, b) = (composed.to_scalar::<f32>().unwrap(), fused.to_scalar::<f32>().unwrap());
            assert!((a - b).abs() < 1e-4 * a.abs().max(1.0), "alpha {alpha} T {t}: loss {a} vs {b}");
            let diff = (g_composed - g_fused).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-5, "alpha {alpha} T {t}: gradients differ by {diff}");
        }
    }
}
