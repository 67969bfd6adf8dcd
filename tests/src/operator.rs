//! The operator binary as a child process of a test, against the in-process API server.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::cluster::workspace_binary;

/// The operator as a child process, killed when dropped.
pub struct OperatorProcess(Child);

impl OperatorProcess {
    /// Starts `distillery-operator run` as the chart runs it — as its ServiceAccount, with the chart's
    /// environment (the test's flags still win) and a pod name of its own: a restarted operator
    /// is a new pod to leader election, which waits for the old one's Lease to expire unless it
    /// was released. It uses the test images and logs to `log`; `DISTILLERY_OPERATOR_BIN` runs
    /// another build (e.g. release).
    pub fn start_as(identity: &crate::identity::OperatorIdentity, log: &Path, extra: &[&str]) -> Self {
        static STARTS: AtomicU32 = AtomicU32::new(0);
        let pod = format!("distillery-{}-{}", std::process::id(), STARTS.fetch_add(1, Ordering::Relaxed));
        let env: Vec<(String, String)> = identity
            .env
            .iter()
            .map(|(k, v)| (k.clone(), if v == crate::identity::POD_NAME_PLACEHOLDER { pod.clone() } else { v.clone() }))
            .collect();
        Self::start_with_env(&identity.kubeconfig, &env, log, extra)
    }

    fn start_with_env(kubeconfig: &Path, env: &[(String, String)], log: &Path, extra: &[&str]) -> Self {
        let log = std::fs::File::create(log).expect("the operator's log file");
        let binary = std::env::var_os("DISTILLERY_OPERATOR_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_binary("distillery-operator"));
        let child = Command::new(binary)
            .args(["run", "--http-address", "127.0.0.1", "--http-port", "0"])
            .args(["--worker-image", "ghcr.io/distillery-dev/distillery-worker:test"])
            .args(["--server-image", "ghcr.io/distillery-dev/distillery-server:test"])
            .args(extra)
            .envs(env.iter().cloned())
            .env("KUBECONFIG", kubeconfig)
            .env("DISTILLERY_LOG_LEVEL", "info,kube=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the operator binary starts");
        Self(child)
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status().expect("kill runs");
        self.0.wait().expect("the operator exits")
    }

    /// Whether the process is still running (it has not exited).
    pub fn is_running(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }

    /// Resident memory in KiB, from /proc.
    pub fn resident_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).expect("/proc status");
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
        line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("a number of KiB")
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
