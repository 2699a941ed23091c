//! The app container of the container tests (tests/containers.rs), not a user-facing example:
//! it stands for an application that reads kura's files. It prints, one line each, what the test
//! checks: the file as it found it at start (content, owner, mode), every reload by HTTP POST and
//! by SIGHUP with the content it then reads, and its exit on SIGTERM.
//!
//! `pod_app <file> <loopback port>`
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

fn describe(path: &Path) -> String {
    match (std::fs::read_to_string(path), std::fs::metadata(path)) {
        (Ok(content), Ok(m)) => format!(
            "content={content} uid={} gid={} mode={:o}",
            m.uid(),
            m.gid(),
            m.mode() & 0o7777
        ),
        (Err(e), _) | (_, Err(e)) => format!("error={e}"),
    }
}

fn say(line: String) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").expect("stdout");
    out.flush().expect("stdout");
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let file = PathBuf::from(args.next().expect("a file"));
    let port: u16 = args.next().expect("a port").parse().expect("a port number");
    say(format!("start {}", describe(&file)));

    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("loopback port");
    let http_file = file.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut buf = [0u8; 4096];
            let n = conn.read(&mut buf).unwrap_or(0);
            let method = String::from_utf8_lossy(&buf[..n])
                .split(' ')
                .next()
                .unwrap_or_default()
                .to_string();
            say(format!(
                "reload-http method={method} {}",
                describe(&http_file)
            ));
            let _ = conn.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
        }
    });

    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    loop {
        tokio::select! {
            _ = hup.recv() => say(format!("reload-signal {}", describe(&file))),
            _ = term.recv() => { say("exit".into()); return; }
        }
    }
}
