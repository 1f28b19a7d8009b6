// gst-classsr: ClassSR ×4 super-resolution for GStreamer on ONNX Runtime.
// The plugin entry point, the crate's error type, its modules, how much memory is free and the
// command lines' arguments.

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

/// The command line's arguments after the program name, or, for one that is not UTF-8, the
/// error to give (std::env::args would panic on it).
pub fn utf8_args() -> Result<Vec<String>, String> {
    std::env::args_os()
        .skip(1)
        .map(|a| {
            a.into_string().map_err(|bad| {
                format!(
                    "'{}' is not valid UTF-8: names must be UTF-8 here; rename the file, or link to it under a \
                     UTF-8 name (ln -s)",
                    bad.to_string_lossy()
                )
            })
        })
        .collect()
}

/// The memory available to this process now, if known: Linux's MemAvailable, or less where
/// the process's control group (a container's memory limit) leaves less room. What the
/// trainer's data and cache=full's kept outputs are checked against before they are made.
pub fn available_memory() -> Option<u64> {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let system = read("/proc/meminfo").and_then(|info| {
        let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    });
    // cgroup v2: the process's group (its line "0::/path" in /proc/self/cgroup); v1: the
    // memory controller's
    let v2 = read("/proc/self/cgroup")
        .and_then(|c| c.lines().find_map(|l| l.strip_prefix("0::").map(str::to_string)))
        .map(|path| format!("/sys/fs/cgroup{}", path.trim_end_matches('/')));
    let group = v2
        .and_then(|dir| {
            headroom(
                &read(&format!("{dir}/memory.max"))?,
                &read(&format!("{dir}/memory.current"))?,
            )
        })
        .or_else(|| {
            let dir = "/sys/fs/cgroup/memory";
            headroom(
                &read(&format!("{dir}/memory.limit_in_bytes"))?,
                &read(&format!("{dir}/memory.usage_in_bytes"))?,
            )
        });
    match (system, group) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Room left under a control group's memory `limit` at `usage` (the files' text), if it has
/// a limit ("max", or v1's page-rounded i64::MAX, for none).
fn headroom(limit: &str, usage: &str) -> Option<u64> {
    let limit: u64 = limit.trim().parse().ok().filter(|&l| l < 1 << 62)?;
    let usage: u64 = usage.trim().parse().ok()?;
    Some(limit.saturating_sub(usage))
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

#[cfg(test)]
mod tests {
    #[test]
    fn a_control_groups_limit_counts_only_when_it_has_one() {
        assert_eq!(super::headroom("4294967296\n", "1073741824\n"), Some(3 << 30));
        assert_eq!(super::headroom("max\n", "1073741824\n"), None);
        assert_eq!(super::headroom("9223372036854771712\n", "5\n"), None, "v1's no limit");
        assert_eq!(super::headroom("100", "200"), Some(0), "over the limit");
        assert!(super::available_memory().is_some_and(|m| m > 0));
    }
}
