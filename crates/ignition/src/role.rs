//! Role templates: what a machine of each cluster architecture needs on first boot,
//! described by a [`MachineSpec`] and rendered to an Ignition [`Config`].

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use std::fmt::Write as _;

use crate::dataurl::make_resource;
use crate::types::{
    Config, Dropin, File, Ignition, NodeOwner, Passwd, Storage, Systemd, Unit, User,
};

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

/// The TLS material of a machine of a cluster whose etcd runs TLS with client
/// certificates: the cluster CA's certificate, and this machine's own certificate and key
/// (a member's server-and-peer certificate, or a worker's client certificate). Its
/// `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdTls {
    /// The cluster CA's certificate, PEM.
    pub ca_pem: String,
    /// This machine's certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls")
            .field("ca_pem", &self.ca_pem)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<sensitive>")
            .finish()
    }
}

/// Where the etcd certificates are on the machine (Flatcar's `ETCD_SSL_DIR`).
pub const ETCD_TLS_DIR: &str = "/etc/ssl/etcd";
/// Where Flatcar's etcd-wrapper shows [`ETCD_TLS_DIR`] to etcd (its container's
/// `/etc/ssl/certs`, read-only): the paths in the member's flags.
pub const ETCD_TLS_DIR_IN_CONTAINER: &str = "/etc/ssl/certs";
/// The uid and gid of Flatcar's `etcd` user, which etcd-member runs as.
pub const ETCD_UID: u32 = 232;

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
    /// etcd with TLS: this machine's certificates. A member then serves https with
    /// client-certificate auth on its peer and client URLs; a worker's proxy (or its
    /// applications) present its client certificate.
    #[serde(skip)]
    pub tls: Option<EtcdTls>,
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
        user: None,
        group: None,
    }
}

/// A private key file: readable by `uid` only (mode 0400, owner and group `uid`).
fn key_file(path: &str, contents: &str, uid: u32) -> File {
    let mut f = file(path, contents);
    f.mode = Some(0o400);
    if uid != 0 {
        f.user = Some(NodeOwner { id: Some(uid) });
        f.group = Some(NodeOwner { id: Some(uid) });
    }
    f
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

/// The `20-clct-etcd-member.conf` drop-in of `etcd-member.service`. With `tls`, the
/// peer and client URLs are https, and both require a certificate of the cluster's CA
/// (the certificate files are those [`render`] writes under [`ETCD_TLS_DIR`]).
pub fn etcd_member_dropin(m: &EtcdMember, platform: Platform, tls: bool) -> String {
    let mut s = String::with_capacity(if tls { 1200 } else { 640 });
    if has_metadata(platform) {
        s.push_str("[Unit]\nRequires=coreos-metadata.service\nAfter=coreos-metadata.service\n");
    }
    let name = &m.name;
    let addr = m.address;
    let scheme = if tls { "https" } else { "http" };
    s.push_str("[Service]\n");
    if tls {
        let _ = writeln!(s, "Environment=ETCD_SSL_DIR={ETCD_TLS_DIR}");
    }
    let _ = write!(
        s,
        "Environment=ETCD_IMAGE_TAG={ETCD_VERSION}\n\
         Environment=\"ETCD_NAME={name}\"\n\
         ExecStart=\n\
         ExecStart=/usr/lib/coreos/etcd-wrapper $ETCD_OPTS \\\n  \
         --name=\"{name}\" \\\n  \
         --listen-peer-urls=\"{scheme}://{addr}:2380\" \\\n  \
         --listen-client-urls=\"{scheme}://0.0.0.0:2379\" \\\n  \
         --initial-advertise-peer-urls=\"{scheme}://{addr}:2380\" \\\n  \
         --initial-cluster=\""
    );
    for (i, (n, a)) in m.initial_cluster.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{n}={scheme}://{a}:2380");
    }
    let _ = write!(
        s,
        "\" \\\n  \
         --initial-cluster-state=\"new\" \\\n  \
         --initial-cluster-token=\"{}\" \\\n  \
         --advertise-client-urls=\"{scheme}://{addr}:2379\"",
        m.cluster_token
    );
    if tls {
        let d = ETCD_TLS_DIR_IN_CONTAINER;
        for f in clusterform_pki::etcd_member_tls_flags(
            &format!("{d}/server.crt"),
            &format!("{d}/server.key"),
            &format!("{d}/ca.crt"),
        ) {
            let _ = write!(s, " \\\n  {f}");
        }
    }
    s.push('\n');
    s
}

