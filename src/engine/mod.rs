// The GStreamer-free ClassSR engine shared by the element, the CLI and the tests: it tiles a
// frame, classifies all tiles in one batched run, runs each branch once per frame on its group
// (split by max-batch), and merges the HR tiles with feathered weights.

pub mod model;
pub mod pixels;
pub mod resample;
pub mod tiling;

use std::time::Instant;

use ort::value::TensorRef;

pub use model::Model;
pub use pixels::{Image, ImageMut, PixelLayout};
pub use tiling::TileGrid;

use crate::onnx::Kernel;
use crate::Error;
use resample::Upsampler;

/// Largest accepted input frame side (the output is `scale` times larger).
pub const MAX_SIDE: usize = 4096;
/// Largest accepted input frame area (4K UHD).
pub const MAX_PIXELS: usize = 3840 * 2160;

/// How tiles are routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// The classifier picks a branch per tile.
    #[default]
    ClassSR,
    /// The largest branch (branch3) on every tile: the "-O" model.
    Original,
    /// Plain bicubic upscaling; no network runs.
    Bicubic,
    /// One branch (0-based index) on every tile.
    Branch(usize),
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        Some(match s {
            "classsr" => Mode::ClassSR,
            "original" => Mode::Original,
            "bicubic" => Mode::Bicubic,
            "branch1" => Mode::Branch(0),
            "branch2" => Mode::Branch(1),
            "branch3" => Mode::Branch(2),
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::ClassSR => "classsr",
            Mode::Original => "original",
            Mode::Bicubic => "bicubic",
            Mode::Branch(0) => "branch1",
            Mode::Branch(1) => "branch2",
            Mode::Branch(_) => "branch3",
        }
    }
}

/// Per-frame settings; a change takes effect on the next frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameConfig {
    pub mode: Mode,
    /// LR tile side.
    pub tile: usize,
    /// LR pixels shared by neighbouring tiles (at least; the last tile is edge-aligned).
    pub overlap: usize,
    /// Most tiles per branch run.
    pub max_batch: usize,
    /// Added to branch3's logit and subtracted from branch1's before the argmax.
    pub bias: f32,
}

impl Default for FrameConfig {
    fn default() -> Self {
        FrameConfig {
            mode: Mode::ClassSR,
            tile: 32,
            overlap: 4,
            max_batch: 256,
            bias: 0.0,
        }
    }
}

/// What one frame cost.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FrameStats {
    pub width: usize,
    pub height: usize,
    /// Tiles per class (branch1, branch2, branch3).
    pub tiles: [usize; 3],
    /// True multiply-adds spent (classifier + branches).
    pub macs: u64,
    /// True multiply-adds of the original (-O) model on the same tiles.
    pub original_macs: u64,
    /// ONNX Runtime calls made for this frame.
    pub runs: usize,
    pub seconds: f64,
}

/// Buffers for one frame geometry, reused from frame to frame.
struct Work {
    grid: TileGrid,
    /// Planar padded LR frame (3 planes), model value range.
    lr: Vec<f32>,
    /// Padded LR alpha plane (0..1), for layouts with alpha.
    alpha_lr: Vec<f32>,
    alpha_hr: Vec<f32>,
    /// Planar padded HR accumulator (3 planes).
    acc: Vec<f32>,
    /// NCHW staging of all tiles for the classifier.
    all_tiles: Vec<f32>,
    /// NCHW staging per class for the branch runs.
    staging: [Vec<f32>; 3],
    class_of: Vec<u8>,
    groups: [Vec<u32>; 3],
    cubic: Upsampler,
}

impl Work {
    fn new(grid: TileGrid, scale: usize) -> Work {
        let (pw, ph) = (grid.padded_width, grid.padded_height);
        Work {
            lr: vec![0.0; 3 * pw * ph],
            alpha_lr: Vec::new(),
            alpha_hr: Vec::new(),
            acc: vec![0.0; 3 * pw * ph * scale * scale],
            all_tiles: Vec::new(),
            staging: Default::default(),
            class_of: vec![0; grid.len()],
            groups: Default::default(),
            cubic: Upsampler::new(Kernel::Bicubic, scale),
            grid,
        }
    }
}

/// Copies tile `i` of the planar frame into `dst` (one NCHW item).
fn gather_tile(grid: &TileGrid, lr: &[f32], i: usize, dst: &mut [f32]) {
    let (x0, y0) = grid.origin(i);
    let (t, pw) = (grid.tile, grid.padded_width);
    let plane = pw * grid.padded_height;
    for c in 0..3 {
        for y in 0..t {
            let s = c * plane + (y0 + y) * pw + x0;
            let d = (c * t + y) * t;
            dst[d..d + t].copy_from_slice(&lr[s..s + t]);
        }
    }
}

