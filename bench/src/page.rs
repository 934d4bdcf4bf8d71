//! `unicell report DIR`: one self-contained HTML page from every report JSON in a directory.
//!
//! The page is what a reader choosing a datastore opens: per store its conformance result,
//! claims against its ceiling, list latency against depth, schedule throughput and quality,
//! sites and fault behaviour, each with the store's durability (as the report states it, or
//! "not stated") and the machine the run happened on. Everything is inline (tables, SVG
//! charts drawn with [`crate::chart`], a few lines of CSS and a render check script): the
//! page loads nothing from anywhere, so it can be mailed, archived or opened offline.
//!
//! The benches this module knows (`conformance`, `claims`, `list`, `schedule`, `sites`) get
//! their own tables and charts; every other report JSON (a new bench) is rendered
//! generically: its scalar figures as a table, each list of records as a table, each list of
//! `[x, y]` pairs as a line chart, so a new bench shows up without touching this file. The
//! known ones also carry the generic view, folded, so no figure is ever hidden.
//!
//! Every text that reaches the page goes through [`crate::report::redact_text`] then HTML
//! escaping: a password in a command line, a URL or an error message never appears.
//!
//! The page ends with a small inline script that checks, once loaded, that each chart has a
//! drawn box and each table has rows, and records console errors; it writes what it found
//! into the `#render-check` element's `data-*` attributes, which the headless-browser test
//! reads from the dumped DOM.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::chart::{self, Bar, Panel, Series};
use crate::error::{Context, Result, bail};
use crate::report::redact_text;

/// One report JSON read from the directory.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Path relative to the directory given (what the page names it by).
    pub name: String,
    /// The bench (`bench` field).
    pub bench: String,
    /// The whole report.
    pub value: Value,
}

/// What [`write`] produced.
#[derive(Debug, Clone)]
pub struct Written {
    /// The page.
    pub path: PathBuf,
    /// Report JSONs rendered.
    pub reports: usize,
    /// Files that looked like reports but could not be read (name and why).
    pub skipped: Vec<(String, String)>,
}

/// A file that could not be read as a report: its path and the reason.
pub type Unreadable = (String, String);

/// Reads every `*.json` with a string `bench` field under `dir` (and its subdirectories, two
/// levels deep, so a directory of runs renders too), sorted by path. Files that are not
/// reports (no `bench` field) are left out silently; unreadable or malformed JSON is listed
/// in the second value with the reason.
pub fn load_dir(dir: &Path) -> Result<(Vec<Loaded>, Vec<Unreadable>)> {
    if !dir.is_dir() {
        bail!(Invalid, "{} is not a directory", dir.display());
    }
    let mut files = Vec::new();
    collect_json(dir, 0, &mut files)?;
    files.sort();
    let (mut loaded, mut skipped) = (Vec::new(), Vec::new());
    for path in files {
        let name = path.strip_prefix(dir).unwrap_or(&path).display().to_string();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                skipped.push((name, e.to_string()));
                continue;
            }
        };
        match serde_json::from_str::<Value>(&text) {
            Ok(value) => {
                if let Some(bench) = value.get("bench").and_then(Value::as_str) {
                    loaded.push(Loaded { name, bench: bench.to_string(), value });
                }
            }
            Err(e) => skipped.push((name, format!("not JSON: {e}"))),
        }
    }
    Ok((loaded, skipped))
}

fn collect_json(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if depth < 2 {
                collect_json(&path, depth + 1, out)?;
            }
        } else if path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
    Ok(())
}

/// Renders the page for every report in `dir` and writes it to `dir/report.html` (or `out`
/// when given); returns what it did. A directory without any report is an error (the
/// command was pointed at the wrong place).
pub fn write(dir: &Path, out: Option<&Path>) -> Result<Written> {
    let (loaded, skipped) = load_dir(dir)?;
    if loaded.is_empty() {
        bail!(Invalid, "{} holds no report JSON (a *.json with a \"bench\" field)", dir.display());
    }
    let html = render(&dir.display().to_string(), &loaded, &skipped)?;
    let path = out.map(Path::to_path_buf).unwrap_or_else(|| dir.join("report.html"));
    std::fs::write(&path, html).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(Written { path, reports: loaded.len(), skipped })
}

const CSS: &str = "body{font-family:sans-serif;margin:1.5em;color:#222;max-width:1600px}\
h1{font-size:1.6em}h2{border-bottom:2px solid #ccc;padding-bottom:.2em;margin-top:2em}\
h3{margin-top:1.4em}table{border-collapse:collapse;margin:.6em 0;font-size:.85em}\
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}\
th{background:#f0f0f0}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.scroll{overflow-x:auto}figure{margin:.8em 0}figure svg{max-width:100%;height:auto;border:1px solid #eee}\
.note{color:#555;font-size:.9em}.bad{color:#b00;font-weight:bold}.good{color:#070}\
details{margin:.6em 0}summary{cursor:pointer;color:#335}code{font-size:.9em}";

/// The script that runs first: records console errors and uncaught exceptions.
const ERROR_TRAP: &str = "window.__reportErrors=[];\
window.addEventListener('error',function(e){window.__reportErrors.push(String(e.message||e))});\
(function(){var ce=console.error;console.error=function(){window.__reportErrors.push(Array.prototype.join.call(arguments,' '));\
return ce.apply(console,arguments)}})();";

