// Implementation of the `classsr` element (a gst_video::VideoFilter): properties, caps,
// model loading in start(), and per-frame processing through the shared engine.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::subclass::prelude::*;
use gst_video::prelude::*;
use gst_video::subclass::prelude::*;

use super::{caps, ClassSrCache, ClassSrDevice, ClassSrFrameGraphs, ClassSrMode, ClassSrPrecision};
use crate::engine::tiling::{check_tiling, TILE_SIDES};
use crate::engine::{
    frame_graphs, pixels, size_bands, CacheMode, Engine, FrameConfig, FrameStats, Image, ImageMut, Mode, Model,
    PixelLayout, MAX_SIDE, UHD,
};
use crate::manifest::ModelSet;
use crate::runtime::{ActiveDevice, DeviceRequest, Precision, SessionConfig};
use crate::Error;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "classsr",
        gst::DebugColorFlags::empty(),
        Some("ClassSR super-resolution"),
    )
});

/// 0: the model's tile size (its manifest's).
const DEFAULT_TILE: u32 = 0;
const DEFAULT_OVERLAP: u32 = 4;
const DEFAULT_MAX_BATCH: u32 = 0;
const DEFAULT_CACHE_THRESHOLD: f32 = 2.0;
const DEFAULT_CACHE_REFRESH: u32 = 30;
/// QoS degradation levels: 1 to 3 each lower the bias by the model's `qos_bias_step` (manifest;
/// 0.5 when absent); at the last, class 1 also goes bicubic, and only then may the base class
/// drop late frames.
const QOS_MAX_LEVEL: u32 = 4;
/// Largest `latency` accepted (ns): a minute.
const MAX_LATENCY: u64 = 60_000_000_000;
/// On-time QoS reports in a row after which the level steps back down (at once when the
/// reported proportion shows ≥ 10 % headroom).
const QOS_RECOVER_REPORTS: u32 = 8;
/// Least time between two "running late" warnings on the bus.
const QOS_WARN_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq)]
struct Settings {
    model: String,
    mode: ClassSrMode,
    device: ClassSrDevice,
    device_id: i32,
    precision: ClassSrPrecision,
    threads: u32,
    tile_size: u32,
    overlap: u32,
    max_batch: u32,
    bias: f32,
    cache: ClassSrCache,
    cache_threshold: f32,
    cache_refresh: u32,
    cache_correction: bool,
    stats: bool,
    frame_graphs: ClassSrFrameGraphs,
    /// Latency this element adds in a live pipeline (ns): its frame time, which the latency
    /// query reports so that the sink waits for it.
    latency: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            model: String::new(),
            mode: ClassSrMode::default(),
            device: ClassSrDevice::default(),
            device_id: 0,
            precision: ClassSrPrecision::Fp32,
            threads: 0,
            tile_size: DEFAULT_TILE,
            overlap: DEFAULT_OVERLAP,
            max_batch: DEFAULT_MAX_BATCH,
            bias: 0.0,
            cache: ClassSrCache::default(),
            cache_threshold: DEFAULT_CACHE_THRESHOLD,
            cache_refresh: DEFAULT_CACHE_REFRESH,
            cache_correction: true,
            stats: false,
            frame_graphs: ClassSrFrameGraphs::Auto,
            latency: 0,
        }
    }
}

impl Settings {
    fn frame_config(&self) -> FrameConfig {
        FrameConfig {
            mode: match self.mode {
                ClassSrMode::ClassSr => Mode::ClassSR,
                ClassSrMode::Original => Mode::Original,
                ClassSrMode::Bicubic => Mode::Bicubic,
                ClassSrMode::Branch1 => Mode::Branch(0),
                ClassSrMode::Branch2 => Mode::Branch(1),
                ClassSrMode::Branch3 => Mode::Branch(2),
                ClassSrMode::ClassMap => Mode::ClassMap,
            },
            tile: self.tile_size as usize,
            overlap: self.overlap as usize,
            max_batch: self.max_batch as usize,
            bias: self.bias,
            qos_bias: 0.0,
            class1_bicubic: false,
            cache: match self.cache {
                ClassSrCache::Off => CacheMode::Off,
                ClassSrCache::Class => CacheMode::Class,
                ClassSrCache::Full => CacheMode::Full,
            },
            cache_threshold: self.cache_threshold,
            cache_refresh: self.cache_refresh,
            cache_correction: self.cache_correction,
        }
    }

    fn session_config(&self) -> SessionConfig {
        SessionConfig {
            device: match self.device {
                ClassSrDevice::Auto => DeviceRequest::Auto,
                ClassSrDevice::Cpu => DeviceRequest::Cpu,
                ClassSrDevice::Cuda => DeviceRequest::Cuda,
            },
            device_id: self.device_id,
            precision: match self.precision {
                ClassSrPrecision::Fp32 => Precision::Fp32,
                ClassSrPrecision::Fp16 => Precision::Fp16,
            },
            threads: self.threads as usize,
        }
    }
}

struct State {
    engine: Engine,
    in_layout: Option<PixelLayout>,
    out_layout: Option<PixelLayout>,
    frames: u64,
    /// The last (tile-size, overlap) a frame was made with: kept when they are changed while
    /// playing to a pair that cannot tile a frame.
    tiling: Option<(usize, usize)>,
    /// The last refused (tile-size, overlap) pair, warned about once.
    refused_tiling: Option<(usize, usize)>,
    /// Why the frame graphs were last not used (logged once per reason).
    graphs_skipped: Option<String>,
    /// Why the frame graphs failed, when frame-graphs=auto chose them: the usual path makes
    /// the frames from then on (until the caps change or the element restarts).
    graphs_failed: Option<String>,
}

