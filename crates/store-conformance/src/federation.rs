//! Conformance cases of the outbound federation queue: which events go
//! to which server, which servers become destinations, and the persisted
//! positions.

use chancery_store::*;
use serde_json::json;

use crate::{event, member, message, room};

/// A membership event about `user` sent by `sender`.
fn member_by(room: &str, id: &str, sender: &str, user: &str, membership: &str, depth: u64) -> NewEvent {
    let mut e = member(room, id, user, membership, depth);
    e.sender = sender.into();
    e
}

/// A message sent by `sender`.
fn message_by(room: &str, id: &str, sender: &str, depth: u64) -> NewEvent {
    let mut e = message(room, id, depth);
    e.sender = sender.into();
    e
}

/// A room of `@alice:x` (created by her, she joined), `create_content` in
/// its create event.
async fn room_of_alice(store: &DynStore, r: &str, create_content: serde_json::Value) -> String {
    let mut create = event(r, &format!("$create{r}"), "m.room.create", Some(""), 1);
    create.json = json!({"type": "m.room.create", "state_key": "", "sender": "@alice:x", "content": create_content}).to_string();
    let join = member(r, &format!("$alice{r}"), "@alice:x", "join", 2);
    let last = join.event_id.clone();
    store.create_room(room(r), vec![create, join]).await.unwrap();
    last
}

/// Appends `events` one after the other on top of `prev`; returns their
/// positions.
async fn append(store: &DynStore, prev: &mut String, events: Vec<NewEvent>) -> Vec<u64> {
    let mut positions = Vec::new();
    for e in events {
        let id = e.event_id.clone();
        positions.push(store.append_event(e, std::slice::from_ref(prev)).await.unwrap());
        *prev = id;
    }
    positions
}

async fn ids_for(store: &DynStore, destination: &str, after: u64) -> Vec<String> {
    let upto = store.federation_stream_pos().await.unwrap();
    store.federation_events_for("x", destination, after, upto, 100).await.unwrap().into_iter().map(|p| p.event_id).collect()
}

