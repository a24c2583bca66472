//! U+0000 (NUL) in what clients store. JSON allows it (`"\u0000"`) and
//! SQLite stores it, but PostgreSQL refuses it in every JSON operation
//! (SQLSTATE 22P05): one stored string holding it made every query that
//! reads that row as JSON fail, other users' sends and searches among
//! them. So the service refuses it where client JSON enters (event
//! content, state keys and types, profiles, account data, tags, push rules,
//! filters), with the same answer on both backends; the PostgreSQL
//! backend also keeps rows stored before this check out of its JSON
//! operations.

use serde_json::Value as JsonValue;

use crate::Error;

/// Whether a string or key anywhere in `value` holds U+0000.
pub(crate) fn json_holds_nul(value: &JsonValue) -> bool {
    // A stack rather than recursion: depth then costs heap, not stack,
    // whoever built the value.
    let mut pending = vec![value];
    while let Some(value) = pending.pop() {
        match value {
            JsonValue::String(s) if s.contains('\0') => return true,
            JsonValue::Array(items) => pending.extend(items),
            JsonValue::Object(map) => {
                if map.keys().any(|k| k.contains('\0')) {
                    return true;
                }
                pending.extend(map.values());
            }
            _ => {}
        }
    }
    false
}

/// `M_BAD_JSON` if `value` (described by `what`) holds U+0000.
pub(crate) fn refuse_nul_in_json(value: &JsonValue, what: &str) -> Result<(), Error> {
    if json_holds_nul(value) {
        return Err(Error::BadJson(format!("{what} must not contain U+0000 (NUL)")));
    }
    Ok(())
}

/// `M_INVALID_PARAM` if `text`, a parameter described by `what` that ends
/// up in stored JSON (an event type, a state key, a tag), holds U+0000.
pub(crate) fn refuse_nul_in_param(text: &str, what: &str) -> Result<(), Error> {
    if text.contains('\0') {
        return Err(Error::InvalidParam(format!("{what} must not contain U+0000 (NUL)")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn nul_is_found_in_strings_and_keys_at_any_depth() {
        let cases = [
            (json!({"body": "hello"}), false),
            (json!({"body": "a\u{0}b"}), true),
            (json!({"a\u{0}": 1}), true),
            (json!({"a": [1, {"b": ["x", "\u{0}"]}]}), true),
            (json!({"a": [1, {"b\u{0}": null}]}), true),
            // The six characters of the escape, not the character.
            (json!({"body": "\\u0000"}), false),
            (json!(["\u{1}", 0, true, null]), false),
            (json!("\u{0}"), true),
        ];
        for (value, holds) in cases {
            assert_eq!(json_holds_nul(&value), holds, "{value}");
            assert_eq!(refuse_nul_in_json(&value, "content").is_err(), holds, "{value}");
        }
        let deep = (0..300).fold(json!({"k": "\u{0}"}), |inner, _| json!([inner]));
        assert!(json_holds_nul(&deep));
        assert!(matches!(refuse_nul_in_json(&json!({"k": "\u{0}"}), "content"), Err(Error::BadJson(_))));
        assert!(matches!(refuse_nul_in_param("m.\u{0}", "event type"), Err(Error::InvalidParam(_))));
        assert!(refuse_nul_in_param("m.room.message", "event type").is_ok());
    }
}