/// QoS state, apart from `State` so that QoS events (sent from downstream's thread) never wait
/// for a frame being processed.
#[derive(Default)]
struct Qos {
    /// Degradation level (0 = none … QOS_MAX_LEVEL).
    level: u32,
    /// On-time reports since the level last changed.
    on_time: u32,
    /// When the last "running late" warning was posted.
    warned: Option<Instant>,
}

pub struct ClassSr {
    settings: Mutex<Settings>,
    state: Mutex<Option<State>>,
    /// Whether a model is loaded (start() to stop()).
    running: AtomicBool,
    /// Whether the refusal of too large caps was posted on the bus since start().
    size_warned: AtomicBool,
    /// Whether caps of a size the engine refuses were reported as an error since the last
    /// caps it took (basetransform tries the same caps again for every buffer).
    size_error_posted: AtomicBool,
    qos: Mutex<Qos>,
    /// The model's scale (from its manifest when `model` is set, and again when it loads),
    /// used for caps.
    scale: AtomicU32,
    active_device: Mutex<String>,
    /// Input and output video info of the negotiated caps (for scaling metas).
    infos: Mutex<Option<(gst_video::VideoInfo, gst_video::VideoInfo)>>,
}

impl Default for ClassSr {
    fn default() -> Self {
        ClassSr {
            settings: Mutex::new(Settings::default()),
            state: Mutex::new(None),
            running: AtomicBool::new(false),
            size_warned: AtomicBool::new(false),
            size_error_posted: AtomicBool::new(false),
            qos: Mutex::new(Qos::default()),
            scale: AtomicU32::new(4),
            active_device: Mutex::new("none".to_string()),
            infos: Mutex::new(None),
        }
    }
}

/// Runs `work`, a panic in it becoming an error saying that `what` panicked (the element and
/// its streaming thread go on).
fn guarded<T>(what: &str, work: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    catch_unwind(AssertUnwindSafe(work)).unwrap_or_else(|_| Err(Error::Runtime(format!("{what} panicked"))))
}

fn layout_of(format: gst_video::VideoFormat) -> Option<PixelLayout> {
    use gst_video::VideoFormat as F;
    Some(match format {
        F::Rgb => PixelLayout::Rgb,
        F::Bgr => PixelLayout::Bgr,
        F::Rgbx => PixelLayout::Rgbx,
        F::Bgrx => PixelLayout::Bgrx,
        F::Xrgb => PixelLayout::Xrgb,
        F::Xbgr => PixelLayout::Xbgr,
        F::Rgba => PixelLayout::Rgba,
        F::Bgra => PixelLayout::Bgra,
        _ => return None,
    })
}

impl ClassSr {
    /// Posts an element error for an engine error, with the category its fix belongs to.
    fn post_error(&self, e: &Error) {
        match e {
            Error::Model(m) => gst::element_imp_error!(self, gst::ResourceError::Settings, ("{}", m)),
            // (while streaming: ONNX Runtime failed a run; at start, `error_message` says Init)
            Error::Runtime(m) => gst::element_imp_error!(self, gst::LibraryError::Failed, ("{}", m)),
            Error::Input(m) => gst::element_imp_error!(self, gst::StreamError::Format, ("{}", m)),
            Error::Settings(m) => gst::element_imp_error!(self, gst::LibraryError::Settings, ("{}", m)),
        }
    }

    fn error_message(e: &Error) -> gst::ErrorMessage {
        match e {
            Error::Model(m) => gst::error_msg!(gst::ResourceError::Settings, ("{}", m)),
            Error::Runtime(m) => gst::error_msg!(gst::LibraryError::Init, ("{}", m)),
            Error::Input(m) => gst::error_msg!(gst::StreamError::Format, ("{}", m)),
            Error::Settings(m) => gst::error_msg!(gst::LibraryError::Settings, ("{}", m)),
        }
    }

