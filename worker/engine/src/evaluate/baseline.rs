//! The bag-of-words baseline: unigram TF-IDF features and a multinomial logistic regression with
//! L2 regularisation. A teacher is only worth distilling if it beats this, so every run reports it
//! beside teacher and student.
//!
//! Features follow scikit-learn's `TfidfVectorizer` defaults (lower-cased word tokens of two or
//! more alphanumeric characters, smooth idf `ln((1 + n) / (1 + df)) + 1`, rows L2-normalised);
//! the classifier minimises mean cross-entropy + `‖W‖² / (2 · C · n)` (scikit-learn's
//! `LogisticRegression(C=1)` objective, divided by n) with full-batch Adam.

use std::collections::HashMap;

/// A fitted TF-IDF + logistic-regression classifier.
#[derive(Clone, Debug)]
pub struct BagOfWords {
    vocabulary: HashMap<String, usize>,
    idf: Vec<f32>,
    /// (features × classes), row-major.
    weights: Vec<f32>,
    bias: Vec<f32>,
    classes: usize,
}

/// Training settings.
#[derive(Clone, Copy, Debug)]
pub struct BagOfWordsSettings {
    /// Inverse regularisation strength (scikit-learn's `C`).
    pub c: f32,
    /// Full-batch optimisation steps.
    pub steps: usize,
    /// Adam learning rate.
    pub learning_rate: f32,
}

impl Default for BagOfWordsSettings {
    fn default() -> Self {
        Self { c: 1.0, steps: 300, learning_rate: 0.1 }
    }
}

/// The held-out accuracy of always answering the most common label of the training split (the
/// lowest label on a tie): the floor a model that learned anything must clear.
pub fn majority_class_accuracy(train_labels: &[u32], held_out_labels: &[u32]) -> f64 {
    let mut counts: HashMap<u32, usize> = HashMap::new();
    for &l in train_labels {
        *counts.entry(l).or_default() += 1;
    }
    let Some((&majority, _)) = counts.iter().max_by_key(|&(&label, &n)| (n, std::cmp::Reverse(label))) else {
        return 0.0;
    };
    if held_out_labels.is_empty() {
        return 0.0;
    }
    held_out_labels.iter().filter(|&&l| l == majority).count() as f64 / held_out_labels.len() as f64
}

/// Lower-cased word tokens of two or more alphanumeric characters (scikit-learn's default
/// `token_pattern`, `(?u)\b\w\w+\b`).
pub fn tokens(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !(c.is_alphanumeric() || c == '_')).filter(|t| t.chars().count() >= 2).map(str::to_lowercase)
}

type SparseRow = Vec<(usize, f32)>;

impl BagOfWords {
    /// Fits the vocabulary, idf and classifier on `texts` with `labels` in `0..classes`.
    pub fn fit(texts: &[&str], labels: &[usize], classes: usize, settings: BagOfWordsSettings) -> Self {
        assert_eq!(texts.len(), labels.len(), "one label per text");
        let mut vocabulary = HashMap::new();
        let mut df: Vec<u32> = vec![];
        for text in texts {
            let mut seen = std::collections::HashSet::new();
            for t in tokens(text) {
                let next = vocabulary.len();
                let id = *vocabulary.entry(t).or_insert(next);
                if id == df.len() {
                    df.push(0);
                }
                if seen.insert(id) {
                    df[id] += 1;
                }
            }
        }
        let n = texts.len() as f32;
        let idf: Vec<f32> = df.iter().map(|&d| ((1.0 + n) / (1.0 + d as f32)).ln() + 1.0).collect();
        let mut model = Self { vocabulary, idf, weights: vec![], bias: vec![0.0; classes], classes };
        let rows: Vec<SparseRow> = texts.iter().map(|t| model.features(t)).collect();
        model.weights = vec![0.0; model.idf.len() * classes];
        model.train(&rows, labels, settings);
        model
    }

    /// The L2-normalised TF-IDF vector of `text` (unknown words ignored).
    fn features(&self, text: &str) -> SparseRow {
        let mut counts: HashMap<usize, f32> = HashMap::new();
        for t in tokens(text) {
            if let Some(&id) = self.vocabulary.get(&t) {
                *counts.entry(id).or_insert(0.0) += 1.0;
            }
        }
        let mut row: SparseRow = counts.into_iter().map(|(id, c)| (id, c * self.idf[id])).collect();
        row.sort_unstable_by_key(|(id, _)| *id);
        let norm = row.iter().map(|(_, v)| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            row.iter_mut().for_each(|(_, v)| *v /= norm);
        }
        row
    }

    fn logits(&self, row: &SparseRow) -> Vec<f32> {
        let mut z = self.bias.clone();
        for &(id, v) in row {
            let w = &self.weights[id * self.classes..(id + 1) * self.classes];
            z.iter_mut().zip(w).for_each(|(z, w)| *z += v * w);
        }
        z
    }

