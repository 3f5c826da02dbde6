//! The ec2 provider's schema: the kinds it manages (`network`: a VPC with its internet
//! gateway, route table and security groups; `subnet`; `machine`: an instance), their
//! attributes, and which changes are applied in place. Pure.

use clusterform_core::{AttrSchema, AttrType, KindSchema, ProviderSchema};

/// The provider's name in `cluster.toml` (`[provider.ec2]`).
pub const PROVIDER_NAME: &str = "ec2";

/// The kinds and attributes of the ec2 provider.
pub fn schema() -> ProviderSchema {
    use AttrType::{Bool, Map, Reference, String, StringList};
    let network = KindSchema {
        kind: "network".into(),
        doc: "a VPC with an internet gateway, a route table with the default route, and the cluster's security groups".into(),
        attrs: vec![
            AttrSchema::required("name", String, "the VPC's `Name` tag (changed in place)"),
            AttrSchema::required("cidr", String, "the VPC's address range, e.g. `10.0.0.0/16`")
                .force_new(),
            AttrSchema::optional(
                "gateway",
                String,
                "recorded only: EC2 routes through the VPC router (each subnet's first host)",
            ),
            AttrSchema::optional(
                "dns",
                StringList,
                "recorded only: EC2 machines use the Amazon DNS server (the VPC's base + 2)",
            ),
            AttrSchema::optional("tags", Map, "extra tags on the VPC"),
            AttrSchema::computed("internet_gateway", String, "the internet gateway's id"),
            AttrSchema::computed("route_table", String, "the route table's id (default route to the internet gateway)"),
            AttrSchema::computed(
                "security_group",
                String,
                "the security group of every machine: etcd 2379-2380 between members, SSH from `ssh_cidrs`",
            ),
            AttrSchema::computed(
                "docker_security_group",
                String,
                "the security group of `dev` machines: Docker API 2375 from `docker_cidrs`",
            ),
            AttrSchema::computed("ssh_cidrs", StringList, "where SSH (tcp/22) is open from, as EC2 has it"),
            AttrSchema::computed("docker_cidrs", StringList, "where tcp/2375 is open from, as EC2 has it"),
        ],
    };
    let subnet = KindSchema {
        kind: "subnet".into(),
        doc:
            "a subnet of the VPC in one availability zone, routed through the network's route table"
                .into(),
        attrs: vec![
            AttrSchema::required("name", String, "the subnet's `Name` tag (changed in place)"),
            AttrSchema::required("network", Reference, "the network (VPC) it belongs to")
                .force_new(),
            AttrSchema::required("cidr", String, "the address range, inside the VPC's").force_new(),
            AttrSchema::optional_computed(
                "zone",
                String,
                "the availability zone; EC2 picks one when left out",
            )
            .force_new(),
            AttrSchema::optional("tags", Map, "extra tags on the subnet"),
            AttrSchema::computed(
                "route_table",
                String,
                "the route table it is associated with",
            ),
        ],
    };
    let machine = KindSchema {
        kind: "machine".into(),
        doc: "a Flatcar Container Linux EC2 instance".into(),
        attrs: vec![
            AttrSchema::required(
                "name",
                String,
                "the instance's `Name` tag and host name (tag changed in place)",
            ),
            AttrSchema::optional("role", String, "what it runs: `etcd`, `worker` or `dev`")
                .force_new(),
            AttrSchema::required(
                "size",
                String,
                "the instance type, e.g. `t3.medium` (changed in place: stop, modify, start)",
            ),
            AttrSchema::optional_computed("zone", String, "the availability zone (the subnet's)")
                .force_new(),
            AttrSchema::required("network", Reference, "the network (VPC) it is in").force_new(),
            AttrSchema::optional_computed(
                "subnet",
                Reference,
                "its subnet; when left out, the network's subnet in `zone`",
            )
            .force_new(),
            AttrSchema::optional_computed(
                "address",
                String,
                "its private IPv4 address: static when set, else assigned by EC2",
            )
            .force_new(),
            AttrSchema::optional("etcd_endpoints", StringList, "etcd client URLs it uses")
                .force_new(),
            AttrSchema::optional(
                "ssh_authorized_keys",
                StringList,
                "SSH public keys for `core`",
            )
            .force_new(),
            AttrSchema::optional(
                "channel",
                String,
                "the Flatcar channel whose newest AMI it boots: stable, beta, alpha or lts",
            )
            .force_new(),
            AttrSchema::optional(
                "user_data",
                String,
                "the Ignition config, passed as user data (at most 16384 bytes)",
            )
            .force_new(),
            AttrSchema::optional(
                "protect",
                Bool,
                "termination protection (`DisableApiTermination`)",
            ),
            AttrSchema::optional("tags", Map, "extra tags on the instance"),
            AttrSchema::computed(
                "state",
                String,
                "the instance state: `pending`, `running`, `stopped`...",
            ),
            AttrSchema::computed("image", String, "the AMI it was launched from"),
            AttrSchema::computed(
                "public_address",
                String,
                "its public IPv4 address, if it has one",
            ),
        ],
    };
    ProviderSchema {
        provider: PROVIDER_NAME.into(),
        kinds: vec![network, subnet, machine],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the blueprints set on each kind (crates/config/src/blueprint.rs), plus the
    /// subnet reference machines get on ec2.
    #[test]
    fn accepts_what_the_blueprints_set() {
        let s = schema();
        let want: &[(&str, &[&str])] = &[
            ("network", &["name", "cidr", "gateway", "dns"]),
            ("subnet", &["name", "network", "cidr", "zone"]),
            (
                "machine",
                &[
                    "name",
                    "role",
                    "size",
                    "zone",
                    "address",
                    "network",
                    "subnet",
                    "etcd_endpoints",
                    "ssh_authorized_keys",
                    "channel",
                    "protect",
                    "user_data",
                ],
            ),
        ];
        for (kind, attrs) in want {
            let k = s.kind(kind).unwrap_or_else(|| panic!("kind {kind}"));
            for a in *attrs {
                assert!(k.attr(a).is_some_and(|x| x.input), "{kind}.{a}");
            }
        }
    }
}
