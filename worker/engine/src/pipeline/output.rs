//! Where a run's artifact goes, and the rule that artifacts are immutable: a run refuses to
//! write over a complete artifact of another spec, before it starts and again before it writes
//! (locally or in an `s3://` bucket), and publishes an `s3://` artifact files first, manifest last.

use std::path::{Path, PathBuf};

use distillery_crds::DistillationJob;
use distillery_crds::manifest::{ArtifactManifest, MANIFEST_FILE};

use super::error::DistillError;
use crate::onnx::artifact as onnx_artifact;
use crate::store::{Location, Resolver, Store, StoreError, is_remote, sha256};

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DistillError + '_ {
    move |source| DistillError::Io { path: path.display().to_string(), source }
}

/// sha256 of the canonical JSON of `job`'s spec: the manifest's `lineage.specHash`.
pub fn spec_hash(job: &DistillationJob) -> String {
    sha256(serde_json::to_string(&job.spec).expect("specs serialize").as_bytes())
}

/// Refuses to write into `output` when it already holds a complete artifact (its manifest) made
/// from a spec other than the one hashing to `spec_hash`: artifacts are immutable once written.
/// An empty or missing directory, an interrupted run's (checkpoints, no manifest) and the same
/// spec's artifact (a rerun, which replaces it) are fine. The same spec is the manifest's
/// `lineage.specHash`, or the artifact's `job.json` hashed as this worker hashes specs (so a
/// rerun is not refused because the spec's serialized form gained a defaulted field).
pub fn check_output(output: &Path, spec_hash: &str) -> Result<(), DistillError> {
    let manifest_path = output.join(MANIFEST_FILE);
    let bytes = match std::fs::read(&manifest_path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(&manifest_path)(e)),
    };
    let job = std::fs::read(output.join(onnx_artifact::JOB_FILE)).ok();
    check_existing(&output.display().to_string(), &bytes, job.as_deref(), spec_hash)
}

