//! Cursor pagination for list endpoints. In: the raw `limit` and `cursor` query values and a
//! collection in creation order; out: one page and the cursor of the next, or a 400.
//!
//! A cursor is the base64url-encoded id of the last item returned, tagged with a version so a
//! garbled value is told apart from a stale one. Because it names an item rather than an offset,
//! it stays valid while items are added, and (with deleted properties kept as tombstones) while
//! items are deleted.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use super::SandboxError;

const DEFAULT_LIMIT: usize = 10;
const MAX_LIMIT: usize = 100;
const CURSOR_TAG: &str = "c1:";

/// Which page to return: at most `limit` items after the item with id `after`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PageRequest {
    pub(crate) limit: usize,
    pub(crate) after: Option<String>,
}

impl PageRequest {
    /// Parses the raw query values; `limit` must be an integer in 1..=100, `cursor` a value issued
    /// by [`encode_cursor`].
    pub(crate) fn parse(
        limit: Option<&str>,
        cursor: Option<&str>,
    ) -> Result<PageRequest, SandboxError> {
        let limit = match limit {
            None => DEFAULT_LIMIT,
            Some(raw) => parse_limit(raw)?,
        };
        let after = cursor.map(decode_cursor).transpose()?;
        Ok(PageRequest { limit, after })
    }
}

fn parse_limit(raw: &str) -> Result<usize, SandboxError> {
    match raw.parse::<usize>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(SandboxError::Invalid(format!(
            r#""limit" must be an integer from 1 to {MAX_LIMIT}"#
        ))),
    }
}

pub(crate) fn encode_cursor(id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{CURSOR_TAG}{id}"))
}

fn decode_cursor(raw: &str) -> Result<String, SandboxError> {
    URL_SAFE_NO_PAD
        .decode(raw)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.strip_prefix(CURSOR_TAG).map(str::to_string))
        .ok_or_else(invalid_cursor)
}

fn invalid_cursor() -> SandboxError {
    SandboxError::Invalid(r#""cursor" is not a cursor returned by this endpoint"#.to_string())
}

/// One page of `items` (in creation order) that satisfy `keep`, after the cursor's item, and the
/// cursor for the next page (`None` when no further item satisfies `keep`). A cursor naming an
/// item not in `items` is a 400: it came from another endpoint or was made up.
pub(crate) fn paginate<'a, T>(
    items: &'a [T],
    id_of: impl Fn(&T) -> &str,
    keep: impl Fn(&T) -> bool,
    request: &PageRequest,
) -> Result<(Vec<&'a T>, Option<String>), SandboxError> {
    let start = match &request.after {
        None => 0,
        Some(after) => {
            let position = items.iter().position(|item| id_of(item) == after);
            position.ok_or_else(invalid_cursor)? + 1
        }
    };
    let mut matching = items[start..].iter().filter(|item| keep(item));
    let page: Vec<&T> = matching.by_ref().take(request.limit).collect();
    let next = match (page.last(), matching.next()) {
        (Some(last), Some(_)) => Some(encode_cursor(id_of(last))),
        _ => None,
    };
    Ok((page, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("item_{i}")).collect()
    }

    /// Pages of 2 over 5 items walk all items once, and the last page has no next cursor.
    #[test]
    fn walks_every_item_once() {
        let items = ids(5);
        let mut request = PageRequest::parse(Some("2"), None).expect("valid limit");
        let mut seen = Vec::new();
        loop {
            let (page, next) = paginate(&items, |s| s, |_| true, &request).expect("valid cursor");
            seen.extend(page.into_iter().cloned());
            match next {
                Some(cursor) => {
                    request = PageRequest::parse(Some("2"), Some(&cursor)).expect("our cursor")
                }
                None => break,
            }
        }
        assert_eq!(seen, items);
    }

    /// A filter that leaves nothing after the page gives a null cursor even if other items follow.
    #[test]
    fn next_cursor_counts_only_matching_items() {
        let items = ids(5);
        let request = PageRequest::parse(Some("1"), None).expect("valid limit");
        let (page, next) = paginate(&items, |s| s, |s| s == "item_1", &request).expect("no cursor");
        assert_eq!(page, vec![&items[1]]);
        assert_eq!(next, None);
    }

    /// Limits outside 1..=100 and cursors we did not issue are rejected.
    #[test]
    fn rejects_bad_limits_and_cursors() {
        for bad in ["0", "101", "-1", "abc", "", "1.5"] {
            assert!(PageRequest::parse(Some(bad), None).is_err(), "{bad}");
        }
        assert!(PageRequest::parse(Some("100"), None).is_ok());
        assert!(PageRequest::parse(None, Some("not base64!")).is_err());
        let untagged = URL_SAFE_NO_PAD.encode("item_1");
        assert!(PageRequest::parse(None, Some(&untagged)).is_err());
        let unknown = PageRequest::parse(None, Some(&encode_cursor("item_9"))).expect("tagged");
        assert!(paginate(&ids(3), |s| s, |_| true, &unknown).is_err());
    }
}
