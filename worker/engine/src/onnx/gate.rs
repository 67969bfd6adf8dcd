//! The int8 gate: pure decisions over measured figures. int8 passes only when its held-out
//! quality is within the spec's budgets of fp32's and (with `speedCheck`) it is faster than fp32
//! wherever latency was measured; otherwise fp32 stays, and the reason says which test failed, by
//! how much.
//!
//! What "quality" means is the task's ([`Quality`]): a classifier's held-out accuracy
//! ([`AccuracyCheck`]); a causal-LM decoder's held-out perplexity and next-token top-1
//! ([`DecoderQuality`]). The verdict ([`judge`]) and the retry that keeps the most sensitive
//! layers in fp32 ([`keep_sensitive_fp32`]) are the same for both.

use std::collections::{BTreeSet, HashMap};

/// Slack absorbing float noise in budget comparisons.
const EPSILON: f64 = 1e-12;

/// Held-out accuracy of the fp32 model and of an int8 candidate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Accuracies {
    /// fp32 accuracy (0–1).
    pub fp32: f64,
    /// int8 accuracy (0–1).
    pub int8: f64,
}

impl Accuracies {
    /// Accuracy int8 costs, in points of fraction (0.01 = one point); negative when int8 is better.
    pub fn drop(&self) -> f64 {
        self.fp32 - self.int8
    }

    /// Whether the drop is within `budget` (a tolerance of 1e-12 absorbs float noise).
    pub fn within(&self, budget: f64) -> bool {
        self.drop() <= budget + EPSILON
    }
}

/// Latency per batch in milliseconds, fp32 and int8, at batch 1 and batch 32.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Latencies {
    /// fp32 at batch 1.
    pub fp32_batch1: f64,
    /// int8 at batch 1.
    pub int8_batch1: f64,
    /// fp32 at batch 32.
    pub fp32_batch32: f64,
    /// int8 at batch 32.
    pub int8_batch32: f64,
}

impl Latencies {
    /// fp32 time / int8 time at batch 1 and at batch 32.
    pub fn speedups(&self) -> (f64, f64) {
        (self.fp32_batch1 / self.int8_batch1, self.fp32_batch32 / self.int8_batch32)
    }

    /// The two measurements as [`Timing`]s.
    pub fn timings(&self) -> Vec<Timing> {
        vec![
            Timing { at: "at batch 1".into(), fp32_ms: self.fp32_batch1, int8_ms: self.int8_batch1 },
            Timing { at: "at batch 32".into(), fp32_ms: self.fp32_batch32, int8_ms: self.int8_batch32 },
        ]
    }
}

/// One latency measured for both variants on the same inputs.
#[derive(Clone, Debug, PartialEq)]
pub struct Timing {
    /// Where it was measured, as the reason says it: `at batch 1`, `per 128-token sequence`.
    pub at: String,
    /// fp32's, in milliseconds.
    pub fp32_ms: f64,
    /// int8's, in milliseconds.
    pub int8_ms: f64,
}

impl Timing {
    /// fp32 time / int8 time: above 1 when int8 is faster.
    pub fn speedup(&self) -> f64 {
        self.fp32_ms / self.int8_ms
    }
}

/// What the gate compares of fp32 and an int8 candidate, with the budgets they are judged
/// against: the task's held-out quality figures.
pub trait Quality {
    /// The first budget int8 is over, said with the figures, or `None` when within every budget.
    /// `even` is said after int8's figure (` even with the 4 most sensitive layers in fp32`, or
    /// empty).
    fn over_budget(&self, even: &str) -> Option<String>;
    /// int8's figures against fp32's and the budgets, for a candidate within them.
    fn summary(&self) -> String;
    /// int8's figures alone, for progress messages (`held-out accuracy 80.12%`).
    fn brief(&self) -> String;
    /// One number that orders candidates, higher is better: what weights are ranked by when
    /// each is kept in fp32 in turn ([`keep_sensitive_fp32`]).
    fn merit(&self) -> f64;
    /// Within every budget.
    fn within(&self) -> bool {
        self.over_budget("").is_none()
    }
}

fn points(x: f64) -> String {
    format!("{:.2}", x * 100.0)
}

/// An accuracy int8 may lose at most `budget` of (absolute: 0.01 is one point): a classifier's
/// held-out accuracy, a decoder's next-token top-1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AccuracyCheck {
    /// What the accuracy is of, as the reason says it: `accuracy`, `next-token top-1`.
    pub what: &'static str,
    /// fp32's and int8's.
    pub figures: Accuracies,
    /// The largest drop allowed (`quantization.accuracyBudget`).
    pub budget: f64,
}

