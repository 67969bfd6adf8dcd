//! Deterministic perturbations of input texts, for robustness: the accuracy a model keeps when
//! its input has a typo, other casing, other punctuation or a missing word. Input `i` gets the
//! perturbation `KINDS[i % 4]`, with its own seeded generator, so every target sees exactly the
//! same perturbed texts, run after run.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// The seed of every perturbation (mixed with the input's index).
pub const SEED: u64 = 0x5eed_0f7e_57ed;

/// A kind of perturbation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Two adjacent letters inside one word of four or more letters swapped.
    Typo,
    /// The whole text upper-cased.
    Casing,
    /// Punctuation removed (or `!!` appended to a text without any).
    Punctuation,
    /// About one word in ten dropped (at least one, from texts of three words or more).
    WordDrop,
}

/// Every kind, in the order inputs cycle through them.
pub const KINDS: [Kind; 4] = [Kind::Typo, Kind::Casing, Kind::Punctuation, Kind::WordDrop];

impl Kind {
    /// How the report lists it.
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Typo => "typo: two adjacent letters swapped inside a word of 4+ letters",
            Kind::Casing => "casing: the whole text upper-cased",
            Kind::Punctuation => "punctuation: all punctuation removed (`!!` appended where there was none)",
            Kind::WordDrop => "word drop: about one word in ten removed (at least one, texts of 3+ words)",
        }
    }
}

/// Input `index`'s perturbation and the perturbed text. A text the kind cannot change (a typo
/// needs a word of four letters, a drop three words) gets the casing change instead, so every
/// input is perturbed.
pub fn perturb(text: &str, index: usize) -> (Kind, String) {
    let mut rng = ChaCha8Rng::seed_from_u64(SEED ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let kind = KINDS[index % KINDS.len()];
    let changed = match kind {
        Kind::Typo => typo(text, &mut rng),
        Kind::Casing => None,
        Kind::Punctuation => Some(punctuation(text)),
        Kind::WordDrop => word_drop(text, &mut rng),
    };
    match changed {
        Some(t) if t != text => (kind, t),
        _ => (Kind::Casing, text.to_uppercase()),
    }
}

fn typo(text: &str, rng: &mut ChaCha8Rng) -> Option<String> {
    let words: Vec<&str> = text.split(' ').collect();
    let eligible: Vec<usize> =
        (0..words.len()).filter(|&i| words[i].chars().filter(|c| c.is_alphabetic()).count() >= 4).collect();
    let w = *eligible.get(rng.random_range(0..eligible.len().max(1)))?;
    let mut chars: Vec<char> = words[w].chars().collect();
    // Letters that have a letter after them, away from the word's first and last letter.
    let spots: Vec<usize> = (1..chars.len().saturating_sub(2))
        .filter(|&i| chars[i].is_alphabetic() && chars[i + 1].is_alphabetic() && chars[i] != chars[i + 1])
        .collect();
    let i = *spots.get(rng.random_range(0..spots.len().max(1)))?;
    chars.swap(i, i + 1);
    let swapped: String = chars.into_iter().collect();
    let mut out: Vec<&str> = words.clone();
    out[w] = &swapped;
    Some(out.join(" "))
}

fn punctuation(text: &str) -> String {
    let stripped: String = text.chars().filter(|c| !c.is_ascii_punctuation()).collect();
    if stripped == text { format!("{text}!!") } else { stripped }
}

fn word_drop(text: &str, rng: &mut ChaCha8Rng) -> Option<String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.len() < 3 {
        return None;
    }
    let drops = (words.len() / 10).max(1);
    let mut keep = vec![true; words.len()];
    let mut dropped = 0;
    while dropped < drops {
        let i = rng.random_range(0..words.len());
        if keep[i] {
            keep[i] = false;
            dropped += 1;
        }
    }
    Some(words.iter().zip(keep).filter(|(_, k)| *k).map(|(w, _)| *w).collect::<Vec<_>>().join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "A thoughtful, beautifully acted drama about grief and memory.";

    #[test]
    fn the_same_input_gets_the_same_perturbation_every_time() {
        for i in 0..16 {
            assert_eq!(perturb(TEXT, i), perturb(TEXT, i));
        }
        // Different inputs draw differently: not every typo lands in the same word.
        let typos: std::collections::BTreeSet<String> = (0..40).step_by(4).map(|i| perturb(TEXT, i).1).collect();
        assert!(typos.len() > 2, "{typos:?}");
    }

    #[test]
    fn inputs_cycle_through_the_kinds_and_each_changes_the_text_as_described() {
        let kinds: Vec<Kind> = (0..4).map(|i| perturb(TEXT, i).0).collect();
        assert_eq!(kinds, KINDS);
        let (_, typo) = perturb(TEXT, 0);
        assert_eq!(typo.len(), TEXT.len());
        let differing: Vec<(char, char)> = TEXT.chars().zip(typo.chars()).filter(|(a, b)| a != b).collect();
        assert_eq!(differing.len(), 2, "two letters swapped: {typo}");
        assert_eq!(differing[0], (differing[1].1, differing[1].0));
        assert_eq!(perturb(TEXT, 1).1, TEXT.to_uppercase());
        assert_eq!(perturb(TEXT, 2).1, "A thoughtful beautifully acted drama about grief and memory");
        assert_eq!(perturb("no punctuation here", 2).1, "no punctuation here!!");
        let (_, dropped) = perturb(TEXT, 3);
        assert_eq!(dropped.split_whitespace().count(), TEXT.split_whitespace().count() - 1, "{dropped}");
    }

    #[test]
    fn a_text_the_kind_cannot_change_is_upper_cased_instead() {
        assert_eq!(perturb("so bad", 0), (Kind::Casing, "SO BAD".into()), "no word of four letters");
        assert_eq!(perturb("too short", 3), (Kind::Casing, "TOO SHORT".into()), "fewer than three words");
    }
}
