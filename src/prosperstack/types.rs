//! The ProsperStack API's types: the API key, properties, subscribers and list pages.
//!
//! In: JSON bodies from the API (deserialised), and a key string from configuration.
//! Out: typed values for the client's callers; `NewProperty` and update bodies (serialised).
//! Invariants: an [`ApiKey`] is well-formed once parsed and never printed by `Debug`/`Display`;
//! unknown fields in responses are ignored, so API additions don't break the relay.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

const LIVE_PREFIX: &str = "key_";
const TEST_PREFIX: &str = "key_test_";

/// A ProsperStack API key. `Debug` and `Display` show only its kind, never the secret.
#[derive(Clone)]
pub struct ApiKey(String);

/// Why a string is not an API key. Never contains the key itself.
#[derive(Debug, thiserror::Error)]
#[error("invalid ProsperStack API key: {0}")]
pub struct InvalidApiKey(&'static str);

impl ApiKey {
    /// Accepts `key_…` (live) or `key_test_…` (test) with something after the prefix. Only
    /// printable ASCII without `:` is allowed, because the key travels as the basic-auth user
    /// name, where whitespace or a colon would silently change what is sent.
    pub fn parse(s: &str) -> Result<ApiKey, InvalidApiKey> {
        let rest = s
            .strip_prefix(TEST_PREFIX)
            .or_else(|| s.strip_prefix(LIVE_PREFIX))
            .ok_or(InvalidApiKey(
                "must start with key_ (live) or key_test_ (test)",
            ))?;
        if rest.is_empty() {
            return Err(InvalidApiKey("nothing after the key_ / key_test_ prefix"));
        }
        if s.chars().any(char::is_whitespace) {
            return Err(InvalidApiKey("contains whitespace"));
        }
        if !s.chars().all(|c| c.is_ascii_graphic() && c != ':') {
            return Err(InvalidApiKey(
                "contains characters other than printable ASCII, or a colon",
            ));
        }
        Ok(ApiKey(s.to_owned()))
    }

    /// The secret itself, for the `Authorization` header only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Test-mode keys have separate data and a separate rate limit.
    pub fn is_test(&self) -> bool {
        self.0.starts_with(TEST_PREFIX)
    }

    fn redacted(&self) -> &'static str {
        if self.is_test() {
            "key_test_…redacted"
        } else {
            "key_…redacted"
        }
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({})", self.redacted())
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.redacted())
    }
}

/// The type of a custom property; values must be formatted to match it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PropertyType {
    Text,
    Number,
    Boolean,
    Date,
}

/// A custom property definition, from `GET /v1/properties`.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Property {
    pub id: String,
    pub key: String,
    pub name: String,
    pub entity: String,
    #[serde(rename = "type")]
    pub kind: PropertyType,
    #[serde(default)]
    pub format: Option<String>,
}

/// The body of `POST /v1/properties`.
#[derive(Clone, Debug, Serialize)]
pub struct NewProperty {
    pub key: String,
    pub name: String,
    pub entity: String,
    #[serde(rename = "type")]
    pub kind: PropertyType,
}

/// One property's value on a subscriber.
#[derive(Clone, Debug, Deserialize)]
pub struct PropertyValue {
    pub property: Property,
    #[serde(default)]
    pub value: serde_json::Value,
}

/// A subscriber, with its current custom property values.
#[derive(Clone, Debug, Deserialize)]
pub struct Subscriber {
    pub id: String,
    pub email: String,
    /// The subscription platform's customer id (Stripe's `cus_…`).
    #[serde(default)]
    pub platform_id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub properties: Vec<PropertyValue>,
}

impl Subscriber {
    /// Current values by property key (the keys an update body uses), to skip no-op updates.
    pub fn values(&self) -> serde_json::Map<String, serde_json::Value> {
        self.properties
            .iter()
            .map(|pv| (pv.property.key.clone(), pv.value.clone()))
            .collect()
    }
}

/// One page of a list endpoint; `next_cursor` is `None` on the last page.
#[derive(Clone, Debug, Deserialize)]
pub struct Page<T> {
    pub data: Vec<T>,
    #[serde(default, deserialize_with = "cursor")]
    pub next_cursor: Option<String>,
}

