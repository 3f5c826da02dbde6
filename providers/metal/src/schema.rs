//! The metal provider's schema: the kinds it manages (`network`: a VLAN, or a record only
//! when `vlan = false`; `machine`: a device; `ip_reservation`: a public IPv4 address
//! reserved in a metro, an elastic /32), their attributes, and which changes are applied
//! in place. Pure.

use clusterform_core::{AttrSchema, AttrType, KindSchema, ProviderSchema};

/// The provider's name in `cluster.toml` (`[provider.metal]`).
pub const PROVIDER_NAME: &str = "metal";

/// The kinds and attributes of the metal provider.
pub fn schema() -> ProviderSchema {
    use AttrType::{Bool, Int, Map, Reference, String, StringList};
    let network = KindSchema {
        kind: "network".into(),
        doc: "the cluster network: a Metal VLAN (virtual network) in one metro; the machines of that metro get their bond0 port assigned to it (hybrid bonded mode) and configure their static address on `bond0.<vxlan>`".into(),
        attrs: vec![
            AttrSchema::required("name", String, "the VLAN's description").force_new(),
            AttrSchema::required(
                "cidr",
                String,
                "the address range the machines' own configs use on the VLAN",
            )
            .force_new(),
            AttrSchema::optional("gateway", String, "the gateway address, never given to a machine"),
            AttrSchema::optional("dns", StringList, "DNS servers the machines use"),
            AttrSchema::optional("tags", Map, "extra tags on the VLAN (`key=value`)"),
            AttrSchema::optional_computed(
                "zone",
                String,
                "the VLAN's metro; the settings' `metro` when left out",
            )
            .force_new(),
            AttrSchema::optional_computed(
                "vxlan",
                Int,
                "the VLAN's number (2 to 3999), which the machines' configs name (`bond0.<vxlan>`); Metal picks one when left out",
            )
            .force_new(),
            AttrSchema::optional(
                "vlan",
                Bool,
                "false: no VLAN is made (a cluster spread over metros, whose machines talk over their public addresses); a record only",
            )
            .force_new(),
        ],
    };
    let machine = KindSchema {
        kind: "machine".into(),
        doc: "a Flatcar Container Linux bare-metal device".into(),
        attrs: vec![
            AttrSchema::required("name", String, "the device's host name (changed in place)"),
            AttrSchema::optional("role", String, "what it runs: `etcd`, `worker` or `dev`").force_new(),
            AttrSchema::required("size", String, "the Metal plan, e.g. `c3.small.x86`").force_new(),
            AttrSchema::optional_computed(
                "zone",
                String,
                "the metro (zones are metros); the settings' `metro` when left out",
            )
            .force_new(),
            AttrSchema::required("network", Reference, "the cluster network (VLAN)").force_new(),
            AttrSchema::optional_computed(
                "address",
                String,
                "its static address on the cluster VLAN (written into its config as `bond0.<vxlan>`; the blueprints set it)",
            )
            .force_new(),
            AttrSchema::computed("private_ipv4", String, "the private IPv4 address Metal gave it"),
            AttrSchema::optional(
                "ip_reservation",
                Reference,
                "the `ip_reservation` whose address the device takes as its public IPv4",
            )
            .force_new(),
            AttrSchema::optional("etcd_endpoints", StringList, "etcd client URLs it uses").force_new(),
            AttrSchema::optional("ssh_authorized_keys", StringList, "SSH public keys for `core`").force_new(),
            AttrSchema::optional(
                "channel",
                String,
                "the Flatcar channel it installs (`flatcar_<channel>`): stable, beta, alpha or lts",
            )
            .force_new(),
            AttrSchema::optional(
                "operating_system",
                String,
                "`custom_ipxe` to PXE-boot from `ipxe_script_url` instead of installing `flatcar_<channel>`",
            )
            .force_new(),
            AttrSchema::optional("ipxe_script_url", String, "the iPXE script of a `custom_ipxe` machine").force_new(),
            AttrSchema::optional("always_pxe", Bool, "PXE-boot on every boot, not only the first (changed in place)"),
            AttrSchema::optional("user_data", String, "the Ignition config, passed as userdata").force_new(),
            AttrSchema::optional("protect", Bool, "lock the device against deletion (changed in place)"),
            AttrSchema::optional("tags", Map, "extra tags on the device (`key=value`; changed in place)"),
            AttrSchema::computed("state", String, "the device's state: `active` once provisioned"),
        ],
    };
    let ip_reservation = KindSchema {
        kind: "ip_reservation".into(),
        doc: "a public IPv4 address reserved in a metro (an elastic /32); a central machine of a cluster spread over metros takes it as its public address (`ip_reservation` of the machine) and its etcd member advertises it".into(),
        attrs: vec![
            AttrSchema::required("zone", String, "the metro code").force_new(),
            AttrSchema::computed(
                "address",
                String,
                "the reserved address (the reservation's `address`; a /32)",
            ),
            AttrSchema::optional("tags", Map, "extra tags on the reservation (`key=value`; changed in place)"),
        ],
    };
    ProviderSchema {
        provider: PROVIDER_NAME.into(),
        kinds: vec![network, machine, ip_reservation],
    }
}
