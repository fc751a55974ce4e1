//! Seals records in place with each AEAD candidate on one thread and prints GB/s (10^9 bytes per
//! second of plaintext), round after round, every case once per round, so that a load which comes
//! and goes on the machine spreads over all cases alike. Each round also runs
//! `openssl speed -evp aes-128-gcm` and `aes-256-gcm` at the same record sizes, as a yardstick.
//!
//! Usage: `cargo run --release -- [ROUNDS] [SECONDS_PER_CASE]` (defaults 5 and 0.25).

use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant};

use aes_gcm::aead::{AeadInPlace, KeyInit};

/// Seals `buf` in place under the nonce made from `counter`, returning the tag's first byte so
/// that nothing can be optimised away.
type Sealer = Box<dyn FnMut(&mut [u8], u64) -> u8>;

const KEY: [u8; 32] = [7; 32];
const AAD: [u8; 25] = [9; 25];

fn nonce(counter: u64) -> [u8; 12] {
    let mut n = [0; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    n
}

fn ring_sealer(alg: &'static ring::aead::Algorithm) -> Sealer {
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey};
    let key = LessSafeKey::new(UnboundKey::new(alg, &KEY[..alg.key_len()]).unwrap());
    Box::new(move |buf, counter| {
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce(counter)),
                Aad::from(AAD),
                buf,
            )
            .unwrap();
        tag.as_ref()[0]
    })
}

fn aws_sealer(alg: &'static aws_lc_rs::aead::Algorithm) -> Sealer {
    use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey};
    let key = LessSafeKey::new(UnboundKey::new(alg, &KEY[..alg.key_len()]).unwrap());
    Box::new(move |buf, counter| {
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce(counter)),
                Aad::from(AAD),
                buf,
            )
            .unwrap();
        tag.as_ref()[0]
    })
}

fn rustcrypto_sealer<C: AeadInPlace + KeyInit + 'static>(key_len: usize) -> Sealer {
    let cipher = C::new_from_slice(&KEY[..key_len]).unwrap();
    Box::new(move |buf, counter| {
        let n = nonce(counter);
        let tag = cipher
            .encrypt_in_place_detached(
                aes_gcm::aead::generic_array::GenericArray::from_slice(&n),
                &AAD,
                buf,
            )
            .unwrap();
        tag[0]
    })
}

/// A candidate: its crate, its algorithm, and how to make its sealer.
type Candidate = (&'static str, &'static str, fn() -> Sealer);

fn candidates() -> Vec<Candidate> {
    vec![
        ("ring 0.17", "AES-128-GCM", || {
            ring_sealer(&ring::aead::AES_128_GCM)
        }),
        ("aws-lc-rs 1", "AES-128-GCM", || {
            aws_sealer(&aws_lc_rs::aead::AES_128_GCM)
        }),
        ("aes-gcm 0.10", "AES-128-GCM", || {
            rustcrypto_sealer::<aes_gcm::Aes128Gcm>(16)
        }),
        ("ring 0.17", "AES-256-GCM", || {
            ring_sealer(&ring::aead::AES_256_GCM)
        }),
        ("aws-lc-rs 1", "AES-256-GCM", || {
            aws_sealer(&aws_lc_rs::aead::AES_256_GCM)
        }),
        ("aes-gcm 0.10", "AES-256-GCM", || {
            rustcrypto_sealer::<aes_gcm::Aes256Gcm>(32)
        }),
        ("ring 0.17", "ChaCha20-Poly1305", || {
            ring_sealer(&ring::aead::CHACHA20_POLY1305)
        }),
        ("aws-lc-rs 1", "ChaCha20-Poly1305", || {
            aws_sealer(&aws_lc_rs::aead::CHACHA20_POLY1305)
        }),
        ("chacha20poly1305 0.10", "ChaCha20-Poly1305", || {
            rustcrypto_sealer::<chacha20poly1305::ChaCha20Poly1305>(32)
        }),
    ]
}

const SIZES: [usize; 3] = [16 << 10, 64 << 10, 256 << 10];

/// GB/s of sealing `size`-byte records for about `time`.
fn measure(seal: &mut Sealer, size: usize, time: Duration) -> f64 {
    let mut buf = vec![0x5a_u8; size];
    let mut counter = 0;
    // Warm the key schedule, the code and the buffer.
    for _ in 0..8 {
        black_box(seal(&mut buf, counter));
        counter += 1;
    }
    let start = Instant::now();
    let mut records = 0u64;
    while start.elapsed() < time {
        for _ in 0..16 {
            black_box(seal(black_box(&mut buf), counter));
            counter += 1;
        }
        records += 16;
    }
    (records * size as u64) as f64 / start.elapsed().as_secs_f64() / 1e9
}

/// GB/s that `openssl speed` reports for `alg` at `size`-byte blocks, or None if it cannot run.
fn openssl(alg: &str, size: usize) -> Option<f64> {
    let out = Command::new("openssl")
        .args([
            "speed",
            "-evp",
            alg,
            "-bytes",
            &size.to_string(),
            "-seconds",
            "1",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // The last line: "AES-128-GCM   5401234.56k" (thousands of bytes per second).
    let line = text
        .lines()
        .rev()
        .find(|l| l.to_ascii_lowercase().starts_with(alg))?;
    let k = line.split_whitespace().last()?.strip_suffix('k')?;
    Some(k.parse::<f64>().ok()? * 1e3 / 1e9)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().map_or(5, |a| a.parse().expect("ROUNDS"));
    let secs: f64 = args
        .next()
        .map_or(0.25, |a| a.parse().expect("SECONDS_PER_CASE"));
    let time = Duration::from_secs_f64(secs);

    let mut cases: Vec<(String, Option<Sealer>, usize, Vec<f64>)> = Vec::new();
    for (krate, alg, make) in candidates() {
        for size in SIZES {
            cases.push((
                format!("{krate:<22} {alg:<18}"),
                Some(make()),
                size,
                Vec::new(),
            ));
        }
    }
    for alg in ["aes-128-gcm", "aes-256-gcm"] {
        for size in SIZES {
            cases.push((
                format!("{:<22} {:<18}", "openssl speed -evp", alg),
                None,
                size,
                Vec::new(),
            ));
        }
    }
    for round in 1..=rounds {
        eprintln!("round {round} of {rounds}");
        for (name, sealer, size, results) in &mut cases {
            let gbs = match sealer {
                Some(seal) => Some(measure(seal, *size, time)),
                None => openssl(name.split_whitespace().last().unwrap(), *size),
            };
            if let Some(gbs) = gbs {
                results.push(gbs);
            }
        }
    }
    println!(
        "GB/s (10^9 B/s of plaintext), one thread, {rounds} interleaved rounds: median (min-max)"
    );
    println!("{:<41} {:>8} {:>22}", "crate / algorithm", "record", "GB/s");
    for (name, _, size, results) in &mut cases {
        if results.is_empty() {
            println!("{name} {:>5} KiB {:>22}", *size >> 10, "did not run");
            continue;
        }
        results.sort_by(f64::total_cmp);
        let median = results[results.len() / 2];
        println!(
            "{name} {:>5} KiB {:>8.2} ({:.2}-{:.2})",
            *size >> 10,
            median,
            results[0],
            results[results.len() - 1]
        );
    }
}
