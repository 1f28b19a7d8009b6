// The GStreamer-free ClassSR engine shared by the element, the CLI and the tests: it tiles a
// frame, classifies all tiles in one batch (cut between the CPU tile workers), runs each branch
// once per frame on its group (shared out between the workers, split by max-batch:
// workers.rs), and merges the HR tiles with feathered weights into a fixed-point accumulator
// (accumulate.rs).

pub mod accumulate;
pub mod cache;
pub mod correction;
pub mod crop;
pub mod fixed16;
pub mod frame_graphs;
pub mod model;
pub mod pixels;
pub mod resample;
mod share;
pub mod tiling;
mod workers;

use std::time::Instant;

pub use cache::CacheMode;
pub use model::{Model, CLASSIFIER_SHARE};
pub use pixels::{Image, ImageMut, PixelLayout};
pub use tiling::TileGrid;

use crate::onnx::Kernel;
use crate::runtime::ActiveDevice;
use crate::Error;
use accumulate::{merge_tile, tile_region, TileFx, FX_ONE};
use cache::TileCache;
use correction::Correction;
use crop::{Crop, Rect};
use resample::Upsampler;
pub use share::batch_calls;
use share::TileCosts;

/// Largest accepted input frame side (the output is `scale` times larger).
pub const MAX_SIDE: usize = 4096;
/// 4K UHD, landscape: the largest frame of the most common shape.
pub const UHD: (usize, usize) = (3840, 2160);
/// Largest accepted input frame area (4K UHD).
pub const MAX_PIXELS: usize = UHD.0 * UHD.1;

/// The accepted frame sizes as bands of widths, each with the largest height every width of
/// it may have: a staircase under both limits (caps hold ranges, not an area), exact at 4K UHD
/// both ways and at the side limit. A size between two steps (3000x2700) fits the limits but
/// no band.
pub fn size_bands() -> Vec<(std::ops::RangeInclusive<usize>, usize)> {
    let steps = [MAX_PIXELS / MAX_SIDE, UHD.1, 2560, 2880, 3200, UHD.0, MAX_SIDE];
    let mut lo = 1;
    steps
        .iter()
        .map(|&hi| {
            let band = (lo..=hi, (MAX_PIXELS / hi).min(MAX_SIDE));
            lo = hi + 1;
            band
        })
        .collect()
}

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
    /// Debug view: the bicubic upscale tinted by each tile's class (green, yellow, red for
    /// branch 1, 2, 3), as in the paper's figures.
    ClassMap,
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
            "classmap" => Mode::ClassMap,
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
            Mode::ClassMap => "classmap",
        }
    }

    /// What the cache's results depend on in this mode: the routing modes share one key, and
    /// `original` runs branch3 as `branch3` does.
    fn key(self) -> u8 {
        match self {
            Mode::ClassSR | Mode::ClassMap => 0,
            Mode::Bicubic => 2,
            Mode::Original => 5,
            Mode::Branch(b) => 3 + b.min(2) as u8,
        }
    }

    /// Whether the classifier's logits choose each tile's branch (and `bias` moves them).
    fn routes(self) -> bool {
        matches!(self, Mode::ClassSR | Mode::ClassMap)
    }
}

/// Tiles per branch run when max-batch is automatic, on the CPU: each one-thread worker runs
/// its share in calls of about this many tiles, which keeps a call's activations in the core's
/// cache (measured on this project's FSRCNN branches: 16 tiles per call 1.4–1.5x the tiles/s
/// of one call of 128).
pub const CPU_BATCH: usize = 16;
/// Tiles per branch run when max-batch is automatic, with CUDA (large batches fill the GPU).
pub const CUDA_BATCH: usize = 256;

/// The most tiles per branch run for `cfg` on `device`.
pub fn batch_limit(cfg: &FrameConfig, device: ActiveDevice) -> usize {
    match (cfg.max_batch, device) {
        (0, ActiveDevice::Cpu) => CPU_BATCH,
        (0, ActiveDevice::Cuda(_)) => CUDA_BATCH,
        (n, _) => n,
    }
}