/// The script that runs once the page has loaded: counts charts with a drawn box and
/// tables with rows (outside folded sections), and writes the counts.
const RENDER_CHECK: &str = "window.addEventListener('load',function(){\
var figs=Array.prototype.slice.call(document.querySelectorAll('figure svg'));\
var drawn=figs.filter(function(s){var b=s.getBoundingClientRect();\
return b.width>50&&b.height>50&&s.querySelectorAll('text').length>0&&s.querySelectorAll('path,rect,polyline,line,circle').length>0}).length;\
var tables=Array.prototype.slice.call(document.querySelectorAll('table')).filter(function(t){return !t.closest('details:not([open])')});\
var shown=tables.filter(function(t){return t.rows.length>1&&t.getBoundingClientRect().height>0}).length;\
var el=document.getElementById('render-check');\
el.setAttribute('data-charts',String(figs.length));el.setAttribute('data-charts-drawn',String(drawn));\
el.setAttribute('data-tables',String(tables.length));el.setAttribute('data-tables-shown',String(shown));\
el.setAttribute('data-errors',String(window.__reportErrors.length));\
el.setAttribute('data-error-text',window.__reportErrors.join(' | '));\
el.textContent='render check: '+drawn+' of '+figs.length+' charts drawn, '+shown+' of '+tables.length+' tables shown, '+window.__reportErrors.length+' console errors';});";

/// Renders the page (see the module documentation). `source` names the directory.
pub fn render(source: &str, reports: &[Loaded], skipped: &[(String, String)]) -> Result<String> {
    let mut h = String::new();
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>unicell datastore report</title><style>{CSS}</style><script>{ERROR_TRAP}</script></head><body>\n\
         <h1>unicell datastore report</h1>\n<p class=\"note\">From {} report file(s) in <code>{}</code>, rendered {now}. \
         Absolute figures depend on the machine and how busy it was (each report's machine and load average are below); \
         compare candidates within one run. Durability is as each report states it; \"not stated\" means the report does not say.</p>\n\
         <p id=\"render-check\" class=\"note\">render check: not run (scripts disabled)</p>\n",
        reports.len(),
        esc(source)
    );
    let durability = durability_map(reports);
    h.push_str(&stores_summary(reports, &durability));
    h.push_str(&machines(reports));
    if !skipped.is_empty() {
        h.push_str("<h2>Files not rendered</h2><ul>");
        for (name, why) in skipped {
            let _ = write!(h, "<li><code>{}</code>: {}</li>", esc(name), esc(why));
        }
        h.push_str("</ul>");
    }
    for (i, r) in reports.iter().enumerate() {
        let _ = write!(h, "\n<h2 id=\"r{i}\">{} <span class=\"note\">({})</span></h2>\n", esc(&r.bench), esc(&r.name));
        h.push_str(&environment_line(&r.value));
        h.push_str(&durability_table(r, &durability));
        let known = match r.bench.as_str() {
            "conformance" => Some(conformance(&r.value)),
            "claims" => Some(claims(&r.value)?),
            "list" => Some(list(&r.value)?),
            "schedule" => Some(schedule(&r.value)?),
            "sites" => Some(sites(&r.value)?),
            _ => None,
        };
        match known {
            // A known bench whose report has an older or newer shape than this page reads
            // (no table came out): show it generically rather than nothing.
            Some(section) if section.contains("<table") => {
                h.push_str(&section);
                h.push_str(&notes(&r.value));
                h.push_str("<details><summary>every figure of this report</summary>");
                h.push_str(&generic(&r.value, false)?);
                h.push_str("</details>");
            }
            _ => {
                h.push_str(&notes(&r.value));
                h.push_str(&generic(&r.value, true)?);
            }
        }
        if let Some(p) = r.value.get("parameters") {
            h.push_str("<details><summary>parameters</summary>");
            h.push_str(&kv_table(p));
            h.push_str("</details>");
        }
    }
    let _ = write!(h, "\n<script>{RENDER_CHECK}</script>\n</body></html>\n");
    Ok(h)
}

// ---- helpers -------------------------------------------------------------------------------

/// Redacted, HTML-escaped text.
fn esc(s: &str) -> String {
    let s = redact_text(s);
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The value at a dotted path (`a.b.c`; numbers index arrays).
fn at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, k| match v {
        Value::Object(m) => m.get(k),
        Value::Array(a) => k.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

fn num(v: &Value, path: &str) -> Option<f64> {
    at(v, path).and_then(Value::as_f64).filter(|f| f.is_finite())
}

fn text(v: &Value, path: &str) -> Option<String> {
    at(v, path).and_then(|v| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    })
}

/// A number as a reader wants it: no needless decimals, thousands kept readable.
fn fmt_num(f: f64) -> String {
    let a = f.abs();
    if a == 0.0 {
        "0".into()
    } else if ((f - f.round()).abs() < 1e-9 && a < 1e15) || a >= 1000.0 {
        // Whole numbers, and anything from a thousand up, read best without decimals.
        format!("{f:.0}")
    } else if a >= 10.0 {
        format!("{f:.1}")
    } else if a >= 0.1 {
        format!("{f:.2}")
    } else if a >= 0.001 {
        format!("{f:.4}")
    } else {
        format!("{f:.2e}")
    }
}

fn opt_num(f: Option<f64>) -> String {
    f.map_or_else(|| "–".into(), fmt_num)
}

/// A cell for a scalar JSON value.
fn cell(v: &Value) -> String {
    match v {
        Value::Number(n) => format!("<td class=\"n\">{}</td>", n.as_f64().map_or_else(|| n.to_string(), fmt_num)),
        Value::String(s) => format!("<td>{}</td>", esc(s)),
        Value::Bool(b) => format!("<td>{b}</td>"),
        Value::Null => "<td>–</td>".into(),
        Value::Array(a) if a.iter().all(|x| !x.is_object() && !x.is_array()) && a.len() <= 16 => {
            let parts: Vec<String> = a.iter().map(scalar_text).collect();
            format!("<td>{}</td>", esc(&parts.join(", ")))
        }
        Value::Array(a) => format!("<td class=\"note\">{} items</td>", a.len()),
        Value::Object(m) => format!("<td class=\"note\">{} fields</td>", m.len()),
    }
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.as_f64().map_or_else(|| n.to_string(), fmt_num),
        Value::Null => "–".into(),
        other => other.to_string(),
    }
}

