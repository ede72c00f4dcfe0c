//! Addresses in `extra_config`: the `discovery_addr` seed list
//! (`"10.0.0.1:31998,10.0.0.2"`) and the bind/advertise hosts.

use std::fmt;
use std::net::Ipv6Addr;

use serde::{Serialize, Serializer};

/// The discovery (meta) port used when a `discovery_addr` entry has none.
pub const DEFAULT_DISCOVERY_PORT: u16 = 31998;

/// The longest host name accepted (the DNS limit).
const MAX_HOST_LEN: usize = 253;

/// A host and a port, e.g. one entry of `discovery_addr`.
///
/// `host` is a host name, an IPv4 address or an IPv6 address without
/// brackets; [`Display`](fmt::Display) adds the brackets back
/// (`[fe80::1]:31998`). Serializes as that string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPort {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port, never 0.
    pub port: u16,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl Serialize for HostPort {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Checks a host name or IP address (no port, no scheme, no brackets).
///
/// Accepts IPv4/IPv6 literals and names made of letters, digits, `.`, `-`
/// and `_`. The error text says what to change.
pub fn validate_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("a host name or IP address, not an empty string".to_owned());
    }
    if host.contains("://") {
        return Err(format!(
            "a bare host, without a URL scheme: drop the \"{}://\"",
            host.split("://").next().unwrap_or_default()
        ));
    }
    if host.chars().any(char::is_whitespace) {
        return Err("a host without spaces inside it".to_owned());
    }
    if host.contains('/') {
        return Err("a bare host, without a path or a \"/\"".to_owned());
    }
    if host.parse::<Ipv6Addr>().is_ok() {
        return Ok(());
    }
    if host.contains(':') {
        return Err(
            "a host without a port here (or an IPv6 address such as \"fe80::1\")".to_owned(),
        );
    }
    if host.len() > MAX_HOST_LEN {
        return Err(format!("a host name of at most {MAX_HOST_LEN} characters"));
    }
    if let Some(bad) = host
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(format!(
            "a host name or IP address; {bad:?} is not allowed in one (letters, digits, '.', '-', '_')"
        ));
    }
    Ok(())
}

/// Whether `host` looks like a placeholder copied from the docs, such as
/// `NODE0_IP`: upper case with an underscore and no lower-case letter.
pub fn looks_like_placeholder(host: &str) -> bool {
    host.contains('_')
        && host.chars().any(|c| c.is_ascii_uppercase())
        && !host.chars().any(|c| c.is_ascii_lowercase())
}

/// Parses one `host[:port]` entry; `[v6addr]:port` and a bare IPv6 address
/// are accepted. A missing port is `default_port`.
pub fn parse_host_port(entry: &str, default_port: u16) -> Result<HostPort, String> {
    let entry = entry.trim();
    if entry.is_empty() {
        return Err("a host[:port] entry, not an empty one".to_owned());
    }
    if entry.contains("://") {
        // Reported before the port split so "http://h:1" gets the scheme hint.
        validate_host(entry)?;
    }
    let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err(
                "a closing ']' after the IPv6 address, e.g. \"[fe80::1]:31998\"".to_owned(),
            );
        };
        if host.parse::<Ipv6Addr>().is_err() {
            return Err(format!("an IPv6 address inside [ ], got \"{host}\""));
        }
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err("\":port\" after the ']'".to_owned()),
            },
        }
    } else if entry.parse::<Ipv6Addr>().is_ok() {
        (entry, None)
    } else {
        match entry.rsplit_once(':') {
            Some((host, _)) if host.contains(':') => {
                return Err(
                    "IPv6 addresses with a port in brackets, e.g. \"[fe80::1]:31998\"".to_owned(),
                )
            }
            Some((host, port)) => (host, Some(port)),
            None => (entry, None),
        }
    };
    validate_host(host)?;
    let port = match port {
        None => default_port,
        Some(text) => parse_port(text)?,
    };
    Ok(HostPort {
        host: host.to_owned(),
        port,
    })
}

