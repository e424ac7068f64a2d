//! The explanation against the sandbox's demo catalogue: rules named, values typed, emails
//! traced to their source, and everything that is not sent said so.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::explain::{explain, Context, EventPreview};
use super::sandbox_catalogue;
use crate::identify::{email_source, EmailSource};
use crate::mapping::{MatchRule, Rules};

fn rules(mappings: &[(&str, &str)]) -> Rules {
    Rules {
        trait_mappings: mappings
            .iter()
            .map(|(t, k)| (t.to_string(), k.to_string()))
            .collect::<BTreeMap<_, _>>(),
        snake_case_match: true,
    }
}

/// Explains `payload` with the demo catalogue; the store remembers `u-stored` as stored@x.io.
fn preview_with(payload: Value, rules: &Rules, create: bool) -> Vec<EventPreview> {
    let catalogue = sandbox_catalogue();
    let remembered = |user: &str| (user == "u-stored").then(|| "stored@x.io".to_owned());
    let ctx = Context {
        catalogue: &catalogue,
        rules,
        create_audience_properties: create,
        remembered: &remembered,
        received_ms: 0,
        platform_ids: Some(crate::identify::PlatformIdSource::Trait("stripe_id".into())),
    };
    let events = crate::ingest::split_body(payload.to_string().as_bytes()).expect("a payload");
    explain(events, &ctx)
}

fn preview(payload: Value) -> Vec<EventPreview> {
    preview_with(payload, &rules(&[]), false)
}

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/segment-payloads/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("JSON")
}

/// Segment's page example: every nested trait lands on its property by display name, typed,
/// and the update body holds property keys.
#[test]
fn segment_page_example_maps_by_name() {
    let events = preview(fixture("identify-nested-traits.json"));
    let e = &events[0];
    assert_eq!(e.outcome, "update");
    let email = e.email.as_ref().expect("an email");
    assert_eq!(
        (email.address.as_str(), email.source),
        ("jordan.reyes@example.com", "traits.email")
    );
    let got: Vec<_> = e
        .traits
        .iter()
        .map(|t| (t.name.as_str(), t.property.as_deref(), t.rule))
        .collect();
    assert_eq!(
        got,
        [
            (
                "Is professional",
                Some("is_professional"),
                Some(MatchRule::Name)
            ),
            (
                "Last contacted",
                Some("last_contacted"),
                Some(MatchRule::Name)
            ),
            (
                "Number of contacts",
                Some("number_of_contacts"),
                Some(MatchRule::Name)
            ),
            (
                "Preferred name",
                Some("preferred_name"),
                Some(MatchRule::Name)
            ),
        ]
    );
    assert_eq!(
        Value::Object(e.update.clone()),
        json!({"is_professional": true, "last_contacted": "2024-05-04",
               "number_of_contacts": 5800, "preferred_name": "Jordy"})
    );
    assert_eq!(e.timestamp.as_deref(), Some("2024-06-10T09:20:34.968Z"));
}

/// Each rule is named; unconvertible values are dropped with the reason; unmatched traits say
/// what was tried; a mapping to no property says so.
#[test]
fn rules_drops_and_unmatched() {
    let payload = json!({"type": "identify", "userId": "u", "traits": {
        "email": "a@x.io", "Nick": "Jo", "plan": "Pro", "signedUpOn": "2024-01-02T10:00:00Z",
        "Number of contacts": "many", "favourite colour": "red", "Typo": 1}});
    let events = preview_with(
        payload,
        &rules(&[("Nick", "preferred_name"), ("Typo", "nope")]),
        false,
    );
    let by_name = |n: &str| {
        events[0]
            .traits
            .iter()
            .find(|t| t.name == n)
            .expect(n)
            .clone()
    };
    assert_eq!(by_name("Nick").rule, Some(MatchRule::Mapping));
    assert_eq!(by_name("plan").rule, Some(MatchRule::Key));
    let signed = by_name("signedUpOn");
    assert_eq!(
        (signed.rule, signed.sent),
        (Some(MatchRule::SnakeCase), Some(json!("2024-01-02")))
    );
    let dropped = by_name("Number of contacts");
    assert_eq!(dropped.outcome, "dropped");
    assert!(dropped
        .reason
        .as_deref()
        .is_some_and(|r| r.contains("is not a number")));
    let unmatched = by_name("favourite colour");
    assert_eq!(unmatched.outcome, "unmatched");
    assert!(unmatched
        .reason
        .as_deref()
        .is_some_and(|r| r.contains("favourite_colour")));
    let typo = by_name("Typo");
    assert!(typo
        .reason
        .as_deref()
        .is_some_and(|r| r.contains("[trait_mappings]")));
    assert!(!events[0].update.contains_key("number_of_contacts"));
}