/// Per-frame settings; a change takes effect on the next frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameConfig {
    pub mode: Mode,
    /// LR tile side; 0 = the model's (its manifest's `tile_size`).
    pub tile: usize,
    /// LR pixels shared by neighbouring tiles (at least; the last tile is edge-aligned).
    pub overlap: usize,
    /// Most tiles per branch run; 0 = automatic ([`CPU_BATCH`] on the CPU, [`CUDA_BATCH`]
    /// with CUDA).
    pub max_batch: usize,
    /// Added to branch3's logit and subtracted from branch1's before the argmax.
    pub bias: f32,
    /// QoS degradation's step on top of `bias` (≤ 0): it routes as `bias` does, but does not
    /// drop the cache (cached tiles keep their outputs, and their classes are re-routed from
    /// their cached logits).
    pub qos_bias: f32,
    /// Tiles upscaled bicubically instead of by branch1 (QoS degradation).
    pub class1_bicubic: bool,
    pub cache: CacheMode,
    /// A tile is unchanged when, in every 8×8 block, its mean absolute difference to the
    /// cached one is below this (8-bit units); 0 caches only bit-identical tiles.
    pub cache_threshold: f32,
    /// Every tile is recomputed once every this many frames, about 1/N of them each frame
    /// (0 = never).
    pub cache_refresh: u32,
    /// With cache=full and a threshold above 0, reused outputs get the bicubic upscale of
    /// their pixels' change since they were computed (see correction.rs).
    pub cache_correction: bool,
}

impl FrameConfig {
    /// These settings with the tile side resolved for a model of manifest `m` (0 = its own).
    pub fn for_model(&self, m: &crate::manifest::Manifest) -> FrameConfig {
        FrameConfig {
            tile: if self.tile == 0 {
                m.tile_size as usize
            } else {
                self.tile
            },
            ..*self
        }
    }
}

impl Default for FrameConfig {
    fn default() -> Self {
        FrameConfig {
            mode: Mode::ClassSR,
            tile: 0,
            overlap: 4,
            max_batch: 0,
            bias: 0.0,
            qos_bias: 0.0,
            class1_bicubic: false,
            cache: CacheMode::Off,
            cache_threshold: 2.0,
            cache_refresh: 30,
            cache_correction: true,
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
    /// Tiles found unchanged, whose class came from the cache (in the modes that route, they
    /// are left out of the classifier batch; the fixed modes have no classifier to skip).
    pub class_cache_hits: usize,
    /// Tiles whose HR output came from the cache (no branch run).
    pub full_cache_hits: usize,
    /// Tiles whose branch ran only on their changed part, pasted into their cached output
    /// (cache=full; counted as recomputed, not as hits).
    pub partial_tiles: usize,
    pub seconds: f64,
    /// Of those, the seconds spent deciding the tiles' classes: gathering the tiles, comparing
    /// them with the cache, the classifier's runs on the changed ones, routing and recording
    /// them in the cache (0 in mode=bicubic; by the frame graphs, the classifier and routing
    /// only). cache=class saves only here against cache=off: the rest of a frame is the same
    /// work when the classes agree.
    pub classify_seconds: f64,
    /// Where the time went, for frames made by the frame graphs ([`Engine::process_graphs`]).
    pub stages: Option<StageSeconds>,
}

/// Seconds per step of a frame made by the frame graphs, each step timed to its end on the
/// device (ONNX Runtime waits for the device at the end of every run).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageSeconds {
    /// Copying the frame to the device and cutting it into tiles (unpack graph).
    pub upload: f64,
    /// The classifier, its logits copied back, and routing.
    pub classify: f64,
    /// Per branch: gathering its tiles (select graph) and running it.
    pub branches: [f64; 3],
    /// Adding the branches' outputs into the frame's accumulator (accumulate graph).
    pub merge: f64,
    /// Rounding the frame to 8 bits (pack graph) and copying it back into the output.
    pub download: f64,
}

/// Buffers for one frame geometry, reused from frame to frame.
struct Work {
    grid: TileGrid,
    /// Planar padded LR frame (3 planes), model value range.
    lr: Vec<f32>,
    /// Padded LR alpha plane (0..1), for layouts with alpha.
    alpha_lr: Vec<f32>,
    alpha_hr: Vec<f32>,
    /// Planar padded HR frame (3 planes) of the bicubic and classmap modes.
    acc: Vec<f32>,
    /// Planar padded HR fixed-point accumulator of the network modes (see accumulate.rs).
    fx: Vec<i32>,
    /// Whether `fx` holds exactly the contributions of every tile's cached HR output (after
    /// a full-cache frame), so the next full-cache frame only updates the tiles it recomputes.
    fx_complete: bool,
    /// The last packed output frame of a full-cache frame, and the geometry it has
    /// (width, height, stride, layout): the next one repacks only the recomputed tiles.
    last_out: Vec<u8>,
    last_out_key: Option<(usize, usize, usize, PixelLayout)>,
    /// NCHW staging of all tiles for the classifier.
    all_tiles: Vec<f32>,
    /// NCHW staging of a branch run, one per tile worker.
    staging: Vec<Vec<f32>>,
    class_of: Vec<u8>,
    /// Tiles recomputed this frame (the others come from the cache).
    fresh: Vec<bool>,
    /// Of those, the ones recomputed only in part (cache=full), and which part.
    crops: Vec<Option<Crop>>,
    fresh_ids: Vec<u32>,
    fresh_tiles: Vec<f32>,
    logits: Vec<f32>,
    /// One LR and one HR tile (QoS bicubic path).
    tile_lr: Vec<f32>,
    tile_hr: Vec<f32>,
    /// Per class, the tiles whose branch runs this frame.
    groups: [Vec<u32>; 3],
    cubic: Upsampler,
    cache: TileCache,
    correction: Correction,
}

impl Work {
    fn new(grid: TileGrid, scale: usize) -> Work {
        let (pw, ph) = (grid.padded_width, grid.padded_height);
        Work {
            lr: vec![0.0; 3 * pw * ph],
            alpha_lr: Vec::new(),
            alpha_hr: Vec::new(),
            acc: Vec::new(),
            fx: Vec::new(),
            fx_complete: false,
            last_out: Vec::new(),
            last_out_key: None,
            all_tiles: Vec::new(),
            staging: Vec::new(),
            class_of: vec![0; grid.len()],
            fresh: vec![true; grid.len()],
            crops: vec![None; grid.len()],
            fresh_ids: Vec::new(),
            fresh_tiles: Vec::new(),
            logits: Vec::new(),
            tile_lr: Vec::new(),
            tile_hr: Vec::new(),
            groups: Default::default(),
            cubic: Upsampler::new(Kernel::Bicubic, scale),
            cache: TileCache::new(grid.len(), grid.tile, 3 * (grid.tile * scale).pow(2)),
            correction: Correction::new(&grid),
            grid,
        }
    }

