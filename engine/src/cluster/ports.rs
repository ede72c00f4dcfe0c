//! Picking a port for a node to listen on later (a discovery port, a fixed
//! `control_port`) when a benchmark or test chooses it for itself.
//!
//! The usual trick, binding port 0 and releasing what the kernel chose, hands
//! out a port of the ephemeral range (`net.ipv4.ip_local_port_range`,
//! 32768–60999 by default). Once released, the kernel may give that port to
//! the next socket bound to port 0 — every node's shard listeners are — or to
//! an outgoing connection: a node's own shard then holds the discovery port
//! its meta server was meant to bind, and discovery never forms. Ports below
//! the ephemeral range are only ever taken by explicit binds.

use std::net::TcpListener;

/// First port of the kernel's ephemeral range (32768 when unreadable).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// A port of `host` that was free a moment ago and lies below the
/// ephemeral range, with the `extra` ports after it free too (`extra` = 1
/// for a two-shard `control_port`: shard i listens on port + i). On a host
/// whose ephemeral range leaves no room below it (it starts near 1024), a
/// port the kernel hands out for port 0, as before.
pub fn free_port_below_ephemeral(host: &str, extra: u16) -> std::io::Result<u16> {
    // Above the well-known ports, and a wide range so that concurrent
    // pickers (parallel tests) rarely draw the same port.
    let high = ephemeral_low().saturating_sub(extra);
    let low = 10_000.min(high.saturating_sub(1000)).max(1024);
    if high <= low {
        return ephemeral_port(host, extra);
    }
    let span = u64::from(high - low);
    let mut last_error = None;
    for _ in 0..200 {
        let port = low + (super::random_u64() % span) as u16;
        let all_free = (0..=extra).try_for_each(|i| TcpListener::bind((host, port + i)).map(drop));
        match all_free {
            Ok(()) => return Ok(port),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| std::io::Error::other("no free port found")))
}

/// The fallback: ports the kernel gives for port 0 until the `extra` after
/// one are free too.
fn ephemeral_port(host: &str, extra: u16) -> std::io::Result<u16> {
    let mut last_error = None;
    for _ in 0..200 {
        let port = TcpListener::bind((host, 0))?.local_addr()?.port();
        let rest_free = (1..=extra).try_for_each(|i| {
            let next = port
                .checked_add(i)
                .ok_or_else(|| std::io::Error::other("port overflow"))?;
            TcpListener::bind((host, next)).map(drop)
        });
        match rest_free {
            Ok(()) => return Ok(port),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| std::io::Error::other("no free port found")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_a_bindable_port_below_the_ephemeral_range() {
        for extra in [0, 1] {
            let port = free_port_below_ephemeral("127.0.0.1", extra).unwrap();
            if ephemeral_low() > 11_000 {
                assert!(port >= 1024 && port + extra < ephemeral_low(), "{port}");
            }
            for i in 0..=extra {
                TcpListener::bind(("127.0.0.1", port + i)).expect("still free");
            }
        }
    }
}