    /// Loads the model of `settings` and makes the streaming state (see `start`).
    fn start_with(&self, settings: Settings) -> Result<(), gst::ErrorMessage> {
        let loaded = guarded("loading the model", || {
            let set = ModelSet::load(&settings.model)?;
            Model::load(&set, &settings.session_config())
        });
        let model = loaded.map_err(|e| Self::error_message(&e))?;
        if let Some(why) = &model.fallback {
            gst::warning!(CAT, imp = self, "device=auto falls back to CPU: {why}");
        }
        gst::info!(
            CAT,
            imp = self,
            "loaded {} model ({}) from {}: inference on {}",
            model.manifest.family,
            model.manifest.provenance.kind,
            model.origin,
            model.device
        );
        gst::info!(
            CAT,
            imp = self,
            "cache=full recomputes parts of tiles: {} (load-time probe: {})",
            model.crops,
            model
                .crop_agreement
                .map_or("not run or a crop size failed".to_string(), |db| format!("{db:.1} dB"))
        );
        self.scale.store(model.manifest.scale, Ordering::SeqCst);
        *self.active_device.lock().unwrap() = model.device.to_string();
        *self.state.lock().unwrap() = Some(State {
            engine: Engine::new(model),
            in_layout: None,
            out_layout: None,
            frames: 0,
            tiling: None,
            refused_tiling: None,
            graphs_skipped: None,
            graphs_failed: None,
        });
        *self.qos.lock().unwrap() = Qos::default();
        self.size_warned.store(false, Ordering::SeqCst);
        self.size_error_posted.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Says why a property that needs the model reloaded was not changed.
    fn refuse_reload(&self, name: &str) {
        gst::warning!(
            CAT,
            imp = self,
            "'{name}' cannot change while the element is running; stop it (READY or NULL) first"
        );
        gst::element_imp_warning!(
            self,
            gst::LibraryError::Settings,
            (
                "Refused to change '{}' while running: it needs the model reloaded; set it in the READY or NULL state",
                name
            )
        );
    }
}

#[glib::object_subclass]
impl ObjectSubclass for ClassSr {
    const NAME: &'static str = "GstClassSr";
    type Type = super::ClassSr;
    type ParentType = gst_video::VideoFilter;
}

impl ObjectImpl for ClassSr {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecString::builder("model")
                    .nick("Model directory")
                    .blurb("Directory with manifest.json, classifier.onnx and branch1..3.onnx; empty = the embedded default model")
                    .default_value(Some(""))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("mode", ClassSrMode::default())
                    .nick("Mode")
                    .blurb("classsr routes each tile by the classifier; original runs the largest branch everywhere; bicubic runs no network; branchN forces one branch")
                    .mutable_playing()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("device", ClassSrDevice::default())
                    .nick("Device")
                    .blurb("Where ONNX Runtime runs: auto (CUDA when its provider registers, else CPU), cpu or cuda")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecInt::builder("device-id")
                    .nick("Device ID")
                    .blurb("CUDA device index used with device=cuda or auto")
                    .minimum(0)
                    .maximum(255)
                    .default_value(0)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("precision", ClassSrPrecision::default())
                    .nick("Precision")
                    .blurb("Arithmetic of the branches: fp32, or fp16 (float16 weights and activations, for the tensor cores of a GPU with device=cuda; on the CPU ONNX Runtime runs it through casts). The classifier always runs in float")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("active-device")
                    .nick("Active device")
                    .blurb("Where inference actually runs: none (not started), cpu or cuda:N")
                    .read_only()
                    .build(),
                glib::ParamSpecUInt::builder("qos-level")
                    .nick("QoS level")
                    .blurb("Current QoS degradation level (with qos=true, mode=classsr): 0 = full quality, 1-3 = lowered bias, 4 = also the cheapest class bicubic (not on the frame graphs); only at 4 are late frames dropped; notifies every change")
                    .maximum(QOS_MAX_LEVEL)
                    .read_only()
                    .build(),
                glib::ParamSpecUInt::builder("threads")
                    .nick("Threads")
                    .blurb("CPU: a frame's branch runs are shared out between this many one-thread ONNX Runtime sessions, which also share the classifier's batch from 64 tiles on (0 = one per core); CUDA: ONNX Runtime's intra-op threads (0 = its default)")
                    .maximum(64)
                    .default_value(0)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("tile-size")
                    .nick("Tile size")
                    .blurb("Side of the square LR tiles in pixels, 8 to 256; 0 = the model's (its manifest's tile_size: 32 for the embedded model and every model classsr-train makes)")
                    .minimum(0)
                    .maximum(*TILE_SIDES.end() as u32)
                    .default_value(DEFAULT_TILE)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("overlap")
                    .nick("Overlap")
                    .blurb("LR pixels shared by neighbouring tiles, blended with a linear feather; at most half of the tile side in use (the model's when tile-size is 0)")
                    .maximum(255)
                    .default_value(DEFAULT_OVERLAP)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("max-batch")
                    .nick("Max batch")
                    .blurb("Most tiles per branch run, larger groups are split (0 = automatic: 16 on the CPU, 256 with CUDA)")
                    .minimum(0)
                    .maximum(65536)
                    .default_value(DEFAULT_MAX_BATCH)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("cache", ClassSrCache::default())
                    .nick("Cache")
                    .blurb("Per-tile cache across frames: off, class (unchanged tiles keep their class and skip the classifier) or full (they also keep their HR output and skip their branch; with a threshold above 0, a tile changed in a few 8x8 blocks reruns its branch only around them, on the CPU at the model's tile size)")
                    .mutable_playing()
                    .build(),
                glib::ParamSpecFloat::builder("cache-threshold")
                    .nick("Cache threshold")
                    .blurb("A tile counts as unchanged when, in each of its 8x8 blocks, the mean absolute difference to the cached tile is below this (8-bit units); 0 = only bit-identical tiles")
                    .minimum(0.0)
                    .maximum(255.0)
                    .default_value(DEFAULT_CACHE_THRESHOLD)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("cache-refresh")
                    .nick("Cache refresh")
                    .blurb("Recompute every tile once every this many frames so drift cannot build up, staggered: about 1/N of the tiles each frame (0 = never)")
                    .default_value(DEFAULT_CACHE_REFRESH)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoolean::builder("cache-correction")
                    .nick("Cache correction")
                    .blurb("With cache=full and a threshold above 0, add to each reused output the bicubic upscale of its pixels' change since it was computed (scaled by its branch's response gain, measured at load), so reused tiles follow noise, flicker and slow changes of light (one more pass over every output byte, when some pixel differs)")
                    .default_value(true)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoolean::builder("stats")
                    .nick("Statistics")
                    .blurb("Post a classsr-stats element message per frame: tiles per class, cache hits, tiles recomputed in part, MACs used and of the original model, processing time and the part of it spent classifying")
                    .default_value(false)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("frame-graphs", ClassSrFrameGraphs::default())
                    .nick("Frame graphs")
                    .blurb("Run the whole frame as ONNX graphs whose tensors stay in the execution provider's memory (upload the frame, download only the result): auto = on when the model runs on CUDA (where it is many times faster; should they fail, a warning and the usual path until the caps change), off on the CPU (where it is slower); on = an error if they fail. Covers modes classsr/original/branchN with cache off or class (the classifier then runs on every tile) and formats without alpha; other frames take the usual path")
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt64::builder("latency")
                    .nick("Latency")
                    .blurb("Latency in ns this element adds in a live pipeline, reported in the latency query (0 = none, as it holds no frame back). Set it to about the slowest processing-time (stats=true) when frames take longer than the sink's processing deadline (20 ms by default), so that they are not late")
                    .maximum(MAX_LATENCY)
                    .default_value(0)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecFloat::builder("bias")
                    .nick("Bias")
                    .blurb("Shifts routing without retraining: negative towards cheaper branches, positive towards branch3 (added to branch3's logit, subtracted from branch1's)")
                    .minimum(-100.0)
                    .maximum(100.0)
                    .default_value(0.0)
                    .mutable_playing()
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let name = pspec.name();
        // The caps follow a new model's scale from when it is set, not from when it loads:
        // links are made (and checked against the caps) before the element starts. Its
        // manifest is read before the settings lock is taken (a slow disk would hold up every
        // other property and start()); one that cannot be read fails at start, the caps are
        // those of the default scale until then.
        let model_scale = (name == "model").then(|| {
            let dir = value.get::<Option<String>>().expect("type checked").unwrap_or_default();
            ModelSet::manifest_of(&dir).map_or(4, |m| m.scale)
        });
        let mut s = self.settings.lock().unwrap();
        // checked under the settings lock, which start() holds while it takes the settings
        // and marks the element running: a change cannot slip in between and be ignored
        if matches!(name, "model" | "device" | "device-id" | "precision" | "threads")
            && self.running.load(Ordering::SeqCst)
        {
            drop(s);
            self.refuse_reload(name);
            return;
        }
        match name {
            "model" => {
                s.model = value.get::<Option<String>>().expect("type checked").unwrap_or_default();
                self.scale.store(model_scale.expect("read above"), Ordering::SeqCst);
            }
            "mode" => s.mode = value.get().expect("type checked"),
            "device" => s.device = value.get().expect("type checked"),
            "device-id" => s.device_id = value.get().expect("type checked"),
            "precision" => s.precision = value.get().expect("type checked"),
            "threads" => s.threads = value.get().expect("type checked"),
            "tile-size" => s.tile_size = value.get().expect("type checked"),
            "overlap" => s.overlap = value.get().expect("type checked"),
            "max-batch" => s.max_batch = value.get().expect("type checked"),
            "bias" => s.bias = value.get().expect("type checked"),
            "cache" => s.cache = value.get().expect("type checked"),
            "cache-threshold" => s.cache_threshold = value.get().expect("type checked"),
            "cache-refresh" => s.cache_refresh = value.get().expect("type checked"),
            "cache-correction" => s.cache_correction = value.get().expect("type checked"),
            "stats" => s.stats = value.get().expect("type checked"),
            "frame-graphs" => s.frame_graphs = value.get().expect("type checked"),
            "latency" => {
                s.latency = value.get().expect("type checked");
                drop(s);
                // the pipeline asks again and redistributes
                let _ = self
                    .obj()
                    .post_message(gst::message::Latency::builder().src(&*self.obj()).build());
            }
            _ => unimplemented!("property {name}"),
        }
        gst::debug!(CAT, imp = self, "{name} set to {value:?}");
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        match pspec.name() {
            "active-device" => return self.active_device.lock().unwrap().to_value(),
            "qos-level" => return self.qos.lock().unwrap().level.to_value(),
            _ => {}
        }
        let s = self.settings.lock().unwrap();
        match pspec.name() {
            "model" => s.model.to_value(),
            "mode" => s.mode.to_value(),
            "device" => s.device.to_value(),
            "device-id" => s.device_id.to_value(),
            "precision" => s.precision.to_value(),
            "threads" => s.threads.to_value(),
            "tile-size" => s.tile_size.to_value(),
            "overlap" => s.overlap.to_value(),
            "max-batch" => s.max_batch.to_value(),
            "bias" => s.bias.to_value(),
            "cache" => s.cache.to_value(),
            "cache-threshold" => s.cache_threshold.to_value(),
            "cache-refresh" => s.cache_refresh.to_value(),
            "cache-correction" => s.cache_correction.to_value(),
            "stats" => s.stats.to_value(),
            "frame-graphs" => s.frame_graphs.to_value(),
            "latency" => s.latency.to_value(),
            name => unimplemented!("property {name}"),
        }
    }
}