/// A table from headers and pre-rendered `<td>` rows.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    if rows.is_empty() {
        // No figures, no table (the render check counts empty tables as not rendered).
        return String::new();
    }
    let mut h = String::from("<div class=\"scroll\"><table><thead><tr>");
    for c in headers {
        let _ = write!(h, "<th>{}</th>", esc(c));
    }
    h.push_str("</tr></thead><tbody>");
    for r in rows {
        h.push_str("<tr>");
        for c in r {
            h.push_str(c);
        }
        h.push_str("</tr>");
    }
    h.push_str("</tbody></table></div>\n");
    h
}

fn td(s: &str) -> String {
    format!("<td>{}</td>", esc(s))
}

fn tdn(f: Option<f64>) -> String {
    format!("<td class=\"n\">{}</td>", opt_num(f))
}

/// Flattens the scalars of `v` into dotted keys, `depth` levels deep; lists of scalars are
/// kept whole, lists of records and deeper objects are left to other views.
fn flatten(v: &Value, prefix: &str, depth: usize, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                match x {
                    Value::Object(_) if depth > 0 => flatten(x, &key, depth - 1, out),
                    Value::Object(_) => {}
                    Value::Array(a) if a.iter().any(|e| e.is_object() || e.is_array()) => {}
                    _ => out.push((key, x.clone())),
                }
            }
        }
        other => out.push((prefix.to_string(), other.clone())),
    }
}

fn kv_table(v: &Value) -> String {
    let mut flat = Vec::new();
    flatten(v, "", 4, &mut flat);
    if flat.is_empty() {
        return String::new();
    }
    let rows: Vec<Vec<String>> = flat.iter().map(|(k, x)| vec![td(k), cell(x)]).collect();
    table(&["figure", "value"], &rows)
}

/// A table of records (objects): one row each, columns the union of their flattened scalar
/// keys (in first-seen order, at most 40).
fn records_table(items: &[Value]) -> String {
    let mut cols: Vec<String> = Vec::new();
    let flats: Vec<Vec<(String, Value)>> = items
        .iter()
        .take(500)
        .map(|it| {
            let mut f = Vec::new();
            flatten(it, "", 2, &mut f);
            for (k, _) in &f {
                if !cols.contains(k) && cols.len() < 40 {
                    cols.push(k.clone());
                }
            }
            f
        })
        .collect();
    let rows: Vec<Vec<String>> = flats
        .iter()
        .map(|f| {
            cols.iter()
                .map(|c| f.iter().find(|(k, _)| k == c).map_or_else(|| "<td></td>".into(), |(_, v)| cell(v)))
                .collect()
        })
        .collect();
    let headers: Vec<&str> = cols.iter().map(String::as_str).collect();
    let mut h = table(&headers, &rows);
    if items.len() > 500 {
        let _ = write!(h, "<p class=\"note\">first 500 of {} rows</p>", items.len());
    }
    h
}

fn figure(svg: String) -> String {
    // plotters' SVG starts with an XML-less <svg ...>; inline it as is.
    format!("<figure>{svg}</figure>\n")
}

fn line_chart(title: &str, panels: &[Panel]) -> Result<String> {
    if panels.iter().all(|p| p.series.iter().all(|s| s.points.is_empty())) {
        return Ok(String::new());
    }
    Ok(figure(chart::lines_svg(&redact_text(title), panels)?))
}

fn bar_chart(title: &str, y: &str, bars: &[Bar], log_y: bool) -> Result<String> {
    if bars.iter().all(|b| !(b.value.is_finite() && b.value > 0.0)) {
        return Ok(String::new());
    }
    let bars: Vec<Bar> = bars.iter().map(|b| Bar { label: redact_text(&b.label), ..b.clone() }).collect();
    Ok(figure(chart::bars_svg(&redact_text(title), y, &bars, log_y)?))
}

/// A short label for a candidate in a chart (the URL without `scheme://` noise kept short).
fn short(label: &str) -> String {
    let l = redact_text(label);
    if l.chars().count() <= 36 { l } else { format!("{}…", l.chars().take(35).collect::<String>()) }
}

/// A bar's label: the URL without scheme noise and user, at most 22 characters (bars are
/// narrow; the tables carry the full label).
fn bar_label(label: &str) -> String {
    let l = redact_text(label);
    let (scheme, rest) = l.split_once("://").unwrap_or(("", l.as_str()));
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let rest = rest.strip_prefix("127.0.0.1").or_else(|| rest.strip_prefix("localhost")).unwrap_or(rest);
    let s = if rest.is_empty() || rest == "/" { scheme.to_string() } else { format!("{scheme} {rest}") };
    if s.chars().count() <= 22 { s } else { format!("{}…", s.chars().take(21).collect::<String>()) }
}

/// The candidate a record is about (`candidate`, `store`, `label` or `url`).
fn candidate_of(v: &Value) -> Option<String> {
    ["candidate", "store", "label", "url"].iter().find_map(|k| v.get(*k).and_then(Value::as_str).map(str::to_string))
}

// ---- durability and machines -----------------------------------------------------------------

