//! Body and signature targets: request bytes in, `ingest::parse_body` run, its answer checked
//! against an independent reading of the same bytes.
//!
//! In: a generated body (and, for the signature target, a secret, the bytes a correct signer
//! signs and `X-Signature` header values). Out: the path the input took through the relay (for
//! the report: is the search reaching past the error paths?), or the [`Violation`] of an invariant.
//! Stays true (what is checked):
//! - body: the whole body parsed once as JSON decides the answer. An array yields one event per
//!   element, each equal to that element, its raw text reparsing to it; `{"batch": [...]}` one event
//!   per item with the envelope's `context`/`integrations` filled in where the item has none; an
//!   object without `batch` exactly one event, its raw text the body; anything else, a non-array
//!   `batch`, invalid JSON or non-UTF-8 is `Malformed`. A body serde cannot read whole is only
//!   accepted as an array with a refused element (or past the nesting limit by the array's level).
//!   Every accepted event then goes through `identify::normalise` and its checks.
//! - signature: with a secret, a request is let through exactly when its first `X-Signature` is
//!   hex (after trimming) for the HMAC-SHA1 of the signed bytes: the whole body, or an array's
//!   first element as written (an empty array's own bytes). So a correct signature always passes, and a one-bit flip, a
//!   truncation, an extension, a non-hex or missing header never does. Without a secret no
//!   request is refused for its signature.

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use hmac::{Hmac, Mac};
use prosperstack_relay::config::Secret;
use prosperstack_relay::ingest::{parse_body, IngestError, RawEvent};
use rand::rngs::SmallRng;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha1::Sha1;

use super::corpus::Corpus;
use super::events::check_normalise;
use super::mutate;
use super::scalars::pick;
use super::targets::{ensure, truncate, HexBytes, Violation};
use super::text;

/// The receive time the body target normalises with (a fixed one: inputs must replay exactly).
const RECEIVED_MS: i64 = 1_718_000_000_000;

pub fn run_body(body: &[u8]) -> Result<&'static str, Violation> {
    let result = parse_body(&Bytes::copy_from_slice(body), &HeaderMap::new(), None);
    check_body(body, &result)?;
    let Ok(events) = result else {
        return Ok("refused");
    };
    let mut path = "accepted, no Identify update";
    for (parsed, _) in events {
        if let Ok(value) = parsed {
            if check_normalise(&value, RECEIVED_MS)?.1.is_some() {
                path = "accepted with an Identify update";
            }
        }
    }
    Ok(path)
}

/// The body invariants of the module's doc, for the answer `result` to `body` (no secret).
pub fn check_body(
    body: &[u8],
    result: &Result<Vec<RawEvent>, IngestError>,
) -> Result<(), Violation> {
    if let Err(e) = result {
        ensure(
            matches!(e, IngestError::Malformed(_)),
            "body: without a secret only Malformed can refuse a body",
            || format!("answered {e:?}"),
        )?;
    }
    let Ok(text) = std::str::from_utf8(body) else {
        return ensure(result.is_err(), "body: non-UTF-8 accepted", String::new);
    };
    let whole: Result<Value, serde_json::Error> = serde_json::from_str(text);
    match (whole, result) {
        (Ok(Value::Array(items)), Ok(events)) => {
            ensure(
                events.len() == items.len(),
                "body: array yields one event per element",
                || format!("{} elements, {} events", items.len(), events.len()),
            )?;
            for (i, (item, (parsed, raw))) in items.iter().zip(events).enumerate() {
                ensure(
                    parsed.as_ref().ok() == Some(item),
                    "body: array event equals its element",
                    || format!("element {i}: {item} parsed as {parsed:?}"),
                )?;
                let reparsed = serde_json::from_str::<Value>(raw).ok();
                ensure(
                    reparsed.as_ref() == Some(item),
                    "body: array raw text is its element",
                    || format!("element {i}: raw {raw:?}"),
                )?;
            }
            Ok(())
        }
        (Ok(Value::Array(items)), Err(e)) => Err(Violation {
            invariant: "body: a JSON array is accepted",
            detail: format!("{} elements, answered {e:?}", items.len()),
        }),
        (Ok(Value::Object(obj)), result) => check_object(text, &obj, result),
        (Ok(other), result) => ensure(result.is_err(), "body: a scalar body is malformed", || {
            format!("{other} accepted")
        }),
        (Err(whole), Ok(events)) => {
            let refused_element = events.iter().any(|(parsed, _)| parsed.is_err());
            let array = text.trim_start().starts_with('[');
            let nesting = whole.to_string().contains("recursion limit");
            ensure(
                array && (refused_element || nesting),
                "body: invalid JSON is accepted only as an array with a refused element",
                || {
                    format!(
                        "serde_json says {whole}; {} events, none refused",
                        events.len()
                    )
                },
            )
        }
        (Err(_), Err(_)) => Ok(()),
    }
}

