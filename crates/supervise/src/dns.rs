//! How the supervisor's HTTP clients (report URLs, Agones SDK, instance metadata) resolve
//! host names.
//!
//! By default reqwest asks getaddrinfo. The static `gantry-supervise` (built with the
//! `static-dns` feature, see scripts/build-supervisor.sh) does not: static glibc handles the
//! `files` and `dns` sources itself, but would `dlopen` a libnss_* module from the image
//! (usable only if it is the very same glibc version) for any other source the image's
//! /etc/nsswitch.conf names. With `static-dns` names are resolved in Rust by hickory, whatever
//! nsswitch.conf says: `/etc/hosts` first,
//! then the name servers and search domains of `/etc/resolv.conf` (127.0.0.1 when it is
//! missing, as glibc does), IPv4 addresses before IPv6 ones.

/// A reqwest client builder with the supervisor's name resolution.
pub fn client_builder() -> reqwest::ClientBuilder {
    let builder = reqwest::Client::builder();
    #[cfg(feature = "static-dns")]
    let builder = builder.dns_resolver(std::sync::Arc::new(imp::HostsThenDns::default()));
    builder
}

#[cfg(feature = "static-dns")]
mod imp {
    use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig};
    use hickory_resolver::net::runtime::TokioRuntimeProvider;
    use hickory_resolver::TokioResolver;
    use reqwest::dns::{Addrs, Name, Resolve, Resolving};
    use std::net::{Ipv4Addr, SocketAddr};
    use std::sync::{Arc, OnceLock};

    /// `/etc/hosts`, then DNS per `/etc/resolv.conf`; built on first use, inside the runtime.
    #[derive(Default)]
    pub(super) struct HostsThenDns {
        resolver: Arc<OnceLock<Result<TokioResolver, String>>>,
    }

    fn new_resolver() -> Result<TokioResolver, String> {
        let mut builder = TokioResolver::builder_tokio().unwrap_or_else(|e| {
            tracing::debug!("no usable /etc/resolv.conf ({e}): name server 127.0.0.1");
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![NameServerConfig::udp_and_tcp(
                    Ipv4Addr::LOCALHOST.into(),
                )]),
                TokioRuntimeProvider::default(),
            )
        });
        builder.options_mut().ip_strategy = LookupIpStrategy::Ipv4thenIpv6;
        builder.build().map_err(|e| e.to_string())
    }

    impl Resolve for HostsThenDns {
        fn resolve(&self, name: Name) -> Resolving {
            let cell = self.resolver.clone();
            Box::pin(async move {
                let resolver = cell.get_or_init(new_resolver).as_ref().map_err(
                    |e| -> Box<dyn std::error::Error + Send + Sync> { e.clone().into() },
                )?;
                let lookup = resolver.lookup_ip(name.as_str()).await?;
                let addrs: Vec<SocketAddr> =
                    lookup.iter().map(|ip| SocketAddr::new(ip, 0)).collect();
                let addrs: Addrs = Box::new(addrs.into_iter());
                Ok(addrs)
            })
        }
    }
}
