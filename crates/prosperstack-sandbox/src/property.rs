//! The property model: entity, type and format enums, the stored property, and the validation of a
//! create-property request. In: a JSON body or the parts of one; out: a checked [`NewProperty`] or a
//! 400 naming the field. Enum values are matched exactly (no case folding), as JSON APIs do.

use rand::distributions::Alphanumeric;
use rand::Rng;
use serde_json::{Map, Value};

use super::{PropertyView, SandboxError};

/// Which kind of object a property is attached to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Entity {
    Subscriber,
    Subscription,
}

impl Entity {
    pub(crate) const EXPECTED: &'static str = r#"one of "subscriber", "subscription""#;

    pub(crate) fn parse(raw: &str) -> Option<Entity> {
        match raw {
            "subscriber" => Some(Entity::Subscriber),
            "subscription" => Some(Entity::Subscription),
            _ => None,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Entity::Subscriber => "subscriber",
            Entity::Subscription => "subscription",
        }
    }
}

/// The type of a property's values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Text,
    Number,
    Boolean,
    Date,
}

impl Kind {
    const EXPECTED: &'static str = r#"one of "text", "number", "boolean", "date""#;

    fn parse(raw: &str) -> Option<Kind> {
        match raw {
            "text" => Some(Kind::Text),
            "number" => Some(Kind::Number),
            "boolean" => Some(Kind::Boolean),
            "date" => Some(Kind::Date),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Kind::Text => "text",
            Kind::Number => "number",
            Kind::Boolean => "boolean",
            Kind::Date => "date",
        }
    }
}

/// How a number property's values are displayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    Number,
    Currency,
}

impl Format {
    const EXPECTED: &'static str = r#"one of "number", "currency""#;

    fn parse(raw: &str) -> Option<Format> {
        match raw {
            "number" => Some(Format::Number),
            "currency" => Some(Format::Currency),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Format::Number => "number",
            Format::Currency => "currency",
        }
    }
}

/// A stored property. Deleted properties are kept as tombstones: subscribers keep their values
/// (the reference says deleting a property does not delete stored data) and cursors that point at
/// them stay valid.
#[derive(Clone, Debug)]
pub(crate) struct Property {
    pub(crate) id: String,
    pub(crate) key: String,
    pub(crate) name: String,
    pub(crate) entity: Entity,
    pub(crate) kind: Kind,
    pub(crate) format: Option<Format>,
    pub(crate) deleted: bool,
}

impl Property {
    pub(crate) fn new(new: NewProperty) -> Property {
        Property {
            id: new_id("prop_", 24),
            key: new.key,
            name: new.name,
            entity: new.entity,
            kind: new.kind,
            format: new.format,
            deleted: false,
        }
    }

    /// The property as the API and the admin routes show it.
    pub(crate) fn view(&self) -> PropertyView {
        PropertyView {
            id: self.id.clone(),
            key: self.key.clone(),
            name: self.name.clone(),
            entity: self.entity.as_str().to_string(),
            kind: self.kind.as_str().to_string(),
            format: self.format.map(|f| f.as_str().to_string()),
        }
    }
}

/// A validated request to create a property.
#[derive(Clone, Debug)]
pub(crate) struct NewProperty {
    pub(crate) key: String,
    pub(crate) name: String,
    pub(crate) entity: Entity,
    pub(crate) kind: Kind,
    pub(crate) format: Option<Format>,
}

const FIELDS: [&str; 5] = ["key", "name", "entity", "type", "format"];

impl NewProperty {
    /// Validates a `POST /v1/properties` body: an object with only the documented fields.
    pub(crate) fn from_json(body: &Value) -> Result<NewProperty, SandboxError> {
        let object = body
            .as_object()
            .ok_or_else(|| invalid("the body must be a JSON object"))?;
        reject_unknown_fields(object)?;
        let format = match object.get("format") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.as_str()),
            Some(_) => return Err(invalid(r#""format" must be a string or null"#)),
        };
        NewProperty::from_parts(
            required_str(object, "key")?,
            required_str(object, "name")?,
            required_str(object, "entity")?,
            required_str(object, "type")?,
            format,
        )
    }

    /// Validates the parts of a property: non-empty key and name, known entity, type and format,
    /// and a format only on number properties.
    pub(crate) fn from_parts(
        key: &str,
        name: &str,
        entity: &str,
        kind: &str,
        format: Option<&str>,
    ) -> Result<NewProperty, SandboxError> {
        let key = non_empty("key", key)?;
        let name = non_empty("name", name)?;
        let entity = Entity::parse(entity)
            .ok_or_else(|| invalid(&format!(r#""entity" must be {}"#, Entity::EXPECTED)))?;
        let kind = Kind::parse(kind)
            .ok_or_else(|| invalid(&format!(r#""type" must be {}"#, Kind::EXPECTED)))?;
        let format = format
            .map(|f| {
                Format::parse(f)
                    .ok_or_else(|| invalid(&format!(r#""format" must be {}"#, Format::EXPECTED)))
            })
            .transpose()?;
        if format.is_some() && kind != Kind::Number {
            return Err(invalid(
                r#""format" is only allowed on properties of type "number""#,
            ));
        }
        Ok(NewProperty {
            key,
            name,
            entity,
            kind,
            format,
        })
    }

    /// A property from parts already typed by the caller (the demo seed), so nothing to validate.
    pub(crate) fn demo(
        key: &str,
        name: &str,
        entity: Entity,
        kind: Kind,
        format: Option<Format>,
    ) -> NewProperty {
        NewProperty {
            key: key.to_string(),
            name: name.to_string(),
            entity,
            kind,
            format,
        }
    }
}

fn reject_unknown_fields(object: &Map<String, Value>) -> Result<(), SandboxError> {
    match object.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        Some(unknown) => Err(invalid(&format!(r#"Unknown field "{unknown}""#))),
        None => Ok(()),
    }
}

fn required_str<'a>(object: &'a Map<String, Value>, field: &str) -> Result<&'a str, SandboxError> {
    match object.get(field) {
        None | Some(Value::Null) => Err(invalid(&format!(r#""{field}" is required"#))),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(invalid(&format!(r#""{field}" must be a string"#))),
    }
}

fn non_empty(field: &str, value: &str) -> Result<String, SandboxError> {
    if value.trim().is_empty() {
        return Err(invalid(&format!(r#""{field}" must not be empty"#)));
    }
    Ok(value.to_string())
}

fn invalid(message: &str) -> SandboxError {
    SandboxError::Invalid(message.to_string())
}

/// A fresh id: `prefix` and `len` random ASCII letters and digits, as ProsperStack's ids look.
pub(crate) fn new_id(prefix: &str, len: usize) -> String {
    let random: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect();
    format!("{prefix}{random}")
}
