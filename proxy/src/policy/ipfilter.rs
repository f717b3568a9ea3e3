//! CIDR sets and the `ipFilter` policy: deny wins; a non-empty allow list lets
//! only its ranges through. The client address is the one computed from the
//! listener's trusted hops ([`crate::proxy::client_addr`]).

use std::net::IpAddr;

use ipnet::IpNet;

/// A list of address ranges. IPv4-mapped IPv6 clients (`::ffff:a.b.c.d`, as a
/// dual-stack socket reports them) are matched as IPv4.
#[derive(Debug, Clone, Default)]
pub struct CidrSet(Vec<IpNet>);

impl CidrSet {
    pub fn parse(cidrs: &[String]) -> Result<CidrSet, String> {
        cidrs
            .iter()
            .map(|c| {
                c.trim()
                    .parse::<IpNet>()
                    .or_else(|_| c.trim().parse::<IpAddr>().map(IpNet::from))
                    .map(|n| n.trunc())
                    .map_err(|_| format!("{c:?} is not a CIDR"))
            })
            .collect::<Result<_, _>>()
            .map(CidrSet)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
            v4 => v4,
        };
        self.0.iter().any(|net| net.contains(&addr))
    }
}

/// Compiled `ipFilter`.
#[derive(Debug, Clone)]
pub struct IpFilter {
    allow: CidrSet,
    deny: CidrSet,
}

impl IpFilter {
    pub fn compile(spec: &meshgate_crds::policy::IpFilter) -> Result<IpFilter, String> {
        Ok(IpFilter {
            allow: CidrSet::parse(&spec.allow).map_err(|e| format!("ipFilter.allow: {e}"))?,
            deny: CidrSet::parse(&spec.deny).map_err(|e| format!("ipFilter.deny: {e}"))?,
        })
    }

    pub fn permits(&self, client: IpAddr) -> bool {
        !self.deny.contains(client) && (self.allow.is_empty() || self.allow.contains(client))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(allow: &[&str], deny: &[&str]) -> IpFilter {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        IpFilter::compile(&meshgate_crds::policy::IpFilter {
            allow: v(allow),
            deny: v(deny),
        })
        .unwrap()
    }

    #[test]
    fn deny_wins_and_allow_restricts() {
        let f = filter(&["10.0.0.0/8", "2001:db8::/32"], &["10.1.0.0/16"]);
        assert!(f.permits("10.2.3.4".parse().unwrap()));
        assert!(!f.permits("10.1.3.4".parse().unwrap()));
        assert!(!f.permits("192.0.2.1".parse().unwrap()));
        assert!(f.permits("2001:db8::1".parse().unwrap()));
        assert!(f.permits("::ffff:10.2.3.4".parse().unwrap()));
        assert!(!f.permits("::ffff:10.1.3.4".parse().unwrap()));
        let deny_only = filter(&[], &["127.0.0.1/32"]);
        assert!(!deny_only.permits("127.0.0.1".parse().unwrap()));
        assert!(deny_only.permits("127.0.0.2".parse().unwrap()));
    }

    #[test]
    fn bad_cidr_is_an_error() {
        let e = IpFilter::compile(&meshgate_crds::policy::IpFilter {
            allow: vec!["10.0.0.0/33".into()],
            deny: vec![],
        })
        .unwrap_err();
        assert!(e.contains("ipFilter.allow"), "{e}");
    }
}
