//! What `ss-first` and `ss-arrival` share: the simplified sliding-sync
//! (MSC4186) request Element X's room list sends, and the checks of the
//! answers.
//!
//! The request is matrix-sdk-ui 0.18's `RoomListService` (its `all_rooms`
//! list as first sent: selective range 0..=19, `timeline_limit` 1, its
//! `DEFAULT_REQUIRED_STATE`, `filters` with nothing set, and the
//! `account_data`, `receipts` and `typing` extensions) plus its
//! `EncryptionSyncService` extensions (`to_device`, `e2ee`), in the JSON
//! shape of ruma's `sync_events::v5::Request` as matrix-sdk 0.18 sends it:
//! `pos` and `timeout` in the query, `required_state` as `[type, state_key]`
//! pairs, no `txn_id`. Element X keeps the two extensions on a second
//! connection (`conn_id` "encryption", no lists); one request carrying
//! all five asks each server for at least as much as either of Element X's
//! first requests, the same for both servers. matrix-sdk-ui adds the
//! thread-subscriptions extension (MSC4308) only when the server
//! advertises it; it is left out here so both servers answer the same
//! request.

use std::collections::HashMap;

use anyhow::{Result, anyhow, bail};
use serde_json::{Value, json};

/// The list's name in matrix-sdk-ui (`ALL_ROOMS_LIST_NAME`).
pub const LIST_NAME: &str = "all_rooms";

/// The first window of the list (`ALL_ROOMS_DEFAULT_SELECTIVE_RANGE`, 0..=19).
pub const WINDOW: usize = 20;

/// matrix-sdk-ui 0.18's `DEFAULT_REQUIRED_STATE`, with ruma 0.34's event
/// type strings (`CallMember`, `MemberHints` and `BeaconInfo` serialize
/// to their unstable names).
pub const REQUIRED_STATE: [(&str, &str); 17] = [
    ("m.room.name", ""),
    ("m.room.encryption", ""),
    ("m.room.member", "$LAZY"),
    ("m.room.member", "$ME"),
    ("m.room.topic", ""),
    ("m.room.avatar", ""),
    ("m.room.canonical_alias", ""),
    ("m.room.power_levels", ""),
    ("org.matrix.msc3401.call.member", "*"),
    ("m.room.join_rules", ""),
    ("m.room.tombstone", ""),
    ("m.room.create", ""),
    ("m.room.history_visibility", ""),
    ("io.element.functional_members", ""),
    ("m.space.parent", "*"),
    ("m.space.child", "*"),
    ("org.matrix.msc3672.beacon_info", "*"),
];

/// The request body of a connection `conn_id`: the `all_rooms` list's
/// first window and the five extensions (see the module documentation).
pub fn request_body(conn_id: &str) -> Value {
    let required_state: Vec<Value> = REQUIRED_STATE.iter().map(|(kind, key)| json!([kind, key])).collect();
    json!({
        "conn_id": conn_id,
        "lists": {
            LIST_NAME: {
                "ranges": [[0, WINDOW - 1]],
                "required_state": required_state,
                "timeline_limit": 1,
                "filters": {},
            }
        },
        "extensions": {
            "to_device": { "enabled": true },
            "e2ee": { "enabled": true },
            "account_data": { "enabled": true },
            "receipts": { "enabled": true, "rooms": ["*"] },
            "typing": { "enabled": true },
        },
    })
}

/// The `pos` of an answer, which the connection's next request carries.
pub fn pos(v: &Value) -> Result<String> {
    v["pos"].as_str().map(str::to_owned).ok_or_else(|| anyhow!("sliding sync answer without `pos`"))
}

/// A room the first window must show: its id, its name, and the id of its
/// newest event (the one `timeline_limit` 1 returns).
#[derive(Debug, Clone)]
pub struct ExpectedRoom {
    pub room_id: String,
    pub name: String,
    pub newest_event_id: String,
}

