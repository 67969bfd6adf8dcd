//! Canary analysis: what one run measures (the JSON `distillery-worker analyze` prints and leaves
//! as its termination message), the statistics, and the verdict. Pure: no I/O, so the operator and
//! the worker's command line judge the same figures the same way.
//!
//! A canary is judged like an experiment. Both tracks answer the same golden inputs, so accuracy
//! is compared on *paired* data: only the discordant pairs carry information — `b` inputs stable
//! gets right and canary wrong, `c` the reverse — and the accuracy drop is `(b − c) / n`. Its
//! one-sided confidence bounds come from the Agresti–Min adjusted Wald interval for a paired
//! difference of proportions (add ½ to each cell of the 2×2 table), which keeps its coverage at
//! the small counts and near-zero discordance a good canary produces, where the plain Wald
//! interval collapses to zero width. Agreement gets a Wilson score bound. Evidence accumulates
//! over the rollout (each run adds a fresh slice of the golden set); every bound is at
//! [`CONFIDENCE`] one-sided, stricter than the usual 95% because the same evidence is looked at
//! after every run.
//!
//! Live traffic adds label-free evidence per interval: the canary's server-error rate, its p99
//! latency, and whether canary and stable predict the classes in the same proportions on the
//! traffic each received (a chi-square test of homogeneity).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::deployment::{AnalysisSpec, AnalysisVerdict, GoldenEvidence};

/// One-sided confidence of every bound the verdict uses.
pub const CONFIDENCE: f64 = 0.99;
/// The standard normal quantile of [`CONFIDENCE`].
pub const Z: f64 = 2.326_347_874_040_841;
/// Largest p-value at which the class mix counts as shifted.
pub const CLASS_MIX_ALPHA: f64 = 1.0 - CONFIDENCE;
/// Smallest shift in class proportions (total variation distance) that counts as drift; below it
/// a significant test on heavy traffic is a difference nobody would act on.
pub const CLASS_MIX_MIN_SHIFT: f64 = 0.1;
/// Fewest canary requests in an interval for its p99 to be judged.
pub const MIN_REQUESTS_FOR_P99: u64 = 50;

/// What one analysis run measured.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisRun {
    /// The golden slice both tracks answered in this run (absent without a golden set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub golden: Option<GoldenEvidence>,
    /// Live traffic each track served over the run's window (absent when not measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<LiveTraffic>,
    /// Measurements that could not be made, in words. Any makes the verdict `Error`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// Live traffic of both tracks over one window.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LiveTraffic {
    /// The stable track.
    pub stable: TrackTraffic,
    /// The canary track.
    pub canary: TrackTraffic,
    /// Length of the window in seconds.
    #[serde(default)]
    pub window_seconds: f64,
}

/// What one track's servers answered over a window, from their `/metrics`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrackTraffic {
    /// Inference requests answered.
    pub requests: u64,
    /// Of which answered with a 5xx status.
    pub server_errors: u64,
    /// p99 request latency in milliseconds (upper edge of the histogram bucket it falls in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    /// Predictions by class.
    #[serde(default)]
    pub predictions: BTreeMap<String, u64>,
}

impl GoldenEvidence {
    /// Adds another run's counts.
    pub fn add(&mut self, other: &GoldenEvidence) {
        self.samples += other.samples;
        self.labelled += other.labelled;
        self.stable_correct += other.stable_correct;
        self.canary_correct += other.canary_correct;
        self.stable_only += other.stable_only;
        self.canary_only += other.canary_only;
        self.agreed += other.agreed;
    }

    /// Stable accuracy on the labelled inputs.
    pub fn stable_accuracy(&self) -> Option<f64> {
        ratio(self.stable_correct, self.labelled)
    }

    /// Canary accuracy on the labelled inputs.
    pub fn canary_accuracy(&self) -> Option<f64> {
        ratio(self.canary_correct, self.labelled)
    }

    /// Fraction of inputs both tracks labelled the same.
    pub fn agreement(&self) -> Option<f64> {
        ratio(self.agreed, self.samples)
    }
}

fn ratio(k: u64, n: u64) -> Option<f64> {
    (n > 0).then(|| k as f64 / n as f64)
}

