//! The atomic writer under pressure: readers racing many swaps, a full tmpfs and an unwritable
//! directory, through the library and through the real binary. These use the local file store:
//! what is tested here happens after the fetch.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use kura_agent::render::Content;
use kura_agent::writer::{AtomicWriter, FilePayload};

const FILES: [&str; 3] = ["cert.pem", "key.pem", "chain.pem"];

/// The content of `file` in version `v`: a marker repeated to a size that varies with the
/// version, so a partial file or one from another version never passes [`check`].
fn content(file: &str, v: u64) -> Vec<u8> {
    let marker = format!("{file}@{v:08};");
    marker.repeat(400 + (v as usize % 13) * 97).into_bytes()
}

/// The version of a complete file, or `None` if it is partial or garbled.
fn check(file: &str, bytes: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(bytes).ok()?;
    let v: u64 = text
        .strip_prefix(file)?
        .strip_prefix('@')?
        .get(..8)?
        .parse()
        .ok()?;
    (content(file, v) == bytes).then_some(v)
}

fn set(v: u64) -> BTreeMap<String, FilePayload> {
    FILES
        .iter()
        .map(|f| {
            (
                f.to_string(),
                FilePayload {
                    content: Content::new(content(f, v)),
                    mode: 0o440,
                },
            )
        })
        .collect()
}

#[derive(Default)]
struct Seen {
    sets: AtomicU64,
    files: AtomicU64,
    versions: std::sync::Mutex<BTreeSet<u64>>,
    vanished: AtomicU64,
    vanished_files: AtomicU64,
    failures: std::sync::Mutex<Vec<String>>,
}

