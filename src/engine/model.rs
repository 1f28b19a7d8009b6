// A model set loaded into ONNX Runtime sessions: the classifier and three branches, checked
// against the manifest (tensor names, declared input shape, and output shapes by a dry run on
// two tiles) before first use.

use std::borrow::Cow;

use ort::session::Session;
use ort::value::TensorRef;

use super::{correction, crop, share};
use crate::manifest::{Manifest, ModelSet};
use crate::onnx::half::half_precision;
use crate::onnx::phase_output::phase_output;
use crate::runtime::{self, ActiveDevice, Precision, SessionConfig};
use crate::Error;

/// Four live sessions and the manifest that describes them.
pub struct Model {
    pub manifest: Manifest,
    pub classifier: Session,
    /// On the CPU, one-thread classifier sessions of the other tile workers: a frame's
    /// classifier batch is cut between `classifier` and these. Empty with CUDA.
    pub classifier_workers: Vec<Session>,
    pub branches: [Session; 3],
    /// On the CPU, the branch sessions of the other tile workers (one thread each; a frame's
    /// branch runs are shared out between `branches` and these). Empty with CUDA.
    pub workers: Vec<[Session; 3]>,
    /// The branch sessions return phase planes [N, 3·s², t, t] instead of HR tiles (all three
    /// branches could be rewritten so and loaded, see onnx/phase_output.rs); the merge
    /// interleaves them.
    pub phases: bool,
    /// The tile size when a graph's input takes no other (its spatial axes are fixed).
    pub fixed_tile: Option<usize>,
    /// Whether a branch may run on part of a tile (cache=full then recomputes only the changed
    /// part of a tile): on the CPU, when every branch's output on a probe crop agreed with its
    /// whole-tile run (`crop_agreement` at least 45 dB).
    pub crops: bool,
    /// The lowest PSNR (dB) of a branch's output on the load-time probe crop against its
    /// whole-tile run; `None` when not measured (not on the CPU, a fixed tile size) or when a
    /// branch could not run on a crop size.
    pub crop_agreement: Option<f64>,
    /// Per branch, how much more than a bicubic upscale its output moves with a small change
    /// of its input (measured at load on a probe tile, see correction::response_gain): the
    /// correction of reused outputs scales their pixels' change by it.
    pub correction_gains: [f32; 3],
    pub device: ActiveDevice,
    /// Why CUDA was not used, when `auto` fell back to CPU.
    pub fallback: Option<String>,
    /// The session options the model was loaded with (for the frame graphs).
    pub config: SessionConfig,
    pub origin: String,
}

/// Checks the graph's tensor names against the manifest, and that its declared input shape
/// takes what the engine feeds: [batch, 3, t, t] with any batch (a frame's tiles go in one
/// call) and, unless fixed at the manifest's tile size, any tile size.
/// Returns whether its tile size is fixed.
fn check_names(session: &Session, input: &str, output: &str, what: &str, tile: u32) -> Result<bool, Error> {
    let mut fixed_tile = false;
    // (an input declared without a shape has none to check: the dry run tells)
    let declared = match session.inputs().first().map(|i| i.dtype()) {
        Some(ort::value::ValueType::Tensor { shape, .. }) if !shape.is_empty() => Some(shape),
        _ => None,
    };
    if let Some(shape) = declared {
        let fixed = |d: i64| d > 0;
        let dims: Vec<String> = shape
            .iter()
            .map(|&d| if fixed(d) { d.to_string() } else { "?".into() })
            .collect();
        let how = format!(
            "re-export it with dynamic axes (e.g. torch.onnx.export(..., dynamic_axes=\
             {{'{input}': {{0: 'n', 2: 'h', 3: 'w'}}}}))"
        );
        if shape.len() != 4 || (fixed(shape[1]) && shape[1] != 3) {
            return Err(Error::Model(format!(
                "{what} takes input shape [{}]; the engine feeds NCHW tiles [batch, 3, height, width]",
                dims.join(", ")
            )));
        }
        if fixed(shape[0]) {
            return Err(Error::Model(format!(
                "{what} takes a fixed batch of {} tiles, but a frame's tiles go in one call: {how}",
                shape[0]
            )));
        }
        let t = i64::from(tile);
        if (fixed(shape[2]) && shape[2] != t) || (fixed(shape[3]) && shape[3] != t) {
            return Err(Error::Model(format!(
                "{what} takes {}x{} tiles but the manifest's tile_size is {tile}",
                dims[3], dims[2]
            )));
        }
        fixed_tile = fixed(shape[2]) || fixed(shape[3]);
    }
    let inputs: Vec<&str> = session.inputs().iter().map(|o| o.name()).collect();
    let outputs: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
    if inputs != [input] {
        return Err(Error::Model(format!(
            "{what} has inputs {inputs:?} but the manifest names one input '{input}'"
        )));
    }
    if !outputs.contains(&output) {
        return Err(Error::Model(format!(
            "{what} has outputs {outputs:?} but the manifest names '{output}'"
        )));
    }
    Ok(fixed_tile)
}