/// Every durability the reports state, by candidate: from any record with a `durability`
/// beside its candidate (a text, or the benches' object with a `summary` text, which is how
/// every bench's report-level `durability` list states it and so comes first), or a
/// `durability` object mapping candidates to texts.
fn durability_map(reports: &[Loaded]) -> BTreeMap<String, String> {
    fn walk(v: &Value, out: &mut BTreeMap<String, String>) {
        match v {
            Value::Object(m) => {
                let summary = m.get("durability").and_then(|d| d.get("summary")).and_then(Value::as_str);
                match m.get("durability") {
                    Some(Value::String(d)) => {
                        if let Some(c) = candidate_of(v) {
                            out.entry(c).or_insert_with(|| d.clone());
                        }
                    }
                    Some(Value::Object(_)) if summary.is_some() && candidate_of(v).is_some() => {
                        if let (Some(c), Some(d)) = (candidate_of(v), summary) {
                            out.entry(c).or_insert_with(|| d.to_string());
                        }
                    }
                    Some(Value::Object(dm)) => {
                        for (c, d) in dm {
                            if let Some(d) = d.as_str() {
                                out.entry(c.clone()).or_insert_with(|| d.to_string());
                            } else if let Some(d) = d.get("summary").and_then(Value::as_str) {
                                out.entry(c.clone()).or_insert_with(|| d.to_string());
                            }
                        }
                    }
                    _ => {}
                }
                for x in m.values() {
                    walk(x, out);
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut out = BTreeMap::new();
    for r in reports {
        walk(&r.value, &mut out);
    }
    out
}

/// The candidates a report covers: `parameters.candidates` and every record's candidate.
fn candidates_of(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    if let Some(a) = at(v, "parameters.candidates").and_then(Value::as_array) {
        for c in a {
            if let Some(s) = c.as_str().map(str::to_string).or_else(|| candidate_of(c))
                && !out.contains(&s)
            {
                out.push(s);
            }
        }
    }
    fn walk(v: &Value, out: &mut Vec<String>, depth: usize) {
        if depth > 4 {
            return;
        }
        match v {
            Value::Object(m) => {
                if let Some(Value::String(c)) = m.get("candidate")
                    && !out.contains(c)
                {
                    out.push(c.clone());
                }
                m.values().for_each(|x| walk(x, out, depth + 1));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out, depth + 1)),
            _ => {}
        }
    }
    if let Some(r) = v.get("results") {
        walk(r, &mut out, 0);
    }
    if let Some(s) = at(v, "results.store").and_then(Value::as_str)
        && !out.iter().any(|c| c == s)
    {
        out.push(s.to_string());
    }
    out
}

fn durability_of(c: &str, map: &BTreeMap<String, String>) -> String {
    map.get(c).cloned().unwrap_or_else(|| "not stated".into())
}

fn durability_table(r: &Loaded, map: &BTreeMap<String, String>) -> String {
    let cands = candidates_of(&r.value);
    if cands.is_empty() {
        return String::new();
    }
    let rows: Vec<Vec<String>> = cands.iter().map(|c| vec![td(c), td(&durability_of(c, map))]).collect();
    table(&["candidate", "durability"], &rows)
}

fn environment_line(v: &Value) -> String {
    let e = |k: &str| text(v, &format!("environment.{k}"));
    format!(
        "<p class=\"note\">ran {} on {}: {} cores, {} GiB memory, kernel {}, load average {} at start, {} build; <code>{}</code></p>\n",
        esc(&e("date").unwrap_or_else(|| "(date not recorded)".into())),
        esc(&e("hostname").unwrap_or_else(|| "?".into())),
        esc(&e("cpus").unwrap_or_else(|| "?".into())),
        esc(&e("memory_gib").unwrap_or_else(|| "?".into())),
        esc(&e("kernel").unwrap_or_else(|| "not recorded".into())),
        esc(&e("load_average").unwrap_or_else(|| "not recorded".into())),
        esc(&e("build").unwrap_or_else(|| "?".into())),
        esc(&e("command").unwrap_or_default()),
    )
}

fn machines(reports: &[Loaded]) -> String {
    let rows: Vec<Vec<String>> = reports
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let e = |k: &str| text(&r.value, &format!("environment.{k}")).unwrap_or_else(|| "not recorded".into());
            vec![
                format!("<td><a href=\"#r{i}\">{}</a></td>", esc(&r.bench)),
                td(&r.name),
                td(&e("date")),
                td(&e("hostname")),
                td(&e("cpus")),
                td(&e("memory_gib")),
                td(&e("kernel")),
                td(&e("os")),
                td(&e("load_average")),
                td(&e("build")),
                td(&text(&r.value, "environment.cwd_git_rev")
                    .or_else(|| text(&r.value, "environment.git_rev"))
                    .unwrap_or_else(|| "–".into())),
            ]
        })
        .collect();
    format!(
        "<h2>Machines</h2>\n{}",
        table(
            &[
                "bench",
                "file",
                "date",
                "host",
                "cores",
                "memory GiB",
                "kernel",
                "os",
                "load average (1 5 15 min) at start",
                "build",
                "commit"
            ],
            &rows
        )
    )
}

// ---- the per-store summary -------------------------------------------------------------------

#[derive(Default)]
struct StoreRow {
    conformance: Option<String>,
    claims: Option<String>,
    list: Option<String>,
    schedule: Option<String>,
    sites: Option<String>,
    benches: Vec<String>,
}

fn stores_summary(reports: &[Loaded], durability: &BTreeMap<String, String>) -> String {
    let mut rows: BTreeMap<String, StoreRow> = BTreeMap::new();
    for r in reports {
        for c in candidates_of(&r.value) {
            let row = rows.entry(c).or_default();
            if !row.benches.contains(&r.bench) {
                row.benches.push(r.bench.clone());
            }
        }
        let v = &r.value;
        let items = |path: &str| at(v, path).and_then(Value::as_array).cloned().unwrap_or_default();
        match r.bench.as_str() {
            "conformance" => {
                for it in items("results") {
                    if let Some(c) = candidate_of(&it) {
                        let (p, t) = (num(&it, "passed").unwrap_or(0.0), num(&it, "total").unwrap_or(0.0));
                        let cls = if p == t && t > 0.0 { "good" } else { "bad" };
                        rows.entry(c).or_default().conformance =
                            Some(format!("<span class=\"{cls}\">{} of {} passed</span>", fmt_num(p), fmt_num(t)));
                    }
                }
            }
            "claims" => {
                for it in items("results") {
                    if let Some(c) = candidate_of(&it) {
                        let ratio = num(&it, "ratio_to_ceiling")
                            .map(|x| format!(" ({} of the ceiling)", fmt_num(x)))
                            .unwrap_or_default();
                        rows.entry(c).or_default().claims =
                            Some(format!("{}/s{ratio}", opt_num(num(&it, "claims.per_second"))));
                    }
                }
            }
            "list" => {
                let runs = items("results.runs");
                let mut best: BTreeMap<String, (f64, f64)> = BTreeMap::new();
                for it in &runs {
                    if it.get("workload").and_then(Value::as_str).is_some_and(|w| w != "all") {
                        continue;
                    }
                    if let (Some(c), Some(cells), Some(p50)) =
                        (candidate_of(it), num(it, "cells"), num(it, "latency.p50_ms"))
                    {
                        let e = best.entry(c).or_insert((cells, p50));
                        if cells >= e.0 {
                            *e = (cells, p50);
                        }
                    }
                }
                for (c, (cells, p50)) in best {
                    rows.entry(c).or_default().list =
                        Some(format!("page p50 {} ms at {} cells", fmt_num(p50), fmt_num(cells)));
                }
            }
            "schedule" => {
                for it in items("results.candidates") {
                    if let Some(c) = candidate_of(&it) {
                        let design =
                            it.get("design").and_then(Value::as_str).map(|d| format!("{d}: ")).unwrap_or_default();
                        let s = format!("{design}{} placements/s", opt_num(num(&it, "claims.placements_per_second")));
                        let row = rows.entry(c).or_default();
                        row.schedule = Some(match row.schedule.take() {
                            Some(prev) => format!("{prev}; {s}"),
                            None => s,
                        });
                    }
                }
            }
            "sites" => {
                let mut worst: BTreeMap<String, (f64, f64)> = BTreeMap::new();
                for it in items("results.points") {
                    if let (Some(c), Some(d), Some(p)) =
                        (candidate_of(&it), num(&it, "delay_ms"), num(&it, "list_p50_worst_site"))
                    {
                        let e = worst.entry(c).or_insert((d, p));
                        if d > e.0 || (d == e.0 && p > e.1) {
                            *e = (d, p);
                        }
                    }
                }
                for (c, (d, p)) in worst {
                    rows.entry(c).or_default().sites =
                        Some(format!("worst-site list p50 {} ms at {} ms delay", fmt_num(p), fmt_num(d)));
                }
            }
            _ => {}
        }
    }
    let dash = || "<td class=\"note\">not run</td>".to_string();
    let html_cell = |s: &Option<String>| s.as_ref().map_or_else(dash, |x| format!("<td>{x}</td>"));
    let text_cell = |s: &Option<String>| s.as_ref().map_or_else(dash, |x| td(x));
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|(c, r)| {
            vec![
                td(c),
                td(&durability_of(c, durability)),
                html_cell(&r.conformance),
                text_cell(&r.claims),
                text_cell(&r.list),
                text_cell(&r.schedule),
                text_cell(&r.sites),
                td(&r.benches.join(", ")),
            ]
        })
        .collect();
    format!(
        "<h2>Stores at a glance</h2>\n<p class=\"note\">One row per candidate URL (passwords masked) across every report; \
         each figure links to its section below for the conditions it was measured under.</p>\n{}",
        table(
            &[
                "store",
                "durability",
                "conformance",
                "claims",
                "list (unfiltered)",
                "schedule (claimed)",
                "sites",
                "reports"
            ],
            &table_rows
        )
    )
}