/// [`check_output`] for an `s3://` output: the manifest and `job.json` under `uri` read through
/// `store` (no manifest there: fine). Listing the prefix first also fails fast — before any
/// training — on a missing bucket or refused credentials.
pub async fn check_remote_output(store: &Store, uri: &str, spec_hash: &str) -> Result<(), DistillError> {
    let listed = store.list(uri).await?;
    if !listed.iter().any(|(name, _)| name == MANIFEST_FILE) {
        return Ok(());
    }
    let base = uri.trim_end_matches('/');
    let manifest = store.get(&format!("{base}/{MANIFEST_FILE}")).await?;
    // A missing job.json is an artifact without one; any other failure to read it is an error,
    // not a reason to judge the artifact another spec's.
    let job = match store.get(&format!("{base}/{}", onnx_artifact::JOB_FILE)).await {
        Ok(bytes) => Some(bytes),
        Err(StoreError::NotFound { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    check_existing(uri, &manifest, job.as_deref(), spec_hash)
}

/// Publishes the complete artifact in `dir` to the `s3://` location `uri` (every file first, the
/// manifest last), after checking again that no other spec's artifact appeared there
/// meanwhile. Returns the manifest's sha256.
pub fn publish(resolver: &Resolver, dir: &Path, uri: &str, spec_hash: &str) -> Result<String, DistillError> {
    crate::store::block_on(async {
        check_remote_output(resolver.store(), uri, spec_hash).await?;
        Ok(resolver.store().publish_artifact(dir, uri).await?)
    })
}

/// Whether an existing artifact at `location` (its manifest's bytes, and its `job.json`'s when
/// there is one) may be written over by a run of the spec hashing to `spec_hash`.
fn check_existing(location: &str, manifest: &[u8], job: Option<&[u8]>, spec_hash: &str) -> Result<(), DistillError> {
    let path = location.to_string();
    let manifest: ArtifactManifest = serde_json::from_slice(manifest).map_err(|e| DistillError::Immutable {
        path: path.clone(),
        why: format!("holds a {MANIFEST_FILE} this worker cannot read ({e}), so it cannot tell which spec made it"),
    })?;
    let existing = &manifest.lineage.spec_hash;
    if existing == spec_hash {
        return Ok(());
    }
    let recorded = job.and_then(|b| serde_json::from_slice::<DistillationJob>(b).ok()).map(|job| self::spec_hash(&job));
    if recorded.as_deref() == Some(spec_hash) {
        return Ok(());
    }
    Err(DistillError::Immutable {
        path,
        why: format!(
            "already holds a complete artifact made from another spec (its lineage.specHash is {existing}, this job's is {spec_hash})"
        ),
    })
}

/// Where `job`'s artifact goes, as a local directory and the URI the summary reports: `--output`
/// when given — a directory, or a URI (the operator passes `<spec.output.uri>/<run id>`) — else
/// the spec's `output.uri`. An `s3://` URI is written locally first, in `runs/<bucket>/<key>` of
/// `resolver`'s work directory, and published from there ([`publish`]).
pub fn output_location(
    job: &DistillationJob,
    output: Option<&str>,
    resolver: &Resolver,
) -> Result<(PathBuf, String), StoreError> {
    let local = |uri: &str| -> Result<PathBuf, StoreError> {
        if is_remote(uri) {
            return resolver.staging("runs", uri);
        }
        match Location::parse(uri)? {
            Location::File(path) => Ok(path),
            Location::S3 { .. } => unreachable!("is_remote"),
        }
    };
    match output {
        Some(uri) if uri.contains("://") => Ok((local(uri)?, uri.to_string())),
        Some(dir) => Ok((PathBuf::from(dir), format!("file://{dir}"))),
        None => Ok((local(&job.spec.output.uri)?, job.spec.output.uri.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::ErrorPolicy;

    fn small_job() -> DistillationJob {
        crate::spec::parse(include_str!("../../tests/fixtures/small.yaml"), Path::new("small.yaml")).unwrap()
    }

    /// A complete artifact in `dir` made from `job`, its manifest recording `spec_hash`.
    fn write_artifact(dir: &Path, job: &DistillationJob, spec_hash: &str) {
        let mut manifest = ArtifactManifest::default();
        manifest.lineage.spec_hash = spec_hash.into();
        std::fs::write(dir.join(MANIFEST_FILE), serde_json::to_vec(&manifest).unwrap()).unwrap();
        std::fs::write(dir.join(onnx_artifact::JOB_FILE), serde_json::to_vec(job).unwrap()).unwrap();
    }

    #[test]
    fn an_artifact_of_another_spec_is_never_written_over() {
        let dir = tempfile::tempdir().unwrap();
        let job = small_job();
        let mut other = job.clone();
        other.spec.training.seed += 1;
        let (ours, theirs) = (spec_hash(&job), spec_hash(&other));
        assert_ne!(ours, theirs);
        // Nothing there yet, or only an interrupted run's checkpoints: fine.
        assert!(check_output(&dir.path().join("new"), &ours).is_ok());
        std::fs::create_dir_all(dir.path().join("checkpoints/student")).unwrap();
        assert!(check_output(dir.path(), &ours).is_ok());
        // The same spec's artifact: a rerun replaces it.
        write_artifact(dir.path(), &job, &ours);
        assert!(check_output(dir.path(), &ours).is_ok());
        // Another spec's: refused, saying why and what to do.
        let err = check_output(dir.path(), &theirs).unwrap_err();
        assert_eq!(err.policy(), ErrorPolicy::WaitForSpecChange);
        let message = err.to_string();
        for part in ["another spec", &ours, &theirs, "artifacts are immutable", "choose a new spec.output.uri"] {
            assert!(message.contains(part), "{part}: {message}");
        }
    }

    #[test]
    fn the_same_spec_hashed_by_an_older_worker_is_recognised_by_its_job_file() {
        let dir = tempfile::tempdir().unwrap();
        let job = small_job();
        write_artifact(dir.path(), &job, "a-hash-of-another-serialization");
        assert!(check_output(dir.path(), &spec_hash(&job)).is_ok());
        let mut other = job.clone();
        other.spec.training.seed += 1;
        assert!(matches!(check_output(dir.path(), &spec_hash(&other)), Err(DistillError::Immutable { .. })));
    }

    #[test]
    fn an_unreadable_manifest_is_not_written_over() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(MANIFEST_FILE), b"{not json").unwrap();
        let message = check_output(dir.path(), &spec_hash(&small_job())).unwrap_err().to_string();
        assert!(message.contains("cannot tell which spec made it"), "{message}");
    }

    #[test]
    fn the_output_is_the_flag_a_uri_in_it_or_the_spec_and_s3_is_staged_in_the_work_directory() {
        let job = small_job();
        let r = Resolver::new(Default::default(), PathBuf::from("/work"));
        let (dir, uri) = output_location(&job, Some("file:///artifacts/small/g2-0a1b2c3d"), &r).unwrap();
        assert_eq!(
            (dir, uri.as_str()),
            (PathBuf::from("/artifacts/small/g2-0a1b2c3d"), "file:///artifacts/small/g2-0a1b2c3d")
        );
        let (dir, uri) = output_location(&job, Some("/tmp/out"), &r).unwrap();
        assert_eq!((dir, uri.as_str()), (PathBuf::from("/tmp/out"), "file:///tmp/out"));
        let (dir, uri) = output_location(&job, None, &r).unwrap();
        assert_eq!(uri, job.spec.output.uri);
        assert_eq!(Some(dir.as_path()), job.spec.output.uri.strip_prefix("file://").map(Path::new));
        let (dir, uri) = output_location(&job, Some("s3://bucket/x/g1-0a1b2c3d"), &r).unwrap();
        assert_eq!(
            (dir, uri.as_str()),
            (PathBuf::from("/work/runs/bucket/x/g1-0a1b2c3d"), "s3://bucket/x/g1-0a1b2c3d")
        );
        let e = output_location(&job, Some("file://relative/x"), &r).unwrap_err();
        assert!(e.is_permanent(), "{e}");
    }
}
