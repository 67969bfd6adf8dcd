//! Rendering an HTML page (the Benchmark's `report.html`) in headless Chromium: the DOM after
//! load, a screenshot (decoded here: [`decode_png`]) and the page's console errors.
//!
//! Chromium is Debian's `chromium` package (`/usr/bin/chromium`, or `$CHROMIUM`), which
//! `scripts/setup-chromium.sh` installs where it is absent (`scripts/test.sh` runs it). Without
//! it [`render`] returns an error that says so: a test that needs a browser fails, it never
//! passes silently.
//!
//! One Chromium run does both `--dump-dom` and `--screenshot`, after the load event and a short
//! virtual-time budget. Console errors are read from Chromium's own log (`--enable-logging=stderr`),
//! which prints every console message of a web page at level INFO whatever its level; so the
//! page is rendered from a copy that starts with a small script of ours (it removes itself from
//! the DOM before the dump) that tags `console.error`, failed `console.assert`s and resources
//! that fail to load. Uncaught exceptions and rejected promises Chromium logs as `Uncaught …`.

use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What Chromium made of a page.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The document serialized after load (`--dump-dom`).
    pub dom: String,
    /// The screenshot of the window, as Chromium wrote it (PNG).
    pub screenshot: Vec<u8>,
    /// The screenshot's width in pixels.
    pub width: u32,
    /// The screenshot's height in pixels.
    pub height: u32,
    /// The share of the screenshot's pixels that differ from its top-left pixel (the
    /// background): about 0 for a blank page.
    pub non_background_share: f64,
    /// Console errors: `console.error` and failed `console.assert` messages, uncaught exceptions
    /// and rejected promises (`Uncaught …`), resources that failed to load, and console messages
    /// Chromium itself logs at level ERROR.
    pub console_errors: Vec<String>,
}

/// The browser's window, and so the screenshot's size.
pub const WINDOW: (u32, u32) = (1280, 2000);

/// How long one Chromium run may take before it is killed.
const TIMEOUT: Duration = Duration::from_secs(60);

/// The Chromium binary [`render`] runs: `$CHROMIUM`, else Debian's `/usr/bin/chromium`.
pub fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// Renders the HTML file `html` in headless Chromium ([`chromium`]); an error when Chromium is
/// missing (run `scripts/setup-chromium.sh`), fails, or its screenshot cannot be decoded.
pub fn render(html: &Path) -> Result<Rendered, String> {
    render_with(&chromium(), html)
}

