//! `docs/architecture.md` checked against the code: its module tables list exactly the
//! top-level modules of both crates, the modules import each other without a circle, and none
//! of the arrows it forbids exists.
//!
//! The import graph is read from the sources: every `crate::<module>` path in code (comments,
//! doc comments and `#[cfg(test)]` modules left out), including the names in `use crate::{..}`
//! groups, attributed to the top-level module of the file it is in.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`, with the top-level module it belongs to.
fn sources(dir: &Path) -> Vec<(String, PathBuf)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).expect("source dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, &mut files);
    files.sort();
    files
        .into_iter()
        .filter_map(|p| {
            let rel = p.strip_prefix(dir).expect("under dir");
            let first = rel.components().next()?.as_os_str().to_str()?.to_string();
            let module = first.strip_suffix(".rs").unwrap_or(&first).to_string();
            // The crate roots, and test modules kept in files of their own.
            let is_tests = p.file_name().is_some_and(|n| n == "tests.rs");
            (!matches!(module.as_str(), "lib" | "main") && !is_tests).then_some((module, p))
        })
        .collect()
}

/// A file's code: comments dropped, and everything from its `#[cfg(test)]` module on.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("readable source");
    let mut out = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("#[cfg(test)]") {
            break;
        }
        let line = match line.find("//") {
            // `//` inside a string literal ("http://…") is code; a comment starts a line or
            // follows code after whitespace.
            Some(i) if !line[..i].contains('"') => &line[..i],
            _ => line,
        };
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The top-level modules `code` names through `crate::`.
fn imports(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            // `use crate::{a, b::c, d::{e, f}}`: the first segment of each top-level item.
            let mut depth = 0usize;
            let mut item_start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && !c.is_whitespace() => {
                        found.insert(ident(&group[j..]));
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            found.insert(ident(after));
        }
        rest = after;
    }
    found.retain(|m| !m.is_empty());
    found
}

/// The import graph between the top-level modules under `src`, and each module's code.
fn graph(src: &Path) -> (Graph, BTreeMap<String, String>) {
    let mut edges = Graph::new();
    let mut code_of: BTreeMap<String, String> = BTreeMap::new();
    for (module, path) in sources(src) {
        let c = code(&path);
        let targets = edges.entry(module.clone()).or_default();
        targets.extend(imports(&c).into_iter().filter(|m| *m != module));
        code_of.entry(module).or_default().push_str(&c);
    }
    (edges, code_of)
}

