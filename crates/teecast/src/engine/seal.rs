//! The encrypted path: the source sealed once, for every destination, into the records of
//! version 3 (docs/PROTOCOL.md "Records"). Each chunk is read into fresh pages, hashed (the
//! digest is of the plaintext), written to the capture (which stores the plaintext), sealed in
//! place, one AEAD pass, and given to the source pipe with `vmsplice`; from there the pipe
//! fan-out `tee`s the ciphertext to every destination as it does any stream. Pages read into
//! are private, so the bytes are stable whatever happens to the source; the sealing needs them
//! in memory, which is why every `--strategy` resolves to this one path when a stream is
//! encrypted.

use std::os::fd::BorrowedFd;

use teecast_proto::crypt::{
    FULL_RECORD, RECORD_HEADER_LEN, RECORD_LEN, RECORDS_PER_KEY, RecordSealer, TAG_LEN,
    TransferKey, sealed_len,
};
use teecast_sys::FreshPages;

use super::{
    Abandoned, Capture, CaptureError, Consumer, EngineError, FanoutConfig, FanoutReport, Filler,
    Plan, read_source, refuse, run,
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
    let capture = match config.capture.as_deref().map(Capture::create).transpose() {
        Ok(c) => c,
        Err(e) => {
            let mut report = refuse(
                EngineError::Capture,
                Some(Strategy::Vmsplice),
                consumers,
                config,
            );
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
        capture,
        capture_error: None,
    };
    // Records need room in every pipe: a chunk holds at least one whole record.
    let mut pipes = config.clone();
    pipes.capture = None;
    pipes.pipe_chunk = pipes.pipe_chunk.max(4 * FULL_RECORD);
    pipes.pipe_size = pipes.pipe_size.max(2 * pipes.pipe_chunk);
    // No source for the engine's own size check, which compares the file with the records'
    // length: the plaintext is read, never spliced, so a file cut short shows as a short read
    // (a final record too early, fewer bytes than announced), and only growth is left to see.
    let mut report = run(
        Plan::Pipes(Box::new(&mut filler)),
        None,
        length,
        Some(Strategy::Vmsplice),
        consumers,
        &pipes,
    );
    report.bytes = filler.plain;
    report.capture = filler.finish_capture(&report.result);
    report.source_grew = source
        .len()
        .is_some_and(|l| source.current_size().is_ok_and(|now| now > l));
    report
}

/// Reads plaintext into fresh pages, record by record, and seals each in place.
struct SealingFiller<'a> {
    source: &'a Source,
    sealer: RecordSealer,
    /// The plaintext's announced length (a file), or `None` (a stream).
    length: Option<u64>,
    /// Plaintext bytes read so far.
    plain: u64,
    /// The final record is out.
    done: bool,
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

impl Filler for &mut SealingFiller<'_> {
    fn fill(
        &mut self,
        pipe: BorrowedFd<'_>,
        _offset: u64,
        want: usize,
        mut hasher: Option<&mut Hasher>,
    ) -> Result<usize, EngineError> {
        if self.done {
            return Ok(0);
        }
        let pipe_err = |source| EngineError::Pipe {
            op: "filling the pipe",
            source,
        };
        // As many whole records as `want` holds; at least one, since the last record of a
        // stream of known length is all that is left when `want` is smaller than a record.
        let records = (want / FULL_RECORD).max(1);
        let mut pages = FreshPages::new(records * FULL_RECORD).map_err(pipe_err)?;
        let mut out = 0;
        for _ in 0..records {
            let wanted = match self.length {
                Some(l) => {
                    usize::try_from(l - self.plain).map_or(RECORD_LEN, |left| left.min(RECORD_LEN))
                }
                None => RECORD_LEN,
            };
            let record = &mut pages.as_mut_slice()[out..out + FULL_RECORD];
            let body = &mut record[RECORD_HEADER_LEN..RECORD_HEADER_LEN + RECORD_LEN];
            let got = read_source(self.source, &mut body[..wanted], self.plain)?;
            // Every record but the last is full: a short one ends the stream (a file cut short
            // shows as fewer bytes than announced, and the engine fails the transfer).
            let last = got < RECORD_LEN;
            if let Some(h) = hasher.as_deref_mut() {
                h.update(&body[..got]);
            }
            self.capture(&record[RECORD_HEADER_LEN..RECORD_HEADER_LEN + got]);
            let record = &mut pages.as_mut_slice()[out..out + FULL_RECORD];
            let (header, tag) = self
                .sealer
                .seal_in_place(
                    &mut record[RECORD_HEADER_LEN..RECORD_HEADER_LEN + got],
                    last,
                )
                .ok_or(EngineError::PipeInvariant(
                    "a record was sealed after the final one",
                ))?;
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
        pages.vmsplice_into(pipe, out).map_err(pipe_err)?;
        Ok(out)
    }

    fn hashes(&self) -> bool {
        true
    }
}
