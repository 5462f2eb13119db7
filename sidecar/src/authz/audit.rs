//! The audit event: one per decision, the same fields wherever the decision was made.
//!
//! Every decision site (the data plane's authorize step, the account-pool handler's
//! questions) fills one [`AuditEvent`] and calls [`AuditEvent::emit`]. The event goes
//! through `tracing` under the target [`TARGET`], so `RUST_LOG` filters it like any
//! other line; with JSON logs its fields are written as one JSON object whose
//! `policies` and `errors` are real arrays (see [`AuditJson`]), not strings inside a
//! string. Ids only: never a token, a credential or a presigned URL.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::registry::LookupSpan;

use super::{Decision, RequestError};

/// The `tracing` target of audit events: filter on it, route it, alert on it.
pub const TARGET: &str = "authz_sidecar::audit";

/// The field that carries the serialized event.
const FIELD: &str = "audit";

/// One decision, as the audit log records it.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEvent {
    pub request_id: String,
    /// The trace of the request that asked (see [`crate::otel`]), when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<Arc<str>>,
    /// The data plane's route; absent for the Lambda form of the account-pool handler.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// `enforce` or `dry-run` (data plane).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<&'static str>,
    /// The account-pool operation the decision answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<&'static str>,
    pub principal: String,
    pub action: String,
    pub resource: String,
    /// The account-pool question's account and region.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// How many accounts a `listAuthorizedAccounts` answer holds (its own event).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accounts: Option<usize>,
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// Why: `permitted`, `forbidden`, `no_permit`, `evaluation_error`, the kind of
    /// error that kept the question from Cedar (`bad_context`, `unknown_account`, ...),
    /// or `listed` for a list's own event.
    pub reason: &'static str,
    /// The policies that decided (sorted).
    pub policies: Arc<[String]>,
    /// Policies that failed to evaluate (`policy: message`), or why the request could
    /// not be decided.
    pub errors: Vec<String>,
    /// The source IP and VPC endpoint the decision saw (data plane).
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "serialize_ip")]
    pub source_ip: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vpce: Option<String>,
    /// The snapshot that decided.
    pub snapshot: Arc<str>,
    pub latency_us: u64,
    /// The decision was made earlier in this snapshot for exactly this question and
    /// kept (written only when true).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cached: bool,
}

/// `ip` as text, exactly as its `Display` writes it. An IPv4 address is written digit by
/// digit: `Display` goes through the formatting machinery once per octet, and every
/// forwarded request writes its source IP three times (its context, the upstream's
/// `x-forwarded-for` and, through [`push_ip`], its audit line); about 1% of a kept
/// request's instructions.
pub(crate) fn ip_text(ip: IpAddr) -> String {
    let mut text = String::with_capacity(15);
    push_ip(&mut text, ip);
    text
}

/// `ip` written at the end of `out`, as [`ip_text`] writes it.
fn push_ip(out: &mut String, ip: IpAddr) {
    let IpAddr::V4(v4) = ip else {
        // writing into a string cannot fail
        let _ = fmt::Write::write_fmt(out, format_args!("{ip}"));
        return;
    };
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if octet >= 100 {
            out.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            out.push(char::from(b'0' + octet / 10 % 10));
        }
        out.push(char::from(b'0' + octet % 10));
    }
}

/// The audit event's source IP, as [`ip_text`] writes it (serde writes an `IpAddr`
/// through its `Display`).
fn serialize_ip<S: serde::Serializer>(ip: &Option<IpAddr>, serializer: S) -> Result<S::Ok, S::Error> {
    match ip {
        Some(ip) => serializer.serialize_str(&ip_text(*ip)),
        None => serializer.serialize_none(),
    }
}

/// What is known of a question before it is decided: who asked what, where.
#[derive(Debug, Clone, Default)]
pub struct Asked {
    pub request_id: String,
    pub route: Option<String>,
    pub mode: Option<&'static str>,
    pub operation: Option<&'static str>,
    pub principal: String,
    pub action: String,
    pub resource: String,
    pub account: Option<String>,
    pub region: Option<String>,
    pub source_ip: Option<IpAddr>,
    pub vpce: Option<String>,
}

