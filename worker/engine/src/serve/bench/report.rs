//! The benchmark's report: `results.json` (everything measured), `report.md` and a
//! self-contained `report.html` whose charts are inline SVG (no script, nothing fetched), and the
//! table `bench` prints. Pure text building, apart from [`write`].

use std::fmt::Write as _;
use std::path::Path;

use super::{BenchError, BenchReport, TargetReport};

/// Files the report directory holds.
pub const FILES: [&str; 3] = ["report.html", "report.md", "results.json"];
/// Ids of the HTML report's charts, in page order.
pub const CHARTS: [&str; 4] = ["chart-latency", "chart-accuracy-p99", "chart-throughput", "chart-robustness"];

const COLORS: [&str; 8] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
const W: f64 = 640.0;
const H: f64 = 300.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 16.0;
const BOTTOM: f64 = 44.0;

/// Writes the three files into `dir` (created if needed).
pub fn write(report: &BenchReport, dir: &Path) -> Result<(), BenchError> {
    let fail = |e: std::io::Error| BenchError::Report { path: dir.display().to_string(), message: e.to_string() };
    std::fs::create_dir_all(dir).map_err(fail)?;
    let json = serde_json::to_string_pretty(report).expect("the report serializes");
    for (file, text) in [("results.json", json), ("report.md", markdown(report)), ("report.html", html(report))] {
        // Written beside, then renamed: a reader never sees half a file.
        let tmp = dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text).map_err(fail)?;
        std::fs::rename(&tmp, dir.join(file)).map_err(fail)?;
    }
    Ok(())
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.2}%", v * 100.0))
}

fn num(v: Option<f64>, decimals: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.decimals$}"))
}

fn mib(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| format!("{:.1}", v as f64 / (1024.0 * 1024.0)))
}

fn difference(t: &TargetReport) -> String {
    t.result.accuracy_vs_first.as_ref().map_or("-".into(), |p| {
        format!(
            "{:+.2} [{:+.2}, {:+.2}] ({}↓ {}↑)",
            (p.low + p.high) / 2.0 * 100.0,
            p.low * 100.0,
            p.high * 100.0,
            p.first_only_correct,
            p.this_only_correct
        )
    })
}

/// The figures as rows of cells: header first.
fn rows(report: &BenchReport) -> Vec<Vec<String>> {
    let first = report.targets.first().map(|t| t.result.name.clone()).unwrap_or_default();
    let mut rows = vec![vec![
        "target".to_string(),
        "accuracy".into(),
        format!("Δ vs {first}, points (95% CI)"),
        "robust acc.".into(),
        "p50 ms".into(),
        "p95 ms".into(),
        "p99 ms".into(),
        "req/s".into(),
        "errors".into(),
        "cold start ms".into(),
        "CPU s / 1k req".into(),
        "peak MiB".into(),
    ]];
    for t in &report.targets {
        let r = &t.result;
        rows.push(vec![
            r.name.clone(),
            pct(r.accuracy),
            difference(t),
            pct(r.robust_accuracy),
            num(r.p50_ms, 2),
            num(r.p95_ms, 2),
            num(r.p99_ms, 2),
            num(r.throughput, 1),
            pct(r.error_rate),
            num(r.cold_start_ms, 0),
            num(r.cpu_seconds_per_1k_requests, 3),
            mib(r.peak_memory_bytes),
        ]);
    }
    rows
}

/// Each later target against the first: how many times the first's throughput, p50 and p99.
fn ratios(report: &BenchReport) -> Vec<String> {
    let Some(first) = report.targets.first() else { return vec![] };
    let f = &first.result;
    report.targets[1..]
        .iter()
        .filter_map(|t| {
            let r = &t.result;
            let ratio = |a: Option<f64>, b: Option<f64>| Some(a? / b.filter(|b| *b > 0.0)?);
            let (tp, p50, p99) =
                (ratio(r.throughput, f.throughput), ratio(r.p50_ms, f.p50_ms), ratio(r.p99_ms, f.p99_ms));
            if tp.is_none() && p99.is_none() {
                return None;
            }
            Some(format!(
                "{} / {}: {}× the throughput, {}× the p50, {}× the p99",
                r.name,
                f.name,
                num(tp, 2),
                num(p50, 2),
                num(p99, 2)
            ))
        })
        .collect()
}

