// gst-classsr: ClassSR ×4 super-resolution for GStreamer on ONNX Runtime.
// The plugin entry point, the crate's error type, its modules and how much memory is free.

pub mod classsr;
pub mod engine;
pub mod eval;
pub mod files;
pub mod known_answer;
pub mod manifest;
pub mod onnx;
pub mod runtime;
#[cfg(feature = "train")]
pub mod train;

use gst::glib;

/// What went wrong, by whose fix it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The model directory, manifest or a graph is missing, unreadable or inconsistent.
    Model(String),
    /// ONNX Runtime could not be loaded or a run failed.
    Runtime(String),
    /// A frame that cannot be processed (size, layout, buffer).
    Input(String),
    /// A property value that cannot be used.
    Settings(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Model(m) | Error::Runtime(m) | Error::Input(m) | Error::Settings(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

/// The memory available to this process now (Linux: MemAvailable), if known: what the
/// trainer's data and cache=full's kept outputs are checked against before they are made.
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    classsr::register(plugin)
}

gst::plugin_define!(
    classsr,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    env!("CARGO_PKG_VERSION"),
    "MIT/X11",
    "gst-classsr",
    "gst-classsr",
    "https://github.com/gst-classsr/gst-classsr",
    "2026-11-27"
);
