//! The provider called directly (no binary): teardown waits out `DependencyViolation`
//! and gives up after `teardown_timeout_s` with a clear error; a batched read answers
//! for every object of every kind, gone ones as None.

use std::time::{Duration, Instant};

use clusterform_core::{Address, Attrs};
use clusterform_provider::{
    CreateRequest, DeleteRequest, Object, Ownership, Provider, ProviderConfig, ProviderError,
    ReadRequest, Reader,
};
use clusterform_provider_ec2::{Ec2Provider, Ec2Settings};
use serde_json::json;

use crate::support::{MOTO_ACCOUNT, REGION, f, unique};

fn provider(url: &str, teardown_s: u64) -> Ec2Provider {
    let cfg: ProviderConfig = serde_json::from_value(json!({
        "region": REGION, "endpoint": url, "ami_owner": MOTO_ACCOUNT,
        "poll_interval_ms": 50, "teardown_timeout_s": teardown_s
    }))
    .expect("config");
    let settings = Ec2Settings::from_provider_config(&cfg).expect("settings");
    Ec2Provider::with_client(settings, sdk(url))
}

fn owner(cluster: &str, address: &str) -> Ownership {
    Ownership {
        cluster: cluster.into(),
        address: address.parse().expect("address"),
        op: format!("cf-{}", unique("op")),
        expires_at: None,
        created_by: None,
        created_at: None,
    }
}

fn attrs(v: serde_json::Value) -> Attrs {
    serde_json::from_value(v).expect("attrs")
}

/// Create the cluster's `network.main` (a VPC and its parts) with these attributes
/// besides its name.
async fn network(p: &Ec2Provider, cluster: &str, extra: serde_json::Value) -> Object {
    let mut a = attrs(extra);
    a.insert("name".into(), json!(format!("{cluster}-main")));
    p.create(&CreateRequest {
        kind: "network".into(),
        attrs: a,
        owner: owner(cluster, "network.main"),
    })
    .await
    .expect("network")
}

fn sdk(url: &str) -> aws_sdk_ec2::Client {
    let conf = aws_sdk_ec2::Config::builder()
        .behavior_version(aws_sdk_ec2::config::BehaviorVersion::latest())
        .region(aws_sdk_ec2::config::Region::new(REGION))
        .endpoint_url(url)
        .credentials_provider(aws_sdk_ec2::config::Credentials::new(
            "testing", "testing", None, None, "static",
        ))
        .build();
    aws_sdk_ec2::Client::from_conf(conf)
}

#[tokio::test]
async fn teardown_waits_out_dependency_violation() {
    let url = crate::need_moto!();
    let p = provider(&url, 30);
    let cluster = unique("dv");
    let net = network(&p, &cluster, json!({"cidr": "10.9.0.0/16"})).await;
    assert!(net.attrs.contains_key("security_group"), "{:?}", net.attrs);
    assert_eq!(net.attrs.get("ssh_cidrs"), Some(&json!([])));
    // Something clusterform does not know about keeps the VPC busy for a while.
    let ec2 = sdk(&url);
    let foreign = ec2
        .create_subnet()
        .vpc_id(&net.id)
        .cidr_block("10.9.0.0/24")
        .send()
        .await
        .expect("CreateSubnet")
        .subnet()
        .and_then(|s| s.subnet_id())
        .expect("id")
        .to_string();
    let freer = tokio::spawn({
        let ec2 = ec2.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            ec2.delete_subnet().subnet_id(foreign).send().await
        }
    });
    let started = Instant::now();
    p.delete(&DeleteRequest {
        address: Address::new("network", "main"),
        kind: "network".into(),
        id: net.id.clone(),
        idempotency_key: "cf-x".into(),
        force: false,
    })
    .await
    .expect("delete succeeds once the subnet is gone");
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "it waited"
    );
    freer.await.expect("join").expect("DeleteSubnet");
    let left = ec2
        .describe_vpcs()
        .filters(f("vpc-id", &net.id))
        .send()
        .await
        .expect("DescribeVpcs");
    assert!(left.vpcs().is_empty());
}