#[test]
fn readers_never_see_a_mix_or_a_partial_file_while_sets_swap() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let writer = AtomicWriter::new(&dir);
    writer.write(&set(0)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Seen::default());

    // A reader of the whole set, the way to read several files consistently: resolve `..data`
    // once and open every file under that one directory.
    let set_reader = {
        let (dir, stop, seen) = (dir.clone(), stop.clone(), seen.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Ok(target) = fs::read_link(dir.join("..data")) else {
                    seen.failures.lock().unwrap().push("..data missing".into());
                    continue;
                };
                let opened: Result<Vec<_>, _> = FILES
                    .iter()
                    .map(|f| fs::File::open(dir.join(&target).join(f)))
                    .collect();
                let mut opened = match opened {
                    Ok(o) => o,
                    // That set was replaced and removed before we opened it all: read again.
                    Err(e) if e.kind() == ErrorKind::NotFound => {
                        seen.vanished.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    Err(e) => panic!("{e}"),
                };
                let mut versions = BTreeSet::new();
                for (f, file) in FILES.iter().zip(&mut opened) {
                    let mut bytes = Vec::new();
                    file.read_to_end(&mut bytes).unwrap();
                    match check(f, &bytes) {
                        Some(v) => {
                            versions.insert(v);
                        }
                        None => seen
                            .failures
                            .lock()
                            .unwrap()
                            .push(format!("partial {f} in {target:?}")),
                    }
                }
                if versions.len() > 1 {
                    seen.failures
                        .lock()
                        .unwrap()
                        .push(format!("mixed set {versions:?} in {target:?}"));
                }
                seen.versions.lock().unwrap().extend(&versions);
                seen.sets.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // A reader of single files through the paths the app opens.
    let file_reader = {
        let (dir, stop, seen) = (dir.clone(), stop.clone(), seen.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for f in FILES {
                    match fs::read(dir.join(f)) {
                        Ok(bytes) => {
                            if check(f, &bytes).is_none() {
                                seen.failures
                                    .lock()
                                    .unwrap()
                                    .push(format!("partial {f} ({} bytes)", bytes.len()));
                            }
                            seen.files.fetch_add(1, Ordering::Relaxed);
                        }
                        // The kubelet's writer has the same window: the path was resolved to
                        // the previous directory just before it was removed. Not a mix.
                        Err(e) if e.kind() == ErrorKind::NotFound => {
                            seen.vanished_files.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
            }
        })
    };

    for v in 1..=400 {
        assert!(writer.write(&set(v)).unwrap());
        if v % 50 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    stop.store(true, Ordering::Relaxed);
    set_reader.join().unwrap();
    file_reader.join().unwrap();

    let failures = seen.failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} failures: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    let sets = seen.sets.load(Ordering::Relaxed);
    let files = seen.files.load(Ordering::Relaxed);
    let versions = seen.versions.lock().unwrap().len();
    println!(
        "{sets} consistent sets and {files} files read across {versions} versions; \
         retried: {} sets, {} files",
        seen.vanished.load(Ordering::Relaxed),
        seen.vanished_files.load(Ordering::Relaxed),
    );
    assert!(sets >= 50 && files >= 50, "the readers raced the writer");
    assert!(versions >= 10, "the readers saw the sets change");
    // Only the last set is left.
    let dirs = fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().unwrap().is_dir())
        .count();
    assert_eq!(dirs, 1);
    for f in FILES {
        assert_eq!(check(f, &fs::read(dir.join(f)).unwrap()), Some(400));
    }
}

/// A small tmpfs mounted for a test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if out.status.success() {
            Ok(Tmpfs(dir.to_path_buf()))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

const IN_USERNS: &str = "KURA_TEST_IN_USERNS";

/// Runs `body` with a 64 KiB tmpfs. Mounting needs root (CAP_SYS_ADMIN); without it the test
/// runs itself again in a new user and mount namespace (`unshare -Urm`), where it may mount.
/// When neither works, the test says why and skips.
fn on_small_tmpfs(test: &str, body: impl FnOnce(&Path)) {
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let mnt = tmp.path().join("tmpfs");
    fs::create_dir(&mnt).unwrap();
    match Tmpfs::mount(&mnt, "64k") {
        Ok(guard) => {
            body(&mnt);
            drop(guard);
        }
        Err(why) if std::env::var_os(IN_USERNS).is_none() => {
            let out = Command::new("unshare")
                .args(["--user", "--map-root-user", "--mount"])
                .arg(std::env::current_exe().unwrap())
                .args([test, "--exact", "--nocapture", "--test-threads=1"])
                .env(IN_USERNS, "1")
                .output();
            match out {
                Ok(o) if o.status.success() => {
                    let stdout = String::from_utf8_lossy(&o.stdout);
                    assert!(stdout.contains("1 passed"), "{stdout}");
                    println!("ran in a user namespace (mount here: {why})");
                }
                Ok(o) if o.status.code() == Some(101) => panic!(
                    "failed in a user namespace:\n{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ),
                Ok(o) => println!(
                    "SKIPPED {test}: cannot mount a tmpfs ({why}) nor unshare a user namespace ({})",
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
                Err(e) => {
                    println!("SKIPPED {test}: cannot mount a tmpfs ({why}) and no unshare ({e})")
                }
            }
        }
        Err(why) => println!("SKIPPED {test}: no tmpfs even in a user namespace: {why}"),
    }
}

/// Directories and links in `dir`, as `(name, is_dir)`.
fn entries(dir: &Path) -> BTreeSet<(String, bool)> {
    fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.file_type().unwrap().is_dir(),
            )
        })
        .collect()
}

#[test]
fn a_full_tmpfs_keeps_the_previous_set_and_names_the_path() {
    on_small_tmpfs(
        "a_full_tmpfs_keeps_the_previous_set_and_names_the_path",
        |mnt| {
            let w = AtomicWriter::new(mnt);
            let small = |s: &str| -> BTreeMap<String, FilePayload> {
                [("a", s), ("b", s)]
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
            };
            assert!(w.write(&small("old")).unwrap());
            let before = entries(mnt);

            let mut big = small("new");
            big.insert(
                "c".into(),
                FilePayload {
                    content: Content::new(vec![b'x'; 100 * 1024]),
                    mode: 0o400,
                },
            );
            let err = w.write(&big).expect_err("100 KiB do not fit in 64 KiB");
            assert_eq!(err.source.raw_os_error(), Some(28), "ENOSPC: {err}");
            assert!(err.path.starts_with(mnt), "{err}");
            assert!(
                err.to_string().contains(&mnt.display().to_string()),
                "{err}"
            );
            for f in ["a", "b"] {
                assert_eq!(fs::read_to_string(mnt.join(f)).unwrap(), "old");
            }
            assert_eq!(entries(mnt), before, "nothing half-written is left");

            // The space came back: the next set that fits is written.
            assert!(w.write(&small("newer")).unwrap());
            assert_eq!(fs::read_to_string(mnt.join("a")).unwrap(), "newer");
        },
    );
}

fn store_yaml(path: &Path, secret: &str, value: &str) {
    let doc = serde_json::json!({ "secrets": [ { "name": secret, "value": value } ] });
    // JSON is YAML; write a new file and rename it in, as an editor would.
    let tmp = path.with_extension("new");
    fs::write(&tmp, doc.to_string()).unwrap();
    fs::rename(&tmp, path).unwrap();
}

#[test]
fn agent_on_a_full_tmpfs_keeps_files_reports_and_recovers() {
    on_small_tmpfs(
        "agent_on_a_full_tmpfs_keeps_files_reports_and_recovers",
        |mnt| {
            // The store, the termination log and the log live outside the small tmpfs.
            let aux = tempfile::tempdir().unwrap();
            let store = aux.path().join("store.yaml");
            let termination_log = aux.path().join("termination-log");
            store_yaml(&store, "/disk/db", "small-1");
            let spec = spec(
                vec![file("db", "/disk/db"), file("db-copy", "/disk/db")],
                2,
                None,
            );
            let agent = |mode: &str| {
                let mut c = Command::new(BIN);
                c.arg(mode)
                    .env_clear()
                    .env("KURA_SPEC", &spec)
                    .env("KURA_DIR", mnt)
                    .env("KURA_STORE", format!("file:{}", store.display()))
                    .env("KURA_TERMINATION_LOG", &termination_log);
                c
            };
            let ok = agent("init").stderr(Stdio::null()).status().unwrap();
            assert!(ok.success());
            assert_eq!(fs::read_to_string(mnt.join("db")).unwrap(), "small-1");
            let before = entries(mnt);

            // Two copies of 40 KiB do not fit in 64 KiB.
            let big = format!("big-2{}", "x".repeat(40 * 1024));
            store_yaml(&store, "/disk/db", &big);
            let failed = agent("init").stderr(Stdio::null()).status().unwrap();
            assert_eq!(failed.code(), Some(1));
            let msg = fs::read_to_string(&termination_log).unwrap();
            assert!(
                msg.contains(&mnt.display().to_string()) && msg.contains("No space left on device"),
                "{msg}"
            );
            assert!(!msg.contains("xxxx"), "{msg}");
            assert_eq!(fs::read_to_string(mnt.join("db")).unwrap(), "small-1");
            assert_eq!(fs::read_to_string(mnt.join("db-copy")).unwrap(), "small-1");
            assert_eq!(entries(mnt), before, "nothing half-written is left");

            // `run` keeps the set, counts the failed writes, and recovers once it fits.
            let port = moto::free_port();
            let log = aux.path().join("agent.log");
            let mut run = AgentProc::spawn(
                agent("run").args(["--metrics-listen", &format!("127.0.0.1:{port}")]),
                &log,
            );
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                assert!(
                    eventually(Duration::from_secs(10), || metric(
                        port,
                        "kura_agent_errors_total{kind=\"write\"}"
                    ) >= 2.0)
                    .await,
                    "{}",
                    run.log()
                );
                assert!(run.is_running());
                assert_eq!(fs::read_to_string(mnt.join("db")).unwrap(), "small-1");
                store_yaml(&store, "/disk/db", "small-3");
                assert!(
                    eventually(Duration::from_secs(10), || fs::read_to_string(
                        mnt.join("db")
                    )
                    .is_ok_and(|v| v == "small-3"))
                    .await,
                    "{}",
                    run.log()
                );
            });
            assert_eq!(fs::read_to_string(mnt.join("db-copy")).unwrap(), "small-3");
            run.assert_log_free_of(&["small-1", "small-3", "big-2"]);
        },
    );
}