/// Adds HR tile `i` (one NCHW item) into the planar accumulator with its blending weights.
fn merge_tile(grid: &TileGrid, acc: &mut [f32], i: usize, src: &[f32]) {
    let (c0, r0) = grid.cell(i);
    let (x0, y0) = (grid.xs[c0] * grid.scale, grid.ys[r0] * grid.scale);
    let th = grid.tile * grid.scale;
    let ow = grid.padded_width * grid.scale;
    let plane = ow * grid.padded_height * grid.scale;
    let (wx, wy) = (&grid.wx[c0], &grid.wy[r0]);
    for c in 0..3 {
        for y in 0..th {
            let d = c * plane + (y0 + y) * ow + x0;
            let row = &mut acc[d..d + th];
            let s = &src[(c * th + y) * th..(c * th + y + 1) * th];
            let wyy = wy[y];
            for ((a, &v), &w) in row.iter_mut().zip(s).zip(wx) {
                *a += wyy * w * v;
            }
        }
    }
}

/// The engine: a loaded model plus the buffers of the current frame geometry.
pub struct Engine {
    model: Model,
    work: Option<Work>,
    geometry: (usize, usize, usize, usize),
}

impl Engine {
    pub fn new(model: Model) -> Engine {
        Engine {
            model,
            work: None,
            geometry: (0, 0, 0, 0),
        }
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn scale(&self) -> usize {
        self.model.manifest.scale as usize
    }

    /// Drops per-geometry state (the next frame re-tiles).
    pub fn reset(&mut self) {
        self.work = None;
        self.geometry = (0, 0, 0, 0);
    }

    /// Checks a frame size against the engine's limits.
    pub fn check_size(width: usize, height: usize) -> Result<(), Error> {
        if width == 0 || height == 0 {
            return Err(Error::Input(format!("frame size {width}x{height} is empty")));
        }
        if width > MAX_SIDE || height > MAX_SIDE || width * height > MAX_PIXELS {
            return Err(Error::Input(format!(
                "frame size {width}x{height} is too large: at most {MAX_SIDE} per side and {MAX_PIXELS} pixels \
                 (3840x2160); scale the input down first (e.g. videoscale)"
            )));
        }
        Ok(())
    }

    fn prepare(&mut self, w: usize, h: usize, cfg: &FrameConfig) -> Result<(), Error> {
        let key = (w, h, cfg.tile, cfg.overlap);
        if self.work.is_none() || self.geometry != key {
            Self::check_size(w, h)?;
            let grid = TileGrid::new(w, h, cfg.tile, cfg.overlap, self.scale()).map_err(Error::Settings)?;
            self.work = Some(Work::new(grid, self.scale()));
            self.geometry = key;
        }
        Ok(())
    }

    /// Upscales `input` into `output` (which must be `scale` times its size, any layout).
    pub fn process(&mut self, cfg: &FrameConfig, input: &Image, output: &mut ImageMut) -> Result<FrameStats, Error> {
        let started = Instant::now();
        input.check().map_err(Error::Input)?;
        output.check().map_err(Error::Input)?;
        let s = self.scale();
        if output.width != input.width * s || output.height != input.height * s {
            return Err(Error::Input(format!(
                "output {}x{} is not {s} times the input {}x{}",
                output.width, output.height, input.width, input.height
            )));
        }
        if cfg.max_batch == 0 {
            return Err(Error::Settings("max-batch must be at least 1".into()));
        }
        self.prepare(input.width, input.height, cfg)?;
        let [lo, hi] = self.model.manifest.value_range;
        let work = self.work.as_mut().expect("prepared");
        let grid = &work.grid;
        let (pw, ph) = (grid.padded_width, grid.padded_height);
        let with_alpha = input.layout.alpha_offset().is_some() && output.layout.alpha_offset().is_some();
        if with_alpha {
            work.alpha_lr.resize(pw * ph, 0.0);
            work.alpha_hr.resize(pw * ph * s * s, 0.0);
        }
        pixels::unpack_planar(
            input,
            pw,
            ph,
            lo,
            hi,
            &mut work.lr,
            with_alpha.then_some(&mut work.alpha_lr[..]),
        );

        let mut stats = FrameStats {
            width: input.width,
            height: input.height,
            ..Default::default()
        };
        let n = grid.len();
        let costs = self.model.branch_macs(cfg.tile);
        stats.original_macs = costs[2] * n as u64;
        if cfg.mode == Mode::Bicubic {
            let (hw, hh) = (pw * s, ph * s);
            for c in 0..3 {
                let plane = &work.lr[c * pw * ph..(c + 1) * pw * ph];
                work.cubic
                    .upscale(plane, pw, ph, &mut work.acc[c * hw * hh..(c + 1) * hw * hh]);
            }
        } else {
            self.classify(cfg, &mut stats)?;
            let work = self.work.as_mut().expect("prepared");
            work.acc.fill(0.0);
            for (class, cost) in costs.iter().enumerate() {
                let count = work.groups[class].len();
                if count > 0 {
                    stats.tiles[class] = count;
                    stats.macs += cost * count as u64;
                    stats.runs += Self::run_branch(&mut self.model, work, class, cfg)?;
                }
            }
        }
        let work = self.work.as_mut().expect("prepared");
        if with_alpha {
            work.cubic.upscale(&work.alpha_lr, pw, ph, &mut work.alpha_hr);
        }
        pixels::pack_planar(
            &work.acc,
            pw * s,
            ph * s,
            lo,
            hi,
            with_alpha.then_some(&work.alpha_hr[..]),
            output,
        );
        stats.seconds = started.elapsed().as_secs_f64();
        Ok(stats)
    }

    /// Fills `class_of` and `groups` for the frame.
    fn classify(&mut self, cfg: &FrameConfig, stats: &mut FrameStats) -> Result<(), Error> {
        let work = self.work.as_mut().expect("prepared");
        let n = work.grid.len();
        let fixed = match cfg.mode {
            Mode::Original => Some(2),
            Mode::Branch(b) => Some(b.min(2)),
            _ => None,
        };
        if let Some(b) = fixed {
            work.class_of.fill(b as u8);
        } else {
            let t = work.grid.tile;
            let item = 3 * t * t;
            work.all_tiles.resize(n * item, 0.0);
            for i in 0..n {
                gather_tile(&work.grid, &work.lr, i, &mut work.all_tiles[i * item..(i + 1) * item]);
            }
            let logits = self.model.run_classifier(&work.all_tiles, n, t)?;
            stats.runs += 1;
            stats.macs += self.model.classifier_macs(t) * n as u64;
            for (i, l) in logits.chunks_exact(3).enumerate() {
                let adj = [l[0] - cfg.bias, l[1], l[2] + cfg.bias];
                // argmax (ties go to the cheaper branch); NaN logits go to the largest branch
                let best = if adj.iter().any(|v| v.is_nan()) {
                    2
                } else {
                    (1..3).fold(0, |b, c| if adj[c] > adj[b] { c } else { b })
                };
                work.class_of[i] = best as u8;
            }
        }
        for g in &mut work.groups {
            g.clear();
        }
        for (i, &c) in work.class_of.iter().enumerate() {
            work.groups[c as usize].push(i as u32);
        }
        Ok(())
    }

    /// Runs one branch over its group in batches of at most `max_batch` and merges the results.
    fn run_branch(model: &mut Model, work: &mut Work, class: usize, cfg: &FrameConfig) -> Result<usize, Error> {
        let t = work.grid.tile;
        let item = 3 * t * t;
        let th = t * work.grid.scale;
        let out_item = 3 * th * th;
        let mut runs = 0;
        let group = &work.groups[class];
        for chunk in group.chunks(cfg.max_batch) {
            let staging = &mut work.staging[class];
            staging.resize(chunk.len().max(staging.len() / item) * item, 0.0);
            for (k, &i) in chunk.iter().enumerate() {
                gather_tile(&work.grid, &work.lr, i as usize, &mut staging[k * item..(k + 1) * item]);
            }
            let input = &staging[..chunk.len() * item];
            let session = &mut model.branches[class];
            let tensor = TensorRef::from_array_view(([chunk.len(), 3, t, t], input))
                .map_err(|e| Error::Runtime(format!("branch{} input: {e}", class + 1)))?;
            let outputs = session
                .run(ort::inputs![tensor])
                .map_err(|e| Error::Runtime(format!("branch{} failed on {} tiles: {e}", class + 1, chunk.len())))?;
            let name = &model.manifest.branches[class].output;
            let value = outputs
                .get(name)
                .ok_or_else(|| Error::Model(format!("branch{} has no output '{name}'", class + 1)))?;
            let (shape, data) = value
                .try_extract_tensor::<f32>()
                .map_err(|e| Error::Model(format!("branch{} output '{name}' is not f32: {e}", class + 1)))?;
            let want = [chunk.len() as i64, 3, th as i64, th as i64];
            if **shape != want || data.len() != chunk.len() * out_item {
                return Err(Error::Model(format!(
                    "branch{} returned shape {:?} for {} tiles of {t}x{t}; the manifest (scale {}) needs {want:?}",
                    class + 1,
                    &**shape,
                    chunk.len(),
                    work.grid.scale
                )));
            }
            for (k, &i) in chunk.iter().enumerate() {
                merge_tile(
                    &work.grid,
                    &mut work.acc,
                    i as usize,
                    &data[k * out_item..(k + 1) * out_item],
                );
            }
            runs += 1;
        }
        Ok(runs)
    }

    /// Class (0..3) of each tile of the last frame, row-major, and the grid it refers to.
    pub fn last_classes(&self) -> Option<(&TileGrid, &[u8])> {
        self.work.as_ref().map(|w| (&w.grid, &w.class_of[..]))
    }
}
