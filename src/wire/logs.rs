//! The server's log lines: JSON written in one pass, and batched on their way to stdout.
//!
//! [`JsonLines`] writes what tracing-subscriber's `json()` writes with `flatten_event` and the
//! current span, without its costs on every line: `json()` stores a span's fields as a JSON map
//! and parses them back for each event, and builds a map per span; here the span's fields are
//! stored as JSON members when it opens ([`JsonMembers`]) and copied as they are. [`Batcher`]
//! collects the lines and writes them in one `write` every few milliseconds instead of one each
//! on the request's path.
//!
//! Guarded by `bench/webhook-load.sh` (JSON logs on, the server pinned to one core); the tests
//! below hold the lines to JSON a reader parses.

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

mod batch;
pub use batch::{Batched, Batcher};

/// The server's JSON lines: what tracing-subscriber's `json()` writes with `flatten_event` and
/// the current span (`timestamp`, `level`, the event's fields, `target`, and `span` with its
/// `name` and fields), in one pass. The span's fields are stored as JSON members when it opens
/// ([`JsonMembers`]) and copied into each line as they are; `json()` parses them back into a
/// map for every line, a cost paid on every admission.
#[derive(Debug, Clone, Copy)]
pub struct JsonLines;

/// A span's fields as the JSON members `,"name":value,…`, ready to be copied into an object:
/// written directly, where tracing-subscriber's `JsonFields` builds a map and serializes it for
/// every span (one per admission).
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonMembers;

impl<'writer> FormatFields<'writer> for JsonMembers {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> std::fmt::Result {
        let mut members = JsonEventFields {
            w: &mut writer,
            result: Ok(()),
        };
        fields.record(&mut members);
        members.result
    }

    /// Fields recorded later are appended as further members.
    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> std::fmt::Result {
        self.format_fields(current.as_writer(), fields)
    }
}

impl<S> FormatEvent<S, JsonMembers> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonMembers>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        w.write_str("{\"timestamp\":\"")?;
        SystemTime.format_time(&mut w)?;
        write!(w, "\",\"level\":\"{}\"", meta.level())?;
        let mut fields = JsonEventFields {
            w: &mut w,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        w.write_str(",\"target\":")?;
        json_str(&mut w, meta.target())?;
        if let Some(span) = ctx.lookup_current() {
            w.write_str(",\"span\":{\"name\":")?;
            json_str(&mut w, span.name())?;
            let ext = span.extensions();
            if let Some(stored) = ext.get::<FormattedFields<JsonMembers>>() {
                w.write_str(&stored.fields)?;
            }
            w.write_char('}')?;
        }
        w.write_str("}\n")
    }
}

/// An event's fields as `,"name":value` members.
struct JsonEventFields<'w, 'a> {
    w: &'w mut Writer<'a>,
    result: std::fmt::Result,
}

impl JsonEventFields<'_, '_> {
    fn member(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> std::fmt::Result) {
        if self.result.is_err() {
            return;
        }
        self.result = (|| {
            self.w.write_char(',')?;
            json_str(self.w, field.name())?;
            self.w.write_char(':')?;
            value(self.w)
        })();
    }
}

impl Visit for JsonEventFields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.member(field, |w| json_str(w, value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.member(field, |w| json_str(w, &format!("{value:?}")));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.member(field, |w| write!(w, "{value}"));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.member(field, |w| write!(w, "{value}"));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.member(field, |w| write!(w, "{value}"));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        if value.is_finite() {
            self.member(field, |w| write!(w, "{value}"));
        } else {
            self.member(field, |w| json_str(w, &value.to_string()));
        }
    }
}

/// `s` as a JSON string literal.
fn json_str(w: &mut Writer<'_>, s: &str) -> std::fmt::Result {
    w.write_char('"')?;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let escaped = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            c if (c as u32) < 0x20 => "",
            _ => continue,
        };
        w.write_str(&s[start..i])?;
        if escaped.is_empty() {
            write!(w, "\\u{:04x}", c as u32)?;
        } else {
            w.write_str(escaped)?;
        }
        start = i + c.len_utf8();
    }
    w.write_str(&s[start..])?;
    w.write_char('"')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_carry_the_event_and_its_span_and_escape_text() {
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(JsonMembers)
            .event_format(JsonLines)
            .with_writer(move || out.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("admission", uid = "u\"1", pod = %"web-*", n = 7u64, late = tracing::field::Empty);
            span.record("late", "recorded after the span opened");
            span.in_scope(|| {
                tracing::info!(
                    decision = "injected",
                    count = -3i64,
                    ok = true,
                    ratio = 0.5,
                    rules = ?["KURA005"],
                    "admitted \"it\"\n\t\u{1}"
                );
            });
            tracing::warn!("outside");
        });
        let text = String::from_utf8(buf.0.lock().expect("lock").clone()).expect("utf-8");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        let l = &lines[0];
        assert_eq!(l["level"], "INFO");
        assert_eq!(l["message"], "admitted \"it\"\n\t\u{1}");
        assert_eq!(l["decision"], "injected");
        assert_eq!(l["count"], -3);
        assert_eq!(l["ok"], true);
        assert_eq!(l["ratio"], 0.5);
        assert_eq!(l["rules"], "[\"KURA005\"]");
        assert_eq!(l["target"], "kura::wire::logs::tests");
        assert_eq!(l["span"]["name"], "admission");
        assert_eq!(l["span"]["uid"], "u\"1");
        assert_eq!(l["span"]["pod"], "web-*");
        assert_eq!(l["span"]["n"], 7);
        assert_eq!(l["span"]["late"], "recorded after the span opened");
        assert!(
            l["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{l}"
        );
        assert_eq!(lines[1]["message"], "outside");
        assert!(lines[1].get("span").is_none(), "{}", lines[1]);
    }
}