/// Runs `session` on `n` NCHW tiles of `h`×`w` and hands the named f32 output (shape, values)
/// to `f`, borrowing ONNX Runtime's buffer (no copy). Run failures are runtime errors.
pub(crate) fn run_with<R>(
    session: &mut Session,
    output: &str,
    data: &[f32],
    (n, h, w): (usize, usize, usize),
    what: &str,
    f: impl FnOnce(&[i64], &[f32]) -> Result<R, Error>,
) -> Result<R, Error> {
    let tensor =
        TensorRef::from_array_view(([n, 3, h, w], data)).map_err(|e| Error::Runtime(format!("{what} input: {e}")))?;
    let outputs = session
        .run(ort::inputs![tensor])
        .map_err(|e| Error::Runtime(format!("{what} failed on {n} tiles of {w}x{h}: {e}")))?;
    let value = outputs
        .get(output)
        .ok_or_else(|| Error::Model(format!("{what} has no output '{output}'")))?;
    let (shape, values) = value
        .try_extract_tensor::<f32>()
        .map_err(|e| Error::Model(format!("{what} output '{output}' is not an f32 tensor: {e}")))?;
    f(shape, values)
}

/// The fewest tiles a share of the classifier's batch holds: smaller shares cost more in
/// calls than they save. (In the element at 192x144, with the branches' runs between
/// classifier runs, the frame's 35 tiles took about as long in one run as in two, and the
/// 12 or so changed tiles of a cache=class frame about 60 % as long in one run as in two.)
pub const CLASSIFIER_SHARE: usize = 32;

/// Tiles in a load-time dry run: more than one, as a frame's tiles go in one call (a graph
/// that only runs one at a time fails at load, not on the first busy frame).
const DRY_RUN_TILES: usize = 2;

/// The output shape of a dry run on [`DRY_RUN_TILES`] tiles of `lo` values; a graph that
/// cannot run is a model error.
fn dry_run_shape(session: &mut Session, output: &str, lo: f32, t: usize, what: &str) -> Result<Vec<i64>, Error> {
    let zeros = vec![lo; DRY_RUN_TILES * 3 * t * t];
    run_with(session, output, &zeros, (DRY_RUN_TILES, t, t), what, |shape, values| {
        // (broken weights, e.g. a NaN bias, would make black tiles or route every tile to
        // branch3 without a word)
        if values.iter().any(|v| !v.is_finite()) {
            return Err(Error::Model(format!(
                "{what} returns NaN or infinite values on a plain tile: its weights are broken; export it again"
            )));
        }
        Ok(shape.to_vec())
    })
    .map_err(|e| match e {
        Error::Runtime(m) => Error::Model(m),
        e => e,
    })
}

/// The output shape of a branch run on `n` tiles of `h`×`w`: the HR tiles, or with `phases`
/// their phase planes (onnx/phase_output.rs).
pub(crate) fn branch_output_shape(n: usize, (h, w): (usize, usize), scale: usize, phases: bool) -> [i64; 4] {
    let (n, h, w, s) = (n as i64, h as i64, w as i64, scale as i64);
    match phases {
        true => [n, 3 * s * s, h, w],
        false => [n, 3, h * s, w * s],
    }
}

