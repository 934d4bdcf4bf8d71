//! SVG charts (plotters' SVG backend).
//!
//! plotters is built without its `ttf`/`ab_glyph` features, so it uses its naive text
//! metrics and the SVG backend writes `<text>` elements that the viewer renders with its own
//! fonts: no font files are needed at build or run time.

use std::path::{Path, PathBuf};

use crate::error::{Context, Error, Result};
use plotters::prelude::*;

/// One line on a panel.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend label.
    pub name: String,
    /// Points (x, y); non-positive y values are dropped on log-scale panels.
    pub points: Vec<(f64, f64)>,
    /// Colour index (series with the same index share a colour).
    pub color: usize,
    /// Dashed (for example p99 beside a solid p50).
    pub dashed: bool,
}

/// One panel of a chart.
#[derive(Debug, Clone)]
pub struct Panel {
    /// Panel caption.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// Logarithmic y axis (latencies that differ by orders of magnitude).
    pub log_y: bool,
    /// The lines.
    pub series: Vec<Series>,
}

fn color(i: usize) -> RGBColor {
    const COLORS: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(255, 127, 14),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(23, 190, 207),
    ];
    COLORS[i % COLORS.len()]
}

fn bounds(panel: &Panel) -> (f64, f64, f64, f64) {
    let pts = || {
        panel
            .series
            .iter()
            .flat_map(|s| s.points.iter().copied())
            .filter(|(x, y)| x.is_finite() && y.is_finite() && (!panel.log_y || *y > 0.0))
    };
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in pts() {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1) = (0.0, 1.0);
    }
    if y0 > y1 {
        (y0, y1) = (0.1, 1.0);
    }
    if x1 - x0 < 1e-9 {
        (x0, x1) = (x0 - 0.5, x1 + 0.5);
    }
    if panel.log_y {
        (x0, x1, y0 / 1.5, y1 * 1.5)
    } else {
        let pad = (y1 - y0).abs().max(y1.abs() * 0.1).max(1e-9) * 0.1;
        (x0, x1, (y0 - pad).min(0.0), y1 + pad)
    }
}

macro_rules! draw_panel {
    ($area:expr, $panel:expr, $x:expr, $y:expr) => {{
        let panel = $panel;
        let mut chart = ChartBuilder::on($area)
            .caption(&panel.title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d($x, $y)?;
        chart
            .configure_mesh()
            .x_desc(panel.x_label.as_str())
            .y_desc(panel.y_label.as_str())
            .x_label_formatter(&|v: &f64| tick(*v))
            .y_label_formatter(&|v: &f64| tick(*v))
            .label_style(("sans-serif", 12))
            .draw()?;
        for s in &panel.series {
            let c = color(s.color);
            let pts: Vec<(f64, f64)> = s
                .points
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite() && (!panel.log_y || *y > 0.0))
                .collect();
            let style = c.stroke_width(2);
            let legend = move |(x, y): (i32, i32)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2));
            if s.dashed {
                chart
                    .draw_series(DashedLineSeries::new(pts.clone(), 6, 4, style))?
                    .label(s.name.as_str())
                    .legend(legend);
            } else {
                chart.draw_series(LineSeries::new(pts.clone(), style))?.label(s.name.as_str()).legend(legend);
            }
            chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, c.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font(("sans-serif", 11))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .draw()?;
    }};
}

/// Draws `panels` side by side under `title` into `dir/<name>.svg`; returns the path.
pub fn lines(dir: &Path, name: &str, title: &str, panels: &[Panel]) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create output directory {}", dir.display()))?;
    let path = dir.join(format!("{name}.svg"));
    let svg = lines_svg(title, panels).map_err(|e| relabel(e, &path))?;
    std::fs::write(&path, svg).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// Draws `panels` side by side under `title` and returns the SVG document as text (what
/// [`lines`] writes to a file; `unicell report` inlines it into its HTML page).
pub fn lines_svg(title: &str, panels: &[Panel]) -> Result<String> {
    let mut svg = String::new();
    draw_lines(&mut svg, title, panels)
        .map_err(|source| Error::Step { context: format!("cannot draw chart {title:?}"), source })?;
    Ok(svg)
}

