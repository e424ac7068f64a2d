//! Router tests for subscriber updates (type checks, atomicity, deletion) and property management.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};

use super::test_support::{admin, basic, call, demo, send, subscriber_id, Answer};
use super::{Sandbox, SandboxError, SANDBOX_API_KEY};

const MARIA: &str = "maria.lopez@example.com";

async fn update(sandbox: &Sandbox, properties: Value) -> Answer {
    let id = subscriber_id(sandbox, MARIA);
    let body = json!({ "properties": properties });
    call(sandbox, "PUT", &format!("/v1/subscribers/{id}"), Some(body)).await
}

fn stored(sandbox: &Sandbox) -> Value {
    let maria = sandbox.subscriber_by_email(MARIA).expect("seeded");
    serde_json::to_value(maria.properties).expect("a map serialises")
}

/// A valid update answers 200 with the subscriber JSON of the reference, values formatted.
#[tokio::test]
async fn update_answers_the_subscriber() {
    let sandbox = demo();
    let answer = update(
        &sandbox,
        json!({"number_of_contacts": 5800, "is_professional": true, "last_contacted": "2021-05-04",
               "preferred_name": "Mari", "total_spend_180_days": 1234.5}),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let body = &answer.body;
    assert_eq!(body["email"], MARIA);
    assert_eq!(body["status"], "active");
    assert!(body["platform_id"]
        .as_str()
        .is_some_and(|p| p.starts_with("cus_")));
    assert!(body["updated_at"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    let first = &body["properties"][0];
    assert_eq!(first["property"]["key"], "number_of_contacts");
    assert_eq!(first["property"]["format"], "number");
    assert_eq!(first["value"], 5800);
    assert_eq!(first["formatted_value"], "5,800");
    let formatted: Vec<&str> = body["properties"]
        .as_array()
        .expect("properties array")
        .iter()
        .filter_map(|p| p["formatted_value"].as_str())
        .collect();
    assert_eq!(
        formatted,
        ["5,800", "True", "2021-05-04", "Mari", "$1,234.50"]
    );
    assert_eq!(sandbox.stats().subscriber_updates, 1);
    let fetched = call(
        &sandbox,
        "GET",
        &format!("/v1/subscribers/{}", subscriber_id(&sandbox, MARIA)),
        None,
    )
    .await;
    assert_eq!(&fetched.body, body);
}

/// Each wrongly typed value is a 400 naming the key in double quotes, and nothing is stored.
#[tokio::test]
async fn wrong_types_are_rejected() {
    let sandbox = demo();
    let cases = [
        ("number_of_contacts", json!("5800"), "expected a number"),
        (
            "last_contacted",
            json!("2021-05-04T10:00:00Z"),
            "expected a date",
        ),
        ("last_contacted", json!("2021-02-30"), "expected a date"),
        ("is_professional", json!("true"), "expected true or false"),
        ("preferred_name", json!(42), "expected a string"),
        ("plan", json!({"name": "pro"}), "expected a string"),
    ];
    for (key, value, expected) in cases {
        let answer = update(&sandbox, json!({ key: value })).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{key}={value}");
        let message = answer.error();
        assert!(message.contains(&format!("\"{key}\"")), "{message}");
        assert!(message.contains(expected), "{message}");
    }
    assert_eq!(stored(&sandbox), json!({}));
    assert_eq!(sandbox.stats().subscriber_updates, 0);
}

/// Unknown keys and subscription properties are rejected, naming the key.
#[tokio::test]
async fn unknown_and_subscription_keys_are_rejected() {
    let sandbox = demo();
    let unknown = update(&sandbox, json!({"foo": "bar"})).await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert_eq!(unknown.error(), r#"Unknown property "foo""#);
    let by_name = update(&sandbox, json!({"Preferred name": "Mari"})).await;
    assert_eq!(
        by_name.status,
        StatusCode::BAD_REQUEST,
        "keys, not display names"
    );
    let subscription = update(&sandbox, json!({"plan_tier": "gold"})).await;
    assert_eq!(subscription.status, StatusCode::BAD_REQUEST);
    assert!(
        subscription.error().contains("\"plan_tier\""),
        "{}",
        subscription.error()
    );
}

/// One bad key fails the whole update: the valid keys beside it are not stored either.
#[tokio::test]
async fn updates_are_atomic() {
    let sandbox = demo();
    let id = subscriber_id(&sandbox, MARIA);
    sandbox
        .set_subscriber_property(&id, "plan", json!("basic"))
        .expect("valid");
    let answer = update(
        &sandbox,
        json!({"plan": "pro", "preferred_name": "Mari", "number_of_contacts": "5800", "nope": 1}),
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(
        answer.error().contains("\"number_of_contacts\""),
        "{}",
        answer.error()
    );
    assert!(answer.error().contains("\"nope\""), "{}", answer.error());
    assert_eq!(stored(&sandbox), json!({"plan": "basic"}));
}

/// `null` and `""` delete values of any type.
#[tokio::test]
async fn null_and_empty_string_delete() {
    let sandbox = demo();
    let set = update(
        &sandbox,
        json!({"plan": "pro", "number_of_contacts": 3, "is_professional": false}),
    )
    .await;
    assert_eq!(set.status, StatusCode::OK);
    assert_eq!(
        stored(&sandbox),
        json!({"plan": "pro", "number_of_contacts": 3, "is_professional": false})
    );
    let cleared = update(&sandbox, json!({"plan": null, "number_of_contacts": ""})).await;
    assert_eq!(cleared.status, StatusCode::OK);
    assert_eq!(stored(&sandbox), json!({"is_professional": false}));
    assert_eq!(cleared.body["properties"].as_array().map(Vec::len), Some(1));
}

/// Updating an unknown subscriber is 404.
#[tokio::test]
async fn update_unknown_subscriber_is_404() {
    let sandbox = demo();
    let body = json!({"properties": {"plan": "pro"}});
    let answer = call(
        &sandbox,
        "PUT",
        "/v1/subscribers/subr_doesnotexist",
        Some(body),
    )
    .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert!(
        answer.error().contains("subr_doesnotexist"),
        "{}",
        answer.error()
    );
}

/// Bodies that are not `{"properties": {...}}` JSON are 400, and a non-JSON content type is 415.
#[tokio::test]
async fn malformed_update_bodies() {
    let sandbox = demo();
    let uri = format!("/v1/subscribers/{}", subscriber_id(&sandbox, MARIA));
    for body in [
        json!([]),
        json!("x"),
        json!({}),
        json!({"properties": []}),
        json!({"properties": {}, "name": "x"}),
    ] {
        let answer = call(&sandbox, "PUT", &uri, Some(body.clone())).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body}");
    }
    let raw = |content_type: &str, body: &str| {
        Request::builder()
            .method("PUT")
            .uri(&uri)
            .header("authorization", basic(SANDBOX_API_KEY))
            .header("content-type", content_type)
            .body(Body::from(body.to_string()))
            .expect("request")
    };
    let broken = send(&sandbox, raw("application/json", "{\"properties\": ")).await;
    assert_eq!(broken.status, StatusCode::BAD_REQUEST);
    let form = send(
        &sandbox,
        raw("application/x-www-form-urlencoded", "{\"properties\": {}}"),
    )
    .await;
    assert_eq!(form.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

/// The Rust admin call validates exactly like the API.
#[test]
fn set_subscriber_property_validates() {
    let sandbox = demo();
    let id = subscriber_id(&sandbox, MARIA);
    let wrong = sandbox.set_subscriber_property(&id, "number_of_contacts", json!("5800"));
    assert!(matches!(wrong, Err(SandboxError::Invalid(m)) if m.contains("\"number_of_contacts\"")));
    let missing = sandbox.set_subscriber_property("subr_x", "plan", json!("pro"));
    assert!(matches!(missing, Err(SandboxError::NotFound(_))));
    sandbox
        .set_subscriber_property(&id, "signed_up_on", json!("2024-02-29"))
        .expect("a real date");
    assert_eq!(stored(&sandbox), json!({"signed_up_on": "2024-02-29"}));
}

/// Creating a property validates each field by name, answers 201 with Location, and a duplicate key is 409.
#[tokio::test]
async fn create_property_rules() {
    let sandbox = demo();
    let base = json!({"key": "seats", "name": "Seats", "entity": "subscriber", "type": "number", "format": "number"});
    let broken = [
        ("key", json!(null)),
        ("key", json!("  ")),
        ("name", json!(7)),
        ("entity", json!("customer")),
        ("type", json!("integer")),
        ("format", json!("percent")),
    ];
    for (field, value) in broken {
        let mut body = base.clone();
        body[field] = value;
        let answer = call(&sandbox, "POST", "/v1/properties", Some(body)).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{field}");
        assert!(
            answer.error().contains(&format!("\"{field}\"")),
            "{}",
            answer.error()
        );
    }
    let text_with_format = json!({"key": "k", "name": "K", "entity": "subscriber", "type": "text", "format": "number"});
    let answer = call(&sandbox, "POST", "/v1/properties", Some(text_with_format)).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);

    let created = call(&sandbox, "POST", "/v1/properties", Some(base.clone())).await;
    assert_eq!(created.status, StatusCode::CREATED);
    let id = created.body["id"].as_str().expect("id").to_string();
    assert!(id.starts_with("prop_") && id.len() == 5 + 24, "{id}");
    assert_eq!(created.header("location"), format!("/v1/properties/{id}"));
    assert_eq!(created.body["format"], "number");
    let fetched = call(&sandbox, "GET", &format!("/v1/properties/{id}"), None).await;
    assert_eq!(fetched.body, created.body);

    let duplicate = call(&sandbox, "POST", "/v1/properties", Some(base)).await;
    assert_eq!(duplicate.status, StatusCode::CONFLICT);
    assert!(
        duplicate.error().contains("\"seats\""),
        "{}",
        duplicate.error()
    );
    let programmatic = sandbox.create_property("seats", "Seats", "subscriber", "number");
    assert!(matches!(programmatic, Err(SandboxError::Conflict(_))));
}

/// A deleted property is gone from the API and can no longer be set, but stored values remain.
#[tokio::test]
async fn deleted_property_keeps_stored_values() {
    let sandbox = demo();
    let property = sandbox
        .create_property("seats", "Seats", "subscriber", "number")
        .expect("new key");
    let set = update(&sandbox, json!({"seats": 3})).await;
    assert_eq!(set.status, StatusCode::OK);
    let uri = format!("/v1/properties/{}", property.id);
    assert_eq!(
        call(&sandbox, "DELETE", &uri, None).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        call(&sandbox, "GET", &uri, None).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(&sandbox, "DELETE", &uri, None).await.status,
        StatusCode::NOT_FOUND
    );
    let again = update(&sandbox, json!({"seats": 4})).await;
    assert_eq!(again.status, StatusCode::BAD_REQUEST);
    assert_eq!(stored(&sandbox), json!({"seats": 3}));
    let created = admin(
        &sandbox,
        "POST",
        "/_sandbox/properties",
        Some(json!({"key": "seats", "name": "Seats", "entity": "subscriber", "type": "text"})),
    )
    .await;
    assert_eq!(
        created.status,
        StatusCode::CREATED,
        "a deleted key can be reused"
    );
}

/// A sandbox that takes PATCH for updates answers PUT with a JSON 405 naming the allowed verbs,
/// changes nothing, and applies the same update sent with PATCH.
#[tokio::test]
async fn update_verb_is_configurable_and_the_other_is_405() {
    let sandbox = Sandbox::new(super::SandboxConfig {
        update_verb: super::UpdateVerb::Patch,
        ..super::SandboxConfig::default()
    });
    let id = subscriber_id(&sandbox, MARIA);
    let body = json!({"properties": {"preferred_name": "Mari"}});
    let path = format!("/v1/subscribers/{id}");
    let refused = call(&sandbox, "PUT", &path, Some(body.clone())).await;
    assert_eq!(refused.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(
        refused.header("allow").contains("PATCH"),
        "{}",
        refused.body
    );
    assert!(!refused.error().is_empty());
    assert_eq!(stored(&sandbox)["preferred_name"], Value::Null);
    let applied = call(&sandbox, "PATCH", &path, Some(body)).await;
    assert_eq!(applied.status, StatusCode::OK, "{}", applied.body);
    assert_eq!(stored(&sandbox)["preferred_name"], "Mari");
    assert_eq!("patch".parse(), Ok(super::UpdateVerb::Patch));
    assert!("POST".parse::<super::UpdateVerb>().is_err());
}
