//! The hosts the broker always reaches directly, never through a proxy: this machine (loopback,
//! `localhost`), and the link-local instance-metadata and container-credential endpoints, whose
//! answers are the broker's own AWS credentials.
//!
//! Recognised by the address a host names, never by its spelling: the host is read as a URL
//! parser (WHATWG) and the C library's resolver both read it, so `127.1`, `0x7f000001`,
//! `2130706433`, `0177.0.0.1` and `[::ffff:127.0.0.1]` are all 127.0.0.1, and `localhost.` is
//! `localhost`. A proxy's `NO_PROXY` rules compare text and miss every one of those. And such a
//! host is connected to at exactly the address it was judged by ([`Resolver`]), so what was
//! decided is what is reached.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aws_smithy_runtime_api::client::dns::{DnsFuture, ResolveDns, ResolveDnsError};

/// The addresses `host` (a URI's host: an IPv6 address in brackets) names when it is this machine
/// or an instance-metadata endpoint; `None` for every other host, and for one that is not a host.
pub(crate) fn addresses(host: &str) -> Option<Vec<IpAddr>> {
    let addresses = match url::Host::parse(host).ok()? {
        url::Host::Ipv4(ip) => vec![IpAddr::V4(ip)],
        url::Host::Ipv6(ip) => vec![IpAddr::V6(ip)],
        // RFC 6761: `localhost` and names under it are loopback, not for DNS to answer.
        url::Host::Domain(name) if is_localhost(&name) => {
            vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()]
        }
        url::Host::Domain(_) => return None,
    };
    addresses
        .iter()
        .all(|ip| is_local(*ip))
        .then_some(addresses)
}

/// `localhost` or a name under it, with or without the final dot (the parser has lower-cased it).
fn is_localhost(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    name == "localhost" || name.ends_with(".localhost")
}

/// Loopback, the unspecified address (connecting to it reaches this machine), IPv4 link-local
/// (169.254.0.0/16: instance metadata and the container-credential endpoints) and AWS's IPv6
/// metadata prefix fd00:ec2::/32; IPv4-mapped IPv6 addresses as the IPv4 address they carry.
fn is_local(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(ip) => ip.is_loopback() || ip.is_unspecified() || ip.is_link_local(),
        IpAddr::V6(ip) => {
            ip.is_loopback() || ip.is_unspecified() || ip.segments()[..2] == [0xfd00, 0x0ec2]
        }
    }
}

/// The direct connector's name resolver: a host to the addresses [`addresses`] reads in it, and
/// nothing else, whatever the C library or DNS would make of `localhost.` or `0177.0.0.1`. (The
/// connector asks it only for hosts that are not a plain IP address, which it connects to as
/// written.)
#[derive(Debug, Clone, Copy)]
pub(crate) struct Resolver;

impl ResolveDns for Resolver {
    fn resolve_dns<'a>(&'a self, name: &'a str) -> DnsFuture<'a> {
        DnsFuture::ready(
            addresses(name)
                .ok_or_else(|| ResolveDnsError::new("not a loopback or instance-metadata host")),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `true`: never proxied. Every spelling of loopback and instance metadata, and names that
    /// only look like them, which a proxy (and its DNS) may resolve as it likes.
    const HOSTS: &[(&str, bool)] = &[
        ("example.com", false),
        ("10.0.0.1", false),
        ("[2001:db8::1]", false),
        ("127.0.0.1", true),
        ("127.1", true),
        ("127.255.255.254", true),
        ("0x7f000001", true),
        ("0X7F.1", true),
        ("2130706433", true),
        ("0177.0.0.1", true),
        ("127.0.0.1.", true),
        ("[::1]", true),
        ("[0:0:0:0:0:0:0:1]", true),
        ("[::ffff:127.0.0.1]", true),
        ("[::ffff:7f00:2]", true),
        ("0.0.0.0", true),
        ("0", true),
        ("[::]", true),
        ("localhost", true),
        ("localhost.", true),
        ("LocalHost", true),
        ("LOCALHOST.", true),
        ("api.localhost", true),
        ("169.254.169.254", true),
        ("0xa9fea9fe", true),
        ("2852039166", true),
        ("0251.0376.0251.0376", true),
        ("169.254.43518", true),
        ("169.254.170.2", true),
        ("[::ffff:169.254.169.254]", true),
        ("[fd00:ec2::254]", true),
        ("[FD00:EC2:0:0:0:0:0:254]", true),
        ("[fd00:ec2::23]", true),
        ("[fd00:ec3::254]", false),
        ("169.255.169.254", false),
        ("128.0.0.1", false),
        ("[::2]", false),
        ("127.0.0.1.example.com", false),
        ("localhost.example.com", false),
        ("notlocalhost", false),
        ("localhost..", false),
        ("169.254.169.254.nip.io", false),
        ("0x7f000001.example.com", false),
        ("256.0.0.1", false),
        ("", false),
    ];

    #[test]
    fn loopback_and_instance_metadata_are_recognised_by_address_not_spelling() {
        for (host, never_proxied) in HOSTS {
            assert_eq!(addresses(host).is_some(), *never_proxied, "{host:?}");
        }
    }

    #[test]
    fn a_host_resolves_to_the_address_it_was_judged_by() {
        let resolve = |host| {
            futures_util::FutureExt::now_or_never(Resolver.resolve_dns(host))
                .expect("resolves at once")
                .ok()
        };
        assert_eq!(
            resolve("0177.0.0.1"),
            Some(vec!["127.0.0.1".parse().unwrap()])
        );
        assert_eq!(
            resolve("0xa9fea9fe"),
            Some(vec!["169.254.169.254".parse().unwrap()])
        );
        assert_eq!(
            resolve("localhost."),
            Some(vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()])
        );
        assert_eq!(resolve("localhost.example.com"), None);
        assert_eq!(resolve("example.com"), None);
    }
}
