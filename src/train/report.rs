// Training reports: a progress bar per step (loss, it/s, ETA), the CSV of losses and
// validation PSNR in the work folder, and a PNG plot of the curves.

use std::io::Write;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

const HEADER: &str = "step,iter,loss,l1,class_loss,average_loss,lr,val_psnr,share1,share2,share3";

/// One CSV row.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub step: String,
    pub iter: usize,
    pub loss: f64,
    pub l1: f64,
    pub class_loss: f64,
    pub average_loss: f64,
    pub lr: f64,
    pub val_psnr: Option<f64>,
    pub shares: Option<[f64; 3]>,
}

pub struct TrainLog {
    path: PathBuf,
}

impl TrainLog {
    pub fn open(work: &Path) -> Result<TrainLog, String> {
        let path = work.join("training.csv");
        if !path.exists() {
            crate::files::write_bytes_atomically(&path, format!("{HEADER}\n").as_bytes())
                .map_err(|e| format!("cannot write '{}': {e}", path.display()))?;
        }
        Ok(TrainLog { path })
    }

    /// Removes the rows of `steps` (redone from scratch), keeping the others'.
    pub fn drop_steps(&self, steps: &[&str]) -> Result<(), String> {
        self.keep_rows(|step, _| !steps.contains(&step))
    }

    /// Removes the rows of `step` after iteration `iter` (a run resumed from a checkpoint
    /// made at `iter` runs them again).
    pub fn drop_rows_after(&self, step: &str, iter: usize) -> Result<(), String> {
        self.keep_rows(|s, i| s != step || i.is_none_or(|i| i <= iter))
    }

    /// Keeps the rows for which `keep(step, iteration)` holds.
    fn keep_rows(&self, keep: impl Fn(&str, Option<usize>) -> bool) -> Result<(), String> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(format!("cannot read '{}': {e}", self.path.display())),
        };
        let kept: String = text
            .lines()
            .skip(1)
            .filter(|l| {
                let mut f = l.split(',');
                let step = f.next().unwrap_or("");
                keep(step, f.next().and_then(|i| i.parse().ok()))
            })
            .map(|l| format!("{l}\n"))
            .collect();
        // replaced whole (a kill mid-write must not leave it empty)
        crate::files::write_bytes_atomically(&self.path, format!("{HEADER}\n{kept}").as_bytes())
            .map_err(|e| format!("cannot write '{}': {e}", self.path.display()))
    }

    pub fn append(&self, r: &Row) -> Result<(), String> {
        let opt = |v: Option<f64>| v.map(|v| format!("{v:.4}")).unwrap_or_default();
        let sh = r
            .shares
            .map(|s| s.map(|v| format!("{v:.3}")).join(","))
            .unwrap_or_else(|| ",,".into());
        let line = format!(
            "{},{},{:.6},{:.6},{:.6},{:.6},{:.3e},{},{}\n",
            r.step,
            r.iter,
            r.loss,
            r.l1,
            r.class_loss,
            r.average_loss,
            r.lr,
            opt(r.val_psnr),
            sh
        );
        std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .map_err(|e| format!("cannot append to '{}': {e}", self.path.display()))
    }

    /// Whether no iteration has been logged yet.
    pub fn is_empty(&self) -> bool {
        self.rows().is_empty()
    }

    fn rows(&self) -> Vec<(String, usize, f64, Option<f64>)> {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        text.lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                Some((
                    f.first()?.to_string(),
                    f.get(1)?.parse().ok()?,
                    f.get(3)?.parse().ok()?,
                    f.get(7).and_then(|v| v.parse().ok()),
                ))
            })
            .collect()
    }

    /// Plots L1 loss and validation PSNR per step.
    pub fn plot(&self, out: &Path) -> Result<(), String> {
        use plotters::prelude::*;
        let font = [
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
        ]
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .ok_or("no DejaVu or Liberation font installed (apt-get install fonts-dejavu-core)")?;
        let font: &'static [u8] = Box::leak(font.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, font).map_err(|_| "bad font")?;
        let rows = self.rows();
        if rows.is_empty() {
            return Err("no rows yet".into());
        }
        let mut steps: Vec<String> = Vec::new();
        for r in &rows {
            if !steps.contains(&r.0) {
                steps.push(r.0.clone());
            }
        }
        let root = BitMapBackend::new(out, (1200, 500)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (left, right) = root.split_horizontally(600);
        let max_iter = rows.iter().map(|r| r.1).max().unwrap_or(1) as f64;
        let e = |e: plotters::drawing::DrawingAreaErrorKind<_>| e.to_string();
        let l1_max = rows.iter().map(|r| r.2).fold(0.0, f64::max).max(1e-6);
        let mut c = ChartBuilder::on(&left)
            .caption("L1 loss", ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..max_iter, 0.0..l1_max * 1.05)
            .map_err(e)?;
        c.configure_mesh().x_desc("iteration").draw().map_err(e)?;
        for (k, s) in steps.iter().enumerate() {
            let color = Palette99::pick(k).to_rgba();
            c.draw_series(LineSeries::new(
                rows.iter().filter(|r| &r.0 == s).map(|r| (r.1 as f64, r.2)),
                color,
            ))
            .map_err(e)?
            .label(s.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], color));
        }
        c.configure_series_labels()
            .background_style(WHITE)
            .border_style(BLACK)
            .draw()
            .map_err(e)?;
        let pts: Vec<(String, f64, f64)> = rows
            .iter()
            .filter_map(|r| r.3.map(|p| (r.0.clone(), r.1 as f64, p)))
            .collect();
        if !pts.is_empty() {
            let lo = pts.iter().map(|p| p.2).fold(f64::MAX, f64::min);
            let hi = pts.iter().map(|p| p.2).fold(f64::MIN, f64::max);
            let mut c = ChartBuilder::on(&right)
                .caption("validation PSNR (dB)", ("sans-serif", 20))
                .margin(10)
                .x_label_area_size(30)
                .y_label_area_size(50)
                .build_cartesian_2d(0.0..max_iter, (lo - 0.5)..(hi + 0.5))
                .map_err(e)?;
            c.configure_mesh().x_desc("iteration").draw().map_err(e)?;
            for (k, s) in steps.iter().enumerate() {
                let color = Palette99::pick(k).to_rgba();
                c.draw_series(LineSeries::new(
                    pts.iter().filter(|p| &p.0 == s).map(|p| (p.1, p.2)),
                    color,
                ))
                .map_err(e)?;
            }
        }
        root.present().map_err(|e| e.to_string())
    }
}