/// The thresholds a canary is judged against.
#[derive(Clone, Debug, PartialEq)]
pub struct Thresholds {
    /// Largest tolerated drop of canary accuracy below stable's (absolute).
    pub max_accuracy_drop: f64,
    /// Smallest tolerated agreement.
    pub min_agreement: f64,
    /// Largest tolerated canary p99 in milliseconds.
    pub max_p99_latency_ms: Option<f64>,
    /// Largest tolerated canary server-error rate.
    pub max_error_rate: f64,
}

impl From<&AnalysisSpec> for Thresholds {
    fn from(spec: &AnalysisSpec) -> Self {
        Self {
            max_accuracy_drop: spec.max_accuracy_drop,
            min_agreement: spec.min_agreement,
            max_p99_latency_ms: spec.max_p99_latency_ms,
            max_error_rate: spec.max_error_rate,
        }
    }
}

/// How one check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Proven to hold.
    Pass,
    /// Proven to fail.
    Fail,
    /// Not enough evidence either way.
    Inconclusive,
}

/// One judged check.
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    /// `accuracy`, `agreement`, `error-rate`, `p99-latency`, `class-mix`.
    pub name: &'static str,
    /// How it came out.
    pub outcome: Outcome,
    /// Its figures, in words.
    pub detail: String,
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let outcome = match self.outcome {
            Outcome::Pass => "passed",
            Outcome::Fail => "FAILED",
            Outcome::Inconclusive => "inconclusive",
        };
        write!(f, "{} {outcome}: {}", self.name, self.detail)
    }
}

/// The figures and verdict of a run, judged on the evidence of the whole rollout.
#[derive(Clone, Debug, PartialEq)]
pub struct Judgement {
    /// How the run ended.
    pub verdict: AnalysisVerdict,
    /// Every check, in a fixed order.
    pub checks: Vec<Check>,
    /// Paired bounds of stable − canary accuracy.
    pub accuracy_drop: Option<Bounds>,
    /// Bounds of the agreement.
    pub agreement: Option<Bounds>,
    /// Canary server-error rate.
    pub error_rate: Option<f64>,
    /// p-value of the class-mix test.
    pub class_mix_p_value: Option<f64>,
}

impl Judgement {
    /// The checks that failed, in words.
    pub fn failed(&self) -> Vec<String> {
        self.checks.iter().filter(|c| c.outcome == Outcome::Fail).map(ToString::to_string).collect()
    }
}

/// A point estimate with one-sided lower and upper confidence bounds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bounds {
    /// The estimate.
    pub estimate: f64,
    /// Lower bound.
    pub lower: f64,
    /// Upper bound.
    pub upper: f64,
}

/// Bounds on stable accuracy − canary accuracy from paired data: `b` pairs stable got right and
/// canary wrong, `c` the reverse, out of `n` (Agresti–Min: ½ added to each cell).
pub fn paired_drop_bounds(b: u64, c: u64, n: u64, z: f64) -> Option<Bounds> {
    if n == 0 {
        return None;
    }
    let n2 = n as f64 + 2.0;
    let pb = (b as f64 + 0.5) / n2;
    let pc = (c as f64 + 0.5) / n2;
    let d = pb - pc;
    let var = ((pb + pc) - d * d) / n2;
    let half = z * var.max(0.0).sqrt();
    Some(Bounds { estimate: (b as f64 - c as f64) / n as f64, lower: d - half, upper: d + half })
}

/// Wilson score bounds of a proportion `k / n`.
pub fn wilson_bounds(k: u64, n: u64, z: f64) -> Option<Bounds> {
    if n == 0 {
        return None;
    }
    let n = n as f64;
    let p = k as f64 / n;
    let z2 = z * z;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = z / (1.0 + z2 / n) * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    Some(Bounds { estimate: p, lower: (centre - half).max(0.0), upper: (centre + half).min(1.0) })
}

/// Chi-square test that two tracks predict the classes in the same proportions. Returns the
/// p-value and the total variation distance between the two mixes, or `None` when the test is
/// not valid (fewer than two classes seen, or an expected count below 5).
pub fn class_mix_shift(stable: &BTreeMap<String, u64>, canary: &BTreeMap<String, u64>) -> Option<(f64, f64)> {
    let classes: Vec<&String> =
        stable.keys().chain(canary.keys()).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    let rows = [stable, canary];
    let row_totals: Vec<f64> = rows.iter().map(|r| r.values().sum::<u64>() as f64).collect();
    let total: f64 = row_totals.iter().sum();
    if classes.len() < 2 || row_totals.contains(&0.0) {
        return None;
    }
    let mut statistic = 0.0;
    let mut shift = 0.0;
    for class in &classes {
        let counts: Vec<f64> = rows.iter().map(|r| r.get(*class).copied().unwrap_or(0) as f64).collect();
        let column: f64 = counts.iter().sum();
        for (count, row_total) in counts.iter().zip(&row_totals) {
            let expected = row_total * column / total;
            if expected < 5.0 {
                return None;
            }
            statistic += (count - expected).powi(2) / expected;
        }
        shift += (counts[0] / row_totals[0] - counts[1] / row_totals[1]).abs() / 2.0;
    }
    let df = (classes.len() - 1) as f64;
    Some((chi_square_survival(statistic, df), shift))
}

