// Writing files so that no reader ever sees a torn or emptied one: the model directory, the
// trainer's checkpoints and class split, and the CLI's images all go through here.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Longest file name most file systems take (bytes).
const NAME_MAX: usize = 255;

/// The stem of the temporary files of a file named `name`: `.NAME.`, or for a name too long to
/// take the dot and the `PID.tmp` after it, `.` + its first bytes + `~` + a hash of the whole
/// name + `.` (so the work is not lost at the end for want of a name).
fn tmp_stem(name: &str) -> String {
    // (".", and "PID.tmp" with a PID of up to 10 digits)
    if name.len() + 1 + 1 + 10 + 4 <= NAME_MAX {
        return format!(".{name}.");
    }
    let mut cut = 200;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    // FNV-1a: the same for the same name in every process (std's hasher is seeded per process)
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    format!(".{}~{hash:016x}.", &name[..cut])
}

/// The file `path` names (through a symbolic link, the file it points to), the stem of its
/// temporary files and this process's temporary file.
fn temporary(path: &Path) -> (PathBuf, String, PathBuf) {
    let target = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = tmp_stem(&name);
    let tmp = target.with_file_name(format!("{stem}{}.tmp", std::process::id()));
    (target, stem, tmp)
}

/// How long a temporary file must have gone unchanged before it counts as left behind: a
/// writer fills its file in one go, so a file this old is not being written.
const LEFTOVER_AGE: std::time::Duration = std::time::Duration::from_secs(600);

/// Removes the temporary files of `stem` (see [`tmp_stem`]) in `folder` that processes no
/// longer running left behind (a crash, a kill), so they do not pile up over interrupted runs:
/// those whose process is not running (in /proc; Linux only) and that have not changed for
/// [`LEFTOVER_AGE`] (another PID namespace's writer, a container's on a shared folder, looks
/// ended in /proc: its file is left alone while it is being written).
fn remove_leftovers(folder: &Path, stem: &str) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(folder) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(stem))
            .and_then(|rest| rest.strip_suffix(".tmp"))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= LEFTOVER_AGE);
        if old && pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Writes `path` through a temporary file beside it (`.NAME.PID.tmp`: two processes writing
/// one file do not share it), filled by `fill`, synced,
/// then renamed over it; through a symbolic link, the file it names is replaced, and a
/// replaced file keeps its permissions. On failure the temporary file is removed and `path`
/// is left as it was. Temporary files of `path` left by processes that ended without cleaning
/// up are removed.
pub fn write_atomically(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let (target, stem, tmp) = temporary(path);
    if let Some(folder) = tmp.parent() {
        remove_leftovers(
            if folder.as_os_str().is_empty() {
                Path::new(".")
            } else {
                folder
            },
            &stem,
        );
    }
    let written = File::create(&tmp).and_then(|f| {
        let mut w = BufWriter::new(f);
        fill(&mut w)?;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()
    });
    let kept = || match std::fs::metadata(&target) {
        Ok(old) => std::fs::set_permissions(&tmp, old.permissions()),
        Err(_) => Ok(()),
    };
    let result = written
        .and_then(|_| kept())
        .and_then(|_| std::fs::rename(&tmp, &target));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Whether `path` can be written by [`write_atomically`]: its temporary file is made and
/// removed again (before long work whose result would otherwise be lost at the end).
pub fn check_writable(path: &Path) -> std::io::Result<()> {
    let (target, _, tmp) = temporary(path);
    // (the temporary file's name is cut to fit; the file's own must fit too)
    if target.file_name().is_some_and(|n| n.len() > NAME_MAX) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidFilename,
            format!("the file name is longer than {NAME_MAX} bytes"),
        ));
    }
    File::create(&tmp)?;
    std::fs::remove_file(&tmp)
}

/// [`write_atomically`] with `bytes` as the whole content.
pub fn write_bytes_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomically(path, |w| w.write_all(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(what: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("classsr-files-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_name_of_255_bytes_is_written() {
        let dir = scratch("long");
        // 251 + ".png": the longest name the file system takes, with multi-byte characters
        // across the point where the temporary name is cut
        let name = format!("{}{}.png", "a".repeat(199), "é".repeat(26));
        assert_eq!(name.len(), 255);
        let path = dir.join(&name);
        write_bytes_atomically(&path, b"pixels").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"pixels");
        // and again, over it
        write_bytes_atomically(&path, b"more").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"more");
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(left.len(), 1, "only the file itself");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn leftovers_of_ended_processes_are_removed_and_others_kept() {
        if !Path::new("/proc/self").exists() {
            return;
        }
        let dir = scratch("leftovers");
        // a process that has ended: a child that ran and was waited for
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let ended = child.id();
        child.wait().unwrap();
        let path = dir.join("model.ckpt");
        let dead = dir.join(format!(".model.ckpt.{ended}.tmp"));
        // PID 1 runs as long as the system does
        let running = dir.join(".model.ckpt.1.tmp");
        let other = dir.join(format!(".other.ckpt.{ended}.tmp"));
        // a file of an ended process changed a moment ago (another PID namespace's writer)
        let recent = dir.join(format!(".model.ckpt.{}.tmp", ended.wrapping_add(1_000_000)));
        let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        for f in [&dead, &running, &other, &recent] {
            std::fs::write(f, b"half").unwrap();
            if f != &recent {
                let file = std::fs::File::options().write(true).open(f).unwrap();
                file.set_modified(hour_ago).unwrap();
            }
        }
        write_bytes_atomically(&path, b"whole").unwrap();
        assert!(!dead.exists(), "the ended process's leftover is removed");
        assert!(running.exists(), "a running process's temporary file is left alone");
        assert!(other.exists(), "another file's temporary files are not touched");
        assert!(recent.exists(), "a file changed lately may be being written");
        assert_eq!(std::fs::read(&path).unwrap(), b"whole");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