/// A load-time probe's run of a branch (output `output`, scale `s`, phase planes with
/// `phases`) on one `h`×`w` input: its output, or `None` when it fails or has another shape.
fn probe_run(
    session: &mut Session,
    output: &str,
    data: &[f32],
    (h, w): (usize, usize),
    s: usize,
    phases: bool,
) -> Option<Vec<f32>> {
    run_with(session, output, data, (1, h, w), "probe", |shape, v| {
        Ok((shape == branch_output_shape(1, (h, w), s, phases)).then(|| v.to_vec()))
    })
    .ok()
    .flatten()
}

/// Least agreement (PSNR, dB) of a branch's output on a probe crop with its whole-tile run for
/// the branch to be run on crops. The embedded branches give about 53 dB; a branch that looks
/// at the whole tile (global pooling, attention) gives far less.
const CROP_AGREEMENT_DB: f64 = 45.0;

/// Largest tile side whose crops are run: a tile of side t has about (t/8)^4 / 4 crop input
/// sizes, each run once at load (857 at 128, 3687 at 256: minutes of loading), and a large
/// tile's crops save less of a frame.
const CROP_MAX_TILE: usize = 64;

/// How close every branch's output on a crop of a probe tile (its middle, with [`crop::HALO`]
/// of context on every side) is to its whole-tile run: the lowest PSNR (dB), if every branch
/// also runs on every input size a crop of the manifest's tile size can have. Only when it is
/// at least [`CROP_AGREEMENT_DB`] does cache=full recompute just the changed part of a tile.
/// `None` for tiles over [`CROP_MAX_TILE`].
fn crop_agreement(branches: &mut [Session; 3], m: &Manifest, phases: bool) -> Option<f64> {
    let (t, s) = (m.tile_size as usize, m.scale as usize);
    if t > CROP_MAX_TILE {
        return None;
    }
    let [lo, hi] = m.value_range;
    let c = t / 2;
    let middle = crop::Rect {
        y0: c.saturating_sub(4),
        y1: c + 4,
        x0: c.saturating_sub(4),
        x1: c + 4,
    };
    let probe = crop::Crop::plan(middle, t).filter(|p| p.input.y0 > 0)?;
    let tile = crop::probe_tile(t, lo, hi);
    let staged = |input: crop::Rect| {
        let mut v = vec![0.0; 3 * input.area()];
        input.stage(&tile, t, &mut v);
        v
    };
    let sizes = crop::Crop::input_sizes(t);
    let mut lowest = f64::INFINITY;
    for (session, info) in branches.iter_mut().zip(&m.branches) {
        let mut run = |data: &[f32], size| probe_run(session, &info.output, data, size, s, phases);
        let size = (probe.input.height(), probe.input.width());
        let (whole, part) = (run(&tile, (t, t))?, run(&staged(probe.input), size)?);
        lowest = lowest.min(crop::agreement(&whole, &part, &probe, t, s, phases, hi - lo));
        for &(h, w) in &sizes {
            let input = crop::Rect {
                y0: 0,
                y1: h,
                x0: 0,
                x1: w,
            };
            run(&staged(input), (h, w))?;
        }
    }
    Some(lowest)
}

/// Per branch, the gain of its output's change over the bicubic upscale of a small change of
/// its input, on the probe tile (see correction::response_gain); 1 for a branch that cannot be
/// run on it.
fn correction_gains(branches: &mut [Session; 3], m: &Manifest, phases: bool) -> [f32; 3] {
    let (t, s) = (m.tile_size as usize, m.scale as usize);
    let [lo, hi] = m.value_range;
    let tile = crop::probe_tile(t, lo, hi);
    let change = correction::probe_change(t, hi - lo);
    let moved: Vec<f32> = tile.iter().zip(&change).map(|(v, d)| v + d).collect();
    let mut gains = [1.0; 3];
    for (gain, (session, info)) in gains.iter_mut().zip(branches.iter_mut().zip(&m.branches)) {
        let mut run = |data: &[f32]| probe_run(session, &info.output, data, (t, t), s, phases);
        if let (Some(before), Some(after)) = (run(&tile), run(&moved)) {
            *gain = correction::response_gain(&before, &after, &change, t, s, phases);
        }
    }
    gains
}