/// P(X > x) for X chi-square distributed with `df` degrees of freedom.
pub fn chi_square_survival(x: f64, df: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    upper_regularized_gamma(df / 2.0, x / 2.0)
}

/// Q(a, x) = Γ(a, x) / Γ(a): the series below a + 1, Lentz's continued fraction above.
fn upper_regularized_gamma(a: f64, x: f64) -> f64 {
    let log_prefix = a * x.ln() - x - ln_gamma(a);
    if x < a + 1.0 {
        let (mut sum, mut term, mut ap) = (1.0 / a, 1.0 / a, a);
        for _ in 0..500 {
            ap += 1.0;
            term *= x / ap;
            sum += term;
            if term.abs() < sum.abs() * 1e-15 {
                break;
            }
        }
        (1.0 - sum * log_prefix.exp()).clamp(0.0, 1.0)
    } else {
        let tiny = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / tiny;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..500 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < tiny {
                d = tiny;
            }
            c = b + an / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            let delta = d * c;
            h *= delta;
            if (delta - 1.0).abs() < 1e-15 {
                break;
            }
        }
        (log_prefix.exp() * h).clamp(0.0, 1.0)
    }
}

/// ln Γ(x) by the Lanczos approximation (g = 7, n = 9), accurate to ~1e-15 for x > 0.
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + 7.5;
    let series = G[1..].iter().enumerate().fold(G[0], |acc, (i, g)| acc + g / (x + i as f64 + 1.0));
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + series.ln()
}

