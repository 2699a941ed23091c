//! How long the annotation parser takes on hostile `kura.dev/secrets` values at its size and
//! depth bounds (issue 14): a benchmark, not a test; prints the best of 20 runs per shape.
//!
//!     cargo run --release -p kura-agent --example hostile_parse

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kura_agent::annotations::{self, MAX_SECRETS_BYTES, MAX_SECRETS_DEPTH};

fn fill(unit: &str, sep: &str) -> String {
    let n = (MAX_SECRETS_BYTES - 2) / (unit.len() + sep.len());
    vec![unit; n].join(sep)
}

fn main() {
    let d = MAX_SECRETS_DEPTH - 1;
    let flow = format!("{}{}", "[".repeat(d), "]".repeat(d));
    let maps = format!("{}x{}", "{a: ".repeat(d - 1), "}".repeat(d - 1));
    let mut laughs = String::from("- &a [x,x,x,x,x,x,x,x,x,x]\n");
    for w in ["a", "b", "c", "d", "e", "f", "g", "h"].windows(2) {
        laughs.push_str(&format!(
            "- &{} [{}]\n",
            w[1],
            vec![format!("*{}", w[0]); 10].join(",")
        ));
    }
    let shapes: Vec<(&str, String)> = vec![
        ("nested-flow-seqs", format!("[{}]", fill(&flow, ","))),
        ("nested-flow-maps", format!("[{}]", fill(&maps, ","))),
        (
            "mixed-flow",
            format!("[{}]", fill("{a: [{b: [x, y]}], c: {d: [e]}}", ",")),
        ),
        ("block-list-of-maps", fill("- {a: [b, c, {d: e}]}", "\n")),
        ("alias-expansion", laughs),
        ("valid-entries", {
            let mut s = String::new();
            for n in 0.. {
                let e = format!("- file: f{n}\n  secret: /bench/s{n}\n");
                if s.len() + e.len() > MAX_SECRETS_BYTES {
                    break;
                }
                s.push_str(&e);
            }
            s
        }),
        (
            "long-scalar",
            format!("- file: {}\n", "a".repeat(MAX_SECRETS_BYTES - 20)),
        ),
        ("over-the-size-bound", "- file: a\n".repeat(200_000 / 10)),
    ];
    println!("{:20} {:>8} {:>10}  outcome", "shape", "bytes", "best ms");
    for (name, value) in shapes {
        let mut m = BTreeMap::new();
        m.insert(annotations::INJECT.to_string(), "true".to_string());
        m.insert(annotations::SECRETS.to_string(), value.clone());
        let mut best = Duration::MAX;
        let mut outcome = String::new();
        for _ in 0..20 {
            let t = Instant::now();
            let r = annotations::parse(&m);
            best = best.min(t.elapsed());
            outcome = match r {
                Ok(_) => "parsed".into(),
                Err(e) => e[0].message.chars().take(60).collect(),
            };
        }
        println!(
            "{name:20} {:>8} {:>10.3}  {outcome}",
            value.len(),
            best.as_secs_f64() * 1000.0
        );
    }
}