    /// Whether tile `i` keeps its cached HR output this frame (cache=full): it is unchanged
    /// and its output came from its branch.
    fn reuses_hr(&self, i: usize) -> bool {
        !self.fresh[i] && self.cache.has_hr(i)
    }

    /// Length of the padded HR planes.
    fn hr_len(&self) -> usize {
        3 * self.grid.padded_width * self.grid.padded_height * self.grid.scale.pow(2)
    }
}

/// The class (0..3) of one tile's logits with the routing `bias` added to branch3's logit and
/// subtracted from branch1's: the argmax, ties to the cheaper branch, NaN to the largest.
pub fn route(logits: &[f32], bias: f32) -> u8 {
    let adj = [logits[0] - bias, logits[1], logits[2] + bias];
    if adj.iter().any(|v| v.is_nan()) {
        2
    } else {
        (1..3usize).fold(0usize, |b, c| if adj[c] > adj[b] { c } else { b }) as u8
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

/// Tints the (bicubic) accumulator by tile class where a tile owns the pixel (its feather weight
/// is at least 1/2 along both axes, so corners of overlaps are owned too): branch1 green,
/// branch2 yellow, branch3 red.
fn tint_classes(work: &mut Work) {
    const COLORS: [[f32; 3]; 3] = [[0.1, 0.9, 0.1], [0.95, 0.85, 0.1], [0.95, 0.1, 0.1]];
    let grid = &work.grid;
    let th = grid.tile * grid.scale;
    let ow = grid.padded_width * grid.scale;
    let plane = ow * grid.padded_height * grid.scale;
    for i in 0..grid.len() {
        let (c0, r0) = grid.cell(i);
        let (x0, y0) = (grid.xs[c0] * grid.scale, grid.ys[r0] * grid.scale);
        let color = COLORS[work.class_of[i] as usize];
        for y in 0..th {
            for x in 0..th {
                if grid.wy[r0][y] >= 0.4999 && grid.wx[c0][x] >= 0.4999 {
                    for (c, &col) in color.iter().enumerate() {
                        let a = &mut work.acc[c * plane + (y0 + y) * ow + x0 + x];
                        *a = 0.6 * *a + 0.4 * col;
                    }
                }
            }
        }
    }
}

/// The engine: a loaded model plus the buffers of the current frame geometry.
pub struct Engine {
    model: Model,
    work: Option<Work>,
    geometry: (usize, usize, usize, usize),
    /// The frame graphs of the last geometry (see frame_graphs.rs).
    graphs: Option<frame_graphs::FrameGraphs>,
    /// Time per tile of each branch, to share a frame's tiles out evenly between workers.
    costs: TileCosts,
}

impl Engine {
    pub fn new(model: Model) -> Engine {
        Engine {
            costs: TileCosts::new(model.branch_macs(model.manifest.tile_size as usize)),
            model,
            work: None,
            geometry: (0, 0, 0, 0),
            graphs: None,
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
        let most = size_bands()
            .into_iter()
            .find(|(w, _)| w.contains(&width))
            .map(|(_, h)| h);
        match most {
            Some(most) if height <= most => Ok(()),
            _ => Err(Error::Input(format!(
                "frame size {width}x{height} is too large: at most {MAX_SIDE} per side and {MAX_PIXELS} pixels \
                 (3840x2160){}; scale the input down first (in a pipeline: videoscale)",
                most.map(|h| format!(", and at a width of {width} at most {h} lines"))
                    .unwrap_or_default()
            ))),
        }
    }

    /// Checks the output of a `width`×`height` frame at `scale` against the engine's limit: at
    /// most a 4K UHD frame's ×4 (a ×8 model takes frames of a quarter of that area).
    pub fn check_output(width: usize, height: usize, scale: usize) -> Result<(), Error> {
        let most = MAX_PIXELS * 16;
        let pixels = width.saturating_mul(height).saturating_mul(scale * scale);
        if pixels > most {
            return Err(Error::Input(format!(
                "frame size {width}x{height} is too large for a x{scale} model: its output would have {pixels} pixels, \
                 at most {most} (3840x2160 x4); scale the input down first (in a pipeline: videoscale)"
            )));
        }
        Ok(())
    }

    /// [`Self::check_size`], then [`Self::check_output`]: a frame this engine (of scale
    /// `scale`) takes.
    pub fn check_frame_size(width: usize, height: usize, scale: usize) -> Result<(), Error> {
        Self::check_size(width, height).and_then(|()| Self::check_output(width, height, scale))
    }

    fn prepare(&mut self, w: usize, h: usize, cfg: &FrameConfig) -> Result<(), Error> {
        let key = (w, h, cfg.tile, cfg.overlap);
        if self.work.is_none() || self.geometry != key {
            Self::check_frame_size(w, h, self.scale())?;
            self.model.check_tile(cfg.tile)?;
            let grid = TileGrid::new(w, h, cfg.tile, cfg.overlap, self.scale()).map_err(Error::Settings)?;
            self.work = Some(Work::new(grid, self.scale()));
            self.geometry = key;
        }
        Ok(())
    }

    /// Checks both buffers and that `output` is `scale` times `input`.
    fn check_frames(&self, input: &Image, output: &ImageMut) -> Result<(), Error> {
        input.check().map_err(Error::Input)?;
        output.check().map_err(Error::Input)?;
        let s = self.scale();
        if output.width != input.width * s || output.height != input.height * s {
            return Err(Error::Input(format!(
                "output {}x{} is not {s} times the input {}x{}",
                output.width, output.height, input.width, input.height
            )));
        }
        Ok(())
    }

    /// Upscales `input` into `output` (which must be `scale` times its size, any layout).
    /// After an error the next frame starts from scratch (no cache, re-tiled): a frame that
    /// failed part-way may have left the accumulator, the cache and the kept output apart.
    pub fn process(&mut self, cfg: &FrameConfig, input: &Image, output: &mut ImageMut) -> Result<FrameStats, Error> {
        let cfg = &cfg.for_model(&self.model.manifest);
        let result = self.process_frame(cfg, input, output);
        if result.is_err() {
            self.reset();
        }
        result
    }

    /// Checks what the element and the CLI check before a frame reaches the engine: the tile
    /// side (its padded frame and accumulators grow with it) and the cache threshold (NaN would
    /// never see a change, a negative one would act as 0 under another cache key).
    fn check_config(cfg: &FrameConfig) -> Result<(), Error> {
        if !tiling::TILE_SIDES.contains(&cfg.tile) {
            let (lo, hi) = (tiling::TILE_SIDES.start(), tiling::TILE_SIDES.end());
            return Err(Error::Settings(format!(
                "tile size {} is out of range {lo}..{hi}",
                cfg.tile
            )));
        }
        if !(cfg.cache_threshold.is_finite() && cfg.cache_threshold >= 0.0) {
            return Err(Error::Settings(format!(
                "cache threshold {} must be a finite number of 8-bit levels, at least 0",
                cfg.cache_threshold
            )));
        }
        Ok(())
    }

    fn process_frame(&mut self, cfg: &FrameConfig, input: &Image, output: &mut ImageMut) -> Result<FrameStats, Error> {
        let started = Instant::now();
        Self::check_config(cfg)?;
        self.check_frames(input, output)?;
        let s = self.scale();
        self.prepare(input.width, input.height, cfg)?;
        let [lo, hi] = self.model.manifest.value_range;
        let costs = self.model.branch_macs(cfg.tile);
        let classifier_macs = self.model.classifier_macs(cfg.tile);
        let work = self.work.as_mut().expect("prepared");
        let (pw, ph) = (work.grid.padded_width, work.grid.padded_height);
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
            // (the tile side, and 2 more for the bicubic alpha's reach: an output pixel with
            // alpha above 0 may lie 2 LR pixels from the nearest visible one)
            work.grid.tile + 2,
        );

        let n = work.grid.len();
        let mut stats = FrameStats {
            width: input.width,
            height: input.height,
            original_macs: costs[2] * n as u64,
            ..Default::default()
        };
        let networks = !matches!(cfg.mode, Mode::Bicubic | Mode::ClassMap);
        // the CPU passes over whole frames are shared out between the cores
        let bands = self.model.config.cpu_workers();
        if !networks {
            let (hw, hh) = (pw * s, ph * s);
            work.acc.resize(work.hr_len(), 0.0);
            for c in 0..3 {
                let plane = &work.lr[c * pw * ph..(c + 1) * pw * ph];
                work.cubic
                    .upscale_bands(plane, pw, ph, &mut work.acc[c * hw * hh..(c + 1) * hw * hh], bands);
            }
        }
        let mut corrected = false;
        if cfg.mode != Mode::Bicubic {
            let threshold = cfg.cache_threshold * (hi - lo) / 255.0;
            // Parts of tiles are recomputed only when the model is local enough, and not in the
            // exact mode (threshold 0: a whole-tile run is what cache=off gives).
            // (at the tile size the load-time probe ran every crop size of)
            let crops = networks
                && self.model.crops
                && cfg.tile == self.model.manifest.tile_size as usize
                && cfg.cache == CacheMode::Full
                && threshold > 0.0;
            if networks && cfg.cache == CacheMode::Full && work.cache.hr.is_empty() {
                work.cache.check_hr_memory(crate::available_memory())?;
            }
            let classifying = Instant::now();
            Self::find_fresh(work, cfg, threshold, crops);
            self.classify(cfg, &mut stats, classifier_macs)?;
            stats.classify_seconds = classifying.elapsed().as_secs_f64();
            let work = self.work.as_mut().expect("prepared");
            if cfg.mode == Mode::ClassMap {
                tint_classes(work);
            } else {
                let full = cfg.cache == CacheMode::Full;
                // After a full-cache frame the accumulator holds every tile's cached output:
                // only the recomputed tiles are taken out and put back in.
                let incremental = full && work.fx_complete;
                if !incremental {
                    let len = work.hr_len();
                    work.fx.clear();
                    work.fx.resize(len, 0);
                }
                let m = TileFx {
                    lo,
                    k: FX_ONE / (hi - lo),
                    phases: self.model.phases,
                };
                let mut branch = [true; 3];
                if cfg.class1_bicubic {
                    branch[0] = false;
                    Self::bicubic_tiles(work, 0, m, full, incremental);
                }
                let t = work.grid.tile;
                for (class, &cost) in costs.iter().enumerate() {
                    if branch[class] {
                        for &i in &work.groups[class] {
                            stats.macs += work.crops[i as usize].map_or(cost, |c| c.cost(cost, t));
                        }
                    }
                }
                stats.partial_tiles = work.crops.iter().filter(|c| c.is_some()).count();
                // the tiles made this frame (by a branch or bicubically): in full mode the
                // others keep their cached output (a tile made now may have one after the run)
                let mut made = vec![false; n];
                for &i in work.groups.iter().flatten() {
                    made[i as usize] = true;
                }
                stats.runs +=
                    workers::run_branches(&mut self.model, work, branch, &mut self.costs, cfg, m, incremental)?;
                if full {
                    stats.full_cache_hits = made.iter().filter(|&&made| !made).count();
                    if !incremental {
                        for i in (0..n).filter(|&i| !made[i]) {
                            merge_tile(&work.grid, &mut work.fx, i, work.cache.hr_of(i), m);
                        }
                    }
                }
                work.fx_complete = full;
                // Reused outputs follow their pixels' small changes (see correction.rs).
                if full && threshold > 0.0 && cfg.cache_correction {
                    corrected = work.correction.difference(
                        &work.grid,
                        &work.all_tiles,
                        &work.cache,
                        |i| made[i] && work.crops[i].is_none(),
                        self.model.correction_gains,
                        255.0 / (hi - lo),
                        output.layout,
                    );
                }
            }
            for (c, t) in stats.tiles.iter_mut().enumerate() {
                *t = work.class_of.iter().filter(|&&k| k as usize == c).count();
            }
        }
        let work = self.work.as_mut().expect("prepared");
        if with_alpha {
            work.cubic
                .upscale_bands(&work.alpha_lr, pw, ph, &mut work.alpha_hr, bands);
        }
        if networks {
            Self::pack_fx(work, cfg, output, with_alpha, bands, corrected);
        } else {
            let alpha = with_alpha.then_some(&work.alpha_hr[..]);
            pixels::pack_planar_bands(&work.acc, pw * s, ph * s, lo, hi, alpha, output, bands);
            work.fx_complete = false;
            work.last_out_key = None;
        }
        stats.seconds = started.elapsed().as_secs_f64();
        Ok(stats)
    }

    /// Packs the fixed-point frame into `output`, the full frame in `bands` row bands in
    /// parallel. After a full-cache frame whose previous output was kept, only the recomputed
    /// tiles (this frame's `groups`) are repacked over a copy of it. With `corrected`, the
    /// frame's correction (correction.rs) is added to the packed output (the kept one stays
    /// without it).
    fn pack_fx(
        work: &mut Work,
        cfg: &FrameConfig,
        output: &mut ImageMut,
        with_alpha: bool,
        bands: usize,
        corrected: bool,
    ) {
        let (hw, hh) = (
            work.grid.padded_width * work.grid.scale,
            work.grid.padded_height * work.grid.scale,
        );
        let key = Some((output.width, output.height, output.stride, output.layout));
        let keep = cfg.cache == CacheMode::Full && !with_alpha;
        let alpha = with_alpha.then_some(&work.alpha_hr[..]);
        let need = output.stride * (output.height - 1) + output.width * output.layout.bytes_per_pixel();
        let merged: usize = work.groups.iter().map(|g| g.len()).sum();
        if keep && work.last_out_key == key && merged * 2 <= work.grid.len() {
            let mut last = ImageMut {
                data: &mut work.last_out[..],
                width: output.width,
                height: output.height,
                stride: output.stride,
                layout: output.layout,
            };
            let whole = Rect::whole(work.grid.tile * work.grid.scale);
            for g in &work.groups {
                for &i in g {
                    // a tile recomputed in part changed only there
                    let part = work.crops[i as usize].map_or(whole, |c| c.keep.scaled(work.grid.scale));
                    let region = tile_region(&work.grid, i as usize, &part);
                    accumulate::pack(&work.fx, hw, hh, region, None, &mut last);
                }
            }
            if corrected {
                work.correction.apply(Some(&work.last_out[..need]), output, bands);
            } else {
                output.data[..need].copy_from_slice(&work.last_out[..need]);
            }
            return;
        }
        accumulate::pack_all(&work.fx, hw, hh, alpha, output, bands);
        if keep {
            work.last_out.clear();
            work.last_out.extend_from_slice(&output.data[..need]);
            work.last_out_key = key;
        } else {
            work.last_out_key = None;
        }
        if corrected {
            work.correction.apply(None, output, bands);
        }
    }

    /// Gathers every tile and decides which must be recomputed (all, without the cache), and
    /// with `crops` which of those only in part: a tile with a cached output whose changed
    /// blocks are few (see crop.rs).
    fn find_fresh(work: &mut Work, cfg: &FrameConfig, threshold: f32, crops: bool) {
        let n = work.grid.len();
        let t = work.grid.tile;
        let item = 3 * t * t;
        work.all_tiles.resize(n * item, 0.0);
        for i in 0..n {
            gather_tile(&work.grid, &work.lr, i, &mut work.all_tiles[i * item..(i + 1) * item]);
        }
        work.crops.fill(None);
        if cfg.cache == CacheMode::Off {
            work.fresh.fill(true);
            return;
        }
        let key = (
            cfg.mode.key(),
            // (the bias routes nothing in the other modes: changing it there keeps the cache)
            if cfg.mode.routes() { cfg.bias.to_bits() } else { 0 },
            cfg.cache_correction,
            threshold == 0.0,
        );
        if work.cache.begin_frame(key) {
            work.fx_complete = false;
        }
        for i in 0..n {
            if work.cache.refresh_due(i, cfg.cache_refresh) {
                work.fresh[i] = true;
                continue;
            }
            let changed = work
                .cache
                .changed_blocks(i, &work.all_tiles[i * item..(i + 1) * item], threshold, crops);
            work.fresh[i] = changed.is_some();
            if crops && work.cache.has_hr(i) {
                work.crops[i] = changed.and_then(|c| Crop::plan(c, t));
            }
        }
    }

    /// Fills `class_of` and the per-branch `groups` of tiles to run for the frame.
    fn classify(&mut self, cfg: &FrameConfig, stats: &mut FrameStats, classifier_macs: u64) -> Result<(), Error> {
        let work = self.work.as_mut().expect("prepared");
        let n = work.grid.len();
        let t = work.grid.tile;
        let item = 3 * t * t;
        let fixed = match cfg.mode {
            Mode::Original => Some(2),
            Mode::Branch(b) => Some(b.min(2)),
            _ => None,
        };
        let cached = cfg.cache != CacheMode::Off;
        let full = cfg.cache == CacheMode::Full;
        let bias = cfg.bias + cfg.qos_bias;
        if full && fixed.is_none() && cfg.mode != Mode::ClassMap {
            for i in 0..n {
                if work.fresh[i] {
                    continue;
                }
                // An output made by a cheaper branch than the tile's logits pick now was made
                // under a QoS step since recovered from (a QoS step is not in the cache key):
                // the tile is made again, so that cache=full follows cache=off once on time.
                if work.reuses_hr(i) && route(work.cache.logits(i), bias) > work.cache.classes[i] {
                    work.cache.drop_hr(i);
                }
                // An unchanged tile without a reusable output (cached by cache=class, or just
                // dropped) is made from this frame's pixels, which become its reference: it is
                // classified on them too, so that its class never comes from pixels further
                // than the threshold from that reference (else a slow drift could go on under
                // the threshold from there). A QoS bicubic stand-in is not made by a branch:
                // it keeps its reference and logits (see below).
                let stand_in = cfg.class1_bicubic && route(work.cache.logits(i), bias) == 0;
                if !work.reuses_hr(i) && !stand_in {
                    work.fresh[i] = true;
                }
            }
        }
        work.fresh_ids.clear();
        work.fresh_ids.extend((0..n as u32).filter(|&i| work.fresh[i as usize]));
        for i in 0..n {
            if !work.fresh[i] {
                // A tile that keeps its output keeps the class that made it; the others are
                // routed again from their logits (the bias may have moved by a QoS step).
                work.class_of[i] = match fixed {
                    _ if full && work.reuses_hr(i) => work.cache.classes[i],
                    Some(b) => b as u8,
                    None => route(work.cache.logits(i), bias),
                };
                stats.class_cache_hits += 1;
            }
        }
        if let Some(b) = fixed {
            for &i in &work.fresh_ids {
                work.class_of[i as usize] = b as u8;
            }
        } else if !work.fresh_ids.is_empty() {
            let m = work.fresh_ids.len();
            let batch: &[f32] = if m == n {
                &work.all_tiles
            } else {
                work.fresh_tiles.resize(m * item, 0.0);
                for (k, &i) in work.fresh_ids.iter().enumerate() {
                    let i = i as usize;
                    work.fresh_tiles[k * item..(k + 1) * item]
                        .copy_from_slice(&work.all_tiles[i * item..(i + 1) * item]);
                }
                &work.fresh_tiles
            };
            stats.runs += self.model.run_classifier(batch, m, t, &mut work.logits)?;
            stats.macs += classifier_macs * m as u64;
            for (k, l) in work.logits.chunks_exact(3).enumerate() {
                work.class_of[work.fresh_ids[k] as usize] = route(l, bias);
            }
        }
        if cached {
            let routed = fixed.is_none();
            for (k, &i) in work.fresh_ids.iter().enumerate() {
                let i = i as usize;
                let logits = routed.then(|| [0, 1, 2].map(|c| work.logits[3 * k + c]));
                let tile = &work.all_tiles[i * item..(i + 1) * item];
                // A part is recomputed only by the branch that made the rest of the tile's
                // output (and not when QoS sends that class to bicubic).
                let class = work.class_of[i];
                if work.crops[i].is_some() && (class != work.cache.classes[i] || (cfg.class1_bicubic && class == 0)) {
                    work.crops[i] = None;
                }
                match work.crops[i] {
                    // With the correction, the whole replaced part takes the new pixels as its
                    // reference (its output came from them: nothing is added there); without,
                    // only the changed blocks do, so that a block half in the margin keeps
                    // comparing against the pixels the rest of its output came from.
                    Some(crop) => {
                        let region = if cfg.cache_correction { crop.keep } else { crop.changed };
                        work.cache.store_region(i, tile, &region, logits)
                    }
                    None => work.cache.store(i, tile, class, logits),
                }
            }
        }
        for g in &mut work.groups {
            g.clear();
        }
        for i in 0..n {
            // In full mode an unchanged tile with a cached output needs no branch run; the
            // others' outputs are made (and kept) by their class now, which the cache records
            // for when the output is reused.
            if !(full && work.reuses_hr(i)) {
                if full {
                    work.cache.classes[i] = work.class_of[i];
                    // An unchanged tile without a reusable output in a mode of one branch
                    // (those that route were classified again above) is made again from this
                    // frame's pixels: its reference follows them when its output will be
                    // reusable. A stand-in's (and, in the class map, where nothing is made)
                    // stays, so that a slow change adds up against the pixels its logits came
                    // from and the tile is classified again once it is over the threshold.
                    let stand_in = cfg.class1_bicubic && work.class_of[i] == 0;
                    if !work.fresh[i] && !stand_in && cfg.mode != Mode::ClassMap {
                        let whole = Rect::whole(t);
                        work.cache
                            .store_region(i, &work.all_tiles[i * item..(i + 1) * item], &whole, None);
                    }
                }
                work.groups[work.class_of[i] as usize].push(i as u32);
            }
        }
        Ok(())
    }

    /// Upscales a group's tiles bicubically (QoS degradation of the cheapest class). In full
    /// mode their outputs are kept (to be taken out again) but not reused.
    fn bicubic_tiles(work: &mut Work, class: usize, m: TileFx, full: bool, incremental: bool) {
        let t = work.grid.tile;
        let th = t * work.grid.scale;
        work.tile_hr.resize(3 * th * th, 0.0);
        work.tile_lr.resize(3 * t * t, 0.0);
        // laid out as the branches' outputs are (the cache keeps them to take out again)
        let mut phased = vec![0f32; if m.phases { 3 * th * th } else { 0 }];
        for &i in &work.groups[class] {
            let i = i as usize;
            work.tile_lr
                .copy_from_slice(&work.all_tiles[i * 3 * t * t..(i + 1) * 3 * t * t]);
            for c in 0..3 {
                let src = &work.tile_lr[c * t * t..(c + 1) * t * t];
                work.cubic
                    .upscale(src, t, t, &mut work.tile_hr[c * th * th..(c + 1) * th * th]);
            }
            let keep = full.then_some(false);
            let out = if m.phases {
                accumulate::to_phases(&work.tile_hr, (t, work.grid.scale), &mut phased);
                &phased
            } else {
                &work.tile_hr
            };
            workers::merge_new(&work.grid, &mut work.fx, &mut work.cache, i, out, m, incremental, keep);
        }
    }

    /// Class (0..3) of each tile of the last frame, row-major, and the grid it refers to.
    pub fn last_classes(&self) -> Option<(&TileGrid, &[u8])> {
        self.work.as_ref().map(|w| (&w.grid, &w.class_of[..]))
    }
}
