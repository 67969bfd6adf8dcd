//! The knowledge-distillation loss (Hinton et al., 2015, "Distilling the Knowledge in a Neural
//! Network"):
//!
//! `alpha · CE(student, labels) + (1 − alpha) · T² · KL(softmax(teacher/T) ‖ softmax(student/T))`
//!
//! plus feature-alignment terms: MSE between (projected) hidden states over real tokens, and the
//! cosine distance between pooled embeddings. candle_nn has no KL loss; it is written here from
//! `log_softmax`.

use candle_core::{D, Result, Tensor};
use candle_nn::ops::log_softmax;

/// `T² · KL(softmax(teacher/T) ‖ softmax(student/T))`, averaged over the batch. The T² factor
/// keeps the soft term's gradients on the same scale as the hard term's when T changes.
pub fn soft_kl(student_logits: &Tensor, teacher_logits: &Tensor, temperature: f64) -> Result<Tensor> {
    let log_p_student = log_softmax(&(student_logits / temperature)?, D::Minus1)?;
    let log_p_teacher = log_softmax(&(teacher_logits.detach() / temperature)?, D::Minus1)?;
    let p_teacher = log_p_teacher.exp()?;
    let kl = (p_teacher * (log_p_teacher - log_p_student)?)?.sum(D::Minus1)?.mean_all()?;
    kl * (temperature * temperature)
}

/// Cross-entropy of logits `(batch, classes)` against `u32` labels `(batch,)`.
pub fn hard_ce(student_logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    candle_nn::loss::cross_entropy(student_logits, labels)
}

/// The distillation loss on logits: `alpha · CE + (1 − alpha) · T² · KL`. With `alpha = 1` only
/// the labels are used (the label-only baseline); the teacher term is then not computed.
pub fn distillation(
    student_logits: &Tensor,
    teacher_logits: &Tensor,
    labels: &Tensor,
    alpha: f64,
    temperature: f64,
) -> Result<Tensor> {
    let hard = hard_ce(student_logits, labels)?;
    if alpha >= 1.0 {
        return Ok(hard);
    }
    let soft = soft_kl(student_logits, teacher_logits, temperature)?;
    (hard * alpha)? + (soft * (1.0 - alpha))?
}

/// The label of a transfer-set example: it has none, and only the teacher's soft labels train on it.
pub const UNLABELLED: u32 = u32::MAX;

/// [`distillation`] on a batch in which some rows ([`UNLABELLED`]) come from the unlabelled
/// transfer set: the cross-entropy averages over the labelled rows only, the KL term over all
/// rows; a batch with no labelled row is the soft term alone.
pub fn distillation_partly_labelled(
    student_logits: &Tensor,
    teacher_logits: &Tensor,
    labels: &[u32],
    alpha: f64,
    temperature: f64,
) -> Result<Tensor> {
    let device = student_logits.device();
    let labelled: Vec<u32> = (0..labels.len() as u32).filter(|&i| labels[i as usize] != UNLABELLED).collect();
    if labelled.len() == labels.len() {
        return distillation(student_logits, teacher_logits, &Tensor::new(labels, device)?, alpha, temperature);
    }
    let soft = (soft_kl(student_logits, teacher_logits, temperature)? * (1.0 - alpha))?;
    if labelled.is_empty() || alpha == 0.0 {
        return Ok(soft);
    }
    let y: Vec<u32> = labelled.iter().map(|&i| labels[i as usize]).collect();
    let rows = student_logits.index_select(&Tensor::new(labelled.as_slice(), device)?, 0)?;
    (hard_ce(&rows, &Tensor::new(y.as_slice(), device)?)? * alpha)? + soft
}

/// Mean of `1 − cos(a_i, b_i)` over the rows of `(batch, dim)` tensors; `b` is a target and gets
/// no gradient.
pub fn cosine_distance(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let b = b.detach();
    let dot = (a * &b)?.sum(D::Minus1)?;
    let norms = (a.sqr()?.sum(D::Minus1)?.sqrt()? * b.sqr()?.sum(D::Minus1)?.sqrt()?)?;
    let cos = (dot / (norms + 1e-12)?)?;
    (1.0 - cos)?.mean_all()
}

