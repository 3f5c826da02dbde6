//! The metal provider: machines are Metal devices (made, waited on until `active`,
//! updated, locked, deleted and waited on until gone), the cluster network is a VLAN
//! whose metro's machines get their bond0 port assigned to it (or a record only, for a
//! cluster spread over metros), and an `ip_reservation` is a public IPv4 address reserved
//! in a metro (an elastic /32) that a device takes as its public address. Reads list the
//! project's devices by the cluster tag, a page of 100 at a time, and its reservations in
//! one listing, never one request per object.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use async_trait::async_trait;
use clusterform_core::{Attrs, ProviderSchema};
use clusterform_provider::{
    CreateRequest, DeleteRequest, Object, Ownership, Provider, ProviderError, ReadRequest, Reader,
    Result, UpdateRequest, pick, tags,
};
use reqwest::Method;
use serde_json::{Value, json};

use crate::api::{Api, Replay, advise};
use crate::settings::Settings;

/// Attributes Metal does not report, kept in the device's `customdata` under this key
/// (and, failing that, carried over from the state's record).
const INPUTS: &str = "clusterform";
/// The machine attributes kept in `customdata`.
const MACHINE_INPUTS: &[&str] = &[
    "role",
    "channel",
    "network",
    "address",
    "etcd_endpoints",
    "ssh_authorized_keys",
    "ip_reservation",
];
/// The network attributes kept in the VLAN's inputs tag (a VLAN has no `customdata`).
const NETWORK_INPUTS: &[&str] = &["cidr", "gateway", "dns", "vlan"];
/// The tag prefix of the network's inputs (`clusterform:inputs=<json>`).
const INPUTS_TAG: &str = "clusterform:inputs=";
/// The id of the cluster network when `vlan = false`: a record, nothing at Metal.
const NO_VLAN: &str = "no-vlan";
/// The reservation type of an `ip_reservation`.
const PUBLIC_IPV4: &str = "public_ipv4";
/// Reservations a page when listing a project's (the spec's largest `per_page`; the
/// operation documents no `page`, so one page is the rule).
const IPS_PER_PAGE: usize = 1000;

/// The Metal provider.
pub struct Metal {
    api: Api,
    settings: Settings,
    schema: ProviderSchema,
}

/// `key=value` tags: the ownership tags first, then the user's.
fn tag_strings(owner: Option<&Ownership>, user: Option<&Value>) -> Vec<Value> {
    let mut out: Vec<Value> = owner
        .map(|o| o.to_tags())
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| Value::String(format!("{k}={v}")))
        .collect();
    if let Some(Value::Object(m)) = user {
        for (k, v) in m {
            let v = v.as_str().map_or_else(|| v.to_string(), str::to_string);
            out.push(Value::String(format!("{k}={v}")));
        }
    }
    out
}

/// An object's tags split into its ownership and the user's `key=value` tags.
fn split_tags(v: &Value) -> (Option<Ownership>, BTreeMap<String, String>) {
    let all: Vec<(&str, &str)> = v
        .get("tags")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(|t| t.split_once('=').unwrap_or((t, "")))
                .collect()
        })
        .unwrap_or_default();
    let owner = Ownership::from_tags(all.iter().copied());
    let user = all
        .iter()
        .filter(|(k, _)| !k.starts_with("clusterform:"))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    (owner, user)
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str().filter(|s| !s.is_empty())
}

fn put(attrs: &mut Attrs, key: &str, v: Option<&str>) {
    if let Some(v) = v {
        attrs.insert(key.into(), Value::String(v.to_string()));
    }
}

/// The private IPv4 address Metal gave a device.
fn private_ipv4(d: &Value) -> Option<&str> {
    d.get("ip_addresses")?.as_array()?.iter().find_map(|ip| {
        let private = ip.get("public").and_then(Value::as_bool) == Some(false);
        let v4 = ip.get("address_family").and_then(Value::as_u64) == Some(4);
        (private && v4)
            .then(|| ip.get("address").and_then(Value::as_str))
            .flatten()
    })
}

/// True for a device that is going away or gone.
fn going(d: &Value) -> bool {
    matches!(str_at(d, &["state"]), Some("deprovisioning" | "deleted"))
}

/// The machine object of a device; `prior` is the state's record (empty when adopting).
pub fn device_object(d: &Value, prior: &Attrs) -> Object {
    let (owner, user) = split_tags(d);
    let mut attrs = Attrs::new();
    put(&mut attrs, "name", str_at(d, &["hostname"]));
    put(&mut attrs, "size", str_at(d, &["plan", "slug"]));
    put(&mut attrs, "zone", str_at(d, &["metro", "code"]));
    put(&mut attrs, "state", str_at(d, &["state"]));
    put(&mut attrs, "private_ipv4", private_ipv4(d));
    match d
        .get("customdata")
        .and_then(|c| c.get(INPUTS))
        .and_then(Value::as_object)
    {
        Some(inputs) => attrs.extend(inputs.iter().map(|(k, v)| (k.clone(), v.clone()))),
        None => attrs.extend(pick(prior, MACHINE_INPUTS)),
    }
    let os = str_at(d, &["operating_system", "slug"]);
    if let Some(channel) = os.and_then(|s| s.strip_prefix("flatcar_")) {
        attrs.insert("channel".into(), Value::String(channel.to_string()));
    }
    if os == Some("custom_ipxe") {
        attrs.insert("operating_system".into(), json!("custom_ipxe"));
    }
    put(
        &mut attrs,
        "ipxe_script_url",
        str_at(d, &["ipxe_script_url"]),
    );
    if !attrs.contains_key("address") {
        put(&mut attrs, "address", private_ipv4(d));
    }
    match str_at(d, &["userdata"]) {
        Some(u) => put(&mut attrs, "user_data", Some(u)),
        None => {
            if let Some(u) = prior.get("user_data") {
                attrs.insert("user_data".into(), u.clone());
            }
        }
    }
    for (api, attr) in [("locked", "protect"), ("always_pxe", "always_pxe")] {
        let on = d.get(api).and_then(Value::as_bool).unwrap_or(false);
        if on || prior.contains_key(attr) {
            attrs.insert(attr.into(), Value::Bool(on));
        }
    }
    if !user.is_empty() || prior.contains_key("tags") {
        attrs.insert("tags".into(), json!(user));
    }
    Object {
        kind: "machine".into(),
        id: str_at(d, &["id"]).unwrap_or_default().to_string(),
        attrs,
        owner,
    }
}

