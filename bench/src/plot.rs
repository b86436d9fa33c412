//! SVG plots of bench results, drawn with plotters.

use std::path::Path;
use std::time::Duration;

use plotters::prelude::*;

fn us(d: &Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Hit ratio over the replay (cumulative and per window, with the
/// simulation's final ratio as a line) beside the latency CDFs of KV.MATCH
/// and of the puts.
pub fn replay_svg(
    path: &Path,
    series: &[(usize, f64, f64)],
    match_lat: &[Duration],
    put_lat: &[Duration],
    simulated: f64,
    settings: &str,
) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1200, 510)).into_drawing_area();
    root.fill(&WHITE)?;
    // The run's settings on top: a plot read alone says what it shows.
    let root = root.titled(settings, ("sans-serif", 15))?;
    let (left, right) = root.split_horizontally(600);
    let n = series.last().map_or(1, |s| s.0).max(1);
    let top = series
        .iter()
        .map(|s| s.1.max(s.2))
        .fold(simulated, f64::max)
        .max(0.01)
        * 1.1;
    let mut chart = ChartBuilder::on(&left)
        .caption("prefix hit ratio over the replay", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(0usize..n, 0f64..top.min(1.0))?;
    chart
        .configure_mesh()
        .x_desc("requests")
        .y_desc("hit ratio")
        .draw()?;
    chart
        .draw_series(LineSeries::new(
            series.iter().map(|s| (s.0, s.2)),
            BLUE.mix(0.4),
        ))?
        .label("per window")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], BLUE.mix(0.4)));
    chart
        .draw_series(LineSeries::new(
            series.iter().map(|s| (s.0, s.1)),
            BLUE.stroke_width(2),
        ))?
        .label("cumulative (server)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], BLUE.stroke_width(2)));
    chart
        .draw_series(LineSeries::new([(0, simulated), (n, simulated)], RED))?
        .label("simulation, final")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], RED));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;

    let max_us = match_lat.iter().chain(put_lat).map(us).fold(1.0, f64::max);
    let mut cdf = ChartBuilder::on(&right)
        .caption("latency CDF", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d((1f64..max_us * 1.2).log_scale(), 0f64..1.0)?;
    cdf.configure_mesh()
        .x_desc("µs (log)")
        .y_desc("fraction of requests")
        .draw()?;
    for (lat, color, name) in [
        (match_lat, GREEN, "KV.MATCH"),
        (put_lat, MAGENTA, "KV.MPUT (chain)"),
    ] {
        if lat.is_empty() {
            continue;
        }
        let n = lat.len() as f64;
        cdf.draw_series(LineSeries::new(
            lat.iter()
                .enumerate()
                .step_by((lat.len() / 500).max(1))
                .map(|(i, d)| (us(d).max(1.0), (i + 1) as f64 / n)),
            color.stroke_width(2),
        ))?
        .label(name)
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2)));
    }
    cdf.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    root.present()?;
    Ok(())
}

/// CDF of time to first token per scheduling policy.
pub fn ttft_svg(path: &Path, series: &[(String, Vec<f64>)], settings: &str) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (800, 510)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(settings, ("sans-serif", 13))?;
    let max = series
        .iter()
        .flat_map(|(_, v)| v.last().copied())
        .fold(0.01, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption("time to first token, CDF per policy", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d((0.001f64..max * 1.2).log_scale(), 0f64..1.0)?;
    chart
        .configure_mesh()
        .x_desc("TTFT, s (log)")
        .y_desc("fraction of served requests")
        .draw()?;
    let colors = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    for (i, (name, v)) in series.iter().enumerate() {
        let color = colors[i % colors.len()];
        let n = v.len().max(1) as f64;
        chart
            .draw_series(LineSeries::new(
                v.iter()
                    .enumerate()
                    .step_by((v.len() / 500).max(1))
                    .map(|(j, t)| (t.max(0.001), (j + 1) as f64 / n)),
                color.stroke_width(2),
            ))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    root.present()?;
    Ok(())
}
