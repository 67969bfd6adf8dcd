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

use crate::model::fused::{data, exp_approx};

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
/// matrix product. Here the forward pass reads each row twice (its maximum, then its sums of
/// exponentials at temperatures 1 and `t`, one sum when `t = 1`) and keeps each row's
/// log-sum-exps for the backward pass, which reads the row once more and writes its gradient:
/// one exponential per value when `t = 1`, two otherwise, in a vectorised `exp`
/// ([`crate::model::fused::exp_approx`]). Rows run in parallel. Off the CPU, the composed form.
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
    student_logits.to_dtype(DType::F32)?.contiguous()?.apply_op1(TokenKd::new(targets, teacher, alpha, t))
}

/// [`fused_token_distillation`] of the logits `hidden · weightᵀ`, the output layer fused in:
/// `hidden` `(positions, width)`, `weight` `(vocabulary, width)`. The logits are computed once
/// outside the autograd graph, and the backward pass returns the gradients of `hidden` and
/// `weight` directly (two matrix products with the logits' gradient). Through candle's graph the
/// `positions × vocabulary` gradient would pass a reshape and a matrix product, each allocating a
/// zero buffer of that size to add into: on a 49,152-token vocabulary, most of a step's backward
/// pass. Off the CPU, the composed form.
pub fn fused_head_distillation(
    hidden: &Tensor,
    weight: &Tensor,
    targets: &[u32],
    teacher: Option<(&[u32], &[f32])>,
    alpha: f64,
    t: f64,
) -> Result<Tensor> {
    if !hidden.device().is_cpu() {
        return fused_token_distillation(&hidden.matmul(&weight.t()?)?, targets, teacher, alpha, t);
    }
    let logits = hidden.detach().to_dtype(DType::F32)?.matmul(&weight.detach().to_dtype(DType::F32)?.t()?)?;
    hidden.apply_op2(weight, HeadKd { loss: TokenKd::new(targets, teacher, alpha, t), logits })
}

/// The fused output layer and loss: the loss's inputs and the logits it is taken of.
struct HeadKd {
    loss: TokenKd,
    /// `hidden · weightᵀ`, contiguous f32, detached.
    logits: Tensor,
}

impl candle_core::CustomOp2 for HeadKd {
    fn name(&self) -> &'static str {
        "head-token-kd"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (_, width) = self.logits.dims2()?;
        let (storage, layout) = self.logits.storage_and_layout();
        let candle_core::Storage::Cpu(storage) = &*storage else {
            candle_core::bail!("head-token-kd: logits off the CPU")
        };
        let loss = self.loss.forward(data(storage, layout, "head-token-kd")?, width);
        Ok((candle_core::CpuStorage::F32(vec![loss]), candle_core::Shape::from(())))
    }

    fn bwd(
        &self,
        hidden: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, width) = self.logits.dims2()?;
        let g = {
            let (storage, layout) = self.logits.storage_and_layout();
            let candle_core::Storage::Cpu(storage) = &*storage else {
                candle_core::bail!("head-token-kd: logits off the CPU")
            };
            let z = data(storage, layout, "head-token-kd")?;
            self.loss.backward(z, width, grad_res)?
        };
        let g = Tensor::from_vec(g, (n, width), hidden.device())?;
        let d_hidden = g.matmul(&weight.detach().to_dtype(DType::F32)?)?.to_dtype(hidden.dtype())?;
        let d_weight = g.t()?.matmul(&hidden.detach().to_dtype(DType::F32)?)?.to_dtype(weight.dtype())?;
        Ok((Some(d_hidden), Some(d_weight)))
    }
}

/// The fused loss: its inputs besides the logits.
struct TokenKd {
    targets: Vec<u32>,
    /// Teacher top-k ids `(n × k)` and bucket log-probabilities `(n × (k + 1))`.
    teacher: Option<(Vec<u32>, Vec<f32>)>,
    alpha: f64,
    t: f64,
    /// Each row's log-sum-exps, from the forward pass for the backward pass.
    log_sum_exps: std::sync::OnceLock<Vec<RowLse>>,
}

/// A row's `log Σ exp(z)` and `log Σ exp(z / t)`.
#[derive(Clone, Copy, Debug)]
struct RowLse {
    at_one: f64,
    at_t: f64,
}

/// The KL term of one row over the teacher's buckets.
struct Buckets {
    /// `Σ_b p_b (log p_b − log Q_b)`.
    kl: f64,
    /// `(token, p_b)` for each of the teacher's top-k tokens.
    top: Vec<(usize, f64)>,
    /// `p_rest / Q_rest`.
    rest_ratio: f64,
}

impl TokenKd {
    fn new(targets: &[u32], teacher: Option<(&[u32], &[f32])>, alpha: f64, t: f64) -> Self {
        TokenKd {
            targets: targets.to_vec(),
            teacher: teacher.filter(|_| alpha < 1.0).map(|(ids, lp)| (ids.to_vec(), lp.to_vec())),
            alpha: if teacher.is_some() { alpha } else { 1.0 },
            t,
            log_sum_exps: std::sync::OnceLock::new(),
        }
    }