pub async fn federation_events_go_to_the_servers_in_the_room(store: DynStore) {
    // A room shared with @bob:y; a room of alice's alone; a room where
    // @carol:z is only invited; a room that does not federate; a room
    // shared with a server that has a port.
    let mut shared = room_of_alice(&store, "!shared:x", json!({})).await;
    let mut alone = room_of_alice(&store, "!alone:x", json!({})).await;
    let mut invite = room_of_alice(&store, "!invite:x", json!({})).await;
    let mut closed = room_of_alice(&store, "!closed:x", json!({"m.federate": false})).await;
    let mut ported = room_of_alice(&store, "!ported:x", json!({"m.federate": true})).await;
    let start = store.federation_stream_pos().await.unwrap();

    let r = "!shared:x";
    let positions = append(
        &store,
        &mut shared,
        vec![
            message_by(r, "$before-bob", "@alice:x", 3),
            member_by(r, "$bob-joins", "@bob:y", "@bob:y", "join", 4),
            message_by(r, "$to-bob", "@alice:x", 5),
            message_by(r, "$from-bob", "@bob:y", 6),
        ],
    )
    .await;
    append(&store, &mut alone, vec![message_by("!alone:x", "$alone", "@alice:x", 3)]).await;
    append(
        &store,
        &mut invite,
        vec![
            member_by("!invite:x", "$invite-carol", "@alice:x", "@carol:z", "invite", 3),
            message_by("!invite:x", "$carol-not-in", "@alice:x", 4),
        ],
    )
    .await;
    append(
        &store,
        &mut closed,
        vec![
            member_by("!closed:x", "$bob-in-closed", "@bob:y", "@bob:y", "join", 3),
            message_by("!closed:x", "$closed", "@alice:x", 4),
        ],
    )
    .await;
    append(
        &store,
        &mut ported,
        vec![
            member_by("!ported:x", "$dave-joins", "@dave:127.0.0.1:8448", "@dave:127.0.0.1:8448", "join", 3),
            message_by("!ported:x", "$to-dave", "@alice:x", 4),
        ],
    )
    .await;

    // Only alice's events after bob joined, never bob's own, nothing of
    // rooms he is not in or of the room that does not federate.
    assert_eq!(ids_for(&store, "y", start).await, ["$to-bob"]);
    // The invite reaches carol's server, the room's messages do not.
    assert_eq!(ids_for(&store, "z", start).await, ["$invite-carol"]);
    // A server name with a port is compared whole.
    assert_eq!(ids_for(&store, "127.0.0.1:8448", start).await, ["$to-dave"]);
    for nobody in ["8448", "0.0.1:8448", "127.0.0.1", "w"] {
        assert!(ids_for(&store, nobody, start).await.is_empty(), "{nobody}");
    }

    // A kick reaches the kicked user's server; what follows it does not.
    let kick = append(
        &store,
        &mut shared,
        vec![member_by(r, "$kick-bob", "@alice:x", "@bob:y", "leave", 7), message_by(r, "$after-kick", "@alice:x", 8)],
    )
    .await;
    assert_eq!(ids_for(&store, "y", start).await, ["$to-bob", "$kick-bob"]);
    // Events are read by their position in the room's history: after the
    // kick, bob's server still gets what was sent while he was in.
    assert_eq!(ids_for(&store, "y", positions[1]).await, ["$to-bob", "$kick-bob"]);

    // Bounds: after, upto and the limit.
    let to_bob = store.federation_events_for("x", "y", start, kick[0], 1).await.unwrap();
    assert_eq!(to_bob.len(), 1);
    assert_eq!((to_bob[0].event_id.as_str(), to_bob[0].stream_pos), ("$to-bob", positions[2]));
    let stored = store.event("$to-bob").await.unwrap().unwrap();
    assert_eq!(to_bob[0].json, stored.json, "the PDU as stored, byte for byte");
    assert!(store.federation_events_for("x", "y", start, positions[2] - 1, 10).await.unwrap().is_empty());
    let upto = store.federation_stream_pos().await.unwrap();
    let after_first = store.federation_events_for("x", "y", positions[2], upto, 10).await.unwrap();
    assert_eq!(after_first.iter().map(|p| p.event_id.as_str()).collect::<Vec<_>>(), ["$kick-bob"]);
    assert!(store.federation_events_for("x", "y", upto, upto, 10).await.unwrap().is_empty());
}

pub async fn federation_destinations_come_from_membership_changes(store: DynStore) {
    let mut shared = room_of_alice(&store, "!shared:x", json!({})).await;
    let start = store.federation_stream_pos().await.unwrap();
    let none = store.new_federation_destinations("x", 0, start, 10).await.unwrap();
    assert!(none.is_empty(), "{none:?}");

    let r = "!shared:x";
    let positions = append(
        &store,
        &mut shared,
        vec![
            member_by(r, "$bob-joins", "@bob:y", "@bob:y", "join", 3),
            member_by(r, "$invite-carol", "@alice:x", "@carol:z", "invite", 4),
            member_by(r, "$bob2-joins", "@bob2:y", "@bob2:y", "join", 5),
            member_by(r, "$dave-joins", "@dave:127.0.0.1:8448", "@dave:127.0.0.1:8448", "join", 6),
        ],
    )
    .await;
    let upto = store.federation_stream_pos().await.unwrap();
    let found = store.new_federation_destinations("x", start, upto, 10).await.unwrap();
    assert_eq!(
        found,
        [("y".to_owned(), positions[0]), ("z".to_owned(), positions[1]), ("127.0.0.1:8448".to_owned(), positions[3])]
    );
    // Within the range only, and at most `limit`.
    let later = store.new_federation_destinations("x", positions[0], upto, 10).await.unwrap();
    assert_eq!(later[0], ("z".to_owned(), positions[1]));
    assert_eq!(later[1], ("y".to_owned(), positions[2]));
    assert_eq!(store.new_federation_destinations("x", start, upto, 1).await.unwrap(), [("y".to_owned(), positions[0])]);

    // A room without local members tells nothing; a local user joining a
    // room makes its members' servers destinations.
    let remote = "!remote:w";
    let mut create = event(remote, "$create-remote", "m.room.create", Some(""), 1);
    create.sender = "@erin:w".into();
    store.create_room(room(remote), vec![create, member(remote, "$erin", "@erin:w", "join", 2)]).await.unwrap();
    let mut prev = "$erin".to_owned();
    let before_alice = store.federation_stream_pos().await.unwrap();
    assert!(store.new_federation_destinations("x", upto, before_alice, 10).await.unwrap().is_empty());
    let alice_joins = append(&store, &mut prev, vec![member(remote, "$alice-joins-remote", "@alice:x", "join", 3)]).await;
    let now = store.federation_stream_pos().await.unwrap();
    assert_eq!(store.new_federation_destinations("x", before_alice, now, 10).await.unwrap(), [("w".to_owned(), alice_joins[0])]);
}

