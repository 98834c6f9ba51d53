//! The game port: a free one (bind port 0 and release it) and `${NAME}` substitution.

use crate::config::Protocol;
use crate::error::Error;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};

/// Returns a port that was free a moment ago on all interfaces for `protocol`: binds
/// `0.0.0.0:0`, reads the port the kernel chose, releases it. As with the original sample's
/// wrapper, another process could take it before the game binds it; the kernel hands out
/// ephemeral ports in turn, so this is rare, and a fixed or Agones port avoids it entirely.
pub fn free_port(protocol: Protocol) -> Result<u16, Error> {
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
    let bound = match protocol {
        Protocol::Tcp => TcpListener::bind(addr).and_then(|l| l.local_addr()),
        Protocol::Udp => UdpSocket::bind(addr).and_then(|s| s.local_addr()),
    };
    bound.map(|a| a.port()).map_err(|source| Error::FreePort {
        protocol,
        addr: addr.to_string(),
        source,
    })
}

/// Replaces every `${name}` in `arg` with `value` (only the braced form, so `$` elsewhere in
/// a game's arguments is left alone).
pub fn substitute(arg: &str, name: &str, value: &str) -> String {
    arg.replace(&format!("${{{name}}}"), value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutes_braced_name_only() {
        assert_eq!(
            substitute("+sv_port=${SERVER_PORT}", "SERVER_PORT", "7777"),
            "+sv_port=7777"
        );
        assert_eq!(
            substitute("${P}:${P} $P ${PORT}", "P", "1"),
            "1:1 $P ${PORT}"
        );
    }

    #[test]
    fn free_ports_are_bindable() {
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            let port = free_port(protocol).unwrap();
            assert_ne!(port, 0);
            match protocol {
                Protocol::Tcp => drop(TcpListener::bind(("0.0.0.0", port)).unwrap()),
                Protocol::Udp => drop(UdpSocket::bind(("0.0.0.0", port)).unwrap()),
            }
        }
    }
}