/// The table `bench` prints: aligned columns, then the ratios to the first target.
pub fn table(report: &BenchReport) -> String {
    let rows = rows(report);
    let widths: Vec<usize> =
        (0..rows[0].len()).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (cell, w))| if i == 0 { format!("{cell:<w$}") } else { format!("{cell:>w$}") })
            .collect();
        out += cells.join("  ").trim_end();
        out.push('\n');
    }
    for line in ratios(report) {
        out += &line;
        out.push('\n');
    }
    out
}

/// The Markdown report.
pub fn markdown(report: &BenchReport) -> String {
    let mut md = format!("# Benchmark {}\n\n", report.name);
    let _ = writeln!(
        md,
        "{} inputs ({} labelled) from `{}`; load: {}. Ran on {} at {}.\n",
        report.inputs, report.labelled, report.dataset, report.load, report.host, report.generated_at
    );
    let rows = rows(report);
    let _ = writeln!(md, "| {} |", rows[0].join(" | "));
    let _ = writeln!(md, "|{}", " --- |".repeat(rows[0].len()));
    for row in &rows[1..] {
        let _ = writeln!(md, "| {} |", row.join(" | "));
    }
    md.push('\n');
    for line in ratios(report) {
        let _ = writeln!(md, "- {line}");
    }
    if !report.perturbations.is_empty() {
        md += "\n## Robustness: the perturbations (seeded, the same for every target)\n\n";
        for p in &report.perturbations {
            let _ = writeln!(
                md,
                "- **{}** — {} inputs. e.g. `{}` → `{}`",
                p.description, p.inputs, p.example_before, p.example_after
            );
        }
    }
    md += "\n## Targets\n\n";
    for t in &report.targets {
        let _ = writeln!(md, "- **{}**: {}", t.result.name, t.source);
        if let Some(c) = t.cold_start {
            let _ = writeln!(
                md,
                "  - cold start: ready after {:.0} ms, first answer after {:.0} ms",
                c.ready_ms, c.first_answer_ms
            );
        }
        if let Some(l) = &t.load {
            let codes: Vec<String> = l.errors_by_code.iter().map(|(c, n)| format!("{c}: {n}")).collect();
            let _ = writeln!(
                md,
                "  - load: {} answered in {:.1} s, max {:.2} ms; failures by status: {}",
                l.ok,
                l.seconds,
                l.max_ms,
                if codes.is_empty() { "none".into() } else { codes.join(", ") }
            );
        }
        if !t.robust_accuracy_by_kind.is_empty() {
            let kinds: Vec<String> =
                t.robust_accuracy_by_kind.iter().map(|(k, a)| format!("{k:?} {:.2}%", a * 100.0)).collect();
            let _ = writeln!(md, "  - robustness by perturbation: {}", kinds.join(", "));
        }
        if let Some(r) = &t.resources {
            let _ = writeln!(
                md,
                "  - resources: {:.2} CPU s for {:.0} requests, peak {} MiB (from {})",
                r.cpu_seconds,
                r.requests,
                mib(Some(r.peak_memory_bytes)),
                r.source
            );
        }
    }
    md
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn color(i: usize) -> &'static str {
    COLORS[i % COLORS.len()]
}

/// A "nice" upper bound for an axis ending at `max`.
fn nice_max(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * magnitude).find(|v| *v >= max).unwrap_or(10.0 * magnitude)
}

/// An SVG frame with axes, ticks and labels; `x(v)`/`y(v)` map values into it.
struct Frame {
    x_max: f64,
    y_min: f64,
    y_max: f64,
}

impl Frame {
    fn x(&self, v: f64) -> f64 {
        LEFT + (v / self.x_max).clamp(0.0, 1.0) * (W - LEFT - RIGHT)
    }

    fn y(&self, v: f64) -> f64 {
        let f = ((v - self.y_min) / (self.y_max - self.y_min)).clamp(0.0, 1.0);
        H - BOTTOM - f * (H - TOP - BOTTOM)
    }

