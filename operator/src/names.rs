//! Deterministic names and label values of what the operator creates.
//!
//! Custom resources may have names of up to 253 characters, but a Service name and every label
//! value are limited to 63. Children are named `<parent>-<suffix>`; when that is too long the
//! parent's name is cut and a hash of the whole parent name keeps it unique and stable.

use sha2::{Digest, Sha256};

/// The longest DNS label (Service names) and label value.
pub const MAX_LABEL: usize = 63;

/// `<parent>-<suffix>`, shortened with a hash of `parent` to at most 63 characters.
pub fn child_name(parent: &str, suffix: &str) -> String {
    child_name_within(parent, suffix, MAX_LABEL)
}

/// [`child_name`] within `max` characters (at most 63): for a name that something is appended to,
/// as an Indexed Job's pods' hostnames append `-<index>` to the Job's name.
pub fn child_name_within(parent: &str, suffix: &str, max: usize) -> String {
    let max = max.min(MAX_LABEL);
    let name = format!("{parent}-{suffix}");
    if name.len() <= max {
        return name;
    }
    let hash = short_hash(parent);
    // parent-cut + "-" + hash(8) + "-" + suffix
    let keep = max.saturating_sub(suffix.len() + hash.len() + 2);
    let cut = parent[..keep.min(parent.len())].trim_end_matches(['-', '.']);
    format!("{cut}-{hash}-{suffix}")
}

/// `value` as a label value: itself when it fits in 63 characters, else cut with a hash suffix.
pub fn label_value(value: &str) -> String {
    if value.len() <= MAX_LABEL {
        return value.to_string();
    }
    let hash = short_hash(value);
    let cut = value[..MAX_LABEL - hash.len() - 1].trim_end_matches(['-', '.', '_']);
    format!("{cut}-{hash}")
}

/// The first 8 hex digits of the sha256 of `text`.
pub fn short_hash(text: &str) -> String {
    hex::encode(&Sha256::digest(text.as_bytes())[..4])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_kept_and_long_ones_shortened_deterministically() {
        assert_eq!(child_name("reviews", "canary"), "reviews-canary");
        let long = "a".repeat(200);
        let stable = child_name(&long, "stable");
        let canary = child_name(&long, "canary");
        assert!(stable.len() <= MAX_LABEL && canary.len() <= MAX_LABEL, "{stable} {canary}");
        assert!(stable.ends_with("-stable") && canary.ends_with("-canary"));
        assert_eq!(stable, child_name(&long, "stable"), "deterministic");
        assert_ne!(child_name(&format!("{long}x"), "stable"), stable, "another parent, another name");
    }

    #[test]
    fn a_name_within_a_shorter_limit_leaves_room_and_stays_stable() {
        assert_eq!(child_name_within("reviews", "teacher", 60), "reviews-teacher");
        let long = "b".repeat(100);
        let name = child_name_within(&long, "teacher", 60);
        assert!(name.len() <= 60 && name.ends_with("-teacher"), "{name}");
        assert_eq!(name, child_name_within(&long, "teacher", 60), "deterministic");
        assert_eq!(child_name_within(&long, "x", 200), child_name(&long, "x"), "never above 63");
        // A name of 60 or 61 characters: the one that fits is kept, the other cut.
        let edge = "c".repeat(52);
        assert_eq!(child_name_within(&edge, "teacher", 60), format!("{edge}-teacher"));
        assert!(child_name_within(&format!("{edge}c"), "teacher", 60).len() <= 60);
    }

    #[test]
    fn label_values_fit() {
        assert_eq!(label_value("reviews"), "reviews");
        let long = format!("{}-x", "b".repeat(100));
        let v = label_value(&long);
        assert!(v.len() <= MAX_LABEL, "{v}");
        assert_ne!(label_value(&format!("{long}y")), v);
        // A label value must start and end with an alphanumeric character.
        assert!(v.chars().next().unwrap().is_ascii_alphanumeric() && v.chars().last().unwrap().is_ascii_alphanumeric());
    }
}
