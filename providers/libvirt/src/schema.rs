//! The libvirt provider's schema (the `network` and `machine` kinds, which changes are
//! applied in place) and the machine and network defaults taken from
//! `[provider.libvirt]` (`image`, `disk_gb`, `forward`), filled in before planning so that
//! a changed setting shows in the plan.

use clusterform_core::{AttrSchema, AttrType, KindSchema, ProviderSchema, Resource, Value};

use crate::config::LibvirtConfig;

/// The provider's name in `cluster.toml` (`[provider.libvirt]`).
pub const PROVIDER_NAME: &str = "libvirt";

/// The kinds and attributes the libvirt provider manages. Pure.
pub fn schema() -> ProviderSchema {
    use AttrType::{Bool, Int, Map, Reference, String, StringList};
    let network = KindSchema {
        kind: "network".into(),
        doc: "a libvirt network (bridge, DHCP with a host entry per machine, DNS names) and the storage pool of its machines' disks".into(),
        attrs: vec![
            AttrSchema::required("name", String, "the network's name, also its storage pool's name").force_new(),
            AttrSchema::required("cidr", String, "the IPv4 range, e.g. `192.168.126.0/24`").force_new(),
            AttrSchema::optional("gateway", String, "the host's address on the network (default: the first host)").force_new(),
            AttrSchema::optional(
                "dns",
                StringList,
                "DNS servers the network's dnsmasq forwards to (its own address is left out)",
            )
            .update_note("takes effect when the network next starts"),
            AttrSchema::optional(
                "forward",
                String,
                "`nat`, `route`, `open` or `none`; from `[provider.libvirt] forward` when left out",
            )
            .force_new(),
            AttrSchema::optional("tags", Map, "free-form labels, kept in the network's metadata"),
            AttrSchema::computed("bridge", String, "the host bridge"),
            AttrSchema::computed("pool", String, "the storage pool holding the base image and the machines' disks"),
            AttrSchema::computed("pool_path", String, "the pool's folder"),
            AttrSchema::computed("state", String, "`active` or `inactive`"),
        ],
    };
    let machine = KindSchema {
        kind: "machine".into(),
        doc: "a QEMU domain booting Flatcar from a qcow2 overlay of the base image, Ignition over fw_cfg".into(),
        attrs: vec![
            AttrSchema::required("name", String, "the domain's name and host name").force_new(),
            AttrSchema::optional("role", String, "what it runs: `etcd`, `worker` or `dev`").force_new(),
            AttrSchema::required("size", String, "vCPUs and memory, `2cpu-4gb` or `1cpu-512mb`")
                .update_note("restarts the machine"),
            AttrSchema::optional("zone", String, "a free label (rack, cabinet), kept in the metadata").force_new(),
            AttrSchema::required("network", Reference, "the network it is attached to").force_new(),
            AttrSchema::optional_computed(
                "address",
                String,
                "its IPv4 address, handed out by DHCP to its MAC: static when set, else the lowest free one from the cidr's 10th host",
            )
            .force_new(),
            AttrSchema::optional("etcd_endpoints", StringList, "etcd client URLs it uses").force_new(),
            AttrSchema::optional("ssh_authorized_keys", StringList, "SSH public keys for `core`").force_new(),
            AttrSchema::optional("channel", String, "the Flatcar channel").force_new(),
            AttrSchema::optional("user_data", String, "the Ignition config, passed through fw_cfg `opt/org.flatcar-linux/config`").force_new(),
            AttrSchema::optional(
                "image",
                String,
                "the image its disk is an overlay of; from `[provider.libvirt] image` when left out",
            )
            .force_new(),
            AttrSchema::optional(
                "disk_gb",
                Int,
                "its disk size in GiB; from `[provider.libvirt] disk_gb` when left out (else the image's size)",
            )
            .force_new(),
            AttrSchema::optional("protect", Bool, "guard against accidental deletion"),
            AttrSchema::optional(
                "stopped",
                Bool,
                "`true` keeps the domain shut off; left out, a domain found shut off is started again",
            ),
            AttrSchema::optional("tags", Map, "free-form labels, kept in the domain's metadata"),
            AttrSchema::computed("mac", String, "the NIC's MAC address, derived from `address`"),
            AttrSchema::computed("state", String, "the domain's state: `running`, `shut off`, `paused`..."),
            AttrSchema::computed("disk", String, "the overlay volume's path"),
            AttrSchema::computed("ignition_file", String, "the Ignition file QEMU reads"),
            AttrSchema::computed("console_log", String, "the serial console's log file"),
        ],
    };
    ProviderSchema {
        provider: PROVIDER_NAME.into(),
        kinds: vec![network, machine],
    }
}

/// Fill in what `[provider.libvirt]` decides for the libvirt resources that leave it out:
/// each machine's `image` and `disk_gb`, each network's `forward`. A `stopped = false`
/// is dropped (it means the same as leaving it out).
pub fn apply_defaults(config: &LibvirtConfig, resources: &mut [Resource]) {
    for r in resources.iter_mut().filter(|r| r.provider == PROVIDER_NAME) {
        match r.address.kind.as_str() {
            "machine" => {
                r.attrs
                    .entry("image".into())
                    .or_insert_with(|| Value::String(config.image.clone()));
                if let Some(gb) = config.disk_gb {
                    r.attrs.entry("disk_gb".into()).or_insert(Value::from(gb));
                }
                if r.attrs.get("stopped") == Some(&Value::Bool(false)) {
                    r.attrs.remove("stopped");
                }
            }
            "network" => {
                r.attrs
                    .entry("forward".into())
                    .or_insert_with(|| Value::String(config.forward.name().into()));
            }
            _ => {}
        }
    }
}
