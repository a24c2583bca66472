//! Lazy-loaded members over plain HTTP: `/sync` with `lazy_load_members`
//! sends a sender's member event once per device, again when it changes,
//! and always with `include_redundant_members`; a new sync sequence
//! (initial or full-state) starts over; `/messages` keeps sending the
//! senders' member events on every page.

use std::collections::{BTreeMap, BTreeSet};

use chancery_testkit::{Backend, TestServer};
use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{PASSWORD, User, login, urlencode};

/// Two timeline events per room, so a few messages make a gap.
const LAZY: &str = r#"{"room":{"state":{"lazy_load_members":true},"timeline":{"limit":2}}}"#;
const REDUNDANT: &str =
    r#"{"room":{"state":{"lazy_load_members":true,"include_redundant_members":true},"timeline":{"limit":2}}}"#;

/// The member events of a room's `state` section: user → event.
fn state_members(sync: &Value, room: &str) -> BTreeMap<String, Value> {
    sync["rooms"]["join"][room]["state"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == "m.room.member")
        .map(|e| (e["state_key"].as_str().unwrap().to_owned(), e.clone()))
        .collect()
}

fn timeline(sync: &Value, room: &str) -> Vec<Value> {
    sync["rooms"]["join"][room]["timeline"]["events"].as_array().cloned().unwrap_or_default()
}

struct Device<'a> {
    user: &'a User,
    filter: &'static str,
    since: Option<String>,
}

impl<'a> Device<'a> {
    fn new(user: &'a User, filter: &'static str) -> Self {
        Device { user, filter, since: None }
    }

    /// An initial sync: starts a new sequence.
    async fn initial(&mut self) -> Value {
        let sync = self.user.sync(&format!("filter={}", urlencode(self.filter))).await;
        self.since = sync["next_batch"].as_str().map(ToOwned::to_owned);
        sync
    }

    /// An incremental sync from the last answer, which it replaces.
    async fn next(&mut self) -> Value {
        let sync = self.again().await;
        self.since = sync["next_batch"].as_str().map(ToOwned::to_owned);
        sync
    }

    /// The last incremental sync once more, as a client does whose answer
    /// was lost.
    async fn again(&self) -> Value {
        let since = self.since.as_deref().expect("synced before");
        self.user.sync(&format!("filter={}&since={since}&timeout=0", urlencode(self.filter))).await
    }

    async fn full_state(&mut self) -> Value {
        let since = self.since.as_deref().expect("synced before");
        let sync = self.user.sync(&format!("filter={}&since={since}&timeout=0&full_state=true", urlencode(self.filter))).await;
        self.since = sync["next_batch"].as_str().map(ToOwned::to_owned);
        sync
    }
}

/// A membership change with a new display name: member events change
/// only through the membership endpoints, and a join takes the profile's.
async fn rejoin_as(user: &User, room: &str, name: &str) {
    user.ok(Method::PUT, &format!("/profile/{}/displayname", user.id), Some(json!({"displayname": name}))).await;
    user.ok(Method::POST, &format!("/rooms/{room}/leave"), Some(json!({}))).await;
    user.ok(Method::POST, &format!("/join/{room}"), Some(json!({}))).await;
}