impl GstObjectImpl for ClassSr {}

impl ElementImpl for ClassSr {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static META: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "ClassSR super-resolution",
                "Filter/Converter/Video/Scaler",
                "Upscales video x4 with ClassSR: overlapping 32x32 tiles are scored by a small classifier in one \
                 batched ONNX Runtime run and sent to one of three networks of decreasing cost, then blended back. \
                 Example: gst-launch-1.0 videotestsrc ! video/x-raw,width=320,height=240 ! classsr ! videoconvert ! autovideosink",
                "gst-classsr developers",
            )
        });
        Some(&*META)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            use gst_video::VideoFormat as F;
            // Progressive frames only (fields would be mixed by the tiles); the input within the
            // engine's limits (per side and area, as bands of sizes), so that a videoscale
            // upstream can adapt to them. Outputs up to the manifest's largest scale (8).
            let caps = |widths: std::ops::RangeInclusive<usize>, max_height: usize| {
                gst_video::VideoCapsBuilder::new()
                    .format_list([F::Rgb, F::Bgr, F::Rgbx, F::Bgrx, F::Xrgb, F::Xbgr, F::Rgba, F::Bgra])
                    .width_range(*widths.start() as i32..=*widths.end() as i32)
                    .height_range(1..=max_height as i32)
                    .field("interlace-mode", "progressive")
                    .build()
            };
            let src = caps(1..=8 * MAX_SIDE, 8 * MAX_SIDE);
            // Landscape 4K UHD first: a videoscale in front fixates within the first structure
            // only (so it passes 3840x2160 through and fits 4096x2160 to 3840 wide); then
            // portrait, then the rest of the staircase (reached by fixed caps).
            let mut sink = caps(1..=UHD.0, UHD.1);
            sink.merge(caps(1..=UHD.1, UHD.0));
            for (widths, max_height) in size_bands() {
                sink.merge(caps(widths, max_height));
            }
            vec![
                gst::PadTemplate::new("src", gst::PadDirection::Src, gst::PadPresence::Always, &src).unwrap(),
                gst::PadTemplate::new("sink", gst::PadDirection::Sink, gst::PadPresence::Always, &sink).unwrap(),
            ]
        });
        TEMPLATES.as_ref()
    }
}