#[tokio::test]
async fn teardown_gives_up_after_its_timeout_naming_the_object() {
    let url = crate::need_moto!();
    let p = provider(&url, 1);
    let cluster = unique("dt");
    let net = network(&p, &cluster, json!({"cidr": "10.8.0.0/16"})).await;
    let ec2 = sdk(&url);
    let foreign = ec2
        .create_subnet()
        .vpc_id(&net.id)
        .cidr_block("10.8.0.0/24")
        .send()
        .await
        .expect("CreateSubnet")
        .subnet()
        .and_then(|s| s.subnet_id())
        .expect("id")
        .to_string();
    let req = DeleteRequest {
        address: Address::new("network", "main"),
        kind: "network".into(),
        id: net.id.clone(),
        idempotency_key: "cf-y".into(),
        force: false,
    };
    let e = p.delete(&req).await.expect_err("still in use");
    assert!(
        matches!(&e, ProviderError::Permanent(m) if m.contains("still in use") && m.contains(&net.id)),
        "{e}"
    );
    ec2.delete_subnet()
        .subnet_id(foreign)
        .send()
        .await
        .expect("DeleteSubnet");
    p.delete(&req).await.expect("then it goes");
}

#[tokio::test]
async fn batched_read_answers_every_kind_and_gone_objects() {
    let url = crate::need_moto!();
    let p = provider(&url, 30);
    let cluster = unique("rb");
    let net = network(
        &p,
        &cluster,
        json!({"cidr": "10.7.0.0/16", "gateway": "10.7.0.1", "dns": ["10.7.0.2"]}),
    )
    .await;
    let sub = p
        .create(&CreateRequest {
            kind: "subnet".into(),
            attrs: attrs(json!({"name": format!("{cluster}-a"), "network": net.id, "cidr": "10.7.0.0/20", "zone": "eu-west-1a", "tags": {"team": "infra"}})),
            owner: owner(&cluster, "subnet.a"),
        })
        .await
        .expect("subnet");
    assert_eq!(sub.attrs.get("route_table"), net.attrs.get("route_table"));
    let req = |kind: &str, id: &str| ReadRequest {
        address: Address::new(kind, "x"),
        kind: kind.into(),
        id: id.into(),
        prior: Attrs::new(),
    };
    let answers = p
        .read_batch(&[
            req("network", &net.id),
            req("subnet", &sub.id),
            req("machine", "i-00000000000000000"),
            req("subnet", "subnet-00000000"),
        ])
        .await;
    let objs: Vec<_> = answers.into_iter().map(|a| a.expect("read")).collect();
    assert_eq!(
        objs[0].as_ref().map(|o| &o.attrs),
        Some(&net.attrs),
        "same as created"
    );
    assert_eq!(objs[1].as_ref().map(|o| &o.attrs), Some(&sub.attrs));
    assert!(objs[2].is_none() && objs[3].is_none());
    let found = p
        .find_by_key("subnet", &sub.owner.as_ref().expect("owner").op)
        .await
        .expect("find");
    assert_eq!(found.map(|o| o.id), Some(sub.id.clone()));
    let listed = p.list_cluster(&cluster).await.expect("list");
    let mut ids: Vec<&str> = listed.iter().map(|o| o.id.as_str()).collect();
    ids.sort();
    let mut want = vec![net.id.as_str(), sub.id.as_str()];
    want.sort();
    assert_eq!(ids, want);
    for (kind, id) in [("subnet", &sub.id), ("network", &net.id)] {
        p.delete(&DeleteRequest {
            address: Address::new(kind, "x"),
            kind: kind.into(),
            id: id.clone(),
            idempotency_key: "cf-z".into(),
            force: false,
        })
        .await
        .expect("delete");
    }
    assert!(p.list_cluster(&cluster).await.expect("list").is_empty());
}

/// Regression: a delete retried after a `DetachInternetGateway` whose answer was lost
/// finds the gateway detached; it must still delete it (it looked only at attached
/// gateways, and left this one behind).
#[tokio::test]
async fn delete_removes_a_gateway_already_detached() {
    let url = crate::need_moto!();
    let p = provider(&url, 30);
    let cluster = unique("gw");
    let net = network(&p, &cluster, json!({"cidr": "10.6.0.0/16"})).await;
    let igw = net.attrs["internet_gateway"]
        .as_str()
        .expect("igw")
        .to_string();
    let ec2 = sdk(&url);
    ec2.detach_internet_gateway()
        .internet_gateway_id(&igw)
        .vpc_id(&net.id)
        .send()
        .await
        .expect("detach");
    p.delete(&DeleteRequest {
        address: Address::new("network", "main"),
        kind: "network".into(),
        id: net.id.clone(),
        idempotency_key: "cf-w".into(),
        force: false,
    })
    .await
    .expect("delete");
    let left = ec2
        .describe_internet_gateways()
        .filters(f("tag:clusterform:cluster", &cluster))
        .send()
        .await
        .expect("DescribeInternetGateways");
    assert!(left.internet_gateways().is_empty(), "{left:?}");
}
