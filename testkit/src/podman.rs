//! Real OCI containers for the tests, with podman (no Docker engine, no registry).
//!
//! - [`available`]: whether a container can run here at all (the one reason tests skip).
//! - [`Image::build`]: the image a Dockerfile in `docker/` describes, reproduced from local files:
//!   the Dockerfile's final stage taken line by line, with its distroless base replaced by the
//!   files that base contributes (the C libraries the binary links, the CA bundle, `passwd` and
//!   `group` with the numeric nonroot user, `/tmp`, `/home/nonroot`; no shell) and its `COPY
//!   --from=build` taking the binary the test command built.
//! - [`PodRun`]: a pod as the kubelet would run it from a (patched) Pod object: shared
//!   loopback, a shared PID namespace when `shareProcessNamespace` is set, `emptyDir` memory
//!   volumes as tmpfs volumes of their `sizeLimit`, downward-API annotation files, each
//!   container's command, args, env, user, group, read-only root, capabilities, no-new-privileges
//!   and memory limit.
//!
//! podman reads `$CONTAINERS_CONF`; `scripts/test` points it at `scripts/containers.conf`
//! (runc, cgroupfs, ulimits this VM allows).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;

use crate::workspace_root;

/// Runs podman and returns its output; panics (with stderr) when it fails.
pub fn podman(args: &[&str]) -> String {
    let out = podman_output(args);
    assert!(
        out.status.success(),
        "podman {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs podman and returns its output, whatever its status.
pub fn podman_output(args: &[&str]) -> Output {
    podman_command().args(args).output().expect("podman runs")
}

/// podman with `scripts/containers.conf` unless `$CONTAINERS_CONF` names another.
fn podman_command() -> Command {
    let mut cmd = Command::new("podman");
    if std::env::var_os("CONTAINERS_CONF").is_none() {
        cmd.env(
            "CONTAINERS_CONF",
            workspace_root().join("scripts/containers.conf"),
        );
    }
    cmd
}

/// `Err(reason)` when no container can run on this machine: podman missing or unable to reach
/// its runtime, or not root (the kubelet's part needs it). The tests print the reason and skip
/// only then; any later failure is a failure.
pub fn available() -> Result<(), String> {
    let uid = Command::new("id").arg("-u").output().expect("id runs");
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Err(
            "the pod harness mounts tmpfs volumes and projects files as the kubelet \
                    does, which needs root"
                .into(),
        );
    }
    let probe = podman_command()
        .args(["info", "--format", "{{.Host.OCIRuntime.Name}}"])
        .output()
        .map_err(|e| format!("podman: {e} (scripts/test installs it)"))?;
    if !probe.status.success() {
        return Err(format!(
            "podman does not work here: {}",
            String::from_utf8_lossy(&probe.stderr).trim()
        ));
    }
    Ok(())
}

/// The final stage of a Dockerfile, as the tests compare and reproduce it.
#[derive(Debug, Clone, PartialEq)]
pub struct FinalStage {
    /// `FROM` of the final stage.
    pub base: String,
    /// Every instruction after `FROM`, continuation lines joined, comments dropped.
    pub instructions: Vec<String>,
}

impl FinalStage {
    pub fn read(dockerfile: &Path) -> FinalStage {
        let text = std::fs::read_to_string(dockerfile)
            .unwrap()
            .replace("\\\n", " ");
        let lines: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        let last = lines
            .iter()
            .rposition(|l| l.starts_with("FROM "))
            .expect("a FROM");
        FinalStage {
            base: lines[last]["FROM ".len()..].to_string(),
            instructions: lines[last + 1..].to_vec(),
        }
    }

    /// The last value of an instruction (`USER`, `ENTRYPOINT`, ...).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.instructions
            .iter()
            .rev()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
    }

    /// The binary the stage copies from the build stage: (source, destination).
    pub fn binary(&self) -> (String, String) {
        let copy = self
            .instructions
            .iter()
            .find(|l| l.starts_with("COPY --from=build "))
            .expect("COPY --from=build");
        let words: Vec<&str> = copy.split_whitespace().collect();
        (
            words[words.len() - 2].to_string(),
            words[words.len() - 1].to_string(),
        )
    }
}