impl AccuracyCheck {
    /// A classifier's held-out accuracy.
    pub fn classifier(figures: Accuracies, budget: f64) -> Self {
        Self { what: "accuracy", figures, budget }
    }
}

impl Quality for AccuracyCheck {
    fn over_budget(&self, even: &str) -> Option<String> {
        let a = self.figures;
        (!a.within(self.budget)).then(|| {
            format!(
                "int8 held-out {} {}% is {} points below fp32's {}%{even}, over the budget of {} points",
                self.what,
                points(a.int8),
                points(a.drop()),
                points(a.fp32),
                points(self.budget)
            )
        })
    }

    fn summary(&self) -> String {
        let a = self.figures;
        format!(
            "int8 {} {}% vs fp32 {}% (budget {} points)",
            self.what,
            points(a.int8),
            points(a.fp32),
            points(self.budget)
        )
    }

    fn brief(&self) -> String {
        format!("held-out {} {}%", self.what, points(self.figures.int8))
    }

    fn merit(&self) -> f64 {
        self.figures.int8
    }
}

/// Held-out perplexity of fp32 and of an int8 candidate, and the rise int8 may cost, relative to
/// fp32's (0.02: at most 2% higher).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PerplexityCheck {
    /// fp32's perplexity.
    pub fp32: f64,
    /// int8's perplexity.
    pub int8: f64,
    /// The largest relative rise allowed (`quantization.perplexityBudget`).
    pub budget: f64,
}

impl PerplexityCheck {
    /// `int8 / fp32 − 1`: 0.01 is 1% higher; negative when int8 is better; NaN when either is.
    pub fn rise(&self) -> f64 {
        self.int8 / self.fp32 - 1.0
    }

    /// Whether the rise is within the budget (never when it is NaN).
    pub fn within(&self) -> bool {
        self.rise() <= self.budget + EPSILON
    }
}

/// A causal-LM decoder's quality: held-out perplexity (relative budget) first, then next-token
/// top-1 (absolute budget).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DecoderQuality {
    /// Perplexity, fp32's and int8's.
    pub perplexity: PerplexityCheck,
    /// Next-token top-1, fp32's and int8's.
    pub top1: AccuracyCheck,
}

impl DecoderQuality {
    /// Figures and budgets: `(perplexity, top-1)` of fp32 and of int8, the relative perplexity
    /// budget and the absolute top-1 budget.
    pub fn new(fp32: (f64, f64), int8: (f64, f64), perplexity_budget: f64, top1_budget: f64) -> Self {
        Self {
            perplexity: PerplexityCheck { fp32: fp32.0, int8: int8.0, budget: perplexity_budget },
            top1: AccuracyCheck {
                what: "next-token top-1",
                figures: Accuracies { fp32: fp32.1, int8: int8.1 },
                budget: top1_budget,
            },
        }
    }
}

impl Quality for DecoderQuality {
    fn over_budget(&self, even: &str) -> Option<String> {
        let p = self.perplexity;
        if !p.within() {
            return Some(format!(
                "int8 held-out perplexity {:.2} is {}% above fp32's {:.2}{even}, over the budget of {}%",
                p.int8,
                points(p.rise()),
                p.fp32,
                points(p.budget)
            ));
        }
        self.top1.over_budget(even)
    }

    fn summary(&self) -> String {
        let p = self.perplexity;
        format!(
            "int8 perplexity {:.2} vs fp32 {:.2} ({:+.2}%, budget {}%); {}",
            p.int8,
            p.fp32,
            p.rise() * 100.0,
            points(p.budget),
            self.top1.summary()
        )
    }

    fn brief(&self) -> String {
        format!("held-out perplexity {:.2}, next-token top-1 {}%", self.perplexity.int8, points(self.top1.figures.int8))
    }

    /// Lower perplexity is better (a NaN one is the worst).
    fn merit(&self) -> f64 {
        let p = self.perplexity.int8;
        if p.is_nan() { f64::NEG_INFINITY } else { -p }
    }
}

/// What to serve.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Serve int8.
    Int8(String),
    /// Serve fp32; int8 failed its gate (or was not made).
    Fp32(String),
}

impl Verdict {
    /// `int8` or `fp32`.
    pub fn variant(&self) -> &'static str {
        match self {
            Self::Int8(_) => "int8",
            Self::Fp32(_) => "fp32",
        }
    }

    /// Why.
    pub fn reason(&self) -> &str {
        match self {
            Self::Int8(r) | Self::Fp32(r) => r,
        }
    }

    /// Whether int8 passed.
    pub fn passed(&self) -> bool {
        matches!(self, Self::Int8(_))
    }
}

