//! Fused CPU operations with hand-written backward passes: the training hot path of the encoder.
//!
//! candle differentiates a composed operation op by op. A LayerNorm written as tensor ops
//! (`layer_norm_slow`) is a dozen nodes, and every node costs a pass over memory forward, another
//! backward, and a zero-filled gradient buffer that the result is added into; the gradient of a
//! broadcast bias or LayerNorm scale is a sum over the leading dimensions, which candle's CPU
//! backend computes element by element with an integer division each. Profiling the distillation
//! step (`perf` on the `kd_vs_torch` bench) put more time in those passes than in the matrix
//! products. Each operation here is one pass forward and one backward, parallel over rows.
//!
//! Off the CPU (the `cuda` feature) the same functions fall back to the composed candle operations,
//! which run on every backend; the tests check that both paths agree in value and gradient.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, D, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

/// Values handed to one rayon task: enough work to outweigh the task's overhead.
const VALUES_PER_TASK: usize = 4096;

/// Values per rayon task for rows of `width` values: whole rows, at least one.
fn task_len(width: usize) -> usize {
    (VALUES_PER_TASK / width.max(1)).max(1) * width.max(1)
}

/// A buffer the size of `x` whose rows of `width` values `f(row index, out row, x row)` fills,
/// in parallel.
fn map_rows(x: &[f32], width: usize, f: impl Fn(usize, &mut [f32], &[f32]) + Sync) -> Vec<f32> {
    let (mut out, chunk) = (vec![0f32; x.len()], task_len(width));
    out.par_chunks_mut(chunk).zip(x.par_chunks(chunk)).enumerate().for_each(|(task, (o, x))| {
        let first = task * (chunk / width.max(1));
        for (i, (o, x)) in o.chunks_mut(width).zip(x.chunks(width)).enumerate() {
            f(first + i, o, x);
        }
    });
    out
}

/// Like [`map_rows`], from the matching rows of two equally shaped inputs.
fn map_rows2(a: &[f32], b: &[f32], width: usize, f: impl Fn(&mut [f32], &[f32], &[f32]) + Sync) -> Vec<f32> {
    let (mut out, chunk) = (vec![0f32; a.len()], task_len(width));
    out.par_chunks_mut(chunk).zip(a.par_chunks(chunk).zip(b.par_chunks(chunk))).for_each(|(o, (a, b))| {
        for ((o, a), b) in o.chunks_mut(width).zip(a.chunks(width)).zip(b.chunks(width)) {
            f(o, a, b);
        }
    });
    out
}

/// Per-task partial sums of `len` values from `partial(chunk of rows)`, added up in task order:
/// the same result whatever the thread count (rayon's own fold/reduce splits adaptively, which
/// would make a run's floating-point sums depend on scheduling).
fn sum_partials(partials: Vec<Vec<f32>>, len: usize) -> Vec<f32> {
    partials.into_iter().fold(vec![0f32; len], |mut total, p| {
        total.iter_mut().zip(&p).for_each(|(t, v)| *t += v);
        total
    })
}

/// The contiguous `f32` data of an operand.
pub(crate) fn data<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    let all = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&all[start..end]),
        None => bail!("{op}: needs a contiguous operand"),
    }
}

