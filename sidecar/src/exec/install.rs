//! The copy of the agent's own binary into the exec volume (`KURA_EXEC_COPY_TO`), so the app
//! containers, whose images do not have it, can run `kura-agent exec` from there.
//!
//! The copy is written to a temporary name in the same directory and renamed over
//! [`EXEC_BINARY`]: a container starting at that moment finds the old binary or the whole new
//! one, never a partial file (and a running one keeps its inode).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::contract::EXEC_BINARY;

/// The mode of the copy: readable and executable by every user, writable by none, so any uid
/// of the app containers can run it and none can change it.
pub const MODE: u32 = 0o555;

/// A failed copy, naming the paths.
#[derive(Debug, thiserror::Error)]
#[error("copying the agent binary {from} to {to} for kura-agent exec: {source}")]
pub struct InstallError {
    pub from: PathBuf,
    pub to: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Copies the running binary to `<dir>/kura-agent`, atomically, mode 0555. Returns the path.
pub fn install_self(dir: &Path) -> Result<PathBuf, InstallError> {
    let to = dir.join(EXEC_BINARY);
    let from = std::env::current_exe().map_err(|source| InstallError {
        from: PathBuf::from("/proc/self/exe"),
        to: to.clone(),
        source,
    })?;
    copy(&from, &to).map_err(|source| InstallError {
        from,
        to: to.clone(),
        source,
    })?;
    Ok(to)
}

fn copy(from: &Path, to: &Path) -> io::Result<()> {
    let tmp = to.with_file_name(format!(".{EXEC_BINARY}.{:08x}.tmp", fastrand::u32(..)));
    let written = (|| {
        let mut src = fs::File::open(from)?;
        let mut dst = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o700)
            .open(&tmp)?;
        io::copy(&mut src, &mut dst)?;
        dst.flush()?;
        dst.sync_all()?;
        drop(dst);
        // Set explicitly: the umask must not change it.
        fs::set_permissions(&tmp, fs::Permissions::from_mode(MODE))?;
        fs::rename(&tmp, to)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_atomically_with_mode_0555_and_replaces_an_old_copy() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("src");
        fs::write(&src, b"binary-v1").expect("write");
        let to = tmp.path().join(EXEC_BINARY);
        copy(&src, &to).expect("first copy");
        fs::write(&src, b"binary-v2").expect("write");
        copy(&src, &to).expect("copy over the read-only old one");
        assert_eq!(fs::read(&to).expect("read"), b"binary-v2");
        let mode = fs::metadata(&to).expect("meta").permissions().mode() & 0o7777;
        assert_eq!(mode, MODE);
        let names: Vec<_> = fs::read_dir(tmp.path())
            .expect("list")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 2, "no temporary file left: {names:?}");
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_it() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("absent");
        let err = install_self(&dir).expect_err("no directory");
        let msg = err.to_string();
        assert!(msg.contains(&dir.display().to_string()), "{msg}");
        assert!(msg.contains("for kura-agent exec"), "{msg}");
    }
}
