//! Role templates: what a machine of each cluster architecture needs on first boot,
//! described by a [`MachineSpec`] and rendered to an Ignition [`Config`].

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use std::fmt::Write as _;

use crate::dataurl::make_resource;
use crate::types::{Config, Dropin, File, Ignition, Passwd, Storage, Systemd, Unit, User};

/// Where the machine runs; decides e.g. whether a static networkd file is written
/// (libvirt, sim, bare metal) or the cloud's DHCP is used (EC2, Equinix Metal).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Platform {
    /// The simulated cloud.
    Sim,
    /// libvirt / QEMU.
    Libvirt,
    /// AWS EC2.
    Ec2,
    /// Equinix Metal.
    Metal,
}

/// A static address: on `eth0` (the seed's `00-eth0.network`), or on Metal on the
/// cluster VLAN's subinterface of `bond0`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaticNetwork {
    /// The machine's address.
    pub address: Ipv4Addr,
    /// Prefix length of the network (`/24`).
    pub prefix: u8,
    /// Default gateway.
    pub gateway: Ipv4Addr,
    /// DNS servers.
    pub dns: Vec<Ipv4Addr>,
    /// Equinix Metal: the number of the cluster VLAN the address lives on (hybrid
    /// bonded mode: a tagged subinterface `bond0.<vlan>`; the machine keeps Metal's own
    /// addresses and default route on `bond0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
}

/// This machine runs an etcd member (`etcd-member.service` with a drop-in).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdMember {
    /// `--name`, unique in the etcd cluster (e.g. `demo-central-0`).
    pub name: String,
    /// The address it advertises for peers and clients.
    pub address: Ipv4Addr,
    /// Every member: (name, address), this one included; becomes `--initial-cluster`.
    pub initial_cluster: Vec<(String, Ipv4Addr)>,
    /// `--initial-cluster-token` (the cluster name).
    pub cluster_token: String,
}

/// Everything the role templates need to render one machine's config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineSpec {
    /// The host name (`/etc/hostname`).
    pub hostname: String,
    /// Where it runs.
    pub platform: Platform,
    /// SSH keys for user `core`.
    pub ssh_authorized_keys: Vec<String>,
    /// Static networking, or None for DHCP.
    pub network: Option<StaticNetwork>,
    /// Enable the Docker API on tcp 2375 (`docker-tcp.socket`, dev-vm).
    pub docker_tcp: bool,
    /// Run an etcd member.
    pub etcd: Option<EtcdMember>,
    /// Run a local etcd v3 gRPC proxy on 127.0.0.1:2379 in front of these client URLs
    /// (workers of central-services / large-scale).
    pub etcd_proxy: Option<Vec<String>>,
    /// The etcd client URLs applications on this machine should use; written to
    /// `/etc/etcd-endpoints.env` as `ETCDCTL_ENDPOINTS` (workers).
    pub etcd_endpoints: Vec<String>,
}

/// The etcd release the templates run (image tag of `etcd-member.service` and of the
/// gRPC proxy).
pub const ETCD_VERSION: &str = "v3.5.17";

/// `docker-tcp.socket`, verbatim from the cluster architectures page.
pub const DOCKER_TCP_SOCKET: &str = "[Unit]
Description=Docker Socket for the API

[Socket]
ListenStream=2375
BindIPv6Only=both
Service=docker.service

[Install]
WantedBy=sockets.target
";

/// `enable-docker-tcp.service`, verbatim from the cluster architectures page.
pub const ENABLE_DOCKER_TCP_SERVICE: &str = "[Unit]
Description=Enable the Docker Socket for the API
[Service]
Type=oneshot
ExecStart=/usr/bin/systemctl enable docker-tcp.socket
";

fn file(path: &str, contents: &str) -> File {
    File {
        overwrite: None,
        path: path.to_owned(),
        contents: Some(make_resource(contents.as_bytes())),
        mode: Some(0o644),
    }
}

