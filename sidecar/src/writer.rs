//! Atomic writes of a whole set of files, the way the kubelet updates Secret volumes.
//!
//! ```text
//! <dir>/..1764370000.123456789/db-password   the files of one version of the set
//! <dir>/..data -> ..1764370000.123456789     swapped with one rename(2)
//! <dir>/db-password -> ..data/db-password    what the app opens
//! ```
//! A reader that opens `<dir>/db-password` resolves `..data` once, so it sees the old set or the
//! new one, never a mix and never a partial file.
//!
//! An entry whose name starts with `.` (which no declared file may) is kura's own, such as the
//! environment values file [`crate::contract::ENV_VALUES_FILE`]: it is part of the set and swaps
//! with it, but gets no top-level link, so `ls <dir>` shows the declared files only and its one
//! reader (`kura-agent exec`) opens it under `..data`. A failure before the rename (a full tmpfs, an
//! unwritable directory) removes the half-written directory and leaves the previous set intact.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::render::Content;

pub const DATA_LINK: &str = "..data";
const DATA_TMP_LINK: &str = "..data_tmp";

/// One file of a set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePayload {
    pub content: Content,
    pub mode: u32,
}

/// Writes sets of files into one directory.
#[derive(Debug, Clone)]
pub struct AtomicWriter {
    dir: PathBuf,
}

/// Failures, naming the path; never the content.
#[derive(Debug, thiserror::Error)]
#[error("writing {path}: {source}")]
pub struct WriteError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

fn at(path: &Path) -> impl FnOnce(io::Error) -> WriteError + '_ {
    move |source| WriteError {
        path: path.to_path_buf(),
        source,
    }
}

impl AtomicWriter {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        AtomicWriter { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether a complete set has been written.
    pub fn is_ready(&self) -> bool {
        fs::metadata(self.dir.join(DATA_LINK)).is_ok_and(|m| m.is_dir())
    }

    /// Replaces the set. Returns `false` (and writes nothing) when it is unchanged.
    pub fn write(&self, payload: &BTreeMap<String, FilePayload>) -> Result<bool, WriteError> {
        let current = fs::read_link(self.dir.join(DATA_LINK)).ok();
        if let Some(cur) = &current
            && self.same_as(&self.dir.join(cur), payload)
        {
            return Ok(false);
        }

        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let name = format!(
            "..{}.{:09}{:04}",
            now.as_secs(),
            now.subsec_nanos(),
            fastrand::u16(..10000)
        );
        let staging = self.dir.join(&name);
        fs::DirBuilder::new()
            .mode(0o750)
            .create(&staging)
            .map_err(at(&staging))?;
        if let Err(e) = write_all(&staging, payload) {
            let _ = fs::remove_dir_all(&staging);
            return Err(e);
        }
        // The directory mode is set explicitly: the umask must not widen or narrow it.
        fs::set_permissions(&staging, fs::Permissions::from_mode(0o750)).map_err(at(&staging))?;

        let tmp_link = self.dir.join(DATA_TMP_LINK);
        let _ = fs::remove_file(&tmp_link);
        if let Err(e) = std::os::unix::fs::symlink(&name, &tmp_link).map_err(at(&tmp_link)) {
            let _ = fs::remove_dir_all(&staging);
            return Err(e);
        }
        if let Err(e) = fs::rename(&tmp_link, self.dir.join(DATA_LINK)).map_err(at(&tmp_link)) {
            let _ = fs::remove_file(&tmp_link);
            let _ = fs::remove_dir_all(&staging);
            return Err(e);
        }

        // The swap is done; what follows only tidies up and cannot lose the new set.
        for file in payload.keys().filter(|f| !is_internal(f)) {
            let link = self.dir.join(file);
            if fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(Path::new(DATA_LINK).join(file), &link)
                    .map_err(at(&link))?;
            }
        }
        self.remove_stale(&name, payload);
        Ok(true)
    }

    fn same_as(&self, dir: &Path, payload: &BTreeMap<String, FilePayload>) -> bool {
        let Ok(entries) = fs::read_dir(dir) else {
            return false;
        };
        if entries.count() != payload.len() {
            return false;
        }
        payload.iter().all(|(name, p)| {
            let path = dir.join(name);
            let same_mode =
                fs::metadata(&path).is_ok_and(|m| m.permissions().mode() & 0o7777 == p.mode);
            same_mode && fs::read(&path).is_ok_and(|bytes| bytes == p.content.bytes())
        })
    }

