//! What the sender tells its user: a live progress line on a terminal, a summary per destination,
//! and the same as one JSON object for machines.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::out::{errln, outln};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use serde_json::json;
use teecast::digest::to_hex;
use teecast::probe::{KernelFacts, Unanswered};
use teecast::send::{
    Delivered, DestFailure, DestReport, HostState, LiveHosts, Progress, SendError, SendReport,
    Transfer,
};
use teecast::strategy::Strategy;

/// The progress line on stderr while the transfer runs (indicatif: redrawn in place, cut to
/// the terminal's width): elapsed time, percent, bytes, rate and ETA of the slowest destination
/// still going, and the count of those that failed, as soon as they fail. With `each`, a line
/// per destination under it, marked as soon as that destination fails; in a tree, a line per
/// host, the relayed ones from the reports that come up the tree as each is verified or fails.
pub struct ProgressDisplay {
    bars: MultiProgress,
    done: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl ProgressDisplay {
    /// Starts drawing when stderr is a terminal; `None` otherwise.
    pub fn start(
        progress: Arc<Progress>,
        destinations: &[String],
        total: Option<u64>,
        each: bool,
        tree: Option<TreeRows>,
    ) -> Option<ProgressDisplay> {
        if !std::io::stderr().is_terminal() {
            return None;
        }
        let (overall, per_destination) = match total {
            Some(_) => (
                "{elapsed:>4} {bar:12} {percent:>3}% {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {wide_msg}",
                "  {bar:12} {percent:>3}% {bytes} {bytes_per_sec} {wide_msg}",
            ),
            None => (
                "{elapsed:>4} {bytes} {bytes_per_sec} {wide_msg}",
                "  {bytes} {bytes_per_sec} {wide_msg}",
            ),
        };
        let bar = |template: &str| {
            let style = ProgressStyle::with_template(template).ok()?;
            let bar = match total {
                Some(t) => ProgressBar::new(t),
                None => ProgressBar::no_length(),
            };
            Some(bar.with_style(style))
        };
        let bars = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4));
        let line = bars.add(bar(overall)?);
        let mut lines = Vec::new();
        let rows = match (&tree, each) {
            (Some(t), true) => t.route.len(),
            (None, true) => destinations.len(),
            (_, false) => 0,
        };
        for _ in 0..rows {
            lines.push(bars.add(bar(per_destination)?));
        }
        let done = Arc::new(AtomicBool::new(false));
        let names = destinations.to_vec();
        let stop = done.clone();
        let thread = std::thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                let (sent, failed) = (progress.sent(), progress.failed());
                let (position, message) = summarize(&sent, &failed, &names);
                line.set_position(position);
                line.set_message(message);
                match &tree {
                    Some(t) if !lines.is_empty() => {
                        let states = t.hosts.states();
                        for (i, l) in lines.iter().enumerate() {
                            let direct = t.direct.iter().position(|&p| p == i + 1);
                            let (position, message) =
                                host_line(&t.route[i], direct, states.get(i), &sent, &failed);
                            l.set_position(position);
                            l.set_message(message);
                        }
                    }
                    _ => {
                        for (i, l) in lines.iter().enumerate() {
                            let failed = failed.get(i).copied().unwrap_or(false);
                            l.set_position(sent.get(i).copied().unwrap_or(0));
                            l.set_message(destination_line(&names[i], failed));
                        }
                    }
                }
                std::thread::park_timeout(Duration::from_millis(250));
            }
        });
        Some(ProgressDisplay { bars, done, thread })
    }

    /// Stops and erases the lines.
    pub fn stop(self) {
        self.done.store(true, Ordering::Release);
        self.thread.thread().unpark();
        let _ = self.thread.join();
        let _ = self.bars.clear();
    }
}

/// What a tree's per-host lines show: every host of the route, which of them the sender
/// sends to itself, and what is known of each.
pub struct TreeRows {
    /// Every host, in the order of the route.
    pub route: Vec<String>,
    /// The positions (from 1) the sender sends to itself, in the order of the progress
    /// counters.
    pub direct: Vec<usize>,
    pub hosts: Arc<LiveHosts>,
}

