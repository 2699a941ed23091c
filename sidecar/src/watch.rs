//! The one file-change watcher of kura: the webhook's certificate and policy reloads and the
//! local file store all notice a change the same way.
//!
//! A change is a different modification time or length, read by polling the file's metadata.
//! Kubernetes updates Secret and ConfigMap volumes by swapping a `..data` symlink, which a poll
//! through the link sees without inotify's subtleties (watches on replaced inodes, missed
//! events on the swapped directory).

use std::fs::Metadata;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// How often the webhook polls its certificate and policy files unless told otherwise.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);

/// What a metadata poll sees of a file; a missing file has a stamp of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp(Option<(SystemTime, u64)>);

impl Stamp {
    /// The stamp of the file at `path` now.
    pub fn of(path: &Path) -> Stamp {
        std::fs::metadata(path)
            .map(|m| Stamp::from_metadata(&m))
            .unwrap_or(Stamp(None))
    }

    /// The stamp of metadata already read.
    pub fn from_metadata(m: &Metadata) -> Stamp {
        Stamp(Some((
            m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            m.len(),
        )))
    }
}

/// Polls a set of files and reports when any of them changed.
#[derive(Debug)]
pub struct FileWatch {
    files: Vec<(PathBuf, Stamp)>,
    every: Duration,
}

impl FileWatch {
    /// Watches `paths` from their state now, polling every `every`.
    pub fn new(paths: impl IntoIterator<Item = PathBuf>, every: Duration) -> FileWatch {
        let files = paths
            .into_iter()
            .map(|p| {
                let s = Stamp::of(&p);
                (p, s)
            })
            .collect();
        FileWatch { files, every }
    }

    /// Waits until a file's stamp differs from the one last seen, and remembers the new ones.
    pub async fn changed(&mut self) {
        loop {
            tokio::time::sleep(self.every).await;
            if self.poll() {
                return;
            }
        }
    }

    /// Reads the stamps once; true when any differs from the one last seen.
    pub fn poll(&mut self) -> bool {
        let mut changed = false;
        for (path, last) in &mut self.files {
            let now = Stamp::of(path);
            if now != *last {
                *last = now;
                changed = true;
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_of_length_or_existence_is_seen_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::write(&a, "one").expect("write");
        let mut w = FileWatch::new([a.clone(), b.clone()], DEFAULT_INTERVAL);
        assert!(!w.poll());
        std::fs::write(&a, "three").expect("write");
        assert!(w.poll());
        assert!(!w.poll(), "a change is reported once");
        std::fs::write(&b, "new").expect("write");
        assert!(w.poll(), "a file that appears is a change");
        std::fs::remove_file(&a).expect("remove");
        assert!(w.poll(), "a file that disappears is a change");
    }

    #[tokio::test]
    async fn changed_returns_after_the_poll_that_sees_the_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a");
        let mut w = FileWatch::new([a.clone()], Duration::from_millis(10));
        std::fs::write(&a, "x").expect("write");
        tokio::time::timeout(Duration::from_secs(1), w.changed())
            .await
            .expect("the change is seen within a few polls");
    }
}