    /// The mean loss over the rows of `z` (`width` logits each), keeping each row's
    /// log-sum-exps for [`Self::backward`].
    fn forward(&self, z: &[f32], width: usize) -> f32 {
        use rayon::prelude::*;
        let rows: Vec<(f64, RowLse)> = z
            .par_chunks(width)
            .enumerate()
            .map(|(r, row)| {
                let lse = self.log_sum_exps(row);
                (self.row_loss(r, row, lse), lse)
            })
            .collect();
        // Added in row order: the same loss whatever the thread count.
        let total: f64 = rows.iter().map(|(loss, _)| loss).sum();
        let n = rows.len();
        let _ = self.log_sum_exps.set(rows.into_iter().map(|(_, lse)| lse).collect());
        (total / n.max(1) as f64) as f32
    }

    /// The gradient of the mean loss with respect to `z`, times `grad_res` (the loss's own
    /// gradient, a scalar).
    fn backward(&self, z: &[f32], width: usize, grad_res: &Tensor) -> Result<Vec<f32>> {
        use rayon::prelude::*;
        let n = z.len() / width.max(1);
        let scale = f64::from(grad_res.to_dtype(DType::F32)?.to_scalar::<f32>()?) / n.max(1) as f64;
        let lse = self.log_sum_exps.get();
        let mut g = vec![0f32; z.len()];
        g.par_chunks_mut(width).zip(z.par_chunks(width)).enumerate().for_each(|(r, (g, row))| {
            let lse = lse.map_or_else(|| self.log_sum_exps(row), |all| all[r]);
            self.row_grad(r, row, lse, scale, g);
        });
        Ok(g)
    }

    /// Whether the soft targets' temperature is 1, where both softmaxes are one.
    fn unit_temperature(&self) -> bool {
        (self.t - 1.0).abs() < 1e-12
    }

    fn log_sum_exps(&self, z: &[f32]) -> RowLse {
        let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let at_one = f64::from(max) + sum_exp(z, max, 1.0).ln();
        let at_t = if self.unit_temperature() {
            at_one
        } else {
            f64::from(max) / self.t + sum_exp(z, max, (1.0 / self.t) as f32).ln()
        };
        RowLse { at_one, at_t }
    }

    /// Row `r`'s KL against the teacher's buckets, when there is a teacher.
    fn buckets(&self, r: usize, z: &[f32], lse: RowLse) -> Option<Buckets> {
        let (ids, log_probs) = self.teacher.as_ref()?;
        let k = ids.len() / self.targets.len();
        let ids = &ids[r * k..(r + 1) * k];
        let lp = &log_probs[r * (k + 1)..(r + 1) * (k + 1)];
        let (mut covered, mut kl) = (0.0, 0.0);
        let mut top = Vec::with_capacity(k);
        for (&id, &lp) in ids.iter().zip(lp) {
            let log_q = f64::from(z[id as usize]) / self.t - lse.at_t;
            covered += log_q.exp();
            let p = f64::from(lp).exp();
            if p > 0.0 {
                kl += p * (f64::from(lp) - log_q);
            }
            top.push((id as usize, p));
        }
        let q_rest = (1.0 - covered).clamp(FLOOR, 1.0);
        let p_rest = f64::from(lp[k]).exp();
        if p_rest > 0.0 {
            kl += p_rest * (f64::from(lp[k]) - q_rest.ln());
        }
        Some(Buckets { kl, top, rest_ratio: p_rest / q_rest })
    }

    /// Row `r`'s loss.
    fn row_loss(&self, r: usize, z: &[f32], lse: RowLse) -> f64 {
        let target = self.targets[r] as usize;
        let hard = self.alpha * (lse.at_one - f64::from(z[target]));
        let soft = self.buckets(r, z, lse).map_or(0.0, |b| (1.0 - self.alpha) * self.t * self.t * b.kl);
        hard + soft
    }

    /// Row `r`'s gradient times `scale` into `g`: d/dz_j = alpha·(softmax_j − [j = target]) +
    /// (1 − alpha)·T·q_j·(1 − p_b/Q_b), b the bucket of j (d/ds_j of −Σ_b p_b log Q_b is
    /// q_j (1 − p_b/Q_b) for s = z/T, times T²).
    fn row_grad(&self, r: usize, z: &[f32], lse: RowLse, scale: f64, g: &mut [f32]) {
        let (alpha, t) = (self.alpha, self.t);
        let soft = (1.0 - alpha) * t;
        let buckets = self.buckets(r, z, lse);
        let rest = buckets.as_ref().map_or(0.0, |b| soft * (1.0 - b.rest_ratio));
        let shift_one = lse.at_one as f32;
        if self.unit_temperature() {
            // Both softmaxes are one: alpha·p + soft·(1 − rest ratio)·p.
            let c = (scale * (alpha + rest)) as f32;
            for (g, &v) in g.iter_mut().zip(z) {
                *g = c * exp_approx(v - shift_one);
            }
        } else {
            let (a, c) = ((scale * alpha) as f32, (scale * rest) as f32);
            let (beta, shift_t) = ((1.0 / t) as f32, lse.at_t as f32);
            for (g, &v) in g.iter_mut().zip(z) {
                *g = a * exp_approx(v - shift_one) + c * exp_approx(v * beta - shift_t);
            }
        }
        g[self.targets[r] as usize] -= (scale * alpha) as f32;
        if let Some(b) = buckets {
            for &(id, p) in &b.top {
                let q = (f64::from(z[id]) / t - lse.at_t).exp();
                // A top-k token is its own bucket: soft·(q − p) in place of soft·q·(1 − rest ratio).
                g[id] += (scale * soft * (q * b.rest_ratio - p)) as f32;
            }
        }
    }
}