impl BaseTransformImpl for ClassSr {
    const MODE: gst_base::subclass::BaseTransformMode = gst_base::subclass::BaseTransformMode::NeverInPlace;
    const PASSTHROUGH_ON_SAME_CAPS: bool = false;
    const TRANSFORM_IP_ON_PASSTHROUGH: bool = false;

    fn start(&self) -> Result<(), gst::ErrorMessage> {
        // From here on, settings that need a reload are refused (see set_property).
        let settings = {
            let s = self.settings.lock().unwrap();
            self.running.store(true, Ordering::SeqCst);
            s.clone()
        };
        let started = self.start_with(settings);
        if started.is_err() {
            self.running.store(false, Ordering::SeqCst);
        }
        started
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        *self.state.lock().unwrap() = None;
        self.running.store(false, Ordering::SeqCst);
        let level = std::mem::take(&mut *self.qos.lock().unwrap()).level;
        if level > 0 {
            self.obj().notify("qos-level");
        }
        *self.infos.lock().unwrap() = None;
        *self.active_device.lock().unwrap() = "none".to_string();
        gst::info!(CAT, imp = self, "stopped");
        Ok(())
    }

    fn query(&self, direction: gst::PadDirection, query: &mut gst::QueryRef) -> bool {
        if !BaseTransformImplExt::parent_query(self, direction, query) {
            return false;
        }
        // upstream's latency (the base class asks it), plus this element's own when live
        if let (gst::PadDirection::Src, gst::QueryViewMut::Latency(q)) = (direction, query.view_mut()) {
            let (live, min, max) = q.result();
            if live {
                let own = gst::ClockTime::from_nseconds(self.settings.lock().unwrap().latency);
                q.set(true, min.saturating_add(own), max.map(|m| m.saturating_add(own)));
            }
        }
        true
    }

    fn transform_caps(
        &self,
        direction: gst::PadDirection,
        caps: &gst::Caps,
        filter: Option<&gst::Caps>,
    ) -> Option<gst::Caps> {
        let out = caps::transform(caps, direction, self.scale.load(Ordering::SeqCst));
        gst::debug!(CAT, imp = self, "transformed {caps:?} ({direction:?}) to {out:?}");
        Some(match filter {
            Some(f) => f.intersect_with_mode(&out, gst::CapsIntersectMode::First),
            None => out,
        })
    }

    fn accept_caps(&self, direction: gst::PadDirection, caps: &gst::Caps) -> bool {
        let accepted = self.parent_accept_caps(direction, caps);
        if !accepted && direction == gst::PadDirection::Sink {
            // Say why when it is the size (the pad templates hold the sizes the engine takes,
            // so that a videoscale upstream adapts; a fixed larger size ends in not-negotiated).
            if let Ok(info) = gst_video::VideoInfo::from_caps(caps) {
                if let Err(e) = Engine::check_size(info.width() as usize, info.height() as usize) {
                    gst::warning!(CAT, imp = self, "refusing {caps:?}: {e}");
                    // on the bus once per start: negotiation asks again and again
                    if !self.size_warned.swap(true, Ordering::SeqCst) {
                        gst::element_imp_warning!(self, gst::StreamError::Format, ("{}", e));
                    }
                }
            }
        }
        accepted
    }

    fn src_event(&self, mut event: gst::Event) -> bool {
        if let gst::EventView::Navigation(_) = event.view() {
            // Pointer positions come in output pixels; upstream's are 4x smaller (as
            // videoscale does).
            let scale = f64::from(self.scale.load(Ordering::SeqCst).max(1));
            let s = event.make_mut().structure_mut();
            for field in ["pointer_x", "pointer_y"] {
                if let Ok(v) = s.get::<f64>(field) {
                    s.set(field, v / scale);
                }
            }
            return self.parent_src_event(event);
        }
        if let gst::EventView::Qos(q) = event.view() {
            let (kind, proportion, diff, timestamp) = q.get();
            // Throttle reports are a requested rate, not lateness.
            if self.degrades() && kind != gst::QOSType::Throttle && self.handle_qos(diff, proportion) < QOS_MAX_LEVEL {
                // Degrade before dropping: until the last level the base class (which drops
                // frames up to the reported time + lateness) learns the report as if on time,
                // so no frame after the reported one is dropped, and so does upstream (a
                // decoder or videoconvert in front would drop them itself).
                // (a QoS event may not be earlier than time 0: diff ≥ −timestamp)
                let earliest = timestamp.map_or(i64::MIN, |ts| -(ts.nseconds().min(i64::MAX as u64) as i64));
                let on_time = (diff.min(0) - 1).max(earliest);
                if let Some(ts) = timestamp {
                    self.obj().update_qos(proportion, on_time, ts);
                }
                // (the parsed timestamp already has the event's running-time offset added: the
                // event sent on carries none, or upstream would see the offset twice)
                let forwarded = gst::event::Qos::builder(kind, proportion, on_time)
                    .timestamp_if_some(timestamp)
                    .seqnum(event.seqnum())
                    .build();
                return self.obj().sink_pad().push_event(forwarded);
            }
        }
        self.parent_src_event(event)
    }

    fn sink_event(&self, event: gst::Event) -> bool {
        if let gst::EventView::FlushStop(_) = event.view() {
            if let Some(state) = self.state.lock().unwrap().as_mut() {
                state.engine.reset();
            }
            // After a flush the stream starts on time (the base class resets its QoS too).
            self.reset_qos(false);
        }
        self.parent_sink_event(event)
    }