// ---- the known benches -----------------------------------------------------------------------

fn notes(v: &Value) -> String {
    let Some(a) = v.get("notes").and_then(Value::as_array) else { return String::new() };
    if a.is_empty() {
        return String::new();
    }
    let mut h = String::from("<ul class=\"note\">");
    for n in a {
        let _ = write!(h, "<li>{}</li>", esc(&scalar_text(n)));
    }
    h.push_str("</ul>\n");
    h
}

fn conformance(v: &Value) -> String {
    let items = v.get("results").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut h = String::new();
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|it| {
            vec![
                td(&candidate_of(it).unwrap_or_default()),
                td(&text(it, "describe").unwrap_or_default()),
                tdn(num(it, "passed")),
                tdn(num(it, "failed")),
                tdn(num(it, "total")),
                tdn(num(it, "seconds")),
            ]
        })
        .collect();
    h.push_str(&table(&["store", "describes itself as", "passed", "failed", "cases", "seconds"], &rows));
    let failures: Vec<Vec<String>> = items
        .iter()
        .flat_map(|it| {
            let c = candidate_of(it).unwrap_or_default();
            it.get("cases")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|k| k.get("ok").and_then(Value::as_bool) == Some(false))
                .map(move |k| {
                    vec![td(&c), td(&text(k, "name").unwrap_or_default()), td(&text(k, "error").unwrap_or_default())]
                })
                .collect::<Vec<_>>()
        })
        .collect();
    if !failures.is_empty() {
        h.push_str("<h3>Failed cases</h3>");
        h.push_str(&table(&["store", "case", "why"], &failures));
    }
    h
}