/// MSE between hidden states `(batch, seq, dim)` over the tokens where `mask` `(batch, seq)` is 1;
/// `target` gets no gradient.
pub fn masked_mse(hidden: &Tensor, target: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let mask = mask.to_dtype(hidden.dtype())?.unsqueeze(D::Minus1)?;
    let diff = (hidden - target.detach())?.broadcast_mul(&mask)?.sqr()?;
    let dim = hidden.dim(D::Minus1)? as f64;
    let count = (mask.sum_all()? * dim)?;
    diff.sum_all()?.div(&count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    // Reference values computed independently in plain Python (math module, float64):
    //   def softmax(x, T): m = max(v / T for v in x); e = [exp(v / T - m) for v in x]; return [v / sum(e) for v in e]
    //   S = [[1, 2, 0.5], [0.1, -1, 3]]; Tt = [[2, 1, 0], [0, 0, 4]]; labels = [1, 2]
    //   KL_T = mean over rows of sum(pt * (log pt - log ps)) with ps = softmax(S, T), pt = softmax(Tt, T)
    //   T=1: 0.22381133639762182; T=2: T²·KL = 0.2424948496313295; T=4: T²·KL = 0.2507389041688662
    //   CE = mean(-log softmax(S, 1)[label]) = 0.2675715015342181
    //   0.3 · CE + 0.7 · (T=2 term) = 0.25001784520219605
    //   row 1 unlabelled: 0.3 · (-log softmax(S[0], 1)[1] = 0.46436878410794485) + 0.7 · (T=2 term
    //   over both rows) = 0.3090570299743141; no row labelled: 0.7 · (T=2 term) = 0.16974639474193065
    //   cosine distance of A = [[1,0,1],[.5,.5,-1]], B = [[1,1,0],[-.5,-.5,1]]: 1.25
    //   masked MSE, X = [[1,2],[3,4],[100,100]], Y = [[1.5,2],[2,4],[0,0]], mask [1,1,0]: 0.3125
    fn s() -> Tensor {
        Tensor::new(&[[1.0f32, 2.0, 0.5], [0.1, -1.0, 3.0]], &Device::Cpu).unwrap()
    }
    fn t() -> Tensor {
        Tensor::new(&[[2.0f32, 1.0, 0.0], [0.0, 0.0, 4.0]], &Device::Cpu).unwrap()
    }
    fn labels() -> Tensor {
        Tensor::new(&[1u32, 2], &Device::Cpu).unwrap()
    }
    fn scalar(x: Tensor) -> f64 {
        x.to_scalar::<f32>().unwrap() as f64
    }
    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-5, "{a} != {b}");
    }

    #[test]
    fn soft_kl_matches_reference_and_scales_by_t_squared() {
        close(scalar(soft_kl(&s(), &t(), 1.0).unwrap()), 0.22381133639762182);
        close(scalar(soft_kl(&s(), &t(), 2.0).unwrap()), 0.2424948496313295);
        close(scalar(soft_kl(&s(), &t(), 4.0).unwrap()), 0.2507389041688662);
        close(scalar(soft_kl(&t(), &t(), 3.0).unwrap()), 0.0);
    }

    #[test]
    fn hard_ce_and_total_match_reference() {
        close(scalar(hard_ce(&s(), &labels()).unwrap()), 0.2675715015342181);
        close(scalar(distillation(&s(), &t(), &labels(), 0.3, 2.0).unwrap()), 0.25001784520219605);
        close(scalar(distillation(&s(), &t(), &labels(), 1.0, 2.0).unwrap()), 0.2675715015342181);
    }

    #[test]
    fn unlabelled_rows_get_only_the_soft_term() {
        let d = |labels: &[u32]| scalar(distillation_partly_labelled(&s(), &t(), labels, 0.3, 2.0).unwrap());
        close(d(&[1, UNLABELLED]), 0.3090570299743141);
        close(d(&[UNLABELLED, UNLABELLED]), 0.16974639474193065);
        close(d(&[1, 2]), 0.25001784520219605);
    }

    #[test]
    fn feature_terms_match_reference() {
        let a = Tensor::new(&[[1.0f32, 0.0, 1.0], [0.5, 0.5, -1.0]], &Device::Cpu).unwrap();
        let b = Tensor::new(&[[1.0f32, 1.0, 0.0], [-0.5, -0.5, 1.0]], &Device::Cpu).unwrap();
        close(scalar(cosine_distance(&a, &b).unwrap()), 1.25);
        let x = Tensor::new(&[[[1.0f32, 2.0], [3.0, 4.0], [100.0, 100.0]]], &Device::Cpu).unwrap();
        let y = Tensor::new(&[[[1.5f32, 2.0], [2.0, 4.0], [0.0, 0.0]]], &Device::Cpu).unwrap();
        let mask = Tensor::new(&[[1u32, 1, 0]], &Device::Cpu).unwrap();
        close(scalar(masked_mse(&x, &y, &mask).unwrap()), 0.3125);
    }

    #[test]
    fn only_the_student_gets_gradients() {
        let student = Var::from_tensor(&s()).unwrap();
        let teacher = Var::from_tensor(&t()).unwrap();
        let loss = distillation(student.as_tensor(), teacher.as_tensor(), &labels(), 0.5, 2.0).unwrap();
        let grads = loss.backward().unwrap();
        assert!(grads.get(student.as_tensor()).is_some(), "student logits get a gradient");
        assert!(grads.get(teacher.as_tensor()).is_none(), "teacher outputs are detached");
        // d/dz of T²·KL at T is T·(p_s − p_t); rows of a softmax gradient sum to zero.
        let g = grads.get(student.as_tensor()).unwrap().sum(D::Minus1).unwrap().to_vec1::<f32>().unwrap();
        assert!(g.iter().all(|v| v.abs() < 1e-6), "{g:?}");
    }
}
