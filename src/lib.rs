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
/// the process's control group, or one above it (a container's or a systemd slice's memory
/// limit), leaves less room. What the trainer's data and cache=full's kept outputs are checked
/// against before they are made.
pub fn available_memory() -> Option<u64> {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let system = read("/proc/meminfo").and_then(|info| {
        let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    });
    // The process's group and those above it, up to the mount's root (in a container, its own
    // group), in cgroup v2 ("0::/path") and in v1's memory hierarchy ("N:...memory...:/path").
    let groups = read("/proc/self/cgroup").unwrap_or_default();
    let mut dirs = Vec::new();
    for line in groups.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let (root, files) = if id == "0" && controllers.is_empty() {
            ("/sys/fs/cgroup", ["memory.max", "memory.current", "inactive_file"])
        } else if controllers.split(',').any(|c| c == "memory") {
            (
                "/sys/fs/cgroup/memory",
                ["memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"],
            )
        } else {
            continue;
        };
        let mut path = std::path::PathBuf::from(format!("{root}{}", path.trim_end_matches('/')));
        loop {
            dirs.push((path.clone(), files));
            if path.as_os_str() == root || !path.pop() {
                break;
            }
        }
    }
    let group = dirs
        .iter()
        .filter_map(|(dir, [limit, usage, inactive])| {
            let file = |name: &str| read(&dir.join(name).display().to_string());
            // (the page cache it may reclaim counts as room, as in MemAvailable)
            let reclaimable = file("memory.stat").and_then(|stat| {
                stat.lines()
                    .find_map(|l| l.strip_prefix(inactive).and_then(|v| v.trim().parse().ok()))
            });
            headroom(&file(limit)?, &file(usage)?, reclaimable.unwrap_or(0))
        })
        .min();
    match (system, group) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Room left under a control group's memory `limit` at `usage` (the files' text) of which
/// `reclaimable` bytes are page cache, if it has a limit ("max", or v1's page-rounded
/// i64::MAX, for none).
fn headroom(limit: &str, usage: &str, reclaimable: u64) -> Option<u64> {
    let limit: u64 = limit.trim().parse().ok().filter(|&l| l < 1 << 62)?;
    let usage: u64 = usage.trim().parse().ok()?;
    Some(limit.saturating_sub(usage.saturating_sub(reclaimable)))
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
        assert_eq!(super::headroom("4294967296\n", "1073741824\n", 0), Some(3 << 30));
        assert_eq!(
            super::headroom("4294967296\n", "4294967296\n", 1 << 30),
            Some(1 << 30),
            "page cache counts as room"
        );
        assert_eq!(super::headroom("max\n", "1073741824\n", 0), None);
        assert_eq!(
            super::headroom("9223372036854771712\n", "5\n", 0),
            None,
            "v1's no limit"
        );
        assert_eq!(super::headroom("100", "200", 0), Some(0), "over the limit");
        assert!(super::available_memory().is_some());
    }
}
