//! Parsers of flag values: durations, timeouts, sizes and free-space reserves.

use std::time::Duration;

use teecast::recv::KeepFree;

/// Parses a duration as humantime does (`30s`, `500ms`, `2m`, `1h30m`), or a bare number of
/// seconds (`3`, `0.5`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|_| format!("'{s}' is out of range"));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("'{s}' is not a duration ({e}; try 30s, 500ms, 2m or 1h30m)"))
}

/// Parses a size in bytes: a number with an optional K, M or G (powers of 1024), at least 2M.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let bytes = usize::try_from(parse_bytes(t)?).map_err(|_| format!("'{t}' is too large"))?;
    if bytes < 2 << 20 {
        return Err(format!(
            "'{t}' is too small: the ring holds at least 2M (e.g. 2M, 64M, 1G)"
        ));
    }
    Ok(bytes)
}

/// Parses a number of bytes with an optional K, M, G or T (powers of 1024).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let shift = match unit.to_ascii_uppercase().trim_end_matches(['B', 'I']) {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("'{t}' is not a size: try 64M or 1G")),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{t}' is not a size: try 64M or 1G"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("'{t}' is too large"))
}

/// Parses a free-space reserve: a size (as [`parse_bytes`]) or a percentage (`10%`).
pub fn parse_keep_free(s: &str) -> Result<KeepFree, String> {
    match s.trim().strip_suffix('%') {
        Some(p) => p
            .trim()
            .parse::<u8>()
            .ok()
            .filter(|p| *p < 100)
            .map(KeepFree::Percent)
            .ok_or_else(|| format!("'{}' is not a percentage below 100: try 10%", s.trim())),
        None => parse_bytes(s).map(KeepFree::Bytes),
    }
}

/// A duration that bounds a wait: as [`parse_duration`], and more than zero.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!(
            "'{}' is no time at all: give a timeout above zero, e.g. 30s or 500ms",
            s.trim()
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_reserves() {
        assert_eq!(parse_bytes("1M"), Ok(1 << 20));
        assert_eq!(parse_bytes("20G"), Ok(20 << 30));
        assert_eq!(parse_bytes("3"), Ok(3));
        assert!(parse_bytes("1Q").is_err());
        assert_eq!(parse_keep_free("10%"), Ok(KeepFree::Percent(10)));
        assert_eq!(parse_keep_free("2T"), Ok(KeepFree::Bytes(2 << 40)));
        assert!(parse_keep_free("100%").is_err());
        assert!(parse_keep_free("x%").is_err());
        assert!(parse_size("1M").is_err());
        assert_eq!(parse_size("64M"), Ok(64 << 20));
    }
}