/// Whether the platform has a metadata service (`coreos-metadata.service`).
fn has_metadata(platform: Platform) -> bool {
    matches!(platform, Platform::Ec2 | Platform::Metal)
}

/// The `[Match]`/`[Network]` file of the seed for a static `eth0`.
pub fn networkd_eth0(net: &StaticNetwork) -> String {
    let mut s = String::with_capacity(96 + 20 * net.dns.len());
    s.push_str("[Match]\nName=eth0\n\n[Network]\n");
    for dns in &net.dns {
        let _ = writeln!(s, "DNS={dns}");
    }
    let _ = write!(
        s,
        "Address={}/{}\nGateway={}\n",
        net.address, net.prefix, net.gateway
    );
    s
}

/// The name of the VLAN subinterface of `bond0` on Metal.
pub fn vlan_interface(vlan: u16) -> String {
    format!("bond0.{vlan}")
}

/// The unit that makes the cluster VLAN's subinterface of `bond0` on a Metal machine
/// (hybrid bonded mode: the VLAN's frames arrive tagged on the bond). `bond0` itself is
/// set up from Metal's metadata; this waits for it, then adds `bond0.<vlan>`, which
/// networkd configures from [`networkd_vlan`].
pub fn vlan_unit(vlan: u16) -> String {
    let link = vlan_interface(vlan);
    format!(
        "[Unit]\n\
         Description=VLAN {vlan} of the cluster network on bond0\n\
         Wants=systemd-networkd.service\n\
         After=systemd-networkd.service\n\
         Before=network-online.target\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         RemainAfterExit=yes\n\
         TimeoutStartSec=300\n\
         ExecStart=/bin/sh -c 'until ip link show bond0 >/dev/null 2>&1; do sleep 1; done; \
         ip link show {link} >/dev/null 2>&1 || ip link add link bond0 name {link} type vlan id {vlan}'\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    )
}

/// The networkd file of the VLAN subinterface: the static address only. No gateway:
/// the default route stays on `bond0` (Metal's layer 3), and a VLAN has none of its own.
pub fn networkd_vlan(net: &StaticNetwork, vlan: u16) -> String {
    let mut s = String::with_capacity(96 + 20 * net.dns.len());
    let _ = write!(s, "[Match]\nName={}\n\n[Network]\n", vlan_interface(vlan));
    for dns in &net.dns {
        let _ = writeln!(s, "DNS={dns}");
    }
    let _ = writeln!(s, "Address={}/{}", net.address, net.prefix);
    s
}

/// The name of the unit made by [`vlan_unit`].
pub const VLAN_UNIT: &str = "clusterform-vlan.service";

/// Where [`networkd_vlan`] is written.
pub const VLAN_NETWORK_FILE: &str = "/etc/systemd/network/30-clusterform-vlan.network";

/// The `20-clct-etcd-member.conf` drop-in of `etcd-member.service`.
pub fn etcd_member_dropin(m: &EtcdMember, platform: Platform) -> String {
    let mut s = String::with_capacity(640);
    if has_metadata(platform) {
        s.push_str("[Unit]\nRequires=coreos-metadata.service\nAfter=coreos-metadata.service\n");
    }
    let name = &m.name;
    let addr = m.address;
    let _ = write!(
        s,
        "[Service]\n\
         Environment=ETCD_IMAGE_TAG={ETCD_VERSION}\n\
         Environment=\"ETCD_NAME={name}\"\n\
         ExecStart=\n\
         ExecStart=/usr/lib/coreos/etcd-wrapper $ETCD_OPTS \\\n  \
         --name=\"{name}\" \\\n  \
         --listen-peer-urls=\"http://{addr}:2380\" \\\n  \
         --listen-client-urls=\"http://0.0.0.0:2379\" \\\n  \
         --initial-advertise-peer-urls=\"http://{addr}:2380\" \\\n  \
         --initial-cluster=\""
    );
    for (i, (n, a)) in m.initial_cluster.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{n}=http://{a}:2380");
    }
    let _ = write!(
        s,
        "\" \\\n  \
         --initial-cluster-state=\"new\" \\\n  \
         --initial-cluster-token=\"{}\" \\\n  \
         --advertise-client-urls=\"http://{addr}:2379\"\n",
        m.cluster_token
    );
    s
}