/// `2.00× fp32's speed at batch 1 and 3.00× at batch 32 on this CPU`.
fn speed_phrase(timings: &[Timing]) -> String {
    let parts: Vec<String> = timings
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let of = if i == 0 { " fp32's speed" } else { "" };
            format!("{:.2}×{of} {}", t.speedup(), t.at)
        })
        .collect();
    format!("{} on this CPU", parts.join(" and "))
}

/// The verdict on the final int8 candidate of any task: its quality against fp32's and the
/// budgets, the layers kept in fp32 to meet them, and (when `speedCheck`) its latencies against
/// fp32's — int8 must be faster at every one of them.
pub fn judge(quality: &dyn Quality, fp32_layers: usize, speed: Option<&[Timing]>) -> Verdict {
    let kept =
        if fp32_layers == 0 { String::new() } else { format!(" with the {fp32_layers} most sensitive layers in fp32") };
    let even = if kept.is_empty() { String::new() } else { format!(" even{kept}") };
    if let Some(why) = quality.over_budget(&even) {
        return Verdict::Fp32(why);
    }
    let figures = format!("{}{kept}", quality.summary());
    let Some(timings) = speed else {
        return Verdict::Int8(format!("{figures}; speed check off"));
    };
    let speed = speed_phrase(timings);
    // NaN (unmeasured) is not faster either.
    if !timings.iter().all(|t| t.speedup() > 1.0) {
        return Verdict::Fp32(format!("int8 is not faster than fp32: {speed}; {figures}"));
    }
    Verdict::Int8(format!("{figures}; {speed}"))
}

/// The verdict on a classifier's final int8 candidate: its accuracies, the budget, the layers
/// kept in fp32 to meet it, and (when `speed_check`) its latencies against fp32's ([`judge`]).
pub fn decide(acc: Accuracies, budget: f64, fp32_layers: usize, latency: Option<Latencies>) -> Verdict {
    let timings = latency.map(|l| l.timings());
    judge(&AccuracyCheck::classifier(acc, budget), fp32_layers, timings.as_deref())
}

/// Weights ordered most sensitive first: by the merit the int8 model reaches with that one
/// weight kept in fp32 (a classifier's accuracy), highest first (ties by name, for a stable
/// order).
pub fn by_sensitivity(per_layer: &[(String, f64)]) -> Vec<String> {
    let mut v: Vec<&(String, f64)> = per_layer.iter().collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v.into_iter().map(|(n, _)| n.clone()).collect()
}

/// How many of the most sensitive layers to keep in fp32 on each retry: 1, 2, 4, … up to half
/// of the `quantizable` weights (more than that and the model is no longer mostly int8).
pub fn retry_sizes(quantizable: usize) -> Vec<usize> {
    let cap = quantizable / 2;
    std::iter::successors(Some(1usize), |k| Some(k * 2)).take_while(|&k| k <= cap).collect()
}

/// An evaluated int8 candidate, as [`keep_sensitive_fp32`] sees it.
pub trait Evaluated {
    /// Its quality figures against fp32's and the budgets.
    type Figures: Quality;
    /// The weights it made int8.
    fn quantized(&self) -> &[String];
    /// Its figures.
    fn quality(&self) -> Self::Figures;
}