/// The metro code of a VLAN.
fn vlan_metro(v: &Value) -> Option<&str> {
    str_at(v, &["metro_code"]).or_else(|| str_at(v, &["metro", "code"]))
}

/// The network object of a VLAN.
pub fn vlan_object(v: &Value, prior: &Attrs) -> Object {
    let (owner, mut user) = split_tags(v);
    let mut attrs = Attrs::new();
    put(&mut attrs, "name", str_at(v, &["description"]));
    put(&mut attrs, "zone", vlan_metro(v));
    if let Some(x) = v.get("vxlan").and_then(Value::as_u64) {
        attrs.insert("vxlan".into(), Value::from(x));
    }
    let inputs = v
        .get("tags")
        .and_then(Value::as_array)
        .and_then(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .find_map(|t| t.strip_prefix(INPUTS_TAG))
        })
        .and_then(|j| serde_json::from_str::<serde_json::Map<String, Value>>(j).ok());
    user.retain(|k, _| !INPUTS_TAG.starts_with(k.as_str()));
    match inputs {
        Some(i) => attrs.extend(i),
        None => attrs.extend(pick(prior, NETWORK_INPUTS)),
    }
    if !user.is_empty() || prior.contains_key("tags") {
        attrs.insert("tags".into(), json!(user));
    }
    Object {
        kind: "network".into(),
        id: str_at(v, &["id"]).unwrap_or_default().to_string(),
        attrs,
        owner,
    }
}

/// The recorded network of a cluster without a VLAN.
fn no_vlan_object(attrs: &Attrs, owner: Option<Ownership>) -> Object {
    Object {
        kind: "network".into(),
        id: NO_VLAN.into(),
        attrs: attrs.clone(),
        owner,
    }
}

/// The `ip_reservation` object of an IP reservation (`prior`: the state's record, empty
/// when adopting): its metro, its address (a /32) and the user's tags.
pub fn reservation_object(r: &Value, prior: &Attrs) -> Object {
    let (owner, user) = split_tags(r);
    let mut attrs = Attrs::new();
    put(&mut attrs, "zone", str_at(r, &["metro", "code"]));
    put(&mut attrs, "address", str_at(r, &["address"]));
    if !user.is_empty() || prior.contains_key("tags") {
        attrs.insert("tags".into(), json!(user));
    }
    Object {
        kind: "ip_reservation".into(),
        id: str_at(r, &["id"]).unwrap_or_default().to_string(),
        attrs,
        owner,
    }
}

/// The body of the request for an `ip_reservation` (`POST /projects/{id}/ips`): one
/// public IPv4 address in its metro, with the ownership and the user's tags. A request
/// beyond the project's quota fails (422) instead of waiting for Equinix's approval.
pub fn reservation_body(attrs: &Attrs, owner: &Ownership) -> Result<Value> {
    let zone = attrs
        .get("zone")
        .and_then(Value::as_str)
        .filter(|z| !z.trim().is_empty())
        .ok_or_else(|| {
            ProviderError::Config(format!(
                "`{}` needs `zone`, the metro to reserve the address in",
                owner.address
            ))
        })?;
    Ok(json!({
        "type": PUBLIC_IPV4,
        "quantity": 1,
        "metro": zone,
        "tags": tag_strings(Some(owner), attrs.get("tags")),
        "details": format!("clusterform {} {}", owner.cluster, owner.address),
        "fail_on_approval_required": true,
    }))
}

/// A reservation no device may take yet: one `pending` Equinix's approval.
fn pending_error(r: &Value, what: &str) -> Option<ProviderError> {
    (str_at(r, &["state"]) == Some("pending")).then(|| {
        let id = str_at(r, &["id"]).unwrap_or_default();
        let metro = str_at(r, &["metro", "code"]).unwrap_or("its metro");
        ProviderError::Ambiguous(format!(
            "{what}: IP reservation {id} in {metro} is `pending`: it waits for Equinix's approval (the project's public IPv4 quota is used up) and no device can take its address until then; ask Equinix to approve it (or to raise the quota) and run again, which finds it by its op tag and asks for no other, or delete it to give up"
        ))
    })
}

/// True for an IP reservation (an IP assignment, which `GET /ips/{id}` also answers,
/// has no `type`).
fn is_reservation(r: &Value) -> bool {
    r.get("type").and_then(Value::as_str).is_some()
}

/// The ip address entries of a device's create request: the private IPv4 every device
/// needs; as its public IPv4 the reservation's address when it takes one (an elastic
/// /32), else one of Metal's when `public_ipv4` is on; public IPv6 when it is on.
fn device_ip_addresses(reservation: Option<&str>, public_ipv4: bool) -> Vec<Value> {
    let mut ips = vec![json!({"address_family": 4, "public": false})];
    match reservation {
        Some(id) => ips.push(json!({
            "address_family": 4,
            "public": true,
            "cidr": 32,
            "ip_reservations": [id],
        })),
        None if public_ipv4 => ips.push(json!({"address_family": 4, "public": true})),
        None => {}
    }
    if public_ipv4 {
        ips.push(json!({"address_family": 6, "public": true}));
    }
    ips
}

/// The body of a device's create request (`POST /projects/{id}/devices`) for a machine's
/// inputs `a` (references resolved to ids: `ip_reservation` is the reservation's id);
/// `metro` is the settings' metro, for a machine without a zone.
pub fn device_body(a: &Attrs, owner: &Ownership, metro: &str, public_ipv4: bool) -> Result<Value> {
    let s = |k: &str| a.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
    let hostname = s("name").unwrap_or_default();
    let os = match s("operating_system") {
        Some("custom_ipxe") => "custom_ipxe".to_string(),
        Some(other) => {
            return Err(ProviderError::Config(format!(
                "machine `{hostname}`: `operating_system = \"{other}\"` is not one clusterform installs; leave it out for `flatcar_<channel>`, or write \"custom_ipxe\" with `ipxe_script_url`"
            )));
        }
        None => format!("flatcar_{}", s("channel").unwrap_or("stable")),
    };
    if os == "custom_ipxe" && s("ipxe_script_url").is_none() {
        return Err(ProviderError::Config(format!(
            "machine `{hostname}`: `custom_ipxe` needs `ipxe_script_url`, the iPXE script it boots"
        )));
    }
    let mut body = json!({
        "metro": s("zone").unwrap_or(metro),
        "plan": s("size").unwrap_or_default(),
        "operating_system": os,
        "hostname": hostname,
        "billing_cycle": "hourly",
        "tags": tag_strings(Some(owner), a.get("tags")),
        "customdata": { INPUTS: Value::Object(pick(a, MACHINE_INPUTS)) },
        "ip_addresses": device_ip_addresses(s("ip_reservation"), public_ipv4),
    });
    if let Some(u) = s("user_data") {
        body["userdata"] = json!(u);
    }
    if let Some(url) = s("ipxe_script_url") {
        body["ipxe_script_url"] = json!(url);
    }
    for (attr, api) in [("always_pxe", "always_pxe"), ("protect", "locked")] {
        if a.get(attr).and_then(Value::as_bool) == Some(true) {
            body[api] = json!(true);
        }
    }
    Ok(body)
}

