//! Charts as PNG bytes (plotters, drawn into memory): a run's `curves.png` and the bar
//! chart of `haba compare`. Text uses the Ubuntu font egui ships, so nothing depends on
//! the fonts a machine has installed.

use std::ops::Range;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::compare::Row;
use super::curves::Curves;
use crate::error::{Error, Result};

const FONT: &str = "sans-serif";

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bytes are a valid TrueType font; should registering fail, text is left out.
        let _ = plotters::style::register_font(
            FONT,
            FontStyle::Normal,
            epaint_default_fonts::UBUNTU_LIGHT,
        );
    });
}

fn plot_error(e: impl std::fmt::Display) -> Error {
    Error::Config(format!("drawing a chart: {e}"))
}

/// Draws with `draw` onto a white `width x height` canvas and encodes it as an RGB PNG.
fn png(
    width: u32,
    height: u32,
    draw: impl FnOnce(&DrawingArea<BitMapBackend, Shift>) -> Result<()>,
) -> Result<Vec<u8>> {
    register_font();
    let mut rgb = vec![255u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
        draw(&root)?;
        root.present().map_err(plot_error)?;
    }
    super::encode_png(&rgb, width as usize, height as usize, 3).map_err(plot_error)
}

/// The smallest and largest value of some series, widened a little (and made non-empty).
fn span(values: impl Iterator<Item = f64>) -> Range<f64> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi {
        return 0.0..1.0;
    }
    let pad = ((hi - lo) * 0.05).max(1e-6 * hi.abs().max(1.0));
    lo - pad..hi + pad
}

/// One panel of [`curves_png`]: a title and named series of `[iteration, value]` points.
struct Panel<'a> {
    title: &'a str,
    series: Vec<(&'a str, &'a [[f64; 2]], RGBColor)>,
    /// Error bars (± this much) around the first series' points.
    bars: Option<&'a [f64]>,
}

fn draw_panel(area: &DrawingArea<BitMapBackend, Shift>, p: &Panel, x: Range<f64>) -> Result<()> {
    let points = || p.series.iter().flat_map(|s| s.1.iter());
    if points().next().is_none() {
        area.draw(&Text::new(
            format!("{}: nothing logged", p.title),
            (20, 20),
            (FONT, 16),
        ))
        .map_err(plot_error)?;
        return Ok(());
    }
    let bars = p.bars.unwrap_or(&[]);
    let y = span(
        points().map(|q| q[1]).chain(
            p.series[0]
                .1
                .iter()
                .zip(bars)
                .flat_map(|(q, e)| [q[1] - e, q[1] + e]),
        ),
    );
    let mut chart = ChartBuilder::on(area)
        .caption(p.title, (FONT, 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(x, y)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("iteration")
        .label_style((FONT, 12))
        .draw()
        .map_err(plot_error)?;
    for &(name, points, colour) in &p.series {
        chart
            .draw_series(LineSeries::new(points.iter().map(|q| (q[0], q[1])), colour))
            .map_err(plot_error)?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], colour));
    }
    if !bars.is_empty() {
        let (_, points, colour) = p.series[0];
        chart
            .draw_series(points.iter().zip(bars).map(|(q, &e)| {
                ErrorBar::new_vertical(q[0], q[1] - e, q[1], q[1] + e, colour.filled(), 6)
            }))
            .map_err(plot_error)?;
    }
    if p.series.len() > 1 {
        chart
            .configure_series_labels()
            .label_font((FONT, 12))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(plot_error)?;
    }
    Ok(())
}

/// `curves.png`: the objective, the contrastive terms, the evaluation accuracy (mean ±
/// std, in %) and each of the objective's own numbers (MTT's learned α) against
/// iteration, one panel each, two panels a row.
pub fn curves_png(curves: &Curves, title: &str) -> Result<Vec<u8>> {
    let accuracy: Vec<[f64; 2]> = curves
        .accuracy
        .iter()
        .map(|&[i, a]| [i, 100.0 * a])
        .collect();
    let accuracy_std: Vec<f64> = curves.accuracy_std.iter().map(|s| 100.0 * s).collect();
    let last = [
        &curves.objective,
        &curves.diversity,
        &curves.adversary,
        &curves.accuracy,
    ]
    .into_iter()
    .chain(curves.scalars.values())
    .flat_map(|s| s.iter())
    .map(|q| q[0])
    .fold(1.0, f64::max);
    let x = 0.0..last;
    let titles: Vec<String> = curves
        .scalars
        .keys()
        .map(|k| super::curves::title(k))
        .collect();
    let mut panels = vec![
        Panel {
            title: "objective",
            series: vec![("objective", &curves.objective, BLUE)],
            bars: None,
        },
        Panel {
            title: "contrastive terms",
            series: vec![
                ("diversity (λ_cos term)", &curves.diversity, RED),
                ("adversary (λ_cont term)", &curves.adversary, GREEN),
            ],
            bars: None,
        },
        Panel {
            title: "test accuracy %",
            series: vec![("mean ± std", &accuracy, MAGENTA)],
            bars: Some(&accuracy_std),
        },
    ];
    for ((name, series), title) in curves.scalars.iter().zip(&titles) {
        panels.push(Panel {
            title,
            series: vec![(name, series, BLACK)],
            bars: None,
        });
    }
    let rows = panels.len().div_ceil(2);
    png(1200, 400 * rows as u32, |root| {
        root.fill(&WHITE).map_err(plot_error)?;
        let root = root.titled(title, (FONT, 22)).map_err(plot_error)?;
        for (area, panel) in root.split_evenly((rows, 2)).iter().zip(&panels) {
            draw_panel(area, panel, x.clone())?;
        }
        Ok(())
    })
}

