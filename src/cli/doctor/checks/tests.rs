//! The doctor's judgements as tables: rate limits, mapping targets, near misses.

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::prosperstack::PropertyType;

fn prop(key: &str, name: &str) -> Property {
    Property {
        id: format!("prop_{key}"),
        key: key.into(),
        name: name.into(),
        entity: "subscriber".into(),
        kind: PropertyType::Text,
        format: None,
    }
}

fn rules(mappings: &[(&str, &str)]) -> Rules {
    Rules {
        trait_mappings: mappings
            .iter()
            .map(|(t, k)| (t.to_string(), k.to_string()))
            .collect::<BTreeMap<_, _>>(),
        snake_case_match: true,
    }
}

/// The server's limit below ours warns; at or above it is ok; no header warns.
#[test]
fn rate_limit_table() {
    let minute = Duration::from_secs(60);
    let seen = |limit: Option<u32>| RateLimitHeaders {
        limit,
        remaining: Some(7),
        reset: Some(Duration::from_secs(30)),
    };
    let cases = [
        (Some(100), 100, Level::Ok),
        (Some(200), 100, Level::Ok),
        (Some(60), 100, Level::Warning),
        (None, 100, Level::Warning),
    ];
    for (limit, configured, want) in cases {
        let finding = rate_limit(&seen(limit), configured, minute);
        assert_eq!(
            finding.level, want,
            "{limit:?} vs {configured}: {}",
            finding.text
        );
    }
    let low = rate_limit(&seen(Some(60)), 100, minute).text;
    assert!(
        low.contains("PROSPERSTACK_RATE_LIMIT_REQUESTS") && low.contains("60"),
        "{low}"
    );
    let fine = rate_limit(&seen(Some(100)), 100, minute).text;
    assert!(fine.contains("RateLimit-Remaining 7"), "{fine}");
}

/// A mapping to no subscriber property is a problem naming trait and key (and the property it
/// probably meant); good mappings are one ok line; none, no line.
#[test]
fn mapping_targets_table() {
    let c = Catalogue::new(vec![
        prop("last_contacted", "Last contacted"),
        prop("plan", "Plan"),
    ]);
    let bad = mapping_targets(
        &c,
        &rules(&[("Last Contacted", "Last contacted"), ("Tier", "tier")]),
    );
    assert_eq!(bad.len(), 2);
    assert!(bad.iter().all(|f| f.level == Level::Problem));
    assert!(
        bad[0]
            .text
            .contains("\"Last Contacted\" = \"Last contacted\""),
        "{}",
        bad[0].text
    );
    assert!(
        bad[0].text.contains("did you mean last_contacted"),
        "{}",
        bad[0].text
    );
    assert!(bad[1].text.contains("\"tier\"") && !bad[1].text.contains("did you mean"));
    let good = mapping_targets(&c, &rules(&[("Last Contacted", "last_contacted")]));
    assert_eq!(
        good.iter().map(|f| f.level).collect::<Vec<_>>(),
        [Level::Ok]
    );
    assert!(mapping_targets(&c, &rules(&[])).is_empty());
}

/// Near misses: a mapped trait carried to its property is fine; a property whose name is a
/// likely trait but for case or spacing, that the trait does not reach, warns.
#[test]
fn near_misses_table() {
    let demo = Catalogue::new(vec![
        prop("last_contacted", "Last contacted"),
        prop("plan", "Plan"),
        prop("preferred_name", "Preferred name"),
    ]);
    let mapped = rules(&[("Last Contacted", "last_contacted")]);
    assert!(
        near_misses(&demo, &mapped).is_empty(),
        "{:?}",
        near_misses(&demo, &mapped)
    );
    assert!(near_misses(&demo, &rules(&[])).is_empty());

    let spaced = Catalogue::new(vec![
        prop("plan_label", "Plan "),
        prop("company_size", " Company"),
    ]);
    let found = near_misses(&spaced, &rules(&[]));
    let texts: Vec<&str> = found.iter().map(|f| f.text.as_str()).collect();
    assert_eq!(found.len(), 2, "{texts:#?}");
    assert!(found.iter().all(|f| f.level == Level::Warning));
    assert!(
        texts
            .iter()
            .any(|t| t.contains("\"Plan \" (key plan_label)")
                && t.contains("\"plan\" (matches no property)")
                && t.contains(
                    "rename the property to \"Plan\", or map the trait to \"plan_label\""
                )),
        "{texts:#?}"
    );
    assert!(texts
        .iter()
        .any(|t| t.contains("\" Company\"") && t.contains("\"company\"")));

    // A mapped trait differing in case from a property it is not mapped to.
    let elsewhere = rules(&[("last contacted", "plan")]);
    let found = near_misses(&demo, &elsewhere);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0]
            .text
            .contains("\"last contacted\" (goes to plan instead)"),
        "{}",
        found[0].text
    );
}
