//! `HOST:PORT` as the command line takes it, checked before anything connects or listens. Only
//! the shape is checked: names are resolved later, by the library (a name that does not resolve
//! is a failure of the run, not of its usage).

use std::fmt;
use std::net::Ipv6Addr;

/// Splits `s` into a host (brackets removed from an IPv6 address) and a port (0 too, which only a
/// listener can use); `example` is the port shown in the errors.
fn host_port<'a>(s: &'a str, example: &str) -> Result<(&'a str, u16), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((inner, after)) = rest.split_once(']') else {
            return Err(format!(
                "no closing ']': give [IPV6]:PORT, e.g. [::1]:{example}"
            ));
        };
        if inner.parse::<Ipv6Addr>().is_err() {
            return Err(format!(
                "'{inner}' is not an IPv6 address: give HOST:PORT, or an IPv6 address in brackets, e.g. [::1]:{example}"
            ));
        }
        match after.strip_prefix(':') {
            Some(port) => (inner, port),
            None if after.is_empty() => {
                return Err(format!(
                    "no port: give [{inner}]:PORT, e.g. [{inner}]:{example}"
                ));
            }
            None => {
                return Err(format!(
                    "'{after}' after ']': give [{inner}]:PORT, e.g. [{inner}]:{example}"
                ));
            }
        }
    } else {
        if s.parse::<Ipv6Addr>().is_ok() {
            // `::1:7000` is an address too: perhaps its last group was meant as the port.
            let or = match s.rsplit_once(':') {
                Some((h, p))
                    if h.parse::<Ipv6Addr>().is_ok()
                        && !p.is_empty()
                        && p.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    format!(", or [{h}]:{p} if {p} is the port")
                }
                _ => String::new(),
            };
            return Err(format!(
                "an IPv6 address needs brackets and a port: give [{s}]:PORT, e.g. [{s}]:{example}{or}"
            ));
        }
        let Some((host, port)) = s.rsplit_once(':') else {
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                // `send f 7000`: a port alone.
                return Err(format!("no host: give HOST:PORT, e.g. 127.0.0.1:{s}"));
            }
            return Err(format!("no port: give HOST:PORT, e.g. {s}:{example}"));
        };
        if host.is_empty() {
            return Err(format!(
                "no host before ':{port}': give HOST:PORT, e.g. 127.0.0.1:{port}"
            ));
        }
        if host.contains(':') {
            return Err(format!(
                "'{host}' has a ':' (an IPv6 address goes in brackets): give [IPV6]:PORT, e.g. [::1]:{example}"
            ));
        }
        (host, port)
    };
    Ok((host, parse_port(port, example)?))
}

fn parse_port(port: &str, example: &str) -> Result<u16, String> {
    if port.is_empty() {
        return Err(format!(
            "no port after ':': give HOST:PORT, e.g. 127.0.0.1:{example}"
        ));
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "'{port}' is not a port: give a number up to 65535, e.g. {example}"
        ));
    }
    port.parse::<u16>().map_err(|_| {
        format!("port {port} is out of range: give a port up to 65535, e.g. {example}")
    })
}

/// A destination of `send`: `HOST:PORT` or `[IPV6]:PORT`, with a port from 1 to 65535. Returned
/// as given.
pub fn parse_destination(s: &str) -> Result<String, String> {
    match host_port(s, "7000")? {
        (_, 1..) => Ok(s.to_string()),
        (_, 0) => Err(
            "port 0 cannot be connected to: give the receiver's port, from 1 to 65535, e.g. 7000"
                .to_string(),
        ),
    }
}

/// Where `recv --listen` listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    /// `:PORT` or `PORT`: every address, IPv6 and IPv4.
    Every(u16),
    /// `HOST:PORT` or `[IPV6]:PORT`, as given.
    Address(String),
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Every(port) => write!(f, ":{port} (every address)"),
            Listen::Address(a) => f.write_str(a),
        }
    }
}

/// The address of `recv --listen`: `HOST:PORT`, `[IPV6]:PORT`, or `:PORT` and `PORT` alone for
/// every address of both families. Port 0 lets the system pick one.
pub fn parse_listen(s: &str) -> Result<Listen, String> {
    let bare = s.strip_prefix(':').unwrap_or(s);
    if !bare.is_empty() && bare.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(Listen::Every(parse_port(bare, "7000")?));
    }
    host_port(s, "7000").map_err(|e| format!("{e} (or :PORT for every address)"))?;
    Ok(Listen::Address(s.to_string()))
}

/// Refuses a destination given twice (as the same text): it would get the stream twice, over
/// two connections, and a receiver storing both under one name keeps one.
pub fn distinct(destinations: &[String]) -> Result<(), String> {
    for (i, d) in destinations.iter().enumerate() {
        if destinations[..i].contains(d) {
            return Err(format!("{d} is given twice: give each destination once"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations() {
        for ok in [
            "127.0.0.1:7000",
            "hostA:1",
            "[::1]:7000",
            "[fe80::1]:65535",
            "no.such.name.invalid:7000",
        ] {
            assert_eq!(parse_destination(ok).as_deref(), Ok(ok), "{ok}");
        }
        for (bad, says) in [
            ("127.0.0.1", "no port"),
            ("127.0.0.1:", "no port"),
            ("127.0.0.1:99999", "out of range"),
            ("127.0.0.1:0", "port 0"),
            ("127.0.0.1:x", "not a port"),
            ("127.0.0.1:+7", "not a port"),
            (":7000", "no host"),
            ("", "no port"),
            ("::1", "brackets"),
            ("::1:7000", "brackets"),
            ("[::1]", "no port"),
            ("[::1", "no closing"),
            ("[host]:7000", "not an IPv6"),
            ("[::1]x:7000", "after ']'"),
            ("7000", "127.0.0.1:7000"),
        ] {
            let e = parse_destination(bad).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
            assert!(e.contains("give"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(parse_listen(":7000"), Ok(Listen::Every(7000)));
        assert_eq!(parse_listen("7000"), Ok(Listen::Every(7000)));
        assert_eq!(parse_listen(":0"), Ok(Listen::Every(0)));
        let given = |a: &str| Ok(Listen::Address(a.to_string()));
        assert_eq!(parse_listen("127.0.0.1:0"), given("127.0.0.1:0"));
        assert_eq!(parse_listen("[::]:7000"), given("[::]:7000"));
        assert!(parse_listen(":70000").is_err());
        assert!(parse_listen("").is_err());
        assert!(parse_listen("host").is_err());
    }
}