impl AuditEvent {
    /// The event of a decision Cedar made.
    pub fn decided(asked: Asked, decision: &Decision) -> Self {
        let errors = decision.errors.iter().map(|e| format!("{}: {}", e.policy, e.message)).collect();
        let effect = if decision.is_allowed() { "allow" } else { "deny" };
        let latency_us = u64::try_from(decision.elapsed.as_micros()).unwrap_or(u64::MAX);
        let mut event =
            Self::from_parts(asked, effect, decision.reason.as_str(), decision.policies.clone(), errors, latency_us)
                .with_snapshot(decision.snapshot.clone());
        event.cached = decision.cached;
        event
    }

    /// The event of a question denied before Cedar decided it (`reason` says why;
    /// `error`, when there is one, is written in `errors`).
    pub fn refused(asked: Asked, reason: &'static str, error: Option<&RequestError>, snapshot: String) -> Self {
        let errors = error.map(|e| vec![e.to_string()]).unwrap_or_default();
        Self::from_parts(asked, "deny", reason, Arc::default(), errors, 0).with_snapshot(snapshot.into())
    }

    fn from_parts(
        asked: Asked,
        decision: &'static str,
        reason: &'static str,
        policies: Arc<[String]>,
        errors: Vec<String>,
        latency_us: u64,
    ) -> Self {
        let Asked { request_id, route, mode, operation, principal, action, resource, account, region, source_ip, vpce } =
            asked;
        Self {
            request_id,
            trace_id: crate::otel::audit_trace(),
            route,
            mode,
            operation,
            principal,
            action,
            resource,
            account,
            region,
            accounts: None,
            decision,
            reason,
            policies,
            errors,
            source_ip,
            vpce,
            snapshot: Arc::default(),
            latency_us,
            cached: false,
        }
    }

    fn with_snapshot(mut self, snapshot: Arc<str>) -> Self {
        self.snapshot = snapshot;
        self
    }

    /// Whether an event at `level` would be written: callers that decide many questions
    /// (a thousand-account list) skip building events nobody reads.
    pub fn enabled(level: Level) -> bool {
        match level {
            Level::ERROR => tracing::enabled!(target: TARGET, Level::ERROR),
            Level::WARN => tracing::enabled!(target: TARGET, Level::WARN),
            Level::INFO => tracing::enabled!(target: TARGET, Level::INFO),
            Level::DEBUG => tracing::enabled!(target: TARGET, Level::DEBUG),
            Level::TRACE => tracing::enabled!(target: TARGET, Level::TRACE),
        }
    }

    /// Write the event at `level` (decisions are info; the account pool's per-account
    /// list decisions debug, so a thousand-account list does not flood the log).
    pub fn emit(&self, level: Level) {
        if !Self::enabled(level) {
            return;
        }
        // written into this thread's reused buffer, not a new string per event
        EMITTED.with_borrow_mut(|text| {
            text.clear();
            self.write_json(text);
        });
        let _emitting = Emitting::begin();
        match level {
            Level::ERROR => tracing::error!(target: TARGET, audit = %Emitted, "decision"),
            Level::WARN => tracing::warn!(target: TARGET, audit = %Emitted, "decision"),
            Level::INFO => tracing::info!(target: TARGET, audit = %Emitted, "decision"),
            Level::DEBUG => tracing::debug!(target: TARGET, audit = %Emitted, "decision"),
            Level::TRACE => tracing::trace!(target: TARGET, audit = %Emitted, "decision"),
        }
    }