fn check_object(
    text: &str,
    obj: &Map<String, Value>,
    result: &Result<Vec<RawEvent>, IngestError>,
) -> Result<(), Violation> {
    match (obj.get("batch"), result) {
        (Some(Value::Array(items)), Ok(events)) => {
            ensure(
                events.len() == items.len(),
                "body: batch yields one event per item",
                || format!("{} items, {} events", items.len(), events.len()),
            )?;
            for (i, (item, (parsed, raw))) in items.iter().zip(events).enumerate() {
                let expected = with_envelope(item, obj);
                ensure(
                    parsed.as_ref().ok() == Some(&expected),
                    "body: batch item gets the envelope's context",
                    || format!("item {i}: expected {expected}, got {parsed:?}"),
                )?;
                let reparsed = serde_json::from_str::<Value>(raw);
                ensure(
                    reparsed.as_ref().is_ok_and(|r| json_close(r, &expected)),
                    "body: batch raw text is its item",
                    || match &reparsed {
                        Err(e) => format!("item {i}: raw text does not parse ({e}): {raw:?}"),
                        Ok(r) => format!(
                            "item {i}: raw text reads differently at {}",
                            difference(r, &expected, String::new())
                        ),
                    },
                )?;
            }
            Ok(())
        }
        (Some(Value::Array(_)), Err(e)) => Err(Violation {
            invariant: "body: a batch is accepted",
            detail: format!("answered {e:?}"),
        }),
        (Some(batch), result) => ensure(
            result.is_err(),
            "body: a non-array batch is malformed",
            || format!("batch {batch} accepted"),
        ),
        (None, Ok(events)) => {
            let one = events.len() == 1
                && events[0].0.as_ref().ok() == Some(&Value::Object(obj.clone()))
                && events[0].1 == text;
            ensure(
                one,
                "body: an object is one event, its raw text the body",
                || format!("{} events", events.len()),
            )
        }
        (None, Err(e)) => Err(Violation {
            invariant: "body: an object is accepted",
            detail: format!("answered {e:?}"),
        }),
    }
}

/// The Tracking API rule: an item without its own `context`/`integrations` takes the envelope's.
fn with_envelope(item: &Value, envelope: &Map<String, Value>) -> Value {
    let mut item = item.clone();
    if let Value::Object(obj) = &mut item {
        for key in ["context", "integrations"] {
            if let (Some(shared), false) = (envelope.get(key), obj.contains_key(key)) {
                obj.insert(key.into(), shared.clone());
            }
        }
    }
    item
}

/// Equal, allowing floats to differ in their last few bits: without serde_json's
/// `float_roundtrip` feature (the workspace does not enable it) its parser is "best effort" and
/// does not always read back the shortest form it wrote (e.g. 1.9358827184253238e-13 reads as
/// …243e-13). That is serde's precision, reported on its own, not the batch's raw text.
fn json_close(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => {
                    let scale = x.abs().max(y.abs());
                    x == y || (x - y).abs() <= 1e-14 * scale || scale < f64::MIN_POSITIVE
                }
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_close(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, a)| y.get(k).is_some_and(|b| json_close(a, b)))
        }
        _ => a == b,
    }
}

