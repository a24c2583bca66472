//! Event filters (client-server API "Filtering"): which events of a room a
//! client wants, by type (with `*` wildcards) and sender.

use chancery_proto::ruma::api::client::filter::RoomEventFilter;

/// Whether an event of this type passes the filter's `types`/`not_types`.
pub(crate) fn type_allowed(filter: &RoomEventFilter, event_type: &str) -> bool {
    types_allowed(filter.types.as_deref(), &filter.not_types, event_type)
}

/// A filter's `types`/`not_types` (`*` at the end matches any suffix), for
/// room event filters and the plain filters of account data alike.
pub(crate) fn types_allowed(types: Option<&[String]>, not_types: &[String], event_type: &str) -> bool {
    let matches = |pattern: &String| match pattern.strip_suffix('*') {
        Some(prefix) => event_type.starts_with(prefix),
        None => pattern == event_type,
    };
    types.is_none_or(|types| types.iter().any(matches)) && !not_types.iter().any(matches)
}

/// Whether an event passes the filter's type and sender conditions.
pub(crate) fn event_allowed(filter: &RoomEventFilter, event_type: &str, sender: &str) -> bool {
    type_allowed(filter, event_type)
        && filter.senders.as_ref().is_none_or(|senders| senders.iter().any(|s| s.as_str() == sender))
        && !filter.not_senders.iter().any(|s| s.as_str() == sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_and_senders() {
        let filter: RoomEventFilter = serde_json::from_value(serde_json::json!({
            "types": ["m.room.*", "org.example.x"],
            "not_types": ["m.room.member"],
            "not_senders": ["@spam:x"],
        }))
        .unwrap();
        assert!(event_allowed(&filter, "m.room.message", "@a:x"));
        assert!(event_allowed(&filter, "org.example.x", "@a:x"));
        assert!(!event_allowed(&filter, "m.room.member", "@a:x"));
        assert!(!event_allowed(&filter, "m.reaction", "@a:x"));
        assert!(!event_allowed(&filter, "m.room.message", "@spam:x"));
        assert!(event_allowed(&RoomEventFilter::default(), "anything", "@spam:x"));
    }
}