    fn transform(&self, inbuf: &gst::Buffer, outbuf: &mut gst::BufferRef) -> Result<gst::FlowSuccess, gst::FlowError> {
        // A GAP buffer may come without memory (or too little for a frame): there is nothing
        // to map, so it comes out as an opaque black frame (a GAP still) instead of the video
        // base class's mapping error and an unwritten buffer.
        if inbuf.flags().contains(gst::BufferFlags::GAP) {
            let infos = self.infos.lock().unwrap().clone();
            if let Some((_, out)) = infos.filter(|(i, _)| inbuf.size() < i.size()) {
                // (mapped as a frame: a downstream pool's buffers may have other strides and
                // offsets than the caps', in their video meta)
                let mut frame = gst_video::VideoFrameRef::from_buffer_ref_writable(outbuf, &out)
                    .map_err(|_| gst::FlowError::Error)?;
                let stride = frame.plane_stride()[0] as usize;
                let data = frame.plane_data_mut(0).map_err(|_| gst::FlowError::Error)?;
                match layout_of(out.format()) {
                    Some(layout) => pixels::fill_black(&mut ImageMut {
                        data,
                        width: out.width() as usize,
                        height: out.height() as usize,
                        stride,
                        layout,
                    }),
                    None => data.fill(0),
                }
                return Ok(gst::FlowSuccess::Ok);
            }
        }
        self.parent_transform(inbuf, outbuf)
    }

    fn copy_metadata(&self, inbuf: &gst::BufferRef, outbuf: &mut gst::BufferRef) -> Result<(), gst::LoggableError> {
        self.parent_copy_metadata(inbuf, outbuf)?;
        // A GAP stays a GAP (the base class does not carry the flag over).
        if inbuf.flags().contains(gst::BufferFlags::GAP) {
            outbuf.set_flags(gst::BufferFlags::GAP);
        }
        Ok(())
    }

    fn transform_meta<'a>(
        &self,
        outbuf: &mut gst::BufferRef,
        meta: gst::MetaRef<'a, gst::Meta>,
        inbuf: &'a gst::BufferRef,
    ) -> bool {
        use gst::meta::MetaTag;
        use gst_video::video_meta::tags;
        // As videoscale: metas tagged only with what a scaler keeps (video, colour space,
        // orientation, size) are copied, those with a size (regions of interest, crops,
        // overlays) scaled with the frame; anything else is the base class's decision.
        let keeps = [
            tags::Video::TAG_NAME.as_str(),
            tags::Colorspace::TAG_NAME.as_str(),
            tags::Orientation::TAG_NAME.as_str(),
            tags::Size::TAG_NAME.as_str(),
        ];
        if !meta.tags_contain_only(&keeps) {
            return self.parent_transform_meta(outbuf, meta, inbuf);
        }
        if !meta.has_tag::<tags::Size>() {
            return true;
        }
        if let Some((in_info, out_info)) = self.infos.lock().unwrap().as_ref() {
            let scale = gst_video::video_meta::VideoMetaTransformScale::new(in_info, out_info);
            if let Err(e) = meta.transform(outbuf, &scale) {
                gst::debug!(CAT, imp = self, "{:?} not scaled: {e}", meta.api());
            }
        }
        false
    }
}

impl ClassSr {
    fn post_stats(&self, frame: u64, st: &FrameStats) {
        let s = gst::Structure::builder("classsr-stats")
            .field("frame", frame)
            .field("width", st.width as u32)
            .field("height", st.height as u32)
            .field("tiles", st.tiles.iter().sum::<usize>() as u32)
            .field("tiles-class1", st.tiles[0] as u32)
            .field("tiles-class2", st.tiles[1] as u32)
            .field("tiles-class3", st.tiles[2] as u32)
            .field("class-cache-hits", st.class_cache_hits as u32)
            .field("full-cache-hits", st.full_cache_hits as u32)
            .field("partial-tiles", st.partial_tiles as u32)
            .field("macs", st.macs)
            .field("original-macs", st.original_macs)
            .field("runs", st.runs as u32)
            .field("processing-time", (st.seconds * 1e9) as u64)
            .field("classify-time", (st.classify_seconds * 1e9) as u64);
        // where the rest of the time went (frame graphs only)
        let s = match &st.stages {
            Some(t) => {
                let ns = |s: f64| (s * 1e9) as u64;
                s.field("upload-time", ns(t.upload))
                    .field("branch1-time", ns(t.branches[0]))
                    .field("branch2-time", ns(t.branches[1]))
                    .field("branch3-time", ns(t.branches[2]))
                    .field("merge-time", ns(t.merge))
                    .field("download-time", ns(t.download))
            }
            None => s,
        }
        .build();
        let _ = self
            .obj()
            .post_message(gst::message::Element::builder(s).src(&*self.obj()).build());
    }

    /// Whether lateness is met by degrading: the base class's `qos` switch is on and the mode
    /// has something to degrade (mode=classsr: the bias, then class 1 bicubic).
    fn degrades(&self) -> bool {
        self.obj().is_qos() && self.settings.lock().unwrap().mode == ClassSrMode::ClassSr
    }

    /// Back to full quality (`only_degraded`: only when degraded, keeping the count of on-time
    /// reports otherwise); `notify::qos-level` when the level changes.
    fn reset_qos(&self, only_degraded: bool) {
        let mut q = self.qos.lock().unwrap();
        let before = q.level;
        if before > 0 || !only_degraded {
            (q.level, q.on_time) = (0, 0);
        }
        drop(q);
        if before > 0 {
            self.obj().notify("qos-level");
        }
    }