    /// The event as one JSON object: byte for byte what `serde_json` writes of its
    /// `Serialize` form (a property test holds the two together), written field by
    /// field. `serde_json` escapes every key and value a byte at a time, which was half
    /// of an audit line's cost; here each key is written with its quotes, colon and
    /// leading comma as one piece (`request_id`, always there, comes first), and a value
    /// is looked at for what needs escaping first (see [`push_json_str`]).
    fn write_json(&self, out: &mut String) {
        /// A field's key as written after the first: `,"name":`.
        macro_rules! key {
            ($name:literal) => {
                concat!(",\"", $name, "\":")
            };
        }
        let string = |out: &mut String, key: &str, value: &str| {
            out.push_str(key);
            push_json_str(out, value);
        };
        out.push_str("{\"request_id\":");
        push_json_str(out, &self.request_id);
        if let Some(trace_id) = &self.trace_id {
            string(out, key!("trace_id"), trace_id);
        }
        if let Some(route) = &self.route {
            string(out, key!("route"), route);
        }
        if let Some(mode) = self.mode {
            string(out, key!("mode"), mode);
        }
        if let Some(operation) = self.operation {
            string(out, key!("operation"), operation);
        }
        string(out, key!("principal"), &self.principal);
        string(out, key!("action"), &self.action);
        string(out, key!("resource"), &self.resource);
        if let Some(account) = &self.account {
            string(out, key!("account"), account);
        }
        if let Some(region) = &self.region {
            string(out, key!("region"), region);
        }
        if let Some(accounts) = self.accounts {
            out.push_str(key!("accounts"));
            out.push_str(itoa::Buffer::new().format(accounts));
        }
        string(out, key!("decision"), self.decision);
        string(out, key!("reason"), self.reason);
        for (key, values) in [(key!("policies"), &self.policies[..]), (key!("errors"), &self.errors[..])] {
            out.push_str(key);
            out.push('[');
            for (i, value) in values.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_json_str(out, value);
            }
            out.push(']');
        }
        if let Some(ip) = self.source_ip {
            // digits, dots, colons and hexadecimal letters: nothing to escape
            out.push_str(key!("source_ip"));
            out.push('"');
            push_ip(out, ip);
            out.push('"');
        }
        if let Some(vpce) = &self.vpce {
            string(out, key!("vpce"), vpce);
        }
        string(out, key!("snapshot"), &self.snapshot);
        out.push_str(key!("latency_us"));
        out.push_str(itoa::Buffer::new().format(self.latency_us));
        if self.cached {
            out.push_str(key!("cached"));
            out.push_str("true");
        }
        out.push('}');
    }
}

/// `text` as a JSON string, exactly as `serde_json` writes it. `serde_json` escapes
/// quotes, backslashes and the control characters below U+0020, nothing else. One look
/// over the text ([`specials`]) says which of them it holds: most texts none, and are
/// written as they are; a uid its quotes, each written after a backslash; one with
/// control characters is written by `serde_json` itself.
fn push_json_str(out: &mut String, text: &str) {
    let Specials { quotes, controls } = specials(text.as_bytes());
    if controls {
        // serializing a string cannot fail
        if let Ok(json) = serde_json::to_string(text) {
            out.push_str(&json);
        }
        return;
    }
    out.push('"');
    if quotes {
        // each quote or backslash starts the next run, after its backslash (both are
        // ASCII, so every index here is a character boundary)
        let mut run = 0;
        for (i, b) in text.bytes().enumerate() {
            if b == b'"' || b == b'\\' {
                out.push_str(text.get(run..i).unwrap_or_default());
                out.push('\\');
                run = i;
            }
        }
        out.push_str(text.get(run..).unwrap_or_default());
    } else {
        out.push_str(text);
    }
    out.push('"');
}

/// What of JSON's escapes a text needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Specials {
    /// A quote or a backslash.
    quotes: bool,
    /// A control character (below U+0020).
    controls: bool,
}

impl std::ops::BitOr for Specials {
    type Output = Self;

    fn bitor(self, other: Self) -> Self {
        Self { quotes: self.quotes | other.quotes, controls: self.controls | other.controls }
    }
}

/// The bytes [`specials`] looks at together.
const BLOCK: usize = 16;

/// What `text` holds of JSON's escapes, looked at sixteen bytes at a time: a block of
/// fixed size is a few vector instructions, where a loop over a short text (most of an
/// audit line's are shorter than the compiler's vector loop) goes byte by byte. A text
/// of a block or more ends with a block that overlaps the one before it; a shorter one
/// is looked at padded with a byte that needs no escape.
fn specials(text: &[u8]) -> Specials {
    fn block(bytes: &[u8; BLOCK]) -> Specials {
        let (quotes, controls) =
            bytes.iter().fold((false, false), |(q, c), &b| (q | (b == b'"') | (b == b'\\'), c | (b < b' ')));
        Specials { quotes, controls }
    }
    // a slice that is not a block cannot happen; were it to, the text would be escaped
    // by serde_json, which is always right
    let of = |bytes: &[u8]| <&[u8; BLOCK]>::try_from(bytes).map_or(Specials { quotes: true, controls: true }, block);
    if text.len() < BLOCK {
        let mut padded = [b'a'; BLOCK];
        if let Some(head) = padded.get_mut(..text.len()) {
            head.copy_from_slice(text);
        }
        return block(&padded);
    }
    let mut blocks = text.chunks_exact(BLOCK);
    let found = blocks.by_ref().fold(Specials::default(), |found, bytes| found | of(bytes));
    if blocks.remainder().is_empty() {
        return found;
    }
    found | of(text.get(text.len() - BLOCK..).unwrap_or_default())
}