    /// Axes with four grid steps; `x_label` empty: no x ticks (bars name their own places).
    fn axes(&self, svg: &mut String, x_label: &str, y_label: &str, y_format: impl Fn(f64) -> String) {
        let (x0, y0, x1, y1) = (LEFT, H - BOTTOM, W - RIGHT, TOP);
        let _ = write!(
            svg,
            r##"<g class="axes" stroke="#444" stroke-width="1"><line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}"/><line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}"/></g>"##
        );
        for k in 0..=4 {
            let xv = self.x_max * f64::from(k) / 4.0;
            let yv = self.y_min + (self.y_max - self.y_min) * f64::from(k) / 4.0;
            let (x, y) = (self.x(xv), self.y(yv));
            if !x_label.is_empty() {
                let _ = write!(
                    svg,
                    r##"<line x1="{x}" y1="{y0}" x2="{x}" y2="{}" stroke="#444"/><text x="{x}" y="{}" text-anchor="middle" font-size="11">{}</text>"##,
                    y0 + 4.0,
                    y0 + 16.0,
                    trim_number(xv)
                );
            }
            let _ = write!(
                svg,
                r##"<line x1="{x0}" y1="{y}" x2="{x1}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end" font-size="11">{}</text>"##,
                x0 - 6.0,
                y + 4.0,
                y_format(yv)
            );
        }
        let _ = write!(
            svg,
            r##"<text x="{}" y="{}" text-anchor="middle" font-size="12">{}</text><text transform="translate(14 {}) rotate(-90)" text-anchor="middle" font-size="12">{}</text>"##,
            (x0 + x1) / 2.0,
            H - 8.0,
            escape(x_label),
            (y0 + y1) / 2.0,
            escape(y_label)
        );
    }
}