/// The bar position and the words of a tree's line for host `name`: a host the sender sends
/// to (`direct`: its counter) by its counter; a relayed one by what the reports say of it.
fn host_line(
    name: &str,
    direct: Option<usize>,
    state: Option<&HostState>,
    sent: &[u64],
    failed: &[bool],
) -> (u64, String) {
    let reported_failed = matches!(state, Some(HostState::Failed(_)));
    match (direct, state) {
        (Some(d), _) => {
            let failed = failed.get(d).copied().unwrap_or(false) || reported_failed;
            (
                sent.get(d).copied().unwrap_or(0),
                destination_line(name, failed),
            )
        }
        (None, Some(HostState::Verified(bytes))) => (*bytes, format!("{name} verified")),
        (None, Some(HostState::Failed(_))) => (0, format!("{name} FAILED")),
        (None, _) => (0, format!("{name} (relayed)")),
    }
}

/// The words after one destination's bar.
fn destination_line(name: &str, failed: bool) -> String {
    if failed {
        format!("{name} FAILED")
    } else {
        name.to_string()
    }
}

/// The position (bytes of the slowest destination still going) and the words after it: where
/// the stream goes and, as soon as any fail, how many failed.
fn summarize(sent: &[u64], failed: &[bool], names: &[String]) -> (u64, String) {
    let live: Vec<usize> = (0..sent.len())
        .filter(|&i| !failed.get(i).copied().unwrap_or(false))
        .collect();
    let failures = sent.len() - live.len();
    let slowest = live.iter().copied().min_by_key(|&i| sent[i]);
    let position = slowest.map_or(0, |i| sent[i]);
    // The failures first: the line is cut to the terminal's width from the right.
    let message = match (names, slowest) {
        (_, None) => "every destination failed".to_string(),
        ([only], Some(_)) => format!("to {only}"),
        (_, Some(i)) if failures > 0 => {
            format!("{failures} of {} failed, slowest {}", names.len(), names[i])
        }
        (_, Some(i)) => format!("to {} destinations, slowest {}", names.len(), names[i]),
    };
    (position, message)
}

/// The human word for a destination's outcome.
pub fn destination_status(d: &DestReport) -> String {
    match &d.outcome {
        Ok(Delivered::Confirmed { .. } | Delivered::Relayed) => "confirmed".to_string(),
        Ok(Delivered::Sent) => "sent (raw, unconfirmed)".to_string(),
        Err(e) => format!("FAILED: {}", crate::hint::with_hint(e)),
    }
}

/// `1.5 GiB`-style sizes.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn rate(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// The human summary on stderr: one line per destination, then the capture and the overall result.
/// With `failures_only` (`--quiet`), only what went wrong, one line each.
pub fn summary(report: &SendReport, failures_only: bool) {
    if failures_only {
        for d in report.destinations.iter().filter(|d| !d.is_ok()) {
            errln!("teecast: {}: {}", d.address, destination_status(d));
        }
        if let Some((path, Err(e))) = &report.capture {
            errln!("teecast: capture {}: FAILED: {e}", path.display());
        }
        if let Some(e) = &report.error {
            errln!("teecast: error: {}", crate::hint::send_error_with_hint(e));
        }
        return;
    }
    for d in &report.destinations {
        let status = destination_status(d);
        let via = d
            .parent
            .as_ref()
            .map_or_else(String::new, |p| format!(" (via {p})"));
        let note = d.note.as_ref().map_or_else(String::new, |n| {
            format!("; {}", teecast::proto::wire::escape_text(n, 200))
        });
        errln!(
            "teecast: {}{via}: {status}, {} in {:.2} s ({}/s){note}",
            d.address,
            human_bytes(d.bytes),
            d.elapsed.as_secs_f64(),
            human_bytes(rate(d.bytes, d.elapsed) as u64)
        );
    }
    if let Some((path, outcome)) = &report.capture {
        match outcome {
            Ok(()) => errln!("teecast: capture {}: written", path.display()),
            Err(e) => errln!("teecast: capture {}: FAILED: {e}", path.display()),
        }
    }
    if report.source_grew {
        errln!(
            "teecast: note: the source grew during the send; the length announced at the start was sent"
        );
    }
    if let Some(e) = &report.error {
        errln!("teecast: error: {}", crate::hint::send_error_with_hint(e));
    }
    let ok = report.destinations.iter().filter(|d| d.is_ok()).count();
    errln!(
        "teecast: {} via {}, {}: {ok} of {} destinations ok, {:.2} s",
        human_bytes(report.bytes),
        report.strategy,
        if report.encrypted {
            "encrypted"
        } else {
            "not encrypted"
        },
        report.destinations.len(),
        report.elapsed.as_secs_f64()
    );
}