fn ids(members: &BTreeMap<String, Value>) -> BTreeSet<&str> {
    members.keys().map(String::as_str).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_sends_each_member_event_once_per_device() {
    let server = TestServer::start(Backend::Sqlite).await.unwrap();
    let base = server.base_url.clone();
    let alice = User::new(&base, "alice").await;
    let bob = User::new(&base, "bob").await;
    let carol = User::new(&base, "carol").await;
    let dave = User::new(&base, "dave").await;
    let room = alice.create_room(json!({"preset": "public_chat", "name": "Lazy"})).await;
    // The summary's heroes are the first five members by user id (other
    // than the reader), and lazy loading sends their member events too:
    // these five take those places, so bob, carol and dave count as senders
    // only.
    let mut heroes = Vec::new();
    for n in 1..=5 {
        let hero = User::new(&base, &format!("aa{n}")).await;
        hero.ok(Method::POST, &format!("/join/{room}"), Some(json!({}))).await;
        heroes.push(hero.id.clone());
    }
    for user in [&bob, &carol, &dave] {
        user.ok(Method::POST, &format!("/join/{room}"), Some(json!({}))).await;
    }
    alice.say(&room, "a1", "welcome").await;
    bob.say(&room, "b1", "hi").await;

    // Initial sync: the senders' member events, alice's own, the heroes'.
    let mut phone = Device::new(&alice, LAZY);
    let initial = phone.initial().await;
    let members = state_members(&initial, &room);
    let mut expected: BTreeSet<&str> = heroes.iter().map(String::as_str).collect();
    expected.extend([alice.id.as_str(), bob.id.as_str()]);
    assert_eq!(ids(&members), expected, "{initial}");
    let bob_joined = members[&bob.id]["event_id"].clone();

    // bob talks again: his member event is not sent a second time.
    bob.say(&room, "b2", "again").await;
    let sync = phone.next().await;
    assert_eq!(timeline(&sync, &room).last().unwrap()["content"]["body"], "again");
    assert!(state_members(&sync, &room).is_empty(), "{sync}");

    // carol, a new sender: hers is sent, bob's still not.
    carol.say(&room, "c1", "hello").await;
    bob.say(&room, "b3", "you again").await;
    let sync = phone.next().await;
    assert_eq!(ids(&state_members(&sync, &room)), BTreeSet::from([carol.id.as_str()]), "{sync}");

    // bob comes back as "Bobby": the new member events come in the
    // timeline, and after them bob's messages need nothing more.
    rejoin_as(&bob, &room, "Bobby").await;
    let sync = phone.next().await;
    let renamed = timeline(&sync, &room).into_iter().rfind(|e| e["type"] == "m.room.member").expect("rejoin in the timeline");
    assert_eq!(renamed["content"]["displayname"], "Bobby");
    assert_ne!(renamed["event_id"], bob_joined);
    assert!(state_members(&sync, &room).is_empty(), "{sync}");
    bob.say(&room, "b4", "as Bobby").await;
    let sync = phone.next().await;
    assert!(state_members(&sync, &room).is_empty(), "{sync}");

    // A rename in a gap (the timeline holds only alice's last two
    // messages) is sent in the state although bob is no sender of it.
    rejoin_as(&bob, &room, "Robert").await;
    for n in 0..3 {
        alice.say(&room, &format!("gap{n}"), "filler").await;
    }
    let sync = phone.next().await;
    assert_eq!(sync["rooms"]["join"][&room]["timeline"]["limited"], true, "{sync}");
    let members = state_members(&sync, &room);
    assert_eq!(members[&bob.id]["content"]["displayname"], "Robert", "{sync}");

    // alice's laptop, another device of hers, has not been sent bob's
    // member event: it gets it when bob talks; the phone does not.
    let (status, body) = login(&base, "alice", PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    let alice_laptop =
        User { base: base.clone(), token: body["access_token"].as_str().unwrap().to_owned(), id: alice.id.clone() };
    let mut laptop = Device::new(&alice_laptop, LAZY);
    let initial = laptop.initial().await;
    assert!(!state_members(&initial, &room).contains_key(&bob.id), "bob sent nothing lately: {initial}");
    bob.say(&room, "b5", "to both").await;
    let on_laptop = laptop.next().await;
    assert_eq!(state_members(&on_laptop, &room)[&bob.id]["content"]["displayname"], "Robert", "{on_laptop}");
    let on_phone = phone.next().await;
    assert_eq!(timeline(&on_phone, &room).last().unwrap()["content"]["body"], "to both");
    assert!(!state_members(&on_phone, &room).contains_key(&bob.id), "{on_phone}");

    // An answer lost on the way: the retry from the same token gets dave's
    // member event again; once the client synced past it, it does not.
    dave.say(&room, "d1", "first words").await;
    let lost = phone.again().await;
    assert!(state_members(&lost, &room).contains_key(&dave.id), "{lost}");
    let retried = phone.next().await;
    assert!(state_members(&retried, &room).contains_key(&dave.id), "{retried}");
    dave.say(&room, "d2", "second words").await;
    let sync = phone.next().await;
    assert_eq!(timeline(&sync, &room).last().unwrap()["content"]["body"], "second words");
    assert!(!state_members(&sync, &room).contains_key(&dave.id), "{sync}");

    // A new initial sync starts over: the phone may have lost everything,
    // so bob's next message brings his member event again.
    alice.say(&room, "a2", "one").await;
    alice.say(&room, "a3", "two").await;
    let initial = phone.initial().await;
    assert!(!state_members(&initial, &room).contains_key(&bob.id), "{initial}");
    bob.say(&room, "b7", "after a fresh start").await;
    let sync = phone.next().await;
    assert!(state_members(&sync, &room).contains_key(&bob.id), "{sync}");

    // So does a full-state sync.
    alice.say(&room, "a4", "three").await;
    alice.say(&room, "a5", "four").await;
    let full = phone.full_state().await;
    assert!(!state_members(&full, &room).contains_key(&bob.id), "{full}");
    assert!(state_members(&full, &room).contains_key(&alice.id), "a full-state sync carries the user's own membership");
    bob.say(&room, "b8", "after full state").await;
    let sync = phone.next().await;
    assert!(state_members(&sync, &room).contains_key(&bob.id), "{sync}");

    // include_redundant_members: bob's member event with each of his
    // messages, though the device holds it.
    let mut redundant = Device::new(&alice, REDUNDANT);
    redundant.initial().await;
    for n in 0..2 {
        bob.say(&room, &format!("r{n}"), "redundant").await;
        let sync = redundant.next().await;
        assert!(state_members(&sync, &room).contains_key(&bob.id), "round {n}: {sync}");
    }
    server.stop().await.unwrap();
}

/// `/messages` sends the member events of each page's senders on every
/// page, `include_redundant_members` or not: a device holds several
/// timelines of a room (the live one, a permalink's, a thread's) whose
/// tokens are bare positions, so the server cannot tell which of them a
/// page extends, and leaving a member out would leave that timeline
/// without it. Synapse does the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_pages_carry_their_senders_every_time() {
    let server = TestServer::start(Backend::Sqlite).await.unwrap();
    let base = server.base_url.clone();
    let alice = User::new(&base, "alice").await;
    let bob = User::new(&base, "bob").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.ok(Method::POST, &format!("/join/{room}"), Some(json!({}))).await;
    for n in 0..4 {
        bob.say(&room, &format!("b{n}"), "page").await;
    }
    let filter = urlencode(r#"{"lazy_load_members":true}"#);
    let first = alice.ok(Method::GET, &format!("/rooms/{room}/messages?dir=b&limit=2&filter={filter}"), None).await;
    let end = first["end"].as_str().unwrap();
    let second = alice.ok(Method::GET, &format!("/rooms/{room}/messages?dir=b&limit=2&from={end}&filter={filter}"), None).await;
    for page in [&first, &second] {
        assert!(page["chunk"].as_array().unwrap().iter().all(|e| e["sender"] == bob.id.as_str()), "{page}");
        let members: Vec<&str> = page["state"].as_array().unwrap().iter().filter_map(|e| e["state_key"].as_str()).collect();
        assert_eq!(members, [bob.id.as_str()], "{page}");
    }
    server.stop().await.unwrap();
}
