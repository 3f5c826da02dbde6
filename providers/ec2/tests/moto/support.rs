//! What the moto scenarios share: finding moto (skip with a line outside CI, fail under
//! `CI=true`), a private world per test running the real binary with fake static
//! credentials, an EC2 client on moto for out-of-band changes and checks, a Flatcar AMI
//! registered in moto, and cluster files pointing at a proxy in front of moto.

use std::collections::BTreeMap;
use std::process::Command;

use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ec2::types::{Filter, Instance, InstanceAttributeName};
use clusterform_tests::{Run, World};

use crate::proxy::Proxy;

/// The variable naming moto's URL (scripts/test sets it).
pub const MOTO_ENV: &str = "CLUSTERFORM_MOTO_URL";
/// moto's account: what `ami_owner` names in these tests.
pub const MOTO_ACCOUNT: &str = "123456789012";
/// The region every test uses.
pub const REGION: &str = "eu-west-1";

/// The variable naming a second moto for the 200-instance test alone (moto's
/// `DescribeInstances` slows with every instance it ever held, terminated ones too:
/// about 10 ms each). Without it that test uses the shared one.
pub const MOTO_SCALE_ENV: &str = "CLUSTERFORM_MOTO_SCALE_URL";

/// moto's URL, or None (the test skips) when it is not set outside CI.
pub fn moto_url() -> Option<String> {
    check_moto(std::env::var(MOTO_ENV).ok())
}

/// The moto of the scale test: its own when scripts/test started one, else the shared.
pub fn moto_scale_url() -> Option<String> {
    match std::env::var(MOTO_SCALE_ENV)
        .ok()
        .filter(|u| !u.trim().is_empty())
    {
        Some(u) => check_moto(Some(u)),
        None => moto_url(),
    }
}

fn check_moto(url: Option<String>) -> Option<String> {
    match url.filter(|u| !u.trim().is_empty()) {
        Some(u) => {
            let addr = u
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_string();
            if std::net::TcpStream::connect(&addr).is_err() {
                panic!("moto at {u} does not answer: start it (./scripts/test does)");
            }
            Some(u)
        }
        None if std::env::var("CI").is_ok_and(|v| v == "true") => panic!(
            "CI=true but {MOTO_ENV} is not set: the EC2 tests need moto; ./scripts/test installs and starts it"
        ),
        None => {
            eprintln!(
                "skipped: no moto EC2 emulator ({MOTO_ENV} unset). Run ./scripts/test, or: python3 -m venv .venv-moto && .venv-moto/bin/pip install 'moto[server]' && .venv-moto/bin/moto_server -H 127.0.0.1 -p 5000 & export {MOTO_ENV}=http://127.0.0.1:5000"
            );
            None
        }
    }
}

/// Skip the test (return) when moto is not there outside CI; `need_moto!(scale)` for
/// the moto of the scale test.
#[macro_export]
macro_rules! need_moto {
    () => {
        match $crate::support::moto_url() {
            Some(u) => u,
            None => return,
        }
    };
    (scale) => {
        match $crate::support::moto_scale_url() {
            Some(u) => u,
            None => return,
        }
    };
}

/// A cluster name no other test uses (tests share one moto).
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{:x}{:05x}",
        std::process::id() % 4096,
        nanos % 0xfffff
    )
}

/// One test's world: a folder, moto behind a proxy, an SDK client on moto.
pub struct Ec2World {
    /// The folder, the binary.
    pub world: World,
    /// The proxy the binary talks to.
    pub proxy: Proxy,
    /// A client straight on moto (out-of-band changes and checks; not counted).
    pub ec2: Client,
    /// Runs the client's calls.
    pub rt: tokio::runtime::Runtime,
    /// The region of the client and of [`Ec2World::provider_table`].
    pub region: String,
}

impl Ec2World {
    /// A world on moto at `url`, with a Flatcar AMI for each channel registered.
    pub fn new(url: &str) -> Ec2World {
        Ec2World::in_region(url, REGION)
    }

