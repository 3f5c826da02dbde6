//! Hostile input that parses: one table of cluster files and Butane snippets that are
//! well-formed but would be refused by the machine or the provider, each run through
//! `clusterform validate`. Every refusal must exit 1 with its message and a located
//! error (`x.bu:line:column` or `cluster.toml:line:column`).
//!
//! The Butane cases are also checked against the real `ignition-validate` (Debian's
//! `ignition` package): clusterform refuses exactly the configs Ignition refuses, the
//! Butane file's own translation (as Butane would check it) or the machine's merged
//! config (as Ignition at first boot would), except the cases marked `Stricter`, where
//! clusterform refuses on purpose what that Ignition accepts. Without
//! `/usr/bin/ignition-validate` the comparison fails under `CI=true` and is skipped
//! with a note otherwise.

use std::path::{Path, PathBuf};

use clusterform_tests::{Run, World};

/// How a case relates to `ignition-validate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// Both refuse.
    Refused,
    /// Both accept (a control case: `validate` exits 0).
    Accepted,
    /// clusterform refuses, `ignition-validate` (Debian's 2.14) accepts; the reason is
    /// in the case's comment and in docs/CONFIG.md.
    Stricter,
}

/// What a case writes.
enum Input {
    /// `x.bu`, referenced from `[central] butane` of a dev-test cluster.
    Bu(&'static str),
    /// A generated `x.bu`.
    BuGen(fn() -> String),
    /// The cluster file.
    Toml(&'static str),
    /// A generated cluster file.
    TomlGen(fn() -> String),
}

struct Case {
    name: &'static str,
    input: Input,
    verdict: Verdict,
    /// A piece of the message (whitespace is ignored when comparing).
    message: &'static str,
}

const fn bu(name: &'static str, text: &'static str, message: &'static str) -> Case {
    Case {
        name,
        input: Input::Bu(text),
        verdict: Verdict::Refused,
        message,
    }
}

const fn toml(name: &'static str, text: &'static str, message: &'static str) -> Case {
    Case {
        name,
        input: Input::Toml(text),
        verdict: Verdict::Refused,
        message,
    }
}

const BUTANE_CLUSTER: &str = "[cluster]\nname = \"demo\"\nblueprint = \"dev-test\"\nprovider = \"sim\"\n\n[central]\nsize = \"2cpu-4gb\"\nbutane = [\"x.bu\"]\n";

/// The same cluster without the Butane file: its rendered config is the base the
/// Butane file is merged over.
const PLAIN_CLUSTER: &str = "[cluster]\nname = \"demo\"\nblueprint = \"dev-test\"\nprovider = \"sim\"\n\n[central]\nsize = \"2cpu-4gb\"\n";

const H: &str = "variant: flatcar\nversion: 1.0.0\n";

fn long_unit_line() -> String {
    format!(
        "{H}systemd:\n  units:\n    - name: long.service\n      contents: |\n        [Service]\n        ExecStart=/bin/echo {}\n",
        "x".repeat(3000)
    )
}

/// A name 64 characters long, one more than a host name may have.
fn overlong_resource_name() -> String {
    format!(
        "[cluster]\nname = \"demo\"\nprovider = \"sim\"\n\n[resource.network.lan]\ncidr = \"10.0.0.0/24\"\n\n[resource.machine.{}]\nsize = \"s\"\nnetwork = \"network.lan\"\n",
        "m".repeat(64)
    )
}

fn overlong_name_attr() -> String {
    format!(
        "[cluster]\nname = \"demo\"\nprovider = \"sim\"\n\n[resource.network.lan]\ncidr = \"10.0.0.0/24\"\n\n[resource.machine.web]\nname = \"{}\"\nsize = \"s\"\nnetwork = \"network.lan\"\n",
        "w".repeat(70)
    )
}

/// `<cluster>-<NAME>-<i>`: 40 + 1 + 30 + 2 characters.
fn overlong_generated_name() -> String {
    format!(
        "[cluster]\nname = \"{}\"\nprovider = \"sim\"\n\n[resource.network.lan]\ncidr = \"10.0.0.0/24\"\n\n[resource.machine.{}]\ncount = 2\nsize = \"s\"\nnetwork = \"network.lan\"\n",
        "c".repeat(40),
        "w".repeat(30)
    )
}

const NET: &str = "[cluster]\nname = \"demo\"\nprovider = \"sim\"\n\n[resource.network.lan]\ncidr = \"10.0.0.0/24\"\ngateway = \"10.0.0.1\"\n\n";

fn cases() -> Vec<Case> {
    use Verdict::*;
    vec![
        // ---- A. Ignition's rules, Butane files ----
        bu(
            "a_path_dotdot",
            "variant: flatcar\nversion: 1.0.0\nstorage:\n  files:\n    - path: /etc/../x\n      contents:\n        inline: hi\n",
            "path is not fully simplified",
        ),
        bu(
            "a_path_double_slash",
            "variant: flatcar\nversion: 1.0.0\nstorage:\n  files:\n    - path: /etc//x\n",
            "path is not fully simplified",
        ),
        bu(
            "a_path_trailing_slash",
            "variant: flatcar\nversion: 1.0.0\nstorage:\n  directories:\n    - path: /etc/x/\n",
            "path is not fully simplified",
        ),
        bu(
            "a_path_dot",
            "variant: flatcar\nversion: 1.0.0\nstorage:\n  links:\n    - path: /etc/./x\n      target: /usr/bin/true\n",
            "path is not fully simplified",
        ),
        bu(
            "a_path_relative",
            "variant: flatcar\nversion: 1.0.0\nstorage:\n  files:\n    - path: etc/x\n",
            "path not absolute",
        ),
        bu(
            "a_path_empty",
            "variant: flatcar\nversion: 1.0.0\nstorage:\n  directories:\n    - path: \"\"\n",
            "path not specified",
        ),
        bu(
            "a_unit_no_suffix",
            "variant: flatcar\nversion: 1.0.0\nsystemd:\n  units:\n    - name: hello\n      contents: \"[Service]\\nExecStart=/bin/true\\n\"\n",
            "invalid systemd unit extension",
        ),
        bu(
            "a_unit_wrong_suffix",
            "variant: flatcar\nversion: 1.0.0\nsystemd:\n  units:\n    - name: hello.conf\n      enabled: true\n",
            "invalid systemd unit extension",
        ),
        // Ignition looks only at the suffix; a unit in a subfolder of
        // /etc/systemd/system is never loaded by systemd.
        Case {
            name: "a_unit_name_with_slash",
            input: Input::Bu(
                "variant: flatcar\nversion: 1.0.0\nsystemd:\n  units:\n    - name: sub/hello.service\n      contents: \"[Service]\\nExecStart=/bin/true\\n\"\n",
            ),
            verdict: Stricter,
            message: "contains `/`",
        },
        bu(
            "a_dropin_wrong_suffix",
            "variant: flatcar\nversion: 1.0.0\nsystemd:\n  units:\n    - name: docker.service\n      dropins:\n        - name: 10-x.txt\n          contents: \"[Service]\\nEnvironment=A=1\\n\"\n",
            "invalid systemd drop-in extension",
        ),
        // As above: systemd reads drop-ins only directly in `<unit>.d/`.
        Case {
            name: "a_dropin_name_with_slash",
            input: Input::Bu(
                "variant: flatcar\nversion: 1.0.0\nsystemd:\n  units:\n    - name: docker.service\n      dropins:\n        - name: sub/10-x.conf\n          contents: \"[Service]\\nEnvironment=A=1\\n\"\n",
            ),
            verdict: Stricter,
            message: "contains `/`",
        },
        bu(
            "a_link_empty_target",
            "variant: flatcar\nversion: 1.0.0\nstorage:\n  links:\n    - path: /opt/bin/tool\n      target: \"\"\n",
            "link target is required",
        ),
        bu(
            "a_duplicate_units",
            "variant: flatcar\nversion: 1.0.0\nsystemd:\n  units:\n    - name: hello.service\n      enabled: true\n    - name: hello.service\n      mask: true\n",
            "duplicate entry defined",
        ),
        bu(
            "a_duplicate_files",
            "variant: flatcar\nversion: 1.0.0\nstorage:\n  files:\n    - path: /etc/a.conf\n      contents:\n        inline: one\n    - path: /etc/a.conf\n      contents:\n        inline: two\n",
            "duplicate entry defined",
        ),
        bu(
            "a_duplicate_links",
            "variant: flatcar\nversion: 1.0.0\nstorage:\n  links:\n    - path: /opt/bin/a\n      target: /usr/bin/true\n    - path: /opt/bin/a\n      target: /usr/bin/false\n",
            "duplicate entry defined",
        ),
        bu(
            "a_duplicate_directories",
            "variant: flatcar\nversion: 1.0.0\nstorage:\n  directories:\n    - path: /opt/data\n    - path: /opt/data\n      mode: 0700\n",
            "duplicate entry defined",
        ),
        bu(
            "a_file_and_directory_one_path",
            "variant: flatcar\nversion: 1.0.0\nstorage:\n  directories:\n    - path: /opt/data\n  files:\n    - path: /opt/data\n",
            "duplicate entry defined",
        ),
        bu(
            "a_duplicate_dropins",
            "variant: flatcar\nversion: 1.0.0\nsystemd:\n  units:\n    - name: docker.service\n      dropins:\n        - name: 10-a.conf\n          contents: \"[Service]\\nEnvironment=A=1\\n\"\n        - name: 10-a.conf\n          contents: \"[Service]\\nEnvironment=A=2\\n\"\n",
            "duplicate entry defined",
        ),
        bu(
            "a_duplicate_users",
            "variant: flatcar\nversion: 1.0.0\npasswd:\n  users:\n    - name: ops\n    - name: ops\n      groups: [docker]\n",
            "duplicate entry defined",
        ),
        bu(
            "a_duplicate_ssh_keys",
            "variant: flatcar\nversion: 1.0.0\npasswd:\n  users:\n    - name: ops\n      ssh_authorized_keys:\n        - ssh-ed25519 AAAA ops\n        - ssh-ed25519 AAAA ops\n",
            "duplicate entry defined",
        ),
        bu(
            "a_duplicate_groups",
            "variant: flatcar\nversion: 1.0.0\npasswd:\n  users:\n    - name: ops\n      groups: [docker, docker]\n",
            "duplicate entry defined",
        ),
        bu(
            "a_file_under_link",
            "variant: flatcar\nversion: 1.0.0\nstorage:\n  links:\n    - path: /opt/current\n      target: /opt/v1\n  files:\n    - path: /opt/current/config\n",
            "file path includes link in config",
        ),
        bu(
            "a_directory_under_link",
            "variant: flatcar\nversion: 1.0.0\nstorage:\n  links:\n    - path: /opt/current\n      target: /opt/v1\n  directories:\n    - path: /opt/current/data\n",
            "directory path includes link in config",
        ),
        bu(
            "a_link_under_link",
            "variant: flatcar\nversion: 1.0.0\nstorage:\n  links:\n    - path: /opt/current\n      target: /opt/v1\n    - path: /opt/current/bin\n      target: /usr/bin\n",
            "link path includes link in config",
        ),
        bu(
            "a_hard_link_to_directory",
            "variant: flatcar\nversion: 1.0.0\nstorage:\n  directories:\n    - path: /opt/data\n  links:\n    - path: /opt/data-link\n      target: /opt/data\n      hard: true\n",
            "hard link target is a directory",
        ),
        bu(
            "a_overwrite_without_contents",
            "variant: flatcar\nversion: 1.0.0\nstorage:\n  files:\n    - path: /etc/motd\n      overwrite: true\n",
            "overwrite must be false if source is unspecified",
        ),
        bu(
            "a_unit_line_without_equals",
            "variant: flatcar\nversion: 1.0.0\nsystemd:\n  units:\n    - name: hello.service\n      contents: |\n        [Unit]\n        Description\n        [Service]\n        ExecStart=/bin/true\n",
            "invalid unit content",
        ),
        bu(
            "a_unit_garbage_after_section",
            "variant: flatcar\nversion: 1.0.0\nsystemd:\n  units:\n    - name: hello.service\n      contents: |\n        [Service] now\n        ExecStart=/bin/true\n",
            "invalid unit content",
        ),
        bu(
            "a_unit_unclosed_section",
            "variant: flatcar\nversion: 1.0.0\nsystemd:\n  units:\n    - name: hello.service\n      contents: |\n        [Service\n        ExecStart=/bin/true\n",
            "invalid unit content",
        ),
        Case {
            name: "a_unit_line_too_long",
            input: Input::BuGen(long_unit_line),
            verdict: Refused,
            message: "line too long",
        },
        bu(
            "a_dropin_bad_contents",
            "variant: flatcar\nversion: 1.0.0\nsystemd:\n  units:\n    - name: docker.service\n      dropins:\n        - name: 10-x.conf\n          contents: \"[Service]\\nEnvironment\\n\"\n",
            "invalid unit content",
        ),
        // Ignition 2.15 and later refuse a file written where a unit of the config is
        // (`ErrPathConflictsSystemd`); Debian's 2.14 does not check it yet.
        Case {
            name: "a_file_where_a_unit_is",
            input: Input::Bu(
                "variant: flatcar\nversion: 1.0.0\nsystemd:\n  units:\n    - name: hello.service\n      contents: \"[Service]\\nExecStart=/bin/true\\n\"\nstorage:\n  files:\n    - path: /etc/systemd/system/hello.service\n      contents:\n        inline: x\n",
            ),
            verdict: Stricter,
            message: "conflicts with a systemd unit",
        },
        // Only wrong once merged over the role template (which writes /etc/hostname
        // and /etc/systemd/network/00-eth0.network).
        bu(
            "a_directory_over_template_file",
            "variant: flatcar\nversion: 1.0.0\nstorage:\n  directories:\n    - path: /etc/hostname\n",
            "duplicate entry defined",
        ),
        bu(
            "a_link_over_template_folder",
            "variant: flatcar\nversion: 1.0.0\nstorage:\n  links:\n    - path: /etc/systemd/network\n      target: /opt/network\n",
            "path includes link in config",
        ),
        // Controls: both accept.
        Case {
            name: "a_ok_everything_supported",
            input: Input::Bu(
                "variant: flatcar\nversion: 1.0.0\nsystemd:\n  units:\n    - name: hello.service\n      enabled: true\n      contents: |\n        # a comment\n        [Unit]\n        Description=Hello \\\n          world\n        [Service]\n        ExecStart=/bin/echo hi\n        [Install]\n        WantedBy=multi-user.target\n    - name: docker.service\n      dropins:\n        - name: 10-env.conf\n          contents: \"[Service]\\nEnvironment=A=1\\n\"\nstorage:\n  directories:\n    - path: /opt/data\n      mode: 0750\n  files:\n    - path: /etc/motd\n      overwrite: true\n      contents:\n        inline: hello\n  links:\n    - path: /opt/bin/t\n      target: ../../usr/bin/true\npasswd:\n  users:\n    - name: ops\n      groups: [docker]\n      ssh_authorized_keys: [ssh-ed25519 AAAA ops]\n",
            ),
            verdict: Accepted,
            message: "",
        },
        Case {
            name: "a_ok_text_before_first_section",
            input: Input::Bu(
                "variant: flatcar\nversion: 1.0.0\nsystemd:\n  units:\n    - name: hello.service\n      contents: \"no section yet\\n[Service]\\nExecStart=/bin/true\\n\"\n",
            ),
            verdict: Accepted,
            message: "",
        },
        Case {
            name: "a_ok_unit_without_contents",
            input: Input::Bu(
                "variant: flatcar\nversion: 1.0.0\nsystemd:\n  units:\n    - name: locksmithd.service\n      mask: true\n",
            ),
            verdict: Accepted,
            message: "",
        },
        // ---- B. static checks of the cluster file ----
        toml(
            "b_two_machines_one_address",
            "[cluster]\nname = \"demo\"\nprovider = \"sim\"\n\n[resource.network.lan]\ncidr = \"10.0.0.0/24\"\n\n[resource.machine.a]\nsize = \"s\"\nnetwork = \"network.lan\"\naddress = \"10.0.0.20\"\n\n[resource.machine.b]\nsize = \"s\"\nnetwork = \"network.lan\"\naddress = \"10.0.0.20\"\n",
            "has the address `10.0.0.20`, like `machine.a`",
        ),
        toml(
            "b_counted_machine_one_address",
            "[cluster]\nname = \"demo\"\nprovider = \"sim\"\n\n[resource.network.lan]\ncidr = \"10.0.0.0/24\"\n\n[resource.machine.a]\ncount = 2\nsize = \"s\"\nnetwork = \"network.lan\"\naddress = \"10.0.0.20\"\n",
            "every instance of a counted resource gets the same `address`",
        ),
        toml(
            "b_plain_machine_takes_blueprint_address",
            "[cluster]\nname = \"demo\"\nblueprint = \"dev-test\"\nprovider = \"sim\"\n\n[central]\nsize = \"s\"\n\n[resource.machine.extra]\nsize = \"s\"\nnetwork = \"network.main\"\naddress = \"10.0.0.101\"\n",
            "has the address `10.0.0.101`, like `machine.central[0]`",
        ),
        Case {
            name: "b_address_is_gateway",
            input: Input::TomlGen(|| {
                format!(
                    "{NET}[resource.machine.a]\nsize = \"s\"\nnetwork = \"network.lan\"\naddress = \"10.0.0.1\"\n"
                )
            }),
            verdict: Refused,
            message: "is the gateway of `network.lan`",
        },
        Case {
            name: "b_address_is_network_address",
            input: Input::TomlGen(|| {
                format!(
                    "{NET}[resource.machine.a]\nsize = \"s\"\nnetwork = \"network.lan\"\naddress = \"10.0.0.0\"\n"
                )
            }),
            verdict: Refused,
            message: "is the network address of `network.lan`",
        },
        Case {
            name: "b_address_is_broadcast",
            input: Input::TomlGen(|| {
                format!(
                    "{NET}[resource.machine.a]\nsize = \"s\"\nnetwork = \"network.lan\"\naddress = \"10.0.0.255\"\n"
                )
            }),
            verdict: Refused,
            message: "is the broadcast address of `network.lan`",
        },
        Case {
            name: "b_address_outside_cidr",
            input: Input::TomlGen(|| {
                format!(
                    "{NET}[resource.machine.a]\nsize = \"s\"\nnetwork = \"network.lan\"\naddress = \"10.0.1.5\"\n"
                )
            }),
            verdict: Refused,
            message: "is outside `network.lan`",
        },
        toml(
            "b_default_gateway_taken",
            "[cluster]\nname = \"demo\"\nprovider = \"sim\"\n\n[resource.network.lan]\ncidr = \"10.0.0.0/24\"\n\n[resource.machine.a]\nsize = \"s\"\nnetwork = \"network.lan\"\naddress = \"10.0.0.1\"\n",
            "is the gateway of `network.lan`",
        ),
        toml(
            "b_blueprint_first_address_is_network_address",
            "[cluster]\nname = \"demo\"\nblueprint = \"dev-test\"\nprovider = \"sim\"\n\n[network]\ncidr = \"10.0.0.0/24\"\n\n[central]\nsize = \"s\"\nfirst_address = \"10.0.0.0\"\n",
            "is the network address of `network.main`",
        ),
        toml(
            "b_blueprint_vm_address_is_gateway",
            "[cluster]\nname = \"demo\"\nblueprint = \"dev-vm\"\nprovider = \"sim\"\n\n[network]\ncidr = \"10.0.0.0/24\"\ngateway = \"10.0.0.254\"\n\n[vm]\nsize = \"s\"\naddress = \"10.0.0.254\"\n",
            "is the gateway of `network.main`",
        ),
        toml(
            "b_blueprint_address_outside_cidr",
            "[cluster]\nname = \"demo\"\nblueprint = \"dev-vm\"\nprovider = \"sim\"\n\n[network]\ncidr = \"10.0.0.0/24\"\n\n[vm]\nsize = \"s\"\naddress = \"10.9.0.5\"\n",
            "is outside the network",
        ),
        toml(
            "b_network_reference_to_a_machine",
            "[cluster]\nname = \"demo\"\nprovider = \"sim\"\n\n[resource.network.lan]\ncidr = \"10.0.0.0/24\"\n\n[resource.machine.a]\nsize = \"s\"\nnetwork = \"network.lan\"\n\n[resource.machine.b]\nsize = \"s\"\nnetwork = \"machine.a\"\n",
            "it must name a `network`",
        ),
        toml(
            "b_volume_machine_reference_to_a_network",
            "[cluster]\nname = \"demo\"\nprovider = \"sim\"\n\n[resource.network.lan]\ncidr = \"10.0.0.0/24\"\n\n[resource.volume.data]\nsize_gb = 10\nmachine = \"network.lan\"\n",
            "it must name a `machine`",
        ),
        toml(
            "b_empty_size_plain",
            "[cluster]\nname = \"demo\"\nprovider = \"sim\"\n\n[resource.network.lan]\ncidr = \"10.0.0.0/24\"\n\n[resource.machine.a]\nsize = \"\"\nnetwork = \"network.lan\"\n",
            "`size` in `[resource.machine.a]` is empty",
        ),
        toml(
            "b_empty_size_blueprint",
            "[cluster]\nname = \"demo\"\nblueprint = \"dev-test\"\nprovider = \"sim\"\n\n[central]\nsize = \"  \"\n",
            "`size` in `[central]` is empty",
        ),
        toml(
            "b_empty_zones_list",
            "[cluster]\nname = \"demo\"\nblueprint = \"dev-test\"\nprovider = \"sim\"\n\n[central]\nsize = \"s\"\nzones = []\n",
            "`zones` is empty",
        ),
        toml(
            "b_empty_zone_entry",
            "[cluster]\nname = \"demo\"\nblueprint = \"dev-test\"\nprovider = \"sim\"\n\n[central]\nsize = \"s\"\nzones = [\"a\", \"\"]\n",
            "an entry of `zones` in `[central]` is empty",
        ),
        toml(
            "b_empty_vm_zone",
            "[cluster]\nname = \"demo\"\nblueprint = \"dev-vm\"\nprovider = \"sim\"\n\n[vm]\nsize = \"s\"\nzone = \"\"\n",
            "`zone` in `[vm]` is empty",
        ),
        toml(
            "b_negative_disk_size",
            "[cluster]\nname = \"demo\"\nprovider = \"sim\"\n\n[resource.volume.data]\nsize_gb = -5\n",
            "`size_gb` in `[resource.volume.data]` is negative",
        ),
        toml(
            "b_zero_disk_size",
            "[cluster]\nname = \"demo\"\nprovider = \"sim\"\n\n[resource.volume.data]\nsize_gb = 0\n",
            "`size_gb` in `[resource.volume.data]` is 0",
        ),
        Case {
            name: "b_overlong_resource_name",
            input: Input::TomlGen(overlong_resource_name),
            verdict: Refused,
            message: "is 64 characters long",
        },
        Case {
            name: "b_overlong_name_attribute",
            input: Input::TomlGen(overlong_name_attr),
            verdict: Refused,
            message: "`name` in `[resource.machine.web]` is 70 characters long",
        },
        Case {
            name: "b_overlong_generated_name",
            input: Input::TomlGen(overlong_generated_name),
            verdict: Refused,
            message: "is 73 characters long",
        },
        toml(
            "b_duplicate_names",
            "[cluster]\nname = \"demo\"\nprovider = \"sim\"\n\n[resource.network.lan]\ncidr = \"10.0.0.0/24\"\n\n[resource.machine.a]\nname = \"web\"\nsize = \"s\"\nnetwork = \"network.lan\"\n\n[resource.machine.b]\nname = \"web\"\nsize = \"s\"\nnetwork = \"network.lan\"\n",
            "has the name `web`, like `machine.a`",
        ),
        toml(
            "b_name_of_a_blueprint_machine",
            "[cluster]\nname = \"demo\"\nblueprint = \"dev-test\"\nprovider = \"sim\"\n\n[central]\nsize = \"s\"\n\n[resource.machine.extra]\nname = \"demo-central-0\"\nsize = \"s\"\nnetwork = \"network.main\"\n",
            "has the name `demo-central-0`, like `machine.central[0]`",
        ),
        toml(
            "b_cidr_host_bits_blueprint",
            "[cluster]\nname = \"demo\"\nblueprint = \"dev-test\"\nprovider = \"sim\"\n\n[network]\ncidr = \"10.0.0.1/16\"\n\n[central]\nsize = \"s\"\n",
            "`10.0.0.1/16` has host bits set",
        ),
        toml(
            "b_cidr_host_bits_plain",
            "[cluster]\nname = \"demo\"\nprovider = \"sim\"\n\n[resource.network.lan]\ncidr = \"10.0.3.7/24\"\n",
            "`10.0.3.7/24` has host bits set",
        ),
        toml(
            "b_cidr_not_a_network_plain",
            "[cluster]\nname = \"demo\"\nprovider = \"sim\"\n\n[resource.network.lan]\ncidr = \"ten/8\"\n",
            "`ten/8` is not an IPv4 network",
        ),
        toml(
            "b_expires_after_zero",
            "[cluster]\nname = \"demo\"\nprovider = \"sim\"\nexpires_after = \"0s\"\n",
            "is zero",
        ),
    ]
}

/// Text with whitespace and miette's frame characters removed: long lines may be
/// wrapped.
fn squash(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_whitespace() && !matches!(c, '│' | '·' | '╭' | '╰' | '─'))
        .collect()
}

/// `NAME:line:column` somewhere in `s`.
fn has_location(s: &str, name: &str) -> bool {
    s.match_indices(name).any(|(i, _)| {
        let rest = &s[i + name.len()..];
        let mut parts = rest.splitn(3, ':');
        parts.next() == Some("")
            && parts
                .next()
                .is_some_and(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_digit()))
            && parts
                .next()
                .is_some_and(|c| c.starts_with(|ch: char| ch.is_ascii_digit()))
    })
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn ignition_validate() -> Option<PathBuf> {
    let p = PathBuf::from("/usr/bin/ignition-validate");
    p.exists().then_some(p)
}

/// `ignition-validate FILE` accepts the JSON in `text`.
fn ignition_accepts(bin: &Path, dir: &Path, file: &str, text: &str) -> (bool, String) {
    let p = dir.join(file);
    std::fs::write(&p, text).expect("write config");
    let out = std::process::Command::new(bin)
        .arg(&p)
        .output()
        .expect("run ignition-validate");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The rendered config of `machine.central[0]` of [`PLAIN_CLUSTER`].
fn base_config() -> clusterform_ignition::Config {
    let w = World::new();
    w.write("cluster.toml", PLAIN_CLUSTER);
    w.run_ok(&["render", "cluster.toml", "--out", "out"], 0);
    let mut files: Vec<PathBuf> = std::fs::read_dir(w.path().join("out"))
        .expect("out")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    let first = files.first().expect("one rendered config");
    serde_json::from_str(&std::fs::read_to_string(first).expect("read")).expect("config")
}

/// What `ignition-validate` says of a Butane case: Butane checks the file's own
/// translation, Ignition at first boot the machine's merged config; both must pass.
fn ignition_verdict(bin: &Path, w: &World, base: &clusterform_ignition::Config) -> (bool, String) {
    let bu = w.path().join("x.bu");
    let text = std::fs::read_to_string(&bu).expect("read x.bu");
    let own = clusterform_ignition::translate_butane(&bu, &text, w.path())
        .expect("the case translates (only Ignition's rules are broken)");
    let merged = clusterform_ignition::merge(base.clone(), own.clone());
    let (a, out_a) = ignition_accepts(
        bin,
        w.path(),
        "own.ign",
        &clusterform_ignition::to_json(&own),
    );
    let (b, out_b) = ignition_accepts(
        bin,
        w.path(),
        "merged.ign",
        &clusterform_ignition::to_json(&merged),
    );
    (a && b, format!("own: {out_a}\nmerged: {out_b}"))
}

fn check(c: &Case, r: &Run) -> Result<(), String> {
    let fail = |why: &str| {
        Err(format!(
            "{}: {why}\n  exited {}\n--- stderr\n{}",
            c.name,
            r.code,
            r.stderr.chars().take(3000).collect::<String>()
        ))
    };
    if r.stderr.contains("panicked at") {
        return fail("panicked");
    }
    if c.verdict == Verdict::Accepted {
        return if r.code == 0 {
            Ok(())
        } else {
            fail("expected exit code 0 (a control case)")
        };
    }
    if r.code != 1 {
        return fail("expected exit code 1");
    }
    if !squash(&r.stderr).contains(&squash(c.message)) {
        return fail(&format!("the message does not say {:?}", c.message));
    }
    let file = match c.input {
        Input::Bu(_) | Input::BuGen(_) => "x.bu",
        Input::Toml(_) | Input::TomlGen(_) => "cluster.toml",
    };
    if !has_location(&r.stderr, file) {
        return fail(&format!("no {file}:line:column"));
    }
    Ok(())
}

#[test]
fn hostile_inputs_are_refused_like_ignition_refuses_them() {
    let validate_bin = ignition_validate();
    if validate_bin.is_none() {
        assert!(
            !in_ci(),
            "ignition-validate is missing: scripts/test installs the Debian package `ignition`"
        );
        eprintln!(
            "note: /usr/bin/ignition-validate is missing (Debian package `ignition`): the verdicts are not compared with Ignition's"
        );
    }
    let base = base_config();
    let mut failures = Vec::new();
    let (mut a, mut b, mut compared) = (0, 0, 0);
    for c in cases() {
        let w = World::new();
        let is_butane = match &c.input {
            Input::Bu(t) => {
                w.write("cluster.toml", BUTANE_CLUSTER);
                w.write("x.bu", t);
                true
            }
            Input::BuGen(f) => {
                w.write("cluster.toml", BUTANE_CLUSTER);
                w.write("x.bu", &f());
                true
            }
            Input::Toml(t) => {
                w.write("cluster.toml", t);
                false
            }
            Input::TomlGen(f) => {
                w.write("cluster.toml", &f());
                false
            }
        };
        let r = w.run(&["validate", "cluster.toml"]);
        if let Err(e) = check(&c, &r) {
            failures.push(e);
        }
        if !is_butane {
            b += 1;
            continue;
        }
        a += 1;
        let Some(bin) = &validate_bin else {
            continue;
        };
        let (accepts, out) = ignition_verdict(bin, &w, &base);
        let expected = c.verdict != Verdict::Refused;
        if accepts != expected {
            failures.push(format!(
                "{}: ignition-validate {} it, the table says {:?}\n{out}",
                c.name,
                if accepts { "accepts" } else { "refuses" },
                c.verdict
            ));
        }
        compared += 1;
    }
    println!(
        "hostile inputs: {a} Butane (compared with ignition-validate: {compared}), {b} cluster files"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(a >= 30 && b >= 25, "only {a} Butane and {b} cluster cases");
}