/// Three branch sessions, cheapest first, the graphs they were made from, and whether any
/// takes only tiles of the manifest's size.
type LoadedBranches<'g> = ([Session; 3], Vec<Cow<'g, [u8]>>, bool);

/// The three branch sessions of `graphs` (the set's branches, possibly rewritten to give phase
/// planes: `phases`) after the load-time rewrites ([`runtime::rewritten`], and to float16 with
/// `precision=fp16`), checked against the manifest: tensor names, and the output shape of a
/// dry run on one tile. Returns them with the rewritten graphs, for the other workers' sessions.
fn load_branches<'g>(
    set: &ModelSet,
    cfg: &SessionConfig,
    graphs: impl Iterator<Item = &'g [u8]>,
    phases: bool,
) -> Result<LoadedBranches<'g>, Error> {
    let m = &set.manifest;
    let what = |file: &str| format!("{} ({})", file, set.origin);
    // errors of graphs rewritten to float16 say so (the graph as written may be fine)
    let fp16 = |e: Error| {
        if cfg.precision != Precision::Fp16 {
            return e;
        }
        let note = |m: String| {
            format!("{m} (with precision=fp16, which rewrites the branches to float16: precision=fp32 runs them as written)")
        };
        match e {
            Error::Model(m) => Error::Model(note(m)),
            Error::Runtime(m) => Error::Runtime(note(m)),
            e => e,
        }
    };
    let mut graphs: Vec<Cow<[u8]>> = graphs.map(|g| runtime::rewritten(g, cfg.device)).collect();
    if cfg.precision == Precision::Fp16 {
        for (g, info) in graphs.iter_mut().zip(&m.branches) {
            let half = half_precision(g).map_err(|e| {
                fp16(Error::Model(format!(
                    "{} cannot be rewritten to float16: {e}",
                    what(&info.file)
                )))
            })?;
            *g = Cow::Owned(half);
        }
    }
    let mut branches = Vec::with_capacity(3);
    for (info, bytes) in m.branches.iter().zip(&graphs) {
        branches.push(
            runtime::session_as_is(bytes, &what(&info.file), cfg, 1)
                .map_err(fp16)?
                .0,
        );
    }
    let mut branches: [Session; 3] = branches.try_into().unwrap_or_else(|_| unreachable!());
    let (t, scale) = (m.tile_size as usize, m.scale as usize);
    let want = branch_output_shape(DRY_RUN_TILES, (t, t), scale, phases);
    let mut fixed_tile = false;
    for (session, info) in branches.iter_mut().zip(&m.branches) {
        fixed_tile |= check_names(session, &info.input, &info.output, &what(&info.file), m.tile_size).map_err(fp16)?;
        let shape = dry_run_shape(session, &info.output, m.value_range[0], t, &what(&info.file)).map_err(fp16)?;
        if shape != want {
            return Err(fp16(Error::Model(format!(
                "{} returns shape {shape:?} for {DRY_RUN_TILES} tiles of {t}x{t} but the manifest says scale {} (expected {want:?})",
                what(&info.file),
                m.scale,
            ))));
        }
    }
    Ok((branches, graphs, fixed_tile))
}

impl Model {
    /// Creates the four sessions and checks them against the manifest. With `auto`, a model
    /// that CUDA cannot load (no provider, or a graph's session fails there) is loaded on the
    /// CPU, the reason kept as [`Model::fallback`]; a graph the CPU cannot load either is
    /// reported as such.
    pub fn load(set: &ModelSet, cfg: &SessionConfig) -> Result<Model, Error> {
        match Self::load_on(set, cfg) {
            Err(e) if cfg.device == runtime::DeviceRequest::Auto => {
                let cpu = SessionConfig {
                    device: runtime::DeviceRequest::Cpu,
                    ..*cfg
                };
                let mut model = Self::load_on(set, &cpu)?;
                model.fallback = Some(e.to_string());
                Ok(model)
            }
            loaded => loaded,
        }
    }

