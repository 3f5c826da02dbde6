//! Provider schemas: which resource kinds a provider manages and, per attribute, its
//! type and whether a change can be applied in place or forces a replacement.

use serde::{Deserialize, Serialize};

/// The type of an attribute value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttrType {
    /// A string.
    String,
    /// A whole number.
    Int,
    /// `true` or `false`.
    Bool,
    /// A list of strings.
    StringList,
    /// A table of string values.
    Map,
    /// The provider id of another resource, written as its address (`network.main`).
    Reference,
}

impl AttrType {
    /// How the type is named in error messages.
    pub fn describe(self) -> &'static str {
        match self {
            AttrType::String => "a string",
            AttrType::Int => "an integer",
            AttrType::Bool => "a boolean",
            AttrType::StringList => "a list of strings",
            AttrType::Map => "a table of strings",
            AttrType::Reference => "a reference to a resource (`kind.name`)",
        }
    }

    /// True when `v` has this type (references are checked as strings here).
    pub fn accepts(self, v: &serde_json::Value) -> bool {
        use serde_json::Value as V;
        match self {
            AttrType::String | AttrType::Reference => v.is_string(),
            AttrType::Int => v.is_i64() || v.is_u64(),
            AttrType::Bool => v.is_boolean(),
            AttrType::StringList => v
                .as_array()
                .is_some_and(|a| a.iter().all(|x| matches!(x, V::String(_)))),
            AttrType::Map => v
                .as_object()
                .is_some_and(|m| m.values().all(|x| matches!(x, V::String(_)))),
        }
    }
}

/// One attribute of a resource kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttrSchema {
    /// Its name in `cluster.toml` and in the state.
    pub name: String,
    /// Its type.
    pub ty: AttrType,
    /// The user may set it.
    pub input: bool,
    /// The user must set it.
    pub required: bool,
    /// The provider sets it (when the user may also set it, it is optional + computed).
    pub computed: bool,
    /// A change replaces the object instead of updating it in place.
    pub force_new: bool,
    /// Shown as `(sensitive)` in plans and never logged.
    pub sensitive: bool,
    /// One line for `validate` errors and docs.
    pub doc: String,
    /// What an in-place change of it implies (e.g. "restarts the machine"), shown
    /// beside the change in a plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_note: Option<String>,
}

impl AttrSchema {
    fn base(name: &str, ty: AttrType, doc: &str) -> Self {
        AttrSchema {
            name: name.to_string(),
            ty,
            input: true,
            required: false,
            computed: false,
            force_new: false,
            sensitive: false,
            doc: doc.to_string(),
            update_note: None,
        }
    }
    /// A required input.
    pub fn required(name: &str, ty: AttrType, doc: &str) -> Self {
        AttrSchema {
            required: true,
            ..Self::base(name, ty, doc)
        }
    }
    /// An optional input.
    pub fn optional(name: &str, ty: AttrType, doc: &str) -> Self {
        Self::base(name, ty, doc)
    }
    /// An output the provider computes; the user cannot set it.
    pub fn computed(name: &str, ty: AttrType, doc: &str) -> Self {
        AttrSchema {
            input: false,
            computed: true,
            ..Self::base(name, ty, doc)
        }
    }
    /// An optional input that the provider fills in when the user leaves it out.
    pub fn optional_computed(name: &str, ty: AttrType, doc: &str) -> Self {
        AttrSchema {
            computed: true,
            ..Self::base(name, ty, doc)
        }
    }
    /// Mark: a change forces a replacement.
    pub fn force_new(mut self) -> Self {
        self.force_new = true;
        self
    }
    /// Mark: an in-place change of it has this effect, noted in plans.
    pub fn update_note(mut self, note: &str) -> Self {
        self.update_note = Some(note.to_string());
        self
    }
    /// Mark: never shown nor logged.
    pub fn sensitive(mut self) -> Self {
        self.sensitive = true;
        self
    }
}

/// The attributes of one resource kind of one provider.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KindSchema {
    /// `network`, `subnet`, `machine`, `volume`...
    pub kind: String,
    /// What it is, in one line.
    pub doc: String,
    /// Its attributes. `id` is implicit: every object has one, computed.
    pub attrs: Vec<AttrSchema>,
}

impl KindSchema {
    /// The attribute called `name`.
    pub fn attr(&self, name: &str) -> Option<&AttrSchema> {
        self.attrs.iter().find(|a| a.name == name)
    }

    /// Names of the attributes a user may set, for "expected one of" messages.
    pub fn input_names(&self) -> Vec<&str> {
        self.attrs
            .iter()
            .filter(|a| a.input)
            .map(|a| a.name.as_str())
            .collect()
    }
}

/// Everything one provider manages.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProviderSchema {
    /// The provider's name in `cluster.toml` (`sim`, `ec2`...).
    pub provider: String,
    /// Its resource kinds.
    pub kinds: Vec<KindSchema>,
}

impl ProviderSchema {
    /// The schema of `kind`, if this provider manages it.
    pub fn kind(&self, kind: &str) -> Option<&KindSchema> {
        self.kinds.iter().find(|k| k.kind == kind)
    }

    /// Names of the kinds, for "expected one of" messages.
    pub fn kind_names(&self) -> Vec<&str> {
        self.kinds.iter().map(|k| k.kind.as_str()).collect()
    }
}
