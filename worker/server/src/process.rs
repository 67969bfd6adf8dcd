//! The standard `process_*` metrics of the server, from `/proc` ([`distillery_model::process`]).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use distillery_model::process::stats;

/// Exports this process's stats on every scrape: `process_cpu_seconds_total`,
/// `process_resident_memory_bytes`, `process_start_time_seconds` (the names Prometheus' own
/// clients use) and `distillery_server_peak_resident_memory_bytes`. Nothing is exported where
/// `/proc` cannot be read.
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(s) = stats(None) else { return Ok(()) };
        let cpu = ConstCounter::new(s.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        let gauges: [(&str, &str, f64); 3] = [
            ("process_resident_memory_bytes", "Resident memory size in bytes", s.resident_bytes as f64),
            (
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds",
                s.start_time_seconds,
            ),
            (
                "distillery_server_peak_resident_memory_bytes",
                "The most resident memory the server process has had, in bytes",
                s.peak_resident_bytes as f64,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}