/// A local image built from a Dockerfile's final stage.
#[derive(Debug, Clone)]
pub struct Image {
    /// `localhost/<name>:test-<hash of the binary and the Containerfile>`
    pub tag: String,
    pub stage: FinalStage,
    /// The C libraries the binary links, as put into the image.
    pub libraries: Vec<PathBuf>,
}

/// The CA bundle Debian's `ca-certificates` writes, where distroless has it too.
pub const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

impl Image {
    /// Builds `docker/<name>.Dockerfile`'s final stage around `binary`, tagged
    /// `localhost/<name>:test-<hash>`.
    pub fn build(name: &str, binary: &Path) -> Image {
        let dockerfile = workspace_root().join(format!("docker/{name}.Dockerfile"));
        Image::assemble(name, FinalStage::read(&dockerfile), binary)
    }

    /// Builds `stage` (whose `COPY --from=build` names the binary) around `binary`, on the files
    /// distroless/cc contributes, tagged `localhost/<name>:test-<hash>`.
    pub fn assemble(name: &str, stage: FinalStage, binary: &Path) -> Image {
        let ctx = tempfile::tempdir().unwrap();
        let root = ctx.path().join("rootfs");
        let libraries = linked_libraries(binary);
        for lib in &libraries {
            copy_into(&root, lib);
        }
        copy_into(&root, Path::new(CA_BUNDLE));
        // distroless/base's passwd and group: root, nobody and the numeric nonroot user.
        write(
            &root.join("etc/passwd"),
            "root:x:0:0:root:/root:/sbin/nologin\n\
             nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n\
             nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n",
        );
        write(
            &root.join("etc/group"),
            "root:x:0:\nnobody:x:65534:\ntty:x:5:\nstaff:x:50:\nnonroot:x:65532:\n",
        );
        for dir in ["tmp", "home/nonroot"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        std::fs::create_dir_all(ctx.path().join("bin")).unwrap();
        let (src, _) = stage.binary();
        let local_src = format!("bin{src}");
        std::fs::copy(binary, ctx.path().join(&local_src)).unwrap();

        let mut file = String::from("FROM scratch\nCOPY rootfs/ /\n");
        for l in &stage.instructions {
            let l = if l.starts_with("COPY --from=build ") {
                l.replacen("COPY --from=build ", "COPY ", 1).replacen(
                    &format!(" {src} "),
                    &format!(" {local_src} "),
                    1,
                )
            } else {
                l.clone()
            };
            file.push_str(&l);
            file.push('\n');
        }
        write(&ctx.path().join("Containerfile"), &file);
        // Named by content, so that test runs in other worktrees on this machine (podman's
        // storage is shared) never swap an image under this one.
        let mut h = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(&std::fs::read(binary).unwrap(), &mut h);
        std::hash::Hash::hash(&file, &mut h);
        let tag = format!(
            "localhost/{name}:test-{:016x}",
            std::hash::Hasher::finish(&h)
        );
        let ctx_dir = ctx.path().to_str().unwrap();
        let out = podman_output(&["build", "--quiet", "-t", &tag, ctx_dir]);
        assert!(
            out.status.success(),
            "building {tag}:\n{file}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Image {
            tag,
            stage,
            libraries,
        }
    }

    /// `podman image inspect` of the image.
    pub fn inspect(&self) -> Value {
        let v: Value = serde_json::from_str(&podman(&["image", "inspect", &self.tag])).unwrap();
        v[0].clone()
    }

    /// Every path in the image with its mode (octal) and owner: `(path, "mode uid:gid")`.
    pub fn files(&self) -> BTreeMap<String, String> {
        let dir = tempfile::tempdir().unwrap();
        let tar = dir.path().join("image.tar");
        let cid = podman(&["create", &self.tag]).trim().to_string();
        podman(&["export", "-o", tar.to_str().unwrap(), &cid]);
        podman(&["rm", &cid]);
        let out = Command::new("tar")
            .args(["--numeric-owner", "-tvf", tar.to_str().unwrap()])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                // drwxrwxrwt 0/0 0 2026-01-01 00:00 tmp/
                let w: Vec<&str> = l.split_whitespace().collect();
                let path = format!("/{}", w.get(5)?.trim_end_matches('/'));
                Some((path, format!("{} {}", w[0], w[1].replace('/', ":"))))
            })
            .collect()
    }
}

