//! Renders the echo comparison chart (the picture a reader looks at first).
//!
//! Reads the JSON records the bench driver wrote and draws, per payload
//! size, one bar per runtime for the sequential echo bench (wall µs per
//! call, log scale), the unix-socket proxy baselines included, so the gap
//! between the bridge and the proxy model is visible at a glance.
//!
//! Usage: `bench-chart RECORDS.json OUT.png [TITLE]`. Text is drawn with
//! DejaVu Sans (Debian's fonts-dejavu-core), or the file named by
//! `BENCH_CHART_FONT`.

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};
use serde_json::Value;

const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

const COLORS: &[RGBColor] = &[
    RGBColor(0xd9, 0x5f, 0x02),
    RGBColor(0x1b, 0x9e, 0x77),
    RGBColor(0x75, 0x70, 0xb3),
    RGBColor(0xe7, 0x29, 0x8a),
    RGBColor(0x66, 0xa6, 0x1e),
    RGBColor(0xe6, 0xab, 0x02),
    RGBColor(0xa6, 0x76, 0x1d),
    RGBColor(0x1f, 0x78, 0xb4),
    RGBColor(0x66, 0x66, 0x66),
    RGBColor(0x99, 0x99, 0x99),
];

fn load_font() -> Result<(), String> {
    let candidates: Vec<String> = std::env::var("BENCH_CHART_FONT")
        .into_iter()
        .chain(FONTS.iter().map(|s| s.to_string()))
        .collect();
    for path in &candidates {
        if let Ok(bytes) = std::fs::read(path) {
            // plotters keeps fonts for the life of the process
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            return register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| format!("{path} is not a usable font"));
        }
    }
    Err(format!(
        "no font found (tried {candidates:?}); set BENCH_CHART_FONT"
    ))
}

fn human(bytes: u64) -> String {
    if bytes >= 1024 && bytes.is_multiple_of(1024) {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} B")
    }
}

/// (payloads, runtimes, value[runtime][payload]) of the sequential bench.
type Table = (Vec<u64>, Vec<String>, Vec<Vec<Option<f64>>>);

fn table(records: &[Value]) -> Table {
    let seq: Vec<&Value> = records
        .iter()
        .filter(|r| r["bench"] == "sequential" && r["pinned"] != true)
        .filter(|r| r["wall_us_per_call"].is_f64())
        .collect();
    let mut payloads: Vec<u64> = seq.iter().filter_map(|r| r["payload"].as_u64()).collect();
    payloads.sort_unstable();
    payloads.dedup();
    let mut runtimes: Vec<String> = Vec::new();
    for r in &seq {
        let name = r["runtime"].as_str().unwrap_or("?").to_string();
        if !runtimes.contains(&name) {
            runtimes.push(name);
        }
    }
    let mut values = vec![vec![None; payloads.len()]; runtimes.len()];
    for r in &seq {
        let name = r["runtime"].as_str().unwrap_or("?");
        let ri = runtimes.iter().position(|n| n == name).unwrap_or(0);
        if let Some(pi) = payloads
            .iter()
            .position(|&p| Some(p) == r["payload"].as_u64())
        {
            values[ri][pi] = r["wall_us_per_call"].as_f64();
        }
    }
    (payloads, runtimes, values)
}

fn draw(records: &[Value], out: &str, title: &str) -> Result<(), Box<dyn std::error::Error>> {
    let (payloads, runtimes, values) = table(records);
    if payloads.is_empty() || runtimes.is_empty() {
        return Err("no sequential records to draw".into());
    }
    let max = values
        .iter()
        .flatten()
        .flatten()
        .fold(1.0f64, |m, &v| m.max(v));
    let min = values
        .iter()
        .flatten()
        .flatten()
        .fold(max, |m, &v| m.min(v))
        .max(0.01);
    let group = runtimes.len() as f64 + 1.0;
    let width = payloads.len() as f64 * group;

    let root = BitMapBackend::new(out, (1200, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..width, ((min / 2.0)..(max * 2.0)).log_scale())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc("wall µs per call (log scale, lower is better)")
        .label_style(("sans-serif", 15))
        .draw()?;
    // payload names under each group, in pixels (the x axis is positions)
    let label = ("sans-serif", 17).into_font().color(&BLACK);
    for (pi, &p) in payloads.iter().enumerate() {
        let centre = pi as f64 * group + (group - 1.0) / 2.0;
        let (px, py) = chart.backend_coord(&(centre, min / 2.0));
        let text = human(p);
        root.draw(&Text::new(
            text.clone(),
            (px - 4 * text.len() as i32, py + 10),
            label.clone(),
        ))?;
    }
    for (ri, name) in runtimes.iter().enumerate() {
        let color = COLORS[ri % COLORS.len()];
        let bars = values[ri].iter().enumerate().filter_map(|(pi, v)| {
            let v = (*v)?;
            let x0 = pi as f64 * group + ri as f64 + 0.1;
            Some(Rectangle::new(
                [(x0, min / 2.0), (x0 + 0.8, v)],
                color.filled(),
            ))
        });
        chart
            .draw_series(bars)?
            .label(name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 12, y + 6)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()?;
    // the value over each bar, in pixels like the payload names
    let small = ("sans-serif", 12).into_font().color(&BLACK);
    for (ri, row) in values.iter().enumerate() {
        for (pi, v) in row.iter().enumerate() {
            let Some(v) = *v else { continue };
            let x = pi as f64 * group + ri as f64 + 0.1;
            let (px, py) = chart.backend_coord(&(x, v));
            let text = if v >= 10.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.1}")
            };
            root.draw(&Text::new(text, (px + 2, py - 15), small.clone()))?;
        }
    }
    root.present()?;
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: bench-chart RECORDS.json OUT.png [TITLE]");
        std::process::exit(2);
    }
    let title = args
        .get(3)
        .cloned()
        .unwrap_or_else(|| "Sequential echo from Lua: resty-ffi vs unix-socket proxy".into());
    let run = || -> Result<(), Box<dyn std::error::Error>> {
        load_font()?;
        let text = std::fs::read_to_string(&args[1])?;
        let records: Vec<Value> = serde_json::from_str(&text)?;
        draw(&records, &args[2], &title)
    };
    if let Err(e) = run() {
        eprintln!("bench-chart: {e}");
        std::process::exit(1);
    }
}
