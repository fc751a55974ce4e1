//! The encrypted path: the source sealed once, for every destination, into the records of
//! version 3 (docs/PROTOCOL.md "Records"). Each chunk is read with `read()` into a private
//! buffer, hashed (the digest is of the plaintext), written to the capture (which stores the
//! plaintext) and sealed in place, one AEAD pass; the sealed buffer is then what every
//! destination sends: shared by the `readwrite` threads, each writing it to its socket, or
//! written into the source pipe, which the pipe fan-out `tee`s to every destination as it does
//! any stream. The buffer is private, so the bytes are stable whatever happens to the source;
//! the sealing needs them in memory, which is why an encrypted stream takes one of these two
//! paths whatever `--strategy` asks ([`Strategy::sealing`]).

use std::os::fd::BorrowedFd;

use teecast_proto::crypt::{
    FULL_RECORD, RECORD_HEADER_LEN, RECORD_LEN, RECORDS_PER_KEY, RecordSealer, TAG_LEN,
    TransferKey, sealed_len,
};
use teecast_sys::AlignedBuf;

use super::pipes::write_all;
use super::{
    Abandoned, BufferFiller, Capture, CaptureError, Consumer, EngineError, FanoutConfig,
    FanoutReport, Filler, Plan, read_source, refuse, run,
};
use crate::digest::{Digest, Hasher};
use crate::source::Source;
use crate::strategy::Strategy;

/// Sends `source` to every consumer as the records of `transfer`: the encrypted counterpart of
/// [`fan_out`](super::fan_out), with the capture (if any) of the plaintext. The report's
/// `bytes` are the plaintext's; what each consumer took is the records.
pub fn fan_out_sealed<C: Consumer>(
    source: &Source,
    transfer: &TransferKey,
    consumers: Vec<C>,
    config: &FanoutConfig,
) -> FanoutReport<C::Outcome, C::Error> {
    // No file is long enough for its records' length to pass u64::MAX.
    let length = source.len().map(|l| sealed_len(l).unwrap_or(u64::MAX));
    let strategy = config.strategy.sealing();
    let capture = match config.capture.as_deref().map(Capture::create).transpose() {
        Ok(c) => c,
        Err(e) => {
            let mut report = refuse(EngineError::Capture, Some(strategy), consumers, config);
            report.capture = Some(Err(e));
            return report;
        }
    };
    let mut filler = SealingFiller {
        source,
        sealer: RecordSealer::new(transfer, RECORDS_PER_KEY),
        length: source.len(),
        plain: 0,
        done: false,
        buf: AlignedBuf::default(),
        capture,
        capture_error: None,
    };
    // Whole records in every buffer and pipe chunk, at least four.
    let mut sizes = config.clone();
    sizes.capture = None;
    sizes.buffer_chunk = sizes.buffer_chunk.div_ceil(FULL_RECORD).max(4) * FULL_RECORD;
    sizes.pipe_chunk = sizes.pipe_chunk.max(4 * FULL_RECORD);
    sizes.pipe_size = sizes.pipe_size.max(2 * sizes.pipe_chunk);
    let plan = match strategy {
        Strategy::ReadWrite => Plan::FilledBuffers(Box::new(&mut filler)),
        _ => Plan::Pipes(Box::new(&mut filler)),
    };
    // No source for the engine's own size check, which compares the file with the records'
    // length: the plaintext is read, never spliced, so a file cut short shows as a short read
    // (a final record too early, fewer bytes than announced), and only growth is left to see.
    let mut report = run(plan, None, length, Some(strategy), consumers, &sizes);
    report.bytes = filler.plain;
    report.capture = filler.finish_capture(&report.result);
    report.source_grew = source
        .len()
        .is_some_and(|l| source.current_size().is_ok_and(|now| now > l));
    report
}

/// Reads plaintext into a buffer, record by record, and seals each in place.
struct SealingFiller<'a> {
    source: &'a Source,
    sealer: RecordSealer,
    /// The plaintext's announced length (a file), or `None` (a stream).
    length: Option<u64>,
    /// Plaintext bytes read so far.
    plain: u64,
    /// The final record is out.
    done: bool,
    /// The records of one chunk, sealed here and written to the pipe.
    buf: AlignedBuf,
    /// The capture, written with the plaintext as it is read; dropped when it fails.
    capture: Option<Capture>,
    capture_error: Option<CaptureError>,
}

