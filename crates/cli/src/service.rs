//! `teecast recv` as a service: its log lines (with the journal's `<N>` priority prefixes when
//! standard error is the journal), its notices to the service manager (`READY=1`, `STATUS=`,
//! `STOPPING=1`) and its signals (SIGTERM stops gracefully, a second one or SIGINT at once).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use teecast::proto::wire;
use teecast::recv::Control;
use teecast::service::{self, Notifier};

use crate::keys::KeyFiles;
use crate::out::errln;

/// How important a log line is: syslog's levels, which the journal reads from a `<N>` prefix.
#[derive(Clone, Copy, Debug)]
pub enum Priority {
    /// Something failed (a stream refused, cut or mismatched).
    Error = 3,
    /// Worth attention (`--insecure`, streams cut by a stop).
    Warning = 4,
    /// What happens in the ordinary way (listening, a stream stored).
    Info = 6,
}

/// Writes the receiver's log lines on standard error.
#[derive(Clone, Copy, Debug)]
pub struct Log {
    /// Standard error is the journal: every line starts with its priority, `<N>`.
    journal: bool,
}

impl Log {
    /// The log of this process: prefixed when standard error is the journal.
    pub fn new() -> Log {
        Log {
            journal: service::stderr_is_journal(),
        }
    }

    /// Writes one line.
    pub fn line(&self, priority: Priority, text: fmt::Arguments<'_>) {
        if self.journal {
            errln!("<{}>{text}", priority as u8);
        } else {
            errln!("{text}");
        }
    }
}

/// `log!(log, Info, "teecast: {peer}: …")`: [`Log::line`] with `format!` arguments.
macro_rules! log {
    ($log:expr, $priority:ident, $($arg:tt)*) => {
        $log.line($crate::service::Priority::$priority, format_args!($($arg)*))
    };
}
pub(crate) use log;

/// What the service manager is told, and what it needs to say it: the streams in flight.
pub struct Status {
    notifier: Option<Notifier>,
    state: Mutex<StatusState>,
}

#[derive(Default)]
struct StatusState {
    /// The streams in flight, by their sender's address (one connection each): their names.
    streams: BTreeMap<SocketAddr, String>,
    stored: u64,
    /// Set once a stop began: what the status line says first.
    stopping: Option<String>,
}

/// At most this many names in the status line; the rest are counted.
const NAMES_SHOWN: usize = 4;

impl Status {
    /// The status of this process, told to `$NOTIFY_SOCKET` if it is set.
    pub fn new() -> Status {
        Status {
            notifier: Notifier::from_env(),
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StatusState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Listening: `READY=1`.
    pub fn ready(&self) {
        let status = self.lock().line();
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    /// A stream from `peer` passed its header.
    pub fn opened(&self, peer: SocketAddr, name: &str) {
        let status = {
            let mut state = self.lock();
            state.streams.insert(peer, wire::escape_text(name, 64));
            state.line()
        };
        self.send(&format!("STATUS={status}"));
    }

    /// The connection from `peer` ended; `stored`: its stream is kept.
    pub fn done(&self, peer: SocketAddr, stored: bool) {
        let status = {
            let mut state = self.lock();
            if state.streams.remove(&peer).is_none() && !stored {
                return;
            }
            state.stored += u64::from(stored);
            state.line()
        };
        self.send(&format!("STATUS={status}"));
    }

    /// A stop began, as `why` says: `STOPPING=1`.
    pub fn stopping(&self, why: String) -> usize {
        let (status, in_flight) = {
            let mut state = self.lock();
            state.stopping = Some(why);
            (state.line(), state.streams.len())
        };
        self.send(&format!("STOPPING=1\nSTATUS={status}"));
        in_flight
    }

    fn send(&self, state: &str) {
        if let Some(n) = &self.notifier {
            // A manager that is gone loses the notice and nothing else.
            let _ = n.notify(state);
        }
    }
}

impl StatusState {
    /// The status line: what is in flight, and how many were stored since the start.
    fn line(&self) -> String {
        let mut line = self.stopping.clone().map_or_else(String::new, |s| s + "; ");
        match self.streams.len() {
            0 => line.push_str("no streams in flight"),
            n => {
                let s = if n == 1 { "" } else { "s" };
                line.push_str(&format!("receiving {n} stream{s}: "));
                let names: Vec<String> = self
                    .streams
                    .iter()
                    .take(NAMES_SHOWN)
                    .map(|(peer, name)| format!("{name} from {peer}"))
                    .collect();
                line.push_str(&names.join(", "));
                if n > NAMES_SHOWN {
                    line.push_str(&format!(" and {} more", n - NAMES_SHOWN));
                }
            }
        }
        line.push_str(&format!("; {} stored since the start", self.stored));
        line
    }
}

/// Handles the signals of a running receiver on a thread of its own: the first SIGTERM stops
/// it gracefully (`control` lets the streams in flight finish for up to `drain`); a second one,
/// or SIGINT, ends the process at once, with 128 + the signal as a shell reports it (130, 143)
/// — nothing partial is kept, as every stream is a file with no name until it is verified. SIGHUP reads `keys` again.
pub fn handle_signals(
    control: Control,
    drain: Duration,
    status: Arc<Status>,
    log: Log,
    keys: KeyFiles,
) -> std::io::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    std::thread::Builder::new()
        .name("teecast-signals".into())
        .spawn(move || {
            let mut stopping = false;
            for signal in signals.forever() {
                if signal == SIGHUP {
                    reload(&control, &keys, log);
                    continue;
                }
                if signal == SIGTERM && !stopping {
                    stopping = true;
                    let n = status.stopping(format!(
                        "stopping: accepting no more, streams in flight have {}",
                        humantime::format_duration(drain)
                    ));
                    log!(
                        log,
                        Info,
                        "teecast: stopping (SIGTERM): no new connections; {n} stream(s) in flight may finish within {}",
                        humantime::format_duration(drain)
                    );
                    control.stop(drain);
                    continue;
                }
                let name = if signal == SIGINT { "SIGINT" } else { "SIGTERM" };
                let n = status.stopping(format!("stopping now ({name})"));
                log!(
                    log,
                    Warning,
                    "teecast: interrupted: stopped now ({name}); {n} stream(s) in flight cut, nothing of them kept; stored ones stay"
                );
                std::process::exit(128 + signal);
            }
        })?;
    Ok(())
}

/// SIGHUP: the key files read again, for the connections from now on. A file that cannot be
/// used (open to others, unreadable, gone, not a key) refuses the whole reload: the keys in use
/// stay, and the log says why.
fn reload(control: &Control, keys: &KeyFiles, log: Log) {
    if keys.is_empty() {
        log!(log, Info, "teecast: SIGHUP: no key files to read again");
        return;
    }
    match keys.reload() {
        Ok(new) => {
            let n = new.len();
            control.set_keys(new);
            log!(
                log,
                Info,
                "teecast: keys read again (SIGHUP): {n} key(s) from now on; streams in flight keep theirs"
            );
        }
        Err(e) => log!(
            log,
            Error,
            "teecast: keys not read again (SIGHUP): {e}; the keys in use stay"
        ),
    }
}
