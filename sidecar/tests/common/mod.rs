//! Helpers for the agent's integration tests: the real `kura-agent` binary as a child process,
//! specs, the scratch area it writes into, and polling. Moto and metrics scrapes are the
//! `testkit` crate, re-exported here.
#![allow(dead_code, clippy::unwrap_used)]

pub use testkit::*;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use kura_agent::agent::Agent;
use kura_agent::contract::{ENV_VALUES_FILE, env};
use kura_agent::spec::{
    DEFAULT_FILE_MODE, EnvFrom, EnvVar, FileMode, Format, Input, SPEC_VERSION, SecretFile, Spec,
    TemplateFile, split_reference,
};
use kura_agent::store::Store;
use kura_agent::writer::AtomicWriter;

pub const BIN: &str = env!("CARGO_BIN_EXE_kura-agent");

/// Log filter for agents under test: the agent's own debug lines too, so that the
/// "no value in the logs" checks cover them.
const LOG_FILTER: &str = "info,kura_agent=debug,aws_config=warn,aws_smithy_runtime=warn";

/// One file of a spec, unpinned, raw, mode 0400.
pub fn file(name: &str, secret: &str) -> SecretFile {
    SecretFile {
        file: name.into(),
        secret: secret.into(),
        key: None,
        version_stage: None,
        version_id: None,
        format: Format::Raw,
        mode: DEFAULT_FILE_MODE,
    }
}

pub fn with_key(mut f: SecretFile, key: &str) -> SecretFile {
    f.key = Some(key.into());
    f
}

pub fn with_format(mut f: SecretFile, format: Format) -> SecretFile {
    f.format = format;
    f
}

pub fn with_mode(mut f: SecretFile, mode: &str) -> SecretFile {
    f.mode = FileMode::parse(mode).unwrap();
    f
}

/// A `KURA_SPEC` as the webhook writes it.
pub fn spec(files: Vec<SecretFile>, interval_secs: u64, reload: Option<&str>) -> String {
    Spec {
        version: SPEC_VERSION.into(),
        agent: Default::default(),
        refresh_interval: interval_secs,
        reload: reload.map(|r| kura_agent::spec::Reload::parse(r).unwrap()),
        files,
        env: Vec::new(),
        env_from: Vec::new(),
        templates: Vec::new(),
    }
    .to_json()
}

/// A scratch area: the secrets directory, a termination log and a downward-API file.
pub struct Scratch {
    pub tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub termination_log: PathBuf,
    pub annotations: PathBuf,
}

impl Scratch {
    pub fn new() -> Scratch {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("secrets");
        fs::create_dir(&dir).unwrap();
        Scratch {
            termination_log: tmp.path().join("termination-log"),
            annotations: tmp.path().join("annotations"),
            dir,
            tmp,
        }
    }

    /// The content of a file the agent wrote, through its user-visible path.
    pub fn read(&self, name: &str) -> Option<String> {
        fs::read_to_string(self.dir.join(name)).ok()
    }

    pub fn read_bytes(&self, name: &str) -> Option<Vec<u8>> {
        fs::read(self.dir.join(name)).ok()
    }

    pub fn termination_message(&self) -> String {
        fs::read_to_string(&self.termination_log).unwrap_or_default()
    }

    /// Writes the downward-API annotations file the way the kubelet does: a new file renamed in.
    pub fn annotate(&self, lines: &str) {
        let tmp = self.annotations.with_extension("tmp");
        fs::write(&tmp, lines).unwrap();
        fs::rename(&tmp, &self.annotations).unwrap();
    }

    /// A `kura-agent <mode>` command writing into this scratch area, with a clean environment.
    pub fn command(&self, mode: &str, spec: &str) -> Command {
        let mut c = Command::new(BIN);
        c.arg(mode)
            .env_clear()
            .env(env::SPEC, spec)
            .env(env::DIR, &self.dir)
            .env(env::TERMINATION_LOG, &self.termination_log)
            .env(env::ANNOTATIONS_FILE, &self.annotations)
            .env("KURA_LOG", LOG_FILTER)
            .env(env::STORE_TIMEOUT, "5s");
        c
    }

