//! The shape of the published room directory's query; each backend
//! supplies the dialect's JSON extraction of one field.

/// A field of a published room read from the content of one of its
/// current state events (empty state key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectoryField {
    /// The column it becomes.
    pub column: &'static str,
    pub event_type: &'static str,
    /// The key in the event's `content`.
    pub content_key: &'static str,
    /// Whether the redaction algorithm strips it: the stored JSON keeps the
    /// field, so a redacted event's value must not be read.
    pub redactable: bool,
}

impl DirectoryField {
    /// The join and condition that leave a redacted event out (both empty
    /// for a field redactions keep), for a subquery whose state row is `s`.
    pub fn unredacted(&self) -> (&'static str, &'static str) {
        if self.redactable {
            ("LEFT JOIN redactions r ON r.target_event_id = s.event_id", "AND r.target_event_id IS NULL")
        } else {
            ("", "")
        }
    }
}

const fn field(column: &'static str, event_type: &'static str, content_key: &'static str, redactable: bool) -> DirectoryField {
    DirectoryField { column, event_type, content_key, redactable }
}

/// The fields of a directory entry, in the order of its columns after
/// room_id and joined (see `rows::public_room`).
pub const DIRECTORY_FIELDS: [DirectoryField; 8] = [
    field("name", "m.room.name", "name", true),
    field("topic", "m.room.topic", "topic", true),
    field("avatar_url", "m.room.avatar", "url", true),
    field("canonical_alias", "m.room.canonical_alias", "alias", true),
    // The redaction algorithm keeps these.
    field("join_rule", "m.room.join_rules", "join_rule", false),
    field("history_visibility", "m.room.history_visibility", "history_visibility", false),
    field("guest_access", "m.room.guest_access", "guest_access", true),
    field("room_type", "m.room.create", "type", false),
];

/// The published rooms with their joined-member counts and
/// [`DIRECTORY_FIELDS`]; `p` in the page query. `state_field` writes the
/// dialect's subquery of one field, correlated on `d.room_id`.
pub fn published_rooms_sql(state_field: impl Fn(&DirectoryField) -> String) -> String {
    let fields: Vec<String> = DIRECTORY_FIELDS.iter().map(|f| format!("{} AS {}", state_field(f), f.column)).collect();
    format!(
        "SELECT d.room_id,
                (SELECT COUNT(*) FROM room_state m
                 WHERE m.room_id = d.room_id AND m.event_type = 'm.room.member' AND m.to_pos IS NULL
                   AND m.membership = 'join') AS joined,
                {}
         FROM room_directory d",
        fields.join(", ")
    )
}

/// The columns and conditions of a page that every dialect writes alike,
/// around the dialect's placeholders.
pub const PUBLIC_ROOMS_SELECT: &str =
    "SELECT room_id, joined, name, topic, avatar_url, canonical_alias, join_rule, history_visibility,
        guest_access, room_type";

/// Only rooms one can join or knock on without an invite, or read.
pub const LISTED_ROOMS_FILTER: &str =
    "(p.join_rule IN ('public', 'knock', 'knock_restricted') OR p.history_visibility = 'world_readable')";

/// Where a page starts relative to the cursor entry (parameters `count`,
/// `room`, already written as placeholders), in the directory order of
/// joined members descending, then room id ascending.
pub fn cursor_filter(forward: bool, count: &str, room: &str) -> String {
    if forward {
        format!(" AND (p.joined < {count} OR (p.joined = {count} AND p.room_id > {room}))")
    } else {
        format!(" AND (p.joined > {count} OR (p.joined = {count} AND p.room_id < {room}))")
    }
}

/// The page's order and size (`limit` a placeholder): a backward page is
/// read in reverse, then turned around.
pub fn page_order(forward: bool, limit: &str) -> String {
    if forward {
        format!(" ORDER BY p.joined DESC, p.room_id ASC LIMIT {limit}")
    } else {
        format!(" ORDER BY p.joined ASC, p.room_id DESC LIMIT {limit}")
    }
}
