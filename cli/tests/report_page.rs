//! `unicell report DIR`: the page is built from every report JSON, keeps passwords out, and
//! renders in a real browser (headless Chromium) with its tables and charts drawn and no
//! console error.
//!
//! The reports come from `UNICELL_REPORT_DIR` when set (CI points it at the bench smoke runs'
//! output), else from the reports checked in under `bench/results/` plus a report of an
//! unknown bench holding a password. The screenshot goes to `UNICELL_REPORT_SCREENSHOT` when
//! set (CI keeps it as an artifact), else into a temporary directory. The browser trial is
//! ignored with the reason when no `chromium` is installed (`.ci/run` installs Debian's).

use std::path::{Path, PathBuf};
use std::process::Command;

use libtest_mimic::{Arguments, Completion, Failed, Trial};

const SECRET: &str = "pw-never-shown-4711";

fn unicell() -> Command {
    Command::new(env!("CARGO_BIN_EXE_unicell"))
}

/// A fresh directory under the target dir (removed by the trial that made it when done).
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("unicell-report-{name}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// The reports to render: CI's, or the checked-in ones plus an unknown bench with a secret.
fn reports_dir() -> Result<(PathBuf, bool), Failed> {
    if let Ok(dir) = std::env::var("UNICELL_REPORT_DIR") {
        return Ok((PathBuf::from(dir), false));
    }
    let dir = scratch("in");
    let results = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/results");
    let mut copied = 0;
    for sub in std::fs::read_dir(&results).map_err(|e| format!("{}: {e}", results.display()))?.flatten() {
        for f in std::fs::read_dir(sub.path()).into_iter().flatten().flatten() {
            if f.path().extension().is_some_and(|e| e == "json") {
                let to = dir.join(format!("{}-{}", sub.file_name().to_string_lossy(), f.file_name().to_string_lossy()));
                std::fs::copy(f.path(), to).map_err(|e| e.to_string())?;
                copied += 1;
            }
        }
    }
    if copied == 0 {
        return Err(format!("no report JSON under {}", results.display()).into());
    }
    let soak = serde_json::json!({
        "bench": "soak",
        "parameters": {"candidates": [format!("redis://:{SECRET}@127.0.0.1:6379")]},
        "environment": {"date": "2026-11-30T00:00:00Z", "cpus": 2, "kernel": "6.1.0-test", "load_average": "0.5 0.5 0.5",
            "command": format!("unicell bench soak --stores redis://:{SECRET}@127.0.0.1:6379")},
        "results": {"rows": [
            {"candidate": format!("redis://:{SECRET}@127.0.0.1:6379"), "ops_per_second": 1200.0, "errors": 0},
            {"candidate": "memory://", "ops_per_second": 9000.0, "errors": 0}],
            "timeline": [[0.0, 0.0], [1.0, 900.0], [2.0, 2100.0]]},
        "notes": [format!("a note naming postgres://u:{SECRET}@db/x")]
    });
    std::fs::write(dir.join("soak.json"), soak.to_string()).map_err(|e| e.to_string())?;
    Ok((dir, true))
}

fn render(dir: &Path, page: &Path) -> Result<String, Failed> {
    let out = unicell().arg("report").arg(dir).arg("--out").arg(page).output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("unicell report failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    std::fs::read_to_string(page).map_err(|e| format!("{}: {e}", page.display()).into())
}

fn page_holds_every_report() -> Result<(), Failed> {
    let (dir, ours) = reports_dir()?;
    let page_path = scratch("page").join("report.html");
    let page = render(&dir, &page_path)?;
    let check = |ok: bool, what: &str| if ok { Ok(()) } else { Err(Failed::from(what.to_string())) };
    check(!page.contains(SECRET), "a password reached the page")?;
    check(page.contains("Stores at a glance") && page.contains("Machines"), "summary or machine table missing")?;
    check(
        !page.contains("src=\"http") && !page.contains("href=\"http") && !page.contains("@import"),
        "the page loads something",
    )?;
    if ours {
        for bench in ["claims", "list", "schedule", "sites", "demo", "soak"] {
            check(page.contains(&format!("\">{bench} <span")), &format!("no section for {bench}"))?;
        }
        check(page.contains("6.1.0-test"), "the kernel of the soak report is not shown")?;
        check(page.contains("not stated"), "a candidate without durability is not marked \"not stated\"")?;
        check(page.matches("<figure>").count() >= 5, "fewer charts than benches")?;
        let _ = std::fs::remove_dir_all(&dir);
    }
    let _ = std::fs::remove_dir_all(page_path.parent().unwrap_or(&page_path));
    Ok(())
}

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"].iter().find_map(|name| {
        std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
    })
}