const AGENT_UID: u32 = 65534;

fn is_root() -> bool {
    fs::metadata("/proc/self").unwrap().uid() == 0
}

/// An unwritable directory, for real: as root, permissions do not apply, so the agent runs as
/// an unprivileged user (as it does in a pod: the webhook runs it as the app's uid) through
/// `setpriv`; as another user, a 0555 directory is enough.
#[test]
fn an_unwritable_directory_keeps_the_previous_set_and_files_belong_to_the_agent_user() {
    let root = is_root();
    if root && Command::new("setpriv").arg("--version").output().is_err() {
        println!("SKIPPED: running as root without setpriv, so no real unwritable directory");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let dir = tmp.path().join("secrets");
    let aux = tmp.path().join("aux");
    fs::create_dir(&dir).unwrap();
    fs::create_dir(&aux).unwrap();
    let uid = if root {
        for d in [&dir, &aux] {
            std::os::unix::fs::chown(d, Some(AGENT_UID), Some(AGENT_UID)).unwrap();
        }
        AGENT_UID
    } else {
        fs::metadata("/proc/self").unwrap().uid()
    };
    let store = tmp.path().join("store.yaml");
    store_yaml(&store, "/perm/db", "perm-1");
    fs::set_permissions(&store, fs::Permissions::from_mode(0o644)).unwrap();
    let termination_log = aux.join("termination-log");
    let spec = spec(vec![with_mode(file("db", "/perm/db"), "0440")], 2, None);
    let agent = |mode: &str| {
        let mut c = if root {
            let mut c = Command::new("setpriv");
            c.args([
                &format!("--reuid={AGENT_UID}"),
                &format!("--regid={AGENT_UID}"),
                "--clear-groups",
                "--",
                BIN,
            ]);
            c
        } else {
            Command::new(BIN)
        };
        c.arg(mode)
            .env_clear()
            .env("KURA_SPEC", &spec)
            .env("KURA_DIR", &dir)
            .env("KURA_STORE", format!("file:{}", store.display()))
            .env("KURA_TERMINATION_LOG", &termination_log);
        c
    };

    assert!(
        agent("init")
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    );
    // Ownership: the agent's uid (and gid); mode from the spec; a 0750 version directory.
    let m = fs::metadata(dir.join("db")).unwrap();
    assert_eq!((m.uid(), m.permissions().mode() & 0o7777), (uid, 0o440));
    if root {
        assert_eq!(m.gid(), AGENT_UID);
    }
    let version_dir = fs::metadata(dir.join("..data")).unwrap();
    assert_eq!(
        (version_dir.uid(), version_dir.permissions().mode() & 0o7777),
        (uid, 0o750)
    );
    let before = entries(&dir);

    fs::set_permissions(&dir, fs::Permissions::from_mode(0o555)).unwrap();
    store_yaml(&store, "/perm/db", "perm-2");
    fs::set_permissions(&store, fs::Permissions::from_mode(0o644)).unwrap();
    let failed = agent("init").stderr(Stdio::null()).status().unwrap();
    assert_eq!(failed.code(), Some(1));
    let msg = fs::read_to_string(&termination_log).unwrap();
    assert!(
        msg.contains(&dir.display().to_string()) && msg.contains("Permission denied"),
        "{msg}"
    );
    assert_eq!(fs::read_to_string(dir.join("db")).unwrap(), "perm-1");
    assert_eq!(entries(&dir), before);

    // `run` keeps the set while it cannot write, and writes once it can.
    let port = moto::free_port();
    let mut run = AgentProc::spawn(
        agent("run").args(["--metrics-listen", &format!("127.0.0.1:{port}")]),
        &tmp.path().join("agent.log"),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        assert!(
            eventually(Duration::from_secs(10), || metric(
                port,
                "kura_agent_errors_total{kind=\"write\"}"
            ) >= 1.0)
            .await,
            "{}",
            run.log()
        );
        assert!(run.is_running());
        assert_eq!(fs::read_to_string(dir.join("db")).unwrap(), "perm-1");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(
            eventually(Duration::from_secs(10), || fs::read_to_string(
                dir.join("db")
            )
            .is_ok_and(|v| v == "perm-2"))
            .await,
            "{}",
            run.log()
        );
    });
    assert_eq!(fs::metadata(dir.join("db")).unwrap().uid(), uid);
}
