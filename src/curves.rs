//! Training curves as a PNG: losses, test scores and the learning rate against iterations.
//!
//! Text is drawn with the DejaVu Sans font compiled into the binary (plotters' ab_glyph backend),
//! so charts render the same on machines without any system fonts.

use crate::training_log::LogTable;
use crate::{bail, Error, Result};
use plotters::prelude::*;
use std::path::Path;

const FONT: &str = "sans-serif";

fn register_font() -> Result<()> {
    static ONCE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *ONCE.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok()
    });
    if !ok {
        bail!("the embedded DejaVu Sans font could not be loaded");
    }
    Ok(())
}

/// A tick label on a log axis: plain decimals from 0.001 to 10,000, powers of ten beyond.
fn log_tick(v: f64) -> String {
    if (1e-3..1e4).contains(&v.abs()) {
        let s = format!("{v:.6}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{v:.0e}")
    }
}

/// Whether positive values spread over enough orders of magnitude to want a log axis.
fn wants_log(values: impl Iterator<Item = f64>) -> bool {
    let (mut lo, mut hi, mut all_positive) = (f64::INFINITY, 0f64, true);
    for v in values.filter(|v| v.is_finite()) {
        all_positive &= v > 0.0;
        (lo, hi) = (lo.min(v), hi.max(v));
    }
    all_positive && lo.is_finite() && hi / lo > 20.0
}

fn draw_err<E: std::fmt::Debug>(e: E) -> Error {
    Error::msg(format!("drawing the chart: {e:?}"))
}

/// One line on a panel.
struct Series {
    label: String,
    points: Vec<(f64, f64)>,
    color: RGBColor,
    markers: bool,
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn panel(
    area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    title: &str,
    y_label: &str,
    series: &[Series],
    x_max: f64,
    log_y: bool,
    legend_at: SeriesLabelPosition,
) -> Result<()> {
    let pts = series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|p| p.1.is_finite() && (!log_y || p.1 > 0.0));
    let (mut lo, mut hi) = pts.fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), p| {
        (l.min(p.1), h.max(p.1))
    });
    if !lo.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    let mut caption = ChartBuilder::on(area);
    caption
        .caption(title, (FONT, 22))
        .margin(12)
        .margin_right(30)
        .x_label_area_size(40)
        .y_label_area_size(70);
    let x_range = 0f64..x_max.max(1.0);
    if log_y {
        let (lo, hi) = (lo / 1.5, hi * 1.5);
        let mut chart = caption
            .build_cartesian_2d(x_range, (lo..hi).log_scale())
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .x_desc("iterations")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_desc(y_label)
            .label_style((FONT, 14))
            .y_label_formatter(&|v| log_tick(*v))
            .draw()
            .map_err(draw_err)?;
        draw_series(legend_at.clone(), &mut chart, series)?;
    } else {
        if hi - lo <= hi.abs().max(lo.abs()) * 1e-6 {
            // A constant (a fixed learning rate): centre it on an axis from 0 (or -|v|) to 2v.
            let m = hi.abs().max(1e-6);
            (lo, hi) = (lo - m, hi + m);
        }
        let pad = ((hi - lo) * 0.08).max(1e-6);
        let (lo, hi) = (
            if lo >= 0.0 {
                (lo - pad).max(0.0)
            } else {
                lo - pad
            },
            hi + pad,
        );
        let mut chart = caption
            .build_cartesian_2d(x_range, lo..hi)
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .x_desc("iterations")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_desc(y_label)
            .label_style((FONT, 14))
            .draw()
            .map_err(draw_err)?;
        draw_series(legend_at.clone(), &mut chart, series)?;
    }
    Ok(())
}

fn draw_series<'a, Y>(
    legend_at: SeriesLabelPosition,
    chart: &mut ChartContext<
        'a,
        BitMapBackend<'a>,
        Cartesian2d<plotters::coord::types::RangedCoordf64, Y>,
    >,
    series: &[Series],
) -> Result<()>
where
    Y: Ranged<ValueType = f64>,
{
    for s in series {
        let color = s.color;
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .copied()
            .filter(|p| p.1.is_finite())
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(draw_err)?
            .label(s.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
            });
        if s.markers {
            chart
                .draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))
                .map_err(draw_err)?;
        }
    }
    if !series.is_empty() {
        chart
            .configure_series_labels()
            .label_font((FONT, 15))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(legend_at)
            .draw()
            .map_err(draw_err)?;
    }
    Ok(())
}

