//! Schema versions, whatever the database: the ordered migration steps a backend knows and the
//! plan of which of them a store still needs.
//!
//! In: the version recorded in a store (0 for a store that predates versions, or a new one) and
//! the backend's steps. Out: the steps to apply, in order, or [`Plan::Newer`] when the store was
//! written by a release that knows more steps than this one.
//!
//! Stays true:
//! - Steps are numbered 1, 2, 3… without gaps, in order; step N brings a store from version N-1
//!   to version N. A released step is never edited: a change is a new step.
//! - A backend applies each step in one transaction together with the bump of the recorded
//!   version, so a crash mid-upgrade leaves the store at a version whose schema it has.
//! - A store at a version beyond the last known step is never written to: an older release
//!   cannot know what the newer one's data means.
//!
//! Each backend keeps its own SQL and its own place for the version (SQLite: `PRAGMA
//! user_version`; PostgreSQL: a one-row table) and its own loop around [`plan`]; only the
//! numbering and the planning are shared, which is all the backends have in common.

/// One step of a backend's schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Migration {
    /// The version the store has once this step is applied.
    pub version: u32,
    /// A few words for logs: what the step does.
    pub name: &'static str,
    /// The statements, run in one transaction.
    pub sql: &'static str,
}

/// What a store at some version needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan<'a> {
    /// These steps, in order (empty: the store is current).
    Apply(&'a [Migration]),
    /// The store was written by a newer release: it is at `found`, this one knows up to `known`.
    Newer { found: u32, known: u32 },
}

/// The version a store has once every step is applied.
pub fn latest(steps: &[Migration]) -> u32 {
    steps.last().map_or(0, |m| m.version)
}

/// Which of `steps` (numbered 1, 2, 3… in order) a store at version `stored` still needs.
pub fn plan(stored: u32, steps: &[Migration]) -> Plan<'_> {
    let known = latest(steps);
    if stored > known {
        return Plan::Newer {
            found: stored,
            known,
        };
    }
    // Steps are in order, so the ones still needed are a tail of the list.
    let first = steps
        .iter()
        .position(|m| m.version > stored)
        .unwrap_or(steps.len());
    Plan::Apply(&steps[first..])
}

/// Whether `steps` are numbered 1, 2, 3… in order, as [`plan`] assumes; each backend's list is
/// checked by a test.
#[cfg(test)]
pub fn numbered_in_order(steps: &[Migration]) -> bool {
    steps
        .iter()
        .enumerate()
        .all(|(i, m)| m.version as usize == i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEPS: &[Migration] = &[
        Migration {
            version: 1,
            name: "one",
            sql: "1",
        },
        Migration {
            version: 2,
            name: "two",
            sql: "2",
        },
        Migration {
            version: 3,
            name: "three",
            sql: "3",
        },
    ];

    /// Each stored version gets the steps after it; a version beyond the last is refused.
    #[test]
    fn plans_the_steps_after_the_stored_version() {
        let cases: &[(u32, &[Migration], Plan<'_>)] = &[
            (0, STEPS, Plan::Apply(STEPS)),
            (1, STEPS, Plan::Apply(&STEPS[1..])),
            (2, STEPS, Plan::Apply(&STEPS[2..])),
            (3, STEPS, Plan::Apply(&[])),
            (4, STEPS, Plan::Newer { found: 4, known: 3 }),
            (
                u32::MAX,
                STEPS,
                Plan::Newer {
                    found: u32::MAX,
                    known: 3,
                },
            ),
            (0, &[], Plan::Apply(&[])),
            (1, &[], Plan::Newer { found: 1, known: 0 }),
        ];
        for (stored, steps, expected) in cases {
            assert_eq!(plan(*stored, steps), *expected, "stored version {stored}");
        }
    }

    /// The numbering check accepts 1, 2, 3… and nothing else.
    #[test]
    fn numbering_must_start_at_one_without_gaps() {
        assert!(numbered_in_order(STEPS));
        assert!(numbered_in_order(&[]));
        assert!(!numbered_in_order(&STEPS[1..]));
        assert!(!numbered_in_order(&[STEPS[0], STEPS[2]]));
        assert!(!numbered_in_order(&[STEPS[1], STEPS[0]]));
    }
}
