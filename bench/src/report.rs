//! Benchmark and demo reports: `DIR/<name>.json` with parameters, environment, figures per
//! candidate and ratios.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::error::{Context, Result};
use serde::Serialize;

/// Where and on what a run happened. Absolute figures mean little on a shared machine;
/// this says how shared it was (load average at start) and how the binary was built.
#[derive(Debug, Clone, Serialize)]
pub struct Environment {
    /// RFC 3339 time the run started.
    pub date: String,
    /// Host name.
    pub hostname: String,
    /// CPUs available to this process.
    pub cpus: usize,
    /// Total memory, from /proc/meminfo.
    pub memory_gib: Option<f64>,
    /// 1, 5 and 15 minute load averages when the run started (others share the machine).
    pub load_average: Option<String>,
    /// Operating system and architecture.
    pub os: String,
    /// Kernel release (`/proc/sys/kernel/osrelease`), when readable.
    pub kernel: Option<String>,
    /// `release` or `debug`: debug builds are many times slower.
    pub build: &'static str,
    /// unicell's version.
    pub unicell_version: &'static str,
    /// The git commit of the directory the command ran in, when that is a git checkout
    /// (the source of the binary only if it was run from its own checkout).
    pub cwd_git_rev: Option<String>,
    /// The command line, with store URLs' passwords masked.
    pub command: String,
}

impl Environment {
    /// Captures the environment now.
    pub fn capture() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).ok();
        let hostname = read("/proc/sys/kernel/hostname")
            .or_else(|| read("/etc/hostname"))
            .map(|s| s.trim().to_string())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "unknown".into());
        let memory_gib = read("/proc/meminfo").and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
                .map(|kb| (kb / 1024.0 / 1024.0 * 10.0).round() / 10.0)
        });
        let load_average = read("/proc/loadavg").map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
        let git_rev = std::process::Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|s| !s.is_empty());
        Environment {
            date: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            hostname,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib,
            load_average,
            os: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
            kernel: read("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).filter(|s| !s.is_empty()),
            build: if cfg!(debug_assertions) { "debug" } else { "release" },
            unicell_version: env!("CARGO_PKG_VERSION"),
            cwd_git_rev: git_rev,
            command: redacted_command_line(),
        }
    }
}

/// The process's arguments with any URL password masked (arguments that parse as URLs are
/// redacted, comma-separated lists element by element).
fn redacted_command_line() -> String {
    std::env::args().map(|a| redact_text(&a)).collect::<Vec<_>>().join(" ")
}

/// `text` with the password of every URL in it masked: each whitespace-, comma- or
/// quote-separated word holding `://` is shown through `StoreUrl`'s redacting `Display`, or,
/// if it is not a store URL, with whatever sits between `://user:` and `@` (and every
/// `password=`/`secret=`/`token=` query value) replaced by `***`. What reports, charts and
/// the HTML page show goes through here, so a password given on the command line or echoed
/// in a store's error message never reaches them.
pub fn redact_text(text: &str) -> String {
    if !text.contains("://") && !text.contains("%3A%2F%2F") && !text.contains("%3a%2f%2f") {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if word.contains("://") || word.to_ascii_lowercase().contains("%3a%2f%2f") {
            out.push_str(&redact_word(word));
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if c.is_whitespace() || matches!(c, ',' | '"' | '\'' | '<' | '>' | '(' | ')' | '[' | ']' | '{' | '}' | '`') {
            flush(&mut word, &mut out);
            out.push(c);
        } else {
            word.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// One word holding a URL, masked (see [`redact_text`]).
fn redact_word(word: &str) -> String {
    if let Ok(u) = unicell::store::StoreUrl::parse(word) {
        return u.to_string();
    }
    let Some(scheme_end) = word.find("://") else {
        // Only a percent-encoded URL (a query value): mask all of it rather than guess.
        return mask_userinfo_encoded(word);
    };
    let (head, rest) = word.split_at(scheme_end + 3);
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(auth_end);
    let authority = match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            match userinfo.find(':') {
                Some(colon) => format!("{}:***{}", &userinfo[..colon], &authority[at..]),
                None => authority.to_string(),
            }
        }
        None => authority.to_string(),
    };
    let tail = mask_secret_params(tail);
    format!("{head}{authority}{}", mask_userinfo_encoded(&tail))
}

/// Masks the value of every `password=`, `secret=` or `token=` query parameter.
fn mask_secret_params(tail: &str) -> String {
    let Some(q) = tail.find('?') else { return tail.to_string() };
    let (path, query) = tail.split_at(q + 1);
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if ["password", "secret", "token"].iter().any(|s| k.to_ascii_lowercase().contains(s)) => {
                format!("{k}=***")
            }
            _ => pair.to_string(),
        })
        .collect();
    format!("{path}{}", pairs.join("&"))
}

/// Masks percent-encoded `scheme%3A%2F%2Fuser%3Apassword%40host` userinfo (a URL inside a
/// query value, such as the SQL baseline's `cell_url`).
fn mask_userinfo_encoded(s: &str) -> String {
    let lower = s.to_ascii_lowercase();
    let mut out = String::new();
    let mut from = 0;
    while let Some(i) = lower[from..].find("%3a%2f%2f") {
        let start = from + i + "%3a%2f%2f".len();
        out.push_str(&s[from..start]);
        let end = lower[start..].find(['&', '/', '?', '#']).map_or(s.len(), |e| start + e);
        let seg = &s[start..end];
        let seg_lower = &lower[start..end];
        match (seg_lower.rfind("%40"), seg_lower.find("%3a")) {
            (Some(at), Some(colon)) if colon < at => {
                out.push_str(&seg[..colon + 3]);
                out.push_str("***");
                out.push_str(&seg[at..]);
            }
            _ => out.push_str(seg),
        }
        from = end;
    }
    out.push_str(&s[from..]);
    out
}

/// A report as written to `DIR/<bench>.json`.
#[derive(Debug, Serialize)]
pub struct Report<P: Serialize, R: Serialize> {
    /// Which benchmark (`list`, `claims`, ...).
    pub bench: &'static str,
    /// The knobs it ran with.
    pub parameters: P,
    /// Where it ran.
    pub environment: Environment,
    /// What each candidate keeps on disk (read from its servers), beside its figures.
    pub durability: Vec<crate::candidate::CandidateDurability>,
    /// Figures: per candidate, and ratios.
    pub results: R,
    /// Notes for the reader (skipped candidates, caveats).
    pub notes: Vec<String>,
}

/// Creates `dir` and writes `dir/<name>.json`; returns the path.
pub fn write_json<T: Serialize>(dir: &Path, name: &str, value: &T) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create output directory {}", dir.display()))?;
    let path = dir.join(format!("{name}.json"));
    let text = serde_json::to_string_pretty(value).context("cannot serialize the report")?;
    std::fs::write(&path, text + "\n").with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// Prints where the report and chart went.
pub fn print_outputs(json: &Path, svg: &Path) {
    println!("\nwrote {} and {}", json.display(), svg.display());
}
