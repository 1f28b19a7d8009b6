// A model set loaded into ONNX Runtime sessions: the classifier and three branches, checked
// against the manifest (tensor names, and shapes by a dry run on one tile) before first use.

use std::borrow::Cow;

use ort::session::Session;
use ort::value::TensorRef;

use crate::manifest::{Manifest, ModelSet};
use crate::onnx::phase_output::phase_output;
use crate::runtime::{self, ActiveDevice, SessionConfig};
use crate::Error;

/// Four live sessions and the manifest that describes them.
pub struct Model {
    pub manifest: Manifest,
    pub classifier: Session,
    pub branches: [Session; 3],
    /// On the CPU, the branch sessions of the other tile workers (one thread each; a frame's
    /// branch runs are shared out between `branches` and these). Empty with CUDA.
    pub workers: Vec<[Session; 3]>,
    /// The branch sessions return phase planes [N, 3·s², t, t] instead of HR tiles (all three
    /// branches could be rewritten so and loaded, see onnx/phase_output.rs); the merge
    /// interleaves them.
    pub phases: bool,
    pub device: ActiveDevice,
    /// Why CUDA was not used, when `auto` fell back to CPU.
    pub fallback: Option<String>,
    /// The session options the model was loaded with (for the frame graphs).
    pub config: SessionConfig,
    pub origin: String,
}

fn check_names(session: &Session, input: &str, output: &str, what: &str) -> Result<(), Error> {
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
    Ok(())
}

/// Runs `session` on `n` NCHW tiles of side `t` and hands the named f32 output (shape, values)
/// to `f`, borrowing ONNX Runtime's buffer (no copy). Run failures are runtime errors.
pub(crate) fn run_with<R>(
    session: &mut Session,
    output: &str,
    data: &[f32],
    (n, t): (usize, usize),
    what: &str,
    f: impl FnOnce(&[i64], &[f32]) -> Result<R, Error>,
) -> Result<R, Error> {
    let tensor =
        TensorRef::from_array_view(([n, 3, t, t], data)).map_err(|e| Error::Runtime(format!("{what} input: {e}")))?;
    let outputs = session
        .run(ort::inputs![tensor])
        .map_err(|e| Error::Runtime(format!("{what} failed on {n} tiles of {t}x{t}: {e}")))?;
    let value = outputs
        .get(output)
        .ok_or_else(|| Error::Model(format!("{what} has no output '{output}'")))?;
    let (shape, values) = value
        .try_extract_tensor::<f32>()
        .map_err(|e| Error::Model(format!("{what} output '{output}' is not an f32 tensor: {e}")))?;
    f(shape, values)
}

/// The output shape of a dry run on one zero tile; a graph that cannot run is a model error.
fn dry_run_shape(session: &mut Session, output: &str, zeros: &[f32], t: usize, what: &str) -> Result<Vec<i64>, Error> {
    run_with(session, output, zeros, (1, t), what, |shape, _| Ok(shape.to_vec())).map_err(|e| match e {
        Error::Runtime(m) => Error::Model(m),
        e => e,
    })
}

/// The output shape of a branch run on `n` tiles of side `t`: the HR tiles, or with `phases`
/// their phase planes (onnx/phase_output.rs).
pub(crate) fn branch_output_shape(n: usize, t: usize, scale: usize, phases: bool) -> [i64; 4] {
    let (n, t, s) = (n as i64, t as i64, scale as i64);
    match phases {
        true => [n, 3 * s * s, t, t],
        false => [n, 3, t * s, t * s],
    }
}

/// Three branch sessions, cheapest first, and the graphs they were made from.
type LoadedBranches<'g> = ([Session; 3], Vec<Cow<'g, [u8]>>);

/// The three branch sessions of `graphs` (the set's branches, possibly rewritten to give phase
/// planes: `phases`) after the load-time rewrites ([`runtime::rewritten`]), checked against the
/// manifest: tensor names, and the output shape of a dry run on one tile. Returns them with
/// the rewritten graphs, for the other workers' sessions.
fn load_branches<'g>(
    set: &ModelSet,
    cfg: &SessionConfig,
    graphs: impl Iterator<Item = &'g [u8]>,
    phases: bool,
) -> Result<LoadedBranches<'g>, Error> {
    let m = &set.manifest;
    let what = |file: &str| format!("{} ({})", file, set.origin);
    let graphs: Vec<Cow<[u8]>> = graphs.map(|g| runtime::rewritten(g, cfg.device)).collect();
    let mut branches = Vec::with_capacity(3);
    for (info, bytes) in m.branches.iter().zip(&graphs) {
        branches.push(runtime::session_as_is(bytes, &what(&info.file), cfg, 1)?.0);
    }
    let mut branches: [Session; 3] = branches.try_into().unwrap_or_else(|_| unreachable!());
    let (t, scale) = (m.tile_size as usize, m.scale as usize);
    let zeros = vec![m.value_range[0]; 3 * t * t];
    let want = branch_output_shape(1, t, scale, phases);
    for (session, info) in branches.iter_mut().zip(&m.branches) {
        check_names(session, &info.input, &info.output, &what(&info.file))?;
        let shape = dry_run_shape(session, &info.output, &zeros, t, &what(&info.file))?;
        if shape != want {
            return Err(Error::Model(format!(
                "{} returns shape {shape:?} for one {t}x{t} tile but the manifest says scale {} (expected {want:?})",
                what(&info.file),
                m.scale,
            )));
        }
    }
    Ok((branches, graphs))
}

