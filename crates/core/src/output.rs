//! Outputs: values a cluster file declares for people and scripts (`[output.NAME]
//! value = "machine.bastion.address"`), read from the state after apply.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::{Address, ResourceState};

/// One `[output.NAME]` of a cluster file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputDecl {
    /// Its name.
    pub name: String,
    /// The resource: one instance (`machine.workers[0]`), or every instance of a counted
    /// one (`machine.workers`).
    pub target: Address,
    /// The attribute (`address`, `id`...).
    pub attr: String,
    /// `description`.
    pub description: Option<String>,
}

impl OutputDecl {
    /// Its value in `records`: the attribute of the one instance, or a list of every
    /// instance's in index order when the target has no index and the resource is
    /// counted. `None` while the state has no such record (not applied yet).
    pub fn value(&self, records: &BTreeMap<Address, ResourceState>) -> Option<Value> {
        let attr_of = |r: &ResourceState| -> Value {
            if self.attr == "id" {
                Value::String(r.id.clone())
            } else {
                r.attrs.get(&self.attr).cloned().unwrap_or(Value::Null)
            }
        };
        if let Some(r) = records.get(&self.target) {
            return Some(attr_of(r));
        }
        if self.target.index.is_some() {
            return None;
        }
        let mut instances: Vec<(u32, Value)> = records
            .values()
            .filter(|r| {
                r.address.kind == self.target.kind
                    && r.address.name == self.target.name
                    && r.address.index.is_some()
            })
            .map(|r| (r.address.index.unwrap_or_default(), attr_of(r)))
            .collect();
        if instances.is_empty() {
            return None;
        }
        instances.sort_by_key(|(i, _)| *i);
        Some(Value::Array(
            instances.into_iter().map(|(_, v)| v).collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(a: Address, address: &str) -> (Address, ResourceState) {
        let mut attrs = crate::Attrs::new();
        attrs.insert("address".into(), Value::String(address.into()));
        (
            a.clone(),
            ResourceState {
                address: a.clone(),
                provider: "sim".into(),
                id: format!("id-{a}"),
                attrs,
                dependencies: vec![],
            },
        )
    }

    #[test]
    fn one_instance_every_instance_in_order_or_nothing_yet() {
        let records: BTreeMap<Address, ResourceState> = [
            rec(Address::indexed("machine", "w", 10), "10.0.0.12"),
            rec(Address::indexed("machine", "w", 2), "10.0.0.4"),
            rec(Address::new("machine", "bastion"), "10.0.0.2"),
        ]
        .into_iter()
        .collect();
        let decl = |target: Address, attr: &str| OutputDecl {
            name: "x".into(),
            target,
            attr: attr.into(),
            description: None,
        };
        assert_eq!(
            decl(Address::new("machine", "bastion"), "address").value(&records),
            Some(Value::String("10.0.0.2".into()))
        );
        assert_eq!(
            decl(Address::new("machine", "w"), "address").value(&records),
            Some(serde_json::json!(["10.0.0.4", "10.0.0.12"])),
            "instances in index order, not key order"
        );
        assert_eq!(
            decl(Address::indexed("machine", "w", 2), "id").value(&records),
            Some(Value::String("id-machine.w[2]".into()))
        );
        assert_eq!(
            decl(Address::new("machine", "nope"), "address").value(&records),
            None
        );
    }
}
