//! Latency statistics (hdrhistogram) and small helpers for tables.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// A latency histogram in nanoseconds (1 ns to 1 hour, 3 significant digits).
#[derive(Clone)]
pub struct Latency(Option<Histogram<u64>>);

/// Histogram bounds: 1 ns to one hour, 3 significant digits.
const MAX_NS: u64 = 3_600_000_000_000;

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    /// An empty histogram.
    pub fn new() -> Self {
        // hdrhistogram only rejects bounds with low < 1, high < 2 * low or more than five
        // significant digits; these constants are valid. `None` would only record nothing.
        Latency(Histogram::new_with_bounds(1, MAX_NS, 3).ok())
    }

    /// A histogram of `samples`.
    pub fn of(samples: &[Duration]) -> Self {
        let mut l = Latency::new();
        for d in samples {
            l.record(*d);
        }
        l
    }

    /// Records one duration (saturating into the histogram's range).
    pub fn record(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1);
        if let Some(h) = &mut self.0 {
            h.saturating_record(ns.min(MAX_NS));
        }
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Latency) {
        if let (Some(a), Some(b)) = (&mut self.0, &other.0) {
            // Same bounds on both sides, so `add` cannot fail.
            let _ = a.add(b);
        }
    }

    /// Summary in milliseconds.
    pub fn summary(&self) -> Summary {
        let ms = |ns: u64| ns as f64 / 1e6;
        let Some(h) = self.0.as_ref().filter(|h| !h.is_empty()) else {
            return Summary::default();
        };
        Summary {
            count: h.len(),
            mean_ms: h.mean() / 1e6,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }
}

/// Percentiles of a latency histogram, in milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Summary {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
}

/// `a / b`, or `None` when `b` is zero or either is not finite.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    let r = a / b;
    (b != 0.0 && r.is_finite()).then_some(r)
}

/// Formats an optional ratio as `12.3x` (or `-`).
pub fn fmt_ratio(r: Option<f64>) -> String {
    match r {
        Some(r) if r >= 100.0 => format!("{r:.0}x"),
        Some(r) if r >= 10.0 => format!("{r:.1}x"),
        Some(r) => format!("{r:.2}x"),
        None => "-".to_string(),
    }
}

/// Formats milliseconds with a sensible number of digits.
pub fn fmt_ms(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else if ms >= 1.0 {
        format!("{ms:.2}")
    } else {
        format!("{ms:.3}")
    }
}

/// A plain-text table: header, rows, columns padded to their widest cell.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column names.
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(header: I) -> Self {
        Table { header: header.into_iter().map(Into::into).collect(), rows: Vec::new() }
    }

    /// Adds a row.
    pub fn row<I: IntoIterator<Item = S>, S: Into<String>>(&mut self, cells: I) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    /// Renders the table (first column left-aligned, the others right-aligned).
    pub fn render(&self) -> String {
        let n = self.header.len();
        let mut width = vec![0usize; n];
        for r in std::iter::once(&self.header).chain(&self.rows) {
            for (i, c) in r.iter().enumerate().take(n) {
                width[i] = width[i].max(c.chars().count());
            }
        }
        let line = |r: &Vec<String>| {
            let mut s = String::new();
            for (i, w) in width.iter().enumerate() {
                let c = r.get(i).map(String::as_str).unwrap_or("");
                if i == 0 {
                    s.push_str(&format!("{c:<w$}"));
                } else {
                    s.push_str(&format!("  {c:>w$}"));
                }
            }
            s.trim_end().to_string()
        };
        let mut out = line(&self.header);
        out.push('\n');
        out.push_str(&"-".repeat(width.iter().sum::<usize>() + 2 * n.saturating_sub(1)));
        for r in &self.rows {
            out.push('\n');
            out.push_str(&line(r));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let mut l = Latency::new();
        for i in 1..=100u64 {
            l.record(Duration::from_micros(i * 10));
        }
        let s = l.summary();
        assert_eq!(s.count, 100);
        assert!((s.p50_ms - 0.5).abs() < 0.01, "{s:?}");
        assert!((s.p99_ms - 0.99).abs() < 0.01, "{s:?}");
    }

    #[test]
    fn table_aligns() {
        let mut t = Table::new(["a", "bb"]);
        t.row(["xxx", "1"]);
        assert_eq!(t.render(), "a    bb\n-------\nxxx   1");
    }
}