    /// A world in a region of its own (moto keeps each region apart): for a test that
    /// looks at everything the provider holds, not only its own clusters.
    pub fn in_region(url: &str, region: &str) -> Ec2World {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let conf = aws_sdk_ec2::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region.to_string()))
            .endpoint_url(url)
            .credentials_provider(Credentials::new("testing", "testing", None, None, "static"))
            .build();
        let w = Ec2World {
            world: World::new(),
            proxy: Proxy::start(url),
            ec2: Client::from_conf(conf),
            rt,
            region: region.to_string(),
        };
        for channel in ["stable", "beta"] {
            w.register_ami(&format!("Flatcar-{channel}-9998.0.0-hvm"));
            w.register_ami(&format!("Flatcar-{channel}-9999.0.0-hvm"));
        }
        w
    }

    /// Register an AMI (moto keeps duplicates; that is fine).
    pub fn register_ami(&self, name: &str) -> String {
        self.rt
            .block_on(
                self.ec2
                    .register_image()
                    .name(name)
                    .root_device_name("/dev/xvda")
                    .send(),
            )
            .expect("RegisterImage")
            .image_id()
            .unwrap_or_default()
            .to_string()
    }

    /// The name of an AMI. Tests run at once register AMIs of the same names in the
    /// shared moto, so a test checks the name the newest must have (`9999` is always
    /// registered after `9998`), not an id.
    pub fn image_name(&self, id: &str) -> String {
        let out = self
            .rt
            .block_on(self.ec2.describe_images().image_ids(id).send())
            .expect("DescribeImages");
        out.images()
            .first()
            .and_then(|i| i.name())
            .expect("the AMI")
            .to_string()
    }

    /// `[provider.ec2]` pointing at the proxy, with extra lines.
    pub fn provider_table(&self, extra: &str) -> String {
        format!(
            "[provider.ec2]\nregion = \"{}\"\nendpoint = \"{}\"\nami_owner = \"{MOTO_ACCOUNT}\"\npoll_interval_ms = 50\nwait_timeout_s = 120\nteardown_timeout_s = 30\nssh_cidrs = [\"203.0.113.0/24\"]\n{extra}\n",
            self.region, self.proxy.url
        )
    }

    /// A `clusterform` command with fake static credentials and no other AWS settings.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = self.world.command(args);
        for v in [
            "AWS_PROFILE",
            "AWS_REGION",
            "AWS_DEFAULT_REGION",
            "AWS_SESSION_TOKEN",
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_EC2",
        ] {
            c.env_remove(v);
        }
        c.env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", self.world.path().join("no-aws-config"))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                self.world.path().join("no-aws-credentials"),
            );
        c
    }

    /// Run `clusterform args...` and insist on exit code `code`.
    pub fn run_ok(&self, args: &[&str], code: i32) -> Run {
        let r: Run = self.command(args).output().expect("run clusterform").into();
        assert_eq!(
            r.code, code,
            "clusterform {args:?} exited {}\n--- stdout\n{}\n--- stderr\n{}",
            r.code, r.stdout, r.stderr
        );
        r
    }

    /// Live instances of a cluster (moto lists terminated ones too: filtered out).
    pub fn instances(&self, cluster: &str) -> Vec<Instance> {
        // moto answers 100 a page.
        let pages = self
            .rt
            .block_on(
                self.ec2
                    .describe_instances()
                    .filters(f("tag:clusterform:cluster", cluster))
                    .filters(
                        Filter::builder()
                            .name("instance-state-name")
                            .values("pending")
                            .values("running")
                            .values("stopping")
                            .values("stopped")
                            .build(),
                    )
                    .into_paginator()
                    .send()
                    .try_collect(),
            )
            .expect("DescribeInstances");
        pages
            .iter()
            .flat_map(|p| p.reservations().iter())
            .flat_map(|r| r.instances().iter().cloned())
            .collect()
    }

    /// Live instances of a cluster by their `clusterform:address` tag.
    pub fn instances_by_address(&self, cluster: &str) -> BTreeMap<String, Instance> {
        self.instances(cluster)
            .into_iter()
            .map(|i| (tag(&i, "clusterform:address").unwrap_or_default(), i))
            .collect()
    }

    /// The user data moto holds for an instance, decoded.
    pub fn user_data(&self, id: &str) -> String {
        use base64::Engine;
        let out = self
            .rt
            .block_on(
                self.ec2
                    .describe_instance_attribute()
                    .instance_id(id)
                    .attribute(InstanceAttributeName::UserData)
                    .send(),
            )
            .expect("DescribeInstanceAttribute");
        let b64 = out
            .user_data()
            .and_then(|u| u.value())
            .expect("user data")
            .to_string();
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .expect("base64"),
        )
        .expect("utf-8")
    }

    /// Termination protection of an instance.
    pub fn protected(&self, id: &str) -> bool {
        let out = self
            .rt
            .block_on(
                self.ec2
                    .describe_instance_attribute()
                    .instance_id(id)
                    .attribute(InstanceAttributeName::DisableApiTermination)
                    .send(),
            )
            .expect("DescribeInstanceAttribute");
        out.disable_api_termination()
            .and_then(|v| v.value())
            .unwrap_or(false)
    }

    /// Turn termination protection of an instance on or off, as someone outside
    /// clusterform would.
    pub fn set_protected(&self, id: &str, on: bool) {
        self.rt
            .block_on(
                self.ec2
                    .modify_instance_attribute()
                    .instance_id(id)
                    .disable_api_termination(
                        aws_sdk_ec2::types::AttributeBooleanValue::builder()
                            .value(on)
                            .build(),
                    )
                    .send(),
            )
            .expect("ModifyInstanceAttribute");
    }

    /// How many VPCs, subnets, security groups, internet gateways, route tables and live
    /// instances of the cluster moto holds (by the cluster tag, and by VPC for the
    /// security groups and route tables EC2 makes itself).
    pub fn leftovers(&self, cluster: &str, vpcs: &[String]) -> BTreeMap<&'static str, usize> {
        let by_tag = || f("tag:clusterform:cluster", cluster);
        let rt = &self.rt;
        let mut out = BTreeMap::new();
        let vpcs_now = rt
            .block_on(self.ec2.describe_vpcs().filters(by_tag()).send())
            .expect("DescribeVpcs");
        let mut n = vpcs_now.vpcs().len();
        for v in vpcs {
            n += rt
                .block_on(self.ec2.describe_vpcs().filters(f("vpc-id", v)).send())
                .expect("DescribeVpcs")
                .vpcs()
                .len();
        }
        out.insert("vpc", n);
        out.insert(
            "subnet",
            rt.block_on(self.ec2.describe_subnets().filters(by_tag()).send())
                .expect("DescribeSubnets")
                .subnets()
                .len(),
        );
        let mut sgs = rt
            .block_on(self.ec2.describe_security_groups().filters(by_tag()).send())
            .expect("DescribeSecurityGroups")
            .security_groups()
            .len();
        for v in vpcs {
            sgs += rt
                .block_on(
                    self.ec2
                        .describe_security_groups()
                        .filters(f("vpc-id", v))
                        .send(),
                )
                .expect("DescribeSecurityGroups")
                .security_groups()
                .len();
        }
        out.insert("security group", sgs);
        out.insert(
            "internet gateway",
            rt.block_on(
                self.ec2
                    .describe_internet_gateways()
                    .filters(by_tag())
                    .send(),
            )
            .expect("DescribeInternetGateways")
            .internet_gateways()
            .len(),
        );
        out.insert(
            "route table",
            rt.block_on(self.ec2.describe_route_tables().filters(by_tag()).send())
                .expect("DescribeRouteTables")
                .route_tables()
                .len(),
        );
        out.insert("instance", self.instances(cluster).len());
        out
    }

    /// The VPC ids of a cluster.
    pub fn vpcs(&self, cluster: &str) -> Vec<String> {
        self.rt
            .block_on(
                self.ec2
                    .describe_vpcs()
                    .filters(f("tag:clusterform:cluster", cluster))
                    .send(),
            )
            .expect("DescribeVpcs")
            .vpcs()
            .iter()
            .filter_map(|v| v.vpc_id().map(str::to_string))
            .collect()
    }
}

