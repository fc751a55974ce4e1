//! The syscall layer of teecast: the only crate allowed `unsafe`.
//!
//! Thin, typed wrappers over the calls teecast builds on — pipes and their sizes, `splice`, `tee`,
//! `vmsplice`, file mappings, fresh anonymous pages and `poll` — each documented with the C call it
//! wraps. Where `rustix` offers a safe call it is used directly; what needs `unsafe` lives here with
//! its contract spelled out (`// SAFETY:` on every block, checked by
//! `clippy::undocumented_unsafe_blocks`). The kernel facts behind each rule are in `docs/KERNEL.md`
//! (cited as §n). Split as rustix is: [`pipe`], [`io`], [`poll`], [`mm`], [`fs`], [`net`],
//! [`process`]; the items are also re-exported at the root.
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

pub mod fs;
pub mod io;
pub mod mm;
pub mod net;
pub mod pipe;
pub mod poll;
pub mod process;
pub mod rand;

pub use fs::{Filesystem, file_size, filesystem, is_tmpfs, reopen, start_writeback};
pub use io::{bytes_queued, pread, read, write};
pub use mm::{AlignedBuf, FileMap, FreshPages, page_size, vmsplice_then_overwrite};
pub use net::{listen_dual_stack, reset_on_close, send_now, set_zerocopy};
pub use pipe::{Pipe, splice, splice_from_offset, tee};
pub use poll::{Readiness, wait_any, wait_ready};
pub use process::{
    ChildrenUsage, children_usage, ignore_sigpipe, io_uring_usable, take_listen_fds,
};
pub use rand::fill_random;
pub use rustix::fs::OFlags;
pub use rustix::pipe::SpliceFlags;
