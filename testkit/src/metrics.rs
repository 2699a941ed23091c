//! Prometheus scrapes of a process under test (`kura serve --metrics-listen`, `kura-agent run
//! --metrics-listen`): plain HTTP/1.1 on loopback, no client library in the way.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// The `/metrics` text served on a loopback port, or `None` while nothing answers there.
pub fn scrape(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// One sample of a scrape, e.g. `sample(&text, "kura_agent_errors_total{kind=\"write\"}")`.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A sample of a live process, `0` while it does not answer or has no such series.
pub fn metric(port: u16, series: &str) -> f64 {
    scrape(port).and_then(|t| sample(&t, series)).unwrap_or(0.0)
}
