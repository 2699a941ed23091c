use super::*;
use serde_json::json;

fn pod(spec: serde_json::Value) -> Pod {
    serde_json::from_value(json!({ "metadata": { "name": "p" }, "spec": spec })).expect("pod")
}

fn findings(spec: serde_json::Value) -> Vec<(Rule, Severity)> {
    let mut d = Decision::new(Mode::Enforce);
    check_spec(&Policy::default(), &pod(spec), &mut d);
    d.findings.iter().map(|f| (f.rule, f.severity)).collect()
}

#[test]
fn plaintext_and_native_secret_rules() {
    let f = findings(json!({
        "containers": [{
            "name": "app",
            "image": "x",
            "env": [
                { "name": "DB_PASSWORD", "value": "hunter2" },
                { "name": "DB_PASSWORD2", "value": "$(DB_PASSWORD)" },
                { "name": "API_TOKEN", "valueFrom": { "configMapKeyRef": { "name": "cm", "key": "token" } } },
                { "name": "LOG_PATH", "valueFrom": { "configMapKeyRef": { "name": "cm", "key": "p" } } },
                { "name": "REDIS_PASSWORD", "valueFrom": { "secretKeyRef": { "name": "redis", "key": "pw" } } }
            ],
            "envFrom": [{ "secretRef": { "name": "all" } }, { "configMapRef": { "name": "cm" } }]
        }],
        "initContainers": [{ "name": "init", "image": "x", "env": [{ "name": "X", "value": "AKIAIOSFODNN7EXAMPLE" }] }],
        "imagePullSecrets": [{ "name": "registry" }],
        "volumes": [
            { "name": "tls", "secret": { "secretName": "tls" } },
            { "name": "proj", "projected": { "sources": [{ "secret": { "name": "s" } }] } },
            { "name": "kube-api-access-abcde", "projected": { "sources": [
                { "serviceAccountToken": { "path": "token" } },
                { "configMap": { "name": "kube-root-ca.crt" } }
            ] } }
        ]
    }));
    let count = |r: Rule| f.iter().filter(|(x, _)| *x == r).count();
    assert_eq!(count(Rule::Kura005), 2, "{f:?}");
    assert_eq!(count(Rule::Kura006), 1, "{f:?}");
    // env secretKeyRef, envFrom secretRef, secret volume, projected secret; not the SA token nor imagePullSecrets.
    assert_eq!(count(Rule::Kura007), 4, "{f:?}");
    assert!(
        f.iter()
            .filter(|(r, _)| *r == Rule::Kura007)
            .all(|(_, s)| *s == Severity::Warn)
    );
    assert!(
        f.iter()
            .filter(|(r, _)| *r == Rule::Kura005)
            .all(|(_, s)| *s == Severity::Deny)
    );
}

#[test]
fn modes_decide_what_a_finding_does() {
    let long = "x".repeat(300);
    let mk = |mode| {
        let mut d = Decision::new(mode);
        d.push(Finding::new(
            Rule::Kura005,
            format!("container app env DB_PASSWORD {long}"),
        ));
        d.push(Finding {
            rule: Rule::Kura007,
            message: "native".into(),
            severity: Severity::Warn,
            field: None,
        });
        d
    };
    let enforce = mk(Mode::Enforce);
    assert!(enforce.denies());
    assert!(enforce.message().contains("[KURA005]"));
    assert!(!enforce.message().contains("KURA007"));
    assert_eq!(enforce.warnings().len(), 1);

    let warn = mk(Mode::Warn);
    assert!(!warn.denies());
    let w = warn.warnings();
    assert_eq!(w.len(), 2);
    assert!(w.iter().all(|w| w.chars().count() <= MAX_WARNING), "{w:?}");
    assert!(w[0].starts_with("KURA005"));

    let audit = mk(Mode::Audit);
    assert!(!audit.denies());
    assert!(audit.warnings().is_empty());

    let mut always = Decision::new(Mode::Audit);
    always.push_always_deny(Finding::new(Rule::Kura001, "bad".into()));
    assert!(
        always.denies(),
        "a malformed annotation denies in every mode"
    );
}

#[test]
fn configured_actions_apply() {
    let policy = Policy {
        native_secrets: Action::Deny,
        config_map_secret_like: Action::Ignore,
        ..Policy::default()
    };
    let p = pod(json!({ "containers": [{ "name": "a", "image": "x", "env": [
        { "name": "T", "valueFrom": { "secretKeyRef": { "name": "s", "key": "k" } } },
        { "name": "API_TOKEN", "valueFrom": { "configMapKeyRef": { "name": "cm", "key": "t" } } }
    ] }] }));
    let mut d = Decision::new(Mode::Enforce);
    check_spec(&policy, &p, &mut d);
    assert_eq!(d.findings.len(), 1);
    assert!(d.denies());
    let off = Policy {
        plaintext: PlaintextPolicy {
            enabled: false,
            ..PlaintextPolicy::default()
        },
        ..Policy::default()
    };
    let mut d = Decision::new(Mode::Enforce);
    check_spec(
        &off,
        &pod(
            json!({ "containers": [{ "name": "a", "image": "x", "env": [{ "name": "PASSWORD", "value": "p" }] }] }),
        ),
        &mut d,
    );
    assert!(d.findings.is_empty());
}

