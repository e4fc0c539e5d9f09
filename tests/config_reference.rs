//! The configuration reference (`docs/configuration.md`) names every key the configuration
//! accepts: the keys are read off the configuration's own types (the fields serde asks for
//! as it deserializes them), so a key added to the code and not to the reference fails here.

use std::collections::BTreeSet;

use sentinel_gateway::config::Config;
use serde::de::{
    self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, SeqAccess, Visitor,
};

/// A deserializer that answers every request with a value of its own making and records the
/// dotted path of every struct field it is asked for.
struct Probe<'a> {
    path: String,
    keys: &'a std::cell::RefCell<BTreeSet<String>>,
}

#[derive(Debug)]
struct Never(String);

impl std::fmt::Display for Never {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Never {}
impl de::Error for Never {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Never(msg.to_string())
    }
}

struct Fields<'a> {
    probe: &'a Probe<'a>,
    fields: &'static [&'static str],
    next: usize,
}

impl<'de> MapAccess<'de> for Fields<'_> {
    type Error = Never;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Never> {
        match self.fields.get(self.next) {
            Some(name) => seed.deserialize((*name).into_deserializer()).map(Some),
            None => Ok(None),
        }
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Never> {
        let name = self.fields[self.next];
        self.next += 1;
        let path = if self.probe.path.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.probe.path)
        };
        self.probe.keys.borrow_mut().insert(path.clone());
        seed.deserialize(Probe {
            path,
            keys: self.probe.keys,
        })
    }
}

struct One<'a> {
    probe: Option<Probe<'a>>,
}

impl<'de> SeqAccess<'de> for One<'_> {
    type Error = Never;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Never> {
        match self.probe.take() {
            Some(probe) => seed.deserialize(probe).map(Some),
            None => Ok(None),
        }
    }
}

impl<'de> Deserializer<'de> for Probe<'_> {
    type Error = Never;
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Never> {
        visitor.visit_str("")
    }
    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Never> {
        visitor.visit_bool(false)
    }
    fn deserialize_u8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Never> {
        v.visit_u64(1)
    }
    fn deserialize_u16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Never> {
        v.visit_u64(1)
    }
    fn deserialize_u32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Never> {
        v.visit_u64(1)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Never> {
        v.visit_u64(1)
    }
    fn deserialize_i8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Never> {
        v.visit_i64(1)
    }
    fn deserialize_i16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Never> {
        v.visit_i64(1)
    }
    fn deserialize_i32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Never> {
        v.visit_i64(1)
    }
    fn deserialize_i64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Never> {
        v.visit_i64(1)
    }
    fn deserialize_f32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Never> {
        v.visit_f64(1.0)
    }
    fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Never> {
        v.visit_f64(1.0)
    }
    fn deserialize_char<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Never> {
        v.visit_char('x')
    }
    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Never> {
        v.visit_str("")
    }
    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Never> {
        v.visit_str("")
    }
    fn deserialize_bytes<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Never> {
        v.visit_bytes(b"")
    }
    fn deserialize_byte_buf<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Never> {
        v.visit_bytes(b"")
    }
    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Never> {
        v.visit_some(self)
    }
    fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Never> {
        v.visit_unit()
    }
    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, Never> {
        v.visit_unit()
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, Never> {
        v.visit_newtype_struct(self)
    }
    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Never> {
        v.visit_seq(One { probe: Some(self) })
    }
    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, v: V) -> Result<V::Value, Never> {
        v.visit_seq(One { probe: Some(self) })
    }
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: usize,
        v: V,
    ) -> Result<V::Value, Never> {
        v.visit_seq(One { probe: Some(self) })
    }
    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Never> {
        v.visit_map(de::value::MapDeserializer::new(std::iter::empty::<(
            String,
            String,
        )>()))
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Never> {
        v.visit_map(Fields {
            probe: &self,
            fields,
            next: 0,
        })
    }
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Never> {
        v.visit_enum(variants[0].into_deserializer())
    }
    fn deserialize_identifier<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Never> {
        v.visit_str("")
    }
    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Never> {
        v.visit_unit()
    }
}

/// Every key the configuration accepts, dotted (`[[routes]]` keys as `routes.prefix`).
fn accepted_keys() -> BTreeSet<String> {
    let keys = std::cell::RefCell::new(BTreeSet::new());
    let probe = Probe {
        path: String::new(),
        keys: &keys,
    };
    let _: Config = serde::Deserialize::deserialize(probe).expect("the probe reads every field");
    let keys = keys.into_inner();
    // Tables themselves are not keys: a path that prefixes another is a table.
    keys.iter()
        .filter(|k| !keys.iter().any(|other| other.starts_with(&format!("{k}."))))
        .cloned()
        .collect()
}

#[test]
fn the_configuration_reference_names_every_key() {
    let reference = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/configuration.md"
    ))
    .expect("docs/configuration.md");
    let keys = accepted_keys();
    assert!(keys.len() > 60, "{keys:?}");
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| !reference.contains(&format!("`{k}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/configuration.md does not name: {missing:?}"
    );
}

#[test]
fn every_environment_alias_names_a_key_and_is_in_the_reference() {
    let reference = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/configuration.md"
    ))
    .expect("docs/configuration.md");
    let keys = accepted_keys();
    for (name, key) in sentinel_gateway::config::ENV_ALIASES {
        assert!(keys.contains(*key), "{name} names {key}, which is no key");
        assert!(
            reference.contains(&format!("`{name}`")),
            "docs/configuration.md does not name {name}"
        );
    }
}
