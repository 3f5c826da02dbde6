//! Resource addresses: `kind.name` or `kind.name[index]`, stable across runs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The address of one resource instance, e.g. `machine.workers[4]` or `network.main`.
///
/// Ordering is by kind, then name, then index (numerically), so `workers[2]` sorts
/// before `workers[10]`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Address {
    /// Resource kind: `network`, `subnet`, `machine`, `volume`...
    pub kind: String,
    /// Name given in the configuration (`workers`, `central`, `main`).
    pub name: String,
    /// Instance index when the resource has a `count`.
    pub index: Option<u32>,
}

/// Why a string is not a valid address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// The string has no `.` between kind and name.
    #[error("`{0}` is not an address: expected `kind.name` or `kind.name[index]`")]
    Shape(String),
    /// The kind or name uses characters outside `[a-z0-9_-]` or does not start with a letter.
    #[error(
        "`{0}` is not an address: kind and name must start with a letter and use only a-z, 0-9, `-` and `_`"
    )]
    Characters(String),
    /// The index is not a non-negative integer.
    #[error("`{0}` is not an address: the index in `[...]` must be a whole number")]
    Index(String),
}

impl Address {
    /// An address without an index.
    pub fn new(kind: impl Into<String>, name: impl Into<String>) -> Self {
        Address {
            kind: kind.into(),
            name: name.into(),
            index: None,
        }
    }

    /// An address of one counted instance.
    pub fn indexed(kind: impl Into<String>, name: impl Into<String>, index: u32) -> Self {
        Address {
            kind: kind.into(),
            name: name.into(),
            index: Some(index),
        }
    }

    /// The same address without its index (`machine.workers[3]` -> `machine.workers`).
    pub fn base(&self) -> Address {
        Address::new(self.kind.clone(), self.name.clone())
    }

    /// True when `self` names `other`: equal, or `self` has no index and `other` is an
    /// instance of it (`machine.workers` names `machine.workers[3]`).
    pub fn names(&self, other: &Address) -> bool {
        self.kind == other.kind
            && self.name == other.name
            && (self.index.is_none() || self.index == other.index)
    }
}

fn valid_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, rest) = s
            .split_once('.')
            .ok_or_else(|| AddressError::Shape(s.to_string()))?;
        let (name, index) = match rest.split_once('[') {
            Some((name, idx)) => {
                let idx = idx
                    .strip_suffix(']')
                    .ok_or_else(|| AddressError::Index(s.to_string()))?;
                let idx: u32 = idx
                    .parse()
                    .map_err(|_| AddressError::Index(s.to_string()))?;
                (name, Some(idx))
            }
            None => (rest, None),
        };
        if !valid_ident(kind) || !valid_ident(name) {
            return Err(AddressError::Characters(s.to_string()));
        }
        Ok(Address {
            kind: kind.to_string(),
            name: name.to_string(),
            index,
        })
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.index {
            Some(i) => write!(f, "{}.{}[{}]", self.kind, self.name, i),
            None => write!(f, "{}.{}", self.kind, self.name),
        }
    }
}

impl Serialize for Address {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for s in ["network.main", "machine.workers[4]", "machine.central-a[0]"] {
            let a: Address = s.parse().expect("valid");
            assert_eq!(a.to_string(), s);
        }
    }

    #[test]
    fn rejects_bad_shapes() {
        assert!(matches!(
            "machine".parse::<Address>(),
            Err(AddressError::Shape(_))
        ));
        assert!(matches!(
            "machine.w[x]".parse::<Address>(),
            Err(AddressError::Index(_))
        ));
        assert!(matches!(
            "machine.w[1".parse::<Address>(),
            Err(AddressError::Index(_))
        ));
        assert!(matches!(
            "Machine.w".parse::<Address>(),
            Err(AddressError::Characters(_))
        ));
        assert!("t3.micro".parse::<Address>().is_ok());
    }

    #[test]
    fn orders_indexes_numerically() {
        let a = Address::indexed("machine", "w", 2);
        let b = Address::indexed("machine", "w", 10);
        assert!(a < b);
    }

    #[test]
    fn base_names_instances() {
        let base = Address::new("machine", "w");
        assert!(base.names(&Address::indexed("machine", "w", 3)));
        assert!(!Address::indexed("machine", "w", 1).names(&Address::indexed("machine", "w", 3)));
    }
}