/// A port number 1..=65535 written in decimal.
fn parse_port(text: &str) -> Result<u16, String> {
    if text.is_empty() {
        return Err("a port number after the ':' (or no ':' for the default)".to_owned());
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("a numeric port, got \"{text}\""));
    }
    match text.parse::<u32>() {
        Ok(port @ 1..=65535) => Ok(port as u16),
        _ => Err(format!("a port from 1 to 65535, got {text}")),
    }
}

/// Parses a comma-separated list of `host[:port]` entries (spaces around
/// entries are ignored); each entry without a port gets `default_port`.
/// Empty entries and an empty list are errors.
pub fn parse_host_list(text: &str, default_port: u16) -> Result<Vec<HostPort>, String> {
    if text.trim().is_empty() {
        return Err("at least one host:port".to_owned());
    }
    text.split(',')
        .map(|entry| parse_host_port(entry, default_port))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(host: &str, port: u16) -> HostPort {
        HostPort {
            host: host.to_owned(),
            port,
        }
    }

    #[test]
    fn parses_entries_and_lists() {
        assert_eq!(
            parse_host_port("10.0.0.1:31998", 1),
            Ok(hp("10.0.0.1", 31998))
        );
        assert_eq!(
            parse_host_port("10.0.0.1", 31998),
            Ok(hp("10.0.0.1", 31998))
        );
        assert_eq!(
            parse_host_port("node-a.example:7", 1),
            Ok(hp("node-a.example", 7))
        );
        assert_eq!(parse_host_port("[fe80::1]:9", 1), Ok(hp("fe80::1", 9)));
        assert_eq!(parse_host_port("[::1]", 5), Ok(hp("::1", 5)));
        assert_eq!(parse_host_port("::1", 5), Ok(hp("::1", 5)));
        assert_eq!(
            parse_host_list(" a:1 , b ,c:3", 31998),
            Ok(vec![hp("a", 1), hp("b", 31998), hp("c", 3)])
        );
    }

    #[test]
    fn rejects_bad_entries() {
        for bad in [
            "",
            " ",
            ",",
            "a:1,",
            "a:1,,b:2",
            "a:",
            "a:0",
            "a:65536",
            "a:99999",
            "a:-1",
            "a:x",
            "http://a:1",
            "https://a",
            "a b:1",
            "a/b:1",
            "fe80::1:31998",
            "[fe80::1",
            "[zz]:1",
            "[::1]x",
            "a:1:2",
            "a;b",
        ] {
            assert!(
                parse_host_list(bad, 31998).is_err(),
                "{bad:?} should be rejected"
            );
        }
        assert!(parse_host_list("http://a:1", 1)
            .unwrap_err()
            .contains("http://"));
        assert!(parse_host_list("a b:1", 1).unwrap_err().contains("spaces"));
    }

    #[test]
    fn display_round_trips() {
        for entry in ["10.0.0.1:31998", "[fe80::1]:9", "host:1"] {
            let parsed = parse_host_port(entry, 1).unwrap();
            assert_eq!(parsed.to_string(), entry);
            assert_eq!(parse_host_port(&parsed.to_string(), 1), Ok(parsed));
        }
    }

    #[test]
    fn placeholders_are_recognised() {
        assert!(looks_like_placeholder("NODE0_IP"));
        assert!(!looks_like_placeholder("node_0"));
        assert!(!looks_like_placeholder("10.0.0.1"));
        assert!(!looks_like_placeholder("NODE0"));
    }

    #[test]
    fn bind_hosts() {
        for ok in [
            "0.0.0.0",
            "::",
            "127.0.0.1",
            "localhost",
            "eth0-host.local",
            "fe80::1",
        ] {
            assert_eq!(validate_host(ok), Ok(()), "{ok}");
        }
        for bad in ["", "0.0.0.0:31997", "http://x", "a b", "x/y", "é"] {
            assert!(validate_host(bad).is_err(), "{bad:?}");
        }
    }
}