/// Where two JSON values first differ: a path and both sides (a finding's detail).
fn difference(a: &Value, b: &Value, path: String) -> String {
    match (a, b) {
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find(|(_, (a, b))| !json_close(a, b))
            .map(|(i, (a, b))| difference(a, b, format!("{path}/{i}")))
            .unwrap_or(path),
        (Value::Object(x), Value::Object(y)) if x.len() == y.len() => {
            match x
                .iter()
                .find(|(k, a)| !y.get(*k).is_some_and(|b| json_close(a, b)))
            {
                Some((k, a)) => match y.get(k) {
                    Some(b) => difference(a, b, format!("{path}/{k}")),
                    None => format!("{path}/{k}: only on one side"),
                },
                None => path,
            }
        }
        _ => format!(
            "{path}: {} against {}",
            truncate(&a.to_string(), 200),
            truncate(&b.to_string(), 200)
        ),
    }
}

/// A signed request: the body, the bytes a correct signer signs, the secret, and the
/// `X-Signature` values in the order they are sent.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SignatureInput {
    pub body: HexBytes,
    pub signed: HexBytes,
    pub secret: Option<String>,
    pub headers: Vec<HexBytes>,
}

pub fn signature_input(rng: &mut SmallRng, corpus: &Corpus) -> SignatureInput {
    let (body, signed) = signed_body(rng, corpus);
    let secret = match rng.gen_range(0..10) {
        0 => None,
        1..=4 => Some("example-shared-secret".to_owned()),
        5 => Some(String::new()),
        // Longer than SHA-1's 64-byte block: HMAC hashes the key first.
        6 => Some("k".repeat(rng.gen_range(64..200))),
        7 => Some("sécrét-🙂\u{0}".to_owned()),
        _ => Some(
            (0..rng.gen_range(1..80))
                .map(|_| char::from(rng.gen_range(b'!'..=b'~')))
                .collect(),
        ),
    };
    let mac = hmac(secret.as_deref().unwrap_or_default(), &signed);
    let headers = signature_headers(rng, &mac, secret.as_deref().unwrap_or_default(), &body);
    SignatureInput {
        body: HexBytes(body),
        signed: HexBytes(signed),
        secret,
        headers: headers.into_iter().map(HexBytes).collect(),
    }
}

/// A body in one of the three shapes and the bytes Segment signs for it.
fn signed_body(rng: &mut SmallRng, corpus: &Corpus) -> (Vec<u8>, Vec<u8>) {
    match rng.gen_range(0..10) {
        0..=3 => {
            // An array, with JSON whitespace around elements: the first element's own bytes are
            // what is signed, not the brackets or the spaces.
            let n = *pick(rng, &[0, 1, 1, 2, 3, 4]);
            let items: Vec<Vec<u8>> = (0..n)
                .map(|_| {
                    serde_json::to_vec(&mutate::mixed_item(rng, corpus, mutate::MAX_DEPTH))
                        .unwrap_or_default()
                })
                .collect();
            let mut body = whitespace(rng).to_vec();
            body.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    body.extend_from_slice(whitespace(rng));
                    body.push(b',');
                }
                body.extend_from_slice(whitespace(rng));
                body.extend_from_slice(item);
            }
            body.extend_from_slice(whitespace(rng));
            body.push(b']');
            // An empty array has no first element: its own bytes are what is signed.
            let signed = items.into_iter().next().unwrap_or_else(|| body.clone());
            (body, signed)
        }
        4 => {
            // A fixture as written (pretty-printed), unless it is the array one.
            let text = pick(rng, &corpus.texts).as_bytes().to_vec();
            if array_shaped(&text) {
                let event =
                    serde_json::to_vec_pretty(pick(rng, &corpus.events)).unwrap_or_default();
                return (event.clone(), event);
            }
            (text.clone(), text)
        }
        _ => {
            // One event or a batch envelope, sometimes damaged: the whole body is what is signed,
            // and it is checked before the JSON is read.
            let value = if rng.gen_bool(0.7) {
                mutate::event(rng, corpus)
            } else {
                mutate::batch_envelope(rng, corpus)
            };
            let mut body = serde_json::to_vec(&value).unwrap_or_default();
            if rng.gen_bool(0.3) {
                for _ in 0..rng.gen_range(1..=4) {
                    text::mutate_bytes(rng, corpus, &mut body);
                }
            }
            if array_shaped(&body) {
                // The mutations made an array, whose signed bytes are only known when built above.
                body = serde_json::to_vec(pick(rng, &corpus.events)).unwrap_or_default();
            }
            (body.clone(), body)
        }
    }
}