/// The message of every audit event [`AuditEvent::emit`] writes.
const MESSAGE: &str = "decision";

thread_local! {
    /// The event [`AuditEvent::emit`] serialized last on this thread: the text that
    /// [`Emitted`] shows and the JSON format splices in, read in place.
    static EMITTED: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

thread_local! {
    /// Set while [`AuditEvent::emit`] hands its event to `tracing` on this thread: the
    /// event's `audit` field is then the JSON object `emit` serialized, and the JSON
    /// format splices it in without parsing it again.
    static EMITTING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// [`EMITTING`] for as long as it lives, cleared even if a subscriber panics.
struct Emitting;

impl Emitting {
    fn begin() -> Self {
        EMITTING.set(true);
        Self
    }
}

impl Drop for Emitting {
    fn drop(&mut self) {
        EMITTING.set(false);
    }
}

/// The event [`AuditEvent::emit`] serialized, shown as it is (text logs print the JSON
/// after `audit=`).
struct Emitted;

impl fmt::Display for Emitted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        EMITTED.with_borrow(|json| f.write_str(json))
    }
}

/// The JSON log format: tracing-subscriber's own for every event, except that an audit
/// event's fields are its [`AuditEvent`] object, so its arrays and numbers keep their
/// types: `{"timestamp":…,"level":"INFO","fields":{"message":"decision",…},"target":…}`.
#[derive(Debug)]
pub struct AuditJson {
    inner: format::Format<format::Json>,
}

impl Default for AuditJson {
    fn default() -> Self {
        Self::new()
    }
}

impl AuditJson {
    pub fn new() -> Self {
        Self { inner: format::Format::default().json() }
    }
}

impl<S, N> FormatEvent<S, N> for AuditJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        if meta.target() != TARGET {
            return self.inner.format_event(ctx, writer, event);
        }
        if EMITTING.get() && meta.fields().field(FIELD).is_some() {
            // the event `emit` serialized, read where it lies
            return EMITTED.with_borrow(|json| match object_fields(json) {
                Some(fields) => write_audit(&mut writer, meta.level(), MESSAGE, fields),
                None => self.inner.format_event(ctx, writer, event),
            });
        }
        // the audit target and field from elsewhere: spliced only when it is one JSON
        // object (anything else is written in tracing-subscriber's own form)
        let mut found = Found::default();
        event.record(&mut found);
        let fields = found
            .audit
            .as_deref()
            .filter(|json| serde_json::from_str::<serde::de::IgnoredAny>(json).is_ok())
            .and_then(object_fields);
        match fields {
            Some(fields) => {
                write_audit(&mut writer, meta.level(), found.message.as_deref().unwrap_or_default(), fields)
            }
            None => self.inner.format_event(ctx, writer, event),
        }
    }
}

/// The fields of a JSON object's text (between its braces), when it is one.
fn object_fields(json: &str) -> Option<&str> {
    json.strip_prefix('{')?.strip_suffix('}')
}

/// One audit line: `fields` (a JSON object's fields) spliced in as the event's fields.
fn write_audit(writer: &mut Writer<'_>, level: &Level, message: &str, fields: &str) -> fmt::Result {
    // RFC 3339: nothing in it to escape
    writer.write_str("{\"timestamp\":\"")?;
    write_now(writer)?;
    writer.write_str("\",\"level\":\"")?;
    writer.write_str(level.as_str())?;
    writer.write_str("\",\"fields\":{\"message\":")?;
    write_json_str(writer, message)?;
    if !fields.is_empty() {
        writer.write_char(',')?;
    }
    writer.write_str(fields)?;
    writer.write_str("},\"target\":")?;
    write_json_str(writer, TARGET)?;
    writer.write_str("}\n")
}