/// Draws training loss and test losses, the other test outputs (accuracy) and the learning rate
/// against iterations into a `width`×`height` PNG at `path`. `learning_rates` are the log's
/// (iteration, lr) points (`training_log::learning_rates`); when empty the tables' LearningRate
/// column stands in. Losses and the learning rate get a log axis when they span more than 20×.
pub fn plot_curves(
    train: &LogTable,
    test: &LogTable,
    learning_rates: &[(f64, f64)],
    title: &str,
    path: &Path,
    width: u32,
    height: u32,
) -> Result<()> {
    register_font()?;
    if train.rows.is_empty() && test.rows.is_empty() {
        bail!("the log has no `Train net output` or `Test net output` lines to plot");
    }
    let x_max = train
        .rows
        .iter()
        .chain(&test.rows)
        .filter_map(|r| r[0])
        .fold(0f64, f64::max);
    let mut colors = COLORS.iter().copied().cycle();
    let mut losses = vec![];
    let mut scores = vec![];
    for name in train.outputs() {
        let s = Series {
            label: format!("train {name}"),
            points: train.series(name),
            color: colors.next().unwrap_or(BLUE),
            markers: false,
        };
        if name.contains("loss") {
            losses.push(s);
        } else {
            scores.push(s);
        }
    }
    for name in test.outputs() {
        let s = Series {
            label: format!("test {name}"),
            points: test.series(name),
            color: colors.next().unwrap_or(RED),
            markers: true,
        };
        if name.contains("loss") {
            losses.push(s);
        } else {
            scores.push(s);
        }
    }
    let lr_table = if train.rows.is_empty() { test } else { train };
    let lr = vec![Series {
        label: "learning rate".into(),
        points: if learning_rates.is_empty() {
            lr_table.series("LearningRate")
        } else {
            learning_rates.to_vec()
        },
        color: RGBColor(80, 80, 80),
        markers: false,
    }];
    let lr_log = wants_log(lr[0].points.iter().map(|p| p.1).filter(|v| *v > 0.0));
    let loss_log = wants_log(losses.iter().flat_map(|s| s.points.iter().map(|p| p.1)));
    // The scores panel's axis names what it shows when that is one or two outputs (`accuracy`).
    let score_names: Vec<&str> = test
        .outputs()
        .iter()
        .chain(train.outputs())
        .filter(|n| !n.contains("loss"))
        .map(|n| n.as_str())
        .collect();
    let score_label = if (1..=2).contains(&score_names.len()) {
        score_names.join(", ")
    } else {
        "value".to_string()
    };

    let mut buf = vec![255u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let root = root.titled(title, (FONT, 26)).map_err(draw_err)?;
        let panels = if scores.is_empty() { 2 } else { 3 };
        let areas = root.split_evenly((panels, 1));
        panel(
            &areas[0],
            "loss",
            "loss",
            &losses,
            x_max,
            loss_log,
            SeriesLabelPosition::UpperRight,
        )?;
        if panels == 3 {
            panel(
                &areas[1],
                "test scores",
                &score_label,
                &scores,
                x_max,
                false,
                SeriesLabelPosition::LowerRight,
            )?;
        }
        panel(
            &areas[panels - 1],
            "learning rate",
            "lr",
            &lr,
            x_max,
            lr_log,
            SeriesLabelPosition::UpperRight,
        )?;
        root.present().map_err(draw_err)?;
    }
    let img = image::RgbImage::from_raw(width, height, buf)
        .ok_or_else(|| Error::msg("chart buffer has the wrong size"))?;
    img.save(path)
        .map_err(|e| Error::msg(format!("cannot write {}: {e}", path.display())))?;
    Ok(())
}
