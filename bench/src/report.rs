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
    std::env::args()
        .map(|a| {
            if !a.contains("://") {
                return a;
            }
            crate::candidate::split_candidates(&a)
                .iter()
                .map(|part| {
                    if part.contains("://") {
                        unicell::store::StoreUrl::parse(part)
                            .map(|u| u.to_string())
                            .unwrap_or_else(|_| "<unparsable url>".to_string())
                    } else {
                        part.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect::<Vec<_>>()
        .join(" ")
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
