//! Volumes without mount namespaces: the simulated kubelet runs a container as a plain process,
//! so it rewrites the container paths (mount paths, the termination-message path) that appear in
//! the container's environment and arguments into the host directories that stand in for them,
//! and the host paths in what the container reports back into container paths.

use std::path::Path;

/// Container path → host path pairs.
#[derive(Clone, Debug, Default)]
pub struct PathMap {
    pairs: Vec<(String, String)>,
}

impl PathMap {
    /// Maps container path `container` to host path `host`.
    pub fn add(&mut self, container: &str, host: &Path) {
        self.pairs.push((container.trim_end_matches('/').to_string(), host.display().to_string()));
        // Longest first, so /data/x wins over /data.
        self.pairs.sort_by_key(|(c, _)| std::cmp::Reverse(c.len()));
    }

    /// `text` with every container path replaced by its host path.
    pub fn to_host(&self, text: &str) -> String {
        let pairs: Vec<(&str, &str)> = self.pairs.iter().map(|(c, h)| (c.as_str(), h.as_str())).collect();
        replace_paths(text, &pairs)
    }

    /// `text` with every host path replaced by its container path.
    pub fn to_container(&self, text: &str) -> String {
        let mut pairs: Vec<(&str, &str)> = self.pairs.iter().map(|(c, h)| (h.as_str(), c.as_str())).collect();
        pairs.sort_by_key(|(h, _)| std::cmp::Reverse(h.len()));
        replace_paths(text, &pairs)
    }
}

/// Replaces, in one pass, each `from` of `pairs` (the first that matches, so longest first) by
/// its `to` where it stands as a whole path prefix: at the start of the text, after a separator
/// (space, quote, `=`, `:`, `,`) or after `file://`, and followed by the end, `/` or a separator.
/// What one pair wrote is never rewritten by another (a host path under `/tmp` stays as it is when
/// `/tmp` is also a mount).
fn replace_paths(text: &str, pairs: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let before = &text[..i];
        let starts =
            before.is_empty() || before.ends_with([' ', '"', '\'', '=', ':', ',']) || before.ends_with("file://");
        let matched = starts
            .then(|| {
                pairs.iter().find(|(from, _)| {
                    let after = text[i..].strip_prefix(from);
                    after.is_some_and(|a| a.is_empty() || a.starts_with(['/', ' ', '"', '\'', ',', ':']))
                })
            })
            .flatten();
        if let Some((from, to)) = matched {
            out.push_str(to);
            i += from.len();
        } else {
            let c = text[i..].chars().next().expect("i is below the length, on a char boundary");
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_paths_become_host_paths_and_back() {
        let mut map = PathMap::default();
        map.add("/data", &std::path::PathBuf::from("/tmp/pod/claims/datasets"));
        map.add("/dev/termination-log", &std::path::PathBuf::from("/tmp/pod/termination-log"));
        let env = r#"{"uri":"file:///data/reviews.csv","other":"/x/data/y","msg":"/dev/termination-log"}"#;
        let host = map.to_host(env);
        assert_eq!(
            host,
            r#"{"uri":"file:///tmp/pod/claims/datasets/reviews.csv","other":"/x/data/y","msg":"/tmp/pod/termination-log"}"#
        );
        assert_eq!(map.to_container(&host), env);
        assert_eq!(map.to_host("/database"), "/database", "a longer name is not the mount");
        assert_eq!(map.to_host("/data"), "/tmp/pod/claims/datasets");
    }

    #[test]
    fn a_host_path_under_another_mount_is_not_rewritten_twice() {
        let mut map = PathMap::default();
        map.add("/tmp", &std::path::PathBuf::from("/tmp/pod/volumes/tmp"));
        map.add("/artifacts", &std::path::PathBuf::from("/tmp/playground/artifacts"));
        let host = map.to_host("DISTILLERY_MODEL=/artifacts/a/g1 scratch=/tmp/x");
        assert_eq!(host, "DISTILLERY_MODEL=/tmp/playground/artifacts/a/g1 scratch=/tmp/pod/volumes/tmp/x");
        assert_eq!(map.to_container(&host), "DISTILLERY_MODEL=/artifacts/a/g1 scratch=/tmp/x");
    }
}