/// The report as one JSON object (schema in the README), in the README's order.
#[derive(Serialize)]
struct JsonReport<'a> {
    ok: bool,
    source: &'a str,
    name: &'a str,
    strategy: &'static str,
    encrypted: bool,
    bytes: u64,
    seconds: f64,
    digest: Option<JsonDigest>,
    error: Option<String>,
    error_kind: Option<&'static str>,
    source_grew: bool,
    capture: Option<JsonCapture>,
    destinations: Vec<JsonDestination<'a>>,
}

#[derive(Serialize)]
struct JsonDigest {
    algorithm: &'static str,
    hex: String,
}

#[derive(Serialize)]
struct JsonCapture {
    path: String,
    status: &'static str,
    kind: Option<&'static str>,
    error: Option<String>,
}

#[derive(Serialize)]
struct JsonDestination<'a> {
    address: &'a str,
    parent: Option<&'a str>,
    status: &'static str,
    kind: Option<&'static str>,
    ack_status: Option<&'static str>,
    error: Option<String>,
    bytes: u64,
    receiver_digest: Option<String>,
    seconds: f64,
    bytes_per_second: f64,
    note: Option<&'a str>,
    encrypted: bool,
}

impl<'a> JsonDestination<'a> {
    fn of(d: &'a DestReport) -> Self {
        let ack_status = match &d.outcome {
            Err(DestFailure::Refused { status, .. }) => Some(status.as_str()),
            _ => None,
        };
        let (status, kind, error, receiver_digest) = match &d.outcome {
            // A host reached through a relay: the relay checked it against the sender's digest.
            Ok(Delivered::Relayed) => ("ok", None, None, None),
            Ok(Delivered::Confirmed { receiver_digest }) => {
                ("ok", None, None, Some(to_hex(receiver_digest)))
            }
            Ok(Delivered::Sent) => ("sent", None, None, None),
            Err(e) => ("failed", Some(e.kind()), Some(e.to_string()), None),
        };
        JsonDestination {
            address: &d.address,
            parent: d.parent.as_deref(),
            status,
            kind,
            ack_status,
            error,
            bytes: d.bytes,
            receiver_digest,
            seconds: d.elapsed.as_secs_f64(),
            bytes_per_second: rate(d.bytes, d.elapsed),
            note: d.note.as_deref(),
            encrypted: d.encrypted,
        }
    }
}

/// The report as one line of JSON (schema in the README).
pub fn json(report: &SendReport) -> String {
    let value = JsonReport {
        ok: report.is_success(),
        source: &report.source,
        name: &report.name,
        strategy: report.strategy.name(),
        encrypted: report.encrypted,
        bytes: report.bytes,
        seconds: report.elapsed.as_secs_f64(),
        digest: report.digest.as_ref().map(|d| JsonDigest {
            algorithm: d.algorithm.name(),
            hex: d.hex(),
        }),
        error: report.error.as_ref().map(ToString::to_string),
        error_kind: report.error.as_ref().map(SendError::kind),
        source_grew: report.source_grew,
        capture: report.capture.as_ref().map(|(p, r)| JsonCapture {
            path: p.display().to_string(),
            status: if r.is_ok() { "ok" } else { "failed" },
            kind: r.as_ref().err().map(|e| e.kind()),
            error: r.as_ref().err().map(ToString::to_string),
        }),
        destinations: report
            .destinations
            .iter()
            .map(JsonDestination::of)
            .collect(),
    };
    // Nothing in the report can fail to serialise (no maps with non-string keys).
    serde_json::to_string(&value).unwrap_or_default()
}

