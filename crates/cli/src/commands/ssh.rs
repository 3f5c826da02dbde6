//! `clusterform ssh`, `ssh-config` and `console`: getting into the machines as `core`
//! with the system's `ssh`, through `[central] etcd_via` (the cluster's jump host) when
//! it is set, and reading a machine's console output from its provider.

use std::path::Path;
use std::process::Command;

use clusterform_core::{Address, ResourceState};
use clusterform_etcd::SshVia;
use miette::Result;

use crate::{context, errors};

/// The user Flatcar's Ignition configs give the SSH keys to.
const USER: &str = "core";

/// The address to reach `r` at: its public address, else its address.
fn reach(r: &ResourceState) -> Option<&str> {
    ["public_address", "address"].iter().find_map(|k| {
        r.attrs
            .get(*k)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
    })
}

/// `-J` for the jump host of `[central] etcd_via`.
fn jump(via: Option<&str>) -> Result<Option<String>> {
    let Some(v) = via else { return Ok(None) };
    let via = SshVia::parse(v).map_err(|e| {
        errors::hint(
            format!("`[central] etcd_via`: {e}"),
            "write it like \"ssh://core@bastion.example.com\"",
        )
    })?;
    let host = if via.host.contains(':') {
        format!("[{}]", via.host)
    } else {
        via.host.clone()
    };
    Ok(Some(match via.port {
        Some(p) => format!("{}@{host}:{p}", via.user),
        None => format!("{}@{host}", via.user),
    }))
}

/// The host alias of a machine in `ssh-config`: its `name`, else `<cluster>-<name>[-<index>]`.
fn alias(cluster: &str, r: &ResourceState) -> String {
    r.attrs
        .get("name")
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| match r.address.index {
            Some(i) => format!("{cluster}-{}-{i}", r.address.name),
            None => format!("{cluster}-{}", r.address.name),
        })
}

/// The machine `target` (address or name) in the state of `args`' cluster file, with
/// the loaded context.
fn machine_of(
    args: &[String],
    what: &str,
    example: &str,
) -> Result<(context::Context, ResourceState)> {
    let (file, rest) = context::split_file_arg(args);
    let [target] = rest else {
        return Err(errors::hint(
            format!("`{what}` takes one machine"),
            example.to_string(),
        ));
    };
    let ctx = context::load(&file)?;
    let snap = ctx.store.load().map_err(errors::state)?;
    let machine = match target.parse::<Address>() {
        Ok(a) => snap.resources.get(&a),
        Err(_) => None,
    }
    .or_else(|| {
        snap.resources
            .values()
            .find(|r| r.address.kind == "machine" && alias(&ctx.model.cluster.name, r) == *target)
    })
    .filter(|r| r.address.kind == "machine")
    .cloned();
    match machine {
        Some(m) => Ok((ctx, m)),
        None => Err(errors::hint(
            format!(
                "`{target}` is no machine in the state of `{}`",
                file.display()
            ),
            format!(
                "name one by address or name: `clusterform output {} machines` lists them",
                file.display()
            ),
        )),
    }
}

/// `clusterform ssh [FILE] ADDR [-- CMD...]`.
pub fn ssh(args: &[String], command: &[String]) -> Result<u8> {
    let (ctx, machine) = machine_of(
        args,
        "ssh",
        "clusterform ssh cluster.toml machine.workers[0] -- uptime",
    )?;
    let machine = &machine;
    let Some(host) = reach(machine) else {
        return Err(errors::hint(
            format!("`{}` has no address in the state yet", machine.address),
            "run `clusterform apply` (or `plan` to refresh it) first",
        ));
    };
    let mut cmd = Command::new("ssh");
    if let Some(j) = jump(ctx.model.etcd.via.as_deref())? {
        cmd.arg("-J").arg(j);
    }
    cmd.arg(format!("{USER}@{host}"));
    cmd.args(command);
    let status = cmd.status().map_err(|e| {
        errors::hint(
            format!("cannot run `ssh`: {e}"),
            "install OpenSSH's client (apt-get install openssh-client)",
        )
    })?;
    Ok(status
        .code()
        .and_then(|c| u8::try_from(c).ok())
        .unwrap_or(1))
}

/// `clusterform ssh-config [FILE]`: a `~/.ssh/config` block for every machine.
pub fn ssh_config(file: &Path) -> Result<u8> {
    let ctx = context::load(file)?;
    let snap = ctx.store.load().map_err(errors::state)?;
    let jump = jump(ctx.model.etcd.via.as_deref())?;
    let mut out = format!(
        "# clusterform: the machines of cluster `{}` ({}); add to ~/.ssh/config or `Include` it\n",
        ctx.model.cluster.name,
        file.display()
    );
    let mut none = true;
    for r in snap
        .resources
        .values()
        .filter(|r| r.address.kind == "machine")
    {
        let Some(host) = reach(r) else { continue };
        none = false;
        out.push_str(&format!(
            "\n# {}\nHost {}\n    HostName {host}\n    User {USER}\n",
            r.address,
            alias(&ctx.model.cluster.name, r)
        ));
        if let Some(j) = &jump {
            out.push_str(&format!("    ProxyJump {j}\n"));
        }
    }
    if none {
        out.push_str("# (no machine with an address in the state yet: run `clusterform apply`)\n");
    }
    out!("{}", crate::output::clean(&out));
    Ok(0)
}

/// `clusterform console [FILE] MACHINE`: what the machine's console printed, from its
/// provider (EC2's GetConsoleOutput, libvirt's console log, the sim's made-up boot log).
pub async fn console(args: &[String]) -> Result<u8> {
    let (ctx, machine) = machine_of(
        args,
        "console",
        "clusterform console cluster.toml machine.workers[0]",
    )?;
    let provider = ctx
        .providers
        .get(&machine.provider)
        .map_err(errors::engine)?;
    let text = provider
        .reader()
        .console("machine", &machine.id, &machine.attrs)
        .await
        .map_err(|e| {
            errors::hint(
                format!("`{}` ({}): {e}", machine.address, machine.id),
                "check the provider's settings and that the machine still exists (`clusterform plan`)",
            )
        })?;
    match text {
        Some(t) => {
            out!("{}", crate::output::clean(&t));
            if !t.ends_with('\n') {
                outln!();
            }
            Ok(0)
        }
        None => Err(errors::hint(
            format!(
                "provider `{}` gives no console output for `{}`",
                machine.provider, machine.address
            ),
            "look at the machine in the provider's own console",
        )),
    }
}