/// A one-value filter.
pub fn f(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

/// The value of an instance's tag.
pub fn tag(i: &Instance, key: &str) -> Option<String> {
    i.tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
        .map(str::to_string)
}

/// Nothing left: every count zero.
pub fn assert_nothing_left(left: &BTreeMap<&'static str, usize>) {
    assert!(
        left.values().all(|n| *n == 0),
        "moto still holds objects of the cluster: {left:?}"
    );
}

/// An instance's id.
pub fn id(i: &Instance) -> String {
    i.instance_id().unwrap_or_default().to_string()
}

/// A dev-test cluster file on ec2.
pub fn dev_test(name: &str, provider: &str, workers: u32, size: &str) -> String {
    format!(
        r#"[cluster]
name = "{name}"
blueprint = "dev-test"
provider = "ec2"
channel = "stable"
ssh_authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleKeyOnlyForTheTests test@ci"]
expires_after = "8h"

{provider}
[network]
cidr = "10.0.0.0/16"

[central]
count = 1
size = "{size}"
zones = ["eu-west-1a"]
first_address = "10.0.0.101"

[workers]
count = {workers}
size = "{size}"
zones = ["eu-west-1a", "eu-west-1b"]
"#
    )
}

/// A central-services cluster file on ec2: 3 central machines in 3 zones, protected.
pub fn central_services(name: &str, provider: &str, workers: u32, protect: bool) -> String {
    format!(
        r#"[cluster]
name = "{name}"
blueprint = "central-services"
provider = "ec2"
channel = "beta"
ssh_authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleKeyOnlyForTheTests test@ci"]

{provider}
[network]
cidr = "10.0.0.0/16"

[central]
count = 3
size = "m6i.large"
zones = ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
first_address = "10.0.1.101"
protect = {protect}

[workers]
count = {workers}
size = "t3.medium"
zones = ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
"#
    )
}

/// The text with every run of spaces made one (plans align their `=` signs).
pub fn squeeze(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut last_space = false;
    for c in text.chars() {
        if c == ' ' {
            if !last_space {
                out.push(c);
            }
            last_space = true;
        } else {
            out.push(c);
            last_space = false;
        }
    }
    out
}