/// Judges a run: golden-set checks on the evidence of the whole rollout, live-traffic checks on
/// the last window. Any measurement error makes it `Error`; otherwise any proven failure makes it
/// `Failed`, any open question `Inconclusive`, and only a run whose every check holds `Passed`.
pub fn judge(
    evidence: Option<&GoldenEvidence>,
    live: Option<&LiveTraffic>,
    errors: &[String],
    t: &Thresholds,
) -> Judgement {
    let mut checks = Vec::new();
    let mut accuracy_drop = None;
    let mut agreement = None;
    if let Some(e) = evidence {
        accuracy_drop = paired_drop_bounds(e.stable_only, e.canary_only, e.labelled, Z);
        if let Some(d) = accuracy_drop {
            let outcome = if d.lower > t.max_accuracy_drop {
                Outcome::Fail
            } else if d.upper <= t.max_accuracy_drop {
                Outcome::Pass
            } else {
                Outcome::Inconclusive
            };
            checks.push(Check {
                name: "accuracy",
                outcome,
                detail: format!(
                    "stable {:.2}% vs canary {:.2}% on {} labelled inputs (b={} stable-only, c={} canary-only); drop {:+.2} points, {:.0}% bounds [{:+.2}, {:+.2}] vs at most {:.2}",
                    pct(e.stable_accuracy()),
                    pct(e.canary_accuracy()),
                    e.labelled,
                    e.stable_only,
                    e.canary_only,
                    d.estimate * 100.0,
                    CONFIDENCE * 100.0,
                    d.lower * 100.0,
                    d.upper * 100.0,
                    t.max_accuracy_drop * 100.0
                ),
            });
        }
        agreement = wilson_bounds(e.agreed, e.samples, Z);
        if let Some(a) = agreement {
            let outcome = if a.upper < t.min_agreement {
                Outcome::Fail
            } else if a.lower >= t.min_agreement {
                Outcome::Pass
            } else {
                Outcome::Inconclusive
            };
            checks.push(Check {
                name: "agreement",
                outcome,
                detail: format!(
                    "{:.2}% of {} inputs, {:.0}% bounds [{:.2}%, {:.2}%] vs at least {:.2}%",
                    a.estimate * 100.0,
                    e.samples,
                    CONFIDENCE * 100.0,
                    a.lower * 100.0,
                    a.upper * 100.0,
                    t.min_agreement * 100.0
                ),
            });
        }
    }
    let mut error_rate = None;
    let mut class_mix_p_value = None;
    if let Some(live) = live {
        let canary = &live.canary;
        if let Some(rate) = wilson_bounds(canary.server_errors, canary.requests, Z) {
            error_rate = Some(rate.estimate);
            checks.push(Check {
                name: "error-rate",
                outcome: if rate.lower > t.max_error_rate { Outcome::Fail } else { Outcome::Pass },
                detail: format!(
                    "{} of {} canary requests failed ({:.2}%, lower bound {:.2}%) vs at most {:.2}%",
                    canary.server_errors,
                    canary.requests,
                    rate.estimate * 100.0,
                    rate.lower * 100.0,
                    t.max_error_rate * 100.0
                ),
            });
        }
        if let (Some(max), Some(p99)) = (t.max_p99_latency_ms, canary.p99_ms)
            && canary.requests >= MIN_REQUESTS_FOR_P99
        {
            checks.push(Check {
                name: "p99-latency",
                outcome: if p99 > max { Outcome::Fail } else { Outcome::Pass },
                detail: format!("canary p99 {p99:.1} ms over {} requests vs at most {max:.1} ms", canary.requests),
            });
        }
        if let Some((p, shift)) = class_mix_shift(&live.stable.predictions, &canary.predictions) {
            class_mix_p_value = Some(p);
            let shifted = p < CLASS_MIX_ALPHA && shift >= CLASS_MIX_MIN_SHIFT;
            checks.push(Check {
                name: "class-mix",
                outcome: if shifted { Outcome::Fail } else { Outcome::Pass },
                detail: format!(
                    "canary {:?} vs stable {:?} on live traffic: shift {:.1} points, chi-square p = {:.2e} (drift: p < {CLASS_MIX_ALPHA} and shift ≥ {:.0} points)",
                    canary.predictions,
                    live.stable.predictions,
                    shift * 100.0,
                    p,
                    CLASS_MIX_MIN_SHIFT * 100.0
                ),
            });
        }
    }
    let verdict = if !errors.is_empty() {
        AnalysisVerdict::Error
    } else if checks.iter().any(|c| c.outcome == Outcome::Fail) {
        AnalysisVerdict::Failed
    } else if checks.iter().any(|c| c.outcome == Outcome::Inconclusive) {
        AnalysisVerdict::Inconclusive
    } else {
        AnalysisVerdict::Passed
    };
    Judgement { verdict, checks, accuracy_drop, agreement, error_rate, class_mix_p_value }
}

