// Writing files so that no reader ever sees a torn or emptied one: the model directory, the
// trainer's checkpoints and class split, and the CLI's images all go through here.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Writes `path` through a temporary file beside it (`.NAME.PID.tmp`: two processes writing
/// one file do not share it), filled by `fill`, synced,
/// then renamed over it; through a symbolic link, the file it names is replaced, and a
/// replaced file keeps its permissions. On failure the temporary file is removed and `path`
/// is left as it was.
pub fn write_atomically(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let target = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp: PathBuf = target.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
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

/// [`write_atomically`] with `bytes` as the whole content.
pub fn write_bytes_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomically(path, |w| w.write_all(bytes))
}
