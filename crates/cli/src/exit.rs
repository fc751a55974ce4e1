//! The command's exit codes, one home for every subcommand.

/// Exit code: every destination confirmed.
pub const EXIT_OK: u8 = 0;
/// Exit code: a destination failed or did not confirm.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: bad usage or unusable input.
pub const EXIT_USAGE: u8 = 2;
