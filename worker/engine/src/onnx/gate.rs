//! The int8 gate: pure decisions over measured figures. int8 is served only when its held-out
//! accuracy is within the spec's budget of fp32's and (with `speedCheck`) it is faster than fp32
//! at batch 1 and batch 32; otherwise fp32 is served and the reason says which test failed, by
//! how much.

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
        self.drop() <= budget + 1e-12
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
}

fn points(x: f64) -> String {
    format!("{:.2}", x * 100.0)
}

/// The verdict on the final int8 candidate: its accuracies, the budget, the layers kept in fp32
/// to meet it, and (when `speed_check`) its latencies against fp32's.
pub fn decide(acc: Accuracies, budget: f64, fp32_layers: usize, latency: Option<Latencies>) -> Verdict {
    let kept =
        if fp32_layers == 0 { String::new() } else { format!(" with the {fp32_layers} most sensitive layers in fp32") };
    if !acc.within(budget) {
        return Verdict::Fp32(format!(
            "int8 held-out accuracy {}% is {} points below fp32's {}%{}{}, over the budget of {} points",
            points(acc.int8),
            points(acc.drop()),
            points(acc.fp32),
            if kept.is_empty() { "" } else { " even" },
            kept,
            points(budget)
        ));
    }
    let accuracy = format!(
        "int8 accuracy {}% vs fp32 {}% (budget {} points){kept}",
        points(acc.int8),
        points(acc.fp32),
        points(budget)
    );
    let Some(l) = latency else {
        return Verdict::Int8(format!("{accuracy}; speed check off"));
    };
    let (b1, b32) = l.speedups();
    let speed = format!("{b1:.2}× fp32's speed at batch 1 and {b32:.2}× at batch 32 on this CPU");
    if b1 <= 1.0 || b32 <= 1.0 {
        return Verdict::Fp32(format!("int8 is not faster than fp32: {speed}; {accuracy}"));
    }
    Verdict::Int8(format!("{accuracy}; {speed}"))
}

/// Weights ordered most sensitive first: by the accuracy the int8 model reaches with that one
/// weight kept in fp32, highest first (ties by name, for a stable order).
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
}