    fn load_on(set: &ModelSet, cfg: &SessionConfig) -> Result<Model, Error> {
        let m = &set.manifest;
        m.validate()?;
        let what = |file: &str| format!("{} ({})", file, set.origin);
        // On the CPU the classifier's batch is cut between one-thread sessions, one per tile
        // worker (its small convolutions gain nothing from more intra-op threads).
        let classifier_bytes = runtime::rewritten(&set.classifier, cfg.device);
        let (mut classifier, device) = runtime::session_as_is(&classifier_bytes, &what(&m.classifier.file), cfg, 1)?;
        // With auto, the classifier made it on CUDA (else `load` retries on the CPU): the
        // branches go there too.
        let cfg = SessionConfig {
            device: match device {
                ActiveDevice::Cpu => runtime::DeviceRequest::Cpu,
                ActiveDevice::Cuda(_) => runtime::DeviceRequest::Cuda,
            },
            ..*cfg
        };
        // Names and input shape, then output shapes by a dry run on tiles of the manifest's size.
        let classifier_fixed = check_names(
            &classifier,
            &m.classifier.input,
            &m.classifier.output,
            &what(&m.classifier.file),
            m.tile_size,
        )?;
        let t = m.tile_size as usize;
        let shape = dry_run_shape(
            &mut classifier,
            &m.classifier.output,
            m.value_range[0],
            t,
            &what(&m.classifier.file),
        )?;
        if shape != [DRY_RUN_TILES as i64, 3] {
            return Err(Error::Model(format!(
                "{} returns shape {shape:?} for {DRY_RUN_TILES} tiles; a classifier must return [batch, 3] logits",
                what(&m.classifier.file)
            )));
        }
        let scale = m.scale as usize;
        let phased: Option<Vec<Vec<u8>>> = m
            .branches
            .iter()
            .zip(&set.branches)
            .map(|(info, bytes)| phase_output(bytes, &info.output, scale))
            .collect();
        // The phase-plane graphs when all three load and check out, else the graphs as
        // written (whose errors are the ones worth reporting).
        let phase_planes = phased
            .as_ref()
            .and_then(|p| load_branches(set, &cfg, p.iter().map(|b| &b[..]), true).ok());
        let ((mut branches, graphs, branches_fixed), phases) = match phase_planes {
            Some(loaded) => (loaded, true),
            None => (
                load_branches(set, &cfg, set.branches.iter().map(|b| &b[..]), false)?,
                false,
            ),
        };
        let mut workers = Vec::new();
        let mut classifier_workers = Vec::new();
        if device == ActiveDevice::Cpu && cfg.cpu_workers() > 1 {
            for _ in 1..cfg.cpu_workers() {
                classifier_workers.push(runtime::cpu_session_as_is(
                    &classifier_bytes,
                    &what(&m.classifier.file),
                    1,
                )?);
                let mut sessions = Vec::with_capacity(3);
                for (info, bytes) in m.branches.iter().zip(&graphs) {
                    sessions.push(runtime::cpu_session_as_is(bytes, &what(&info.file), 1)?);
                }
                workers.push(sessions.try_into().unwrap_or_else(|_| unreachable!()));
            }
        }
        let fixed_tile = (classifier_fixed || branches_fixed).then_some(t);
        // (graphs that take any size are run at a tile-size the element takes)
        let sides = crate::engine::tiling::TILE_SIDES;
        if fixed_tile.is_some_and(|t| !sides.contains(&t)) {
            return Err(Error::Model(format!(
                "the model ({}) takes only {t}x{t} tiles (its input shape is fixed), outside the tile sides \
                 {}..{} the engine cuts frames into: re-export it with dynamic height and width",
                set.origin,
                sides.start(),
                sides.end()
            )));
        }
        // Parts of tiles pay on the CPU, where a tile's cost is its pixels; a GPU is better fed
        // whole tiles in big batches than many small calls.
        let crop_agreement = (device == ActiveDevice::Cpu && fixed_tile.is_none())
            .then(|| crop_agreement(&mut branches, m, phases))
            .flatten();
        let crops = crop_agreement.is_some_and(|db| db >= CROP_AGREEMENT_DB);
        let correction_gains = correction_gains(&mut branches, m, phases);
        Ok(Model {
            manifest: m.clone(),
            classifier,
            classifier_workers,
            crops,
            crop_agreement,
            correction_gains,
            branches,
            workers,
            phases,
            fixed_tile,
            device,
            fallback: None,
            config: cfg,
            origin: set.origin.clone(),
        })
    }

