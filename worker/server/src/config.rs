//! The server's configuration: one clap struct, every flag also an environment variable (what a
//! ModelDeployment's pod template sets).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::batching::BatchLimits;
use distillery_model::artifact::VariantChoice;

/// ONNX Runtime inference server for Distillery model artifacts, speaking the KServe V2 Open
/// Inference Protocol over HTTP.
#[derive(Parser, Debug, Clone)]
#[command(name = "distillery-server", version, about)]
pub struct Config {
    /// The artifact to serve: a directory (or `file://` URI) with distillery.json, the ONNX
    /// model(s) and tokenizer.json, as `distillery-worker distill` writes it, or an `s3://`
    /// URI of one (downloaded into `--cache-dir` first, every file checked against the manifest;
    /// credentials from `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, else the default chain).
    #[arg(long, env = "DISTILLERY_MODEL")]
    pub model: String,
    /// The model's name in the protocol (`/v2/models/{name}`); default: the artifact
    /// directory's name.
    #[arg(long, env = "DISTILLERY_MODEL_NAME")]
    pub model_name: Option<String>,
    /// Which ONNX file to serve: `auto` (what the manifest says: int8 when it passed its gate),
    /// `fp32` or `int8`.
    #[arg(long, env = "DISTILLERY_MODEL_VARIANT", value_enum, default_value_t = VariantChoice::Auto)]
    pub variant: VariantChoice,
    /// The sha256 the served ONNX file must have (64 lower-case hex digits, `sha256:` prefix
    /// optional): what the rollout resolved for this pod. Checked once the variant is chosen and
    /// its file verified against the manifest; any other file stops the server with exit 1
    /// before it turns ready. Artifacts are immutable: one changed at the same location is
    /// refused, never served.
    #[arg(long, env = "DISTILLERY_EXPECT_DIGEST", value_parser = parse_digest)]
    pub expect_digest: Option<String>,
    /// Endpoint of the S3-compatible store of an `s3://` model (MinIO, Ceph, …); AWS's when
    /// unset.
    #[arg(long, env = "DISTILLERY_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// Region of the `s3://` model's bucket.
    #[arg(long, env = "DISTILLERY_S3_REGION")]
    pub s3_region: Option<String>,
    /// Path-style S3 addressing (`endpoint/bucket/key`), which most self-hosted stores need.
    #[arg(long, env = "DISTILLERY_S3_FORCE_PATH_STYLE", default_value_t = false, action = clap::ArgAction::Set)]
    pub s3_force_path_style: bool,
    /// Where an `s3://` model is downloaded, one directory per manifest digest: a restarted
    /// server finds its model there and downloads nothing. Default: `$DISTILLERY_CACHE/models`
    /// (`~/.cache/distillery/models`).
    #[arg(long, env = "DISTILLERY_MODEL_CACHE")]
    pub cache_dir: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "DISTILLERY_ADDRESS", default_value = "0.0.0.0")]
    pub address: IpAddr,
    /// HTTP port (0 picks a free one and prints it).
    #[arg(long, env = "DISTILLERY_PORT", default_value_t = 8080)]
    pub port: u16,
    /// Path of libonnxruntime.so.1.31.1 (default: where scripts/setup.sh puts it,
    /// `$DISTILLERY_CACHE/onnxruntime/`).
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_library: Option<PathBuf>,
    /// Most texts in one model run.
    #[arg(long, env = "DISTILLERY_MAX_BATCH_SIZE", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_batch_size: u32,
    /// Longest a request waits for others to batch with, in milliseconds. 0: a batch is what
    /// queued while the model threads were busy, and an idle server runs a request at once.
    #[arg(long, env = "DISTILLERY_MAX_BATCH_DELAY_MS", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=10000))]
    pub max_batch_delay_ms: u32,
    /// Most padded tokens (texts × longest) in one model run.
    #[arg(long, env = "DISTILLERY_MAX_BATCH_TOKENS", default_value_t = 8192, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_batch_tokens: u32,
    /// Most texts waiting for a model thread; beyond it requests get 429 with Retry-After. It is
    /// also the most texts one request may hold (more: 413).
    #[arg(long, env = "DISTILLERY_MAX_QUEUE", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_queue: u32,
    /// Model threads, each with its own ONNX Runtime session; default: the CPUs available
    /// divided by `--threads`.
    #[arg(long, env = "DISTILLERY_MODEL_THREADS", value_parser = clap::value_parser!(u32).range(1..=256))]
    pub model_threads: Option<u32>,
    /// ONNX Runtime intra-op threads per model thread.
    #[arg(long, env = "DISTILLERY_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub threads: u32,
    /// Largest request body in bytes (more: 413).
    #[arg(long, env = "DISTILLERY_MAX_BODY_BYTES", default_value_t = 4 << 20)]
    pub max_body_bytes: usize,
    /// On SIGTERM, how long in-flight requests may take to finish before the server exits anyway,
    /// in seconds.
    #[arg(long, env = "DISTILLERY_DRAIN_TIMEOUT_SECONDS", default_value_t = 30)]
    pub drain_timeout_seconds: u64,
    /// Log filter (`info`, `debug`, `distillery_server=debug`, …).
    #[arg(long, env = "DISTILLERY_LOG", default_value = "info")]
    pub log_level: String,
}

