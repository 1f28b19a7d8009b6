// ONNX Runtime: locating and loading libonnxruntime once per process, one Environment that is
// never dropped, and building sessions on the requested device (CPU or CUDA).

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;

use crate::Error;

/// The ONNX Runtime release this build is made for (the `api-31` feature of `ort`).
pub const ORT_VERSION: &str = "1.31.1";
/// Where scripts/setup.sh installs the library when ORT_DYLIB_PATH is not set.
pub const DEFAULT_ORT_DIR: &str = "/usr/local/lib/gst-classsr";

/// The library file name.
pub fn ort_library_name() -> String {
    format!("libonnxruntime.so.{ORT_VERSION}")
}

/// The absolute path the runtime is loaded from: `ORT_DYLIB_PATH` if set, else the default
/// install location. Relative paths are resolved against the working directory (ort itself would
/// resolve them against the executable, which for a plugin is gst-launch).
pub fn ort_library_path() -> PathBuf {
    match std::env::var_os("ORT_DYLIB_PATH") {
        Some(p) if !p.is_empty() => {
            let p = PathBuf::from(p);
            if p.is_absolute() {
                p
            } else {
                std::env::current_dir().map(|d| d.join(&p)).unwrap_or(p)
            }
        }
        _ => PathBuf::from(DEFAULT_ORT_DIR).join(ort_library_name()),
    }
}

static ENVIRONMENT: OnceLock<Result<Environment, String>> = OnceLock::new();

/// The process-wide ONNX Runtime environment, created on first use. A failure to load the
/// library is an error naming the path tried and the fix, and is remembered for the process.
pub fn environment() -> Result<&'static Environment, Error> {
    ENVIRONMENT
        .get_or_init(|| {
            let path = ort_library_path();
            let fix = format!(
                "install it with scripts/setup.sh (onnxruntime=={ORT_VERSION} from PyPI, into {DEFAULT_ORT_DIR}) \
                 or set ORT_DYLIB_PATH to the absolute path of {}",
                ort_library_name()
            );
            if !path.is_file() {
                return Err(format!("ONNX Runtime library not found at '{}': {fix}", path.display()));
            }
            let builder = ort::init_from(&path)
                .map_err(|e| format!("cannot load ONNX Runtime from '{}': {e}; {fix}", path.display()))?;
            builder.with_name("gst-classsr").build().map_err(|e| {
                format!(
                    "cannot create the ONNX Runtime environment from '{}': {e}",
                    path.display()
                )
            })
        })
        .as_ref()
        .map_err(|e| Error::Runtime(e.clone()))
}

/// Where inference runs, as asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceRequest {
    /// CUDA when its provider registers, else CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
}

/// Where inference actually runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActiveDevice {
    Cpu,
    Cuda(i32),
}

impl std::fmt::Display for ActiveDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ActiveDevice::Cpu => write!(f, "cpu"),
            ActiveDevice::Cuda(id) => write!(f, "cuda:{id}"),
        }
    }
}

/// The arithmetic of the branches (the classifier always runs in float).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    Fp32,
    /// Float16 weights and activations (onnx/half.rs), for the GPU's tensor cores.
    Fp16,
}

/// Session options shared by the four graphs of a model.
#[derive(Debug, Clone, Copy)]
pub struct SessionConfig {
    pub device: DeviceRequest,
    pub device_id: i32,
    /// The branches' arithmetic.
    pub precision: Precision,
    /// On the CPU: a frame's branch runs, and its classifier batch, are shared out between
    /// this many parallel one-thread sessions (0 = one per core). With CUDA: ONNX Runtime's
    /// intra-op threads (0 = its default).
    pub threads: usize,
}