/// Now, as tracing-subscriber's own lines write it (RFC 3339 in UTC, microseconds).
fn write_now(writer: &mut Writer<'_>) -> fmt::Result {
    let now = std::time::SystemTime::now();
    NOW.with_borrow_mut(|stamp| match stamp.at(now) {
        Some((second, micros)) => {
            writer.write_str(second)?;
            writer.write_str(std::str::from_utf8(&micros).map_err(|_| fmt::Error)?)
        }
        None => SystemTime.format_time(writer),
    })
}

thread_local! {
    /// This thread's last audit second, written (see [`Stamp`]).
    static NOW: std::cell::RefCell<Stamp> = const { std::cell::RefCell::new(Stamp::new()) };
}

/// A time as an audit line writes it, `2026-12-01T23:28:03.765473Z`. Everything up to
/// the second is written by humantime once a second and kept (tracing-subscriber's
/// formatter goes through the formatting machinery for each of its seven numbers, a
/// fifth of an audit line's cost; humantime through it once, still a tenth); the
/// microseconds are written digit by digit. humantime covers the years 1970 to 9999; a
/// clock outside them is left to tracing-subscriber.
struct Stamp {
    /// The second `text` holds, since the epoch (none yet: `u64::MAX`).
    second: u64,
    /// `2026-12-01T23:28:03.`
    text: String,
}

impl Stamp {
    const fn new() -> Self {
        Self { second: u64::MAX, text: String::new() }
    }

    /// `now` written: its second with the dot, then its microseconds and the `Z`; `None`
    /// outside the years humantime writes.
    fn at(&mut self, now: std::time::SystemTime) -> Option<(&str, [u8; 7])> {
        /// 10000-01-01T00:00:00Z, in seconds since the epoch.
        const YEAR_10000: u64 = 253_402_300_800;
        let since = now.duration_since(std::time::UNIX_EPOCH).ok().filter(|s| s.as_secs() < YEAR_10000)?;
        if since.as_secs() != self.second {
            self.second = u64::MAX;
            let second = std::time::UNIX_EPOCH + Duration::from_secs(since.as_secs());
            let text = humantime::format_rfc3339_seconds(second).to_string();
            // `…:SS` and its `Z`: the microseconds go between them
            self.text = text.strip_suffix('Z')?.to_owned();
            self.text.push('.');
            self.second = since.as_secs();
        }
        let mut micros = *b"000000Z";
        let mut left = since.subsec_micros();
        for digit in micros.iter_mut().take(6).rev() {
            *digit += u8::try_from(left % 10).ok()?;
            left /= 10;
        }
        Some((&self.text, micros))
    }
}

/// `text` as a JSON string: as it is between quotes when nothing in it needs escaping
/// (the message and target of an audit event, see [`specials`]), else through
/// `serde_json`.
fn write_json_str(writer: &mut Writer<'_>, text: &str) -> fmt::Result {
    if specials(text.as_bytes()) == Specials::default() {
        writer.write_char('"')?;
        writer.write_str(text)?;
        return writer.write_char('"');
    }
    writer.write_str(&serde_json::to_string(text).map_err(|_| fmt::Error)?)
}

/// The audit field and the message of an event.
#[derive(Default)]
struct Found {
    audit: Option<String>,
    message: Option<String>,
}