/// `Σ exp((v − shift) · scale)` over `z`: f32 lanes within blocks of 64 values (so the loop
/// vectorises), the blocks added in f64.
fn sum_exp(z: &[f32], shift: f32, scale: f32) -> f64 {
    const LANES: usize = 8;
    z.chunks(64)
        .map(|block| {
            let mut lanes = [0f32; LANES];
            let mut chunks = block.chunks_exact(LANES);
            for c in &mut chunks {
                for (l, &v) in lanes.iter_mut().zip(c) {
                    *l += exp_approx((v - shift) * scale);
                }
            }
            let tail: f32 = chunks.remainder().iter().map(|&v| exp_approx((v - shift) * scale)).sum();
            f64::from(lanes.iter().sum::<f32>() + tail)
        })
        .sum()
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
        let (_, width) = layout.shape().dims2()?;
        let loss = self.forward(data(storage, layout, "token-kd")?, width);
        Ok((candle_core::CpuStorage::F32(vec![loss]), candle_core::Shape::from(())))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let (n, width) = arg.dims2()?;
        let g = {
            let (storage, layout) = arg.storage_and_layout();
            let candle_core::Storage::Cpu(storage) = &*storage else {
                candle_core::bail!("token-kd: the CPU operation's input is not on the CPU")
            };
            self.backward(data(storage, layout, "token-kd")?, width, grad_res)?
        };
        Ok(Some(Tensor::from_vec(g, (n, width), arg.device())?))
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

    #[test]
    fn the_fused_output_layer_and_loss_equal_the_composed_ones_in_value_and_gradients() {
        let device = Device::Cpu;
        let (rows, width, vocab, k) = (7, 6, 40, 4);
        let hidden = Tensor::from_vec(random_logits(rows, width, 10).concat(), (rows, width), &device).unwrap();
        let weight = Tensor::from_vec(random_logits(vocab, width, 11).concat(), (vocab, width), &device).unwrap();
        let teacher = Tensor::from_vec(random_logits(rows, vocab, 12).concat(), (rows, vocab), &device).unwrap();
        let targets: Vec<u32> = (0..rows as u32).map(|r| (r * 11) % vocab as u32).collect();
        let cache = TopK::from_logits(&teacher, k, &TopK::grid_for(2.0, 1.0, 3)).unwrap();
        let all: Vec<usize> = (0..rows).collect();
        for (alpha, t) in [(0.5, 2.0), (0.3, 1.0), (1.0, 1.0)] {
            let (ids, lp) = (cache.ids_of(&all, &device).unwrap(), cache.log_probs(&all, t, &device).unwrap());
            let (h1, w1) =
                (candle_core::Var::from_tensor(&hidden).unwrap(), candle_core::Var::from_tensor(&weight).unwrap());
            let logits = h1.matmul(&w1.t().unwrap()).unwrap();
            let composed = token_distillation(
                &logits,
                &Tensor::new(targets.as_slice(), &device).unwrap(),
                Some((&ids, &lp)),
                alpha,
                t,
            )
            .unwrap();
            let g1 = composed.backward().unwrap();
            let (h2, w2) =
                (candle_core::Var::from_tensor(&hidden).unwrap(), candle_core::Var::from_tensor(&weight).unwrap());
            let (ids_v, lp_v): (Vec<u32>, Vec<f32>) =
                (ids.flatten_all().unwrap().to_vec1().unwrap(), lp.flatten_all().unwrap().to_vec1().unwrap());
            let fused = fused_head_distillation(&h2, &w2, &targets, Some((&ids_v, &lp_v)), alpha, t).unwrap();
            let g2 = fused.backward().unwrap();
            let (a, b) = (composed.to_scalar::<f32>().unwrap(), fused.to_scalar::<f32>().unwrap());
            assert!((a - b).abs() < 1e-4 * a.abs().max(1.0), "alpha {alpha} T {t}: loss {a} vs {b}");
            for (name, x, y) in [("hidden", &h1, &h2), ("weight", &w1, &w2)] {
                let (gx, gy) = (g1.get(x).unwrap(), g2.get(y).expect("the fused op gives a gradient"));
                let diff = (gx - gy).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                let size = gx.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(
                    size > 0.0 && diff < 1e-5 * size.max(1.0),
                    "alpha {alpha} T {t}: {name} gradients differ by {diff}"
                );
            }
        }
    }
}
