//! CPU time and memory of a process, read from Linux's `/proc`: what the server exports as the
//! standard `process_*` metrics (and its peak resident memory), and what a benchmark reads of the
//! server processes it starts. The parsers are pure and tested on captured text.

use std::path::PathBuf;

/// Clock ticks per second of the times in `/proc/<pid>/stat` (the kernel's `USER_HZ`, which is
/// 100 on every architecture Linux runs containers on; the ABI fixes it, whatever the kernel's
/// own tick rate).
pub const USER_HZ: f64 = 100.0;

/// What `/proc` says of one process.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProcessStats {
    /// User and system CPU time, seconds, of all its threads (exited threads included).
    pub cpu_seconds: f64,
    /// Resident memory now, bytes (`VmRSS`).
    pub resident_bytes: u64,
    /// The most resident memory it ever had, bytes (`VmHWM`).
    pub peak_resident_bytes: u64,
    /// When it started, seconds since the Unix epoch.
    pub start_time_seconds: f64,
}

/// Why `/proc` could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ProcError {
    /// The file.
    pub path: PathBuf,
    /// What went wrong.
    pub message: String,
}

/// CPU time (utime + stime) and start time in ticks since boot, from `/proc/<pid>/stat`. The
/// command name (field 2) may hold spaces and parentheses, so fields are counted after its
/// last `)`.
pub fn parse_stat(text: &str) -> Option<(u64, u64)> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: field 3 (state) is fields[0]; utime is field 14, stime 15, starttime 22.
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some((field(14)? + field(15)?, field(22)?))
}

/// `VmRSS` and `VmHWM` in bytes, from `/proc/<pid>/status`.
pub fn parse_status(text: &str) -> Option<(u64, u64)> {
    let kib = |key: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        line[key.len()..].trim().trim_end_matches("kB").trim().parse::<u64>().ok().map(|k| k * 1024)
    };
    Some((kib("VmRSS:")?, kib("VmHWM:")?))
}

/// The boot time, seconds since the epoch, from `/proc/stat`'s `btime` line.
pub fn parse_boot_time(text: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse().ok())
}

fn read(path: PathBuf) -> Result<String, ProcError> {
    std::fs::read_to_string(&path).map_err(|e| ProcError { path, message: e.to_string() })
}

/// The stats of process `pid` (`None`: this process).
pub fn stats(pid: Option<u32>) -> Result<ProcessStats, ProcError> {
    let dir = PathBuf::from("/proc").join(pid.map_or_else(|| "self".to_string(), |p| p.to_string()));
    let unreadable = |path: PathBuf| move || ProcError { path, message: "not in the format Linux writes".into() };
    let stat_path = dir.join("stat");
    let (cpu_ticks, start_ticks) = parse_stat(&read(stat_path.clone())?).ok_or_else(unreadable(stat_path))?;
    let status_path = dir.join("status");
    let (resident_bytes, peak_resident_bytes) =
        parse_status(&read(status_path.clone())?).ok_or_else(unreadable(status_path))?;
    let boot_path = PathBuf::from("/proc/stat");
    let boot = parse_boot_time(&read(boot_path.clone())?).ok_or_else(unreadable(boot_path))?;
    Ok(ProcessStats {
        cpu_seconds: cpu_ticks as f64 / USER_HZ,
        resident_bytes,
        peak_resident_bytes,
        start_time_seconds: boot as f64 + start_ticks as f64 / USER_HZ,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        // A command name with a space and a parenthesis; utime 250, stime 50, starttime 1234.
        let stat = "4242 (tokio (rt) 1) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 9 0 1234 \
                    104857600 2560 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 3 0 0 0 0 0";
        assert_eq!(parse_stat(stat), Some((300, 1234)));
        assert_eq!(parse_stat("4242 (x) S 1"), None, "too few fields");
    }

    #[test]
    fn status_memory_lines_are_read_in_bytes() {
        let status = "Name:\tdistillery-serv\nVmPeak:\t  900000 kB\nVmHWM:\t   81920 kB\nVmRSS:\t   40960 kB\n";
        assert_eq!(parse_status(status), Some((40960 * 1024, 81920 * 1024)));
        assert_eq!(parse_status("Name:\tx\n"), None);
        assert_eq!(parse_boot_time("cpu 1 2 3\nbtime 1764000000\nprocesses 9\n"), Some(1_764_000_000));
    }

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let before = stats(None).unwrap();
        // Spin until the CPU time moves (it counts in 10 ms ticks), for at most 5 s.
        let started = std::time::Instant::now();
        let mut x = 0u64;
        let mut after = before;
        while after.cpu_seconds <= before.cpu_seconds && started.elapsed().as_secs() < 5 {
            for i in 0..1_000_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
            after = stats(None).unwrap();
        }
        std::hint::black_box(x);
        assert!(after.cpu_seconds > before.cpu_seconds, "{before:?} → {after:?}");
        assert!(after.resident_bytes > 0 && after.peak_resident_bytes >= after.resident_bytes);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        assert!((now - after.start_time_seconds).abs() < 3600.0, "started within the hour: {after:?}");
    }
}
