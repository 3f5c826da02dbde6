//! Zone subnets for providers whose availability zones are separate subnets (`ec2`): a
//! blueprint there gets one `subnet.<zone>` per zone its machines use, each a 16th of
//! the network, and the static addresses of its central machines are placed in their
//! zone's subnet (the same host offset as `first_address` in the first one). Pure.
//!
//! Why: an EC2 subnet lies in one zone and is at least a /28, so `first_address + i`
//! spread round-robin over zones (10.0.1.101 in zone a, .102 in zone b) cannot exist there.

use std::net::Ipv4Addr;

use clusterform_core::Address;
use ipnet::Ipv4Net;

/// The network is cut into 2^SPLIT_BITS equal subnets, one per zone.
pub(crate) const SPLIT_BITS: u8 = 4;

/// Addresses EC2 keeps for itself at the start of every subnet (network, router, DNS,
/// reserved) and at its end (broadcast).
const RESERVED_LOW: u32 = 4;

/// The providers whose zones are separate subnets.
pub(crate) fn zones_are_subnets(provider: &str) -> bool {
    provider == "ec2"
}

/// One subnet per zone key, in order of first mention.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ZoneLayout {
    /// Zones in order of first mention; None stands for machines without a zone.
    pub(crate) keys: Vec<Option<String>>,
    /// The subnet of each key, same order.
    pub(crate) blocks: Vec<Ipv4Net>,
}

impl ZoneLayout {
    /// Cut `network` into 16 subnets and give the i-th to the i-th distinct key.
    pub(crate) fn new(network: Ipv4Net, keys: Vec<Option<String>>) -> Result<ZoneLayout, String> {
        let mut distinct: Vec<Option<String>> = Vec::new();
        for k in keys {
            if !distinct.contains(&k) {
                distinct.push(k);
            }
        }
        let prefix = network.prefix_len() + SPLIT_BITS;
        if prefix > 28 {
            return Err(format!(
                "on ec2 every zone is a subnet of a 16th of the network, and EC2 subnets are /28 or larger: make the network /24 or larger (not /{})",
                network.prefix_len()
            ));
        }
        let max = 1usize << SPLIT_BITS;
        if distinct.len() > max {
            return Err(format!(
                "on ec2 every zone is a subnet of a 16th of the network: {} zones do not fit, use at most {max}",
                distinct.len()
            ));
        }
        let blocks: Vec<Ipv4Net> = network
            .subnets(prefix)
            .map_err(|e| e.to_string())?
            .take(distinct.len())
            .collect();
        Ok(ZoneLayout {
            keys: distinct,
            blocks,
        })
    }

    /// The index of a machine's zone.
    pub(crate) fn index(&self, zone: Option<&str>) -> Option<usize> {
        self.keys.iter().position(|k| k.as_deref() == zone)
    }

    /// The subnet resource of key `k`: `subnet.<zone>`, `subnet.main` for machines
    /// without a zone, `subnet.zone-<k>` for a zone name that is no address name.
    pub(crate) fn address(&self, k: usize) -> Address {
        let name = match self.keys.get(k) {
            Some(Some(z)) if z != "main" && format!("subnet.{z}").parse::<Address>().is_ok() => {
                z.clone()
            }
            Some(None) => "main".to_string(),
            _ => format!("zone-{k}"),
        };
        Address::new("subnet", name)
    }