fn claims(v: &Value) -> Result<String> {
    let items = v.get("results").and_then(Value::as_array).cloned().unwrap_or_default();
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|it| {
            let ratio = num(it, "ratio_to_ceiling")
                .or_else(|| Some(num(it, "claims.per_second")? / num(it, "ceiling.per_second").filter(|c| *c > 0.0)?));
            vec![
                td(&candidate_of(it).unwrap_or_default()),
                tdn(num(it, "claims.per_second")),
                tdn(num(it, "claims.latency.p50_ms")),
                tdn(num(it, "claims.latency.p99_ms")),
                tdn(num(it, "claims.errors")),
                td(&text(it, "ceiling.what").or_else(|| text(it, "ceiling_unavailable")).unwrap_or_else(|| "–".into())),
                tdn(num(it, "ceiling.per_second")),
                tdn(ratio),
            ]
        })
        .collect();
    let mut h = String::from("<h3>Claims against the backend's ceiling</h3>");
    h.push_str(&table(
        &["candidate", "claims/s", "p50 ms", "p99 ms", "errors", "ceiling", "ceiling ops/s", "claims / ceiling"],
        &rows,
    ));
    let mut bars = Vec::new();
    for (i, it) in items.iter().enumerate() {
        let c = bar_label(&candidate_of(it).unwrap_or_default());
        if let Some(x) = num(it, "claims.per_second") {
            bars.push(Bar { label: c.clone(), value: x, color: i, light: false });
        }
        if let Some(x) = num(it, "ceiling.per_second") {
            bars.push(Bar { label: format!("{c} ceiling"), value: x, color: i, light: true });
        }
    }
    h.push_str(&bar_chart("claims/s and the backend's ceiling (light)", "operations/s", &bars, true)?);
    Ok(h)
}

fn list(v: &Value) -> Result<String> {
    let runs = at(v, "results.runs").and_then(Value::as_array).cloned().unwrap_or_default();
    let workload = |it: &Value| it.get("workload").and_then(Value::as_str).unwrap_or("all").to_string();
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|it| {
            vec![
                td(&candidate_of(it).unwrap_or_default()),
                td(&workload(it)),
                tdn(num(it, "cells")),
                tdn(num(it, "loads_per_second")),
                tdn(num(it, "pages")),
                tdn(num(it, "listed")),
                tdn(num(it, "latency.p50_ms")),
                tdn(num(it, "latency.p99_ms")),
                tdn(num(it, "deep_over_first_p50")),
            ]
        })
        .collect();
    let mut h = String::from("<h3>Page latency</h3>");
    h.push_str(&table(
        &["candidate", "workload", "cells", "loaded/s", "pages", "listed", "p50 ms", "p99 ms", "deepest / first p50"],
        &rows,
    ));
    // One panel per cell count (at most four: the smallest, the largest and two between),
    // one line per candidate and workload: page p50 against depth.
    let mut cells: Vec<u64> = runs.iter().filter_map(|r| num(r, "cells")).map(|c| c as u64).collect();
    cells.sort_unstable();
    cells.dedup();
    if cells.len() > 4 {
        let n = cells.len();
        cells = vec![cells[0], cells[n / 3], cells[2 * n / 3], cells[n - 1]];
    }
    let cand_index: Vec<String> = candidates_of(v);
    let mut panels = Vec::new();
    for c in &cells {
        let mut series = Vec::new();
        for it in runs.iter().filter(|r| num(r, "cells").map(|x| x as u64) == Some(*c)) {
            let cand = candidate_of(it).unwrap_or_default();
            let w = workload(it);
            let points: Vec<(f64, f64)> = it
                .get("by_depth")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|b| {
                    let first = num(b, "first_page")?;
                    let last = num(b, "last_page").unwrap_or(first);
                    Some(((first + last) / 2.0, num(b, "latency.p50_ms")?))
                })
                .collect();
            let name = if w == "all" { short(&cand) } else { format!("{} {w}", short(&cand)) };
            let color = cand_index.iter().position(|x| *x == cand).unwrap_or(0);
            series.push(Series { name, points, color, dashed: w != "all" });
        }
        panels.push(Panel {
            title: format!("{c} cells"),
            x_label: "page".into(),
            y_label: "p50 ms".into(),
            log_y: true,
            series,
        });
    }
    h.push_str(&line_chart("list: page p50 against depth", &panels)?);
    Ok(h)
}

fn audit_clean(a: Option<&Value>) -> Option<bool> {
    let m = a?.as_object()?;
    Some(m.values().all(|x| x.as_array().is_none_or(Vec::is_empty)))
}

fn schedule(v: &Value) -> Result<String> {
    let items = at(v, "results.candidates").and_then(Value::as_array).cloned().unwrap_or_default();
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|it| {
            let clean = match (audit_clean(it.get("claims_audit")), audit_clean(it.get("audit"))) {
                (Some(true), Some(true)) | (Some(true), None) | (None, Some(true)) => "clean".to_string(),
                (None, None) => "–".into(),
                _ => "BROKEN".into(),
            };
            vec![
                td(&candidate_of(it).unwrap_or_default()),
                td(&text(it, "design").unwrap_or_else(|| "unicell".into())),
                tdn(num(it, "claims.placements_per_second")),
                tdn(num(it, "claims.placed")),
                tdn(num(it, "claims.no_valid_host")),
                tdn(num(it, "claims.claim_conflicts")),
                tdn(num(it, "claims.cpu_us_per_placement")),
                tdn(num(it, "build.placements_per_second").or_else(|| num(it, "build.active_per_second"))),
                td(&clean),
            ]
        })
        .collect();
    let mut h = String::from("<h3>Throughput</h3>");
    h.push_str(&table(
        &[
            "candidate",
            "design",
            "claimed placements/s",
            "placed",
            "no valid host",
            "claim conflicts",
            "CPU µs/placement",
            "built ACTIVE/s",
            "audit",
        ],
        &rows,
    ));
    let bars: Vec<Bar> = items
        .iter()
        .enumerate()
        .filter_map(|(i, it)| {
            let design = text(it, "design").map(|d| format!(" ({d})")).unwrap_or_default();
            Some(Bar {
                label: format!("{}{design}", bar_label(&candidate_of(it)?)),
                value: num(it, "claims.placements_per_second")?,
                color: i,
                light: false,
            })
        })
        .collect();
    h.push_str(&bar_chart("schedule: claimed placements/s", "placements/s", &bars, true)?);
    if let Some(q) = at(v, "results.quality").and_then(Value::as_array).filter(|q| !q.is_empty()) {
        h.push_str("<h3>Placement quality</h3>");
        h.push_str(&records_table(q));
    }
    if let Some(f) = at(v, "results.fill_to_failure").filter(|f| !f.is_null()) {
        h.push_str("<h3>Fill to failure</h3>");
        h.push_str(&kv_table(f));
    }
    Ok(h)
}