/// The shared libraries `binary` loads (ldd), the loader included.
pub fn linked_libraries(binary: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(binary).output().expect("ldd runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')))
        .map(PathBuf::from)
        .collect()
}

fn copy_into(root: &Path, file: &Path) {
    let dest = root.join(file.strip_prefix("/").unwrap());
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::copy(file, &dest).unwrap_or_else(|e| panic!("copying {}: {e}", file.display()));
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A Kubernetes quantity (`32Mi`, `4Mi`, `64M`, `1Gi`, plain bytes) in bytes.
pub fn quantity_bytes(q: &str) -> u64 {
    let units = [
        ("Ki", 1u64 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("k", 1000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ];
    for (suffix, mul) in units {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<u64>().expect("a quantity") * mul;
        }
    }
    q.parse().expect("a quantity")
}

static PODS: AtomicU64 = AtomicU64::new(0);

/// A pod run with podman from a Pod object, removed (with its tmpfs volumes) on drop.
pub struct PodRun {
    pub name: String,
    pod: Value,
    /// emptyDir memory volumes: tmpfs mounts under `host_dir`.
    tmpfs: Vec<PathBuf>,
    /// emptyDir disk volumes: plain directories under `host_dir`.
    scratch: Vec<PathBuf>,
    /// Host directory for downward-API files, termination logs and tmpfs volumes; a directory
    /// `<volume name>` the test puts here stands for any other volume (a Secret, a ConfigMap),
    /// mounted read-only.
    pub host_dir: tempfile::TempDir,
}

impl PodRun {
    /// Creates the pod (its network reaches the host's loopback as 10.0.2.2, the way a pod
    /// reaches a node-local endpoint) and its volumes. The Pod's images must be local ones
    /// (`localhost/...`: the webhook's `--agent-image`, the app's `image`).
    pub fn create(pod: &Value) -> PodRun {
        PodRun::create_publishing(pod, &[])
    }

    /// Like [`PodRun::create`], with `(host loopback port, container port)` pairs published, as
    /// the node reaches a pod's ports (probes, the API server calling a webhook).
    pub fn create_publishing(pod: &Value, ports: &[(u16, u16)]) -> PodRun {
        let name = format!(
            "kura-test-{}-{}",
            std::process::id(),
            PODS.fetch_add(1, Ordering::Relaxed)
        );
        let spec = &pod["spec"];
        let mut share = String::from("net,ipc,uts");
        if spec["shareProcessNamespace"] == true {
            share.push_str(",pid");
        }
        let mut args: Vec<String> = [
            "pod",
            "create",
            "--name",
            &name,
            "--network",
            "slirp4netns:allow_host_loopback=true",
            "--share",
            &share,
        ]
        .map(String::from)
        .to_vec();
        for (host, container) in ports {
            args.push(format!("--publish=127.0.0.1:{host}:{container}"));
        }
        podman(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let mut run = PodRun {
            name,
            pod: pod.clone(),
            tmpfs: Vec::new(),
            scratch: Vec::new(),
            host_dir: tempfile::tempdir().unwrap(),
        };
        let fs_group = spec["securityContext"]["fsGroup"].as_i64();
        for v in spec["volumes"].as_array().into_iter().flatten() {
            let vname = v["name"].as_str().unwrap();
            if v["emptyDir"]["medium"] == "Memory" {
                let size = v["emptyDir"]["sizeLimit"]
                    .as_str()
                    .map_or(64 << 20, quantity_bytes);
                // As the kubelet makes an emptyDir: world-writable, or group-owned by fsGroup
                // with the setgid bit.
                let opts = match fs_group {
                    Some(g) => format!("size={size},mode=2777,gid={g}"),
                    None => format!("size={size},mode=0777"),
                };
                // As the kubelet does: a tmpfs mounted on the node, bind-mounted into the
                // containers (needs root, as the kubelet does).
                let dir = run.host_dir.path().join(vname);
                std::fs::create_dir_all(&dir).unwrap();
                let out = Command::new("mount")
                    .args(["-t", "tmpfs", "-o", &opts, "tmpfs"])
                    .arg(&dir)
                    .output()
                    .expect("mount runs");
                assert!(
                    out.status.success(),
                    "mounting the tmpfs for {vname}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                run.tmpfs.push(dir);
            } else if v.get("emptyDir").is_some() {
                // A disk emptyDir (kura-bin): a node directory, world-writable as the kubelet
                // makes it (or group-owned by fsGroup with the setgid bit).
                use std::os::unix::fs::PermissionsExt;
                let dir = run.host_dir.path().join(vname);
                std::fs::create_dir_all(&dir).unwrap();
                let mode = match fs_group {
                    Some(g) => {
                        std::os::unix::fs::chown(&dir, None, Some(g as u32)).unwrap();
                        0o2777
                    }
                    None => 0o777,
                };
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
                run.scratch.push(dir);
            } else if let Some(items) = v["downwardAPI"]["items"].as_array() {
                let dir = run.host_dir.path().join(vname);
                std::fs::create_dir_all(&dir).unwrap();
                for item in items {
                    let field = item["fieldRef"]["fieldPath"].as_str().unwrap();
                    assert_eq!(field, "metadata.annotations", "downward API field {field}");
                    let text: String = pod["metadata"]["annotations"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, v)| format!("{k}={}\n", Value::from(v.as_str().unwrap())))
                        .collect();
                    write(&dir.join(item["path"].as_str().unwrap()), &text);
                }
            }
        }
        run
    }

    /// The container object named `name` (init or app container).
    pub fn container(&self, name: &str) -> &Value {
        let spec = &self.pod["spec"];
        spec["initContainers"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(spec["containers"].as_array().into_iter().flatten())
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no container {name} in the pod"))
    }

    /// The podman name of a container of this pod.
    pub fn cname(&self, name: &str) -> String {
        format!("{}-{name}", self.name)
    }

    /// Starts the container `name` detached, as its Pod entry says; `env` adds to (and
    /// overrides) its env, as a stand-in for what the cluster would provide (AWS endpoint and
    /// credentials).
    pub fn start(&self, name: &str, env: &[(String, String)]) {
        let c = self.container(name);
        let spec = &self.pod["spec"];
        let pod_sc = &spec["securityContext"];
        let sc = &c["securityContext"];
        let field = |k: &str| sc[k].as_i64().or_else(|| pod_sc[k].as_i64());
        let mut args: Vec<String> = vec![
            "run".into(),
            "--detach".into(),
            "--pod".into(),
            self.name.clone(),
            "--name".into(),
            self.cname(name),
        ];
        if let Some(uid) = field("runAsUser") {
            let gid = field("runAsGroup").unwrap_or(0);
            args.push(format!("--user={uid}:{gid}"));
        }
        if sc["runAsNonRoot"] == true || pod_sc["runAsNonRoot"] == true {
            assert_ne!(
                field("runAsUser"),
                Some(0),
                "{name}: runAsNonRoot with uid 0"
            );
        }
        if let Some(g) = pod_sc["fsGroup"].as_i64() {
            args.push(format!("--group-add={g}"));
        }
        if sc["readOnlyRootFilesystem"] == true {
            args.push("--read-only".into());
            // The kubelet's /dev is a tmpfs, writable; podman's --read-only keeps /dev writable too.
        }
        if sc["allowPrivilegeEscalation"] == false {
            args.push("--security-opt=no-new-privileges".into());
        }
        for cap in sc["capabilities"]["drop"].as_array().into_iter().flatten() {
            args.push(format!("--cap-drop={}", cap.as_str().unwrap()));
        }
        if sc["privileged"] == true {
            args.push("--privileged".into());
        }
        // RuntimeDefault: podman's default seccomp profile, which is what runs without an option.
        if let Some(mem) = c["resources"]["limits"]["memory"].as_str() {
            args.push(format!("--memory={}", quantity_bytes(mem)));
            args.push("--memory-swap=-1".into());
        }
        for e in c["env"].as_array().into_iter().flatten() {
            let (k, v) = (e["name"].as_str().unwrap(), e["value"].as_str());
            if env.iter().any(|(n, _)| n == k) {
                continue;
            }
            let v = v.unwrap_or_else(|| panic!("{name}: env {k} is not a literal"));
            args.push(format!("--env={k}={v}"));
        }
        for (k, v) in env {
            args.push(format!("--env={k}={v}"));
        }
        // The kubelet's termination log, writable under a read-only root.
        let tlog = self.host_dir.path().join(format!("{name}.termination-log"));
        write(&tlog, "");
        let path = c["terminationMessagePath"]
            .as_str()
            .unwrap_or("/dev/termination-log");
        args.push(format!("--volume={}:{path}:rw", tlog.display()));
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            let vname = m["name"].as_str().unwrap();
            let target = m["mountPath"].as_str().unwrap();
            let ro = if m["readOnly"] == true { "ro" } else { "rw" };
            let dir = self.host_dir.path().join(vname);
            if self.tmpfs.contains(&dir) || self.scratch.contains(&dir) {
                args.push(format!("--volume={}:{target}:{ro}", dir.display()));
            } else if dir.is_dir() {
                args.push(format!("--volume={}:{target}:ro", dir.display()));
            } else {
                panic!("{name}: volume {vname} is not modelled by the test pod");
            }
        }
        let command: Vec<&str> = c["command"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| v.as_str().unwrap())
            .collect();
        if let Some((first, _)) = command.split_first() {
            args.push(format!("--entrypoint={first}"));
        }
        args.push(c["image"].as_str().unwrap().to_string());
        args.extend(command.iter().skip(1).map(|s| s.to_string()));
        args.extend(
            c["args"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| v.as_str().unwrap().to_string()),
        );
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        podman(&refs);
    }

    /// Runs a command in a running container (a probe); its exit status.
    pub fn exec(&self, name: &str, command: &[&str]) -> bool {
        let cname = self.cname(name);
        let mut args = vec!["exec", cname.as_str()];
        args.extend_from_slice(command);
        podman_output(&args).status.success()
    }

    /// The container's logs (stdout and stderr).
    pub fn logs(&self, name: &str) -> String {
        let out = podman_output(&["logs", &self.cname(name)]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// A field of `podman inspect` of the container (Go template).
    pub fn inspect(&self, name: &str, format: &str) -> String {
        podman(&["inspect", "--format", format, &self.cname(name)])
            .trim()
            .to_string()
    }

    /// The container's peak memory use in bytes, from its cgroup (v1 `max_usage_in_bytes`,
    /// v2 `memory.peak`): what the memory limit is enforced against, tmpfs pages it wrote
    /// included.
    pub fn peak_memory(&self, name: &str) -> u64 {
        let pid = self.inspect(name, "{{.State.Pid}}");
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        for line in cgroups.lines() {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) =
                (parts.next(), parts.next().unwrap(), parts.next().unwrap());
            let candidates = if controllers.split(',').any(|c| c == "memory") {
                vec![format!(
                    "/sys/fs/cgroup/memory{path}/memory.max_usage_in_bytes"
                )]
            } else if controllers.is_empty() {
                vec![format!("/sys/fs/cgroup{path}/memory.peak")]
            } else {
                continue;
            };
            for c in candidates {
                if let Ok(text) = std::fs::read_to_string(&c) {
                    return text.trim().parse().unwrap();
                }
            }
        }
        panic!("no memory cgroup for {name} (pid {pid}): {cgroups}");
    }

    /// Sends a signal to the container's main process (as the kubelet does through the runtime).
    pub fn kill(&self, name: &str, signal: &str) {
        podman(&["kill", "--signal", signal, &self.cname(name)]);
    }

    /// The termination log the container wrote.
    pub fn termination_message(&self, name: &str) -> String {
        std::fs::read_to_string(self.host_dir.path().join(format!("{name}.termination-log")))
            .unwrap_or_default()
    }
}

impl Drop for PodRun {
    fn drop(&mut self) {
        let _ = podman_output(&["pod", "rm", "--force", "--time", "0", &self.name]);
        for dir in &self.tmpfs {
            let _ = Command::new("umount").arg(dir).status();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(quantity_bytes("32Mi"), 32 << 20);
        assert_eq!(quantity_bytes("4Mi"), 4 << 20);
        assert_eq!(quantity_bytes("64M"), 64_000_000);
        assert_eq!(quantity_bytes("1Gi"), 1 << 30);
        assert_eq!(quantity_bytes("1024"), 1024);
    }

    #[test]
    fn the_final_stage_of_the_agent_dockerfile() {
        let stage = FinalStage::read(&workspace_root().join("docker/kura-agent.Dockerfile"));
        assert!(stage.base.starts_with("gcr.io/distroless/"), "{stage:?}");
        assert_eq!(stage.get("USER"), Some("65532:65532"));
        assert_eq!(stage.get("ENTRYPOINT"), Some("[\"/kura-agent\"]"));
        assert_eq!(
            stage.binary(),
            ("/kura-agent".to_string(), "/kura-agent".to_string())
        );
        assert!(stage.instructions.iter().all(|l| !l.starts_with("RUN ")));
    }
}
