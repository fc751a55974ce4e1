//! The syscall layer of teecast: the only crate allowed `unsafe`.
//!
//! Thin, typed wrappers over the calls teecast builds on — pipes and their sizes, `splice`, `tee`,
//! `vmsplice`, file mappings, fresh anonymous pages, `poll`, the files a receiver publishes,
//! randomness — each documented with the C call it wraps, one call a function. The library and the
//! benchmark make no system call of their own beyond the standard library's: they call these. Where
//! `rustix` offers a safe call it does the work; what needs `unsafe` lives here with its contract
//! spelled out (`// SAFETY:` on every block, checked by
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

pub use fs::{
    FileKind, Filesystem, Space, Status, create_new_at, create_unnamed_at, dir_names, file_size,
    filesystem, is_tmpfs, link_empty_path_at, link_open_file_at, memfd, open_dir_at, open_dir_path,
    open_direct, position, rename_at, rename_noreplace_at, reopen_direct, reopen_direct_write,
    set_mode, space, start_writeback, status, status_at, unlink_at,
};
pub use io::{bytes_queued, pread, pwrite, read, sendfile, write};
pub use mm::{AlignedBuf, FileMap, FreshPages, page_size, vmsplice_then_overwrite};
pub use net::{
    end_on_close, listen_dual_stack, not_a_tcp_listener, reset_on_close, send_now, set_zerocopy,
    tcp_socket, unacknowledged,
};
pub use pipe::{Pipe, pipe_size, set_pipe_size, splice, splice_from_offset, tee};
pub use poll::{Readiness, eventfd, wait_any, wait_ready};
pub use process::{
    ChildrenUsage, children_usage, ignore_sigpipe, io_uring_usable, take_listen_fds,
};
pub use rand::fill_random;
pub use rustix::io::Errno;
pub use rustix::pipe::SpliceFlags;