/// `compare.png`: one bar per row, test accuracy mean in %, error bars at ± std; rows
/// marked (!) differ from the first in storage or protocol.
pub fn compare_png(rows: &[Row]) -> Result<Vec<u8>> {
    let labels: Vec<String> = rows
        .iter()
        .map(|r| {
            let flag = if r.differs.is_empty() { "" } else { " (!)" };
            format!("{}{flag}", r.name)
        })
        .collect();
    let top = rows
        .iter()
        .map(|r| 100.0 * (r.mean + r.std))
        .fold(0.0, f64::max)
        .max(1.0);
    let title = rows.first().map_or(String::new(), |r| {
        format!(
            "{}: test accuracy at a budget of {} images per class",
            r.dataset,
            (r.images_per_class - 1e-6).ceil()
        )
    });
    let width = (160 * rows.len() as u32).clamp(640, 4000);
    png(width, 600, |root| {
        root.fill(&WHITE).map_err(plot_error)?;
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(
                // A segmented range a..b has a segment for b too: the last row's index.
                (0..rows.len().saturating_sub(1)).into_segmented(),
                0.0..top * 1.1,
            )
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .y_desc("accuracy %")
            .x_labels(rows.len())
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .label_style((FONT, 13))
            .draw()
            .map_err(plot_error)?;
        let colour = |r: &Row| {
            if r.haba {
                RGBColor(214, 96, 77)
            } else {
                RGBColor(67, 147, 195)
            }
        };
        chart
            .draw_series(rows.iter().enumerate().map(|(i, r)| {
                let mut bar = Rectangle::new(
                    [
                        (SegmentValue::Exact(i), 0.0),
                        (SegmentValue::Exact(i + 1), 100.0 * r.mean),
                    ],
                    colour(r).filled(),
                );
                bar.set_margin(0, 0, 12, 12);
                bar
            }))
            .map_err(plot_error)?;
        chart
            .draw_series(rows.iter().enumerate().map(|(i, r)| {
                let (m, s) = (100.0 * r.mean, 100.0 * r.std);
                ErrorBar::new_vertical(
                    SegmentValue::CenterOf(i),
                    m - s,
                    m,
                    m + s,
                    BLACK.filled(),
                    10,
                )
            }))
            .map_err(plot_error)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes a PNG and counts its pixels that are neither white nor near-white.
    fn inked(png: &[u8]) -> (u32, u32, usize) {
        let img = image::load_from_memory(png).unwrap().to_rgb8();
        let inked = img
            .pixels()
            .filter(|p| p.0.iter().any(|&c| c < 200))
            .count();
        (img.width(), img.height(), inked)
    }

    #[test]
    fn curves_and_comparisons_draw_something() {
        let curves = Curves::parse(
            "{\"iteration\":1,\"objective\":3.0,\"diversity\":0.1,\"adversary\":2.0}\n\
             {\"iteration\":2,\"objective\":2.0,\"diversity\":0.2,\"adversary\":1.0}\n\
             {\"iteration\":2,\"eval\":{\"accuracies\":[0.5,0.7],\"mean\":0.6,\"std\":0.1}}\n",
        );
        let (w, h, ink) = inked(&curves_png(&curves, "a run").unwrap());
        assert_eq!((w, h), (1200, 800));
        assert!(ink > 5_000, "{ink} dark pixels");
        // An empty log still gives a picture that says so.
        let (_, _, empty) = inked(&curves_png(&Curves::default(), "nothing").unwrap());
        assert!(empty > 100 && empty < ink, "{empty}");

        let row = |name: &str, mean: f64| Row {
            run: "r".into(),
            name: name.into(),
            dataset: "d".into(),
            haba: name.starts_with("haba"),
            floats: 1,
            images_per_class: 2.0,
            mean,
            std: 0.02,
            nets: 2,
            protocol: "p".into(),
            iterations: None,
            differs: Vec::new(),
        };
        let (w, _, ink) = inked(&compare_png(&[row("haba-dm", 0.7), row("dm", 0.74)]).unwrap());
        assert_eq!(w, 640);
        assert!(ink > 10_000, "{ink} dark pixels");
        let (_, _, one) = inked(&compare_png(&[row("dm", 0.74)]).unwrap());
        assert!(one > 10_000, "one bar: {one} dark pixels");
    }
}