    /// Runs `kura-agent init` to completion.
    pub fn init(&self, spec: &str, env: &[(String, String)]) -> (ExitStatus, String) {
        let out = self
            .command("init", spec)
            .envs(env.iter().cloned())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Starts `kura-agent run` in the background; its stderr goes to a file.
    pub fn run(&self, spec: &str, env: &[(String, String)], args: &[&str]) -> AgentProc {
        AgentProc::spawn(
            self.command("run", spec)
                .args(args)
                .envs(env.iter().cloned()),
            &self
                .tmp
                .path()
                .join(format!("agent-{}.log", fastrand::u32(..))),
        )
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

/// A running agent, killed on drop.
pub struct AgentProc {
    pub child: Child,
    pub log: PathBuf,
}

impl AgentProc {
    pub fn spawn(cmd: &mut Command, log: &Path) -> AgentProc {
        let err = fs::File::create(log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap();
        AgentProc {
            child,
            log: log.to_path_buf(),
        }
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.pid(), sig).unwrap();
    }

    /// Waits for the exit, at most `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The agent's log so far (JSON lines on stderr).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Asserts that none of `values` appears in the log. (Tests never read values *from* logs;
    /// they check that values are *not* there.)
    pub fn assert_log_free_of(&self, values: &[&str]) {
        let log = self.log();
        for v in values {
            assert!(
                !log.contains(v),
                "a secret value leaked into the log:\n{log}"
            );
        }
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
pub async fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Scratch {
    /// Waits up to 10 s for the agent's first write of `file`; fails with the agent's log.
    pub async fn expect_written(&self, agent: &AgentProc, file: &str) {
        assert!(
            eventually(Duration::from_secs(10), || self.read(file).is_some()).await,
            "{file} was not written within 10 s\n{}",
            agent.log()
        );
    }

    /// Waits up to `within` for `file` to hold `want`; fails with the agent's log.
    pub async fn expect_file(&self, agent: &AgentProc, file: &str, want: &str, within: Duration) {
        assert!(
            eventually(within, || self.read(file).as_deref() == Some(want)).await,
            "{file} did not get the expected content within {within:?}\n{}",
            agent.log()
        );
    }
}

/// A unique secret name for this test run.
pub fn name(prefix: &str) -> String {
    format!("/kura-test/{prefix}-{}", fastrand::u32(..))
}

/// An AWS store (Secrets Manager and SSM) for a moto `endpoint`, with a 10 s timeout.
pub async fn aws_store(endpoint: &str) -> kura_agent::store::AwsStore {
    kura_agent::store::AwsStore::for_endpoint(
        endpoint,
        "us-east-1",
        "testing",
        "testing",
        Duration::from_secs(10),
    )
    .await
}

/// A spec with nothing declared yet (push files, variables and templates onto it).
pub fn base_spec(interval_secs: u64) -> Spec {
    Spec {
        version: SPEC_VERSION.into(),
        agent: Default::default(),
        refresh_interval: interval_secs,
        reload: None,
        files: Vec::new(),
        env: Vec::new(),
        env_from: Vec::new(),
        templates: Vec::new(),
    }
}

/// `kura.dev/env.<NAME>: <reference>`, the reference as a pod writes it (`secret[#key]`).
pub fn env_var(name: &str, reference: &str) -> EnvVar {
    let (secret, key) = split_reference(reference).unwrap();
    EnvVar {
        name: name.into(),
        secret: secret.into(),
        key: key.map(Into::into),
        version_stage: None,
        version_id: None,
    }
}

/// `- envFrom: <reference>`.
pub fn env_from(reference: &str) -> EnvFrom {
    let (secret, key) = split_reference(reference).unwrap();
    EnvFrom {
        secret: secret.into(),
        key: key.map(Into::into),
        version_stage: None,
        version_id: None,
    }
}

/// `- file: <file>, inputs: {...}, template: <source>, mode: <mode>`.
pub fn template(file: &str, inputs: &[(&str, &str)], source: &str, mode: &str) -> TemplateFile {
    TemplateFile {
        file: file.into(),
        inputs: inputs
            .iter()
            .map(|(k, r)| (k.to_string(), Input::parse(r).unwrap()))
            .collect(),
        template: source.into(),
        mode: FileMode::parse(mode).unwrap(),
    }
}

impl Scratch {
    /// The environment values the agent wrote for `kura-agent exec`, read the way the wrapper
    /// reads them (under `..data`).
    pub fn env_values(&self) -> Option<BTreeMap<String, String>> {
        let bytes = fs::read(self.dir.join("..data").join(ENV_VALUES_FILE)).ok()?;
        Some(serde_json::from_slice(&bytes).unwrap())
    }

    /// The permission bits of a written file (through its link).
    pub fn mode(&self, name: &str) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(self.dir.join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    }
}

/// An in-process agent over `store`, writing into `dir`, for tests that drive refreshes one by
/// one.
pub fn agent(store: Store, dir: &Path, spec: Spec) -> Agent {
    Agent::new(spec, store, AtomicWriter::new(dir))
}