/// The API reference's samples show `"next_cursor": "null"` (a string). Whether that is the
/// real wire format or a rendering slip, reading it as a cursor would ask for `cursor=null`, so
/// the string `"null"` and the empty string both mean "no more pages".
fn cursor<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let raw = Option::<String>::deserialize(deserializer)?;
    Ok(raw.filter(|c| !c.is_empty() && c != "null"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys must carry a known prefix, something after it, and no whitespace or colon.
    #[test]
    fn api_key_parse_table() {
        let cases = [
            ("key_LSdJXBrN3SP7bdJrQSMp2eZK", Some(false)),
            ("key_test_LSdJXBrN3SP7bdJrQSMp2eZK", Some(true)),
            ("key_x", Some(false)),
            ("key_", None),
            ("key_test_", None),
            ("sk_live_abc", None),
            ("", None),
            ("key_abc def", None),
            ("key_abc\n", None),
            (" key_abc", None),
            ("key_a:b", None),
            ("key_é", None),
        ];
        for (input, want) in cases {
            let got = ApiKey::parse(input).ok().map(|k| k.is_test());
            assert_eq!(got, want, "{input:?}");
        }
    }

    /// Debug and Display show only the key's kind; expose() gives the secret back.
    #[test]
    fn api_key_never_prints_the_secret() {
        let key = ApiKey::parse("key_test_SECRET123").expect("valid key");
        assert_eq!(format!("{key:?}"), "ApiKey(key_test_…redacted)");
        assert!(!format!("{key}").contains("SECRET123"));
        assert_eq!(key.expose(), "key_test_SECRET123");
        let live = ApiKey::parse("key_SECRET456").expect("valid key");
        assert_eq!(format!("{live:?}"), "ApiKey(key_…redacted)");
    }

    /// The parse error names the problem and never echoes the input.
    #[test]
    fn invalid_key_error_does_not_echo_input() {
        let err = ApiKey::parse("key_has space SECRET").expect_err("invalid");
        assert!(err.to_string().contains("whitespace"));
        assert!(!err.to_string().contains("SECRET"));
    }

    /// A subscriber from the API reference's sample decodes, and values() is keyed by property key.
    #[test]
    fn subscriber_sample_decodes() {
        let body = serde_json::json!({
            "id": "subr_dRiytWmkVtSBt9mOpRaC0ca0",
            "platform_id": "cus_Jax42BBWGOWuDp",
            "name": "Jane Doe",
            "email": "jane@example.com",
            "status": "saved",
            "properties": [{
                "property": {
                    "id": "prop_jrtpyZs1httwFFIl7V80cHwf",
                    "key": "number_of_contacts",
                    "name": "Number of contacts",
                    "entity": "subscriber",
                    "type": "number",
                    "format": "number"
                },
                "value": 5800,
                "formatted_value": "5,800"
            }],
            "created_at": "2019-08-24T14:15:22Z",
            "updated_at": "2019-08-24T14:15:22Z"
        });
        let s: Subscriber = serde_json::from_value(body).expect("sample decodes");
        assert_eq!(
            s.values().get("number_of_contacts"),
            Some(&serde_json::json!(5800))
        );
        assert_eq!(s.properties[0].property.kind, PropertyType::Number);
    }

    /// A null, missing, empty or "null" next_cursor ends the listing; a real one continues it.
    #[test]
    fn page_cursor_table() {
        let cases = [
            (r#"{"data": [], "next_cursor": null}"#, None),
            (r#"{"data": []}"#, None),
            (r#"{"data": [], "next_cursor": "null"}"#, None),
            (r#"{"data": [], "next_cursor": ""}"#, None),
            (r#"{"data": [], "next_cursor": "c_2"}"#, Some("c_2")),
        ];
        for (body, want) in cases {
            let page: Page<Property> = serde_json::from_str(body).expect("page decodes");
            assert_eq!(page.next_cursor.as_deref(), want, "{body}");
        }
    }

    /// Property types use the API's lowercase names both ways.
    #[test]
    fn property_type_wire_names() {
        let p = NewProperty {
            key: "vip".into(),
            name: "VIP".into(),
            entity: "subscriber".into(),
            kind: PropertyType::Boolean,
        };
        let json = serde_json::to_value(&p).expect("serialises");
        assert_eq!(json["type"], "boolean");
        let kind: PropertyType = serde_json::from_str("\"date\"").expect("decodes");
        assert_eq!(kind, PropertyType::Date);
    }
}
