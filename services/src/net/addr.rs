//! [`HostPort`]: the address a client dials, an IP address or a DNS name
//! with a port. On Kubernetes the peers are Services (`txmesh-dashboard.
//! NAMESPACE.svc:7444`), so a name is resolved on every connection, never
//! once at start: a Service that is recreated, or a headless Service whose
//! pod moved, is found again on the next dial. The TLS verifier checks the
//! peer's SPIFFE ID, not this name; the name is only sent as SNI.

use std::{
    fmt,
    net::{IpAddr, SocketAddr, ToSocketAddrs as _},
    str::FromStr,
};

use rustls::pki_types::{DnsName, ServerName};
use serde::{Deserialize, Serialize};

/// `HOST:PORT`, where HOST is an IPv4 address, a bracketed IPv6 address or
/// a DNS name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostPort {
    host: Host,
    port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Host {
    Ip(IpAddr),
    /// Validated once, when parsed: it is also the SNI name.
    Name(DnsName<'static>),
}

impl HostPort {
    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Moves the port (`up --port-offset`).
    pub fn set_port(&mut self, port: u16) {
        self.port = port;
    }

    /// The address itself when HOST is an IP address.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self.host {
            Host::Ip(ip) => Some(SocketAddr::new(ip, self.port)),
            Host::Name(_) => None,
        }
    }

    /// The name sent as SNI: the DNS name, or the IP address.
    pub fn server_name(&self) -> ServerName<'static> {
        match &self.host {
            Host::Ip(ip) => ServerName::IpAddress((*ip).into()),
            Host::Name(name) => ServerName::DnsName(name.clone()),
        }
    }

    /// The first address HOST resolves to now (blocking: for commands
    /// that dial once, such as `audit`).
    ///
    /// # Errors
    /// When the name does not resolve.
    pub fn resolve_now(&self) -> std::io::Result<SocketAddr> {
        let name = match &self.host {
            Host::Ip(ip) => return Ok(SocketAddr::new(*ip, self.port)),
            Host::Name(name) => name,
        };
        (name.as_ref(), self.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{self}: the name resolves to no address"),
                )
            })
    }

    /// Opens a TCP connection, resolving the name first.
    ///
    /// # Errors
    /// When the name does not resolve or no address accepts.
    pub async fn connect(&self) -> std::io::Result<tokio::net::TcpStream> {
        match &self.host {
            Host::Ip(ip) => tokio::net::TcpStream::connect(SocketAddr::new(*ip, self.port)).await,
            Host::Name(name) => tokio::net::TcpStream::connect((name.as_ref(), self.port)).await,
        }
    }
}

impl From<SocketAddr> for HostPort {
    fn from(addr: SocketAddr) -> Self {
        Self {
            host: Host::Ip(addr.ip()),
            port: addr.port(),
        }
    }
}

impl FromStr for HostPort {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(addr.into());
        }
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| format!("{text:?}: expected HOST:PORT"))?;
        let port = port
            .parse::<u16>()
            .map_err(|_| format!("{text:?}: {port:?} is not a port number"))?;
        let name = DnsName::try_from(host.to_ascii_lowercase())
            .map_err(|_| format!("{text:?}: {host:?} is neither an IP address nor a DNS name"))?;
        Ok(Self {
            host: Host::Name(name),
            port,
        })
    }
}

impl TryFrom<String> for HostPort {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<HostPort> for String {
    fn from(addr: HostPort) -> Self {
        addr.to_string()
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(ip) => SocketAddr::new(*ip, self.port).fmt(f),
            Host::Name(name) => write!(f, "{}:{}", name.as_ref(), self.port),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses_and_names() {
        let ip: HostPort = "127.0.0.1:7444".parse().expect("ip");
        assert_eq!(
            ip.socket_addr(),
            Some(SocketAddr::from(([127, 0, 0, 1], 7444)))
        );
        let v6: HostPort = "[::1]:7444".parse().expect("ipv6");
        assert_eq!(v6.to_string(), "[::1]:7444");
        let name: HostPort = "txmesh-dashboard.txmesh.svc:7444".parse().expect("name");
        assert_eq!(name.socket_addr(), None);
        assert_eq!(name.port(), 7444);
        assert_eq!(name.to_string(), "txmesh-dashboard.txmesh.svc:7444");
    }

    #[test]
    fn refuses_what_is_not_host_and_port() {
        for bad in [
            "",
            "dashboard",
            "dashboard:",
            ":7444",
            "dash board:7444",
            "a:99999",
            "::1:7444",
        ] {
            assert!(bad.parse::<HostPort>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn localhost_resolves() {
        let addr = "localhost:7444".parse::<HostPort>().expect("name");
        let resolved = addr.resolve_now().expect("localhost resolves");
        assert!(resolved.ip().is_loopback());
        assert_eq!(resolved.port(), 7444);
    }
}