pub async fn federation_positions_persist_and_never_move_back(store: DynStore) {
    assert_eq!(store.federation_sender_state(10).await.unwrap(), FederationSenderState::default());
    store.add_federation_destinations(&[("y".into(), 5), ("127.0.0.1:8448".into(), 7)], 9).await.unwrap();
    let state = store.federation_sender_state(10).await.unwrap();
    assert_eq!(state.scanned_pos, Some(9));
    assert_eq!(state.destinations, [("127.0.0.1:8448".to_owned(), 7), ("y".to_owned(), 5)]);

    // Known destinations keep their position; the discovery position moves.
    store.add_federation_destinations(&[("y".into(), 1), ("z".into(), 11)], 12).await.unwrap();
    store.federation_transaction_acknowledged("y", 20, &[]).await.unwrap();
    store.federation_transaction_acknowledged("y", 15, &[]).await.unwrap();
    store.federation_transaction_acknowledged("new", 3, &[]).await.unwrap();
    let state = store.federation_sender_state(10).await.unwrap();
    assert_eq!(state.scanned_pos, Some(12));
    assert_eq!(
        state.destinations,
        [("127.0.0.1:8448".to_owned(), 7), ("new".to_owned(), 3), ("y".to_owned(), 20), ("z".to_owned(), 11)]
    );
    assert_eq!(store.federation_sender_state(2).await.unwrap().destinations.len(), 2);
    store.add_federation_destinations(&[], 30).await.unwrap();
    assert_eq!(store.federation_sender_state(10).await.unwrap().scanned_pos, Some(30));
}