    /// Runs the classifier on `n` NCHW tiles of side `t`; puts n×3 logits in `logits` (a buffer
    /// reused from frame to frame). On the CPU with several tile workers the batch is cut into
    /// one share per worker (of at least [`CLASSIFIER_SHARE`] tiles). Returns the runs made.
    pub fn run_classifier(&mut self, tiles: &[f32], n: usize, t: usize, logits: &mut Vec<f32>) -> Result<usize, Error> {
        let item = 3 * t * t;
        let tiles = &tiles[..n * item];
        let what = "classifier";
        let out = &self.manifest.classifier.output;
        // Shares of at least CLASSIFIER_SHARE tiles, one per session, run on the process's
        // pool of threads; the logits come back in tile order.
        let parts = (1 + self.classifier_workers.len()).min(n / CLASSIFIER_SHARE).max(1);
        logits.clear();
        logits.resize(3 * n, 0.0);
        let run = |session: &mut Session, range: std::ops::Range<usize>, logits: &mut [f32]| {
            let m = range.len();
            run_with(
                session,
                out,
                &tiles[range.start * item..range.end * item],
                (m, t, t),
                what,
                |shape, values| {
                    if shape != [m as i64, 3] || values.len() != 3 * m {
                        return Err(Error::Model(format!(
                            "classifier returned shape {shape:?} for {m} tiles; expected [{m}, 3]"
                        )));
                    }
                    logits.copy_from_slice(values);
                    Ok(())
                },
            )
        };
        // each share's logits go to its own part of `logits`
        let mut rest = &mut logits[..];
        let run = &run;
        let jobs: Vec<_> = std::iter::once(&mut self.classifier)
            .chain(self.classifier_workers.iter_mut())
            .take(parts)
            .enumerate()
            .map(|(k, session)| {
                let range = k * n / parts..(k + 1) * n / parts;
                let (part, tail) = std::mem::take(&mut rest).split_at_mut(3 * range.len());
                rest = tail;
                move || run(session, range, part)
            })
            .collect();
        for r in share::run_jobs(jobs, "a classifier worker") {
            r?;
        }
        Ok(parts)
    }

    /// Whether the graphs take tiles of side `tile`.
    pub fn check_tile(&self, tile: usize) -> Result<(), Error> {
        match self.fixed_tile {
            Some(t) if t != tile => Err(Error::Settings(format!(
                "the model ({}) takes only {t}x{t} tiles (its input shape is fixed): set tile-size={t} or 0, \
                 the default (the CLI's --tile {t}, or no --tile), or re-export it with dynamic height and width",
                self.origin
            ))),
            _ => Ok(()),
        }
    }

    /// True MACs per tile of side `tile` for each branch (the manifest's figures scaled by area).
    pub fn branch_macs(&self, tile: usize) -> [u64; 3] {
        [0, 1, 2].map(|i| self.scaled_macs(self.manifest.branches[i].macs_per_tile, tile))
    }

    pub fn classifier_macs(&self, tile: usize) -> u64 {
        self.scaled_macs(self.manifest.classifier.macs_per_tile, tile)
    }

    /// `macs` per tile of the manifest's size, for a tile of side `tile` (by area; in u128, as
    /// the product may not fit a u64 before the division).
    fn scaled_macs(&self, macs: u64, tile: usize) -> u64 {
        let area = u128::from(self.manifest.tile_size).pow(2);
        let scaled = u128::from(macs) * (tile * tile) as u128 / area;
        scaled.min(u128::from(u64::MAX)) as u64
    }
}