fn answer<T: Clone + Into<serde_json::Value>>(r: &Result<T, Unanswered>) -> serde_json::Value {
    match r {
        Ok(v) => v.clone().into(),
        Err(_) => serde_json::Value::Null,
    }
}

/// The probe's findings as one JSON object: each answer is a value, or `null` with the reason
/// under `errors`.
pub fn probe_json(f: &KernelFacts) -> serde_json::Value {
    let mut errors = serde_json::Map::new();
    let mut note = |k: &str, e: Option<&Unanswered>| {
        if let Some(e) = e {
            errors.insert(k.into(), json!(e.to_string()));
        }
    };
    note(
        "splice_shares_page_cache",
        f.splice_shares_page_cache.as_ref().err(),
    );
    note(
        "vmsplice_shares_user_pages",
        f.vmsplice_shares_user_pages.as_ref().err(),
    );
    note("tee_shares_pages", f.tee_shares_pages.as_ref().err());
    note("o_direct_available", f.o_direct_available.as_ref().err());
    note(
        "o_direct_splice_private",
        f.o_direct_splice_private.as_ref().err(),
    );
    note("pipe_max_size", f.pipe_max_size.as_ref().err());
    note(
        "pipe_granted_for_1mib",
        f.pipe_granted_for_1mib.as_ref().err(),
    );
    note(
        "msg_zerocopy_accepted",
        f.msg_zerocopy_accepted.as_ref().err(),
    );
    note("io_uring_usable", f.io_uring_usable.as_ref().err());
    let stable: Vec<&str> = Strategy::stable_on(f).iter().map(|s| s.name()).collect();
    json!({
        "dir": f.dir.display().to_string(),
        "filesystem": f.filesystem,
        "splice_shares_page_cache": answer(&f.splice_shares_page_cache),
        "vmsplice_shares_user_pages": answer(&f.vmsplice_shares_user_pages),
        "tee_shares_pages": answer(&f.tee_shares_pages),
        "o_direct_available": answer(&f.o_direct_available),
        "o_direct_splice_private": answer(&f.o_direct_splice_private),
        "pipe_max_size": answer(&f.pipe_max_size),
        "pipe_granted_for_1mib": answer(&f.pipe_granted_for_1mib),
        "msg_zerocopy_accepted": answer(&f.msg_zerocopy_accepted),
        "io_uring_usable": answer(&f.io_uring_usable),
        "stable_strategies": stable,
        "auto": Strategy::auto_steps(f)
            .iter()
            .map(|(from, s)| serde_json::json!({"from_destinations": from, "strategy": s.name()}))
            .collect::<Vec<_>>(),
        "aead": {
            "implementation": f.aead.implementation,
            "bytes_per_second": f.aead.bytes_per_second,
        },
        "seconds": f.elapsed.as_secs_f64(),
        "errors": errors,
    })
}

