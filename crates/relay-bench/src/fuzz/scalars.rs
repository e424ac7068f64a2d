//! Scalars: the odd values a single field can hold.
//!
//! In: a seeded [`SmallRng`]. Out: text (the dictionary, code points from awkward ranges, long
//! runs), numbers serde_json can hold (extremes, negative zero, precision edges), and the strings
//! value typing sees: date-like, number-like and boolean-like.
//! Stays true: a pure function of the RNG's state (no clock, no global RNG); a string is at most
//! [`MAX_STRING`] bytes long (Segment refuses larger events).

use rand::rngs::SmallRng;
use rand::Rng;
use serde_json::{Number, Value};

/// Longest generated string: Segment refuses events over 32 KB.
pub const MAX_STRING: usize = 32 << 10;

pub const STRINGS: &[&str] = &[
    "",
    " ",
    "  \t\n",
    "\u{0}",
    "\u{feff}",
    "\u{200b}",
    "\u{202e}evil",
    "\u{2028}",
    "\u{fffd}",
    "\u{ffff}",
    "\u{10ffff}",
    "é",
    "e\u{301}",
    "𝕏",
    "🙂‍↔️",
    "日本語",
    "\\",
    "\"",
    "\\u0000",
    "null",
    "true",
    "0",
    "a@b.c",
    " A@B.C ",
    "@",
    "a@",
    "\u{a0}user@example.com\u{a0}",
    "\u{3000}",
    "usr_48213",
    "personas_2hU1bXr5KpQ8mZc3VwT6yNd9LfA",
    "high_value_customers",
    "2024-06-10T09:12:01.532Z",
];

pub const WHITESPACE: &[&str] = &[
    " ", "\t", "\n", "\r", "\u{c}", "\u{a0}", "\u{feff}", "\u{2028}", "\u{3000}",
];

pub fn pick<'a, T>(rng: &mut SmallRng, items: &'a [T]) -> &'a T {
    &items[rng.gen_range(0..items.len())]
}