    /// Adjusts the degradation level from a downstream QoS report (lateness `diff`, running
    /// `proportion` of the real-time rate) and returns the new level: one level up per late
    /// report, one down when well ahead (proportion < 0.9) or after a run of on-time reports.
    /// An on-time report of a proportion above 1.05 holds the level: the sink's proportion is
    /// a running average that falls slowly after a late spell, and taking it for lateness
    /// would climb to the last level (where frames are dropped) after a mere hiccup.
    fn handle_qos(&self, diff: i64, proportion: f64) -> u32 {
        let mut q = self.qos.lock().unwrap();
        let before = q.level;
        if diff > 0 {
            q.on_time = 0;
            q.level = (q.level + 1).min(QOS_MAX_LEVEL);
        } else if proportion > 1.05 {
            q.on_time = 0;
        } else {
            q.on_time += 1;
            if q.level > 0 && (proportion < 0.9 || q.on_time >= QOS_RECOVER_REPORTS) {
                q.level -= 1;
                q.on_time = 0;
            }
        }
        let level = q.level;
        // One warning on the bus per episode of lateness (and at most one per interval): the
        // log has every step.
        let warn = level > before && q.warned.is_none_or(|t| t.elapsed() >= QOS_WARN_INTERVAL);
        if warn {
            q.warned = Some(Instant::now());
        }
        drop(q);
        if level != before {
            self.obj().notify("qos-level");
        }
        if level > before {
            gst::warning!(
                CAT,
                imp = self,
                "downstream is late (diff {diff} ns, proportion {proportion:.2}): degrading to level {level}"
            );
        } else if level < before {
            gst::info!(CAT, imp = self, "on time again: degradation level {level}");
        }
        if warn {
            gst::element_imp_warning!(
                self,
                gst::CoreError::Clock,
                (
                    "Running late: degrading quality to level {} of {} (lower bias{})",
                    level,
                    QOS_MAX_LEVEL,
                    if level >= QOS_MAX_LEVEL {
                        ", cheapest class bicubic except on the frame graphs; late frames are dropped"
                    } else {
                        "; late frames are dropped only at the last level"
                    }
                )
            );
        }
        level
    }

    /// Posts the warning [`Self::tiling`] gave, if any (without the state lock held).
    fn warn_tiling(&self, warning: Option<String>) {
        if let Some(w) = warning {
            gst::element_imp_warning!(self, gst::LibraryError::Settings, ("{}", w));
        }
    }

    /// The (tile-size, overlap) to make this frame with: the settings when they can tile a
    /// frame, else (changed while playing) the last good pair, with the text of a warning to
    /// post (once per refused pair).
    fn tiling(&self, state: &mut State, cfg: &FrameConfig) -> Result<((usize, usize), Option<String>), Error> {
        let tile = cfg.for_model(&state.engine.model().manifest).tile;
        let want = (tile, cfg.overlap);
        // (a model whose graphs take one tile size only takes that one)
        let (lo, hi) = (TILE_SIDES.start(), TILE_SIDES.end());
        let usable = if cfg.tile == 0 && !TILE_SIDES.contains(&tile) {
            Err(format!(
                "the model's tile_size {tile} is outside {lo}..{hi}: set tile-size"
            ))
        } else if tile < *lo {
            Err(format!(
                "tile-size {tile} is too small: use {lo} to {hi}, or 0 for the model's"
            ))
        } else {
            check_tiling(tile, cfg.overlap)
        }
        .and_then(|()| state.engine.model().check_tile(tile).map_err(|e| e.to_string()));
        match (usable, state.tiling) {
            (Ok(()), _) => {
                state.refused_tiling = None;
                Ok((want, None))
            }
            (Err(e), None) => Err(Error::Settings(e)),
            (Err(e), Some(last)) => {
                let warning = (state.refused_tiling != Some(want)).then(|| {
                    state.refused_tiling = Some(want);
                    format!(
                        "Ignoring tile-size {} with overlap {}: {e}; keeping {} and {}",
                        want.0, want.1, last.0, last.1
                    )
                });
                Ok((last, warning))
            }
        }
    }
}

impl VideoFilterImpl for ClassSr {
    fn set_info(
        &self,
        _incaps: &gst::Caps,
        in_info: &gst_video::VideoInfo,
        _outcaps: &gst::Caps,
        out_info: &gst_video::VideoInfo,
    ) -> Result<(), gst::LoggableError> {
        let mut guard = self.state.lock().unwrap();
        let Some(state) = guard.as_mut() else {
            return Err(gst::loggable_error!(CAT, "caps set before the model was loaded"));
        };
        let (w, h) = (in_info.width() as usize, in_info.height() as usize);
        // (and the output of a model of another scale than 4: before its buffers are made)
        if let Err(e) = Engine::check_frame_size(w, h, state.engine.scale()) {
            // (messages are posted without the state lock: a bus handler may call back)
            drop(guard);
            if !self.size_error_posted.swap(true, Ordering::SeqCst) {
                self.post_error(&e);
            }
            return Err(gst::loggable_error!(CAT, "{}", e));
        }
        self.size_error_posted.store(false, Ordering::SeqCst);
        let scale = state.engine.scale();
        if out_info.width() as usize != w * scale || out_info.height() as usize != h * scale {
            let e = Error::Input(format!(
                "output caps {}x{} are not {scale} times the input {w}x{h}",
                out_info.width(),
                out_info.height()
            ));
            drop(guard);
            self.post_error(&e);
            return Err(gst::loggable_error!(CAT, "{}", e));
        }
        state.in_layout = layout_of(in_info.format());
        state.out_layout = layout_of(out_info.format());
        *self.infos.lock().unwrap() = Some((in_info.clone(), out_info.clone()));
        // A new geometry is re-tiled on the next frame, and the frame graphs are tried again
        // (with auto, after a failure: it may have been this size's). The old size's graphs
        // go now, so their device memory is free before the new ones are made.
        state.engine.reset();
        state.engine.drop_graphs();
        state.graphs_failed = None;
        gst::info!(
            CAT,
            imp = self,
            "{w}x{h} {} -> {}x{} {}",
            in_info.format().to_str(),
            out_info.width(),
            out_info.height(),
            out_info.format().to_str()
        );
        Ok(())
    }

