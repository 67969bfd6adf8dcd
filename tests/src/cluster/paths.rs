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
        self.pairs.iter().fold(text.to_string(), |t, (c, h)| replace_path(&t, c, h))
    }

    /// `text` with every host path replaced by its container path.
    pub fn to_container(&self, text: &str) -> String {
        let mut reversed = self.pairs.clone();
        reversed.sort_by_key(|(_, h)| std::cmp::Reverse(h.len()));
        reversed.iter().fold(text.to_string(), |t, (c, h)| replace_path(&t, h, c))
    }
}

/// Replaces `from` by `to` where it stands as a whole path prefix: at the start of the text, after
/// a separator (space, quote, `=`, `:`, `,`) or after `file://`, and followed by the end, `/` or a
/// separator.
fn replace_path(text: &str, from: &str, to: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut consumed = String::new();
    while let Some(i) = rest.find(from) {
        let before = format!("{consumed}{}", &rest[..i]);
        let after = &rest[i + from.len()..];
        let starts =
            before.is_empty() || before.ends_with([' ', '"', '\'', '=', ':', ',']) || before.ends_with("file://");
        let ends = after.is_empty() || after.starts_with(['/', ' ', '"', '\'', ',', ':']);
        out.push_str(&rest[..i]);
        out.push_str(if starts && ends { to } else { from });
        consumed = before + from;
        rest = after;
    }
    out.push_str(rest);
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
}
