use axum::http::HeaderValue;

use super::*;

/// Whitespace outside strings removed: what `JSON.stringify` makes of the pretty files.
pub(crate) fn minify(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in text.chars() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !c.is_whitespace() {
            out.push(c);
        }
    }
    out
}

fn payload(name: &str) -> String {
    let path = format!(
        "{}/tests/fixtures/segment-payloads/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    minify(&std::fs::read_to_string(path).expect("payload"))
}

fn signed(sig: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("x-signature", HeaderValue::from_str(sig).unwrap());
    h
}

const SECRET: &str = "example-shared-secret";
const BASIC_SIG: &str = "800c9b04f49c31ca47fcd633e01a7b6e779bc302";

/// The reference test vector: the single event's body verifies.
#[test]
fn signature_of_single_event() {
    let body = Bytes::from(payload("identify-basic.json"));
    assert_eq!(body.len(), 615);
    let events = parse_body(&body, &signed(BASIC_SIG), Some(&Secret::new(SECRET))).unwrap();
    assert_eq!(events.len(), 1);
}

/// An array is verified against its first element only, as Segment signs it; the
/// whole-body HMAC is refused.
#[test]
fn signature_of_array_is_first_element() {
    let body = Bytes::from(payload("webhook-actions-batch-array.json"));
    assert_eq!(body.len(), 2158);
    let secret = Secret::new(SECRET);
    assert_eq!(
        parse_body(&body, &signed(BASIC_SIG), Some(&secret))
            .unwrap()
            .len(),
        3
    );
    let whole = "7b7e1324c0b5c50785c38274a7ef6fed064225d9";
    assert!(matches!(
        parse_body(&body, &signed(whole), Some(&secret)),
        Err(IngestError::Unauthorized(_))
    ));
}

/// Missing or wrong signatures are refused when a secret is set; ignored when not.
#[test]
fn signature_required_when_secret_set() {
    let body = Bytes::from(payload("identify-basic.json"));
    let secret = Secret::new(SECRET);
    assert!(matches!(
        parse_body(&body, &HeaderMap::new(), Some(&secret)),
        Err(IngestError::Unauthorized(_))
    ));
    let wrong = "800c9b04f49c31ca47fcd633e01a7b6e779bc303";
    assert!(matches!(
        parse_body(&body, &signed(wrong), Some(&secret)),
        Err(IngestError::Unauthorized(_))
    ));
    assert!(matches!(
        parse_body(&body, &signed("zz"), Some(&secret)),
        Err(IngestError::Unauthorized(_))
    ));
    assert!(parse_body(&body, &HeaderMap::new(), None).is_ok());
}

/// With a secret set, an unsigned request is refused whatever its body holds: an empty array
/// has no first element to sign, so its own bytes must be signed.
#[test]
fn unsigned_empty_array_refused_when_secret_set() {
    let secret = Secret::new(SECRET);
    for body in ["[]", " [ ] ", "{}", "{\"batch\":[]}"] {
        let r = parse_body(&Bytes::from(body), &HeaderMap::new(), Some(&secret));
        assert!(
            matches!(r, Err(IngestError::Unauthorized(_))),
            "{body}: {r:?}"
        );
    }
    let mut mac = Hmac::<Sha1>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(b"[]");
    let right = hex::encode(mac.finalize().into_bytes());
    let events = parse_body(&Bytes::from("[]"), &signed(&right), Some(&secret)).unwrap();
    assert!(events.is_empty());
}

/// The Tracking API batch shape shares its envelope's context with every item.
#[test]
fn tracking_batch_shares_context() {
    let body = Bytes::from(payload("batch-tracking-api.json"));
    let events = parse_body(&body, &HeaderMap::new(), None).unwrap();
    assert_eq!(events.len(), 3);
    let first = events[0].0.as_ref().unwrap();
    assert_eq!(first["context"]["library"]["name"], "example-http-client");
}

/// Bodies that are not events are malformed.
#[test]
fn malformed_bodies() {
    for body in ["", "{", "42", "\"x\"", "{\"batch\": 1}", "\u{0}"] {
        let r = parse_body(&Bytes::from(body), &HeaderMap::new(), None);
        assert!(matches!(r, Err(IngestError::Malformed(_))), "{body:?}");
    }
    // An array's elements are split first; a too-deep element is then refused on its own.
    let deep = "[".repeat(10_000) + &"]".repeat(10_000);
    match parse_body(&Bytes::from(deep), &HeaderMap::new(), None) {
        Ok(events) => assert!(events.iter().all(|(parsed, _)| parsed.is_err())),
        Err(e) => assert!(matches!(e, IngestError::Malformed(_))),
    }
    let deep_obj = format!("{}1{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
    assert!(matches!(
        parse_body(&Bytes::from(deep_obj), &HeaderMap::new(), None),
        Err(IngestError::Malformed(_))
    ));
}

/// `split_body` splits every body shape exactly as an unsigned request is split, and refuses
/// the same malformed bodies.
#[test]
fn split_body_splits_as_ingest_does() {
    let bodies = [
        payload("identify-basic.json"),
        payload("webhook-actions-batch-array.json"),
        payload("batch-tracking-api.json"),
        "[{\"type\":\"identify\"}, 42]".to_owned(),
    ];
    for body in bodies {
        let split = split_body(body.as_bytes()).unwrap();
        let ingested = parse_body(&Bytes::from(body.clone()), &HeaderMap::new(), None).unwrap();
        assert_eq!(split, ingested, "{body}");
    }
    for body in ["", "{", "42", "{\"batch\": 1}"] {
        let r = split_body(body.as_bytes());
        assert!(matches!(r, Err(IngestError::Malformed(_))), "{body:?}");
    }
}