/// [`render`] with the Chromium binary `chromium`.
pub fn render_with(chromium: &Path, html: &Path) -> Result<Rendered, String> {
    if !chromium.is_file() {
        return Err(format!(
            "Chromium not found at {}: run scripts/setup-chromium.sh (installs Debian's chromium package), \
             or set CHROMIUM to a Chromium binary",
            chromium.display()
        ));
    }
    let html = std::path::absolute(html).map_err(|e| format!("{}: {e}", html.display()))?;
    let source = std::fs::read(&html).map_err(|e| format!("reading {}: {e}", html.display()))?;
    let scratch = tempfile::Builder::new()
        .prefix("distillery-browser-")
        .tempdir()
        .map_err(|e| format!("creating a temporary directory: {e}"))?;
    let dir = scratch.path();
    let base = file_url(html.parent().unwrap_or(Path::new("/")), true);
    let page = dir.join("page.html");
    std::fs::write(&page, instrument(&source, &base)).map_err(|e| format!("writing {}: {e}", page.display()))?;
    let screenshot_path = dir.join("screenshot.png");
    let stdout_path = dir.join("stdout");
    let stderr_path = dir.join("stderr");
    let file = |path: &Path| std::fs::File::create(path).map_err(|e| format!("creating {}: {e}", path.display()));

    let mut command = Command::new(chromium);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            "--virtual-time-budget=1000",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--window-size={},{}", WINDOW.0, WINDOW.1))
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .arg("--dump-dom")
        .arg(format!("--screenshot={}", screenshot_path.display()))
        .arg(file_url(&page, false))
        .stdin(Stdio::null())
        .stdout(file(&stdout_path)?)
        .stderr(file(&stderr_path)?);
    // Its own process group, so that a run past the timeout is killed with all its children.
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = command.spawn().map_err(|e| format!("starting {}: {e}", chromium.display()))?;
    let start = Instant::now();
    let status = loop {
        match child.try_wait().map_err(|e| format!("waiting for Chromium: {e}"))? {
            Some(status) => break status,
            None if start.elapsed() > TIMEOUT => {
                let _ = Command::new("kill").arg("-KILL").arg(format!("-{}", child.id())).status();
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("Chromium did not finish rendering {} within {TIMEOUT:?}", html.display()));
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let stderr = String::from_utf8_lossy(&std::fs::read(&stderr_path).unwrap_or_default()).into_owned();
    let dom = String::from_utf8_lossy(&std::fs::read(&stdout_path).unwrap_or_default()).into_owned();
    let screenshot = std::fs::read(&screenshot_path).unwrap_or_default();
    if !status.success() || dom.is_empty() || screenshot.is_empty() {
        return Err(format!(
            "Chromium ({status}) rendering {}: {} bytes of DOM, {} bytes of screenshot; its log:\n{}",
            html.display(),
            dom.len(),
            screenshot.len(),
            tail(&stderr, 40)
        ));
    }
    let image = decode_png(&screenshot).map_err(|e| format!("Chromium's screenshot of {}: {e}", html.display()))?;
    Ok(Rendered {
        dom,
        width: image.width,
        height: image.height,
        non_background_share: image.non_background_share(),
        screenshot,
        console_errors: console_errors(&stderr),
    })
}

/// Tags the page's console errors in the console log (see the module's documentation), and
/// resolves its relative URLs against its own directory. Removes itself from the DOM.
const PRELUDE: &str = r#"<script id="distillery-browser-prelude">(function () {
  var tag = "[console.error]", error = console.error, log = console.log;
  var say = function (args) { log.apply(console, [tag].concat(Array.prototype.slice.call(args))); };
  console.error = function () { say(arguments); return error.apply(console, arguments); };
  var assert = console.assert;
  console.assert = function (ok) {
    if (!ok) { say(["Assertion failed:"].concat(Array.prototype.slice.call(arguments, 1))); }
    return assert.apply(console, arguments);
  };
  addEventListener("error", function (e) {
    var t = e.target;
    if (t && t !== window) { say(["failed to load <" + t.localName + ">", t.src || t.href || ""]); }
  }, true);
  var me = document.currentScript;
  me.parentNode.removeChild(me);
  addEventListener("load", function () {
    var b = document.getElementById("distillery-browser-base");
    if (b) { b.parentNode.removeChild(b); }
  });
})();</script>"#;

/// The marker [`PRELUDE`] puts before what it logs.
const TAG: &str = "[console.error] ";

/// `source` with a `<base>` for `base` and the [`PRELUDE`] inserted after its doctype (before
/// it, they would put the page in quirks mode).
fn instrument(source: &[u8], base: &str) -> Vec<u8> {
    let bom = if source.starts_with(b"\xEF\xBB\xBF") { 3 } else { 0 };
    let rest = &source[bom..];
    let leading = rest.iter().take_while(|b| b.is_ascii_whitespace()).count();
    let at = if rest[leading..].len() >= 9 && rest[leading..leading + 9].eq_ignore_ascii_case(b"<!doctype") {
        rest[leading..].iter().position(|&b| b == b'>').map_or(source.len(), |end| bom + leading + end + 1)
    } else {
        bom
    };
    let mut out = Vec::with_capacity(source.len() + PRELUDE.len() + 200);
    out.extend_from_slice(&source[..at]);
    out.extend_from_slice(format!("<base id=\"distillery-browser-base\" href=\"{base}\">").as_bytes());
    out.extend_from_slice(PRELUDE.as_bytes());
    out.extend_from_slice(&source[at..]);
    out
}

/// The `file://` URL of an absolute path (with a trailing `/` for a directory).
fn file_url(path: &Path, directory: bool) -> String {
    let mut url = String::from("file://");
    for &b in path.as_os_str().as_encoded_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            url.push(b as char);
        } else {
            let _ = write!(url, "%{b:02X}");
        }
    }
    if directory && !url.ends_with('/') {
        url.push('/');
    }
    url
}

/// The console errors in Chromium's log (`--enable-logging=stderr`): its console lines read
/// `[pid:tid:time:LEVEL:CONSOLE:line] "message", source: url (line)` (older versions:
/// `LEVEL:CONSOLE(line)`), a message that holds newlines going on over the following lines.
pub fn console_errors(log: &str) -> Vec<String> {
    console_messages(log)
        .into_iter()
        .filter_map(|(level, message)| {
            if let Some(tagged) = message.strip_prefix(TAG) {
                Some(tagged.to_string())
            } else if message.starts_with("Uncaught") || level == "ERROR" {
                Some(message)
            } else {
                None
            }
        })
        .collect()
}

