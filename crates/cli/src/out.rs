//! Standard output, written so that a closed or full stdout is a failure reported once on
//! stderr — never a panic, as `println!` would be on `EPIPE` or `ENOSPC`.

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set by the first line that could not be written; the exit code then is not 0.
static FAILED: AtomicBool = AtomicBool::new(false);

/// Writes one line to stdout and flushes it; `what` names the line in the error ("digest line").
/// The first failure is reported on stderr and marks the run failed ([`failed`]); every line
/// after it is dropped (what a reader gets is already incomplete). Returns whether it was written.
pub fn line(what: &str, text: fmt::Arguments<'_>) -> bool {
    if FAILED.load(Ordering::Acquire) {
        return false;
    }
    let mut line = text.to_string();
    line.push('\n');
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(line.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => true,
        Err(e) => {
            if !FAILED.swap(true, Ordering::AcqRel) {
                eprintln!("teecast: cannot write the {what}: {e}");
            }
            false
        }
    }
}

/// Whether a line could not be written to stdout.
pub fn failed() -> bool {
    FAILED.load(Ordering::Acquire)
}

/// `outln!("digest line", "{hex}  {path}")`: [`line`] with `format!` arguments.
macro_rules! outln {
    ($what:expr, $($arg:tt)*) => {
        $crate::out::line($what, format_args!($($arg)*))
    };
}
pub(crate) use outln;
