//! The metal provider's schema: the kinds it manages (`network`: a VLAN; `machine`: a
//! device), their attributes, and which changes are applied in place. Pure.

use clusterform_core::{AttrSchema, AttrType, KindSchema, ProviderSchema};

/// The provider's name in `cluster.toml` (`[provider.metal]`).
pub const PROVIDER_NAME: &str = "metal";

/// The kinds and attributes of the metal provider.
pub fn schema() -> ProviderSchema {
    use AttrType::{Bool, Map, Reference, String, StringList};
    let network = KindSchema {
        kind: "network".into(),
        doc: "the cluster network: a Metal VLAN (virtual network) in the settings' metro; the machines of that metro get their bond0 port assigned to it (hybrid mode)".into(),
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
            AttrSchema::computed("metro", String, "the metro the VLAN is in"),
            AttrSchema::computed("vxlan", String, "the VLAN's number"),
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
                "its address on the cluster network: static when set (written into its config, and reserved when `reserve_addresses` is on), else its private IPv4 from Metal",
            )
            .force_new(),
            AttrSchema::computed("private_ipv4", String, "the private IPv4 address Metal gave it"),
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
            AttrSchema::computed("reservation", String, "the id of the IP reservation of its static address, when there is one"),
        ],
    };
    ProviderSchema {
        provider: PROVIDER_NAME.into(),
        kinds: vec![network, machine],
    }
}