fn edu(destination: &str, n: u32) -> NewOutboundEdu {
    NewOutboundEdu { destination: destination.into(), json: format!(r#"{{"edu_type":"m.test","content":{{"n":{n}}}}}"#) }
}

fn jsons(queued: &QueuedEdus) -> Vec<String> {
    queued.edus.iter().map(|e| e.json.clone()).collect()
}

pub async fn federation_edus_wait_per_destination_until_acknowledged(store: DynStore) {
    let limits = EduOutboxLimits { max_per_destination: 100, max_age_ms: 1_000_000 };
    assert!(store.federation_edu_destinations(10).await.unwrap().is_empty());
    let dropped = store.queue_federation_edus(&[edu("y", 1), edu("z", 2), edu("y", 3)], 1_000, limits).await.unwrap();
    assert!(dropped.is_empty());
    store.queue_federation_edus(&[edu("y", 4)], 1_001, limits).await.unwrap();
    assert_eq!(store.federation_edu_destinations(10).await.unwrap(), ["y", "z"]);
    assert_eq!(store.federation_edu_destinations(1).await.unwrap(), ["y"]);

    // A destination's EDUs come in the order queued, at most `limit`.
    let y = store.federation_edus_for("y", 2_000, limits, 2).await.unwrap();
    assert_eq!(jsons(&y), [edu("y", 1).json, edu("y", 3).json]);
    assert_eq!(y.expired, 0);
    assert!(y.edus[0].id < y.edus[1].id);
    let all_y = store.federation_edus_for("y", 2_000, limits, 10).await.unwrap();
    assert_eq!(jsons(&all_y), [edu("y", 1).json, edu("y", 3).json, edu("y", 4).json]);
    assert_eq!(jsons(&store.federation_edus_for("z", 2_000, limits, 10).await.unwrap()), [edu("z", 2).json]);
    assert!(store.federation_edus_for("w", 2_000, limits, 10).await.unwrap().edus.is_empty());

    // Acknowledging removes those sent (not another destination's, not
    // those queued since) and moves the position, never back.
    let ids: Vec<u64> = y.edus.iter().map(|e| e.id).collect();
    let z_id = store.federation_edus_for("z", 2_000, limits, 10).await.unwrap().edus[0].id;
    store.federation_transaction_acknowledged("y", 7, &[ids[0], ids[1], z_id]).await.unwrap();
    assert_eq!(jsons(&store.federation_edus_for("y", 2_000, limits, 10).await.unwrap()), [edu("y", 4).json]);
    assert_eq!(store.federation_edus_for("z", 2_000, limits, 10).await.unwrap().edus.len(), 1, "z's EDU is z's");
    store.federation_transaction_acknowledged("y", 5, &ids).await.unwrap();
    let state = store.federation_sender_state(10).await.unwrap();
    assert_eq!(state.destinations, [("y".to_owned(), 7)]);
    let last = store.federation_edus_for("y", 2_000, limits, 10).await.unwrap().edus[0].id;
    store.federation_transaction_acknowledged("y", 9, &[last]).await.unwrap();
    assert_eq!(store.federation_edu_destinations(10).await.unwrap(), ["z"]);
    // Later EDUs get greater ids than any before.
    store.queue_federation_edus(&[edu("y", 5)], 3_000, limits).await.unwrap();
    assert!(store.federation_edus_for("y", 3_000, limits, 10).await.unwrap().edus[0].id > last);
}

pub async fn federation_edu_outbox_is_bounded_in_count_and_age(store: DynStore) {
    let limits = EduOutboxLimits { max_per_destination: 3, max_age_ms: 1_000 };
    store.queue_federation_edus(&[edu("y", 1), edu("y", 2), edu("z", 1)], 10_000, limits).await.unwrap();
    // Past the count, the oldest of that destination go.
    let dropped = store.queue_federation_edus(&[edu("y", 3), edu("y", 4), edu("y", 5)], 10_500, limits).await.unwrap();
    assert_eq!(dropped, [("y".to_owned(), 2)]);
    let y = store.federation_edus_for("y", 10_500, limits, 10).await.unwrap();
    assert_eq!(jsons(&y), [edu("y", 3).json, edu("y", 4).json, edu("y", 5).json]);
    assert_eq!(store.federation_edus_for("z", 10_500, limits, 10).await.unwrap().edus.len(), 1);
    // Past the age, a read drops them (those queued at the limit too).
    let z = store.federation_edus_for("z", 11_000, limits, 10).await.unwrap();
    assert_eq!((z.edus.len(), z.expired), (0, 1));
    let y = store.federation_edus_for("y", 11_499, limits, 10).await.unwrap();
    assert_eq!((y.edus.len(), y.expired), (3, 0));
    let y = store.federation_edus_for("y", 11_500, limits, 10).await.unwrap();
    assert_eq!((y.edus.len(), y.expired), (0, 3));
    assert!(store.federation_edu_destinations(10).await.unwrap().is_empty());
}