/// The attribute `name` of the `#render-check` element in the dumped DOM.
fn attr(dom: &str, name: &str) -> Option<String> {
    let el = &dom[dom.find("id=\"render-check\"")?..];
    let el = &el[..el.find('>')?];
    let start = el.find(&format!("{name}=\""))? + name.len() + 2;
    Some(el[start..][..el[start..].find('"')?].to_string())
}

fn page_renders_in_chromium(browser: PathBuf) -> Result<(), Failed> {
    let (dir, ours) = reports_dir()?;
    let work = scratch("chromium");
    let page_path = work.join("report.html");
    render(&dir, &page_path)?;
    let url = format!("file://{}", page_path.display());
    let browse = |extra: &[String]| -> Result<std::process::Output, Failed> {
        let profile = work.join(format!("profile-{}", uuid::Uuid::new_v4().simple()));
        Command::new(&browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-dev-shm-usage",
                "--enable-logging=stderr",
                "--v=0",
                "--virtual-time-budget=10000",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(extra)
            .arg(&url)
            .output()
            .map_err(|e| Failed::from(format!("cannot start {}: {e}", browser.display())))
    };
    let dumped = browse(&["--dump-dom".to_string()])?;
    let dom = String::from_utf8_lossy(&dumped.stdout).to_string();
    let log = String::from_utf8_lossy(&dumped.stderr).to_string();
    if !dumped.status.success() || dom.is_empty() {
        return Err(format!("chromium --dump-dom failed ({}): {log}", dumped.status).into());
    }
    let console: Vec<&str> = log.lines().filter(|l| l.contains("CONSOLE")).collect();
    if !console.is_empty() {
        return Err(format!("console messages: {}", console.join("\n")).into());
    }
    let n = |name: &str| -> Result<usize, Failed> {
        attr(&dom, name)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Failed::from(format!("the render check did not run (no {name} in the dumped DOM)")))
    };
    let (charts, drawn, tables, shown, errors) =
        (n("data-charts")?, n("data-charts-drawn")?, n("data-tables")?, n("data-tables-shown")?, n("data-errors")?);
    if errors > 0 {
        return Err(format!("{errors} console errors: {}", attr(&dom, "data-error-text").unwrap_or_default()).into());
    }
    if charts == 0 || drawn != charts {
        return Err(format!("{drawn} of {charts} charts drawn").into());
    }
    if tables == 0 || shown != tables {
        return Err(format!("{shown} of {tables} tables shown with rows").into());
    }
    let shot =
        std::env::var("UNICELL_REPORT_SCREENSHOT").map(PathBuf::from).unwrap_or_else(|_| work.join("report.png"));
    let _ = std::fs::remove_file(&shot);
    let taken = browse(&[format!("--screenshot={}", shot.display()), "--window-size=1400,3000".into()])?;
    let png = std::fs::read(&shot).map_err(|e| {
        format!("no screenshot at {} ({e}): {}", shot.display(), String::from_utf8_lossy(&taken.stderr))
    })?;
    if png.len() < 10_000 || !png.starts_with(b"\x89PNG") {
        return Err(format!("screenshot {} is not a real PNG ({} bytes)", shot.display(), png.len()).into());
    }
    println!("report page: {drawn} charts, {shown} tables, screenshot {}", shot.display());
    if ours {
        let _ = std::fs::remove_dir_all(&dir);
    }
    if std::env::var_os("UNICELL_REPORT_SCREENSHOT").is_some() {
        // CI keeps the screenshot; the page beside it is cheap, keep it too.
        let _ = std::fs::copy(&page_path, shot.with_extension("html"));
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

fn main() {
    let args = Arguments::from_args();
    let trials = vec![
        Trial::test("report_page_holds_every_report_without_secrets", page_holds_every_report),
        Trial::ignorable_test("report_page_renders_in_headless_chromium", || match chromium() {
            None => Ok(Completion::ignored_with("no chromium on PATH (Debian: apt-get install chromium)")),
            Some(b) => page_renders_in_chromium(b).map(|()| Completion::Completed),
        }),
    ];
    libtest_mimic::run(&args, trials).exit();
}
