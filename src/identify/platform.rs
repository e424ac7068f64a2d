//! Platform IDs: the subscription platform's customer id (Stripe's `cus_…`) a subscriber can be
//! found by when Segment knows no email for it.
//!
//! In: the `mapping.platform_id_trait` setting (a trait name, or `userId`) and an event's
//! `userId` and traits. Out: the event's platform ID, and the queue key of a subscriber known
//! only by it ([`platform_id_key`]).
//! Stays true: a platform-ID key cannot be an email (`:` is not allowed in an unquoted local
//! part, and an email that starts with the prefix is refused as an email), and it is kept as
//! sent: platform IDs are case-sensitive, unlike emails.

use serde_json::{Map, Value};

/// The prefix of the queue key of a subscriber known only by its platform ID.
pub const PLATFORM_ID_KEY: &str = "platform_id:";

/// The queue (and cache) key of the subscriber with platform ID `id`.
pub fn platform_id_key(id: &str) -> String {
    format!("{PLATFORM_ID_KEY}{id}")
}

/// The platform ID a queue key stands for, when it stands for one rather than an email.
pub fn platform_id_in(key: &str) -> Option<&str> {
    key.trim().strip_prefix(PLATFORM_ID_KEY)
}

/// Where an event carries its platform ID (`mapping.platform_id_trait`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlatformIdSource {
    /// The event's `userId` (when it is the Stripe customer id, say).
    UserId,
    /// The trait of this name (after `traits.traits` is flattened).
    Trait(String),
}

impl PlatformIdSource {
    /// The setting's source: `userId`, a trait name, or `None` when unset or blank.
    pub fn from_setting(setting: Option<&str>) -> Option<PlatformIdSource> {
        match setting.map(str::trim) {
            None | Some("") => None,
            Some("userId") => Some(PlatformIdSource::UserId),
            Some(name) => Some(PlatformIdSource::Trait(name.to_owned())),
        }
    }

    /// The platform ID an event carries: a non-blank string (or a number, as text).
    pub fn of(&self, user_id: Option<&str>, traits: &Map<String, Value>) -> Option<String> {
        let found = match self {
            PlatformIdSource::UserId => user_id.map(str::to_owned),
            PlatformIdSource::Trait(name) => match traits.get(name)? {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            },
        }?;
        let found = found.trim();
        (!found.is_empty()).then(|| found.to_owned())
    }

    /// How the setting names this source, for messages.
    pub fn describe(&self) -> String {
        match self {
            PlatformIdSource::UserId => "userId".to_owned(),
            PlatformIdSource::Trait(name) => format!("the trait {name:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The setting picks `userId` or a trait; blank means none; blank values are no ID.
    #[test]
    fn sources_find_the_id() {
        assert_eq!(PlatformIdSource::from_setting(Some(" ")), None);
        let user = PlatformIdSource::from_setting(Some("userId")).unwrap();
        let traits = json!({"stripe_id": "cus_Ab", "n": 42, "blank": " "});
        let traits = traits.as_object().unwrap();
        assert_eq!(user.of(Some("cus_X"), traits).as_deref(), Some("cus_X"));
        let by_trait = PlatformIdSource::from_setting(Some("stripe_id")).unwrap();
        assert_eq!(by_trait.of(None, traits).as_deref(), Some("cus_Ab"));
        let number = PlatformIdSource::Trait("n".into());
        assert_eq!(number.of(None, traits).as_deref(), Some("42"));
        assert_eq!(
            PlatformIdSource::Trait("blank".into()).of(None, traits),
            None
        );
    }

    /// A platform-ID key is kept as sent (case-sensitive) and read back.
    #[test]
    fn keys_round_trip() {
        let key = platform_id_key("cus_AbC");
        assert_eq!(crate::identify::email_key(&key), key);
        assert_eq!(platform_id_in(&key), Some("cus_AbC"));
        assert_eq!(platform_id_in("jane@example.com"), None);
    }
}
