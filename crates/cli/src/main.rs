//! The `teecast` command: argument parsing, progress, reports and exit codes over the library.
//!
//! Exit codes: 0 every destination confirmed the digest; 1 a destination failed or did not
//! confirm (or a receiver did not store a stream with `--once`); 2 bad usage or unusable input.
#![deny(unsafe_code)]

mod addr;
mod cli;
mod demo;
mod exit;
mod hint;
mod interrupt;
mod keys;
mod mutate;
mod out;
mod parse;
mod push;
mod report;
mod service;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