/// The probe's findings for people: one line per question, with what the answer means.
pub fn probe_human(f: &KernelFacts) {
    fn yes_no(r: &Result<bool, Unanswered>, yes: &str, no: &str) -> String {
        match r {
            Ok(true) => format!("yes — {yes}"),
            Ok(false) => format!("no — {no}"),
            Err(e) => format!("could not tell ({e})"),
        }
    }
    fn maybe(r: &Result<Option<bool>, Unanswered>, yes: &str, no: &str, none: &str) -> String {
        match r {
            Ok(Some(v)) => yes_no(&Ok(*v), yes, no),
            Ok(None) => none.to_string(),
            Err(e) => format!("could not tell ({e})"),
        }
    }
    outln!(
        "probe's findings",
        "teecast probe: {} ({}), {:.1} ms",
        f.dir.display(),
        f.filesystem,
        f.elapsed.as_secs_f64() * 1e3
    );
    outln!(
        "probe's findings",
        "  splice file→pipe shares page-cache pages: {}",
        yes_no(
            &f.splice_shares_page_cache,
            "zerocopy is NOT stable here (docs/KERNEL.md §3)",
            "file splice copies, zerocopy is stable here"
        )
    );
    outln!(
        "probe's findings",
        "  vmsplice shares the user's pages:          {}",
        yes_no(
            &f.vmsplice_shares_user_pages,
            "reusing a buffer corrupts data in flight; teecast uses fresh pages (§2)",
            "vmsplice copies (the 2026 change); still stable"
        )
    );
    outln!(
        "probe's findings",
        "  tee shares pages:                          {}",
        maybe(
            &f.tee_shares_pages,
            "a tee'd copy is the same page (§1.2)",
            "tee copied",
            "nothing to tell: file splice already copies"
        )
    );
    outln!(
        "probe's findings",
        "  O_DIRECT on this filesystem:               {}",
        yes_no(
            &f.o_direct_available,
            "open and splice work",
            "refused; --strategy direct cannot run here"
        )
    );
    outln!(
        "probe's findings",
        "  O_DIRECT splice gives private pages:       {}",
        maybe(
            &f.o_direct_splice_private,
            "direct is stable here (§1.1)",
            "direct is NOT stable here",
            "not applicable"
        )
    );
    let size = |r: &Result<u64, Unanswered>| match r {
        Ok(v) => human_bytes(*v),
        Err(e) => format!("? ({e})"),
    };
    outln!(
        "probe's findings",
        "  pipe-max-size {}, F_SETPIPE_SZ(1 MiB) granted {}",
        size(&f.pipe_max_size),
        size(&f.pipe_granted_for_1mib.map(|v| v as u64))
    );
    outln!(
        "probe's findings",
        "  SO_ZEROCOPY accepted: {}; io_uring usable: {}",
        yes_no(
            &f.msg_zerocopy_accepted,
            "MSG_ZEROCOPY possible",
            "no MSG_ZEROCOPY"
        ),
        yes_no(&f.io_uring_usable, "SEND_ZC possible", "unavailable")
    );
    let stable: Vec<&str> = Strategy::stable_on(f).iter().map(|s| s.name()).collect();
    outln!(
        "probe's findings",
        "  stable paths here: {}",
        stable.join(", ")
    );
    let steps = Strategy::auto_steps(f);
    let picks: Vec<String> = steps
        .iter()
        .enumerate()
        .map(|(i, (from, s))| match steps.get(i + 1) {
            Some((next, _)) if next - 1 == *from => format!("{s} for {from} destination(s)"),
            Some((next, _)) => format!("{s} for {from}–{} destinations", next - 1),
            None => format!("{s} for {from} or more"),
        })
        .collect();
    outln!("probe's findings", "  auto picks: {}", picks.join(", "));
    outln!(
        "probe's findings",
        "  encrypted streams: {}, {}/s on one core",
        f.aead.implementation,
        human_bytes(f.aead.bytes_per_second)
    );
}

/// Says so when a tree needed a longer stall timeout than the one asked for.
pub(crate) fn say_stall_raised(transfer: &Transfer<'_>) {
    if let Some((asked, used)) = transfer.stall_raised() {
        errln!(
            "teecast: a stall timeout of {:.3} s is too short for a tree this deep: {:.2} s is used (each level gives up on a stalled host sooner than the one above it, and none within 1 s)",
            asked.as_secs_f64(),
            used.as_secs_f64()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("host{i}:7000")).collect()
    }

    #[test]
    fn the_line_follows_the_slowest_destination_still_going() {
        let (pos, msg) = summarize(&[50, 10, 30], &[false, false, false], &names(3));
        assert_eq!(pos, 10);
        assert_eq!(msg, "to 3 destinations, slowest host1:7000");
    }

    /// Regression: a refused destination stayed "slowest" for the whole transfer.
    #[test]
    fn a_failed_destination_is_counted_at_once_and_never_the_slowest() {
        let (pos, msg) = summarize(&[50, 0, 30], &[false, true, false], &names(3));
        assert_eq!(pos, 30);
        assert_eq!(msg, "1 of 3 failed, slowest host2:7000");
        let (_, msg) = summarize(&[0, 0], &[true, true], &names(2));
        assert_eq!(msg, "every destination failed");
        let (_, msg) = summarize(&[7], &[false], &names(1));
        assert_eq!(msg, "to host0:7000");
    }

    #[test]
    fn a_destination_line_says_when_it_failed() {
        assert_eq!(destination_line("host1:7000", false), "host1:7000");
        assert_eq!(destination_line("host1:7000", true), "host1:7000 FAILED");
    }
}
