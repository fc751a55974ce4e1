//! What the sender tells its user: a live progress line on a terminal, a summary per destination,
//! and the same as one JSON object for machines.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::json;
use teecast::send::{DestStatus, Progress, SendReport};

/// The progress line on stderr, redrawn a few times a second while the transfer runs.
pub struct ProgressDisplay {
    done: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl ProgressDisplay {
    /// Starts drawing when stderr is a terminal; `None` otherwise.
    pub fn start(
        progress: Arc<Progress>,
        destinations: &[String],
        total: Option<u64>,
    ) -> Option<ProgressDisplay> {
        if !std::io::stderr().is_terminal() {
            return None;
        }
        let done = Arc::new(AtomicBool::new(false));
        let names = destinations.to_vec();
        let stop = done.clone();
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            while !stop.load(Ordering::Acquire) {
                std::thread::park_timeout(Duration::from_millis(250));
                draw(&progress, &names, total, started.elapsed());
            }
            eprint!("\r\x1b[K");
        });
        Some(ProgressDisplay { done, thread })
    }

    /// Stops and erases the line.
    pub fn stop(self) {
        self.done.store(true, Ordering::Release);
        self.thread.thread().unpark();
        let _ = self.thread.join();
    }
}

fn draw(progress: &Progress, names: &[String], total: Option<u64>, elapsed: Duration) {
    let sent: Vec<u64> = progress
        .sent
        .iter()
        .map(|s| s.load(Ordering::Relaxed))
        .collect();
    let Some((slowest, &min)) = sent.iter().enumerate().min_by_key(|(_, b)| **b) else {
        return;
    };
    let secs = elapsed.as_secs_f64().max(1e-3);
    let rate = min as f64 / secs;
    let eta = match total {
        Some(t) if rate > 0.0 => format!(", ETA {:.0} s", (t.saturating_sub(min)) as f64 / rate),
        _ => String::new(),
    };
    let of = total.map_or_else(String::new, |t| format!(" of {}", human_bytes(t)));
    eprint!(
        "\r\x1b[K{}{of} to {} destinations, {}/s{eta}, slowest {}",
        human_bytes(min),
        names.len(),
        human_bytes(rate as u64),
        names[slowest]
    );
    let _ = std::io::stderr().flush();
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
pub fn summary(report: &SendReport) {
    for d in &report.destinations {
        let status = match &d.status {
            DestStatus::Confirmed => "confirmed".to_string(),
            DestStatus::Sent => "sent (raw, unconfirmed)".to_string(),
            DestStatus::Failed(e) => format!("FAILED: {e}"),
        };
        eprintln!(
            "teecast: {}: {status}, {} in {:.2} s ({}/s)",
            d.address,
            human_bytes(d.bytes),
            d.elapsed.as_secs_f64(),
            human_bytes(rate(d.bytes, d.elapsed) as u64)
        );
    }
    if let Some((path, outcome)) = &report.capture {
        match outcome {
            Ok(()) => eprintln!("teecast: capture {}: written", path.display()),
            Err(e) => eprintln!("teecast: capture {}: FAILED: {e}", path.display()),
        }
    }
    if report.source_grew {
        eprintln!(
            "teecast: note: the source grew during the send; the length announced at the start was sent"
        );
    }
    if let Some(e) = &report.error {
        eprintln!("teecast: error: {e}");
    }
    let ok = report.destinations.iter().filter(|d| d.is_ok()).count();
    eprintln!(
        "teecast: {} via {}: {ok} of {} destinations ok, {:.2} s",
        human_bytes(report.bytes),
        report.strategy,
        report.destinations.len(),
        report.elapsed.as_secs_f64()
    );
}

/// The report as one JSON object (schema in the README).
pub fn json(report: &SendReport) -> serde_json::Value {
    let destinations: Vec<_> = report
        .destinations
        .iter()
        .map(|d| {
            let (status, error) = match &d.status {
                DestStatus::Confirmed => ("ok", None),
                DestStatus::Sent => ("sent", None),
                DestStatus::Failed(e) => ("failed", Some(e.clone())),
            };
            json!({
                "address": d.address,
                "status": status,
                "error": error,
                "bytes": d.bytes,
                "receiver_digest": d.receiver_digest,
                "seconds": d.elapsed.as_secs_f64(),
                "bytes_per_second": rate(d.bytes, d.elapsed),
            })
        })
        .collect();
    json!({
        "ok": report.is_success(),
        "source": report.source,
        "name": report.name,
        "strategy": report.strategy.name(),
        "bytes": report.bytes,
        "seconds": report.elapsed.as_secs_f64(),
        "digest": report.digest.as_ref().map(|d| json!({"algorithm": d.algorithm.name(), "hex": d.hex()})),
        "error": report.error.as_ref().map(|e| e.to_string()),
        "source_grew": report.source_grew,
        "capture": report.capture.as_ref().map(|(p, r)| json!({
            "path": p.display().to_string(),
            "status": if r.is_ok() { "ok" } else { "failed" },
            "error": r.as_ref().err(),
        })),
        "destinations": destinations,
    })
}