/// One of `words` (a [`pick`] whose result type needs no help from the caller).
pub fn word(rng: &mut SmallRng, words: &[&'static str]) -> &'static str {
    words[rng.gen_range(0..words.len())]
}

pub fn scalar(rng: &mut SmallRng) -> Value {
    match rng.gen_range(0..12) {
        0 => Value::Null,
        1 => Value::Bool(rng.gen()),
        2 | 3 => number(rng),
        4 => Value::String(date_like(rng)),
        5 => Value::String(number_like(rng)),
        6 => Value::String(bool_like(rng).to_owned()),
        _ => Value::String(string(rng)),
    }
}

/// Numbers serde_json can hold: extremes, negative zero, precision edges, random ones.
pub fn number(rng: &mut SmallRng) -> Value {
    let n = match rng.gen_range(0..8) {
        0 => Number::from(*pick(rng, &[0i64, 1, -1, i64::MIN, i64::MAX, 5800])),
        1 => Number::from(*pick(rng, &[u64::MAX, 1 << 53, (1 << 53) + 1])),
        2 => {
            let f = *pick(
                rng,
                &[
                    -0.0,
                    0.1,
                    1.5,
                    1e308,
                    -1e308,
                    f64::MAX,
                    f64::MIN_POSITIVE,
                    5e-324,
                    f64::EPSILON,
                    0.30000000000000004,
                ],
            );
            Number::from_f64(f).unwrap_or_else(|| Number::from(0))
        }
        3 => Number::from(rng.gen::<i64>()),
        4 => Number::from(rng.gen::<u64>()),
        5 => {
            let f = rng.gen::<f64>() * 10f64.powi(rng.gen_range(-30..30));
            Number::from_f64(if rng.gen() { f } else { -f }).unwrap_or_else(|| Number::from(0))
        }
        _ => Number::from(rng.gen_range(-2i64..=2)),
    };
    Value::Number(n)
}

/// Odd text: the dictionary, random code points from awkward ranges, long runs, mixtures.
pub fn string(rng: &mut SmallRng) -> String {
    match rng.gen_range(0..8) {
        0..=2 => pick(rng, STRINGS).to_string(),
        3 => (0..rng.gen_range(0..24)).map(|_| odd_char(rng)).collect(),
        4 => {
            // A run: mostly short, now and then up to the longest an event could carry (long
            // inputs are slow, and most of what they find short ones find too).
            let text = word(rng, STRINGS);
            let times = match rng.gen_range(0..16) {
                0 => rng.gen_range(1..=MAX_STRING / text.len().max(1)),
                _ => rng.gen_range(1..=8),
            };
            text.repeat(times)
        }
        5 => format!(
            "{}{}{}",
            pick(rng, STRINGS),
            odd_char(rng),
            pick(rng, STRINGS)
        ),
        6 => date_like(rng),
        _ => {
            let mut s = pick(rng, STRINGS).to_string();
            mutate_string(rng, &mut s);
            s
        }
    }
}

fn odd_char(rng: &mut SmallRng) -> char {
    let ranges: &[(u32, u32)] = &[
        (0x00, 0x1f),       // controls
        (0x20, 0x7e),       // ASCII
        (0x80, 0xff),       // Latin-1, with NBSP and soft hyphen
        (0x300, 0x36f),     // combining marks
        (0x2000, 0x206f),   // spaces, joiners, bidi controls
        (0xfe00, 0xffff),   // variation selectors, BOM, specials, noncharacters
        (0x1f300, 0x1faff), // emoji
        (0x10_0000, 0x10_ffff),
    ];
    let (lo, hi) = *pick(rng, ranges);
    char::from_u32(rng.gen_range(lo..=hi)).unwrap_or('\u{fffd}')
}

/// Edits a string at char boundaries: insert, delete, case, whitespace, repetition.
pub fn mutate_string(rng: &mut SmallRng, s: &mut String) {
    let at = s.floor_char_boundary_compat(rng.gen_range(0..=s.len()));
    match rng.gen_range(0..6) {
        0 => s.insert(at, odd_char(rng)),
        1 => {
            if let Some(c) = s[at..].chars().next() {
                s.replace_range(at..at + c.len_utf8(), "");
            }
        }
        2 => *s = s.to_uppercase(),
        3 => *s = format!("{}{s}{}", pick(rng, WHITESPACE), pick(rng, WHITESPACE)),
        4 => s.insert_str(at, word(rng, STRINGS)),
        _ => s.truncate(at),
    }
}

/// `str::floor_char_boundary` is unstable; this is the stable equivalent.
pub trait FloorCharBoundary {
    fn floor_char_boundary_compat(&self, index: usize) -> usize;
}

impl FloorCharBoundary for String {
    fn floor_char_boundary_compat(&self, index: usize) -> usize {
        let mut i = index.min(self.len());
        while !self.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}

/// Dates and date-times, right and wrong: unpadded, signed and five-digit years, impossible days,
/// other separators, offsets out of range, lower-case `t`/`z`, surrounding whitespace.
pub fn date_like(rng: &mut SmallRng) -> String {
    let year = match rng.gen_range(0..10) {
        0..=5 => format!("{:04}", rng.gen_range(1900..2100)),
        6 => pick(rng, &["0000", "0001", "9999", "1970"]).to_string(),
        7 => rng.gen_range(0..1000).to_string(),
        8 => rng.gen_range(10_000..300_000).to_string(),
        _ => format!("{}{:04}", pick(rng, &["+", "-"]), rng.gen_range(0..10_000)),
    };
    let month = two_digits(rng, 1..=12, &[0, 13, 99]);
    let day = two_digits(rng, 1..=31, &[0, 32, 99]);
    let sep = *pick(rng, &["-", "-", "-", "-", "-", "-", "/", ".", "", " "]);
    let mut s = format!("{year}{sep}{month}{sep}{day}");
    if rng.gen_bool(0.45) {
        s.push_str(word(rng, &["T", "T", "T", "t", " ", "_"]));
        let (h, m, sec) = (
            two_digits(rng, 0..=23, &[24, 60, 99]),
            two_digits(rng, 0..=59, &[60, 61]),
            two_digits(rng, 0..=59, &[60, 61]),
        );
        s.push_str(&format!("{h}:{m}:{sec}"));
        if rng.gen_bool(0.5) {
            let digits: String = (0..rng.gen_range(0..=12))
                .map(|_| char::from(b'0' + rng.gen_range(0..10u8)))
                .collect();
            s.push('.');
            s.push_str(&digits);
        }
        s.push_str(word(
            rng,
            &[
                "Z", "Z", "z", "", "+00:00", "-05:00", "+14:00", "-23:59", "+24:00", "+99:99",
                "+0530", "+05", " UTC",
            ],
        ));
    }
    match rng.gen_range(0..12) {
        0 => format!(" {s}\t"),
        1 => format!("{}{s}", pick(rng, WHITESPACE)),
        _ => s,
    }
}

/// Usually zero-padded, sometimes not, sometimes out of range.
fn two_digits(rng: &mut SmallRng, normal: std::ops::RangeInclusive<u32>, odd: &[u32]) -> String {
    match rng.gen_range(0..20) {
        0..=15 => format!("{:02}", rng.gen_range(normal)),
        16..=18 => rng.gen_range(normal).to_string(),
        _ => pick(rng, odd).to_string(),
    }
}

pub fn number_like(rng: &mut SmallRng) -> String {
    match rng.gen_range(0..8) {
        0 => rng.gen::<i64>().to_string(),
        1 => rng.gen_range(-1000..1000).to_string(),
        2 => format!("{}", rng.gen::<f64>() * 10f64.powi(rng.gen_range(-20..20))),
        3 => format!(" {} ", rng.gen_range(-99..99)),
        _ => pick(
            rng,
            &[
                "1e400",
                "-1e400",
                "1e-400",
                "inf",
                "-inf",
                "infinity",
                "NaN",
                "nan",
                "-0",
                "+5",
                "0x10",
                "1_000",
                "1,000",
                "١٢٣",
                "5800.00",
                "00012",
                ".5",
                "5.",
                "1E+5",
                "9223372036854775807",
                "9223372036854775808",
                "-9223372036854775809",
                "18446744073709551616",
                "123456789012345678901234567890",
                "\u{a0}12",
            ],
        )
        .to_string(),
    }
}

pub fn bool_like(rng: &mut SmallRng) -> &'static str {
    word(
        rng,
        &[
            "true",
            "false",
            "t",
            "f",
            "1",
            "0",
            "TRUE",
            "False",
            " T ",
            "yes",
            "no",
            "on",
            "tru",
            "ｔｒｕｅ",
            "true\u{0}",
            "\u{a0}true",
        ],
    )
}
