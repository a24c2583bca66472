//! Rows whose JSON text holds U+0000 (`\u0000`), as stored before the
//! service refused it: a read covering other users' rows must still
//! answer. PostgreSQL refuses that escape in every JSON operation, SQLite
//! reads it; what such a row itself contributes may therefore differ
//! (PostgreSQL leaves a value it cannot read as JSON out), so only what the
//! other rows give is compared.

use serde_json::json;

use chancery_store::*;

use super::{account, room_with};

pub async fn stored_nul_characters_break_no_shared_read(store: DynStore) {
    for user in ["@alice:x", "@bob:x", "@carol:x", "@dave:x"] {
        store.create_account(account(user), None, None, 1).await.unwrap();
    }
    let r = "!r:x";
    room_with(
        &store,
        r,
        &[
            ("$create", "m.room.create", json!({})),
            ("$rules", "m.room.join_rules", json!({"join_rule": "public", "org.example.note": "\u{0}"})),
            ("$name", "m.room.name", json!({"name": "Shows \\u0000 as text"})),
            ("$topic", "m.room.topic", json!({"topic": "holds \u{0}"})),
        ],
        &[("$alice", "@alice:x", "join"), ("$bob", "@bob:x", "join"), ("$dave", "@dave:x", "join")],
    )
    .await;
    store.set_profile_field("@bob:x", "displayname", &json!("Bob\u{0}"), 65_536).await.unwrap();
    // Six characters that only show the escape: no NUL, read as usual.
    store.set_profile_field("@dave:x", "displayname", &json!("Dave \\u0000 Smith"), 65_536).await.unwrap();
    let bob_rules = json!({"content": [
        {"rule_id": "nul", "pattern": "\u{0}", "actions": ["notify"], "default": false, "enabled": true}
    ]});
    store.set_push_rules("@bob:x", &bob_rules.to_string(), super::account_data::LIMITS).await.unwrap();
    let parsed = |rules: &str| serde_json::from_str::<serde_json::Value>(rules).unwrap();

    // Every send evaluates the members' push rules; every membership change
    // those of the members with rules of their own.
    let members = store.joined_members_with_push_rules(r).await.unwrap();
    let members: Vec<_> = members.iter().map(|(user, rules)| (user.as_str(), rules.as_deref().map(parsed))).collect();
    assert_eq!(members, [("@alice:x", None), ("@bob:x", Some(bob_rules.clone())), ("@dave:x", None)]);
    let in_room = store.push_rules_in_room(r).await.unwrap();
    assert_eq!(in_room.iter().map(|(u, rules)| (u.as_str(), parsed(rules))).collect::<Vec<_>>(), [("@bob:x", bob_rules.clone())]);
    let of = store.push_rules_of(&["@bob:x".to_owned(), "@alice:x".to_owned()]).await.unwrap();
    assert_eq!(of.iter().map(|(u, rules)| (u.as_str(), parsed(rules))).collect::<Vec<_>>(), [("@bob:x", bob_rules.clone())]);
    assert_eq!(store.push_rules("@bob:x").await.unwrap().as_deref().map(parsed), Some(bob_rules));

    // The user directory reads display names and join rules as JSON.
    let ids = |hits: Vec<UserHit>| hits.into_iter().map(|h| h.user_id).collect::<Vec<_>>();
    assert_eq!(ids(store.search_users("@alice:x", "bob", 10, false).await.unwrap()), ["@bob:x"]);
    let smith = store.search_users("@alice:x", "smith", 10, false).await.unwrap();
    assert_eq!(smith, [UserHit { user_id: "@dave:x".into(), displayname: Some("Dave \\u0000 Smith".into()), avatar_url: None }]);
    // Carol shares no room: only a public room would show her anyone, and
    // its join rules hold the NUL.
    store.search_users("@carol:x", "", 10, true).await.unwrap();
    store.search_users("@carol:x", "", 10, false).await.unwrap();

    // The directory reads each field of its own state event.
    room_with(
        &store,
        "!listed:x",
        &[
            ("$lcreate", "m.room.create", json!({})),
            ("$lrules", "m.room.join_rules", json!({"join_rule": "public"})),
            ("$lname", "m.room.name", json!({"name": "Shows \\u0000 as text"})),
            ("$ltopic", "m.room.topic", json!({"topic": "holds \u{0}"})),
        ],
        &[("$la", "@alice:x", "join")],
    )
    .await;
    store.set_published("!listed:x", true).await.unwrap();
    store.set_published(r, true).await.unwrap();
    let page = store.public_rooms(&PublicRoomsQuery { limit: 10, ..Default::default() }).await.unwrap();
    let listed = page.rooms.iter().find(|room| room.room_id == "!listed:x").expect("the room is listed");
    assert_eq!(listed.name.as_deref(), Some("Shows \\u0000 as text"));
    assert_eq!(listed.join_rule.as_ref().map(|j| j.as_str()), Some("public"));
}
