//! The seed corpus: the documented Segment payloads the tests use, compiled in.
//!
//! In: `tests/fixtures/segment-payloads/*.json` at build time (`include_str!`, so the binary
//! fuzzes the same seeds wherever it runs). Out: [`Corpus`]: each file's text as written, the
//! documents parsed, and every event found in them (single files, array elements, batch items).
//! Stays true: the list below names every fixture file (a test compares it with the directory),
//! and every fixture is valid JSON.

use serde_json::Value;

/// Every file of `tests/fixtures/segment-payloads/`, by name.
const FIXTURES: [(&str, &str); 12] = [
    (
        "batch-tracking-api.json",
        include_str!("../../../../tests/fixtures/segment-payloads/batch-tracking-api.json"),
    ),
    (
        "identify-basic.json",
        include_str!("../../../../tests/fixtures/segment-payloads/identify-basic.json"),
    ),
    (
        "identify-engage-audience-entered.json",
        include_str!(
            "../../../../tests/fixtures/segment-payloads/identify-engage-audience-entered.json"
        ),
    ),
    (
        "identify-engage-audience-exited.json",
        include_str!(
            "../../../../tests/fixtures/segment-payloads/identify-engage-audience-exited.json"
        ),
    ),
    (
        "identify-engage-computed-trait.json",
        include_str!(
            "../../../../tests/fixtures/segment-payloads/identify-engage-computed-trait.json"
        ),
    ),
    (
        "identify-nested-traits.json",
        include_str!("../../../../tests/fixtures/segment-payloads/identify-nested-traits.json"),
    ),
    (
        "identify-no-email.json",
        include_str!("../../../../tests/fixtures/segment-payloads/identify-no-email.json"),
    ),
    (
        "track-engage-audience-entered.json",
        include_str!(
            "../../../../tests/fixtures/segment-payloads/track-engage-audience-entered.json"
        ),
    ),
    (
        "track-engage-audience-exited.json",
        include_str!(
            "../../../../tests/fixtures/segment-payloads/track-engage-audience-exited.json"
        ),
    ),
    (
        "track-engage-computed-trait.json",
        include_str!(
            "../../../../tests/fixtures/segment-payloads/track-engage-computed-trait.json"
        ),
    ),
    (
        "track-event.json",
        include_str!("../../../../tests/fixtures/segment-payloads/track-event.json"),
    ),
    (
        "webhook-actions-batch-array.json",
        include_str!(
            "../../../../tests/fixtures/segment-payloads/webhook-actions-batch-array.json"
        ),
    ),
];

/// The seeds every generated input starts from.
pub struct Corpus {
    /// Each fixture's text as written (pretty-printed, as a person or curl would send it).
    pub texts: Vec<&'static str>,
    /// Each fixture parsed: events, arrays of events and `{"batch": [...]}` envelopes.
    pub documents: Vec<Value>,
    /// Every single event in the fixtures.
    pub events: Vec<Value>,
}

impl Corpus {
    pub fn load() -> Corpus {
        let texts: Vec<&'static str> = FIXTURES.iter().map(|(_, text)| *text).collect();
        let documents: Vec<Value> = FIXTURES
            .iter()
            .map(|(name, text)| {
                serde_json::from_str(text)
                    .unwrap_or_else(|e| panic!("fixture {name} is not JSON: {e}"))
            })
            .collect();
        let mut events = Vec::new();
        for document in &documents {
            match document {
                Value::Array(items) => events.extend(items.iter().cloned()),
                Value::Object(obj) => match obj.get("batch") {
                    Some(Value::Array(items)) => events.extend(items.iter().cloned()),
                    _ => events.push(document.clone()),
                },
                _ => {}
            }
        }
        Corpus {
            texts,
            documents,
            events,
        }
    }

    pub fn len(&self) -> usize {
        self.texts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The compiled-in list is the fixture directory, so a new fixture cannot be left out.
    #[test]
    fn every_fixture_is_a_seed() {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/segment-payloads"
        );
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .expect("fixture directory")
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".json"))
            .collect();
        on_disk.sort();
        let listed: Vec<String> = FIXTURES.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(listed, on_disk);
        let corpus = Corpus::load();
        assert!(corpus.events.len() > corpus.documents.len());
    }
}
