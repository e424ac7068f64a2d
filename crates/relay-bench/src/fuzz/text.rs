//! Text mutations: request bodies, as bytes.
//!
//! In: a seeded [`SmallRng`] and the [`Corpus`]. Out: a body in one of the three shapes (or none),
//! compact or pretty, then perhaps damaged byte by byte: bit flips, inserted, deleted and
//! duplicated bytes, JSON tokens, bytes that break UTF-8, literals serde cannot hold (`1e400`, a lone
//! `\ud800`), whitespace JSON does not know, fragments of the fixtures as written, and nesting far
//! past serde_json's recursion limit.
//! Stays true: a pure function of the RNG's state and the corpus; a body is at most [`MAX_BODY`]
//! bytes.

use rand::rngs::SmallRng;
use rand::Rng;
use serde_json::Value;

use super::corpus::Corpus;
use super::mutate::{any_value, batch_envelope, event, mixed_item, KEYS, MAX_DEPTH};
use super::scalars::{pick, WHITESPACE};

/// Largest generated body: far above Segment's events, far below memory trouble.
const MAX_BODY: usize = 1 << 20;

/// Literals only JSON text can carry: serde_json refuses or rounds them.
const LITERALS: &[&str] = &[
    "1e400",
    "-1e400",
    "1e-400",
    "-0",
    "-0.0",
    "123456789012345678901234567890",
    "18446744073709551616",
    "-9223372036854775809",
    "0.30000000000000004",
    "9007199254740993",
    "1.7976931348623157e309",
    "\"\\ud800\"",
    "\"\\udc00\\ud800\"",
    "\"\\u0000\"",
    "\"\\uDBFF\\uDFFF\"",
    "\"\u{7f}\"",
    "true",
    "null",
    "[]",
    "{}",
    "[[],{},[{}]]",
];

/// Structural JSON tokens and bytes that break UTF-8.
const TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"\"",
    b"\\",
    b"\\u",
    b"\\ud800",
    b"null",
    b"\"batch\":",
    b"\"type\":",
    b"]]]]",
    b"[[[[",
    b"\xff",
    b"\xc0\x80",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\xe2\x80",
    b"\x00",
];

/// A request body in one of the three shapes (or none), as compact or pretty text, then perhaps
/// damaged byte by byte.
pub fn body(rng: &mut SmallRng, corpus: &Corpus) -> Vec<u8> {
    let value = match rng.gen_range(0..20) {
        0..=5 => event(rng, corpus),
        6..=11 => {
            let n = *pick(rng, &[0, 1, 1, 2, 3, 5, 8, 40]);
            Value::Array((0..n).map(|_| mixed_item(rng, corpus, MAX_DEPTH)).collect())
        }
        12..=15 => batch_envelope(rng, corpus),
        16..=17 => {
            // A fixture exactly as written, then only byte damage.
            let mut text = pick(rng, &corpus.texts).as_bytes().to_vec();
            for _ in 0..rng.gen_range(1..=6) {
                mutate_bytes(rng, corpus, &mut text);
            }
            return text;
        }
        18 => return deep_text(rng, corpus),
        _ => any_value(rng, corpus, 5),
    };
    let mut text = if rng.gen_bool(0.25) {
        serde_json::to_vec_pretty(&value)
    } else {
        serde_json::to_vec(&value)
    }
    .unwrap_or_default();
    if rng.gen_bool(0.5) {
        for _ in 0..rng.gen_range(1..=8) {
            mutate_bytes(rng, corpus, &mut text);
        }
    }
    text
}

/// Nesting far past serde_json's recursion limit, alone or inside an otherwise good array.
fn deep_text(rng: &mut SmallRng, corpus: &Corpus) -> Vec<u8> {
    let levels = *pick(rng, &[127, 128, 129, 500, 5_000, 50_000]);
    const SHAPES: &[(&[u8], &[u8])] = &[
        (b"[", b"]"),
        (b"{\"a\":", b"}"),
        (b"{\"batch\":[", b"]}"),
        (b"{\"traits\":", b"}"),
    ];
    let (open, close) = *pick(rng, SHAPES);
    let mut deep = open.repeat(levels);
    deep.extend_from_slice(b"1");
    // Sometimes unbalanced: the parser must stop, not recurse to the end.
    let closing = if rng.gen_bool(0.8) {
        levels
    } else {
        rng.gen_range(0..levels)
    };
    deep.extend(close.repeat(closing));
    if rng.gen_bool(0.5) {
        let mut text = b"[".to_vec();
        text.extend(serde_json::to_vec(&event(rng, corpus)).unwrap_or_default());
        text.push(b',');
        text.extend(deep);
        text.push(b']');
        text
    } else {
        deep
    }
}

/// One byte-level edit; the result stays under [`MAX_BODY`].
pub fn mutate_bytes(rng: &mut SmallRng, corpus: &Corpus, b: &mut Vec<u8>) {
    let at = rng.gen_range(0..=b.len());
    match rng.gen_range(0..10) {
        0 if !b.is_empty() => {
            let i = at.min(b.len() - 1);
            b[i] ^= 1 << rng.gen_range(0..8);
        }
        1 if !b.is_empty() => {
            let i = at.min(b.len() - 1);
            b[i] = *pick(
                rng,
                &[
                    0x00, 0x7f, 0x80, 0xff, 0xc0, 0xed, b'"', b'\\', b'{', b'[', b',', b':',
                ],
            );
        }
        2 => {
            let bytes: Vec<u8> = (0..rng.gen_range(1..=4)).map(|_| rng.gen()).collect();
            b.splice(at..at, bytes);
        }
        3 if !b.is_empty() => {
            let end = (at + rng.gen_range(1..=64)).min(b.len());
            b.drain(at.min(end)..end);
        }
        4 if !b.is_empty() => {
            let start = rng.gen_range(0..b.len());
            let end = (start + rng.gen_range(1..=256)).min(b.len());
            let copy = b[start..end].to_vec();
            b.splice(at..at, copy);
        }
        5 => {
            let token = *pick(rng, TOKENS);
            b.splice(at..at, token.iter().copied());
        }
        6 => b.truncate(at),
        7 => {
            let donor = pick(rng, &corpus.texts).as_bytes();
            let start = rng.gen_range(0..donor.len());
            let end = (start + rng.gen_range(1..=200)).min(donor.len());
            b.splice(at..at, donor[start..end].iter().copied());
        }
        8 => {
            let ws = pick(rng, WHITESPACE).as_bytes();
            b.splice(at..at, ws.iter().copied());
        }
        _ => {
            // A known key with a literal serde cannot hold, just inside an object.
            if let Some(brace) = b[..at].iter().rposition(|&c| c == b'{') {
                let pair = format!("\"{}\":{},", pick(rng, KEYS), pick(rng, LITERALS));
                b.splice(brace + 1..brace + 1, pair.into_bytes());
            }
        }
    }
    b.truncate(MAX_BODY);
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    /// The same seed gives the same body.
    #[test]
    fn bodies_are_reproducible() {
        let corpus = Corpus::load();
        let a = body(&mut SmallRng::seed_from_u64(42), &corpus);
        let b = body(&mut SmallRng::seed_from_u64(42), &corpus);
        assert_eq!(a, b);
    }
}
