//! The address a node advertises to its peers (`local_hostname`).

use crate::config::Config;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs, UdpSocket};

/// The IP peers should use to reach this node: `local_hostname` when set (an
/// IP, or a name resolved once at start), else the local address the OS
/// would use to reach the discovery head (no packet is sent: connecting a
/// UDP socket only picks a route).
pub fn advertised_host(config: &Config) -> IpAddr {
    if let Some(host) = config.local_hostname.as_deref() {
        match resolve(host) {
            Some(ip) => return ip,
            None => tracing::warn!(
                "local_hostname {host:?} does not resolve to an address; advertising the \
                 address that routes to the discovery head instead"
            ),
        }
    }
    let head = config.discovery_head();
    // A head written as the unspecified address (seed 003's producer runs
    // `serve --discovery-addr 0.0.0.0:31998`) is this host, and the route
    // to it is loopback, which no other host can reach: advertise an
    // interface address instead.
    if head
        .host
        .parse::<IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified())
    {
        return first_interface_ipv4().map_or(IpAddr::from(Ipv4Addr::LOCALHOST), IpAddr::from);
    }
    let routed = UdpSocket::bind(("0.0.0.0", 0))
        .and_then(|s| s.connect((head.host.as_str(), head.port)).map(|_| s))
        .and_then(|s| s.local_addr());
    match routed {
        Ok(addr) if !addr.ip().is_unspecified() => addr.ip(),
        _ => IpAddr::from(Ipv4Addr::LOCALHOST),
    }
}

/// Which of a name's resolved addresses to bind: the first IPv4 one when
/// there is one (a discovery head is usually given as an IPv4 address, and
/// a name's IPv6 address would not accept its connections), else the first.
pub fn preferred_bind_addr(addrs: impl IntoIterator<Item = SocketAddr>) -> Option<SocketAddr> {
    let mut first = None;
    for addr in addrs {
        if addr.is_ipv4() {
            return Some(addr);
        }
        first = first.or(Some(addr));
    }
    first
}

/// `host` as an IP: taken as is when it is one, else its first address.
fn resolve(host: &str) -> Option<IpAddr> {
    if let Ok(ip) = host.parse() {
        return Some(ip);
    }
    (host, 0).to_socket_addrs().ok()?.map(|a| a.ip()).next()
}

/// The IPv4 address of the first interface that is up and not loopback.
fn first_interface_ipv4() -> Option<Ipv4Addr> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs only writes the head of a list it allocates; the
    // list is freed below and nothing read from it outlives that.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return None;
    }
    let mut found = None;
    let mut at = list;
    while !at.is_null() {
        // SAFETY: `at` is a node of the list getifaddrs returned, not yet freed.
        let entry = unsafe { &*at };
        at = entry.ifa_next;
        let flags = entry.ifa_flags;
        let usable = flags & libc::IFF_UP as u32 != 0 && flags & libc::IFF_LOOPBACK as u32 == 0;
        // SAFETY: a non-null ifa_addr points to a sockaddr whose family
        // field says which sockaddr it is.
        if !usable
            || entry.ifa_addr.is_null()
            || i32::from(unsafe { (*entry.ifa_addr).sa_family }) != libc::AF_INET
        {
            continue;
        }
        // SAFETY: an AF_INET address is a sockaddr_in.
        let sin = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in) };
        found = Some(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
        break;
    }
    // SAFETY: `list` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_name_binds_its_first_ipv4_address_else_its_first() {
        let v6: SocketAddr = "[::1]:31998".parse().unwrap();
        let v4: SocketAddr = "127.0.0.2:31998".parse().unwrap();
        let other_v4: SocketAddr = "127.0.0.3:31998".parse().unwrap();
        assert_eq!(preferred_bind_addr([v6, v4, other_v4]), Some(v4));
        assert_eq!(preferred_bind_addr([v6]), Some(v6));
        assert_eq!(preferred_bind_addr([]), None);
    }

    fn config(extra: serde_json::Value) -> Config {
        let mut value = json!({"discovery_addr": "127.0.0.1:31998"});
        for (k, v) in extra.as_object().unwrap() {
            value[k] = v.clone();
        }
        Config::from_json(&value.to_string()).unwrap()
    }

    #[test]
    fn local_hostname_as_ip_or_name() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            advertised_host(&config(json!({"local_hostname": "127.0.0.7"}))),
            ip("127.0.0.7")
        );
        // A name is resolved (localhost comes from /etc/hosts, no query
        // leaves the machine).
        assert!(advertised_host(&config(json!({"local_hostname": "localhost"}))).is_loopback());
    }

    #[test]
    fn auto_follows_the_route_to_the_head() {
        assert_eq!(
            advertised_host(&config(json!({"discovery_addr": "127.0.0.3:31998"}))),
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
    }

    /// A head of 0.0.0.0 is this host: the node advertises an interface
    /// address other hosts can reach, not loopback (when it has one).
    #[test]
    fn an_unspecified_head_advertises_an_interface_address() {
        let ip = advertised_host(&config(json!({"discovery_addr": "0.0.0.0:31998"})));
        assert!(!ip.is_unspecified());
        match first_interface_ipv4() {
            Some(interface) => {
                assert!(!interface.is_loopback());
                assert_eq!(ip, IpAddr::from(interface));
            }
            None => assert!(ip.is_loopback()),
        }
    }
}