/// The retry both gates run when the fully quantized candidate `first` is over budget: each of
/// its int8 weights is kept in fp32 alone and the candidate re-evaluated (`evaluate` takes the
/// weights to keep in fp32), the weights are ranked by the merit that recovers
/// ([`by_sensitivity`]), and the 1, 2, 4, … most sensitive are kept in fp32 ([`retry_sizes`])
/// until a candidate is within budget or the sizes run out. Returns the last candidate and the
/// weights it kept in fp32 (none when `first` was within budget). `stage` hears what was found.
pub fn keep_sensitive_fp32<C: Evaluated, E>(
    first: C,
    mut evaluate: impl FnMut(&BTreeSet<String>) -> Result<C, E>,
    mut stage: impl FnMut(String),
) -> Result<(C, BTreeSet<String>), E> {
    if first.quality().within() {
        return Ok((first, BTreeSet::new()));
    }
    let all = first.quantized().to_vec();
    let mut per_layer = Vec::with_capacity(all.len());
    let mut briefs = HashMap::new();
    for w in &all {
        let q = evaluate(&BTreeSet::from([w.clone()]))?.quality();
        per_layer.push((w.clone(), q.merit()));
        briefs.insert(w.clone(), q.brief());
    }
    let order = by_sensitivity(&per_layer);
    let top: Vec<String> = order.iter().take(4).map(|w| format!("{w} ({} with it in fp32)", briefs[w])).collect();
    stage(format!("over budget; most sensitive: {}", top.join(", ")));
    let (mut candidate, mut keep) = (first, BTreeSet::new());
    for k in retry_sizes(all.len()) {
        keep = order.iter().take(k).cloned().collect();
        candidate = evaluate(&keep)?;
        stage(format!("{k} most sensitive in fp32: {}", candidate.quality().brief()));
        if candidate.quality().within() {
            break;
        }
    }
    Ok((candidate, keep))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: Latencies = Latencies { fp32_batch1: 4.0, int8_batch1: 2.0, fp32_batch32: 60.0, int8_batch32: 20.0 };

    #[test]
    fn int8_within_budget_and_faster_is_served() {
        let v = decide(Accuracies { fp32: 0.816, int8: 0.812 }, 0.01, 0, Some(FAST));
        assert_eq!(v.variant(), "int8");
        assert!(v.reason().contains("2.00× fp32's speed at batch 1 and 3.00× at batch 32"), "{}", v.reason());
    }

    #[test]
    fn over_budget_falls_back_to_fp32_and_says_by_how_much() {
        let v = decide(Accuracies { fp32: 0.80, int8: 0.78 }, 0.01, 4, Some(FAST));
        assert_eq!(v.variant(), "fp32");
        assert_eq!(
            v.reason(),
            "int8 held-out accuracy 78.00% is 2.00 points below fp32's 80.00% even with the 4 most sensitive layers in fp32, over the budget of 1.00 points"
        );
        // A budget of zero refuses any loss at all, however small.
        assert_eq!(decide(Accuracies { fp32: 0.80, int8: 0.7996 }, 0.0, 0, None).variant(), "fp32");
        // ... and accepts none.
        assert_eq!(decide(Accuracies { fp32: 0.80, int8: 0.80 }, 0.0, 0, None).variant(), "int8");
    }

    #[test]
    fn not_faster_at_either_batch_size_falls_back_to_fp32() {
        let slow_single = Latencies { int8_batch1: 4.5, ..FAST };
        let v = decide(Accuracies { fp32: 0.8, int8: 0.8 }, 0.01, 0, Some(slow_single));
        assert_eq!(v.variant(), "fp32");
        assert!(
            v.reason().starts_with("int8 is not faster than fp32: 0.89× fp32's speed at batch 1"),
            "{}",
            v.reason()
        );
        let slow_batch = Latencies { int8_batch32: 60.0, ..FAST };
        assert_eq!(decide(Accuracies { fp32: 0.8, int8: 0.8 }, 0.01, 0, Some(slow_batch)).variant(), "fp32");
    }

    #[test]
    fn sensitivity_orders_by_recovered_accuracy_and_retries_double() {
        let per = [("a".to_string(), 0.79), ("b".to_string(), 0.81), ("c".to_string(), 0.80), ("d".to_string(), 0.81)];
        assert_eq!(by_sensitivity(&per), vec!["b", "d", "c", "a"]);
        assert_eq!(retry_sizes(13), vec![1, 2, 4]);
        assert_eq!(retry_sizes(1), Vec::<usize>::new());
    }

    fn decoder(fp32: (f64, f64), int8: (f64, f64), ppl_budget: f64, top1_budget: f64) -> DecoderQuality {
        DecoderQuality::new(fp32, int8, ppl_budget, top1_budget)
    }

    fn per_sequence(fp32_ms: f64, int8_ms: f64) -> Vec<Timing> {
        vec![Timing { at: "per 128-token sequence".into(), fp32_ms, int8_ms }]
    }

    #[test]
    fn a_decoder_within_both_budgets_and_faster_passes() {
        let q = decoder((450.0, 0.20), (455.0, 0.198), 0.02, 0.01);
        let v = judge(&q, 0, Some(&per_sequence(10.0, 4.0)));
        assert!(v.passed(), "{}", v.reason());
        assert_eq!(
            v.reason(),
            "int8 perplexity 455.00 vs fp32 450.00 (+1.11%, budget 2.00%); int8 next-token top-1 19.80% vs fp32 20.00% (budget 1.00 points); 2.50× fp32's speed per 128-token sequence on this CPU"
        );
        assert!(judge(&q, 0, None).reason().ends_with("speed check off"));
    }

    #[test]
    fn a_decoder_over_its_perplexity_budget_is_refused_with_the_figures() {
        // 460 / 450 − 1 = 2.22% > 2%: refused, whatever top-1 and speed say.
        let q = decoder((450.0, 0.20), (460.0, 0.21), 0.02, 0.01);
        let v = judge(&q, 2, Some(&per_sequence(10.0, 4.0)));
        assert!(!v.passed());
        assert_eq!(
            v.reason(),
            "int8 held-out perplexity 460.00 is 2.22% above fp32's 450.00 even with the 2 most sensitive layers in fp32, over the budget of 2.00%"
        );
        // A budget of 0 refuses any rise, and admits none.
        assert!(!judge(&decoder((450.0, 0.2), (450.001, 0.2), 0.0, 0.01), 0, None).passed());
        assert!(judge(&decoder((450.0, 0.2), (450.0, 0.2), 0.0, 0.01), 0, None).passed());
        // A NaN perplexity is never within budget, and ranks last.
        let nan = decoder((450.0, 0.2), (f64::NAN, 0.2), 1.0, 1.0);
        assert!(!nan.within() && nan.merit() == f64::NEG_INFINITY);
    }

    #[test]
    fn a_decoder_over_its_top1_budget_is_refused_with_the_figures() {
        let q = decoder((450.0, 0.20), (449.0, 0.18), 0.02, 0.01);
        let v = judge(&q, 0, None);
        assert!(!v.passed());
        assert_eq!(
            v.reason(),
            "int8 held-out next-token top-1 18.00% is 2.00 points below fp32's 20.00%, over the budget of 1.00 points"
        );
    }

    #[test]
    fn a_decoder_that_is_not_faster_is_refused() {
        let q = decoder((450.0, 0.20), (451.0, 0.20), 0.02, 0.01);
        let v = judge(&q, 0, Some(&per_sequence(10.0, 10.5)));
        assert!(!v.passed());
        assert!(
            v.reason().starts_with("int8 is not faster than fp32: 0.95× fp32's speed per 128-token sequence on this CPU; int8 perplexity 451.00"),
            "{}",
            v.reason()
        );
        assert!(!judge(&q, 0, Some(&per_sequence(10.0, 10.0))).passed(), "as fast is not faster");
        assert!(!judge(&q, 0, Some(&per_sequence(10.0, f64::NAN))).passed(), "unmeasured is not faster");
    }

    /// A candidate whose perplexity is the sum of the penalties of its int8 weights.
    struct Fake {
        quantized: Vec<String>,
        perplexity: f64,
    }

    impl Evaluated for Fake {
        type Figures = DecoderQuality;
        fn quantized(&self) -> &[String] {
            &self.quantized
        }
        fn quality(&self) -> DecoderQuality {
            decoder((100.0, 0.5), (self.perplexity, 0.5), 0.02, 0.01)
        }
    }

    #[test]
    fn the_retry_keeps_the_weights_that_cost_the_most_perplexity_in_fp32() {
        let penalty = HashMap::from([("a", 0.5), ("b", 3.0), ("c", 0.2), ("d", 0.1), ("e", 0.1)]);
        let evaluate = |keep: &BTreeSet<String>| -> Result<Fake, ()> {
            let quantized: Vec<String> =
                ["a", "b", "c", "d", "e"].iter().map(|w| w.to_string()).filter(|w| !keep.contains(w)).collect();
            let perplexity = 100.0 + quantized.iter().map(|w| penalty[w.as_str()]).sum::<f64>();
            Ok(Fake { quantized, perplexity })
        };
        let mut said = vec![];
        let first = evaluate(&BTreeSet::new()).unwrap();
        let (last, keep) = keep_sensitive_fp32(first, evaluate, |m| said.push(m)).unwrap();
        // 3.9% over: b alone in fp32 leaves 0.9%, within 2%.
        assert_eq!(keep, BTreeSet::from(["b".to_string()]));
        assert!((last.perplexity - 100.9).abs() < 1e-9);
        assert!(said[0].starts_with("over budget; most sensitive: b (held-out perplexity 100.90"), "{said:?}");
        // Within budget from the start: nothing is kept, nothing re-evaluated.
        let fine = Fake { quantized: vec!["a".into()], perplexity: 100.5 };
        let (_, keep) = keep_sensitive_fp32(fine, |_| -> Result<Fake, ()> { panic!("no retry") }, |_| {}).unwrap();
        assert!(keep.is_empty());
    }
}
