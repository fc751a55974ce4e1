//! The buffer paths: `readwrite` (one pooled buffer, filled by `read()`, shared read-only by every
//! consumer) and `mmap-write` (ranges of a file mapping, copied by the kernel into the socket).

use std::sync::{Arc, Condvar, Mutex};

use super::{
    Branch, BufferFiller, EngineError, FanoutConfig, Piece, SourceMap, check_short, fresh_size,
    next_want, read_source,
};
use crate::digest::Hasher;
use crate::source::Source;
use crate::sync::{lock, wait};
use teecast_sys::AlignedBuf;

/// A bounded pool of equally sized buffers; [`Chunk`]s return theirs when the last consumer
/// drops them, so memory never exceeds `count × size`.
pub(super) struct BufferPool {
    free: Mutex<Vec<AlignedBuf>>,
    returned: Condvar,
}

impl BufferPool {
    fn new(count: usize, size: usize) -> Arc<BufferPool> {
        Arc::new(BufferPool {
            free: Mutex::new((0..count.max(1)).map(|_| AlignedBuf::new(size)).collect()),
            returned: Condvar::new(),
        })
    }

    fn take(&self) -> AlignedBuf {
        let mut free = lock(&self.free);
        loop {
            if let Some(buf) = free.pop() {
                return buf;
            }
            free = wait(&self.returned, free);
        }
    }
}

/// One filled buffer, shared read-only by every consumer.
pub(super) struct Chunk {
    buf: AlignedBuf,
    len: usize,
    pool: Arc<BufferPool>,
}

impl Chunk {
    pub(super) fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        let mut free = lock(&self.pool.free);
        free.push(buf);
        self.pool.returned.notify_one();
    }
}

pub(super) fn pump_buffers(
    source: &Source,
    branches: &mut [Branch],
    config: &FanoutConfig,
) -> Result<u64, EngineError> {
    let mut reader = SourceReader {
        source,
        total: source.len(),
        sent: 0,
    };
    pump_filled(&mut reader, branches, config, None)
}

/// The plain `readwrite` filler: each buffer `read()` from the source, in order.
struct SourceReader<'a> {
    source: &'a Source,
    total: Option<u64>,
    sent: u64,
}

impl BufferFiller for SourceReader<'_> {
    fn fill_buffer(
        &mut self,
        buf: &mut [u8],
        _hasher: Option<&mut Hasher>,
    ) -> Result<usize, EngineError> {
        let want = next_want(self.total, self.sent, buf.len());
        if want == 0 {
            return Ok(0);
        }
        let got = read_source(self.source, &mut buf[..want], self.sent)?;
        check_short(self.total, self.sent, want, got)?;
        self.sent += got as u64;
        Ok(got)
    }
}

/// `readwrite` over a caller's `filler` (the sealing path's records): each pooled buffer is
/// filled by it, then shared read-only by every consumer, as [`pump_buffers`] shares what it
/// reads.
pub(super) fn pump_filled(
    filler: &mut dyn BufferFiller,
    branches: &mut [Branch],
    config: &FanoutConfig,
    mut hasher: Option<&mut Hasher>,
) -> Result<u64, EngineError> {
    let pool = BufferPool::new(config.buffers, config.buffer_chunk);
    let mut sent = 0u64;
    loop {
        let mut buf = pool.take();
        let got = filler.fill_buffer(&mut buf, hasher.as_deref_mut())?;
        if got == 0 {
            return Ok(sent);
        }
        let chunk = Arc::new(Chunk {
            buf,
            len: got,
            pool: pool.clone(),
        });
        send_to_all(branches, || Piece::Buffer(chunk.clone()))?;
        sent += got as u64;
    }
}

/// mmap-write: each chunk is a range of the mapping, copied by the kernel straight into the
/// socket. The digest comes from a separate read of the file, so a concurrent writer makes the
/// receiver's check fail loudly: this path is stable per socket only.
pub(super) fn pump_map(
    source: &Source,
    branches: &mut [Branch],
    config: &FanoutConfig,
    mut hasher: Option<&mut Hasher>,
) -> Result<u64, EngineError> {
    let (Some(total), Some(map)) = (source.len(), SourceMap::of(source)?) else {
        return Ok(0);
    };
    let map = Arc::new(map);
    let len = map.len();
    let chunk_size = config.buffer_chunk;
    let mut buf = vec![0u8; chunk_size];
    let mut sent = 0usize;
    while sent < len {
        let want = (len - sent).min(chunk_size);
        if let Some(h) = hasher.as_deref_mut() {
            let got = read_source(source, &mut buf[..want], sent as u64)?;
            check_short(Some(total), sent as u64, want, got)?;
            h.update(&buf[..got]);
        }
        // Clamp to a fresh size: past EOF the kernel sends zeros or EFAULT (docs/KERNEL.md §3).
        let size = fresh_size(source)?;
        if size < (sent + want) as u64 {
            return Err(EngineError::Truncated {
                at: size,
                expected: total,
            });
        }
        send_to_all(branches, || Piece::Map(map.clone(), sent, want))?;
        sent += want;
    }
    Ok(total)
}

/// Hands a piece to every live consumer; fails when the digest or every destination is gone.
fn send_to_all(branches: &mut [Branch], piece: impl Fn() -> Piece) -> Result<(), EngineError> {
    for b in branches.iter_mut().filter(|b| b.alive()) {
        if !b.send(piece()) {
            b.fail()?;
        }
    }
    if !branches.iter().any(Branch::serves_a_caller) {
        return Err(EngineError::AllFailed);
    }
    Ok(())
}