/// Emails: context.traits, an earlier event of the payload, the store, or none (422); a delete
/// in the payload forgets what came before it.
#[test]
fn email_sources() {
    let identify = |id: &str, user: &str, extra: Value| {
        let mut e =
            json!({"type": "identify", "messageId": id, "userId": user, "traits": {"plan": "x"}});
        if let (Some(obj), Some(more)) = (e.as_object_mut(), extra.as_object()) {
            obj.extend(more.clone());
        }
        e
    };
    let payload = json!([
        identify("1", "u1", json!({"context": {"traits": {"email": "ctx@x.io"}}})),
        identify("2", "u1", json!({})),
        identify("3", "u-stored", json!({})),
        identify("4", "u-none", json!({})),
        {"type": "delete", "userId": "u1", "messageId": "5"},
        identify("6", "u1", json!({})),
    ]);
    let events = preview(payload);
    let source = |i: usize| {
        events[i]
            .email
            .as_ref()
            .map(|e| (e.address.as_str(), e.source))
    };
    assert_eq!(source(0), Some(("ctx@x.io", "context.traits.email")));
    assert_eq!(source(1), Some(("ctx@x.io", "remembered_in_payload")));
    assert_eq!(source(2), Some(("stored@x.io", "remembered_in_store")));
    assert_eq!(
        (events[3].outcome, events[3].status),
        ("rejected", Some(422))
    );
    assert_eq!(events[4].outcome, "delete");
    assert_eq!(
        (events[5].outcome, events[5].status),
        ("rejected", Some(422))
    );
}

/// An Engage audience is noted; with no property it is a missing audience, created and sent
/// only when create_audience_properties is on. Other types are ignored; non-events are 400.
#[test]
fn engage_ignored_and_invalid() {
    let entered = fixture("identify-engage-audience-entered.json");
    let e = &preview(entered.clone())[0];
    let engage = e.engage.as_ref().expect("engage");
    assert!(engage.membership && engage.key == "high_value_customers");
    assert_eq!(e.traits[0].rule, Some(MatchRule::Key));
    let mut unknown = entered;
    unknown["context"]["personas"]["computation_key"] = json!("new_audience");
    unknown["traits"] = json!({"email": "m@x.io", "new_audience": true});
    let off = &preview(unknown.clone())[0].traits[0];
    assert_eq!((off.outcome, off.sent.clone()), ("missing_audience", None));
    let on = &preview_with(unknown, &rules(&[]), true)[0];
    assert_eq!(on.traits[0].sent, Some(json!(true)));
    assert_eq!(on.update.get("new_audience"), Some(&json!(true)));
    let others = preview(json!([fixture("track-event.json"), {"no": "type"}, 7]));
    let outcomes: Vec<_> = others.iter().map(|e| (e.outcome, e.status)).collect();
    assert_eq!(
        outcomes,
        [
            ("ignored", None),
            ("rejected", Some(400)),
            ("rejected", Some(400))
        ]
    );
}

/// identify::email_source finds the email where normalise does, and says where.
#[test]
fn email_source_table() {
    let cases = [
        (
            json!({"traits": {"email": " a@x.io "}}),
            Some(("a@x.io", EmailSource::Traits)),
        ),
        (
            json!({"traits": {"email": ""}, "context": {"traits": {"email": "c@x.io"}}}),
            Some(("c@x.io", EmailSource::ContextTraits)),
        ),
        (json!({"traits": {"email": 5}}), None),
        (json!({}), None),
    ];
    for (event, want) in cases {
        let got = email_source(&event);
        assert_eq!(got.as_ref().map(|(e, s)| (e.as_str(), *s)), want, "{event}");
    }
}

/// With a platform-ID trait, an Identify without an email is an update keyed by its platform
/// ID (not a 422), and one with an email shows the ID as its fallback.
#[test]
fn platform_id_is_shown_as_key_or_fallback() {
    let events = preview(json!([
        {"type": "identify", "userId": "u-new", "traits": {"stripe_id": "cus_Q1", "plan": "Scale"}},
        {"type": "identify", "userId": "u-new", "traits": {"email": "a@x.io", "stripe_id": "cus_Q1"}},
        {"type": "identify", "userId": "u-none", "traits": {"plan": "Scale"}},
    ]));
    let first = events[0].platform_id.as_ref().expect("a platform ID");
    assert_eq!((first.id.as_str(), first.role), ("cus_Q1", "key"));
    assert_eq!(first.source, "trait stripe_id");
    assert_eq!(events[0].outcome, "update");
    assert_eq!(
        events[1].platform_id.as_ref().map(|p| p.role),
        Some("fallback")
    );
    assert_eq!(
        (events[2].outcome, events[2].status),
        ("rejected", Some(422))
    );
}
