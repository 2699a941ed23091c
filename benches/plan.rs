//! Cost of planning one pod's mutation (`kura::inject::plan`, pure, no I/O; the plan includes
//! its patch written as JSON text) as the pod grows: 1, 10 and 50 containers (each gets the
//! mount) and 1, 10 and 100 declared secrets.
//!
//! `cargo bench --bench plan`; the README records the numbers. The annotations are parsed once
//! outside the measured loop: parsing is the agent crate's, measured where it lives.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use k8s_openapi::api::core::v1::Pod;
use kura::inject::InjectConfig;
use serde_json::json;

/// A Deployment-style pod: each container has env, a port, resources, a security context and the
/// service-account mount, as the API server hands them to admission.
fn pod(containers: usize, secrets: usize) -> Pod {
    let mut annotations = BTreeMap::from([("kura.dev/inject".to_string(), "true".to_string())]);
    for i in 0..secrets {
        annotations.insert(
            format!("kura.dev/secret.file-{i}"),
            format!("/demo/app/secret-{i}#password"),
        );
    }
    let containers: Vec<_> = (0..containers)
        .map(|i| {
            json!({
                "name": format!("app-{i}"),
                "image": "ghcr.io/example/app:1.0",
                "ports": [{ "containerPort": 8080 + i, "protocol": "TCP" }],
                "env": [
                    { "name": "LOG_LEVEL", "value": "info" },
                    { "name": "DB_PASSWORD_FILE", "value": "/var/run/secrets/kura/file-0" },
                ],
                "resources": { "requests": { "cpu": "100m", "memory": "128Mi" } },
                "volumeMounts": [{
                    "name": "kube-api-access-x7k2p",
                    "readOnly": true,
                    "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                }],
                "securityContext": { "runAsUser": 10001, "runAsNonRoot": true },
            })
        })
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "generateName": "app-6d9c8b7f5d-", "annotations": annotations },
        "spec": {
            "serviceAccountName": "app",
            "volumes": [{
                "name": "kube-api-access-x7k2p",
                "projected": { "sources": [{ "serviceAccountToken": { "path": "token" } }] },
            }],
            "containers": containers,
        },
    }))
    .expect("a valid pod")
}

fn bench(c: &mut Criterion) {
    let cfg = InjectConfig::default();
    let mut group = c.benchmark_group("plan");
    for (containers, secrets) in [
        (1, 1),
        (10, 1),
        (50, 1),
        (1, 10),
        (1, 100),
        (10, 10),
        (50, 100),
    ] {
        let pod = pod(containers, secrets);
        let parsed = kura_agent::annotations::parse(pod.metadata.annotations.as_ref().unwrap())
            .unwrap()
            .expect("opted in");
        let plan = kura::inject::plan(&pod, &parsed, &cfg).expect("plans");
        assert_eq!(
            plan.patch.len(),
            // status annotation, the two volumes, one mount per container, the agent
            1 + 2 + containers + 1
        );
        group.bench_with_input(
            BenchmarkId::new(format!("{containers}c"), format!("{secrets}s")),
            &(pod, parsed),
            |b, (pod, parsed)| b.iter(|| kura::inject::plan(black_box(pod), parsed, &cfg)),
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