/// Every console message in Chromium's log, with its level: see [`console_errors`].
pub fn console_messages(log: &str) -> Vec<(String, String)> {
    let mut messages = Vec::new();
    let mut lines = log.lines();
    while let Some(line) = lines.next() {
        let Some(at) = line.find(":CONSOLE") else { continue };
        let level = line[..at].rsplit(':').next().unwrap_or_default().to_string();
        let Some(close) = line[at..].find("] ") else { continue };
        let mut text = line[at + close + 2..].to_string();
        while !text.contains("\", source: ") {
            match lines.next() {
                Some(more) => {
                    text.push('\n');
                    text.push_str(more);
                }
                None => break,
            }
        }
        let message = match text.rfind("\", source: ") {
            Some(end) => text[..end].strip_prefix('"').unwrap_or(&text[..end]).to_string(),
            None => text,
        };
        messages.push((level, message));
    }
    messages
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A decoded image: 8-bit samples, row by row, `channels` per pixel (3: RGB, 4: RGBA).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Samples per pixel: 3 (RGB) or 4 (RGBA).
    pub channels: usize,
    /// `width * height * channels` samples.
    pub pixels: Vec<u8>,
}

impl Image {
    /// The samples of the pixel at (`x`, `y`).
    pub fn pixel(&self, x: u32, y: u32) -> &[u8] {
        let at = (y as usize * self.width as usize + x as usize) * self.channels;
        &self.pixels[at..at + self.channels]
    }

    /// The share of pixels that differ from the top-left one (the background); 0 for an empty
    /// image.
    pub fn non_background_share(&self) -> f64 {
        let mut pixels = self.pixels.chunks_exact(self.channels);
        let Some(background) = pixels.next() else { return 0.0 };
        let differing = pixels.filter(|p| *p != background).count();
        differing as f64 / (self.width as f64 * self.height as f64)
    }
}

/// Decodes a PNG of 8-bit RGB or RGBA, not interlaced (what Chromium writes): the chunks'
/// CRCs, IHDR, the IDAT chunks inflated together, and the five scanline filters undone.
pub fn decode_png(png: &[u8]) -> Result<Image, String> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    if !png.starts_with(SIGNATURE) {
        return Err("not a PNG (no signature)".into());
    }
    let mut at = SIGNATURE.len();
    let mut header = None;
    let mut data = Vec::new();
    loop {
        let Some(head) = png.get(at..at + 8) else { return Err("truncated PNG (no IEND chunk)".into()) };
        let length = u32::from_be_bytes(head[..4].try_into().unwrap()) as usize;
        let kind = &head[4..8];
        let body = png.get(at + 8..at + 8 + length).ok_or("truncated PNG chunk")?;
        let crc = png.get(at + 8 + length..at + 12 + length).ok_or("truncated PNG chunk (no CRC)")?;
        let mut check = flate2::Crc::new();
        check.update(kind);
        check.update(body);
        if check.sum() != u32::from_be_bytes(crc.try_into().unwrap()) {
            return Err(format!("bad CRC in the PNG's {} chunk", String::from_utf8_lossy(kind)));
        }
        match kind {
            b"IHDR" => {
                if length != 13 {
                    return Err("bad PNG IHDR".into());
                }
                header = Some(body.to_vec());
            }
            b"IDAT" => data.extend_from_slice(body),
            b"IEND" => break,
            _ => {}
        }
        at += 12 + length;
    }
    let header = header.ok_or("PNG without IHDR")?;
    let width = u32::from_be_bytes(header[0..4].try_into().unwrap());
    let height = u32::from_be_bytes(header[4..8].try_into().unwrap());
    let (depth, color, interlace) = (header[8], header[9], header[12]);
    let channels = match (depth, color) {
        (8, 2) => 3,
        (8, 6) => 4,
        _ => return Err(format!("unsupported PNG: bit depth {depth}, color type {color} (only 8-bit RGB and RGBA)")),
    };
    if interlace != 0 {
        return Err("unsupported PNG: interlaced".into());
    }
    let stride = width as usize * channels;
    let expected = (stride + 1) * height as usize;
    let mut raw = Vec::with_capacity(expected);
    flate2::read::ZlibDecoder::new(&data[..])
        .take(expected as u64 + 1)
        .read_to_end(&mut raw)
        .map_err(|e| format!("inflating the PNG's image data: {e}"))?;
    if raw.len() != expected {
        return Err(format!("PNG image data is {} bytes, {width}x{height} needs {expected}", raw.len()));
    }
    let mut pixels = vec![0u8; stride * height as usize];
    for y in 0..height as usize {
        let filter = raw[y * (stride + 1)];
        let line = &raw[y * (stride + 1) + 1..(y + 1) * (stride + 1)];
        let (done, rest) = pixels.split_at_mut(y * stride);
        let prior = if y == 0 { None } else { Some(&done[(y - 1) * stride..]) };
        let current = &mut rest[..stride];
        for i in 0..stride {
            let a = if i >= channels { current[i - channels] } else { 0 };
            let b = prior.map_or(0, |p| p[i]);
            let c = if i >= channels { prior.map_or(0, |p| p[i - channels]) } else { 0 };
            let predicted = match filter {
                0 => 0,
                1 => a,
                2 => b,
                3 => ((a as u16 + b as u16) / 2) as u8,
                4 => paeth(a, b, c),
                other => return Err(format!("bad PNG filter type {other} on row {y}")),
            };
            current[i] = line[i].wrapping_add(predicted);
        }
    }
    Ok(Image { width, height, channels, pixels })
}