/// What the relay treats as an array body: UTF-8 whose first non-whitespace character is `[`.
fn array_shaped(body: &[u8]) -> bool {
    std::str::from_utf8(body).is_ok_and(|t| t.trim_start().starts_with('['))
}

/// JSON whitespace (the relay must sign the element, not what surrounds it).
fn whitespace(rng: &mut SmallRng) -> &'static [u8] {
    const AROUND: &[&[u8]] = &[b"", b"", b"", b" ", b"\n  ", b"\t", b"\r\n"];
    AROUND[rng.gen_range(0..AROUND.len())]
}

pub fn hmac(secret: &str, signed: &[u8]) -> Vec<u8> {
    let mut mac =
        Hmac::<Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(signed);
    mac.finalize().into_bytes().to_vec()
}

/// `X-Signature` values: right (any case, padded), and wrong in the ways that matter.
fn signature_headers(rng: &mut SmallRng, mac: &[u8], secret: &str, body: &[u8]) -> Vec<Vec<u8>> {
    let right = hex::encode(mac);
    let flipped = {
        let mut m = mac.to_vec();
        let i = rng.gen_range(0..m.len());
        m[i] ^= 1 << rng.gen_range(0..8);
        hex::encode(m)
    };
    let one = |s: String| vec![s.into_bytes()];
    match rng.gen_range(0..17) {
        0..=3 => one(right),
        4 => one(right.to_uppercase()),
        5 => one(format!(" {right}\t")),
        6 => one(flipped),
        7 => {
            // One hex digit changed to another.
            let mut digits = right.into_bytes();
            let i = rng.gen_range(0..digits.len());
            let old = digits[i];
            digits[i] = *pick(rng, b"0123456789abcdef".as_slice());
            if digits[i] == old {
                digits[i] = if old == b'0' { b'1' } else { b'0' };
            }
            vec![digits]
        }
        8 => one(right[..rng.gen_range(0..right.len())].to_owned()),
        9 => one(format!(
            "{right}{}",
            pick(rng, &["00", "0", "ff", right.as_str()])
        )),
        // The whole body with the right secret: for an array, the classic mistake (Segment signs
        // the first element only); for anything else, simply right.
        10 => one(hex::encode(hmac(secret, body))),
        11 if rng.gen_bool(0.3) => one(hex::encode(hmac("wrong-secret", body))),
        11 => one(format!(
            "{}{}",
            pick(rng, &["0x", "sha1=", "g", "-", "zz"]),
            right
        )),
        12 => one(String::new()),
        13 => Vec::new(),
        14 => {
            let mut both = vec![right.into_bytes(), flipped.into_bytes()];
            if rng.gen_bool(0.5) {
                both.reverse();
            }
            both
        }
        15 => {
            let mut bytes = right.into_bytes();
            let at = rng.gen_range(0..=bytes.len());
            bytes.insert(at, rng.gen_range(0x80..=0xff));
            vec![bytes]
        }
        _ => one(format!("{right}é")),
    }
}