fn pct(v: Option<f64>) -> f64 {
    v.unwrap_or(0.0) * 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thresholds() -> Thresholds {
        Thresholds { max_accuracy_drop: 0.02, min_agreement: 0.9, max_p99_latency_ms: Some(50.0), max_error_rate: 0.01 }
    }

    fn evidence(n: u64, stable_correct: u64, b: u64, c: u64) -> GoldenEvidence {
        GoldenEvidence {
            samples: n,
            labelled: n,
            stable_correct,
            canary_correct: stable_correct - b + c,
            stable_only: b,
            canary_only: c,
            agreed: n - b - c,
        }
    }

    #[test]
    fn chi_square_survival_matches_tables() {
        // Critical values from any chi-square table.
        for (x, df, p) in
            [(3.841, 1.0, 0.05), (6.635, 1.0, 0.01), (5.991, 2.0, 0.05), (9.210, 2.0, 0.01), (18.307, 10.0, 0.05)]
        {
            let got = chi_square_survival(x, df);
            assert!((got - p).abs() < 2e-4, "P(chi2_{df} > {x}) = {got}, want {p}");
        }
        assert_eq!(chi_square_survival(0.0, 1.0), 1.0);
    }

    #[test]
    fn wilson_bounds_match_a_hand_computation() {
        // 90 of 100 at z = 1.96: the textbook interval [0.8256, 0.9448].
        let b = wilson_bounds(90, 100, 1.96).unwrap();
        assert!((b.lower - 0.8256).abs() < 1e-3 && (b.upper - 0.9448).abs() < 1e-3, "{b:?}");
        assert!(wilson_bounds(0, 0, Z).is_none());
        let all = wilson_bounds(100, 100, Z).unwrap();
        assert!(all.upper <= 1.0 && all.lower < 1.0);
    }

    #[test]
    fn paired_bounds_use_only_discordant_pairs() {
        // b = 30, c = 10 of n = 200: drop 0.10; adjusted Wald by hand: pb = 30.5/202, pc = 10.5/202,
        // d = 0.0990, var = (0.2030 - 0.0098)/202, half = 1.96 * 0.03093.
        let d = paired_drop_bounds(30, 10, 200, 1.96).unwrap();
        assert!((d.estimate - 0.10).abs() < 1e-12);
        assert!((d.lower - 0.0384).abs() < 1e-3 && (d.upper - 0.1596).abs() < 1e-3, "{d:?}");
        // No discordance at all still leaves an interval of positive width.
        let none = paired_drop_bounds(0, 0, 50, Z).unwrap();
        assert!(none.lower < 0.0 && none.upper > 0.0);
    }

    #[test]
    fn a_clearly_worse_canary_fails_a_clearly_equal_one_passes_and_a_small_sample_is_inconclusive() {
        let t = thresholds();
        let worse = judge(Some(&evidence(1000, 800, 150, 20)), None, &[], &t);
        assert_eq!(worse.verdict, AnalysisVerdict::Failed, "{:?}", worse.checks);
        assert!(worse.failed().iter().any(|f| f.starts_with("accuracy FAILED")), "{:?}", worse.failed());
        let equal = judge(Some(&evidence(4000, 3200, 40, 40)), None, &[], &t);
        assert_eq!(equal.verdict, AnalysisVerdict::Passed, "{:?}", equal.checks);
        let small = judge(Some(&evidence(40, 32, 3, 1)), None, &[], &t);
        assert_eq!(small.verdict, AnalysisVerdict::Inconclusive, "{:?}", small.checks);
    }

    #[test]
    fn low_agreement_fails_even_with_equal_accuracy() {
        // Same accuracy, but the models disagree on 40% of inputs.
        let judged = judge(Some(&evidence(1000, 600, 200, 200)), None, &[], &thresholds());
        let agreement = judged.checks.iter().find(|c| c.name == "agreement").unwrap();
        assert_eq!(agreement.outcome, Outcome::Fail);
        assert_eq!(judged.verdict, AnalysisVerdict::Failed);
    }

    #[test]
    fn live_traffic_errors_latency_and_class_mix() {
        let t = thresholds();
        let track = |requests, errors, p99, a, b| TrackTraffic {
            requests,
            server_errors: errors,
            p99_ms: Some(p99),
            predictions: BTreeMap::from([("fresh".to_string(), a), ("rotten".to_string(), b)]),
        };
        let fine = LiveTraffic {
            stable: track(900, 0, 10.0, 450, 450),
            canary: track(100, 0, 12.0, 52, 48),
            window_seconds: 10.0,
        };
        assert_eq!(judge(None, Some(&fine), &[], &t).verdict, AnalysisVerdict::Passed);
        let errors = LiveTraffic { canary: track(100, 20, 12.0, 40, 40), ..fine.clone() };
        let judged = judge(None, Some(&errors), &[], &t);
        assert_eq!(judged.verdict, AnalysisVerdict::Failed);
        assert!(judged.failed()[0].starts_with("error-rate"));
        let slow = LiveTraffic { canary: track(100, 0, 80.0, 52, 48), ..fine.clone() };
        assert_eq!(judge(None, Some(&slow), &[], &t).failed().len(), 1);
        let shifted = LiveTraffic { canary: track(200, 0, 12.0, 180, 20), ..fine.clone() };
        let judged = judge(None, Some(&shifted), &[], &t);
        assert!(judged.failed()[0].starts_with("class-mix"), "{:?}", judged.checks);
        assert!(judged.class_mix_p_value.unwrap() < 1e-6);
    }

    #[test]
    fn a_measurement_error_is_error_whatever_the_figures() {
        let judged = judge(Some(&evidence(1000, 800, 150, 20)), None, &["canary unreachable".into()], &thresholds());
        assert_eq!(judged.verdict, AnalysisVerdict::Error);
    }

    #[test]
    fn evidence_accumulates() {
        let mut total = GoldenEvidence::default();
        total.add(&evidence(100, 80, 5, 3));
        total.add(&evidence(100, 70, 2, 4));
        assert_eq!((total.samples, total.stable_only, total.canary_only, total.agreed), (200, 7, 7, 186));
        assert_eq!(total.stable_accuracy(), Some(0.75));
    }
}