    fn remove_stale(&self, keep: &str, payload: &BTreeMap<String, FilePayload>) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let path = entry.path();
            if name.starts_with("..") {
                if name != keep && name != DATA_LINK && entry.file_type().is_ok_and(|t| t.is_dir())
                {
                    let _ = fs::remove_dir_all(&path);
                }
            } else if !payload.contains_key(name.as_ref())
                && fs::read_link(&path).is_ok_and(|t| t.starts_with(DATA_LINK))
            {
                let _ = fs::remove_file(&path);
            }
        }
    }
}

/// kura's own entries of a set: no top-level link.
fn is_internal(name: &str) -> bool {
    name.starts_with('.')
}

fn write_all(dir: &Path, payload: &BTreeMap<String, FilePayload>) -> Result<(), WriteError> {
    for (name, p) in payload {
        let path = dir.join(name);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(at(&path))?;
        f.write_all(p.content.bytes()).map_err(at(&path))?;
        f.sync_all().map_err(at(&path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(p.mode)).map_err(at(&path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(pairs: &[(&str, &str)]) -> BTreeMap<String, FilePayload> {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    FilePayload {
                        content: Content::new(v.as_bytes().to_vec()),
                        mode: 0o400,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn writes_swaps_and_cleans_up() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let w = AtomicWriter::new(tmp.path());
        assert!(!w.is_ready());
        assert!(
            w.write(&payload(&[("a", "1"), ("b", "2")]))
                .expect("first write")
        );
        assert!(w.is_ready());
        assert_eq!(fs::read_to_string(tmp.path().join("a")).expect("a"), "1");
        let mode = fs::metadata(tmp.path().join("a"))
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o400);
        assert!(
            !w.write(&payload(&[("a", "1"), ("b", "2")]))
                .expect("unchanged"),
            "same set is not rewritten"
        );
        assert!(
            w.write(&payload(&[("a", "3"), ("c", "4")]))
                .expect("second write")
        );
        assert_eq!(fs::read_to_string(tmp.path().join("a")).expect("a"), "3");
        assert_eq!(fs::read_to_string(tmp.path().join("c")).expect("c"), "4");
        assert!(
            fs::symlink_metadata(tmp.path().join("b")).is_err(),
            "dropped file's link is removed"
        );
        let dirs: Vec<_> = fs::read_dir(tmp.path())
            .expect("list")
            .flatten()
            .filter(|e| {
                e.file_name().to_string_lossy().starts_with("..")
                    && e.file_type().expect("type").is_dir()
            })
            .collect();
        assert_eq!(dirs.len(), 1, "old version directories are removed");
    }

    #[test]
    fn internal_entries_swap_with_the_set_without_a_link() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let w = AtomicWriter::new(tmp.path());
        w.write(&payload(&[("a", "1"), (".kura-env.json", "{}")]))
            .expect("write");
        assert_eq!(
            fs::read_to_string(tmp.path().join(DATA_LINK).join(".kura-env.json")).expect("read"),
            "{}"
        );
        assert!(fs::symlink_metadata(tmp.path().join(".kura-env.json")).is_err());
        assert!(
            w.write(&payload(&[("a", "1"), (".kura-env.json", "{\"A\":\"x\"}")]))
                .expect("a change of the internal entry alone is a new set")
        );
        assert_eq!(fs::read_to_string(tmp.path().join("a")).expect("a"), "1");
    }

    #[test]
    fn failure_keeps_the_previous_set() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let w = AtomicWriter::new(tmp.path());
        w.write(&payload(&[("a", "old")])).expect("first write");
        // A file name that cannot be created fails mid-set, like a full disk would.
        let mut bad = payload(&[("a", "new")]);
        bad.insert(
            "x/y".into(),
            FilePayload {
                content: Content::new(b"z".to_vec()),
                mode: 0o400,
            },
        );
        assert!(w.write(&bad).is_err());
        assert_eq!(fs::read_to_string(tmp.path().join("a")).expect("a"), "old");
        let leftovers = fs::read_dir(tmp.path()).expect("list").count();
        assert_eq!(
            leftovers, 3,
            "..data, its directory and the link to a; nothing half-written"
        );
    }
}