impl tracing::field::Visit for Found {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.record_debug(field, &value);
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        match field.name() {
            FIELD => self.audit = Some(format!("{value:?}")),
            "message" => self.message = Some(format!("{value:?}")),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Mutex;
    use std::time::Duration;

    use proptest::option;
    use proptest::prelude::{Just, Strategy};

    use super::*;

    /// Log lines written to memory.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_logs_carry_the_event_with_real_arrays_and_other_events_unchanged() {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .event_format(AuditJson::new())
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let asked = Asked {
                request_id: "r-1".to_owned(),
                operation: Some("validateAccountAuthorization"),
                principal: "DataZone::User::\"u\"".to_owned(),
                account: Some("111122223333".to_owned()),
                ..Asked::default()
            };
            let error = RequestError::Invalid("no".to_owned());
            AuditEvent::refused(asked, "unknown_account", Some(&error), "abc#1".to_owned()).emit(Level::INFO);
            tracing::info!(answer = 42, "not an audit event");
            // the audit target and field, not from `emit`: never spliced unchecked
            tracing::info!(target: TARGET, audit = "{\"a\":1},\"level\":\"ERROR\",\"b\":{", "decision");
        });
        let text = String::from_utf8(lines.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone())
            .unwrap_or_default();
        let events: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        assert_eq!(events.len(), 3, "every line is one JSON object: {text}");
        let audit = &events[0];
        assert_eq!(audit["target"], TARGET);
        assert_eq!(audit["fields"]["message"], "decision");
        assert_eq!(audit["fields"]["decision"], "deny");
        assert_eq!(audit["fields"]["policies"], serde_json::json!([]), "an array: {text}");
        assert_eq!(audit["fields"]["errors"][0], "the request does not fit the schema: no");
        assert_eq!(audit["fields"]["account"], "111122223333");
        assert!(audit["fields"].get("route").is_none(), "absent fields are left out: {text}");
        assert_eq!(audit["level"], "INFO", "{text}");
        // the audit line's time is written as tracing-subscriber writes the others'
        let times: Vec<&str> = events.iter().filter_map(|e| e["timestamp"].as_str()).collect();
        assert_eq!(times.len(), 3, "{text}");
        let shape = |t: &str| t.bytes().map(|b| if b.is_ascii_digit() { b'0' } else { b }).collect::<Vec<u8>>();
        assert_eq!(shape(times[0]), shape(times[1]), "{text}");
        assert_eq!(shape(times[0]), b"0000-00-00T00:00:00.000000Z", "{text}");
        let at = |t: &str| humantime::parse_rfc3339(t).unwrap_or(std::time::UNIX_EPOCH);
        let apart = at(times[1]).duration_since(at(times[0])).unwrap_or(Duration::MAX);
        assert!(apart < Duration::from_secs(5), "{text}");
        assert_eq!(events[1]["fields"]["answer"], 42, "other events keep tracing-subscriber's own form");
        assert_eq!(events[2]["level"], "INFO", "{text}");
        assert_eq!(events[2]["fields"]["audit"], "{\"a\":1},\"level\":\"ERROR\",\"b\":{", "{text}");
    }

    #[test]
    fn text_logs_print_the_event_after_its_field_name() {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
        tracing::subscriber::with_default(subscriber, || {
            let asked = Asked { request_id: "r-2".to_owned(), ..Asked::default() };
            AuditEvent::refused(asked, "no_user", None, "abc#1".to_owned()).emit(Level::INFO);
        });
        let text = String::from_utf8(lines.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone())
            .unwrap_or_default();
        let (_, json) = text.split_once(" audit=").unwrap_or_default();
        let event: serde_json::Value = serde_json::from_str(json.trim_end()).unwrap_or_default();
        assert_eq!(event["request_id"], "r-2", "{text}");
        assert_eq!(event["reason"], "no_user", "{text}");
        assert!(text.contains(&format!(" {MESSAGE} audit=")), "{text}");
    }

    /// Text with what JSON escapes (quotes, backslashes, control characters), what it
    /// does not (`/`, DEL, non-ASCII), and anything at all.
    fn text() -> impl Strategy<Value = String> {
        proptest::prop_oneof![
            "[a-z0-9:\"\\\\/\\x00-\\x1f\\x7f é😀]{0,24}",
            proptest::prelude::any::<String>(),
            "[a-zA-Z0-9:_-]{0,40}",
        ]
    }

    fn static_text() -> impl Strategy<Value = &'static str> {
        proptest::prop_oneof![Just("enforce"), Just("dry-run"), Just("a\"b\\c\n\u{1}é"), Just("")]
    }

    proptest::prop_compose! {
        fn any_event()(
            (request_id, trace_id, route, mode, operation, principal) in (
                text(), option::of(text()), option::of(text()), option::of(static_text()), option::of(static_text()), text(),
            ),
            (action, resource, account, region, accounts, decision) in (
                text(), text(), option::of(text()), option::of(text()), option::of(proptest::prelude::any::<usize>()), static_text(),
            ),
            (reason, policies, errors, source_ip, vpce, snapshot, latency_us, cached) in (
                static_text(),
                proptest::collection::vec(text(), 0..4),
                proptest::collection::vec(text(), 0..3),
                option::of(proptest::prelude::any::<IpAddr>()),
                option::of(text()),
                text(),
                proptest::prelude::any::<u64>(),
                proptest::prelude::any::<bool>(),
            ),
        ) -> AuditEvent {
            AuditEvent {
                request_id, trace_id: trace_id.map(Arc::from), route, mode, operation, principal, action, resource,
                account, region, accounts, decision, reason, policies: policies.into(), errors, source_ip, vpce,
                snapshot: snapshot.into(), latency_us, cached,
            }
        }
    }

    proptest::proptest! {
        /// A text's specials, looked at in blocks, are what a look at each byte finds,
        /// at every length around the block's and wherever the special byte is.
        #[test]
        fn specials_are_found_wherever_they_are(len in 0usize..70, at in 0usize..70, special in proptest::prelude::any::<u8>()) {
            let mut text = vec![b'x'; len];
            if let Some(byte) = text.get_mut(at) {
                *byte = special;
            }
            let expected = Specials {
                quotes: text.iter().any(|&b| b == b'"' || b == b'\\'),
                controls: text.iter().any(|&b| b < b' '),
            };
            proptest::prop_assert_eq!(specials(&text), expected);
        }
    }

    proptest::proptest! {
        /// The audit line's time is humantime's, whichever second it is and whatever
        /// came before it on the thread (the same second, another, an earlier one).
        #[test]
        fn the_time_is_written_as_humantime_writes_it(
            times in proptest::collection::vec((0u64..253_402_300_800, 0u32..1_000_000, 0u64..3), 1..8),
        ) {
            let mut stamp = Stamp::new();
            let mut previous = 0;
            for (second, micros, near) in times {
                // often the second before, the same one or the next
                let second = if near == 0 { second } else { (previous + near).saturating_sub(2) };
                previous = second;
                let now = std::time::UNIX_EPOCH + Duration::new(second, micros * 1_000 + 999);
                let (head, tail) = stamp.at(now).unwrap();
                let written = format!("{head}{}", std::str::from_utf8(&tail).unwrap());
                proptest::prop_assert_eq!(written, humantime::format_rfc3339_micros(now).to_string());
            }
        }
    }

    #[test]
    fn a_time_past_humantimes_years_is_left_to_tracing_subscriber() {
        let far = std::time::UNIX_EPOCH + Duration::from_secs(253_402_300_800);
        assert!(Stamp::new().at(far).is_none());
        let before = std::time::UNIX_EPOCH - Duration::from_secs(1);
        assert!(Stamp::new().at(before).is_none());
    }

    #[test]
    fn a_uid_is_written_with_its_quotes_escaped() {
        let mut out = String::new();
        push_json_str(&mut out, r#"Studio::User::"a\b""#);
        assert_eq!(out, r#""Studio::User::\"a\\b\"""#);
        out.clear();
        push_json_str(&mut out, "tab\there\u{0}");
        assert_eq!(out, r#""tab\there\u0000""#);
    }

    proptest::proptest! {
        /// The line's event is exactly what `serde_json` writes of the event, whatever
        /// its fields hold (a field added to the struct and not to the writer fails it).
        #[test]
        fn the_event_is_written_as_serde_json_writes_it(event in any_event()) {
            let mut written = String::from("left as it was");
            written.clear();
            event.write_json(&mut written);
            proptest::prop_assert_eq!(&written, &serde_json::to_string(&event).unwrap());
            // and it reads back as the same JSON
            let read: serde_json::Value = serde_json::from_str(&written).unwrap();
            proptest::prop_assert_eq!(read, serde_json::to_value(&event).unwrap());
        }

        /// Every address is written as its `Display` writes it, in the context and in
        /// the audit line alike.
        #[test]
        fn an_address_is_written_as_display_writes_it(v4 in proptest::prelude::any::<[u8; 4]>(), v6 in proptest::prelude::any::<[u16; 8]>()) {
            for ip in [IpAddr::from(v4), IpAddr::from(v6), IpAddr::from([0u8; 4]), IpAddr::from([255u8; 4])] {
                proptest::prop_assert_eq!(ip_text(ip), ip.to_string());
                let asked = Asked { source_ip: Some(ip), ..Asked::default() };
                let event = AuditEvent::refused(asked, "x", None, String::new());
                let json = serde_json::to_value(&event).unwrap();
                let expected = ip.to_string();
                proptest::prop_assert_eq!(json["source_ip"].as_str(), Some(expected.as_str()));
            }
        }
    }
}
