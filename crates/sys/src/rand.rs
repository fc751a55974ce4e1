//! Randomness from the kernel.

use std::io;

/// `getrandom(buf, 0)` until `buf` is full—Fills `buf` from the kernel's random number
/// generator, retrying on `EINTR` and after a short count (a large request, or a signal).
/// Blocks only until the generator is first seeded, early in boot.
///
/// # References
///  - [getrandom(2)](https://man7.org/linux/man-pages/man2/getrandom.2.html)
#[doc(alias = "getrandom")]
pub fn fill_random(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::rand::getrandom(&mut buf[done..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_every_byte_of_a_buffer_larger_than_one_call_gives() {
        // Above 32 MiB one getrandom call returns short; two fills of 40 MiB agreeing on any
        // all-zero 4 KiB page would mean bytes were left unfilled.
        let mut buf = vec![0u8; 40 << 20];
        fill_random(&mut buf).unwrap();
        assert!(buf.chunks(4096).all(|page| page.iter().any(|&b| b != 0)));
    }
}