/// Checks the first answer of a connection for `user_id`, who is in
/// `total_rooms` rooms; `newest` are the rooms with the latest activity,
/// most recent first (the whole window, or every room when there are
/// fewer).
///
/// It must carry a `pos`; `lists.all_rooms.count` must be `total_rooms`;
/// `rooms` must hold exactly the rooms of `newest`, each with one timeline
/// event, its newest, and the required state a room list draws from
/// (create, name, power levels, join rules, history visibility and the
/// user's own member event, `$ME`). Rooms are not ordered in the answer
/// (it is a map), but MSC4186's `bump_stamp` ("greater means more recent",
/// ties allowed) must not contradict the order of `newest` among the rooms
/// that carry one. Returns how many rooms carried a `bump_stamp`.
pub fn check_first_answer(v: &Value, user_id: &str, total_rooms: usize, newest: &[ExpectedRoom]) -> Result<usize> {
    pos(v)?;
    let count = &v["lists"][LIST_NAME]["count"];
    if count.as_u64() != Some(total_rooms as u64) {
        bail!("lists.{LIST_NAME}.count is {count}, the user is in {total_rooms} rooms");
    }
    let rooms = v["rooms"].as_object().ok_or_else(|| anyhow!("answer has no `rooms` object"))?;
    if rooms.len() != newest.len() {
        bail!("answer shows {} rooms, the window holds {}", rooms.len(), newest.len());
    }
    let mut stamps: Vec<(&str, i64)> = Vec::new();
    for want in newest {
        let room = rooms.get(&want.room_id).ok_or_else(|| {
            anyhow!(
                "room {} ({}) is among the {} most recently active but not in the answer",
                want.room_id,
                want.name,
                newest.len()
            )
        })?;
        let timeline = room["timeline"].as_array().map(Vec::as_slice).unwrap_or_default();
        let ids: Vec<&str> = timeline.iter().map(|e| e["event_id"].as_str().unwrap_or("?")).collect();
        if ids != [want.newest_event_id.as_str()] {
            bail!("room {}: timeline is {ids:?}, expected its newest event only, {}", want.room_id, want.newest_event_id);
        }
        check_required_state(&room["required_state"], user_id, &want.name).map_err(|e| anyhow!("room {}: {e}", want.room_id))?;
        if let Some(stamp) = room["bump_stamp"].as_i64() {
            stamps.push((&want.room_id, stamp));
        }
    }
    if let Some(w) = stamps.windows(2).find(|w| w[0].1 < w[1].1) {
        bail!("bump_stamp of {} ({}) is below that of {} ({}), which was active before it", w[0].0, w[0].1, w[1].0, w[1].1);
    }
    Ok(stamps.len())
}