/// `e^x` in f32 to within 2 ulp for `x` in [−87, 88] (0 below, a large finite value above), in
/// plain arithmetic that the compiler vectorises over a loop — libm's `exp` is a scalar call and
/// was a quarter of a causal-LM training step (49,152-token softmaxes). Cephes' `expf`: `x =
/// n·ln 2 + r` with `|r| ≤ ln 2 / 2`, a degree-7 polynomial for `e^r`, and `2^n` put in the
/// exponent bits.
#[inline(always)]
pub fn exp_approx(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5·2²³ rounds to the nearest integer without a rounding instruction.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = ((((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5)
        * r
        * r)
        + r
        + 1.0;
    f32::from_bits(((n as i32 + 127) as u32) << 23) * p
}

/// The last dimension of `layout` and the number of rows before it.
fn rows_and_width(layout: &Layout) -> (usize, usize) {
    let width = layout.dims().last().copied().unwrap_or(1);
    (layout.shape().elem_count() / width.max(1), width)
}

/// `x + bias`, `bias` broadcast over the rows of `x` (its last dimension matches).
pub fn bias_add(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() { x.contiguous()?.apply_op2(&bias.contiguous()?, BiasAdd) } else { x.broadcast_add(bias) }
}

struct BiasAdd;

impl CustomOp2 for BiasAdd {
    fn name(&self) -> &'static str {
        "bias-add"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, bias) = (data(s1, l1, self.name())?, data(s2, l2, self.name())?);
        let (_, width) = rows_and_width(l1);
        if bias.len() != width {
            bail!("bias-add: bias of {} for rows of {width}", bias.len());
        }
        let out = map_rows(x, width, |_, o, x| {
            for ((o, x), b) in o.iter_mut().zip(x).zip(bias) {
                *o = x + b;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let bias_grad = grad.contiguous()?.apply_op1_no_bwd(&ColumnSum)?;
        Ok((Some(grad.clone()), Some(bias_grad)))
    }
}

/// The sum over all rows: `(…, width)` → `(width)`.
struct ColumnSum;

impl CustomOp1 for ColumnSum {
    fn name(&self) -> &'static str {
        "column-sum"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = data(storage, layout, self.name())?;
        let (_, width) = rows_and_width(layout);
        let partials = x
            .par_chunks(task_len(width))
            .map(|rows| {
                let mut acc = vec![0f32; width];
                for row in rows.chunks(width) {
                    acc.iter_mut().zip(row).for_each(|(a, v)| *a += v);
                }
                acc
            })
            .collect();
        Ok((CpuStorage::F32(sum_partials(partials, width)), Shape::from(width)))
    }
}

/// LayerNorm over the last dimension: `(x − mean) / sqrt(var + eps) · weight + bias`.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
    if x.device().is_cpu() {
        x.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, LayerNorm { eps })
    } else {
        candle_nn::ops::layer_norm_slow(x, weight, bias, eps)
    }
}

/// Mean and `1 / sqrt(var + eps)` of one row.
fn moments(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = row.iter().sum::<f32>() / n;
    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

struct LayerNorm {
    eps: f32,
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        let (x, weight, bias) = (data(s1, l1, name)?, data(s2, l2, name)?, data(s3, l3, name)?);
        let (_, width) = rows_and_width(l1);
        if weight.len() != width || bias.len() != width {
            bail!("layer-norm: weight {} and bias {} for rows of {width}", weight.len(), bias.len());
        }
        let out = map_rows(x, width, |_, o, x| {
            let (mean, rstd) = moments(x, self.eps);
            for (((o, x), w), b) in o.iter_mut().zip(x).zip(weight).zip(bias) {
                *o = (x - mean) * rstd * w + b;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let width = x.dim(D::Minus1)?;
        let rows = x.elem_count() / width;
        let packed = x.apply_op3_no_bwd(weight, &grad.contiguous()?, &LayerNormBackward { eps: self.eps })?;
        let x_grad = packed.narrow(0, 0, rows)?.reshape(x.shape())?;
        Ok((Some(x_grad), Some(packed.get(rows)?), Some(packed.get(rows + 1)?)))
    }
}

/// The gradients of [`LayerNorm`] from `(x, weight, output gradient)`, packed as one
/// `(rows + 2, width)` tensor: the input's gradient row by row, then the weight's, then the bias's.
///
/// With `x̂ = (x − mean)·rstd` and `g = grad·weight`, per row:
/// `dx = rstd · (g − mean(g) − x̂ · mean(g·x̂))`; `dweight = Σ_rows grad·x̂`; `dbias = Σ_rows grad`.
struct LayerNormBackward {
    eps: f32,
}

impl CustomOp3 for LayerNormBackward {
    fn name(&self) -> &'static str {
        "layer-norm-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        let (x, weight, grad) = (data(s1, l1, name)?, data(s2, l2, name)?, data(s3, l3, name)?);
        let (rows, width) = rows_and_width(l1);
        let mut out = vec![0f32; (rows + 2) * width];
        let (x_grad, param_grads) = out.split_at_mut(rows * width);
        let chunk = task_len(width);
        let partials = x_grad
            .par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk).zip(grad.par_chunks(chunk)))
            .map(|(dx, (x, dy))| {
                let mut acc = vec![0f32; 2 * width];
                let mut g = vec![0f32; width];
                for ((dx, x), dy) in dx.chunks_mut(width).zip(x.chunks(width)).zip(dy.chunks(width)) {
                    let (mean, rstd) = moments(x, self.eps);
                    let (mut g_mean, mut gx_mean) = (0f32, 0f32);
                    for i in 0..width {
                        let xhat = (x[i] - mean) * rstd;
                        g[i] = dy[i] * weight[i];
                        g_mean += g[i];
                        gx_mean += g[i] * xhat;
                        acc[i] += dy[i] * xhat;
                        acc[width + i] += dy[i];
                    }
                    g_mean /= width as f32;
                    gx_mean /= width as f32;
                    for i in 0..width {
                        let xhat = (x[i] - mean) * rstd;
                        dx[i] = rstd * (g[i] - g_mean - xhat * gx_mean);
                    }
                }
                acc
            })
            .collect();
        param_grads.copy_from_slice(&sum_partials(partials, 2 * width));
        Ok((CpuStorage::F32(out), Shape::from((rows + 2, width))))
    }
}