    fn transform_frame(
        &self,
        inframe: &gst_video::VideoFrameRef<&gst::BufferRef>,
        outframe: &mut gst_video::VideoFrameRef<&mut gst::BufferRef>,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let (mut cfg, want_stats, graphs) = {
            let s = self.settings.lock().unwrap();
            (s.frame_config(), s.stats, s.frame_graphs)
        };
        // The level applies with qos on and mode=classsr (see src_event); switching either
        // off returns to full quality.
        let level = self.qos.lock().unwrap().level;
        let qos_level = if level > 0 && !self.degrades() {
            self.reset_qos(true);
            0
        } else {
            level
        };
        // A GAP buffer holds no meaningful picture: it is upscaled bicubically (no network
        // run, a fraction of a frame's time) and kept out of the cache, so the next real frame
        // is compared with the last real one.
        let gap = inframe.buffer().flags().contains(gst::BufferFlags::GAP);
        if gap {
            cfg.mode = Mode::Bicubic;
            cfg.cache = CacheMode::Off;
        }
        let mut guard = self.state.lock().unwrap();
        let state = guard.as_mut().ok_or(gst::FlowError::NotNegotiated)?;
        if qos_level > 0 {
            let step = state.engine.model().manifest.qos_step();
            cfg.qos_bias = -step * qos_level.min(QOS_MAX_LEVEL - 1) as f32;
            cfg.class1_bicubic = qos_level >= QOS_MAX_LEVEL;
        }
        let (Some(in_layout), Some(out_layout)) = (state.in_layout, state.out_layout) else {
            return Err(gst::FlowError::NotNegotiated);
        };
        // (a warning that a new tiling is refused: posted once the state lock is let go)
        let tiling_warning;
        ((cfg.tile, cfg.overlap), tiling_warning) = match self.tiling(state, &cfg) {
            Ok(tiling) => tiling,
            Err(e) => {
                drop(guard);
                self.post_error(&e);
                return Err(gst::FlowError::Error);
            }
        };
        let input = Image {
            data: inframe.plane_data(0).map_err(|_| gst::FlowError::Error)?,
            width: inframe.width() as usize,
            height: inframe.height() as usize,
            stride: inframe.plane_stride()[0] as usize,
            layout: in_layout,
        };
        let (ow, oh, ostride) = (
            outframe.width() as usize,
            outframe.height() as usize,
            outframe.plane_stride()[0] as usize,
        );
        let mut output = ImageMut {
            data: outframe.plane_data_mut(0).map_err(|_| gst::FlowError::Error)?,
            width: ow,
            height: oh,
            stride: ostride,
            layout: out_layout,
        };
        let auto = graphs == ClassSrFrameGraphs::Auto;
        let graphs = match graphs {
            ClassSrFrameGraphs::On => true,
            ClassSrFrameGraphs::Off => false,
            ClassSrFrameGraphs::Auto => {
                state.engine.model().device != ActiveDevice::Cpu && state.graphs_failed.is_none()
            }
        };
        let graphs = graphs
            && !gap
            && match frame_graphs::supports(&cfg, out_layout) {
                Ok(()) => {
                    state.graphs_skipped = None;
                    true
                }
                Err(why) => {
                    if state.graphs_skipped.as_ref() != Some(&why) {
                        // (asked for: a warning; chosen by auto: for the log)
                        if auto {
                            gst::info!(CAT, imp = self, "frame-graphs not used for this frame: {why}");
                        } else {
                            gst::warning!(CAT, imp = self, "frame-graphs not used for this frame: {why}");
                        }
                        state.graphs_skipped = Some(why);
                    }
                    false
                }
            };
        if !graphs && !gap {
            // frames made the usual way (settings changed, frame-graphs=off): the graphs'
            // sessions and the device memory they hold are let go (made again when needed)
            state.engine.drop_graphs();
        }
        let mut made = graphs.then(|| {
            guarded("frame processing", || {
                state.engine.process_graphs(&cfg, &input, &mut output)
            })
        });
        // Chosen by auto, the graphs failing to run (a graph the provider cannot run, no
        // device memory for them) is no reason to stop: the usual path makes the frame, and
        // the next ones until the caps change or the element restarts. A bad frame or setting
        // fails the usual path as well.
        let fell_back = made.take_if(|r| auto && matches!(r, Err(Error::Runtime(_) | Error::Model(_))));
        let fell_back = fell_back.and_then(Result::err);
        if let Some(e) = &fell_back {
            gst::warning!(CAT, imp = self, "frame-graphs failed, using the usual path: {e}");
            // (after a panic they may still be there)
            state.engine.drop_graphs();
            state.graphs_failed = Some(e.to_string());
        }
        let result =
            made.unwrap_or_else(|| guarded("frame processing", || state.engine.process(&cfg, &input, &mut output)));
        match result {
            Ok(stats) => {
                state.frames += 1;
                state.tiling = Some((cfg.tile, cfg.overlap));
                gst::trace!(CAT, imp = self, "frame {}: {:?}", state.frames, stats);
                let frame = state.frames;
                // messages are posted without the state lock (a bus handler may call back)
                drop(guard);
                self.warn_tiling(tiling_warning);
                if let Some(e) = fell_back {
                    gst::element_imp_warning!(
                        self,
                        gst::CoreError::Failed,
                        (
                            "The frame graphs failed ({}); frames are made the usual way (slower on a GPU) until the caps change or the element restarts",
                            e
                        )
                    );
                }
                if want_stats {
                    self.post_stats(frame, &stats);
                }
                Ok(gst::FlowSuccess::Ok)
            }
            Err(e) => {
                // A failed run may leave buffers half-written. The engine resets itself after
                // an error it returns; after a panic it could not, so reset here too (and
                // drop the frame graphs, which a panic leaves in place).
                state.engine.reset();
                state.engine.drop_graphs();
                drop(guard);
                self.warn_tiling(tiling_warning);
                self.post_error(&e);
                Err(gst::FlowError::Error)
            }
        }
    }
}