/// The `etcd-grpc-proxy.service` unit: a local etcd v3 gRPC proxy on 127.0.0.1:2379
/// (plain gRPC, for this machine only). With `tls` it reaches the members with the
/// machine's client certificate (the files [`render`] writes under [`ETCD_TLS_DIR`]).
pub fn etcd_grpc_proxy_unit(endpoints: &[String], tls: bool) -> String {
    let (mount, flags) = if tls {
        let d = ETCD_TLS_DIR;
        (
            format!("-v {d}:{d}:ro "),
            format!(" --cacert={d}/ca.crt --cert={d}/client.crt --key={d}/client.key"),
        )
    } else {
        (String::new(), String::new())
    };
    format!(
        "[Unit]\n\
         Description=etcd gRPC proxy\n\
         Requires=docker.service\n\
         After=docker.service\n\
         \n\
         [Service]\n\
         ExecStartPre=-/usr/bin/docker rm -f etcd-grpc-proxy\n\
         ExecStart=/usr/bin/docker run --rm --name etcd-grpc-proxy --net=host {mount}\
         quay.io/coreos/etcd:{ETCD_VERSION} etcd grpc-proxy start \
         --endpoints={} --listen-addr=127.0.0.1:2379{flags}\n\
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
    if let Some(tls) = &spec.tls {
        // A member's server-and-peer certificate, readable by etcd; a worker's client
        // certificate, readable by root (its proxy runs as root in its container).
        let (stem, uid) = if spec.etcd.is_some() {
            ("server", ETCD_UID)
        } else {
            ("client", 0)
        };
        let d = ETCD_TLS_DIR;
        files.push(file(&format!("{d}/ca.crt"), &tls.ca_pem));
        files.push(file(&format!("{d}/{stem}.crt"), &tls.cert_pem));
        files.push(key_file(&format!("{d}/{stem}.key"), &tls.key_pem, uid));
    }
    if !spec.etcd_endpoints.is_empty() {
        let mut env = format!("ETCDCTL_ENDPOINTS={}\n", spec.etcd_endpoints.join(","));
        // Applications that reach the members directly (no local proxy) need the
        // client certificate too.
        if spec.tls.is_some() && spec.etcd.is_none() && spec.etcd_proxy.is_none() {
            let d = ETCD_TLS_DIR;
            let _ = write!(
                env,
                "ETCDCTL_CACERT={d}/ca.crt\nETCDCTL_CERT={d}/client.crt\nETCDCTL_KEY={d}/client.key\n"
            );
        }
        files.push(file("/etc/etcd-endpoints.env", &env));
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
            contents: Some(etcd_member_dropin(m, spec.platform, spec.tls.is_some())),
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
            contents: Some(etcd_grpc_proxy_unit(endpoints, spec.tls.is_some())),
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

    #[test]
    fn tls_members_serve_https_and_require_the_cas_client_certificates() {
        let m = member(Platform::Ec2).etcd.unwrap();
        let d = etcd_member_dropin(&m, Platform::Ec2, true);
        assert!(
            d.contains("Environment=ETCD_SSL_DIR=/etc/ssl/etcd\n"),
            "{d}"
        );
        for want in [
            "--listen-peer-urls=\"https://10.0.0.101:2380\"",
            "--listen-client-urls=\"https://0.0.0.0:2379\"",
            "--initial-cluster=\"demo-central-0=https://10.0.0.101:2380,demo-central-1=https://10.0.0.102:2380\"",
            "--advertise-client-urls=\"https://10.0.0.101:2379\"",
            // Flatcar's etcd-wrapper shows /etc/ssl/etcd to etcd as /etc/ssl/certs.
            "--cert-file=/etc/ssl/certs/server.crt",
            "--key-file=/etc/ssl/certs/server.key",
            "--trusted-ca-file=/etc/ssl/certs/ca.crt",
            "--client-cert-auth",
            "--peer-client-cert-auth",
        ] {
            assert!(d.contains(want), "{want} missing:\n{d}");
        }
        assert!(!d.contains("http://"), "{d}");
        let plain = etcd_member_dropin(&m, Platform::Ec2, false);
        assert!(
            !plain.contains("https") && !plain.contains("cert"),
            "{plain}"
        );

        let p = etcd_grpc_proxy_unit(&["https://10.0.0.101:2379".into()], true);
        assert!(p.contains("-v /etc/ssl/etcd:/etc/ssl/etcd:ro "), "{p}");
        assert!(
            p.contains("--listen-addr=127.0.0.1:2379 --cacert=/etc/ssl/etcd/ca.crt --cert=/etc/ssl/etcd/client.crt --key=/etc/ssl/etcd/client.key\n"),
            "{p}"
        );
        assert!(
            !format!(
                "{:?}",
                EtcdTls {
                    ca_pem: String::new(),
                    cert_pem: String::new(),
                    key_pem: "SECRET".into()
                }
            )
            .contains("SECRET")
        );
    }

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
            tls: None,
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
            tls: None,
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
            tls: None,
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