fn trim_number(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn svg_open(id: &str, title: &str) -> String {
    format!(
        r##"<figure id="{id}"><figcaption>{}</figcaption><svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{}">"##,
        escape(title),
        escape(title)
    )
}

fn legend(svg: &mut String, names: &[&str]) {
    for (i, name) in names.iter().enumerate() {
        let (x, y) = (W - RIGHT - 150.0, TOP + 4.0 + 16.0 * i as f64);
        let _ = write!(
            svg,
            r##"<rect x="{x}" y="{y}" width="10" height="10" fill="{}"/><text x="{}" y="{}" font-size="11">{}</text>"##,
            color(i),
            x + 14.0,
            y + 9.0,
            escape(name)
        );
    }
}

fn not_measured(id: &str, title: &str, what: &str) -> String {
    let mut svg = svg_open(id, title);
    let _ = write!(
        svg,
        r##"<text x="{}" y="{}" text-anchor="middle" font-size="13" fill="#666">{}</text></svg></figure>"##,
        W / 2.0,
        H / 2.0,
        escape(what)
    );
    svg
}

/// Cumulative latency distribution per target.
fn latency_chart(report: &BenchReport) -> String {
    let (id, title) = (CHARTS[0], "Latency distribution: share of requests answered within x ms");
    let series: Vec<(&str, &[f64])> = report
        .targets
        .iter()
        .filter_map(|t| Some((t.result.name.as_str(), t.load.as_ref()?.latencies_ms.as_slice())))
        .filter(|(_, l)| !l.is_empty())
        .collect();
    if series.is_empty() {
        return not_measured(id, title, "latency not measured");
    }
    // Up to the largest p99.9, so one slow outlier does not flatten every curve.
    let top = series.iter().map(|(_, l)| crate::serve::loadgen::percentile(l, 0.999)).fold(0.0, f64::max);
    let frame = Frame { x_max: nice_max(top), y_min: 0.0, y_max: 1.0 };
    let mut svg = svg_open(id, title);
    frame.axes(&mut svg, "latency, ms", "share of requests", |v| format!("{:.0}%", v * 100.0));
    for (i, (_, latencies)) in series.iter().enumerate() {
        let n = latencies.len();
        let step = (n / 300).max(1);
        let points: Vec<String> = (0..n)
            .step_by(step)
            .chain([n - 1])
            .map(|k| format!("{:.1},{:.1}", frame.x(latencies[k]), frame.y((k + 1) as f64 / n as f64)))
            .collect();
        let _ = write!(
            svg,
            r##"<polyline class="series" fill="none" stroke="{}" stroke-width="2" points="{}"/>"##,
            color(i),
            points.join(" ")
        );
    }
    legend(&mut svg, &series.iter().map(|(n, _)| *n).collect::<Vec<_>>());
    svg + "</svg></figure>"
}

/// Accuracy against p99 latency: up and to the left is better.
fn accuracy_chart(report: &BenchReport) -> String {
    let (id, title) = (CHARTS[1], "Accuracy vs p99 latency (up and left is better)");
    let points: Vec<(usize, &str, f64, f64)> = report
        .targets
        .iter()
        .enumerate()
        .filter_map(|(i, t)| Some((i, t.result.name.as_str(), t.result.p99_ms?, t.result.accuracy?)))
        .collect();
    if points.is_empty() {
        return not_measured(id, title, "needs both accuracy and latency");
    }
    let x_max = nice_max(points.iter().map(|p| p.2).fold(0.0, f64::max) * 1.1);
    // From a multiple of 20% below the lowest accuracy, so the four grid steps are round.
    let lowest = points.iter().map(|p| p.3).fold(1.0, f64::min);
    let y_min = ((lowest - 0.02) / 0.2).floor().max(0.0) * 0.2;
    let frame = Frame { x_max, y_min, y_max: 1.0 };
    let mut svg = svg_open(id, title);
    frame.axes(&mut svg, "p99 latency, ms", "accuracy", |v| format!("{:.0}%", v * 100.0));
    for (i, name, p99, accuracy) in &points {
        let (x, y) = (frame.x(*p99), frame.y(*accuracy));
        let _ = write!(
            svg,
            r##"<circle class="series" cx="{x:.1}" cy="{y:.1}" r="6" fill="{}"/><text x="{:.1}" y="{:.1}" font-size="11">{}</text>"##,
            color(*i),
            x + 9.0,
            y - 7.0,
            escape(name)
        );
    }
    svg + "</svg></figure>"
}

/// Horizontal bars, one per target.
fn bars(id: &str, title: &str, axis: &str, values: &[(usize, &str, f64)], format: impl Fn(f64) -> String) -> String {
    if values.is_empty() {
        return not_measured(id, title, &format!("{axis}: not measured"));
    }
    let max = nice_max(values.iter().map(|v| v.2).fold(0.0, f64::max));
    let mut svg = svg_open(id, title);
    let left = 130.0;
    let band = (H - TOP - BOTTOM) / values.len() as f64;
    for (k, (i, name, v)) in values.iter().enumerate() {
        let y = TOP + band * k as f64 + band * 0.15;
        let width = (v / max).clamp(0.0, 1.0) * (W - left - RIGHT - 70.0);
        let _ = write!(
            svg,
            r##"<text x="{}" y="{:.1}" text-anchor="end" font-size="11">{}</text><rect class="series" x="{left}" y="{y:.1}" width="{width:.1}" height="{:.1}" fill="{}"/><text x="{:.1}" y="{:.1}" font-size="11">{}</text>"##,
            left - 6.0,
            y + band * 0.45,
            escape(name),
            band * 0.7,
            color(*i),
            left + width + 4.0,
            y + band * 0.45,
            format(*v)
        );
    }
    let _ = write!(
        svg,
        r##"<text x="{}" y="{}" text-anchor="middle" font-size="12">{}</text>"##,
        (left + W) / 2.0,
        H - 8.0,
        escape(axis)
    );
    svg + "</svg></figure>"
}

fn throughput_chart(report: &BenchReport) -> String {
    let values: Vec<(usize, &str, f64)> = report
        .targets
        .iter()
        .enumerate()
        .filter_map(|(i, t)| Some((i, t.result.name.as_str(), t.result.throughput?)))
        .collect();
    bars(CHARTS[2], "Throughput", "requests per second", &values, |v| format!("{v:.1}"))
}

/// Accuracy and robust accuracy side by side, per target.
fn robustness_chart(report: &BenchReport) -> String {
    let (id, title) = (CHARTS[3], "Accuracy on the inputs as given and perturbed");
    let pairs: Vec<(usize, &str, f64, f64)> = report
        .targets
        .iter()
        .enumerate()
        .filter_map(|(i, t)| Some((i, t.result.name.as_str(), t.result.accuracy?, t.result.robust_accuracy?)))
        .collect();
    if pairs.is_empty() {
        return not_measured(id, title, "robustness not measured");
    }
    let mut svg = svg_open(id, title);
    let frame = Frame { x_max: 1.0, y_min: 0.0, y_max: 1.0 };
    let band = (W - LEFT - RIGHT) / pairs.len() as f64;
    frame.axes(&mut svg, "", "accuracy", |v| format!("{:.0}%", v * 100.0));
    for (k, (i, name, accuracy, robust)) in pairs.iter().enumerate() {
        let x = LEFT + band * k as f64 + band * 0.15;
        let w = band * 0.33;
        for (j, (v, opacity)) in [(*accuracy, 1.0), (*robust, 0.5)].iter().enumerate() {
            let y = frame.y(*v);
            let _ = write!(
                svg,
                r##"<rect class="series" x="{:.1}" y="{y:.1}" width="{w:.1}" height="{:.1}" fill="{}" fill-opacity="{opacity}"/>"##,
                x + w * j as f64,
                H - BOTTOM - y,
                color(*i)
            );
        }
        let _ = write!(
            svg,
            r##"<text x="{:.1}" y="{}" text-anchor="middle" font-size="11">{}</text>"##,
            x + w,
            H - BOTTOM + 30.0,
            escape(name)
        );
    }
    let _ = write!(
        svg,
        r##"<text x="{}" y="{}" font-size="11">solid: as given · pale: perturbed</text>"##,
        LEFT + 8.0,
        TOP + 12.0
    );
    svg + "</svg></figure>"
}

/// The HTML report: summary, table, charts, perturbations, per-target details. No script, no
/// external resource.
pub fn html(report: &BenchReport) -> String {
    let summary = report.summary();
    let (best_accuracy, best_p99) = summary.winners();
    let mut page = format!(
        r##"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Benchmark {name}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; padding: 0 1rem; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.9rem; }} th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }} thead {{ background: #f3f3f3; }}
figure {{ display: inline-block; margin: 1rem 1rem 0 0; }} figcaption {{ font-weight: 600; margin-bottom: 4px; }}
.winner {{ font-size: 1.1rem; }} code {{ background: #f3f3f3; padding: 0 3px; }}
</style></head><body>
<h1>Benchmark {name}</h1>
<p>{inputs} inputs ({labelled} labelled) from <code>{dataset}</code>; load: {load}.</p>
<p class="winner">Best accuracy: <strong>{best_accuracy}</strong> · Lowest p99: <strong>{best_p99}</strong></p>
"##,
        name = escape(&report.name),
        inputs = report.inputs,
        labelled = report.labelled,
        dataset = escape(&report.dataset),
        load = escape(&report.load),
        best_accuracy = escape(best_accuracy.as_deref().unwrap_or("-")),
        best_p99 = escape(best_p99.as_deref().unwrap_or("-")),
    );
    let rows = rows(report);
    page += "<table id=\"results\"><thead><tr>";
    for h in &rows[0] {
        let _ = write!(page, "<th>{}</th>", escape(h));
    }
    page += "</tr></thead><tbody>";
    for row in &rows[1..] {
        page += "<tr>";
        for cell in row {
            let _ = write!(page, "<td>{}</td>", escape(cell));
        }
        page += "</tr>";
    }
    page += "</tbody></table>\n<ul>";
    for line in ratios(report) {
        let _ = write!(page, "<li>{}</li>", escape(&line));
    }
    page += "</ul>\n<section id=\"charts\">";
    page += &latency_chart(report);
    page += &accuracy_chart(report);
    page += &throughput_chart(report);
    page += &robustness_chart(report);
    page += "</section>\n";
    if !report.perturbations.is_empty() {
        page += "<h2>Robustness: the perturbations</h2><p>Seeded; every target gets the same perturbed texts.</p><ul>";
        for p in &report.perturbations {
            let _ = write!(
                page,
                "<li><strong>{}</strong> — {} inputs, e.g. <code>{}</code> → <code>{}</code></li>",
                escape(&p.description),
                p.inputs,
                escape(&p.example_before),
                escape(&p.example_after)
            );
        }
        page += "</ul>";
    }
    page += "<h2>Targets</h2><pre>";
    page += &escape(markdown(report).split("## Targets\n\n").nth(1).unwrap_or_default());
    let _ = writeln!(
        page,
        "</pre><footer><p>Ran on {} at {}. Written by distillery-worker {}.</p></footer></body></html>",
        escape(&report.host),
        escape(&report.generated_at),
        env!("CARGO_PKG_VERSION")
    );
    page
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use distillery_crds::benchmark::{PairedDifference, TargetResult};

    use super::*;
    use crate::serve::loadgen::LevelReport;

    fn target(name: &str, accuracy: f64, p99: f64, throughput: f64) -> TargetReport {
        TargetReport {
            result: TargetResult {
                name: name.into(),
                requests: 100,
                accuracy: Some(accuracy),
                robust_accuracy: Some(accuracy - 0.1),
                p50_ms: Some(p99 / 3.0),
                p95_ms: Some(p99 / 1.5),
                p99_ms: Some(p99),
                throughput: Some(throughput),
                error_rate: Some(0.0),
                ..Default::default()
            },
            source: format!("artifact /a/{name}"),
            cold_start: None,
            load: Some(LevelReport {
                target: name.into(),
                concurrency: 4,
                offered_rate: None,
                seconds: 1.0,
                ok: 100,
                rejected: 0,
                errors: 0,
                throughput,
                p50_ms: p99 / 3.0,
                p95_ms: p99 / 1.5,
                p99_ms: p99,
                max_ms: p99,
                p99_sent_ms: p99,
                errors_by_code: BTreeMap::new(),
                latencies_ms: (1..=100).map(|k| p99 * f64::from(k) / 99.0).collect(),
            }),
            robust_accuracy_by_kind: BTreeMap::new(),
            resources: None,
            correct: vec![],
        }
    }

    fn report() -> BenchReport {
        let mut int8 = target("int8 <b>", 0.88, 2.0, 900.0);
        int8.result.accuracy_vs_first =
            Some(PairedDifference { first_only_correct: 5, this_only_correct: 2, low: -0.04, high: 0.01 });
        BenchReport {
            name: "cmp".into(),
            generated_at: "2026-12-02T00:00:00Z".into(),
            report_uri: "file:///r".into(),
            dataset: "file:///d.csv".into(),
            inputs: 100,
            labelled: 100,
            load: "100 requests".into(),
            metrics: vec![],
            perturbations: vec![],
            host: "test CPU".into(),
            targets: vec![target("fp32", 0.9, 4.0, 450.0), int8],
        }
    }

    #[test]
    fn the_html_has_every_chart_with_a_series_per_target_and_no_script() {
        let page = html(&report());
        for id in CHARTS {
            let at = page.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("{id} missing"));
            let figure = &page[at..at + page[at..].find("</figure>").unwrap()];
            assert!(figure.contains("<svg"), "{id} has an SVG");
            assert!(figure.matches("class=\"series\"").count() >= 2, "{id} draws both targets");
        }
        assert!(!page.to_lowercase().contains("<script"), "no script");
        assert!(!page.contains("src=\"http") && !page.contains("href=\"http"), "nothing fetched");
        assert!(page.contains("int8 &lt;b&gt;") && !page.contains("int8 <b>"), "names are escaped");
        assert!(
            page.contains("Best accuracy: <strong>fp32</strong>")
                && page.contains("Lowest p99: <strong>int8 &lt;b&gt;</strong>")
        );
    }

    #[test]
    fn the_table_gives_figures_the_difference_and_ratios_to_the_first() {
        let t = table(&report());
        assert!(t.contains("int8 <b> / fp32: 2.00× the throughput, 0.50× the p50, 0.50× the p99"), "{t}");
        assert!(t.contains("-1.50 [-4.00, +1.00] (5↓ 2↑)"), "{t}");
        assert!(t.lines().next().unwrap().starts_with("target"));
        let md = markdown(&report());
        assert!(md.contains("| fp32 | 90.00% | - | 80.00% |"), "{md}");
    }

    #[test]
    fn a_figure_not_measured_still_has_its_chart_saying_so() {
        let mut r = report();
        for t in &mut r.targets {
            t.load = None;
            t.result.robust_accuracy = None;
        }
        let page = html(&r);
        for id in CHARTS {
            assert!(page.contains(&format!("id=\"{id}\"")), "{id}");
        }
        assert!(page.contains("latency not measured") && page.contains("robustness not measured"));
    }

    #[test]
    fn axes_end_on_round_numbers() {
        assert_eq!(nice_max(3.2), 5.0);
        assert_eq!(nice_max(0.7), 1.0);
        assert_eq!(nice_max(1200.0), 2000.0);
        assert_eq!(nice_max(0.0), 1.0);
    }
}