    fn train(&mut self, rows: &[SparseRow], labels: &[usize], s: BagOfWordsSettings) {
        let k = self.classes;
        let n = rows.len() as f32;
        let lambda = 1.0 / (s.c * n);
        let params = self.weights.len() + k;
        let (mut m, mut v) = (vec![0f32; params], vec![0f32; params]);
        let (b1, b2, eps) = (0.9f32, 0.999f32, 1e-8f32);
        for step in 1..=s.steps {
            let mut grad = vec![0f32; params];
            for (row, &label) in rows.iter().zip(labels) {
                let p = softmax(&self.logits(row));
                for c in 0..k {
                    let d = (p[c] - if c == label { 1.0 } else { 0.0 }) / n;
                    for &(id, x) in row {
                        grad[id * k + c] += d * x;
                    }
                    grad[self.weights.len() + c] += d;
                }
            }
            for (g, w) in grad.iter_mut().zip(&self.weights) {
                *g += lambda * w;
            }
            let (c1, c2) = (1.0 - b1.powi(step as i32), 1.0 - b2.powi(step as i32));
            for i in 0..params {
                m[i] = b1 * m[i] + (1.0 - b1) * grad[i];
                v[i] = b2 * v[i] + (1.0 - b2) * grad[i] * grad[i];
                let update = s.learning_rate * (m[i] / c1) / ((v[i] / c2).sqrt() + eps);
                if i < self.weights.len() {
                    self.weights[i] -= update;
                } else {
                    self.bias[i - self.weights.len()] -= update;
                }
            }
        }
    }

    /// The predicted class of `text`.
    pub fn predict(&self, text: &str) -> usize {
        let z = self.logits(&self.features(text));
        (0..self.classes).max_by(|&a, &b| z[a].total_cmp(&z[b])).unwrap_or(0)
    }

    /// Accuracy on `texts` against `labels`.
    pub fn accuracy(&self, texts: &[&str], labels: &[usize]) -> f64 {
        let correct = texts.iter().zip(labels).filter(|(t, l)| self.predict(t) == **l).count();
        correct as f64 / texts.len().max(1) as f64
    }

    /// Vocabulary size.
    pub fn vocabulary_size(&self) -> usize {
        self.vocabulary.len()
    }
}

fn softmax(z: &[f32]) -> Vec<f32> {
    let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = z.iter().map(|v| (v - max).exp()).collect();
    let sum: f32 = e.iter().sum();
    e.into_iter().map(|v| v / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_follow_the_default_pattern() {
        let t: Vec<String> = tokens("A film, isn't it? Great_stuff 10/10").collect();
        assert_eq!(t, ["film", "isn", "it", "great_stuff", "10", "10"]);
    }

    #[test]
    fn learns_a_word_signal_and_generalises() {
        let good = ["great", "wonderful", "superb", "moving"];
        let bad = ["dull", "awful", "tedious", "boring"];
        let filler = ["the", "film", "plot", "actors", "scene", "story"];
        let mut texts = vec![];
        let mut labels = vec![];
        for i in 0..200 {
            let (words, label) = if i % 2 == 0 { (&good, 0) } else { (&bad, 1) };
            // Filler depends on i / 2 only, so both labels see exactly the same filler words.
            let j = i / 2;
            texts.push(format!("{} {} {} {}", filler[j % 6], words[j % 4], filler[(j / 6) % 6], filler[(j + 3) % 6]));
            labels.push(label);
        }
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let model = BagOfWords::fit(&refs, &labels, 2, BagOfWordsSettings::default());
        assert_eq!(model.accuracy(&refs, &labels), 1.0);
        // Unseen combinations of seen words.
        assert_eq!(model.predict("a superb story"), 0);
        assert_eq!(model.predict("tedious actors everywhere"), 1);
        // Filler alone carries no signal: probabilities stay near even.
        let p = softmax(&model.logits(&model.features("the film plot")));
        assert!((p[0] - 0.5).abs() < 0.2, "{p:?}");
    }

    #[test]
    fn idf_and_normalisation() {
        let model =
            BagOfWords::fit(&["aa bb", "aa cc"], &[0, 1], 2, BagOfWordsSettings { steps: 1, ..Default::default() });
        // idf(aa) = ln(3/3) + 1 = 1; idf(bb) = ln(3/2) + 1.
        let row = model.features("aa bb");
        let (aa, bb) = (1.0f32, (1.5f32).ln() + 1.0);
        let norm = (aa * aa + bb * bb).sqrt();
        let got: Vec<f32> = row.iter().map(|(_, v)| *v).collect();
        assert!((got[0] - aa / norm).abs() < 1e-6 && (got[1] - bb / norm).abs() < 1e-6, "{got:?}");
        assert!(model.features("zz yy").is_empty(), "unknown words are ignored");
    }

    #[test]
    fn the_majority_class_is_the_training_splits_most_common_label() {
        // Label 1 leads the training split; the held-out split is mostly 0, so always answering 1
        // scores its share of 1s, not the held-out majority.
        assert!((majority_class_accuracy(&[1, 1, 0], &[0, 0, 0, 1]) - 0.25).abs() < 1e-12);
        assert!(
            (majority_class_accuracy(&[0, 1], &[0, 1, 0]) - 2.0 / 3.0).abs() < 1e-12,
            "a tie goes to the lowest label"
        );
        assert_eq!(majority_class_accuracy(&[], &[0]), 0.0);
    }
}
