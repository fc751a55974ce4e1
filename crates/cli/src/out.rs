//! Standard output, written so that a closed or full stdout is a failure reported once on
//! stderr — never a panic, as `println!` would be on `EPIPE` or `ENOSPC`; and standard error,
//! written so that a closed or full stderr loses the log line and nothing else (`eprintln!`
//! would panic).

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

/// Writes one line to stderr; a stderr that cannot take it loses the line, never the run.
pub fn err_line(text: fmt::Arguments<'_>) {
    let mut stderr = std::io::stderr().lock();
    let _ = stderr
        .write_fmt(text)
        .and_then(|()| stderr.write_all(b"\n"));
}

/// `errln!("teecast: {peer}: {e}")`: [`err_line`] with `format!` arguments, for every log line.
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::out::err_line(format_args!($($arg)*))
    };
}
pub(crate) use errln;

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
                errln!("teecast: cannot write the {what}: {e}");
            }
            false
        }
    }
}

/// The name in a digest line (`<hex>  <name>`): on a terminal escaped where it needs it (a
/// peer's U+202E must not turn the line around); into a pipe or a file as it is, for
/// `sha256sum -c` and the like to find the file.
pub fn digest_line_name(name: &str) -> std::borrow::Cow<'_, str> {
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() {
        teecast::proto::wire::escape_if_needed(name)
    } else {
        std::borrow::Cow::Borrowed(name)
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