pub fn run_signature(input: &SignatureInput) -> Result<&'static str, Violation> {
    let mut headers = HeaderMap::new();
    for value in &input.headers {
        // Bytes no HTTP request could carry in a header are not sent at all.
        if let Ok(v) = HeaderValue::from_bytes(&value.0) {
            headers.append(HeaderName::from_static("x-signature"), v);
        }
    }
    let secret = input.secret.clone().map(Secret::new);
    let body = &input.body.0;
    let result = parse_body(&Bytes::copy_from_slice(body), &headers, secret.as_ref());
    let unauthorized = matches!(result, Err(IngestError::Unauthorized(_)));
    let Some(secret) = &input.secret else {
        return ensure(
            !unauthorized,
            "signature: no secret, no signature check",
            || format!("answered {result:?}"),
        )
        .map(|()| "no secret");
    };
    // The oracle: the first header, as text, trimmed, hex for exactly the HMAC of the signed bytes.
    let mac = hmac(secret, &input.signed.0);
    let verifies = headers
        .get("x-signature")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| hex::decode(v.trim()).ok())
        .is_some_and(|sent| sent == mac);
    let text = std::str::from_utf8(body).ok();
    let array = array_shaped(body);
    match &result {
        // An empty array is signed over its own bytes, an empty batch like any object: nothing
        // unsigned passes.
        Ok(events) if events.is_empty() => ensure(
            verifies,
            "signature: an unsigned body is refused, an empty one too",
            || "no events from a wrongly signed body".into(),
        )
        .map(|()| "accepted, no events"),
        Ok(events) => ensure(verifies, "signature: a wrong signature is refused", || {
            format!("{} events accepted", events.len())
        })
        .map(|()| "accepted"),
        Err(IngestError::Unauthorized(why)) => {
            ensure(!verifies, "signature: a correct signature passes", || {
                why.to_string()
            })
            .map(|()| "refused: signature")
        }
        // Past the signature only when it verified; an array's JSON is split first.
        Err(IngestError::Malformed(why)) => ensure(
            verifies || array || text.is_none(),
            "signature: checked before the body's JSON",
            || format!("wrong signature, but answered malformed: {why}"),
        )
        .map(|()| "refused: malformed"),
        Err(other) => Err(Violation {
            invariant: "signature: only Unauthorized or Malformed refuse",
            detail: format!("{other:?}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference test vector verifies through the fuzz target, and its flipped form does not.
    #[test]
    fn reference_vector() {
        let corpus = Corpus::load();
        let minified = ingest_minify(corpus.texts[1]);
        assert_eq!(
            minified.len(),
            615,
            "identify-basic.json as JSON.stringify writes it"
        );
        let right = "800c9b04f49c31ca47fcd633e01a7b6e779bc302";
        assert_eq!(
            hex::encode(hmac("example-shared-secret", minified.as_bytes())),
            right
        );
        let input = |sig: &str| SignatureInput {
            body: HexBytes(minified.clone().into_bytes()),
            signed: HexBytes(minified.clone().into_bytes()),
            secret: Some("example-shared-secret".into()),
            headers: vec![HexBytes(sig.as_bytes().to_vec())],
        };
        assert_eq!(run_signature(&input(right)), Ok("accepted"));
        let flipped = "800c9b04f49c31ca47fcd633e01a7b6e779bc303";
        assert_eq!(run_signature(&input(flipped)), Ok("refused: signature"));
    }

    /// The body oracle notices a wrong answer: it is not vacuous.
    #[test]
    fn body_oracle_catches_a_wrong_count() {
        let body = br#"[{"type":"track"},{"type":"track"}]"#;
        let one: Result<Vec<RawEvent>, IngestError> = Ok(vec![(
            Ok(serde_json::json!({"type":"track"})),
            "{\"type\":\"track\"}".into(),
        )]);
        let v = check_body(body, &one).unwrap_err();
        assert_eq!(v.invariant, "body: array yields one event per element");
        let refused: Result<Vec<RawEvent>, IngestError> = Err(IngestError::Malformed("x".into()));
        assert!(check_body(br#"{"type":"track"}"#, &refused).is_err());
    }

    /// Whitespace outside strings removed: `JSON.stringify` of the pretty fixtures.
    fn ingest_minify(text: &str) -> String {
        let mut out = String::new();
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
}