fn sites(v: &Value) -> Result<String> {
    let points = at(v, "results.points").and_then(Value::as_array).cloned().unwrap_or_default();
    let rows: Vec<Vec<String>> = points
        .iter()
        .map(|it| {
            vec![
                td(&candidate_of(it).unwrap_or_default()),
                tdn(num(it, "sites")),
                tdn(num(it, "delay_ms")),
                tdn(num(it, "list_page.p50_ms")),
                tdn(num(it, "list_p50_worst_site")),
                tdn(num(it, "claim.p50_ms")),
                tdn(num(it, "claim_p50_worst_site")),
                tdn(num(it, "list_worst_vs_base")),
                tdn(num(it, "claim_worst_vs_base")),
            ]
        })
        .collect();
    let mut h = String::from("<h3>Latency across sites</h3>");
    h.push_str(&table(
        &[
            "candidate",
            "sites",
            "one-way delay ms",
            "list p50 ms",
            "list p50 worst site",
            "claim p50 ms",
            "claim p50 worst site",
            "list worst / no delay",
            "claim worst / no delay",
        ],
        &rows,
    ));
    let cands = candidates_of(v);
    let mut keys: Vec<(String, u64)> =
        points.iter().filter_map(|p| Some((candidate_of(p)?, num(p, "sites")? as u64))).collect();
    keys.sort();
    keys.dedup();
    let series = |field: &str| -> Vec<Series> {
        keys.iter()
            .enumerate()
            .map(|(k, (c, s))| Series {
                name: format!("{} {s} sites", short(c)),
                points: points
                    .iter()
                    .filter(|p| candidate_of(p).as_ref() == Some(c) && num(p, "sites").map(|x| x as u64) == Some(*s))
                    .filter_map(|p| Some((num(p, "delay_ms")?, num(p, field)?)))
                    .collect(),
                color: cands.iter().position(|x| x == c).unwrap_or(k),
                dashed: k % 2 == 1,
            })
            .collect()
    };
    let panels = vec![
        Panel {
            title: "list page p50, worst site".into(),
            x_label: "one-way delay ms".into(),
            y_label: "ms".into(),
            log_y: true,
            series: series("list_p50_worst_site"),
        },
        Panel {
            title: "claim p50, worst site".into(),
            x_label: "one-way delay ms".into(),
            y_label: "ms".into(),
            log_y: true,
            series: series("claim_p50_worst_site"),
        },
    ];
    h.push_str(&line_chart("sites: latency against inter-site delay", &panels)?);
    if let Some(s) = at(v, "results.skipped").and_then(Value::as_array).filter(|s| !s.is_empty()) {
        h.push_str("<h3>Skipped</h3>");
        h.push_str(&records_or_list(s));
    }
    Ok(h)
}

fn records_or_list(a: &[Value]) -> String {
    if a.iter().all(Value::is_object) {
        records_table(a)
    } else {
        let mut h = String::from("<ul>");
        for x in a {
            let _ = write!(h, "<li>{}</li>", esc(&scalar_text(x)));
        }
        h.push_str("</ul>");
        h
    }
}

// ---- any report ------------------------------------------------------------------------------

/// The generic view of a report's `results`: scalars as a table, each list of records as a
/// table, and (with `charts`) each list of `[x, y]` pairs as a line chart and each list of
/// records with a `*per_second` figure as a bar chart.
fn generic(v: &Value, charts: bool) -> Result<String> {
    let Some(results) = v.get("results") else { return Ok(String::new()) };
    let mut h = String::new();
    let mut scalars = Vec::new();
    flatten(results, "", 6, &mut scalars);
    if !scalars.is_empty() {
        let rows: Vec<Vec<String>> = scalars.iter().map(|(k, x)| vec![td(k), cell(x)]).collect();
        h.push_str(&table(&["figure", "value"], &rows));
    }
    let mut lists = Vec::new();
    find_lists(results, "results", 0, &mut lists);
    let mut chart_count = 0;
    for (path, items) in lists {
        if items.iter().all(Value::is_object) {
            let _ = write!(h, "<h3><code>{}</code></h3>", esc(&path));
            h.push_str(&records_table(items));
            if charts && chart_count < 6 {
                let rate_key = items.first().and_then(|f| {
                    let mut flat = Vec::new();
                    flatten(f, "", 1, &mut flat);
                    flat.into_iter().find(|(k, x)| k.ends_with("per_second") && x.is_number()).map(|(k, _)| k)
                });
                if let Some(key) = rate_key {
                    let bars: Vec<Bar> = items
                        .iter()
                        .enumerate()
                        .filter_map(|(i, it)| {
                            Some(Bar {
                                label: candidate_of(it).map(|c| bar_label(&c)).unwrap_or_else(|| format!("#{i}")),
                                value: num(it, &key)?,
                                color: i,
                                light: false,
                            })
                        })
                        .collect();
                    if bars.len() <= 24 {
                        let c = bar_chart(&format!("{path}: {key}"), &key, &bars, false)?;
                        chart_count += usize::from(!c.is_empty());
                        h.push_str(&c);
                    }
                }
            }
        } else if is_pairs(items) {
            if charts && chart_count < 6 {
                let points: Vec<(f64, f64)> =
                    items.iter().filter_map(|p| Some((p.get(0)?.as_f64()?, p.get(1)?.as_f64()?))).collect();
                let panel = Panel {
                    title: path.clone(),
                    x_label: "x".into(),
                    y_label: "y".into(),
                    log_y: false,
                    series: vec![Series { name: path.clone(), points, color: 0, dashed: false }],
                };
                let c = line_chart(&path, &[panel])?;
                chart_count += usize::from(!c.is_empty());
                h.push_str(&c);
            }
        } else {
            let _ = write!(h, "<h3><code>{}</code></h3>", esc(&path));
            h.push_str(&records_or_list(items));
        }
    }
    Ok(h)
}

