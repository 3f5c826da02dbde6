//! The sim provider's schema: the kinds it manages (network, subnet, machine, volume),
//! their attributes, and which changes are applied in place.

use clusterform_core::{AttrSchema, AttrType, KindSchema, ProviderSchema};

/// The provider's name in `cluster.toml` (`[provider.sim]`).
pub const PROVIDER_NAME: &str = "sim";

/// The kinds and attributes the sim cloud manages. Pure: touches no disk.
pub fn schema() -> ProviderSchema {
    use AttrType::{Bool, Int, Map, Reference, String, StringList};
    let network = KindSchema {
        kind: "network".into(),
        doc: "a private IPv4 network that machines and subnets attach to".into(),
        attrs: vec![
            AttrSchema::required("name", String, "the network's name").force_new(),
            AttrSchema::required("cidr", String, "the address range, e.g. `10.0.0.0/16`")
                .force_new(),
            AttrSchema::optional(
                "gateway",
                String,
                "the gateway address, never given to a machine",
            )
            .force_new(),
            AttrSchema::optional("dns", StringList, "DNS servers handed out to machines"),
            AttrSchema::optional("tags", Map, "free-form labels"),
        ],
    };
    let subnet = KindSchema {
        kind: "subnet".into(),
        doc: "a slice of a network, usually one per zone".into(),
        attrs: vec![
            AttrSchema::required("name", String, "the subnet's name").force_new(),
            AttrSchema::required("network", Reference, "the network it belongs to").force_new(),
            AttrSchema::required("cidr", String, "the address range, inside the network's")
                .force_new(),
            AttrSchema::optional("zone", String, "the availability zone").force_new(),
            AttrSchema::optional("tags", Map, "free-form labels"),
        ],
    };
    let machine = KindSchema {
        kind: "machine".into(),
        doc: "a Flatcar Linux virtual machine".into(),
        attrs: vec![
            AttrSchema::required("name", String, "the machine's host name").force_new(),
            AttrSchema::optional("role", String, "what it runs: `etcd` or `worker`").force_new(),
            AttrSchema::required(
                "size",
                String,
                "the machine size, e.g. `2cpu-4gb` (resized in place)",
            ),
            AttrSchema::optional("zone", String, "the availability zone").force_new(),
            AttrSchema::required("network", Reference, "the network it is attached to").force_new(),
            AttrSchema::optional("subnet", Reference, "the subnet it is attached to").force_new(),
            AttrSchema::optional_computed(
                "address",
                String,
                "its IPv4 address: static when set, else assigned from the network (from .10)",
            )
            .force_new(),
            AttrSchema::optional("etcd_endpoints", StringList, "etcd client URLs it joins")
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
                "the Flatcar channel: stable, beta or alpha",
            )
            .force_new(),
            AttrSchema::optional("user_data", String, "Ignition config passed at first boot")
                .force_new(),
            AttrSchema::optional("protect", Bool, "guard against accidental deletion"),
            AttrSchema::optional("tags", Map, "free-form labels"),
            AttrSchema::computed("state", String, "`running` or `stopped`"),
        ],
    };
    let volume = KindSchema {
        kind: "volume".into(),
        doc: "a block storage volume".into(),
        attrs: vec![
            AttrSchema::required("name", String, "the volume's name").force_new(),
            AttrSchema::required("size_gb", Int, "its size in GiB (grown in place)"),
            AttrSchema::optional("zone", String, "the availability zone").force_new(),
            AttrSchema::optional("machine", Reference, "the machine it is attached to"),
            AttrSchema::optional("tags", Map, "free-form labels"),
        ],
    };
    ProviderSchema {
        provider: PROVIDER_NAME.into(),
        kinds: vec![network, subnet, machine, volume],
    }
}

/// The id prefix of a kind (`net-000001`), or None for kinds the sim does not manage.
pub(crate) fn id_prefix(kind: &str) -> Option<&'static str> {
    match kind {
        "network" => Some("net"),
        "subnet" => Some("sub"),
        "machine" => Some("m"),
        "volume" => Some("vol"),
        _ => None,
    }
}

/// The kind a reference attribute points at (each reference is named after its kind).
pub(crate) fn reference_target(attr: &str) -> &str {
    attr
}
