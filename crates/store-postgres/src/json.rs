//! Stored JSON text read as JSON in SQL.
//!
//! PostgreSQL's JSON operations refuse a document holding the escape
//! `\u0000` anywhere in it (SQLSTATE 22P05, "unsupported Unicode escape
//! sequence"): `::jsonb` always, and `->`, `->>`, `#>`, `#>>` on `json` too,
//! whichever key they look up. One such row made every query that read
//! it as JSON fail for everyone: the sends of a room whose member had one
//! in a push rule, the user directory for a display name or a join-rules
//! event holding one. The service refuses U+0000 where clients' JSON
//! enters, but rows stored before that must not break a query either, so
//! every JSON operation here goes through [`no_nul_escape`] and leaves such
//! rows out (or reads them in Rust, where `\u0000` is just a character).

/// An SQL condition: the JSON text in `column` holds no `\u0000` escape, so
/// JSON operations on it cannot fail with 22P05. `strpos` first, so the
/// regular expression only runs on the rare rows holding those six
/// characters; it tells an escaped NUL (after an even run of backslashes)
/// from an escaped backslash followed by `u0000` (text that merely shows
/// the escape, which PostgreSQL reads fine).
pub(crate) fn no_nul_escape(column: &str) -> String {
    format!(r"(strpos({column}, '\u0000') = 0 OR {column} !~ '(^|[^\\])(\\\\)*\\u0000')")
}

/// `column`'s JSON text as `jsonb`, or NULL where it holds `\u0000`. A
/// CASE, so the cast is never evaluated for those rows.
pub(crate) fn jsonb_or_null(column: &str) -> String {
    format!("(CASE WHEN {} THEN {column}::jsonb END)", no_nul_escape(column))
}
