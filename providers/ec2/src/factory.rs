//! How the registry knows `ec2`: its schema, version, construction, and the check it
//! makes before any API call (EC2 takes at most 16 KB of user data).

use std::sync::Arc;

use clusterform_core::Resource;
use clusterform_provider::{BuiltIn, Provider, ProviderFactory, ResourceProblem};

use crate::{Ec2Provider, encode_user_data};

/// The `ec2` provider's registry entry.
pub fn factory() -> Arc<dyn ProviderFactory> {
    let entry = BuiltIn::new(
        crate::schema(),
        env!("CARGO_PKG_VERSION"),
        |settings, _base_dir| {
            Ec2Provider::from_config(settings)
                .map(|p| Arc::new(p) as Arc<dyn Provider>)
                .map_err(|e| e.to_string())
        },
    )
    .with_checks(user_data_limit);
    Arc::new(entry)
}

/// Machines whose Ignition config is over EC2's 16 KB of user data.
fn user_data_limit(resources: &[&Resource]) -> Vec<ResourceProblem> {
    let mut found = Vec::new();
    for r in resources.iter().filter(|r| r.address.kind == "machine") {
        let Some(ud) = r.attrs.get("user_data").and_then(|v| v.as_str()) else {
            continue;
        };
        if let Err(message) = encode_user_data(&r.address.to_string(), ud) {
            found.push(ResourceProblem {
                address: r.address.clone(),
                message,
                label: "its Ignition config is too big for EC2".to_string(),
                help: Some(
                    "`clusterform render` shows the config; see docs/CONFIG.md, `user_data`"
                        .to_string(),
                ),
            });
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use clusterform_core::Attrs;

    fn machine(name: &str, user_data: &str) -> Resource {
        let mut attrs = Attrs::new();
        attrs.insert("user_data".into(), user_data.into());
        Resource {
            address: format!("machine.{name}").parse().expect("address"),
            provider: "ec2".into(),
            attrs,
            refs: Default::default(),
            depends_on: Vec::new(),
            deferred: Vec::new(),
        }
    }

    #[test]
    fn the_registry_entry_refuses_user_data_over_16_kb_before_any_call() {
        let f = factory();
        let (small, big) = (machine("a", "{}"), machine("b", &"x".repeat(16 * 1024 + 1)));
        let found = f.check_resources(&[&small, &big]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].address.to_string(), "machine.b");
        assert!(found[0].message.contains("16 KB"), "{}", found[0].message);
        assert_eq!(f.name(), "ec2");
    }
}