/// The `etcd-grpc-proxy.service` unit: a local etcd v3 gRPC proxy on 127.0.0.1:2379.
pub fn etcd_grpc_proxy_unit(endpoints: &[String]) -> String {
    format!(
        "[Unit]\n\
         Description=etcd gRPC proxy\n\
         Requires=docker.service\n\
         After=docker.service\n\
         \n\
         [Service]\n\
         ExecStartPre=-/usr/bin/docker rm -f etcd-grpc-proxy\n\
         ExecStart=/usr/bin/docker run --rm --name etcd-grpc-proxy --net=host \
         quay.io/coreos/etcd:{ETCD_VERSION} etcd grpc-proxy start \
         --endpoints={} --listen-addr=127.0.0.1:2379\n\
         ExecStop=/usr/bin/docker stop etcd-grpc-proxy\n\
         Restart=always\n\
         RestartSec=5\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        endpoints.join(",")
    )
}

/// Render the role template of `spec`, then merge each of `extras` (the user's Butane
/// files, already translated) over it in order.
pub fn render(spec: &MachineSpec, extras: &[Config]) -> Config {
    let mut files = Vec::with_capacity(3);
    let mut hostname_file = file("/etc/hostname", &format!("{}\n", spec.hostname));
    hostname_file.overwrite = Some(true);
    files.push(hostname_file);
    if let Some(net) = &spec.network
        && matches!(spec.platform, Platform::Sim | Platform::Libvirt)
    {
        files.push(file(
            "/etc/systemd/network/00-eth0.network",
            &networkd_eth0(net),
        ));
    }
    let vlan = spec
        .network
        .as_ref()
        .filter(|_| spec.platform == Platform::Metal)
        .and_then(|net| Some((net, net.vlan?)));
    if let Some((net, id)) = vlan {
        files.push(file(VLAN_NETWORK_FILE, &networkd_vlan(net, id)));
    }
    if !spec.etcd_endpoints.is_empty() {
        files.push(file(
            "/etc/etcd-endpoints.env",
            &format!("ETCDCTL_ENDPOINTS={}\n", spec.etcd_endpoints.join(",")),
        ));
    }

    let mut units = Vec::new();
    if spec.docker_tcp {
        units.push(Unit {
            contents: Some(DOCKER_TCP_SOCKET.to_owned()),
            enabled: Some(true),
            mask: Some(false),
            name: "docker-tcp.socket".to_owned(),
            ..Unit::default()
        });
        units.push(Unit {
            contents: Some(ENABLE_DOCKER_TCP_SERVICE.to_owned()),
            enabled: Some(true),
            name: "enable-docker-tcp.service".to_owned(),
            ..Unit::default()
        });
    }
    if let Some((_, id)) = vlan {
        units.push(Unit {
            contents: Some(vlan_unit(id)),
            enabled: Some(true),
            name: VLAN_UNIT.to_owned(),
            ..Unit::default()
        });
    }
    if let Some(m) = &spec.etcd {
        let mut dropins = vec![Dropin {
            contents: Some(etcd_member_dropin(m, spec.platform)),
            name: "20-clct-etcd-member.conf".to_owned(),
        }];
        if vlan.is_some() {
            // etcd listens on the VLAN address: start it once the subinterface is there.
            dropins.push(Dropin {
                contents: Some(format!(
                    "[Unit]\nRequires={VLAN_UNIT}\nAfter={VLAN_UNIT}\nWants=network-online.target\nAfter=network-online.target\n"
                )),
                name: "10-clusterform-vlan.conf".to_owned(),
            });
        }
        units.push(Unit {
            dropins,
            enabled: Some(true),
            name: "etcd-member.service".to_owned(),
            ..Unit::default()
        });
    }
    if let Some(endpoints) = &spec.etcd_proxy {
        units.push(Unit {
            contents: Some(etcd_grpc_proxy_unit(endpoints)),
            enabled: Some(true),
            name: "etcd-grpc-proxy.service".to_owned(),
            ..Unit::default()
        });
    }

    let passwd = (!spec.ssh_authorized_keys.is_empty()).then(|| Passwd {
        users: vec![User {
            groups: Vec::new(),
            name: "core".to_owned(),
            ssh_authorized_keys: spec.ssh_authorized_keys.clone(),
        }],
    });

    let mut config = Config {
        ignition: Ignition {
            version: crate::IGNITION_VERSION.to_owned(),
        },
        passwd,
        storage: Some(Storage {
            files,
            ..Storage::default()
        }),
        systemd: (!units.is_empty()).then_some(Systemd { units }),
    };
    for extra in extras {
        config = crate::merge::merge(config, extra.clone());
    }
    config
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::dataurl::decode;

    pub(crate) fn member(platform: Platform) -> MachineSpec {
        MachineSpec {
            hostname: "demo-central-0".into(),
            platform,
            ssh_authorized_keys: vec!["ssh-ed25519 AAAA test".into()],
            network: Some(StaticNetwork {
                address: Ipv4Addr::new(10, 0, 0, 101),
                prefix: 24,
                gateway: Ipv4Addr::new(10, 0, 0, 1),
                dns: vec![Ipv4Addr::new(1, 2, 3, 4), Ipv4Addr::new(8, 8, 8, 8)],
                vlan: None,
            }),
            docker_tcp: false,
            etcd: Some(EtcdMember {
                name: "demo-central-0".into(),
                address: Ipv4Addr::new(10, 0, 0, 101),
                initial_cluster: vec![
                    ("demo-central-0".into(), Ipv4Addr::new(10, 0, 0, 101)),
                    ("demo-central-1".into(), Ipv4Addr::new(10, 0, 0, 102)),
                ],
                cluster_token: "demo".into(),
            }),
            etcd_proxy: None,
            etcd_endpoints: Vec::new(),
        }
    }

    fn file_text(c: &Config, path: &str) -> Option<String> {
        let f = c.storage.as_ref()?.files.iter().find(|f| f.path == path)?;
        let r = f.contents.as_ref()?;
        let (bytes, _) = decode(r.source.as_deref()?, r.compression.as_deref())?;
        String::from_utf8(bytes).ok()
    }

    #[test]
    fn etcd_member_sim_exact_text() {
        let c = render(&member(Platform::Sim), &[]);
        assert_eq!(
            file_text(&c, "/etc/systemd/network/00-eth0.network").as_deref(),
            Some(
                "[Match]\nName=eth0\n\n[Network]\nDNS=1.2.3.4\nDNS=8.8.8.8\nAddress=10.0.0.101/24\nGateway=10.0.0.1\n"
            )
        );
        assert_eq!(
            file_text(&c, "/etc/hostname").as_deref(),
            Some("demo-central-0\n")
        );
        let units = &c.systemd.as_ref().unwrap().units;
        assert_eq!(units[0].name, "etcd-member.service");
        assert_eq!(units[0].enabled, Some(true));
        assert_eq!(
            units[0].dropins[0].contents.as_deref(),
            Some(
                "[Service]\n\
Environment=ETCD_IMAGE_TAG=v3.5.17\n\
Environment=\"ETCD_NAME=demo-central-0\"\n\
ExecStart=\n\
ExecStart=/usr/lib/coreos/etcd-wrapper $ETCD_OPTS \\\n  \
--name=\"demo-central-0\" \\\n  \
--listen-peer-urls=\"http://10.0.0.101:2380\" \\\n  \
--listen-client-urls=\"http://0.0.0.0:2379\" \\\n  \
--initial-advertise-peer-urls=\"http://10.0.0.101:2380\" \\\n  \
--initial-cluster=\"demo-central-0=http://10.0.0.101:2380,demo-central-1=http://10.0.0.102:2380\" \\\n  \
--initial-cluster-state=\"new\" \\\n  \
--initial-cluster-token=\"demo\" \\\n  \
--advertise-client-urls=\"http://10.0.0.101:2379\"\n"
            )
        );
    }

    #[test]
    fn etcd_member_ec2_keeps_metadata_and_no_networkd() {
        let c = render(&member(Platform::Ec2), &[]);
        assert!(file_text(&c, "/etc/systemd/network/00-eth0.network").is_none());
        let drop = c.systemd.as_ref().unwrap().units[0].dropins[0]
            .contents
            .clone()
            .unwrap();
        assert!(drop.starts_with(
            "[Unit]\nRequires=coreos-metadata.service\nAfter=coreos-metadata.service\n[Service]\n"
        ));
        assert!(!drop.contains("--discovery"));
    }

    #[test]
    fn worker_with_proxy_and_endpoints() {
        let spec = MachineSpec {
            hostname: "w-1".into(),
            platform: Platform::Metal,
            ssh_authorized_keys: vec![],
            network: None,
            docker_tcp: false,
            etcd: None,
            etcd_proxy: Some(vec![
                "http://10.0.0.101:2379".into(),
                "http://10.0.0.102:2379".into(),
            ]),
            etcd_endpoints: vec!["http://127.0.0.1:2379".into()],
        };
        let c = render(&spec, &[]);
        assert!(c.passwd.is_none());
        assert_eq!(
            file_text(&c, "/etc/etcd-endpoints.env").as_deref(),
            Some("ETCDCTL_ENDPOINTS=http://127.0.0.1:2379\n")
        );
        let unit = &c.systemd.as_ref().unwrap().units[0];
        assert_eq!(unit.name, "etcd-grpc-proxy.service");
        let text = unit.contents.as_deref().unwrap();
        assert!(text.contains(
            "quay.io/coreos/etcd:v3.5.17 etcd grpc-proxy start --endpoints=http://10.0.0.101:2379,http://10.0.0.102:2379 --listen-addr=127.0.0.1:2379\n"
        ));
        assert!(text.contains("Requires=docker.service\nAfter=docker.service\n"));
        assert!(text.contains("Restart=always\n"));
        assert!(text.ends_with("[Install]\nWantedBy=multi-user.target\n"));
    }

    #[test]
    fn dev_vm_docker_tcp_verbatim() {
        let spec = MachineSpec {
            hostname: "dev".into(),
            platform: Platform::Libvirt,
            ssh_authorized_keys: vec!["k".into()],
            network: None,
            docker_tcp: true,
            etcd: None,
            etcd_proxy: None,
            etcd_endpoints: vec![],
        };
        let json = crate::to_json(&render(&spec, &[]));
        assert!(json.contains(r#"{"contents":"[Unit]\nDescription=Docker Socket for the API\n\n[Socket]\nListenStream=2375\nBindIPv6Only=both\nService=docker.service\n\n[Install]\nWantedBy=sockets.target\n","enabled":true,"mask":false,"name":"docker-tcp.socket"}"#), "{json}");
        assert!(json.contains(r#"{"contents":"[Unit]\nDescription=Enable the Docker Socket for the API\n[Service]\nType=oneshot\nExecStart=/usr/bin/systemctl enable docker-tcp.socket\n","enabled":true,"name":"enable-docker-tcp.service"}"#), "{json}");
        assert!(json.contains(r#""passwd":{"users":[{"name":"core","sshAuthorizedKeys":["k"]}]}"#));
        assert!(json.contains(r#"{"overwrite":true,"path":"/etc/hostname","contents":{"compression":"","source":"data:,dev%0A"},"mode":420}"#), "{json}");
    }

    #[test]
    fn render_is_deterministic() {
        let spec = member(Platform::Sim);
        let a = crate::to_json(&render(&spec, &[]));
        for _ in 0..5 {
            assert_eq!(crate::to_json(&render(&spec, &[])), a);
        }
    }
}
