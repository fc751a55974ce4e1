//! Ctrl-C (SIGINT) on `send`, `push` and `recv`: one line on stderr saying what it stopped,
//! then exit 130 (128 + SIGINT), as the demo does and a shell reports an interrupted command.

use crate::out::errln;

/// From now on, Ctrl-C prints `teecast: interrupted: WHAT` (`what` says it, when the signal
/// comes) and exits 130. Without a signal thread (none could be made) Ctrl-C ends the process
/// as it would anyway, silently.
pub fn on_ctrl_c(what: impl Fn() -> String + Send + 'static) {
    let Ok(mut signals) = signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT]) else {
        return;
    };
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            errln!("teecast: interrupted: {}", what());
            std::process::exit(130);
        }
    });
}