/// GELU with the exact error function: `x · Φ(x) = 0.5 · x · (1 + erf(x / √2))`.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() { x.contiguous()?.apply_op1(Gelu) } else { x.gelu_erf() }
}

fn normal_cdf(x: f32) -> f32 {
    0.5 * (1.0 + candle_core::cpu::erf::erf_f32(x * std::f32::consts::FRAC_1_SQRT_2))
}

struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "gelu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = data(storage, layout, self.name())?;
        // Elementwise: any row length will do (the last row may be shorter).
        let out = map_rows(x, VALUES_PER_TASK, |_, o, x| {
            o.iter_mut().zip(x).for_each(|(o, &x)| *o = x * normal_cdf(x));
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&grad.contiguous()?, &GeluBackward)?))
    }
}

/// `grad · d/dx (x·Φ(x)) = grad · (Φ(x) + x·φ(x))`, from `(x, grad)`.
struct GeluBackward;

impl CustomOp2 for GeluBackward {
    fn name(&self) -> &'static str {
        "gelu-backward"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, grad) = (data(s1, l1, self.name())?, data(s2, l2, self.name())?);
        let inv_sqrt_2pi = 1.0 / (2.0 * std::f32::consts::PI).sqrt();
        let out = map_rows2(x, grad, VALUES_PER_TASK, |o, x, g| {
            for ((o, &x), &g) in o.iter_mut().zip(x).zip(g) {
                *o = g * (normal_cdf(x) + x * (-0.5 * x * x).exp() * inv_sqrt_2pi);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Attention weights: `softmax(scores · scale + mask)` over the last dimension, for `scores`
/// `(batch, heads, queries, keys)` and an additive `mask` `(batch, keys)` (0 for real tokens, a
/// large negative number for padding). The mask receives no gradient.
pub fn attention_softmax(scores: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    if scores.device().is_cpu() {
        scores.contiguous()?.apply_op2(&mask.contiguous()?, AttentionSoftmax { scale: scale as f32 })
    } else {
        let (batch, keys) = mask.dims2()?;
        let scaled = (scores * scale)?.broadcast_add(&mask.reshape((batch, 1, 1, keys))?)?;
        candle_nn::ops::softmax(&scaled, D::Minus1)
    }
}

struct AttentionSoftmax {
    scale: f32,
}

impl CustomOp2 for AttentionSoftmax {
    fn name(&self) -> &'static str {
        "attention-softmax"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (scores, mask) = (data(s1, l1, self.name())?, data(s2, l2, self.name())?);
        let (rows, keys) = rows_and_width(l1);
        if l1.dims().len() != 4 || mask.len() != l1.dims()[0] * keys {
            bail!("attention-softmax: scores {:?} and a mask of {} values", l1.dims(), mask.len());
        }
        let rows_per_example = rows / l1.dims()[0].max(1);
        let out = map_rows(scores, keys, |row, o, s| {
            let m = &mask[(row / rows_per_example) * keys..][..keys];
            let mut max = f32::NEG_INFINITY;
            for ((o, s), m) in o.iter_mut().zip(s).zip(m) {
                *o = s * self.scale + m;
                max = max.max(*o);
            }
            let mut total = 0f32;
            for o in o.iter_mut() {
                *o = (*o - max).exp();
                total += *o;
            }
            o.iter_mut().for_each(|o| *o /= total);
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _scores: &Tensor,
        _mask: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let scores_grad = res.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxBackward { scale: self.scale })?;
        Ok((Some(scores_grad), None))
    }
}

/// `scale · y · (grad − Σ grad·y)` per row, from the softmax output `y` and `grad`.
struct SoftmaxBackward {
    scale: f32,
}

impl CustomOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "softmax-backward"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (y, grad) = (data(s1, l1, self.name())?, data(s2, l2, self.name())?);
        let (_, width) = rows_and_width(l1);
        let out = map_rows2(y, grad, width, |o, y, g| {
            let dot: f32 = y.iter().zip(g).map(|(y, g)| y * g).sum();
            for ((o, y), g) in o.iter_mut().zip(y).zip(g) {
                *o = self.scale * y * (g - dot);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn random(shape: &[usize], seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0..2.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }

    /// Runs `fused` and `composed` on the same variables, each followed by a weighted sum (so the
    /// output gradient is not uniform), and checks values and every variable's gradient agree.
    fn agree(
        inputs: &[Tensor],
        fused: impl Fn(&[Tensor]) -> Result<Tensor>,
        composed: impl Fn(&[Tensor]) -> Result<Tensor>,
        tol: f32,
    ) {
        let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
        let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let (a, b) = (fused(&tensors).unwrap(), composed(&tensors).unwrap());
        assert!(max_diff(&a, &b) < tol, "values differ by {}", max_diff(&a, &b));
        let weights = random(a.dims(), 99);
        let grads_a = (&a * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let grads_b = (&b * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        for (i, v) in vars.iter().enumerate() {
            let (ga, gb) = (grads_a.get(v), grads_b.get(v));
            match (ga, gb) {
                (Some(ga), Some(gb)) => {
                    assert!(max_diff(ga, gb) < tol, "input {i}: gradients differ by {}", max_diff(ga, gb))
                }
                (None, None) => {}
                _ => panic!("input {i}: a gradient on one side only"),
            }
        }
    }

    #[test]
    fn exp_approx_is_within_two_ulp_of_exp() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -87.0 + 175.0 * i as f32 / 200_000.0;
            let (ours, exact) = (f64::from(exp_approx(x)), f64::from(x).exp());
            worst = worst.max((ours - exact).abs() / exact);
        }
        assert!(worst < 2.5e-7, "relative error {worst}");
        assert_eq!(exp_approx(-1000.0), exp_approx(-87.0));
        assert!(exp_approx(1000.0).is_finite());
    }

    #[test]
    fn bias_add_matches_broadcast_add_and_sums_its_gradient_over_rows() {
        agree(
            &[random(&[3, 5, 7], 1), random(&[7], 2)],
            |t| bias_add(&t[0], &t[1]),
            |t| t[0].broadcast_add(&t[1]),
            1e-5,
        );
        // The bias's gradient is the column sum of the output gradient: with a plain sum, the row count.
        let x = Var::from_tensor(&random(&[40, 3], 3)).unwrap();
        let b = Var::from_tensor(&random(&[3], 4)).unwrap();
        let grads = bias_add(x.as_tensor(), b.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
        assert_eq!(grads.get(&b).unwrap().to_vec1::<f32>().unwrap(), vec![40.0; 3]);
    }

    #[test]
    fn layer_norm_matches_the_composed_one_in_value_and_gradient() {
        // 70 rows: more than one rayon task, so the partial sums of the weight's gradient are reduced.
        let inputs = [random(&[2, 35, 24], 5), random(&[24], 6), random(&[24], 7)];
        agree(
            &inputs,
            |t| layer_norm(&t[0], &t[1], &t[2], 1e-12),
            |t| candle_nn::ops::layer_norm_slow(&t[0], &t[1], &t[2], 1e-12),
            1e-4,
        );
        // A known row: [1, 2, 3] has mean 2 and variance 2/3.
        let x = Tensor::new(&[[1f32, 2., 3.]], &Device::Cpu).unwrap();
        let ones = Tensor::ones(3, candle_core::DType::F32, &Device::Cpu).unwrap();
        let y = layer_norm(&x, &ones, &ones.zeros_like().unwrap(), 0.0).unwrap().to_vec2::<f32>().unwrap();
        let s = (2f32 / 3.0).sqrt();
        for (got, want) in y[0].iter().zip([-1.0 / s, 0.0, 1.0 / s]) {
            assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        }
    }

    #[test]
    fn parameter_gradients_do_not_depend_on_the_thread_count() {
        // Sums over rows are added in task order, so a fixed seed gives the same run on 1 or 3 threads.
        let (x, w, b) = (random(&[3, 700, 24], 10), random(&[24], 11), random(&[24], 12));
        let grads = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let (wv, bv) = (Var::from_tensor(&w).unwrap(), Var::from_tensor(&b).unwrap());
                let y = layer_norm(&x, wv.as_tensor(), bv.as_tensor(), 1e-12).unwrap();
                let y = bias_add(&(&y * &x).unwrap(), bv.as_tensor()).unwrap();
                let g = y.sum_all().unwrap().backward().unwrap();
                (g.get(&wv).unwrap().to_vec1::<f32>().unwrap(), g.get(&bv).unwrap().to_vec1::<f32>().unwrap())
            })
        };
        assert_eq!(grads(1), grads(3));
    }

    #[test]
    fn gelu_matches_candles_in_value_and_gradient() {
        agree(&[random(&[4, 1000], 8)], |t| gelu(&t[0]), |t| t[0].gelu_erf(), 1e-5);
        // gelu(1) = Φ(1) = 0.841345; gelu'(0) = 0.5.
        let x = Var::new(&[1f32, 0.0], &Device::Cpu).unwrap();
        let y = gelu(x.as_tensor()).unwrap();
        assert!((y.to_vec1::<f32>().unwrap()[0] - 0.841_345).abs() < 1e-5);
        let g = y.sum_all().unwrap().backward().unwrap().get(&x).unwrap().to_vec1::<f32>().unwrap();
        assert!((g[1] - 0.5).abs() < 1e-6);
    }

    #[test]
    fn attention_softmax_matches_the_composed_one_and_masks_padding() {
        let scores = random(&[2, 3, 5, 6], 9);
        let mask = Tensor::new(&[[0f32, 0., 0., 0., -1e4, -1e4], [0., 0., 0., 0., 0., 0.]], &Device::Cpu).unwrap();
        agree(
            std::slice::from_ref(&scores),
            |t| attention_softmax(&t[0], &mask, 0.125),
            |t| candle_nn::ops::softmax(&(&t[0] * 0.125)?.broadcast_add(&mask.reshape((2, 1, 1, 6))?)?, D::Minus1),
            1e-5,
        );
        let p = attention_softmax(&scores, &mask, 0.125).unwrap();
        let padded = p.narrow(0, 0, 1).unwrap().narrow(3, 4, 2).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(padded < 1e-6, "padding got weight {padded}");
        let rows = p.sum(D::Minus1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(rows.iter().all(|s| (s - 1.0).abs() < 1e-5));
    }
}
