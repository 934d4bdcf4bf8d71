//! Runs the built `unicell` binary: help, version, errors for bad input, the conformance
//! command, and every benchmark's `--quick` run writing its JSON report and SVG chart.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn unicell() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_unicell"));
    c.env_remove("UNICELL_STORE").env_remove("RUST_LOG");
    c
}

fn run(args: &[&str]) -> Output {
    unicell().args(args).output().expect("run unicell")
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// A fresh, empty directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "unicell-cli-{}-{name}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn help_lists_the_real_subcommands() {
    let o = run(&["--help"]);
    assert!(o.status.success());
    let (out, _) = text(&o);
    for cmd in ["demo", "bench", "conformance", "stores", "report", "evaluate", "--store"] {
        assert!(out.contains(cmd), "--help lacks {cmd}:\n{out}");
    }
    let o = run(&["bench", "--help"]);
    assert!(o.status.success());
    let (out, _) = text(&o);
    for cmd in ["list", "claims", "schedule", "sites", "soak"] {
        assert!(out.contains(cmd), "bench --help lacks {cmd}:\n{out}");
    }
}

#[test]
fn version_prints_the_crate_version() {
    let o = run(&["--version"]);
    assert!(o.status.success());
    assert!(text(&o).0.contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn stores_lists_memory() {
    let o = run(&["stores"]);
    assert!(o.status.success());
    assert!(text(&o).0.lines().any(|l| l == "memory://"));
}

#[test]
fn unknown_scheme_is_a_clear_error() {
    let o = run(&["--store", "bogus://somewhere", "conformance"]);
    assert!(!o.status.success());
    let (_, err) = text(&o);
    assert!(err.contains("bogus"), "{err}");
    assert!(err.contains("memory"), "should name the known schemes: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn garbage_store_url_is_a_clear_error() {
    let o = run(&["--store", "not a url", "bench", "list", "--quick"]);
    assert!(!o.status.success());
    let (_, err) = text(&o);
    assert!(err.contains("store URL") && err.contains("not a url"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn store_from_the_environment_is_checked_too() {
    let o = unicell().env("UNICELL_STORE", "bogus://x").args(["conformance"]).output().unwrap();
    assert!(!o.status.success());
    assert!(text(&o).1.contains("bogus"));
}

#[test]
fn passwords_are_never_printed() {
    for args in [
        vec!["--store", "bogus://admin:hunter2@db.example:1/x", "conformance"],
        vec!["--store", "redis://admin:hunter2@[broken", "conformance"],
        vec!["bench", "claims", "--quick", "--stores", "memory://,bogus://a:hunter2@h/"],
    ] {
        let o = run(&args);
        assert!(!o.status.success(), "{args:?}");
        let (out, err) = text(&o);
        assert!(!out.contains("hunter2") && !err.contains("hunter2"), "{out}\n{err}");
    }
    // Nor in --help, even when the store comes from the environment.
    let o = unicell().env("UNICELL_STORE", "redis://admin:hunter2@h/").arg("--help").output().unwrap();
    assert!(!text(&o).0.contains("hunter2"));
}

#[test]
fn bad_knobs_are_clear_errors() {
    let d = TempDir::new("badknobs");
    let out = d.path().to_str().unwrap();
    for (args, needle) in [
        (vec!["bench", "list", "--limit", "0", "--out", out], "--limit"),
        (vec!["bench", "list", "--cells", "0", "--out", out], "--cells"),
        (vec!["bench", "claims", "--tasks", "0", "--out", out], "--tasks"),
        (vec!["bench", "list", "--instances", "many"], "many"),
    ] {
        let o = run(&args);
        assert!(!o.status.success(), "{args:?}");
        let (_, err) = text(&o);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn conformance_passes_on_memory() {
    let o = run(&["conformance"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains(" 0 failed"), "{out}");
    assert!(out.contains("ok "), "{out}");
}

fn quick_bench(bench: &str, extra: &[&str]) {
    let d = TempDir::new(bench);
    let mut args = vec!["bench", bench, "--quick", "--out", d.path().to_str().unwrap()];
    args.extend_from_slice(extra);
    let o = run(&args);
    let (out, err) = text(&o);
    assert!(o.status.success(), "bench {bench} failed:\n{out}\n{err}");
    let json = d.path().join(format!("{bench}.json"));
    let svg = d.path().join(format!("{bench}.svg"));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json written")).unwrap();
    assert_eq!(report["bench"], bench);
    for key in ["parameters", "environment", "results"] {
        assert!(!report[key].is_null(), "{bench}.json lacks {key}");
    }
    assert!(report["environment"]["cpus"].as_u64().unwrap_or(0) >= 1);
    let chart = std::fs::read_to_string(&svg).expect("svg written");
    assert!(chart.starts_with("<svg") && chart.contains("</svg>"), "{bench}.svg");
    assert!(out.contains("wrote "), "{out}");
}

#[test]
fn bench_list_quick_writes_report_and_chart() {
    quick_bench("list", &[]);
}

#[test]
fn bench_list_quick_compares_two_candidates() {
    let d = TempDir::new("list2");
    let o = run(&["bench", "list", "--quick", "--stores", "memory://,memory://", "--out", d.path().to_str().unwrap()]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("memory:// #2"), "{out}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.path().join("list.json")).unwrap()).unwrap();
    let runs = report["results"]["runs"].as_array().unwrap();
    // Every workload runs by default; the unfiltered one lists every instance (the bench
    // itself fails a filtered workload whose count differs from the generator's).
    let all: Vec<_> = runs.iter().filter(|r| r["workload"] == "all").collect();
    assert_eq!(all.len(), 4, "2 candidates x 2 cell counts");
    assert_eq!(runs.len() % 4, 0, "each workload for 2 candidates x 2 cell counts");
    for r in all {
        assert_eq!(r["listed"], report["parameters"]["instances"]);
    }
    assert!(!report["results"]["ratios_vs_best_single_store"].as_array().unwrap().is_empty());
}

#[test]
fn bench_claims_quick_writes_report_and_chart() {
    quick_bench("claims", &[]);
}

#[test]
fn bench_sites_quick_writes_report_and_chart() {
    // memory:// has no network: it is skipped with a message (or the local Redis is used
    // when this build has the Redis backend and one answers on 127.0.0.1:6379).
    quick_bench("sites", &[]);
}

#[test]
fn bench_schedule_quick_writes_report_and_chart() {
    quick_bench("schedule", &["--hosts", "40", "--requests", "120"]);
}

#[test]
fn demo_places_lists_and_audits() {
    let d = TempDir::new("demo");
    let o =
        run(&["demo", "--hosts", "24", "--instances", "80", "--schedulers", "2", "--out", d.path().to_str().unwrap()]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    for needle in ["placed", "rescheduled", "failed", "claims", "global list", "audit OK"] {
        assert!(out.contains(needle), "demo output lacks {needle:?}:\n{out}");
    }
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.path().join("demo.json")).unwrap()).unwrap();
    let r = &report["results"];
    let built = r["build"]["instances"].as_u64().unwrap();
    assert_eq!(r["listing"]["instances"].as_u64().unwrap(), built);
    assert_eq!(r["build"]["active"].as_u64().unwrap() + r["build"]["failed"].as_u64().unwrap(), built);
    assert!(r["build"]["active"].as_u64().unwrap() > 0);
    assert!(std::fs::read_to_string(d.path().join("demo.svg")).unwrap().contains("</svg>"));
}

#[test]
fn evaluate_runs_conformance_a_bench_and_the_report() {
    let out = std::env::temp_dir().join(format!("unicell-evaluate-{}", uuid::Uuid::new_v4().simple()));
    let o = run(&[
        "evaluate",
        "--stores",
        "memory://",
        "--size",
        "quick",
        "--benches",
        "claims",
        "--testcontainers",
        "redis",
        "--out",
        out.to_str().expect("utf-8 temp dir"),
    ]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "evaluate failed:\n{stdout}\n{stderr}");
    for f in ["conformance.json", "claims.json", "claims.svg", "evaluate.json", "report.html"] {
        assert!(out.join(f).is_file(), "evaluate wrote no {f}:\n{stdout}");
    }
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("evaluate.json")).expect("read")).expect("json");
    let steps = record["results"]["steps"].as_array().expect("steps");
    let container = steps.iter().find(|s| s["step"] == "container redis").expect("a container step");
    // Here a Docker daemon may or may not answer; where none does the step says why.
    assert!(
        container["status"] == "ok" || (container["status"] == "skipped" && container["detail"].is_string()),
        "{container}"
    );
    let page = std::fs::read_to_string(out.join("report.html")).expect("page");
    assert!(page.contains("of 1") || page.contains("passed"), "no conformance result on the page");
    assert!(page.contains(">evaluate <span"), "no evaluate section on the page");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn bench_soak_quick_ends_with_a_clean_audit() {
    let d = TempDir::new("soak");
    let o = run(&["bench", "soak", "--quick", "--stores", "memory://", "--out", d.path().to_str().unwrap()]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "bench soak failed:\n{out}\n{err}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.path().join("soak.json")).expect("json written")).unwrap();
    assert_eq!(report["bench"], "soak");
    let row = &report["results"][0];
    assert_eq!(row["ops"], 20_000, "{row}");
    assert_eq!(row["audit_clean"], true, "{row}");
    assert_eq!(row["allocations_left"], 0, "{row}");
}