/// Names the file in a drawing error instead of the chart's title.
fn relabel(e: Error, path: &Path) -> Error {
    match e {
        Error::Step { source, .. } => drawing_failed(path, source),
        other => other,
    }
}

/// What [`lines`] and [`bars`] draw with: plotters' errors, boxed.
type Drawn = std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>;

fn drawing_failed(path: &Path, source: Box<dyn std::error::Error + Send + Sync>) -> Error {
    Error::Step { context: format!("cannot draw {}", path.display()), source }
}

fn draw_lines(svg: &mut String, title: &str, panels: &[Panel]) -> Drawn {
    let n = panels.len().max(1);
    let width = (560 * n as u32).max(640);
    {
        let root = SVGBackend::with_string(svg, (width, 460)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(title, ("sans-serif", 20))?;
        for (area, panel) in root.split_evenly((1, n)).iter().zip(panels) {
            let (x0, x1, y0, y1) = bounds(panel);
            if panel.log_y {
                draw_panel!(area, panel, x0..x1, (y0..y1).log_scale());
            } else {
                draw_panel!(area, panel, x0..x1, y0..y1);
            }
        }
        root.present()?;
    }
    Ok(())
}

/// One bar of a bar chart.
#[derive(Debug, Clone)]
pub struct Bar {
    /// Label under the bar.
    pub label: String,
    /// Height.
    pub value: f64,
    /// Colour index.
    pub color: usize,
    /// Drawn in a light shade (for example a ceiling beside the measured bar).
    pub light: bool,
}

macro_rules! draw_bars {
    ($root:expr, $title:expr, $y_label:expr, $bars:expr, $y:expr, $bottom:expr, $label_at:expr) => {{
        let bars = $bars;
        let n = bars.len().max(1) as f64;
        let mut chart = ChartBuilder::on($root)
            .caption($title, ("sans-serif", 20))
            .margin(14)
            .x_label_area_size(70)
            .y_label_area_size(80)
            .build_cartesian_2d(0f64..n, $y)?;
        let labels: Vec<String> = bars.iter().map(|b| b.label.clone()).collect();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(bars.len().max(1) * 2 + 1)
            .x_label_formatter(&|x: &f64| {
                let i = (*x - 0.5).round();
                if (x - 0.5 - i).abs() < 1e-6 && i >= 0.0 {
                    labels.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_desc($y_label)
            .y_label_formatter(&|v: &f64| format_value(*v))
            .label_style(("sans-serif", 11))
            .draw()?;
        let bottom: f64 = $bottom;
        chart.draw_series(bars.iter().enumerate().map(|(i, b)| {
            let x = i as f64;
            Rectangle::new(
                [(x + 0.15, bottom), (x + 0.85, b.value.max(bottom))],
                if b.light { color(b.color).mix(0.4).filled() } else { color(b.color).filled() },
            )
        }))?;
        let label_at = $label_at;
        chart.draw_series(bars.iter().enumerate().map(|(i, b)| {
            Text::new(format_value(b.value), (i as f64 + 0.2, label_at(b.value.max(bottom))), ("sans-serif", 12))
        }))?;
    }};
}

/// Draws a bar chart into `dir/<name>.svg`; returns the path. `log_y` for values that differ
/// by orders of magnitude (bars then start at the smallest value's decade).
pub fn bars(dir: &Path, name: &str, title: &str, y_label: &str, bars: &[Bar], log_y: bool) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create output directory {}", dir.display()))?;
    let path = dir.join(format!("{name}.svg"));
    let svg = bars_svg(title, y_label, bars, log_y).map_err(|e| relabel(e, &path))?;
    std::fs::write(&path, svg).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// Draws a bar chart and returns the SVG document as text (what [`bars`] writes to a file).
pub fn bars_svg(title: &str, y_label: &str, bars: &[Bar], log_y: bool) -> Result<String> {
    let mut svg = String::new();
    draw_bar_chart(&mut svg, title, y_label, bars, log_y)
        .map_err(|source| Error::Step { context: format!("cannot draw chart {title:?}"), source })?;
    Ok(svg)
}

fn draw_bar_chart(svg: &mut String, title: &str, y_label: &str, bars: &[Bar], log_y: bool) -> Drawn {
    let width = (140 * bars.len() as u32 + 160).max(640);
    {
        let root = SVGBackend::with_string(svg, (width, 480)).into_drawing_area();
        root.fill(&WHITE)?;
        let finite = || bars.iter().map(|b| b.value).filter(|v| v.is_finite() && *v > 0.0);
        let top = finite().fold(0.0f64, f64::max).max(1e-9);
        if log_y {
            let low = finite().fold(f64::MAX, f64::min).min(top);
            let bottom = 10f64.powf(low.log10().floor()).max(1e-9);
            let top = top * 3.0;
            draw_bars!(&root, title, y_label, bars, (bottom..top).log_scale(), bottom, |v: f64| v * 1.15);
        } else {
            let top = top * 1.15;
            draw_bars!(&root, title, y_label, bars, 0f64..top, 0.0, |v: f64| v + top * 0.02);
        }
        root.present()?;
    }
    Ok(())
}

/// Axis tick text: no needless decimals.
fn tick(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 || (a - a.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else if a >= 0.01 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn format_value(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Appends `lines` under the chart in `path` (an SVG this module drew), growing the image:
/// how every bench states each candidate's durability on its chart. Lines are XML-escaped.
pub fn footer(path: &Path, lines: &[String]) -> Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let svg = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let Some(end) = svg.find('>') else {
        return Err(Error::Measurement(format!("{} is not an SVG", path.display())));
    };
    let head = &svg[..end];
    let num = |attr: &str| -> Option<u32> {
        let at = head.find(&format!(" {attr}=\""))? + attr.len() + 3;
        head[at..].split('"').next()?.parse().ok()
    };
    let (Some(width), Some(height)) = (num("width"), num("height")) else {
        return Err(Error::Measurement(format!("{} has no width and height", path.display())));
    };
    let extra = 18 * lines.len() as u32 + 12;
    let new_height = height + extra;
    let head = head.replacen(&format!(" height=\"{height}\""), &format!(" height=\"{new_height}\""), 1).replacen(
        &format!("viewBox=\"0 0 {width} {height}\""),
        &format!("viewBox=\"0 0 {width} {new_height}\""),
        1,
    );
    let escape = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    let mut text = format!(
        "<rect x=\"0\" y=\"{height}\" width=\"{width}\" height=\"{extra}\" fill=\"#FFFFFF\" stroke=\"none\"/>\n"
    );
    for (i, l) in lines.iter().enumerate() {
        text.push_str(&format!(
            "<text x=\"10\" y=\"{}\" font-family=\"sans-serif\" font-size=\"12\" fill=\"#333333\">{}</text>\n",
            height + 16 + 18 * i as u32,
            escape(l)
        ));
    }
    let body = &svg[end..];
    let Some(close) = body.rfind("</svg>") else {
        return Err(Error::Measurement(format!("{} is not a complete SVG", path.display())));
    };
    let out = format!("{head}{}{text}{}", &body[..close], &body[close..]);
    std::fs::write(path, out).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod footer_tests {
    #[test]
    fn footer_grows_the_image_and_escapes() {
        let dir = std::env::temp_dir().join(format!("unicell-footer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.svg");
        std::fs::write(&p, "<svg width=\"640\" height=\"480\" viewBox=\"0 0 640 480\" xmlns=\"x\">\n<rect/>\n</svg>\n")
            .unwrap();
        super::footer(&p, &["durability: a <b> & c".into(), "two".into()]).unwrap();
        let s = std::fs::read_to_string(&p).unwrap();
        assert!(s.starts_with("<svg width=\"640\" height=\"528\" viewBox=\"0 0 640 528\""), "{s}");
        assert!(s.contains("a &lt;b&gt; &amp; c"));
        assert!(s.trim_end().ends_with("</svg>"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