/// True when the network `attrs` asks for no VLAN (`vlan = false`).
fn no_vlan_asked(attrs: &Attrs) -> bool {
    attrs.get("vlan").and_then(Value::as_bool) == Some(false)
}

fn kind_error(kind: &str) -> ProviderError {
    ProviderError::Permanent(format!(
        "the metal provider has no kind `{kind}`; it has: network, machine, ip_reservation"
    ))
}

impl Metal {
    /// A provider for `settings`.
    pub fn new(settings: Settings) -> std::result::Result<Metal, String> {
        Ok(Metal {
            api: Api::new(&settings)?,
            settings,
            schema: crate::schema::schema(),
        })
    }

    fn project(&self, rest: &str) -> String {
        format!("/projects/{}/{rest}", self.settings.project_id)
    }

    /// The project's devices carrying `tag` (every device when None), going ones left out.
    async fn devices(&self, tag: Option<String>) -> Result<Vec<Value>> {
        let filter: Vec<(&str, String)> = tag.into_iter().map(|t| ("tag", t)).collect();
        let mut all = self
            .api
            .list_all(
                &self.project("devices"),
                "devices",
                &filter,
                "list the project's devices",
            )
            .await?;
        all.retain(|d| !going(d));
        Ok(all)
    }

    /// The project's VLANs carrying `tag` (every one when None).
    async fn vlans(&self, tag: Option<&str>) -> Result<Vec<Value>> {
        let body = self
            .api
            .call(
                Method::GET,
                &self.project("virtual-networks"),
                &[],
                None,
                Replay::Safe,
                "list the project's VLANs",
            )
            .await?
            .unwrap_or(Value::Null);
        let mut all = body
            .get("virtual_networks")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if let Some(t) = tag {
            all.retain(|v| {
                v.get("tags")
                    .and_then(Value::as_array)
                    .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(t)))
            });
        }
        Ok(all)
    }

    /// One device as the API has it, going ones included; None once it is gone (404).
    async fn raw_device(&self, id: &str) -> Result<Option<Value>> {
        match self
            .api
            .call(
                Method::GET,
                &format!("/devices/{id}"),
                &[],
                None,
                Replay::Safe,
                &format!("read device {id}"),
            )
            .await
        {
            Ok(d) => Ok(d),
            Err(ProviderError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// One device, None once it is gone or going.
    async fn device(&self, id: &str) -> Result<Option<Value>> {
        Ok(self.raw_device(id).await?.filter(|d| !going(d)))
    }

    /// Wait until the device is `active`, polling with a growing interval (up to 4x
    /// `poll_interval`). `failed`, or no `active` within `provision_timeout`, is an error
    /// whose outcome is left open: the device stays tagged with its op, and the next run
    /// records it so that it can be destroyed.
    async fn wait_active(&self, id: &str, hostname: &str) -> Result<Value> {
        let started = Instant::now();
        let mut interval = self.settings.poll_interval;
        loop {
            let d = self.device(id).await?.ok_or_else(|| {
                ProviderError::Permanent(format!(
                    "device `{hostname}` ({id}) went away while it was being provisioned"
                ))
            })?;
            match str_at(&d, &["state"]) {
                Some("active") => return Ok(d),
                Some("failed") => {
                    return Err(ProviderError::Ambiguous(format!(
                        "device `{hostname}` ({id}) failed to provision at Metal (state `failed`); it stays in the project, tagged with this operation, and the next run records it in the state so that `destroy` removes it"
                    )));
                }
                _ => {}
            }
            if started.elapsed() >= self.settings.provision_timeout {
                return Err(ProviderError::Ambiguous(format!(
                    "device `{hostname}` ({id}) was not active after {} (state `{}`); the next run looks at it again (raise `provision_timeout` in `[provider.metal]` for slow plans)",
                    humantime::format_duration(self.settings.provision_timeout),
                    str_at(&d, &["state"]).unwrap_or("unknown")
                )));
            }
            tokio::time::sleep(interval).await;
            interval = (interval * 3 / 2).min(self.settings.poll_interval * 4);
        }
    }

    /// The VLAN `id`; None when the API no longer has it.
    async fn vlan(&self, id: &str) -> Result<Option<Value>> {
        match self
            .api
            .call(
                Method::GET,
                &format!("/virtual-networks/{id}"),
                &[],
                None,
                Replay::Safe,
                &format!("read VLAN {id}"),
            )
            .await
        {
            Ok(v) => Ok(v),
            Err(ProviderError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Put the device's bond0 port on the VLAN `network`, when the cluster has one in the
    /// device's metro (Metal VLANs are metro-local; machines elsewhere reach the others
    /// over the project's private layer-3 network).
    async fn assign_port(&self, d: &Value, network: Option<&str>) -> Result<()> {
        let Some(vlan_id) = network.filter(|n| *n != NO_VLAN && self.settings.vlan) else {
            return Ok(());
        };
        // Metal VLANs are metro-local; the blueprints keep a cluster in one metro, a
        // plain machine elsewhere is left on layer 3.
        let vlan = self.vlan(vlan_id).await?;
        if vlan.as_ref().and_then(vlan_metro) != str_at(d, &["metro", "code"]) {
            return Ok(());
        }
        let ports = d.get("network_ports").and_then(Value::as_array);
        let Some(port) = ports.and_then(|p| {
            p.iter()
                .find(|p| str_at(p, &["name"]) == Some("bond0"))
                .or_else(|| p.first())
        }) else {
            return Ok(());
        };
        let already = port
            .get("virtual_networks")
            .and_then(Value::as_array)
            .is_some_and(|vs| {
                vs.iter()
                    .any(|v| str_at(v, &["href"]).is_some_and(|h| h.ends_with(vlan_id)))
            });
        if already {
            return Ok(());
        }
        let port_id = str_at(port, &["id"]).unwrap_or_default();
        self.api
            .call(
                Method::POST,
                &format!("/ports/{port_id}/assign"),
                &[],
                Some(&json!({ "vnid": vlan_id })),
                Replay::Safe,
                &format!(
                    "assign device {}'s port to VLAN {vlan_id}",
                    str_at(d, &["hostname"]).unwrap_or_default()
                ),
            )
            .await?;
        Ok(())
    }

    async fn create_machine(&self, req: &CreateRequest) -> Result<Object> {
        let a = &req.attrs;
        let s = |k: &str| a.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
        let hostname = s("name").unwrap_or_default().to_string();
        let body = device_body(
            a,
            &req.owner,
            &self.settings.metro,
            self.settings.public_ipv4,
        )?;
        // Idempotent through the op tag: a device this operation already made (an earlier
        // attempt, or a run that crashed) is found and waited on, never made twice.
        let device = self
            .create_once(
                "device",
                &format!("create device `{hostname}`"),
                &self.project("devices"),
                &body,
                || self.find_device_by_key(&req.owner.op),
            )
            .await?;
        let id = str_at(&device, &["id"]).unwrap_or_default().to_string();
        let active = self.wait_active(&id, &hostname).await?;
        self.assign_port(&active, s("network")).await?;
        let active = self.device(&id).await?.unwrap_or(active);
        Ok(device_object(&active, a))
    }

    /// POST `body` to `path` once, idempotently through the op tag: `find` looks for
    /// what an earlier attempt (or a crashed run) made before every POST, and a POST
    /// whose outcome is unknown is sent again (at most 3 attempts) only after `find`
    /// found nothing. `noun` and `what` name it in messages.
    async fn create_once<F, Fut>(
        &self,
        noun: &str,
        what: &str,
        path: &str,
        body: &Value,
        find: F,
    ) -> Result<Value>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<Option<Value>>>,
    {
        for attempt in 0..3 {
            if let Some(found) = find().await? {
                return Ok(found);
            }
            match self
                .api
                .call(Method::POST, path, &[], Some(body), Replay::Unsafe, what)
                .await
            {
                Ok(Some(made)) => return Ok(made),
                Ok(None) => {
                    return Err(ProviderError::Ambiguous(format!(
                        "{what}: the Metal API answered without the {noun}"
                    )));
                }
                Err(ProviderError::Ambiguous(m)) if attempt < 2 => {
                    note_retry(noun, &m);
                    tokio::time::sleep(self.settings.poll_interval).await;
                }
                Err(e) => return Err(e),
            }
        }
        Err(ProviderError::Ambiguous(format!(
            "{what}: no answer from the Metal API; the next run looks for it by its op tag"
        )))
    }

    async fn find_device_by_key(&self, key: &str) -> Result<Option<Value>> {
        let found = self.devices(Some(format!("{}={key}", tags::OP))).await?;
        Ok(found.into_iter().next())
    }

    async fn create_network(&self, req: &CreateRequest) -> Result<Object> {
        if !self.settings.vlan || no_vlan_asked(&req.attrs) {
            return Ok(no_vlan_object(&req.attrs, Some(req.owner.clone())));
        }
        let op_tag = format!("{}={}", tags::OP, req.owner.op);
        if let Some(v) = self.vlans(Some(&op_tag)).await?.first() {
            return Ok(vlan_object(v, &req.attrs));
        }
        let mut tags = tag_strings(Some(&req.owner), req.attrs.get("tags"));
        let inputs = Value::Object(pick(&req.attrs, NETWORK_INPUTS));
        tags.push(Value::String(format!("{INPUTS_TAG}{inputs}")));
        let name = req
            .attrs
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let metro = req
            .attrs
            .get("zone")
            .and_then(Value::as_str)
            .unwrap_or(&self.settings.metro);
        let mut body = json!({
            "metro": metro,
            "description": name,
            "tags": tags,
        });
        // The number the machines' configs name (`bond0.<vxlan>`); Metal picks one when
        // a plain network leaves it out.
        if let Some(x) = req.attrs.get("vxlan").and_then(Value::as_u64) {
            body["vxlan"] = json!(x);
        }
        let v = self
            .api
            .call(
                Method::POST,
                &self.project("virtual-networks"),
                &[],
                Some(&body),
                Replay::Unsafe,
                &match body.get("vxlan") {
                    Some(x) => format!(
                        "create VLAN `{name}` (number {x} in metro {metro}; `[network] vxlan` picks the number)"
                    ),
                    None => format!("create VLAN `{name}`"),
                },
            )
            .await?
            .ok_or_else(|| {
                ProviderError::Ambiguous(format!("create VLAN `{name}`: no VLAN in the answer"))
            })?;
        Ok(vlan_object(&v, &req.attrs))
    }

    /// The project's public IPv4 reservations carrying `tag` (every one when None), in one
    /// listing (the API filters reservations by type, not by tag).
    async fn reservations(&self, tag: Option<&str>) -> Result<Vec<Value>> {
        let mut all = self
            .api
            .list_sized(
                &self.project("ips"),
                "ip_addresses",
                &[("types", PUBLIC_IPV4.to_string())],
                IPS_PER_PAGE,
                "list the project's IP reservations",
            )
            .await?;
        all.retain(is_reservation);
        if let Some(t) = tag {
            all.retain(|r| {
                r.get("tags")
                    .and_then(Value::as_array)
                    .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(t)))
            });
        }
        Ok(all)
    }

    /// The IP reservation `id`; None when the API no longer has it. An IP assignment's id
    /// (which the same call answers) is an error.
    async fn reservation(&self, id: &str) -> Result<Option<Value>> {
        let what = format!("read IP reservation {id}");
        match self
            .api
            .call(
                Method::GET,
                &format!("/ips/{id}"),
                &[],
                None,
                Replay::Safe,
                &what,
            )
            .await
        {
            Ok(Some(r)) if !is_reservation(&r) => Err(ProviderError::Permanent(format!(
                "{what}: {id} is an IP assignment (an address given to a device), not a reservation; use the reservation's id, listed under the project's IPs"
            ))),
            Ok(r) => Ok(r),
            Err(ProviderError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reserve a public IPv4 address in the metro `zone`. Idempotent through the op tag:
    /// a reservation this operation already made (an earlier attempt, or a run that
    /// crashed) is found in the project's listing and adopted, never requested twice.
    async fn create_reservation(&self, req: &CreateRequest) -> Result<Object> {
        let body = reservation_body(&req.attrs, &req.owner)?;
        let metro = body["metro"].as_str().unwrap_or_default().to_string();
        let what = format!(
            "reserve a public IPv4 address in metro {metro} for `{}`",
            req.owner.address
        );
        let op_tag = format!("{}={}", tags::OP, req.owner.op);
        let r = self
            .create_once("IP reservation", &what, &self.project("ips"), &body, || async {
                Ok(self.reservations(Some(&op_tag)).await?.into_iter().next())
            })
            .await
            .map_err(|e| {
                advise(
                    e,
                    "a request beyond the project's public IPv4 quota, which would need Equinix's approval, is refused rather than left pending: ask Equinix to raise the quota or delete unused reservations; else fix the `zone` of the reservation (a metro code) and run again",
                )
            })?;
        if let Some(e) = pending_error(&r, &what) {
            return Err(e);
        }
        Ok(reservation_object(&r, &req.attrs))
    }

    /// Wait until the API no longer has the device (404, or state `deleted`).
    async fn wait_gone(&self, id: &str) -> Result<()> {
        let started = Instant::now();
        let mut interval = self.settings.poll_interval;
        loop {
            let device = self.raw_device(id).await?;
            if device.is_none_or(|d| str_at(&d, &["state"]) == Some("deleted")) {
                return Ok(());
            }
            if started.elapsed() >= self.settings.provision_timeout {
                return Err(ProviderError::Ambiguous(format!(
                    "device {id} was still there {} after its deletion; the next run looks again",
                    humantime::format_duration(self.settings.provision_timeout)
                )));
            }
            tokio::time::sleep(interval).await;
            interval = (interval * 3 / 2).min(self.settings.poll_interval * 4);
        }
    }

    async fn set_device(&self, id: &str, body: &Value, what: &str) -> Result<Value> {
        self.api
            .call(
                Method::PUT,
                &format!("/devices/{id}"),
                &[],
                Some(body),
                Replay::Safe,
                what,
            )
            .await?
            .ok_or_else(|| {
                ProviderError::Permanent(format!(
                    "{what}: the Metal API answered without the device"
                ))
            })
    }
}

/// Where a retried create's first failure goes: stderr, which clusterform keeps in its log.
fn note_retry(what: &str, message: &str) {
    eprintln!("metal: {message}; looking for the {what} by its op tag before creating again");
}

#[async_trait]
impl Reader for Metal {
    fn name(&self) -> &str {
        crate::schema::PROVIDER_NAME
    }

    fn schema(&self) -> &ProviderSchema {
        &self.schema
    }

    fn max_batch(&self) -> usize {
        5000
    }

    fn runs_machines(&self) -> bool {
        !self.settings.is_local()
    }

    async fn read(&self, req: &ReadRequest) -> Result<Option<Object>> {
        match req.kind.as_str() {
            "machine" => Ok(self
                .device(&req.id)
                .await?
                .map(|d| device_object(&d, &req.prior))),
            "network" if req.id == NO_VLAN => Ok(Some(no_vlan_object(&req.prior, None))),
            "network" => Ok(self
                .vlan(&req.id)
                .await?
                .map(|v| vlan_object(&v, &req.prior))),
            "ip_reservation" => Ok(self
                .reservation(&req.id)
                .await?
                .map(|r| reservation_object(&r, &req.prior))),
            other => Err(kind_error(other)),
        }
    }

    /// Machines in one listing of the project's devices by the cluster tag (the cluster is
    /// learnt from the first machine found); a machine missing from it (deleted, or its
    /// tags changed out of band) is then read by id. IP reservations in one listing of the
    /// project's (one missing from it is then read by id). Networks one by one (one a
    /// cluster).
    async fn read_batch(&self, reqs: &[ReadRequest]) -> Vec<Result<Option<Object>>> {
        let machines: Vec<&ReadRequest> = reqs.iter().filter(|r| r.kind == "machine").collect();
        let mut listed: HashMap<String, Value> = HashMap::new();
        if machines.len() > 1 {
            let mut cluster = None;
            for r in machines.iter().take(3) {
                match self.device(&r.id).await {
                    Ok(Some(d)) => {
                        if let (Some(o), _) = split_tags(&d) {
                            cluster = Some(o.cluster);
                            listed.insert(r.id.clone(), d);
                            break;
                        }
                        listed.insert(r.id.clone(), d);
                    }
                    Ok(None) => {}
                    Err(e) => return reqs.iter().map(|_| Err(e.clone())).collect(),
                }
            }
            if let Some(c) = cluster {
                match self.devices(Some(format!("{}={c}", tags::CLUSTER))).await {
                    Ok(all) => {
                        for d in all {
                            if let Some(id) = str_at(&d, &["id"]) {
                                listed.insert(id.to_string(), d);
                            }
                        }
                    }
                    Err(e) => return reqs.iter().map(|_| Err(e.clone())).collect(),
                }
            }
        }
        // One listing for every reservation of the batch; when it fails, only the
        // reservations' reads fail.
        let reserved: Result<HashMap<String, Value>> =
            if reqs.iter().any(|r| r.kind == "ip_reservation") {
                self.reservations(None).await.map(|all| {
                    all.into_iter()
                        .filter_map(|r| {
                            let id = str_at(&r, &["id"])?.to_string();
                            Some((id, r))
                        })
                        .collect()
                })
            } else {
                Ok(HashMap::new())
            };
        let mut out = Vec::with_capacity(reqs.len());
        for r in reqs {
            out.push(match (r.kind.as_str(), &reserved) {
                ("machine", _) if listed.contains_key(&r.id) => {
                    Ok(listed.get(&r.id).map(|d| device_object(d, &r.prior)))
                }
                ("ip_reservation", Err(e)) => Err(e.clone()),
                ("ip_reservation", Ok(all)) if all.contains_key(&r.id) => {
                    Ok(all.get(&r.id).map(|x| reservation_object(x, &r.prior)))
                }
                _ => self.read(r).await,
            });
        }
        out
    }

    async fn find_by_key(&self, kind: &str, key: &str) -> Result<Option<Object>> {
        match kind {
            "machine" => Ok(self
                .find_device_by_key(key)
                .await?
                .map(|d| device_object(&d, &Attrs::new()))),
            "network" if !self.settings.vlan => Ok(None),
            "network" => {
                let tag = format!("{}={key}", tags::OP);
                Ok(self
                    .vlans(Some(&tag))
                    .await?
                    .first()
                    .map(|v| vlan_object(v, &Attrs::new())))
            }
            "ip_reservation" => {
                let tag = format!("{}={key}", tags::OP);
                Ok(self
                    .reservations(Some(&tag))
                    .await?
                    .first()
                    .map(|r| reservation_object(r, &Attrs::new())))
            }
            other => Err(kind_error(other)),
        }
    }

    async fn list_cluster(&self, cluster: &str) -> Result<Vec<Object>> {
        let tag = format!("{}={cluster}", tags::CLUSTER);
        let mut out: Vec<Object> = self
            .devices(Some(tag.clone()))
            .await?
            .iter()
            .map(|d| device_object(d, &Attrs::new()))
            .collect();
        if self.settings.vlan {
            out.extend(
                self.vlans(Some(&tag))
                    .await?
                    .iter()
                    .map(|v| vlan_object(v, &Attrs::new())),
            );
        }
        out.extend(
            self.reservations(Some(&tag))
                .await?
                .iter()
                .map(|r| reservation_object(r, &Attrs::new())),
        );
        Ok(out)
    }

    async fn list_owned(&self) -> Result<Vec<Object>> {
        let mut out: Vec<Object> = self
            .devices(None)
            .await?
            .iter()
            .map(|d| device_object(d, &Attrs::new()))
            .filter(|o| o.owner.is_some())
            .collect();
        if self.settings.vlan {
            out.extend(
                self.vlans(None)
                    .await?
                    .iter()
                    .map(|v| vlan_object(v, &Attrs::new()))
                    .filter(|o| o.owner.is_some()),
            );
        }
        out.extend(
            self.reservations(None)
                .await?
                .iter()
                .map(|r| reservation_object(r, &Attrs::new()))
                .filter(|o| o.owner.is_some()),
        );
        Ok(out)
    }
}

#[async_trait]
impl Provider for Metal {
    async fn create(&self, req: &CreateRequest) -> Result<Object> {
        match req.kind.as_str() {
            "machine" => self.create_machine(req).await,
            "network" => self.create_network(req).await,
            "ip_reservation" => self.create_reservation(req).await,
            other => Err(kind_error(other)),
        }
    }

    async fn update(&self, req: &UpdateRequest) -> Result<Object> {
        match req.kind.as_str() {
            "machine" => {
                let name = req
                    .attrs
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let what = format!("update device `{name}`");
                let current = self.device(&req.id).await?.ok_or_else(|| {
                    ProviderError::NotFound(format!("device {} of `{}`", req.id, req.address))
                })?;
                let (owner, _) = split_tags(&current);
                let mut body = serde_json::Map::new();
                for c in &req.changed {
                    match c.as_str() {
                        "name" => {
                            body.insert("hostname".into(), json!(name));
                        }
                        "tags" => {
                            body.insert(
                                "tags".into(),
                                json!(tag_strings(owner.as_ref(), req.attrs.get("tags"))),
                            );
                        }
                        "protect" => {
                            body.insert(
                                "locked".into(),
                                json!(
                                    req.attrs
                                        .get("protect")
                                        .and_then(Value::as_bool)
                                        .unwrap_or(false)
                                ),
                            );
                        }
                        "always_pxe" => {
                            body.insert(
                                "always_pxe".into(),
                                json!(
                                    req.attrs
                                        .get("always_pxe")
                                        .and_then(Value::as_bool)
                                        .unwrap_or(false)
                                ),
                            );
                        }
                        other => {
                            return Err(ProviderError::Permanent(format!(
                                "{what}: `{other}` cannot be changed in place at Metal; the plan should replace the device"
                            )));
                        }
                    }
                }
                let d = self
                    .set_device(&req.id, &Value::Object(body), &what)
                    .await?;
                Ok(device_object(&d, &req.attrs))
            }
            "network" => {
                // gateway, dns and tags are records of the machines' own configuration.
                let current = self
                    .read(&ReadRequest {
                        address: req.address.clone(),
                        kind: req.kind.clone(),
                        id: req.id.clone(),
                        prior: req.attrs.clone(),
                    })
                    .await?
                    .ok_or_else(|| {
                        ProviderError::NotFound(format!("VLAN {} of `{}`", req.id, req.address))
                    })?;
                let mut attrs = current.attrs;
                for c in &req.changed {
                    match req.attrs.get(c) {
                        Some(v) => attrs.insert(c.clone(), v.clone()),
                        None => attrs.remove(c),
                    };
                }
                Ok(Object { attrs, ..current })
            }
            "ip_reservation" => {
                let what = format!("update IP reservation {} of `{}`", req.id, req.address);
                if let Some(other) = req.changed.iter().find(|c| c.as_str() != "tags") {
                    return Err(ProviderError::Permanent(format!(
                        "{what}: `{other}` cannot be changed in place at Metal; the plan should replace the reservation"
                    )));
                }
                let current = self.reservation(&req.id).await?.ok_or_else(|| {
                    ProviderError::NotFound(format!(
                        "IP reservation {} of `{}`",
                        req.id, req.address
                    ))
                })?;
                let (owner, _) = split_tags(&current);
                let body = json!({ "tags": tag_strings(owner.as_ref(), req.attrs.get("tags")) });
                let r = self
                    .api
                    .call(
                        Method::PATCH,
                        &format!("/ips/{}", req.id),
                        &[],
                        Some(&body),
                        Replay::Safe,
                        &what,
                    )
                    .await?
                    .ok_or_else(|| {
                        ProviderError::Permanent(format!(
                            "{what}: the Metal API answered without the reservation"
                        ))
                    })?;
                Ok(reservation_object(&r, &req.attrs))
            }
            other => Err(kind_error(other)),
        }
    }

    async fn delete(&self, req: &DeleteRequest) -> Result<()> {
        match req.kind.as_str() {
            "machine" => {
                let Some(d) = self.device(&req.id).await? else {
                    return Ok(());
                };
                let locked = d.get("locked").and_then(Value::as_bool) == Some(true);
                if locked && !req.force {
                    return Err(ProviderError::Permanent(format!(
                        "device {} of `{}` is locked at Metal (`protect = true`, or locked out of band); unlock it, or run with `--allow-protected`",
                        req.id, req.address
                    )));
                }
                if locked {
                    self.set_device(
                        &req.id,
                        &json!({"locked": false}),
                        &format!("unlock device {}", req.id),
                    )
                    .await?;
                }
                match self
                    .api
                    .call(
                        Method::DELETE,
                        &format!("/devices/{}", req.id),
                        &[],
                        None,
                        Replay::Safe,
                        &format!("delete device {} of `{}`", req.id, req.address),
                    )
                    .await
                {
                    Ok(_) | Err(ProviderError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
                self.wait_gone(&req.id).await
            }
            "network" if req.id == NO_VLAN => Ok(()),
            "network" => match self
                .api
                .call(
                    Method::DELETE,
                    &format!("/virtual-networks/{}", req.id),
                    &[],
                    None,
                    Replay::Safe,
                    &format!("delete VLAN {} of `{}`", req.id, req.address),
                )
                .await
            {
                Ok(_) | Err(ProviderError::NotFound(_)) => Ok(()),
                Err(e) => Err(e),
            },
            "ip_reservation" => match self
                .api
                .call(
                    Method::DELETE,
                    &format!("/ips/{}", req.id),
                    &[],
                    None,
                    Replay::Safe,
                    &format!("delete IP reservation {} of `{}`", req.id, req.address),
                )
                .await
            {
                Ok(_) | Err(ProviderError::NotFound(_)) => Ok(()),
                Err(e) => Err(advise(
                    e,
                    "Metal keeps a reservation whose address a device still has: delete or replace the machine that takes it (`ip_reservation`) first, then run again",
                )),
            },
            other => Err(kind_error(other)),
        }
    }

    async fn import(&self, kind: &str, id: &str) -> Result<Object> {
        let req = ReadRequest {
            address: "machine.imported"
                .parse()
                .map_err(|_| ProviderError::Permanent("bad address".into()))?,
            kind: kind.to_string(),
            id: id.to_string(),
            prior: Attrs::new(),
        };
        if kind == "ip_reservation" {
            let r = self.reservation(id).await?.ok_or_else(|| {
                ProviderError::NotFound(format!("IP reservation {id} in the Metal project"))
            })?;
            let ty = str_at(&r, &["type"]).unwrap_or_default();
            if ty != PUBLIC_IPV4 {
                return Err(ProviderError::Permanent(format!(
                    "IP reservation {id} is of type `{ty}`; an `ip_reservation` is a {PUBLIC_IPV4} reservation"
                )));
            }
            return Ok(reservation_object(&r, &Attrs::new()));
        }
        self.read(&req)
            .await?
            .ok_or_else(|| ProviderError::NotFound(format!("{kind} {id} in the Metal project")))
    }

    fn reader(&self) -> &dyn Reader {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip_through_key_value_strings() {
        let owner = Ownership {
            cluster: "prod".into(),
            address: "machine.central[0]".parse().expect("address"),
            op: "op-1".into(),
            expires_at: None,
            created_by: None,
            created_at: None,
        };
        let tags = tag_strings(Some(&owner), Some(&json!({"team": "infra", "x": "a=b"})));
        let (o, user) = split_tags(&json!({ "tags": tags }));
        assert_eq!(o, Some(owner));
        assert_eq!(user.get("team").map(String::as_str), Some("infra"));
        assert_eq!(user.get("x").map(String::as_str), Some("a=b"));
    }

    #[test]
    fn a_device_reports_inputs_from_customdata_and_its_metal_address() {
        let d = json!({
            "id": "d1", "hostname": "prod-central-0", "state": "active",
            "plan": {"slug": "c3.small.x86"}, "metro": {"code": "da"},
            "operating_system": {"slug": "flatcar_beta"}, "userdata": "{}", "locked": true,
            "ip_addresses": [{"address": "147.0.0.1", "public": true, "address_family": 4},
                             {"address": "10.70.0.5", "public": false, "address_family": 4}],
            "customdata": {"clusterform": {"role": "etcd", "address": "10.10.0.101"}},
            "tags": ["clusterform:cluster=prod", "clusterform:address=machine.central[0]", "clusterform:op=o"]
        });
        let o = device_object(&d, &Attrs::new());
        assert_eq!(o.attrs["channel"], json!("beta"));
        assert_eq!(o.attrs["address"], json!("10.10.0.101"));
        assert_eq!(o.attrs["private_ipv4"], json!("10.70.0.5"));
        assert_eq!(o.attrs["protect"], json!(true));
        assert_eq!(o.attrs["role"], json!("etcd"));
        assert!(o.owner.is_some());
        assert!(!o.attrs.contains_key("tags"));
    }

    fn owner(address: &str) -> Ownership {
        Ownership {
            cluster: "prod".into(),
            address: address.parse().expect("address"),
            op: "op-7".into(),
            expires_at: None,
            created_by: None,
            created_at: None,
        }
    }

    fn attrs(v: Value) -> Attrs {
        serde_json::from_value(v).expect("attrs")
    }

    #[test]
    fn a_reservation_reports_its_metro_address_and_user_tags() {
        let r = json!({
            "id": "5b1e0a57-7d4c-4c2e-9d0e-0c1f3e2a4b6c", "type": "public_ipv4",
            "address": "147.28.2.7", "network": "147.28.2.7", "cidr": 32, "public": true,
            "address_family": 4, "state": "created", "details": "clusterform prod ip_reservation.central[0]",
            "metro": {"id": "0a1b2c3d-0000-0000-0000-000000000000", "code": "sv", "name": "Silicon Valley"},
            "assignments": [],
            "tags": ["clusterform:cluster=prod", "clusterform:address=ip_reservation.central[0]",
                     "clusterform:op=op-7", "team=infra"]
        });
        let o = reservation_object(&r, &Attrs::new());
        assert_eq!(o.kind, "ip_reservation");
        assert_eq!(o.id, "5b1e0a57-7d4c-4c2e-9d0e-0c1f3e2a4b6c");
        assert_eq!(o.attrs["zone"], json!("sv"));
        assert_eq!(o.attrs["address"], json!("147.28.2.7"));
        assert_eq!(o.attrs["tags"], json!({"team": "infra"}));
        assert_eq!(o.attrs.len(), 3, "{:?}", o.attrs);
        let owner = o.owner.expect("owned");
        assert_eq!(
            (owner.cluster.as_str(), owner.op.as_str()),
            ("prod", "op-7")
        );
        // Without user tags: none reported, unless the state records an empty map.
        let bare = json!({"id": "x", "type": "public_ipv4", "address": "147.28.0.2", "metro": {"code": "da"}});
        let o = reservation_object(&bare, &Attrs::new());
        assert!(!o.attrs.contains_key("tags"));
        assert!(o.owner.is_none());
        let o = reservation_object(&bare, &attrs(json!({"tags": {}})));
        assert_eq!(o.attrs["tags"], json!({}));
        assert!(is_reservation(&bare));
        assert!(!is_reservation(
            &json!({"id": "a", "address": "147.28.0.2", "assigned_to": {"href": "/d"}})
        ));
    }

    #[test]
    fn a_reservation_request_has_only_the_specs_fields() {
        let body = reservation_body(
            &attrs(json!({"zone": "ny", "tags": {"team": "infra"}})),
            &owner("ip_reservation.central[1]"),
        )
        .expect("body");
        assert_eq!(
            body,
            json!({
                "type": "public_ipv4",
                "quantity": 1,
                "metro": "ny",
                "tags": ["clusterform:cluster=prod", "clusterform:address=ip_reservation.central[1]",
                         "clusterform:op=op-7", "team=infra"],
                "details": "clusterform prod ip_reservation.central[1]",
                "fail_on_approval_required": true,
            })
        );
        let e = reservation_body(&Attrs::new(), &owner("ip_reservation.central[1]"))
            .expect_err("no zone");
        assert!(e.to_string().contains("`zone`"), "{e}");
    }

    #[test]
    fn a_pending_reservation_says_what_to_do() {
        let r =
            json!({"id": "r1", "type": "public_ipv4", "state": "pending", "metro": {"code": "am"}});
        let e = pending_error(&r, "reserve").expect("pending");
        let m = e.to_string();
        assert!(
            m.contains("`pending`") && m.contains("approv") && m.contains("quota"),
            "{m}"
        );
        assert!(pending_error(&json!({"state": "created"}), "reserve").is_none());
    }

    #[test]
    fn a_device_takes_its_reservation_as_its_public_ipv4() {
        let a = attrs(json!({
            "name": "prod-central-1", "size": "c3.small.x86", "zone": "ny", "role": "etcd",
            "network": "no-vlan", "ip_reservation": "5b1e0a57-7d4c-4c2e-9d0e-0c1f3e2a4b6c",
        }));
        let body = device_body(&a, &owner("machine.central[1]"), "da", true).expect("body");
        assert_eq!(
            body["ip_addresses"],
            json!([
                {"address_family": 4, "public": false},
                {"address_family": 4, "public": true, "cidr": 32,
                 "ip_reservations": ["5b1e0a57-7d4c-4c2e-9d0e-0c1f3e2a4b6c"]},
                {"address_family": 6, "public": true},
            ])
        );
        assert_eq!(body["metro"], json!("ny"));
        assert_eq!(body["operating_system"], json!("flatcar_stable"));
        let inputs = &body["customdata"][INPUTS];
        assert_eq!(
            inputs["ip_reservation"],
            json!("5b1e0a57-7d4c-4c2e-9d0e-0c1f3e2a4b6c")
        );
        // Without public addresses from Metal the reserved one is still asked for.
        let body = device_body(&a, &owner("machine.central[1]"), "da", false).expect("body");
        assert_eq!(body["ip_addresses"].as_array().map(Vec::len), Some(2));
        // Without a reservation: Metal's public addresses, or none.
        let plain = attrs(json!({"name": "w", "size": "m3.large.x86"}));
        let body = device_body(&plain, &owner("machine.workers[0]"), "da", true).expect("body");
        assert_eq!(
            body["ip_addresses"],
            json!([
                {"address_family": 4, "public": false},
                {"address_family": 4, "public": true},
                {"address_family": 6, "public": true},
            ])
        );
        assert_eq!(body["metro"], json!("da"));
        let body = device_body(&plain, &owner("machine.workers[0]"), "da", false).expect("body");
        assert_eq!(
            body["ip_addresses"],
            json!([{"address_family": 4, "public": false}])
        );
        // The device reports the reservation back from its customdata: plans stay no-op.
        let d = json!({
            "id": "d1", "hostname": "prod-central-1", "state": "active",
            "plan": {"slug": "c3.small.x86"}, "metro": {"code": "ny"},
            "customdata": body_customdata(&a),
        });
        let o = device_object(&d, &Attrs::new());
        assert_eq!(
            o.attrs["ip_reservation"],
            json!("5b1e0a57-7d4c-4c2e-9d0e-0c1f3e2a4b6c")
        );
        let e = device_body(
            &attrs(json!({"name": "x", "operating_system": "ubuntu"})),
            &owner("machine.x"),
            "da",
            true,
        )
        .expect_err("refused");
        assert!(e.to_string().contains("custom_ipxe"), "{e}");
    }

    fn body_customdata(a: &Attrs) -> Value {
        device_body(a, &owner("machine.central[1]"), "da", true).expect("body")["customdata"]
            .clone()
    }

    #[tokio::test]
    async fn a_network_without_a_vlan_is_a_record_that_reads_back_as_made() {
        let settings = Settings::parse(
            &serde_json::from_value(json!({
                "project_id": "00000000-0000-0000-0000-000000000001",
                "api_url": "http://127.0.0.1:9",
            }))
            .expect("settings"),
            |_| None,
        )
        .expect("settings");
        assert!(settings.vlan);
        let metal = Metal::new(settings).expect("provider");
        let inputs = attrs(json!({
            "name": "prod", "cidr": "10.10.0.0/22", "vlan": false, "dns": ["1.1.1.1"],
        }));
        // No token: any API call would fail, so none is made.
        let made = metal
            .create(&CreateRequest {
                kind: "network".into(),
                attrs: inputs.clone(),
                owner: owner("network.cluster"),
            })
            .await
            .expect("made");
        assert_eq!(made.id, NO_VLAN);
        assert_eq!(made.attrs, inputs);
        let read = metal
            .read(&ReadRequest {
                address: "network.cluster".parse().expect("address"),
                kind: "network".into(),
                id: made.id.clone(),
                prior: made.attrs.clone(),
            })
            .await
            .expect("read")
            .expect("there");
        assert_eq!(read.attrs, inputs);
        assert_eq!(read.attrs["vlan"], json!(false));
        // A VLAN keeps `vlan` among the inputs of its tag, so an explicit `true` reads back.
        let v = json!({
            "id": "v1", "description": "prod", "metro_code": "da", "vxlan": 1234,
            "tags": [format!("{INPUTS_TAG}{}", json!({"cidr": "10.10.0.0/22", "vlan": true}))],
        });
        assert_eq!(vlan_object(&v, &Attrs::new()).attrs["vlan"], json!(true));
        let e = metal
            .reader()
            .find_by_key("disk", "k")
            .await
            .expect_err("no such kind");
        assert!(e.to_string().contains("ip_reservation"), "{e}");
    }

    #[test]
    fn going_devices_are_gone() {
        assert!(going(&json!({"state": "deprovisioning"})));
        assert!(!going(&json!({"state": "failed"})));
    }
}
