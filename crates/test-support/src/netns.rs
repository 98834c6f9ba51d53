//! A network namespace joined to the host by a veth pair, optionally behind `tc tbf` on
//! both ends: a "remote site" reached over a limited link. A thread can enter it
//! ([`NetnsLink::enter`]) and bind servers there, so an in-process server listens on the
//! far side of the link. Needs root; removed (with the veth pair) when dropped.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::Command;

/// A namespace and the link to it.
pub struct NetnsLink {
    /// The namespace's name (`ip netns`).
    pub name: String,
    /// The host end of the veth pair.
    pub host_dev: String,
    /// The host end's address.
    pub host_ip: Ipv4Addr,
    /// The namespace end's address.
    pub ns_ip: Ipv4Addr,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetnsLink {
    /// A new namespace and veth pair on a free 10.232.N.0/30, with `tc tbf rate RATE`
    /// (as `tc` writes it: `20mbit`) on both ends when `rate` is given.
    pub fn new(rate: Option<&str>) -> NetnsLink {
        let id = format!("{}{:04x}", std::process::id(), rand_suffix());
        let name = format!("gtest{id}");
        let host_dev = format!("gh{id}");
        let ns_dev = format!("gn{id}");
        // An octet no interface uses yet.
        let used = String::from_utf8_lossy(
            &Command::new("ip")
                .args(["-4", "addr", "show"])
                .output()
                .expect("ip addr")
                .stdout,
        )
        .to_string();
        let octet = (1..=250u8)
            .map(|i| (i as u32 * 37 + std::process::id()) % 250 + 1)
            .find(|o| !used.contains(&format!("10.232.{o}.")))
            .expect("a free 10.232.N.0/30") as u8;
        let host_ip = Ipv4Addr::new(10, 232, octet, 1);
        let ns_ip = Ipv4Addr::new(10, 232, octet, 2);
        ip(&["netns", "add", &name]);
        let link = NetnsLink {
            name,
            host_dev,
            host_ip,
            ns_ip,
        };
        ip(&[
            "link",
            "add",
            &link.host_dev,
            "type",
            "veth",
            "peer",
            "name",
            &ns_dev,
        ]);
        ip(&["link", "set", &ns_dev, "netns", &link.name]);
        ip(&[
            "addr",
            "add",
            &format!("{host_ip}/30"),
            "dev",
            &link.host_dev,
        ]);
        ip(&["link", "set", &link.host_dev, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", link.name.as_str(), "ip"];
            all.extend_from_slice(args);
            ip(&all);
        };
        inside(&["addr", "add", &format!("{ns_ip}/30"), "dev", &ns_dev]);
        inside(&["link", "set", &ns_dev, "up"]);
        inside(&["link", "set", "lo", "up"]);
        if let Some(rate) = rate {
            link.set_rate(rate);
        }
        link
    }

    /// Limits both ends of the link to `rate` (`tc tbf`, as `tc` writes rates: `8mbit`),
    /// replacing an earlier limit.
    pub fn set_rate(&self, rate: &str) {
        let ns_dev = self.host_dev.replacen("gh", "gn", 1);
        for inside in [false, true] {
            let mut cmd = Command::new(if inside { "ip" } else { "tc" });
            if inside {
                cmd.args(["netns", "exec", &self.name, "tc"]);
            }
            let dev = if inside { &ns_dev } else { &self.host_dev };
            let out = cmd
                .args([
                    "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate, "burst", "64kb",
                    "latency", "50ms",
                ])
                .output()
                .expect("tc");
            assert!(
                out.status.success(),
                "tc tbf on {dev}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// Moves the calling thread into the namespace: sockets it creates from now on live
    /// there (a listener bound there keeps accepting there from any thread).
    pub fn enter(&self) {
        let path = format!("/var/run/netns/{}", self.name);
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: setns on a valid namespace fd; it changes only this thread's namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
    }

    /// Bytes the host end has sent into the link so far (what the link carried toward
    /// the namespace, headers included).
    pub fn bytes_to_namespace(&self) -> u64 {
        let path = format!("/sys/class/net/{}/statistics/tx_bytes", self.host_dev);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{path}: {e}"))
    }
}

impl Drop for NetnsLink {
    fn drop(&mut self) {
        // Removing the namespace removes the veth pair and its qdiscs.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn rand_suffix() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
