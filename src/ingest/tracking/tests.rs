use std::io::Write;

use axum::http::HeaderValue;
use serde_json::json;

use super::*;

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn with_header(name: header::HeaderName, value: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(name, HeaderValue::from_str(value).unwrap());
    h
}

/// `abc123` as the basic-auth user, empty password: Segment's documented example.
#[test]
fn basic_auth_user_is_the_key() {
    let h = with_header(header::AUTHORIZATION, "Basic YWJjMTIzOg==");
    assert_eq!(basic_auth_user(&h).unwrap().as_deref(), Some("abc123"));
    let bearer = with_header(header::AUTHORIZATION, "Bearer token");
    assert_eq!(basic_auth_user(&bearer).unwrap(), None);
    let broken = with_header(header::AUTHORIZATION, "Basic !!!");
    assert!(matches!(
        basic_auth_user(&broken),
        Err(IngestError::Unauthorized(_))
    ));
}

/// Every configured key is accepted, nothing else is, and `Debug` shows no key.
#[test]
fn write_keys_accept_only_their_own() {
    let keys: WriteKeys = serde_json::from_value(json!(" wk_one, wk_two ,")).unwrap();
    assert!(keys.accepts("wk_one") && keys.accepts("wk_two"));
    assert!(!keys.accepts("wk_on") && !keys.accepts("") && !keys.accepts("wk_one,"));
    let listed: WriteKeys = serde_json::from_value(json!(["a"])).unwrap();
    assert!(listed.accepts("a"));
    assert_eq!(format!("{keys:?}"), "WriteKeys(2 redacted)");
    let none: WriteKeys = serde_json::from_value(json!("")).unwrap();
    assert!(none.is_empty());
}

/// A gzipped body is undone; its size counts after decompression.
#[test]
fn gzip_is_bounded_after_decompression() {
    let text = br#"{"batch":[]}"#;
    let h = with_header(header::CONTENT_ENCODING, "gzip");
    let plain = decode(&Bytes::from(gzip(text)), &h, 1024).unwrap();
    assert_eq!(&plain[..], text);
    // 10 MB of zeros gzip to about 10 KB: under the limit on the wire, a bomb once inflated.
    let bomb = gzip(&vec![b'0'; 10 * 1024 * 1024]);
    assert!(bomb.len() < 64 * 1024);
    let limit = 1024 * 1024;
    let e = decode(&Bytes::from(bomb), &h, limit).unwrap_err();
    assert!(matches!(e, IngestError::TooLarge(l) if l == limit), "{e}");
    let garbage = decode(&Bytes::from_static(b"not gzip"), &h, limit).unwrap_err();
    assert!(matches!(garbage, IngestError::Malformed(_)), "{garbage}");
    let brotli = with_header(header::CONTENT_ENCODING, "br");
    assert!(decode(&Bytes::from_static(text), &brotli, limit).is_err());
}

/// A single call takes its type from the path; a batch item loses any `writeKey` and gets the
/// envelope's context.
#[test]
fn calls_and_batches_become_events() {
    let obj = json!({"type": "track", "userId": "u"});
    let (event, raw) = single_call(obj.as_object().unwrap().clone(), "identify");
    assert_eq!(event.unwrap()["type"], "identify");
    assert!(raw.contains("\"identify\""));
    let body = json!({"batch": [{"type": "identify", "writeKey": "wk_secret"}],
                      "context": {"library": {"name": "x"}}});
    let events = batch(body.as_object().unwrap().clone()).unwrap();
    let (event, raw) = &events[0];
    assert!(!raw.contains("wk_secret"));
    assert_eq!(event.as_ref().unwrap()["context"]["library"]["name"], "x");
    assert!(batch(json!({"batch": {}}).as_object().unwrap().clone()).is_err());
    assert!(batch(Map::new()).is_err());
}