fn is_pairs(items: &[Value]) -> bool {
    items.len() >= 2
        && items.iter().all(|p| p.as_array().is_some_and(|a| a.len() == 2 && a.iter().all(Value::is_number)))
}

/// Lists under `v` that hold records or pairs (not lists of plain scalars, which `flatten`
/// shows inline), with their dotted paths.
fn find_lists<'a>(v: &'a Value, path: &str, depth: usize, out: &mut Vec<(String, &'a [Value])>) {
    if depth > 6 {
        return;
    }
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                find_lists(x, &format!("{path}.{k}"), depth + 1, out);
            }
        }
        Value::Array(a) if a.iter().any(|e| e.is_object() || e.is_array()) => {
            out.push((path.to_string(), a.as_slice()));
            if a.iter().all(Value::is_object) {
                // Nested lists inside records (per-site latencies, per-depth buckets) are
                // in the records' own tables as counts; chart the first record's pairs.
                if let Some(first) = a.first() {
                    find_lists(first, &format!("{path}.0"), depth + 1, out);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loaded(bench: &str, value: Value) -> Loaded {
        Loaded { name: format!("{bench}.json"), bench: bench.into(), value }
    }

    #[test]
    fn passwords_never_reach_the_page() {
        let v = serde_json::json!({
            "bench": "soak",
            "parameters": {"candidates": ["redis://:hunter2@127.0.0.1:6379", "postgres://u:pw9secret@h/db?cell_url=mysql%3A%2F%2Froot%3Aenc0ded%40h2%2Fc"]},
            "environment": {"command": "unicell bench soak --stores redis://:hunter2@127.0.0.1:6379,http://a:plainpw@x/"},
            "results": {"rows": [{"candidate": "redis://:hunter2@127.0.0.1:6379", "per_second": 5.0, "error": "cannot reach mysql://root:rootpw@db:3306/x"}]},
            "notes": ["token in https://user:n0te@example.org/?password=qs1&x=1"]
        });
        let page = render("dir", &[loaded("soak", v)], &[]).expect("renders");
        for secret in ["hunter2", "pw9secret", "enc0ded", "plainpw", "rootpw", "n0te", "qs1"] {
            assert!(!page.contains(secret), "{secret} leaked into the page");
        }
        assert!(page.contains("127.0.0.1:6379"), "the host is still shown");
    }

    #[test]
    fn unknown_bench_is_rendered_generically_with_charts() {
        let v = serde_json::json!({
            "bench": "placement",
            "environment": {"cpus": 2, "kernel": "6.1.0", "load_average": "1.0 2.0 3.0"},
            "results": {
                "total": 42,
                "rows": [{"candidate": "memory://", "ops_per_second": 100.0}, {"candidate": "redis://127.0.0.1:6379", "ops_per_second": 50.0}],
                "timeline": [[0.0, 1.0], [1.0, 3.0], [2.0, 4.0]]
            }
        });
        let page = render("dir", &[loaded("placement", v)], &[]).expect("renders");
        assert!(page.contains("<h2 id=\"r0\">placement"));
        assert_eq!(page.matches("<figure>").count(), 2, "a bar chart and a line chart");
        assert!(page.contains("6.1.0") && page.contains("1.0 2.0 3.0"));
        assert!(page.contains("not stated"), "no durability given");
        assert!(!page.contains("src=\"http") && !page.contains("href=\"http"), "nothing loaded from the network");
    }

    #[test]
    fn durability_is_read_from_the_records() {
        let v = serde_json::json!({
            "bench": "schedule",
            "results": {"candidates": [{"candidate": "redis://127.0.0.1:6379", "durability": "appendfsync everysec",
                "claims": {"placements_per_second": 10.0}}]}
        });
        let page = render("dir", &[loaded("schedule", v)], &[]).expect("renders");
        assert!(page.contains("appendfsync everysec"));
        assert!(!page.contains("<td>not stated</td>"));
    }

    /// The shape every bench writes (`candidate::durabilities`): an object with a summary
    /// beside the candidate, which must not be read as a map of candidates ("summary",
    /// "settings", "source"), and which wins over a per-row text of the same report.
    #[test]
    fn the_benches_durability_list_is_read() {
        let v = serde_json::json!({
            "bench": "claims",
            "durability": [{"candidate": "mysql://root@127.0.0.1:3306/x",
                "durability": {"summary": "InnoDB redo log fsynced at every commit",
                    "settings": {"127.0.0.1:3306 innodb_flush_log_at_trx_commit": "1"}, "source": "SELECT @@..."},
                "servers_started": 0, "cell_servers": 0}],
            "results": [{"candidate": "mysql://root@127.0.0.1:3306/x", "durability": "sql: as configured",
                "claims": {"per_second": 10.0}}]
        });
        let reports = [loaded("claims", v)];
        let map = durability_map(&reports);
        assert_eq!(
            map.get("mysql://root@127.0.0.1:3306/x").map(String::as_str),
            Some("InnoDB redo log fsynced at every commit"),
            "the server's word wins over a row's text"
        );
        assert!(!map.contains_key("summary"), "the object was read as a map of candidates: {map:?}");
        let page = render("dir", &reports, &[]).expect("renders");
        assert!(page.contains("InnoDB redo log fsynced at every commit"));
        assert!(!page.contains("<td>not stated</td>"));
    }
}