/// A circle in the graph, if there is one, as the path around it.
fn circle(g: &Graph) -> Option<Vec<String>> {
    fn visit(
        g: &Graph,
        node: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|n| n == node) {
            let mut c = path[i..].to_vec();
            c.push(node.to_string());
            return Some(c);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in g.get(node).into_iter().flatten() {
            if let Some(c) = visit(g, next, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    g.keys()
        .find_map(|n| visit(g, n, &mut Vec::new(), &mut done))
}

/// The backticked module names in the first column of the doc's table under `heading`.
fn documented(doc: &str, heading: &str) -> BTreeSet<String> {
    let section = doc
        .split("\n## ")
        .find(|s| s.starts_with(heading))
        .unwrap_or_else(|| panic!("docs/architecture.md has no section {heading:?}"));
    section
        .lines()
        .filter_map(|l| {
            l.strip_prefix("| `")?
                .split_once('`')
                .map(|(m, _)| m.to_string())
        })
        .collect()
}

fn doc() -> String {
    std::fs::read_to_string(root().join("docs/architecture.md")).expect("docs/architecture.md")
}

#[test]
fn the_module_tables_list_exactly_the_modules() {
    let doc = doc();
    for (heading, src) in [
        ("The `kura` crate", root().join("src")),
        ("The `kura-agent` crate", root().join("sidecar/src")),
    ] {
        let (g, _) = graph(&src);
        let code: BTreeSet<String> = g.keys().cloned().collect();
        assert_eq!(documented(&doc, heading), code, "{heading}");
    }
}

#[test]
fn no_import_circle_in_either_crate() {
    for src in [root().join("src"), root().join("sidecar/src")] {
        let (g, _) = graph(&src);
        assert_eq!(circle(&g), None, "{}: {g:#?}", src.display());
    }
}

#[test]
fn the_forbidden_arrows_do_not_exist() {
    let (kura, kura_code) = graph(&root().join("src"));
    let (agent, agent_code) = graph(&root().join("sidecar/src"));
    let uses = |g: &Graph, from: &str| g.get(from).cloned().unwrap_or_default();

    // Planning does no I/O.
    let inject = uses(&kura, "inject");
    assert!(inject.iter().all(|m| m == "wire"), "inject uses {inject:?}");
    for io in [
        "tokio", "std::fs", "std::net", "reqwest", "kube::", "aws_", "Store",
    ] {
        assert!(!kura_code["inject"].contains(io), "inject uses {io}");
    }

    // Rules know no HTTP.
    let policy = uses(&kura, "policy");
    for m in ["server", "admission", "cli", "tls", "shutdown", "config"] {
        assert!(!policy.contains(m), "policy uses {m}");
    }
    for http in ["axum", "hyper", "http::"] {
        assert!(!kura_code["policy"].contains(http), "policy uses {http}");
    }

    // The store knows no policy, nor how a pod asked for a secret.
    let store = uses(&agent, "store");
    for m in ["annotations", "agent", "render", "writer", "reload", "cli"] {
        assert!(!store.contains(m), "store uses {m}");
    }

    // The webhook never reads values.
    for (module, c) in &kura_code {
        assert!(!c.contains(".fetch("), "{module} fetches secret values");
    }

    // The agent never depends on the webhook.
    for c in agent_code.values() {
        assert!(
            !c.contains("kura::"),
            "the agent crate names the webhook crate"
        );
    }
    let manifest = std::fs::read_to_string(root().join("sidecar/Cargo.toml")).expect("manifest");
    let deps = manifest
        .split("\n[dependencies]\n")
        .nth(1)
        .and_then(|s| s.split("\n[").next())
        .expect("a [dependencies] table");
    for line in deps.lines() {
        let name = line.split(['.', ' ', '=']).next().unwrap_or("");
        assert!(
            ![
                "kura",
                "axum",
                "axum-server",
                "kube",
                "k8s-openapi",
                "tower",
            ]
            .contains(&name),
            "kura-agent depends on {name}"
        );
        // hyper's client (the AWS SDK links it anyway) talks to the version service; the agent
        // serves nothing but its hand-written loopback metrics.
        assert!(
            !(name.starts_with("hyper") && line.contains("\"server")),
            "kura-agent takes an HTTP server: {line}"
        );
    }
}

/// The graph reader itself: a circle and a group import are found, comments are not code.
#[test]
fn the_reader_sees_groups_and_circles_and_skips_comments() {
    let c = "use crate::{a, b::c, d::{e, f}};\nlet x = crate::g::h();\n";
    assert_eq!(
        imports(c),
        ["a", "b", "d", "g"].map(String::from).into_iter().collect()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("x.rs");
    std::fs::write(
        &f,
        "//! see [`crate::doc`]\nuse crate::y; // crate::z\nlet u = \"http://crate::w\";\n#[cfg(test)]\nmod tests { use crate::t; }\n",
    )
    .expect("write");
    let seen = imports(&code(&f));
    assert!(seen.contains("y") && seen.contains("w"), "{seen:?}");
    assert!(!seen.contains("doc") && !seen.contains("z") && !seen.contains("t"));

    let mut g = Graph::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    assert_eq!(circle(&g), None);
    g.entry("c".into()).or_default().insert("a".into());
    assert_eq!(
        circle(&g),
        Some(["a", "b", "c", "a"].map(String::from).to_vec())
    );
}
