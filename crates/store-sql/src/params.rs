//! Domain values as query parameters.

use chancery_store::{PositionRange, SearchScope, TextFilter};

/// A count, position or timestamp as an SQL integer (both databases store
/// signed 64 bits); saturates rather than wrapping into negatives.
pub fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// An SQL integer read back as a count, position or timestamp; a negative
/// one (never written) reads as 0.
pub fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Whether `count` rows (a `COUNT(*)`) already reach `limit`, so one more
/// would pass it.
pub fn reaches_limit(count: i64, limit: usize) -> bool {
    usize::try_from(count).unwrap_or(usize::MAX) >= limit
}

/// Whether replacing an entry of `replaced_bytes` (0 for a new one) by
/// one of `new_bytes` takes a user's account data, now `total_bytes` in
/// all, past `max_total_bytes`. A write that does not grow the total never
/// does, so the backends sum a user's entries only for one that grows.
pub fn passes_total_limit(total_bytes: i64, replaced_bytes: i64, new_bytes: usize, max_total_bytes: usize) -> bool {
    let new_bytes = i64::try_from(new_bytes).unwrap_or(i64::MAX);
    let max = i64::try_from(max_total_bytes).unwrap_or(i64::MAX);
    new_bytes > replaced_bytes && total_bytes.saturating_sub(replaced_bytes).saturating_add(new_bytes) > max
}

/// `%term%` for LIKE, with the term's wildcards escaped by `\`: it matches
/// `term` anywhere, literally. (PostgreSQL escapes with `\` by default;
/// SQLite needs `ESCAPE '\'`.)
pub fn like_contains(term: &str) -> String {
    let mut out = String::with_capacity(term.len() + 2);
    out.push('%');
    for c in term.chars() {
        if matches!(c, '\\' | '%' | '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

/// A text filter as two parameters, (exact, substring), of which at most
/// one is set: the queries match a NULL parameter to everything.
pub fn text_filter_params(filter: Option<&TextFilter>) -> (Option<&str>, Option<&str>) {
    match filter {
        Some(TextFilter::Exact(s)) => (Some(s), None),
        Some(TextFilter::Contains(s)) => (None, Some(s)),
        None => (None, None),
    }
}

/// Search scopes as parameters: the rooms searched whole, and the
/// (room, from, to) position ranges of rooms searched only in parts.
pub type ScopeParams<'a> = (Vec<&'a str>, Vec<(&'a str, i64, Option<i64>)>);

/// Splits `scopes` into [`ScopeParams`]: whole rooms are a plain set, which
/// the database matches with an index, rather than a range each.
pub fn search_scope_params(scopes: &[SearchScope]) -> ScopeParams<'_> {
    let (whole, parts): (Vec<&SearchScope>, Vec<&SearchScope>) = scopes.iter().partition(|s| s.is_whole_room());
    let whole = whole.iter().map(|s| s.room_id.as_str()).collect();
    let parts = parts.iter().flat_map(|s| s.ranges.iter().map(|r| (s.room_id.as_str(), i(r.from), r.to.map(i)))).collect();
    (whole, parts)
}

/// Position ranges as (from, to) parameters; `None` when they are the
/// whole room, which the queries then leave out (a separate statement, so
/// the common case keeps its plan and pays nothing for the filter).
pub fn position_range_params(ranges: &[PositionRange]) -> Option<Vec<(i64, Option<i64>)>> {
    (ranges != [PositionRange::ALL]).then(|| ranges.iter().map(|r| (i(r.from), r.to.map(i))).collect())
}

#[cfg(test)]
mod tests {
    use chancery_store::PositionRange;

    use super::*;

    #[test]
    fn integers_saturate_instead_of_wrapping() {
        assert_eq!(i(5), 5);
        assert_eq!(i(u64::MAX), i64::MAX);
        assert_eq!(u(7), 7);
        assert_eq!(u(-1), 0);
    }

    #[test]
    fn limits_are_reached_at_the_limit() {
        assert!(!reaches_limit(2, 3));
        assert!(reaches_limit(3, 3));
        assert!(reaches_limit(4, 3));
    }

    #[test]
    fn only_growth_past_the_total_passes_it() {
        // (total now, replaced entry, new entry, limit) -> passes
        for (total, replaced, new, max, passes) in [
            (90, 0, 10, 100, false),
            (90, 0, 11, 100, true),
            (100, 10, 10, 100, false),
            (100, 10, 11, 100, true),
            // Over a lowered limit already: replacing by no more is allowed.
            (500, 50, 50, 100, false),
            (500, 50, 10, 100, false),
            (500, 50, 51, 100, true),
            (0, 0, usize::MAX, usize::MAX, false),
        ] {
            assert_eq!(passes_total_limit(total, replaced, new, max), passes, "{total} - {replaced} + {new} vs {max}");
        }
    }

    #[test]
    fn like_patterns_match_the_term_literally() {
        assert_eq!(like_contains("abc"), "%abc%");
        assert_eq!(like_contains("50%_off\\"), "%50\\%\\_off\\\\%");
        assert_eq!(like_contains(""), "%%");
    }

    #[test]
    fn text_filters_set_one_parameter() {
        assert_eq!(text_filter_params(Some(&TextFilter::Exact("a".into()))), (Some("a"), None));
        assert_eq!(text_filter_params(Some(&TextFilter::Contains("b".into()))), (None, Some("b")));
        assert_eq!(text_filter_params(None), (None, None));
    }

    #[test]
    fn position_ranges_are_left_out_for_the_whole_room() {
        assert_eq!(position_range_params(&[PositionRange::ALL]), None);
        assert_eq!(position_range_params(&[]), Some(vec![]));
        let parts = [PositionRange { from: 1, to: Some(4) }, PositionRange { from: 9, to: None }];
        assert_eq!(position_range_params(&parts), Some(vec![(1, Some(4)), (9, None)]));
    }

    #[test]
    fn scopes_split_into_whole_rooms_and_ranges() {
        let scopes = [
            SearchScope { room_id: "!a".into(), ranges: vec![PositionRange::ALL] },
            SearchScope {
                room_id: "!b".into(),
                ranges: vec![PositionRange { from: 1, to: Some(4) }, PositionRange { from: 9, to: None }],
            },
        ];
        let (whole, parts) = search_scope_params(&scopes);
        assert_eq!(whole, ["!a"]);
        assert_eq!(parts, [("!b", 1, Some(4)), ("!b", 9, None)]);
    }
}