/// A pod with `annotations`, one app container, and `init` as its init containers.
fn annotated(annotations: serde_json::Value, init: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": { "name": "p", "annotations": annotations },
        "spec": { "containers": [{ "name": "app", "image": "x" }], "initContainers": init }
    }))
    .expect("pod")
}

fn judge(pod: &Pod, mode: Mode, stage: Stage) -> Decision {
    let policy = Policy {
        mode,
        ..Policy::default()
    };
    let engine = PolicyEngine::new(policy, None);
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let parsed = kura_agent::annotations::parse(&annotations);
    let declared = match &parsed {
        Ok(s) => Ok(s.as_ref()),
        Err(errors) => Err(errors.as_slice()),
    };
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(engine.judge(pod, declared, "prod", stage))
}

fn rules(d: &Decision) -> Vec<(Rule, Severity)> {
    d.findings.iter().map(|f| (f.rule, f.severity)).collect()
}

#[test]
fn malformed_annotations_are_kura001_and_deny_in_every_mode() {
    let pod = annotated(
        json!({ "kura.dev/inject": "true", "kura.dev/secret.db": "/prod/db", "kura.dev/agnet": "x" }),
        json!([]),
    );
    for mode in [Mode::Enforce, Mode::Warn, Mode::Audit] {
        let d = judge(&pod, mode, Stage::Submitted);
        assert_eq!(
            rules(&d),
            [(Rule::Kura001, Severity::AlwaysDeny)],
            "{mode:?}"
        );
        assert!(d.denies(), "{mode:?}");
        assert!(d.message().contains("kura.dev/agnet"), "{}", d.message());
    }
}

#[test]
fn what_planning_cannot_inject_is_kura001() {
    let mut d = Decision::new(Mode::Audit);
    check_plan(
        &[inject::Problem {
            field: "container kura-agent".into(),
            message: "reserved".into(),
        }],
        &mut d,
    );
    assert_eq!(rules(&d), [(Rule::Kura001, Severity::AlwaysDeny)]);
    assert!(d.denies());
    assert_eq!(d.message(), "[KURA001] container kura-agent: reserved");
}

#[test]
fn an_opted_in_final_pod_without_the_agent_is_kura008() {
    let opted_in = json!({ "kura.dev/inject": "true", "kura.dev/secret.db": "/prod/db" });
    let bare = annotated(opted_in.clone(), json!([]));
    let d = judge(&bare, Mode::Enforce, Stage::Final);
    assert_eq!(rules(&d), [(Rule::Kura008, Severity::Deny)]);
    assert_eq!(d.secrets, ["/prod/db"]);

    // Before mutation the agent is still to come; a pod that has it, or did not opt in, passes.
    assert!(
        judge(&bare, Mode::Enforce, Stage::Submitted)
            .findings
            .is_empty()
    );
    let injected = annotated(
        opted_in,
        json!([{ "name": inject::AGENT, "image": "agent" }]),
    );
    assert!(
        judge(&injected, Mode::Enforce, Stage::Final)
            .findings
            .is_empty()
    );
    let plain = annotated(json!({ "app": "x" }), json!([]));
    assert!(
        judge(&plain, Mode::Enforce, Stage::Final)
            .findings
            .is_empty()
    );
}

#[test]
fn denials_and_warnings_are_bounded_whatever_the_input() {
    // 5,000 malformed annotations, one of them a 1 MB value: the first few, each cut short,
    // then a count.
    let mut d = Decision::new(Mode::Enforce);
    let huge = "v".repeat(1 << 20);
    d.push_always_deny(Finding::new(
        Rule::Kura001,
        format!("kura.dev/inject: {huge:?} is not \"true\" or \"false\""),
    ));
    for i in 0..4999 {
        d.push_always_deny(Finding::new(
            Rule::Kura001,
            format!("kura.dev/x{i}: unknown kura annotation"),
        ));
    }
    let m = d.message();
    assert!(m.len() < 4 * 1024, "{} bytes", m.len());
    assert!(m.starts_with("[KURA001] kura.dev/inject: \"vvv"), "{m}");
    assert!(m.contains("kura.dev/x0: unknown") && m.contains("kura.dev/x3: unknown"));
    assert!(
        !m.contains("kura.dev/x4:"),
        "only the first {MAX_SHOWN}: {m}"
    );
    assert!(
        m.ends_with(&format!("and {} more", 5000 - MAX_SHOWN)),
        "{m}"
    );

    let mut w = Decision::new(Mode::Warn);
    for i in 0..5000 {
        w.push(Finding::new(
            Rule::Kura005,
            format!("container c{i}: {huge}"),
        ));
    }
    let warnings = w.warnings();
    assert_eq!(warnings.len(), MAX_SHOWN + 1);
    assert!(warnings.iter().all(|w| w.chars().count() <= MAX_WARNING));
    assert_eq!(
        warnings[MAX_SHOWN],
        format!("and {} more findings", 5000 - MAX_SHOWN)
    );
}