impl SessionConfig {
    /// How many one-thread CPU sessions share a frame's branch runs and its classifier batch
    /// (the tile workers).
    pub fn cpu_workers(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

fn builder(threads: usize) -> Result<ort::session::builder::SessionBuilder, Error> {
    let env = environment()?;
    let rt = |e: ort::Error| Error::Runtime(format!("ONNX Runtime session options: {e}"));
    let mut b = Session::builder(env).map_err(rt)?;
    // Batch sizes change from frame to frame (tiles per class): memory patterns, which ONNX
    // Runtime plans per input shape, would only be re-planned over and over.
    b = b
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| rt(e.into()))?
        .with_memory_pattern(false)
        .map_err(|e| rt(e.into()))?;
    // A frame runs several sessions one after another (the classifier, then the branches):
    // threads of one that spin-wait after its run would steal the cores from the next.
    b = b.with_intra_op_spinning(false).map_err(|e| rt(e.into()))?;
    if threads > 0 {
        b = b.with_intra_threads(threads).map_err(|e| rt(e.into()))?;
    }
    if let Some(prefix) = std::env::var_os(PROFILE_ENV).filter(|p| !p.is_empty()) {
        // one file per session: ONNX Runtime names them by the second they start in
        static SESSIONS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let k = SESSIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut path = prefix;
        path.push(format!("-{}-{k}", std::process::id()));
        b = b.with_profiling(path).map_err(|e| rt(e.into()))?;
    }
    Ok(b)
}

/// When set, every session writes an ONNX Runtime profile (per-operator times and the execution
/// provider of each node, Chrome trace JSON) to `<value>-<pid>-<k>_<time>.json` when it ends.
pub const PROFILE_ENV: &str = "CLASSSR_ORT_PROFILE";

/// Whether ONNX Runtime's CPU layout optimiser uses its blocked (NCHWc) layout here: on x86-64
/// with AVX2 (its MLAS kernels need AVX2 or AVX-512F).
pub fn cpu_blocked_layout() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `bytes` after the load-time rewrites of onnx/rewrite.rs for `device` (the same values,
/// faster), or as given when there is nothing to rewrite: PRelu in its ReluSum form on a CPU
/// with the blocked layout (where it is within a few roundings of PRelu, see
/// onnx/rewrite.rs), elsewhere in the bit-identical Max form. For sessions of [`session_as_is`] / [`cpu_session_as_is`], so that a graph loaded
/// several times is rewritten once.
pub fn rewritten(bytes: &[u8], device: DeviceRequest) -> Cow<'_, [u8]> {
    use crate::onnx::rewrite::{prelu, PreluForm};
    let usual = match device {
        DeviceRequest::Cpu if cpu_blocked_layout() => PreluForm::ReluSum,
        _ => PreluForm::Max,
    };
    let chosen = std::env::var(PRELU_ENV).ok();
    let form = prelu_form(chosen.as_deref(), usual).unwrap_or_else(|e| {
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| eprintln!("warning: {e}"));
        Some(usual)
    });
    match form {
        Some(form) => prelu(bytes, form).map_or(Cow::Borrowed(bytes), Cow::Owned),
        None => Cow::Borrowed(bytes),
    }
}

/// Environment variable that chooses the form PRelu nodes run in, to compare them on a device
/// (see [`prelu_form`]); unset, the device's usual form.
pub const PRELU_ENV: &str = "CLASSSR_PRELU";

/// The PRelu form [`PRELU_ENV`]'s value `chosen` asks for: `as-written` (None: no rewrite),
/// `max`, `relu-sum`, or `usual` when unset or empty; another value is an error that names them.
pub fn prelu_form(
    chosen: Option<&str>,
    usual: crate::onnx::rewrite::PreluForm,
) -> Result<Option<crate::onnx::rewrite::PreluForm>, String> {
    use crate::onnx::rewrite::PreluForm;
    match chosen.unwrap_or("") {
        "" => Ok(Some(usual)),
        "as-written" => Ok(None),
        "max" => Ok(Some(PreluForm::Max)),
        "relu-sum" => Ok(Some(PreluForm::ReluSum)),
        other => Err(format!(
            "{PRELU_ENV}={other} is not as-written, max or relu-sum: PRelu runs in the device's usual form"
        )),
    }
}

fn commit_as_is(mut b: ort::session::builder::SessionBuilder, bytes: &[u8], what: &str) -> Result<Session, Error> {
    b.commit_from_memory(bytes).map_err(|e| {
        if crate::onnx::uses_external_data(bytes) {
            Error::Model(format!(
                "{what} keeps its weights in a separate file (ONNX external data), which is not read: \
                 save it with the weights inside (onnx.save(model, path, save_as_external_data=False))"
            ))
        } else {
            Error::Model(format!("{what} is not a valid ONNX model for ONNX Runtime: {e}"))
        }
    })
}