/// An `--expect-digest` value: 64 lower-case hex digits, optionally prefixed by `sha256:`;
/// returns the hex digits alone.
pub fn parse_digest(value: &str) -> Result<String, String> {
    let hex = value.strip_prefix("sha256:").unwrap_or(value);
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        Ok(hex.to_string())
    } else {
        Err("expected a sha256 digest: 64 lower-case hex digits, optionally prefixed by `sha256:`".into())
    }
}

impl Config {
    /// How to reach the store of an `s3://` model.
    pub fn s3_settings(&self) -> distillery_store::S3Settings {
        distillery_store::S3Settings {
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
            force_path_style: self.s3_force_path_style,
            credentials: None,
        }
    }

    /// Where `s3://` models are downloaded.
    pub fn model_cache(&self) -> PathBuf {
        self.cache_dir.clone().unwrap_or_else(|| distillery_crds::cache::cache_dir().join("models"))
    }

    /// The batching limits.
    pub fn batch_limits(&self) -> BatchLimits {
        BatchLimits {
            max_batch_size: self.max_batch_size as usize,
            max_batch_tokens: self.max_batch_tokens as usize,
            max_delay: Duration::from_millis(u64::from(self.max_batch_delay_ms)),
        }
    }

    /// Model threads: the flag, else the CPUs available divided by `--threads` (at least 1).
    pub fn model_threads(&self) -> usize {
        self.model_threads.map(|n| n as usize).unwrap_or_else(|| {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            (cpus / self.threads as usize).max(1)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn an_expected_digest_is_taken_with_or_without_its_prefix() {
        for value in [DIGEST.to_string(), format!("sha256:{DIGEST}")] {
            let config =
                Config::try_parse_from(["distillery-server", "--model", "m", "--expect-digest", &value]).unwrap();
            assert_eq!(config.expect_digest.as_deref(), Some(DIGEST));
        }
        let config = Config::try_parse_from(["distillery-server", "--model", "m"]).unwrap();
        assert_eq!(config.expect_digest, None);
    }

    #[test]
    fn a_malformed_expected_digest_is_refused_at_start_up() {
        let upper = DIGEST.to_uppercase();
        let short = &DIGEST[..63];
        let other_algorithm = format!("sha512:{DIGEST}");
        let not_hex = "z".repeat(64);
        for value in [upper.as_str(), short, &other_algorithm, "", "sha256:", &not_hex] {
            let err = Config::try_parse_from(["distillery-server", "--model", "m", "--expect-digest", value])
                .unwrap_err()
                .to_string();
            assert!(err.contains("--expect-digest") && err.contains("64 lower-case hex digits"), "{value:?}: {err}");
        }
    }
}