impl Model {
    /// Creates the four sessions and checks them against the manifest.
    pub fn load(set: &ModelSet, cfg: &SessionConfig) -> Result<Model, Error> {
        let m = &set.manifest;
        m.validate()?;
        let what = |file: &str| format!("{} ({})", file, set.origin);
        // On the CPU the classifier runs alone (before the branches), on all the workers' cores.
        let (mut classifier, device, fallback) = runtime::session_as_is(
            &runtime::rewritten(&set.classifier, cfg.device),
            &what(&m.classifier.file),
            cfg,
            cfg.cpu_workers(),
        )?;
        // Once auto has settled on a device, the branches use the same one.
        let cfg = SessionConfig {
            device: match device {
                ActiveDevice::Cpu => runtime::DeviceRequest::Cpu,
                ActiveDevice::Cuda(_) => runtime::DeviceRequest::Cuda,
            },
            ..*cfg
        };
        // Names, then shapes by a dry run on one tile of the manifest's size.
        check_names(
            &classifier,
            &m.classifier.input,
            &m.classifier.output,
            &what(&m.classifier.file),
        )?;
        let t = m.tile_size as usize;
        let zeros = vec![m.value_range[0]; 3 * t * t];
        let shape = dry_run_shape(
            &mut classifier,
            &m.classifier.output,
            &zeros,
            t,
            &what(&m.classifier.file),
        )?;
        if shape != [1, 3] {
            return Err(Error::Model(format!(
                "{} returns shape {shape:?} for one tile; a classifier must return [batch, 3] logits",
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
        let ((branches, graphs), phases) = match phase_planes {
            Some(loaded) => (loaded, true),
            None => (
                load_branches(set, &cfg, set.branches.iter().map(|b| &b[..]), false)?,
                false,
            ),
        };
        let mut workers = Vec::new();
        if device == ActiveDevice::Cpu && cfg.cpu_workers() > 1 {
            for _ in 1..cfg.cpu_workers() {
                let mut sessions = Vec::with_capacity(3);
                for (info, bytes) in m.branches.iter().zip(&graphs) {
                    sessions.push(runtime::cpu_session_as_is(bytes, &what(&info.file), 1)?);
                }
                workers.push(sessions.try_into().unwrap_or_else(|_| unreachable!()));
            }
        }
        Ok(Model {
            manifest: m.clone(),
            classifier,
            branches,
            workers,
            phases,
            device,
            fallback,
            config: cfg,
            origin: set.origin.clone(),
        })
    }

    /// Runs the classifier on `n` NCHW tiles of side `t`; puts n×3 logits in `logits` (a buffer
    /// reused from frame to frame).
    pub fn run_classifier(&mut self, tiles: &[f32], n: usize, t: usize, logits: &mut Vec<f32>) -> Result<(), Error> {
        let out = &self.manifest.classifier.output;
        let tiles = &tiles[..n * 3 * t * t];
        run_with(
            &mut self.classifier,
            out,
            tiles,
            (n, t),
            "classifier",
            |shape, values| {
                if shape != [n as i64, 3] {
                    return Err(Error::Model(format!(
                        "classifier returned shape {shape:?} for {n} tiles; expected [{n}, 3]"
                    )));
                }
                logits.clear();
                logits.extend_from_slice(values);
                Ok(())
            },
        )
    }

    /// True MACs per tile of side `tile` for each branch (the manifest's figures scaled by area).
    pub fn branch_macs(&self, tile: usize) -> [u64; 3] {
        let area = |macs: u64| macs * (tile * tile) as u64 / (self.manifest.tile_size as u64).pow(2);
        [0, 1, 2].map(|i| area(self.manifest.branches[i].macs_per_tile))
    }

    pub fn classifier_macs(&self, tile: usize) -> u64 {
        self.manifest.classifier.macs_per_tile * (tile * tile) as u64 / (self.manifest.tile_size as u64).pow(2)
    }
}