/// A CPU session of `bytes` exactly as given, without the load-time rewrites (for bytes
/// already [`rewritten`], and to check the rewrites against the original graph), with
/// `threads` intra-op threads (0 = ONNX Runtime's default, one per core).
pub fn cpu_session_as_is(bytes: &[u8], what: &str, threads: usize) -> Result<Session, Error> {
    commit_as_is(builder(threads)?, bytes, what)
}

/// A CPU session with `threads` intra-op threads (0 = ONNX Runtime's default, one per core).
/// The engine's CPU sessions have one thread each: tiles are shared out between sessions
/// instead, which on small convolutions beats splitting each operator across threads.
pub fn cpu_session(bytes: &[u8], what: &str, threads: usize) -> Result<Session, Error> {
    cpu_session_as_is(&rewritten(bytes, DeviceRequest::Cpu), what, threads)
}

/// [`session_as_is`] after the load-time rewrites ([`rewritten`]).
pub fn session(bytes: &[u8], what: &str, cfg: &SessionConfig) -> Result<(Session, ActiveDevice), Error> {
    session_as_is(&rewritten(bytes, cfg.device), what, cfg, 1)
}

/// Builds a session for one graph as given: on the CPU with `cpu_threads` intra-op threads
/// (see [`cpu_session`]), else (`Cuda`, and `Auto`) with the CUDA provider. A provider that
/// does not register, or cannot make a session of a graph the CPU can run, is a runtime error
/// saying why; falling back to the CPU for `Auto` is the caller's (`Model::load`: the whole
/// model, not one graph).
pub fn session_as_is(
    bytes: &[u8],
    what: &str,
    cfg: &SessionConfig,
    cpu_threads: usize,
) -> Result<(Session, ActiveDevice), Error> {
    if cfg.device == DeviceRequest::Cpu {
        return Ok((cpu_session_as_is(bytes, what, cpu_threads)?, ActiveDevice::Cpu));
    }
    let cuda = ort::ep::CUDA::default()
        .with_device_id(cfg.device_id)
        .with_tf32(true)
        .build()
        .error_on_failure();
    let mut b = builder(cfg.threads)?.with_execution_providers([cuda]).map_err(|e| {
        Error::Runtime(format!(
            "CUDA execution provider (device {}) did not register: {}. It needs an NVIDIA driver, \
             the CUDA 13 and cuDNN 9 libraries (e.g. libcublasLt.so.13) on LD_LIBRARY_PATH and the \
             onnxruntime-gpu build of libonnxruntime",
            cfg.device_id,
            e.to_string().trim_end_matches('.')
        ))
    })?;
    match b.commit_from_memory(bytes) {
        Ok(s) => Ok((s, ActiveDevice::Cuda(cfg.device_id))),
        // The provider registered but the session failed: the graph or the device (no such
        // device, no usable GPU) is at fault. A CPU session tells which: a broken graph fails
        // there too, with its own message.
        Err(e) => {
            cpu_session_as_is(bytes, what, cpu_threads)?;
            Err(Error::Runtime(format!(
                "the CUDA execution provider (device {}) could not make a session of {what}: {}",
                cfg.device_id,
                e.to_string().trim_end_matches('.')
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::rewrite::PreluForm;

    #[test]
    fn the_prelu_form_is_chosen_by_name_and_a_wrong_name_is_named() {
        let usual = PreluForm::ReluSum;
        assert_eq!(prelu_form(None, usual), Ok(Some(usual)));
        assert_eq!(prelu_form(Some(""), usual), Ok(Some(usual)));
        assert_eq!(prelu_form(Some("as-written"), usual), Ok(None));
        assert_eq!(prelu_form(Some("max"), usual), Ok(Some(PreluForm::Max)));
        assert_eq!(
            prelu_form(Some("relu-sum"), PreluForm::Max),
            Ok(Some(PreluForm::ReluSum))
        );
        let e = prelu_form(Some("prelu"), usual).unwrap_err();
        assert!(
            e.contains("CLASSSR_PRELU=prelu") && e.contains("as-written, max or relu-sum"),
            "{e}"
        );
    }
}