    /// The static addresses of machines whose zone indexes are `zone_of`: in zone k the
    /// j-th machine gets `first` moved into subnet k, plus j. `first` must lie in the
    /// first subnet, clear of the addresses EC2 reserves.
    pub(crate) fn addresses(
        &self,
        first: Ipv4Addr,
        zone_of: &[usize],
    ) -> Result<Vec<Ipv4Addr>, String> {
        let Some(block0) = self.blocks.first() else {
            return Ok(Vec::new());
        };
        if !block0.contains(&first) {
            return Err(format!(
                "on ec2 every zone is a subnet of a 16th of the network: the first address must be in the first zone's subnet, {block0} (the machines of the next zones get the same offset in {})",
                self.blocks
                    .iter()
                    .skip(1)
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let offset = u32::from(first) - u32::from(block0.network());
        let size = u32::from(block0.broadcast()) - u32::from(block0.network()) + 1;
        let mut per_zone = vec![0u32; self.blocks.len()];
        let mut out = Vec::with_capacity(zone_of.len());
        for &k in zone_of {
            let (Some(block), Some(j)) = (self.blocks.get(k), per_zone.get_mut(k)) else {
                return Err("a machine's zone has no subnet".to_string());
            };
            let host = offset + *j;
            *j += 1;
            if host < RESERVED_LOW || host >= size - 1 {
                return Err(format!(
                    "address {} of subnet {block} is one EC2 keeps for itself (the first 4 and the last of each subnet) or beyond it: pick a first address with room for every machine of a zone",
                    Ipv4Addr::from(u32::from(block.network()).wrapping_add(host))
                ));
            }
            out.push(Ipv4Addr::from(u32::from(block.network()) + host));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("cidr")
    }

    fn zones(z: &[&str]) -> Vec<Option<String>> {
        z.iter().map(|s| Some(s.to_string())).collect()
    }

    #[test]
    fn sixteen_subnets_in_order_of_first_mention() {
        let l = ZoneLayout::new(
            net("10.0.0.0/16"),
            zones(&["eu-west-1a", "eu-west-1b", "eu-west-1a", "eu-west-1c"]),
        )
        .expect("layout");
        assert_eq!(l.keys, zones(&["eu-west-1a", "eu-west-1b", "eu-west-1c"]));
        assert_eq!(
            l.blocks,
            vec![net("10.0.0.0/20"), net("10.0.16.0/20"), net("10.0.32.0/20")]
        );
        assert_eq!(l.address(1).to_string(), "subnet.eu-west-1b");
        assert_eq!(l.index(Some("eu-west-1c")), Some(2));
        let none = ZoneLayout::new(net("10.0.0.0/16"), vec![None]).expect("layout");
        assert_eq!(none.address(0).to_string(), "subnet.main");
        let odd = ZoneLayout::new(net("10.0.0.0/16"), zones(&["Zone A", "main"])).expect("layout");
        assert_eq!(odd.address(0).to_string(), "subnet.zone-0");
        assert_eq!(odd.address(1).to_string(), "subnet.zone-1");
    }

    #[test]
    fn central_addresses_move_into_their_zone() {
        let l = ZoneLayout::new(net("10.0.0.0/16"), zones(&["a", "b", "c"])).expect("layout");
        // 5 members round-robin over 3 zones.
        let got = l
            .addresses("10.0.1.101".parse().expect("ip"), &[0, 1, 2, 0, 1])
            .expect("addresses");
        let want: Vec<Ipv4Addr> = [
            "10.0.1.101",
            "10.0.17.101",
            "10.0.33.101",
            "10.0.1.102",
            "10.0.17.102",
        ]
        .iter()
        .map(|s| s.parse().expect("ip"))
        .collect();
        assert_eq!(got, want);
        for (a, k) in got.iter().zip([0usize, 1, 2, 0, 1]) {
            assert!(l.blocks[k].contains(a), "{a} in {}", l.blocks[k]);
        }
        // One zone: the same addresses as on a flat network.
        let one = ZoneLayout::new(net("10.0.0.0/16"), zones(&["a"])).expect("layout");
        assert_eq!(
            one.addresses("10.0.0.101".parse().expect("ip"), &[0, 0, 0])
                .expect("addresses"),
            ["10.0.0.101", "10.0.0.102", "10.0.0.103"]
                .iter()
                .map(|s| s.parse::<Ipv4Addr>().expect("ip"))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn what_does_not_fit_is_refused() {
        let e = ZoneLayout::new(net("10.0.0.0/25"), zones(&["a"])).expect_err("too small");
        assert!(e.contains("/24 or larger"), "{e}");
        let many: Vec<String> = (0..17).map(|i| format!("z{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(ZoneLayout::new(net("10.0.0.0/16"), zones(&many)).is_err());
        let l = ZoneLayout::new(net("10.0.0.0/16"), zones(&["a", "b"])).expect("layout");
        let e = l
            .addresses("10.0.20.5".parse().expect("ip"), &[0])
            .expect_err("not in the first subnet");
        assert!(e.contains("10.0.0.0/20"), "{e}");
        let e = l
            .addresses("10.0.0.2".parse().expect("ip"), &[0])
            .expect_err("reserved");
        assert!(e.contains("keeps for itself"), "{e}");
        let small = ZoneLayout::new(net("10.0.0.0/24"), zones(&["a"])).expect("layout");
        assert!(
            small
                .addresses("10.0.0.10".parse().expect("ip"), &[0; 6])
                .is_err()
        );
    }
}