impl SealingFiller<'_> {
    /// Hands `plain` to the capture; a capture that fails is dropped and the stream goes on.
    fn capture(&mut self, plain: &[u8]) {
        if let Some(c) = &mut self.capture
            && let Err(e) = c.take_from_buffer(plain)
        {
            c.abort();
            self.capture = None;
            self.capture_error = Some(e);
        }
    }

    /// The capture's outcome once the stream has `result`: stored when the stream completed.
    fn finish_capture(
        &mut self,
        result: &Result<Digest, EngineError>,
    ) -> Option<Result<(), CaptureError>> {
        if let Some(e) = self.capture_error.take() {
            return Some(Err(e));
        }
        let mut capture = self.capture.take()?;
        Some(match result {
            Ok(digest) => capture.finish(self.plain, digest),
            Err(_) => {
                capture.abort();
                Err(CaptureError::Abandoned(Abandoned::Transfer))
            }
        })
    }
}

impl SealingFiller<'_> {
    /// Reads, hashes, captures and seals the next records into `buf` (room for at least one
    /// whole record); their length on the wire, 0 once the final record is out.
    fn seal_into(
        &mut self,
        buf: &mut [u8],
        mut hasher: Option<&mut Hasher>,
    ) -> Result<usize, EngineError> {
        if self.done {
            return Ok(0);
        }
        let mut out = 0;
        for record in buf.chunks_exact_mut(FULL_RECORD) {
            let wanted = match self.length {
                Some(l) => {
                    usize::try_from(l - self.plain).map_or(RECORD_LEN, |left| left.min(RECORD_LEN))
                }
                None => RECORD_LEN,
            };
            let body = &mut record[RECORD_HEADER_LEN..RECORD_HEADER_LEN + RECORD_LEN];
            let got = read_source(self.source, &mut body[..wanted], self.plain)?;
            // Every record but the last is full: a short one ends the stream (a file cut short
            // shows as fewer bytes than announced, and the engine fails the transfer).
            let last = got < RECORD_LEN;
            if let Some(h) = hasher.as_deref_mut() {
                h.update(&body[..got]);
            }
            self.capture(&body[..got]);
            let (header, tag) = self.sealer.seal_in_place(&mut body[..got], last).ok_or(
                EngineError::PipeInvariant("a record was sealed after the final one"),
            )?;
            record[..RECORD_HEADER_LEN].copy_from_slice(&header);
            record[RECORD_HEADER_LEN + got..RECORD_HEADER_LEN + got + TAG_LEN]
                .copy_from_slice(&tag);
            out += RECORD_HEADER_LEN + got + TAG_LEN;
            self.plain += got as u64;
            if last {
                self.done = true;
                break;
            }
        }
        Ok(out)
    }
}

/// The pipe paths: the records of a chunk sealed in a buffer of the filler's own, then written
/// into the source pipe, which the engine `tee`s to every destination.
impl Filler for &mut SealingFiller<'_> {
    fn fill(
        &mut self,
        pipe: BorrowedFd<'_>,
        _offset: u64,
        want: usize,
        hasher: Option<&mut Hasher>,
    ) -> Result<usize, EngineError> {
        // As many whole records as `want` holds; at least one, since the last record of a
        // stream of known length is all that is left when `want` is smaller than a record.
        let len = (want / FULL_RECORD).max(1) * FULL_RECORD;
        let mut buf = std::mem::take(&mut self.buf);
        if buf.len() < len {
            buf = AlignedBuf::new(len);
        }
        let sealed = self.seal_into(&mut buf[..len], hasher).and_then(|n| {
            write_all(pipe, &buf[..n])
                .map(|()| n)
                .map_err(|source| EngineError::Pipe {
                    op: "filling the pipe",
                    source,
                })
        });
        self.buf = buf;
        sealed
    }

    fn hashes(&self) -> bool {
        true
    }
}

/// The `readwrite` path: the records sealed straight into the engine's pooled buffers, which
/// every destination writes to its socket.
impl BufferFiller for &mut SealingFiller<'_> {
    fn fill_buffer(
        &mut self,
        buf: &mut [u8],
        hasher: Option<&mut Hasher>,
    ) -> Result<usize, EngineError> {
        self.seal_into(buf, hasher)
    }
}
