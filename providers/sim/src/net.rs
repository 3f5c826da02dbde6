//! IPv4 arithmetic for the sim: parsing CIDRs and handing out machine addresses the way
//! a DHCP server would (from `.10` up, skipping the gateway and addresses in use).

use std::net::Ipv4Addr;

/// How far from the network's base address the first assigned address is.
pub(crate) const FIRST_HOST_OFFSET: u32 = 10;

/// An IPv4 range, `10.0.0.0/16`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cidr {
    /// The base address (host bits cleared).
    base: u32,
    /// The prefix length, 0..=32.
    prefix: u8,
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

impl Cidr {
    /// Parse `a.b.c.d/len`; host bits are ignored (`10.0.0.5/24` is `10.0.0.0/24`).
    pub(crate) fn parse(s: &str) -> Option<Cidr> {
        let (ip, len) = s.split_once('/')?;
        let ip: Ipv4Addr = ip.trim().parse().ok()?;
        let prefix: u8 = len.trim().parse().ok()?;
        if prefix > 32 {
            return None;
        }
        let mask = Self::mask(prefix);
        Some(Cidr {
            base: u32::from(ip) & mask,
            prefix,
        })
    }

    fn mask(prefix: u8) -> u32 {
        if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix))
        }
    }

    /// The prefix length.
    pub(crate) fn prefix(self) -> u8 {
        self.prefix
    }

    /// The first address after the base address (a network's default gateway).
    pub(crate) fn first_host(self) -> u32 {
        self.base.saturating_add(1)
    }

    /// True when the two ranges share an address.
    pub(crate) fn overlaps(self, other: Cidr) -> bool {
        let mask = Self::mask(self.prefix.min(other.prefix));
        self.base & mask == other.base & mask
    }

    /// The last address of the range (the broadcast address).
    fn last(self) -> u32 {
        self.base | !Self::mask(self.prefix)
    }

    /// True when `ip` is in the range.
    pub(crate) fn contains(self, ip: u32) -> bool {
        ip & Self::mask(self.prefix) == self.base
    }

    /// True when `ip` may be given to a machine: in the range, neither the network nor
    /// the broadcast address (for ranges that have them).
    pub(crate) fn is_host(self, ip: u32) -> bool {
        self.contains(ip) && (self.prefix >= 31 || (ip != self.base && ip != self.last()))
    }

    /// Where assignment starts: `.10` from the base address.
    pub(crate) fn first_free_candidate(self) -> u32 {
        self.base.saturating_add(FIRST_HOST_OFFSET)
    }

    /// The first host address from `from` (at least `.10`) up that is not `taken`.
    pub(crate) fn next_free(self, from: u32, taken: impl Fn(u32) -> bool) -> Option<u32> {
        let first = self.base.checked_add(FIRST_HOST_OFFSET)?.max(from);
        let last = if self.prefix >= 31 {
            self.last()
        } else {
            self.last() - 1
        };
        (first..=last).find(|ip| !taken(*ip))
    }
}

/// Parse a dotted IPv4 address.
pub(crate) fn parse_ip(s: &str) -> Option<u32> {
    s.trim().parse::<Ipv4Addr>().ok().map(u32::from)
}

/// Render an address as dotted text.
pub(crate) fn show_ip(ip: u32) -> String {
    Ipv4Addr::from(ip).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> u32 {
        parse_ip(s).expect("valid address")
    }

    #[test]
    fn parses_and_contains() {
        let c = Cidr::parse("10.1.2.3/16").expect("valid cidr");
        assert!(c.contains(ip("10.1.255.1")));
        assert!(!c.contains(ip("10.2.0.1")));
        assert!(!c.is_host(ip("10.1.0.0")));
        assert!(!c.is_host(ip("10.1.255.255")));
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("10.0.0/8").is_none());
        assert!(Cidr::parse("10.0.0.0").is_none());
        assert_eq!(c.prefix(), 16);
        assert_eq!(c.to_string(), "10.1.0.0/16");
        assert_eq!(show_ip(c.first_host()), "10.1.0.1");
        let p = |s: &str| Cidr::parse(s).expect("valid cidr");
        assert!(c.overlaps(p("10.0.0.0/8")));
        assert!(p("10.0.0.0/8").overlaps(c));
        assert!(c.overlaps(p("10.1.7.0/24")));
        assert!(!c.overlaps(p("10.2.0.0/16")));
        assert!(!c.overlaps(p("192.168.0.0/16")));
    }

    #[test]
    fn allocates_from_ten_skipping_used() {
        use std::collections::HashSet;
        let free = |c: Cidr, used: &HashSet<u32>| c.next_free(0, |ip| used.contains(&ip));
        let c = Cidr::parse("192.168.1.0/24").expect("valid cidr");
        let mut used = HashSet::new();
        assert_eq!(free(c, &used).map(show_ip).as_deref(), Some("192.168.1.10"));
        used.insert(ip("192.168.1.10"));
        used.insert(ip("192.168.1.11"));
        assert_eq!(free(c, &used).map(show_ip).as_deref(), Some("192.168.1.12"));
        let tiny = Cidr::parse("192.168.1.0/29").expect("valid cidr");
        assert_eq!(free(tiny, &HashSet::new()), None);
        let full: HashSet<u32> = (ip("192.168.1.10")..=ip("192.168.1.254")).collect();
        assert_eq!(free(c, &full), None);
        assert_eq!(
            c.next_free(ip("192.168.1.20"), |_| false)
                .map(show_ip)
                .as_deref(),
            Some("192.168.1.20")
        );
    }
}