/// The state a room list draws from, present in `required_state`.
fn check_required_state(state: &Value, user_id: &str, name: &str) -> Result<()> {
    let events = state.as_array().map(Vec::as_slice).unwrap_or_default();
    let mut by_key: HashMap<(&str, &str), &Value> = HashMap::new();
    for e in events {
        if let (Some(kind), Some(key)) = (e["type"].as_str(), e["state_key"].as_str()) {
            by_key.insert((kind, key), e);
        }
    }
    for kind in ["m.room.create", "m.room.power_levels", "m.room.join_rules", "m.room.history_visibility"] {
        if !by_key.contains_key(&(kind, "")) {
            bail!("no {kind} in required_state");
        }
    }
    let shown = by_key.get(&("m.room.name", "")).and_then(|e| e["content"]["name"].as_str());
    if shown != Some(name) {
        bail!("m.room.name in required_state is {shown:?}, expected {name:?}");
    }
    let membership = by_key.get(&("m.room.member", user_id)).and_then(|e| e["content"]["membership"].as_str());
    if membership != Some("join") {
        bail!("the user's own m.room.member ($ME) in required_state says {membership:?}, expected \"join\"");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    const ME: &str = "@me:x";

    fn expected(n: usize) -> Vec<ExpectedRoom> {
        (0..n)
            .map(|i| ExpectedRoom { room_id: format!("!r{i}:x"), name: format!("room {i}"), newest_event_id: format!("$e{i}") })
            .collect()
    }

    fn state(kind: &str, key: &str, content: Value) -> Value {
        json!({ "type": kind, "state_key": key, "sender": ME, "content": content })
    }

    /// An answer as Synapse gives it for `rooms`, most recent first.
    fn answer(rooms: &[ExpectedRoom], total: usize) -> Value {
        let mut map = serde_json::Map::new();
        for (i, r) in rooms.iter().enumerate() {
            map.insert(
                r.room_id.clone(),
                json!({
                    "initial": true,
                    "bump_stamp": 1000 - i as i64,
                    "timeline": [{ "type": "m.room.message", "event_id": r.newest_event_id, "sender": ME, "content": { "body": "b" } }],
                    "required_state": [
                        state("m.room.create", "", json!({})),
                        state("m.room.power_levels", "", json!({})),
                        state("m.room.join_rules", "", json!({ "join_rule": "public" })),
                        state("m.room.history_visibility", "", json!({ "history_visibility": "shared" })),
                        state("m.room.name", "", json!({ "name": r.name })),
                        state("m.room.member", ME, json!({ "membership": "join" })),
                    ],
                }),
            );
        }
        json!({ "pos": "p1", "lists": { LIST_NAME: { "count": total } }, "rooms": map })
    }

    fn err(v: &Value, total: usize, want: &[ExpectedRoom]) -> String {
        check_first_answer(v, ME, total, want).unwrap_err().to_string()
    }

    #[test]
    fn the_request_is_the_room_list_shape() {
        let body = request_body("c1");
        assert_eq!(body["conn_id"], "c1");
        let list = &body["lists"]["all_rooms"];
        assert_eq!(list["ranges"], json!([[0, 19]]));
        assert_eq!(list["timeline_limit"], 1);
        assert_eq!(list["filters"], json!({}));
        let pairs = list["required_state"].as_array().unwrap();
        assert_eq!(pairs.len(), REQUIRED_STATE.len());
        assert!(pairs.iter().all(|p| p.as_array().is_some_and(|p| p.len() == 2 && p.iter().all(Value::is_string))));
        assert!(pairs.contains(&json!(["m.room.member", "$LAZY"])) && pairs.contains(&json!(["m.room.member", "$ME"])));
        for ext in ["to_device", "e2ee", "account_data", "receipts", "typing"] {
            assert_eq!(body["extensions"][ext]["enabled"], true, "{ext}");
        }
        assert_eq!(body["extensions"]["receipts"]["rooms"], json!(["*"]));
        // Query parameters in ruma's request, never in the body.
        assert!(body.get("pos").is_none() && body.get("timeout").is_none() && body.get("txn_id").is_none());
    }

    #[test]
    fn a_complete_window_passes() {
        let want = expected(20);
        assert_eq!(check_first_answer(&answer(&want, 2000), ME, 2000, &want).unwrap(), 20);
        // Ties and missing bump stamps are allowed.
        let mut v = answer(&want, 2000);
        v["rooms"]["!r1:x"]["bump_stamp"] = json!(1000);
        v["rooms"]["!r5:x"].as_object_mut().unwrap().remove("bump_stamp");
        assert_eq!(check_first_answer(&v, ME, 2000, &want).unwrap(), 19);
    }

    #[test]
    fn wrong_counts_rooms_or_timelines_fail() {
        let want = expected(20);
        assert!(err(&answer(&want, 1999), 2000, &want).contains("count is 1999"));
        let mut v = answer(&want, 2000);
        v.as_object_mut().unwrap().remove("pos");
        assert!(err(&v, 2000, &want).contains("without `pos`"));
        // A room that is not among the most recent instead of one that is.
        let mut other = want.clone();
        other[7].room_id = "!old:x".into();
        assert!(err(&answer(&other, 2000), 2000, &want).contains("!r7:x"));
        assert!(err(&answer(&want[..19], 2000), 2000, &want).contains("shows 19 rooms"));
        let mut v = answer(&want, 2000);
        v["rooms"]["!r3:x"]["timeline"] = json!([{ "event_id": "$older" }, { "event_id": "$e3" }]);
        assert!(err(&v, 2000, &want).contains("newest event only"));
        let mut v = answer(&want, 2000);
        v["rooms"]["!r3:x"]["timeline"] = json!([{ "event_id": "$older" }]);
        assert!(err(&v, 2000, &want).contains("$older"));
    }

    #[test]
    fn missing_required_state_fails() {
        let want = expected(20);
        for (i, what) in
            ["m.room.create", "m.room.power_levels", "m.room.join_rules", "m.room.history_visibility", "m.room.name", "($ME)"]
                .iter()
                .enumerate()
        {
            let mut v = answer(&want, 2000);
            v["rooms"]["!r2:x"]["required_state"].as_array_mut().unwrap().remove(i);
            assert!(err(&v, 2000, &want).contains(what), "{what}");
        }
        let mut v = answer(&want, 2000);
        v["rooms"]["!r2:x"]["required_state"][4]["content"]["name"] = json!("renamed");
        assert!(err(&v, 2000, &want).contains("\"renamed\""));
    }

    #[test]
    fn bump_stamps_against_the_activity_order_fail() {
        let want = expected(20);
        let mut v = answer(&want, 2000);
        v["rooms"]["!r4:x"]["bump_stamp"] = json!(2000);
        assert!(err(&v, 2000, &want).contains("bump_stamp of !r3:x"));
    }

    #[test]
    fn fewer_rooms_than_the_window() {
        let want = expected(3);
        assert_eq!(check_first_answer(&answer(&want, 3), ME, 3, &want).unwrap(), 3);
    }
}
