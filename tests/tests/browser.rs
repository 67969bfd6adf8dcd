//! The browser helper (`distillery_tests::browser`) on pages written here: what the Benchmark's
//! `report.html` tests rely on (the DOM after load, a screenshot that is not blank, console
//! errors). Needs Debian's chromium (`scripts/setup-chromium.sh`): without it these fail.

use std::path::PathBuf;
use std::time::Instant;

use distillery_tests::browser::{self, Rendered};

fn page(dir: &tempfile::TempDir, name: &str, html: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, html).unwrap();
    path
}

fn render(path: &std::path::Path) -> Rendered {
    let start = Instant::now();
    let rendered = browser::render(path).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("rendered {} in {:.2?}", path.display(), start.elapsed());
    rendered
}

/// Like the Benchmark's report: self-contained, inline SVG charts in `<figure id="chart-…">`, no
/// scripts.
const REPORT: &str = r##"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Benchmark</title>
<style>body { margin: 24px; font-family: sans-serif; background: #fff; }</style></head>
<body><h1>Benchmark “small” — 2 targets</h1>
<figure id="chart-latency"><figcaption>p50/p99 latency (ms)</figcaption>
<svg xmlns="http://www.w3.org/2000/svg" width="480" height="200" viewBox="0 0 480 200">
<rect x="40" y="60" width="120" height="140" fill="#4c78a8"/><rect x="200" y="20" width="120" height="180" fill="#f58518"/>
<text x="40" y="50">fp32</text><text x="200" y="14">int8</text></svg></figure>
<figure id="chart-accuracy"><figcaption>accuracy</figcaption>
<svg xmlns="http://www.w3.org/2000/svg" width="480" height="200"><polyline points="0,180 120,90 240,60 480,20"
 fill="none" stroke="#54a24b" stroke-width="4"/></svg></figure>
</body></html>
"##;

#[test]
fn a_report_with_inline_svg_charts_renders_without_console_errors() {
    let dir = tempfile::tempdir().unwrap();
    let rendered = render(&page(&dir, "report.html", REPORT));
    for id in ["chart-latency", "chart-accuracy"] {
        assert!(
            rendered.dom.contains(&format!("<figure id=\"{id}\">")),
            "no figure {id} in the DOM:\n{}",
            rendered.dom
        );
    }
    assert!(rendered.dom.contains("<svg"), "{}", rendered.dom);
    // The helper's own instrumentation leaves nothing behind in the DOM.
    assert!(!rendered.dom.contains("<script") && !rendered.dom.contains("<base"), "{}", rendered.dom);
    assert_eq!((rendered.width, rendered.height), browser::WINDOW);
    assert!(rendered.non_background_share > 0.01, "screenshot nearly blank: {}", rendered.non_background_share);
    assert!(rendered.console_errors.is_empty(), "{:?}", rendered.console_errors);
}

#[test]
fn console_errors_exceptions_and_failed_loads_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = page(
        &dir,
        "errors.html",
        r#"<!doctype html><html><body><p>errors</p><img src="missing.png">
<script>
console.log("just a log");
console.warn("just a warning");
console.error("boom");
Promise.reject(new Error("rejected"));
throw new Error("kaboom");
</script></body></html>"#,
    );
    let rendered = render(&path);
    let errors = &rendered.console_errors;
    assert!(errors.iter().any(|e| e == "boom"), "{errors:?}");
    assert!(errors.iter().any(|e| e.starts_with("Uncaught Error: kaboom")), "{errors:?}");
    assert!(errors.iter().any(|e| e.starts_with("Uncaught (in promise) Error: rejected")), "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("failed to load <img>") && e.contains("missing.png")), "{errors:?}");
    assert!(!errors.iter().any(|e| e.contains("just a")), "logs and warnings are not errors: {errors:?}");
    // The page's own script stays in the DOM.
    assert!(rendered.dom.contains("console.error(\"boom\")"), "{}", rendered.dom);
}

#[test]
fn a_blank_page_is_blank_and_the_decoder_reads_real_screenshots() {
    let dir = tempfile::tempdir().unwrap();
    let blank = render(&page(&dir, "blank.html", "<!doctype html><html><body></body></html>"));
    assert!(blank.non_background_share < 1e-6, "{}", blank.non_background_share);
    assert!(blank.console_errors.is_empty(), "{:?}", blank.console_errors);

    // A 200x100 red box at (100, 300) on white, relative resources resolved against the page's
    // own directory: exactly 20,000 pixels of 1280x2000 differ from the background.
    std::fs::create_dir(dir.path().join("css")).unwrap();
    std::fs::write(dir.path().join("css/box.css"), "#box { background: rgb(255, 0, 0); }").unwrap();
    let boxed = render(&page(
        &dir,
        "box.html",
        r#"<!doctype html><html><head><link rel="stylesheet" href="css/box.css"></head>
<body style="margin:0;background:#fff"><div id="box" style="position:absolute;left:100px;top:300px;width:200px;height:100px"></div></body></html>"#,
    ));
    assert!(boxed.console_errors.is_empty(), "{:?}", boxed.console_errors);
    let image = browser::decode_png(&boxed.screenshot).unwrap();
    assert_eq!((image.width, image.height), browser::WINDOW);
    assert_eq!(&image.pixel(0, 0)[..3], &[255, 255, 255]);
    assert_eq!(&image.pixel(150, 350)[..3], &[255, 0, 0]);
    assert_eq!(&image.pixel(99, 350)[..3], &[255, 255, 255]);
    assert_eq!(&image.pixel(300, 399)[..3], &[255, 255, 255]);
    assert_eq!(&image.pixel(299, 399)[..3], &[255, 0, 0]);
    let expected = 200.0 * 100.0 / (1280.0 * 2000.0);
    assert!((boxed.non_background_share - expected).abs() < 1e-9, "{} vs {expected}", boxed.non_background_share);
}

#[test]
fn without_chromium_rendering_fails_and_says_how_to_install_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = page(&dir, "report.html", REPORT);
    let error = browser::render_with(&dir.path().join("no-chromium"), &path).unwrap_err();
    assert!(error.contains("run scripts/setup-chromium.sh"), "{error}");
}