/// The Paeth predictor (PNG specification, 9.4).
pub fn paeth(a: u8, b: u8, c: u8) -> u8 {
    let p = a as i16 + b as i16 - c as i16;
    let (pa, pb, pc) = ((p - a as i16).abs(), (p - b as i16).abs(), (p - c as i16).abs());
    if pa <= pb && pa <= pc {
        a
    } else if pb <= pc {
        b
    } else {
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    /// A PNG of `pixels` (`channels` per pixel), row `y` filtered with filter type `y % 5`, its
    /// image data split over IDAT chunks of at most `split` bytes.
    fn encode(width: u32, height: u32, channels: usize, pixels: &[u8], split: usize) -> Vec<u8> {
        let stride = width as usize * channels;
        let mut raw = Vec::new();
        for y in 0..height as usize {
            let filter = (y % 5) as u8;
            raw.push(filter);
            let line = &pixels[y * stride..(y + 1) * stride];
            let prior = if y == 0 { None } else { Some(&pixels[(y - 1) * stride..y * stride]) };
            for i in 0..stride {
                let a = if i >= channels { line[i - channels] } else { 0 };
                let b = prior.map_or(0, |p| p[i]);
                let c = if i >= channels { prior.map_or(0, |p| p[i - channels]) } else { 0 };
                let predicted = match filter {
                    0 => 0,
                    1 => a,
                    2 => b,
                    3 => ((a as u16 + b as u16) / 2) as u8,
                    _ => paeth(a, b, c),
                };
                raw.push(line[i].wrapping_sub(predicted));
            }
        }
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&raw).unwrap();
        let compressed = z.finish().unwrap();
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut chunk = |kind: &[u8], body: &[u8]| {
            png.extend_from_slice(&(body.len() as u32).to_be_bytes());
            png.extend_from_slice(kind);
            png.extend_from_slice(body);
            let mut crc = flate2::Crc::new();
            crc.update(kind);
            crc.update(body);
            png.extend_from_slice(&crc.sum().to_be_bytes());
        };
        let mut header = Vec::new();
        header.extend_from_slice(&width.to_be_bytes());
        header.extend_from_slice(&height.to_be_bytes());
        header.extend_from_slice(&[8, if channels == 4 { 6 } else { 2 }, 0, 0, 0]);
        chunk(b"IHDR", &header);
        chunk(b"tEXt", b"Comment\0ignored");
        for part in compressed.chunks(split) {
            chunk(b"IDAT", part);
        }
        chunk(b"IEND", b"");
        png
    }

    /// Pixels whose neighbours differ, so that each filter predicts something else.
    fn pattern(width: u32, height: u32, channels: usize) -> Vec<u8> {
        let mut pixels = Vec::new();
        for y in 0..height {
            for x in 0..width {
                for ch in 0..channels as u32 {
                    pixels.push(((x * 37 + y * 91 + ch * 53 + x * y * 7) % 256) as u8);
                }
            }
        }
        pixels
    }

    #[test]
    fn decodes_rgb_and_rgba_through_every_filter() {
        for channels in [3, 4] {
            let (width, height) = (7, 11); // rows 0..10: every filter type twice
            let pixels = pattern(width, height, channels);
            let png = encode(width, height, channels, &pixels, 16);
            let image = decode_png(&png).unwrap();
            assert_eq!((image.width, image.height, image.channels), (width, height, channels));
            assert_eq!(image.pixels, pixels, "{channels} channels");
        }
    }

    #[test]
    fn share_of_pixels_that_differ_from_the_background() {
        // 4x2 white RGB, two pixels coloured.
        let mut pixels = vec![255u8; 4 * 2 * 3];
        pixels[3..6].copy_from_slice(&[255, 0, 0]);
        pixels[(4 + 3) * 3..(4 + 3) * 3 + 3].copy_from_slice(&[0, 0, 1]);
        let image = decode_png(&encode(4, 2, 3, &pixels, 1000)).unwrap();
        assert_eq!(image.pixel(1, 0), &[255, 0, 0]);
        assert_eq!(image.pixel(3, 1), &[0, 0, 1]);
        assert_eq!(image.non_background_share(), 2.0 / 8.0);
        let blank = decode_png(&encode(3, 3, 4, &[9u8; 36], 1000)).unwrap();
        assert_eq!(blank.non_background_share(), 0.0);
    }

    #[test]
    fn refuses_what_it_cannot_decode() {
        let pixels = pattern(3, 3, 3);
        let png = encode(3, 3, 3, &pixels, 1000);
        assert!(decode_png(b"GIF89a").unwrap_err().contains("signature"));
        assert!(decode_png(&png[..png.len() - 20]).is_err());
        let mut corrupt = png.clone();
        corrupt[40] ^= 1; // the tEXt chunk's type: its CRC no longer matches
        assert!(decode_png(&corrupt).unwrap_err().contains("CRC"));
        // 16-bit samples: IHDR's bit depth (CRC rewritten).
        let mut deep = png.clone();
        deep[8 + 8 + 8] = 16;
        let mut crc = flate2::Crc::new();
        crc.update(&deep[12..8 + 8 + 13]);
        deep[8 + 8 + 13..8 + 8 + 17].copy_from_slice(&crc.sum().to_be_bytes());
        assert!(decode_png(&deep).unwrap_err().contains("bit depth 16"));
    }

    #[test]
    fn reads_console_errors_from_chromiums_log() {
        let log = "\
[1:1:1202/104703.961271:ERROR:dbus/bus.cc:405] Failed to connect to the bus
[10:10:1202/104704.645984:INFO:CONSOLE:1] \"hello\", source: file:///tmp/page.html (1)
[10:10:1202/104704.646650:INFO:CONSOLE:1] \"[console.error] boom 1\", source: file:///tmp/page.html (1)
[10:10:1202/104704.646860:INFO:CONSOLE:1] \"Uncaught Error: kaboom\", source: file:///tmp/page.html (1)
[10:10:1202/104704.646860:INFO:CONSOLE(7)] \"[console.error] two
lines\", source: file:///tmp/page.html (7)
[10:10:1202/104704.646860:ERROR:CONSOLE(3)] \"from an extension\", source: chrome://x (3)
[10:10:1202/104704.646860:INFO:CONSOLE:9] \"Uncaught (in promise) Error: rejected\", source: file:///tmp/page.html (9)
";
        assert_eq!(
            console_errors(log),
            [
                "boom 1",
                "Uncaught Error: kaboom",
                "two\nlines",
                "from an extension",
                "Uncaught (in promise) Error: rejected"
            ]
        );
        assert_eq!(console_messages(log)[0], ("INFO".to_string(), "hello".to_string()));
    }

    #[test]
    fn the_prelude_goes_after_the_doctype() {
        let page = instrument(b"\xEF\xBB\xBF\n<!DOCTYPE html><p>x", "file:///d/");
        let page = String::from_utf8_lossy(&page);
        assert!(page.starts_with("\u{feff}\n<!DOCTYPE html><base id=\"distillery-browser-base\" href=\"file:///d/\">"));
        assert!(page.ends_with("</script><p>x"));
        let bare = instrument(b"<p>x", "file:///d/");
        assert!(bare.starts_with(b"<base "));
        assert_eq!(file_url(Path::new("/a b/r\u{e9}port.html"), false), "file:///a%20b/r%C3%A9port.html");
        assert_eq!(file_url(Path::new("/a"), true), "file:///a/");
    }

    #[test]
    fn a_missing_chromium_is_an_error_that_names_the_setup_script() {
        let error = render_with(Path::new("/nonexistent/chromium"), Path::new("page.html")).unwrap_err();
        assert!(error.contains("scripts/setup-chromium.sh"), "{error}");
    }
}