/// A progress bar for one step; when stderr is not a terminal (a log, CI), a plain line at the
/// start and then every [`PLAIN_EVERY`].
pub struct Progress {
    bar: ProgressBar,
    loss: f64,
    started: std::time::Instant,
    first: u64,
    /// When the last plain line was written.
    said: std::time::Instant,
    /// What a step of the bar counts (for the closing line).
    unit: &'static str,
}

/// How often a step without a terminal says how far it is.
pub const PLAIN_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

impl Progress {
    pub fn new(step: &str, total: usize, done: usize) -> Progress {
        let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {msg} {per_sec} ETA {eta}")
                .expect("template")
                .progress_chars("=> "),
        );
        bar.set_prefix(step.to_string());
        bar.set_position(done as u64);
        bar.reset_eta();
        let p = Progress {
            bar,
            loss: f64::NAN,
            started: std::time::Instant::now(),
            first: done as u64,
            said: std::time::Instant::now(),
            unit: "iterations",
        };
        if p.bar.is_hidden() {
            p.note(&format!("{done}/{total}"));
        }
        p
    }

    /// Names what a step of the bar counts (iterations unless said).
    pub fn counting(mut self, unit: &'static str) -> Progress {
        self.unit = unit;
        self
    }

    /// One iteration done, with its L1 loss (shown smoothed).
    pub fn tick(&mut self, l1: f64) {
        self.loss = if self.loss.is_nan() {
            l1
        } else {
            0.98 * self.loss + 0.02 * l1
        };
        self.bar.set_message(format!("L1 {:.4}", self.loss));
        self.advance();
    }

    /// One unit of work done (no loss to show).
    pub fn advance(&mut self) {
        self.bar.inc(1);
        if self.bar.is_hidden() && self.said.elapsed() >= PLAIN_EVERY {
            self.said = std::time::Instant::now();
            let (pos, len) = (self.bar.position(), self.bar.length().unwrap_or(0));
            let rate = (pos - self.first) as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
            let eta = (len.saturating_sub(pos)) as f64 / rate.max(1e-9);
            let loss = if self.loss.is_nan() {
                String::new()
            } else {
                format!(", L1 {:.4}", self.loss)
            };
            self.note(&format!("{pos}/{len}{loss}, about {eta:.0} s left"));
        }
    }

    /// A line that stays above the bar (also printed when there is no terminal).
    pub fn note(&self, msg: &str) {
        if self.bar.is_hidden() {
            eprintln!("{}: {msg}", self.bar.prefix());
        } else {
            self.bar.println(format!("{}: {msg}", self.bar.prefix()));
        }
    }

    pub fn finish(&self) {
        self.bar.finish();
        let secs = self.started.elapsed().as_secs_f64();
        let n = self.bar.position().saturating_sub(self.first);
        let msg = format!(
            "done ({n} {} in {secs:.1} s, {:.2}/s)",
            self.unit,
            n as f64 / secs.max(1e-9)
        );
        self.note(&msg);
    }
}
