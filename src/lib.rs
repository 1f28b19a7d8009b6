// gst-classsr: ClassSR ×4 super-resolution for GStreamer on ONNX Runtime.
// The plugin entry point, the crate's error type and its modules.

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
