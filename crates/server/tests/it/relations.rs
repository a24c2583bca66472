//! Relations and threads: edits, thread replies, reactions and references;
//! `/relations`, `/threads`, `/context`, `/timestamp_to_event`; the bundled
//! aggregations of `/event`, `/messages`, `/sync` and `/threads`; the
//! relation rules and errors. Plain HTTP on SQLite and PostgreSQL, and the
//! sending path of Element (edit, thread reply, reaction) with matrix-sdk.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chancery_testkit::{Backend, TestServer};
use matrix_sdk::config::SyncSettings;
use matrix_sdk::room::{IncludeRelations, ListThreadsOptions, RelationsOptions};
use matrix_sdk::ruma::events::reaction::ReactionEventContent;
use matrix_sdk::ruma::events::relation::{Annotation, RelationType};
use matrix_sdk::ruma::events::room::message::{
    AddMentions, ReplacementMetadata, ReplyMetadata, ReplyWithinThread, RoomMessageEventContent,
};
use matrix_sdk::ruma::{OwnedEventId, uint};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{PASSWORD, assert_error, call, register};

static TXN: AtomicU64 = AtomicU64::new(0);

struct User {
    base: String,
    token: String,
    id: String,
}

impl User {
    async fn new(base: &str, name: &str) -> User {
        let (id, token, _) = register(base, name).await;
        User { base: base.into(), token, id }
    }
    /// `path` starts with the version: `/v3/...` or `/v1/...`.
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        call(method, &format!("{}/_matrix/client{path}", self.base), Some(&self.token), body).await
    }
    async fn get(&self, path: &str) -> Value {
        let (status, body) = self.call(Method::GET, path, None).await;
        assert_eq!(status, 200, "{path}: {body}");
        body
    }
    async fn post(&self, path: &str, body: Value) -> Value {
        let (status, body) = self.call(Method::POST, path, Some(body)).await;
        assert_eq!(status, 200, "{path}: {body}");
        body
    }
    async fn try_send(&self, room: &str, event_type: &str, content: Value) -> (StatusCode, Value) {
        let txn = TXN.fetch_add(1, Ordering::Relaxed);
        self.call(Method::PUT, &format!("/v3/rooms/{room}/send/{event_type}/t{txn}"), Some(content)).await
    }
    async fn send(&self, room: &str, event_type: &str, content: Value) -> String {
        let (status, body) = self.try_send(room, event_type, content).await;
        assert_eq!(status, 200, "{body}");
        body["event_id"].as_str().unwrap().to_owned()
    }
    async fn say(&self, room: &str, content: Value) -> String {
        self.send(room, "m.room.message", content).await
    }
    async fn redact(&self, room: &str, event_id: &str) {
        let txn = TXN.fetch_add(1, Ordering::Relaxed);
        let (status, body) = self.call(Method::PUT, &format!("/v3/rooms/{room}/redact/{event_id}/r{txn}"), Some(json!({}))).await;
        assert_eq!(status, 200, "{body}");
    }
    async fn event(&self, room: &str, event_id: &str) -> Value {
        self.get(&format!("/v3/rooms/{room}/event/{event_id}")).await
    }
}

fn text(body: &str) -> Value {
    json!({"msgtype": "m.text", "body": body})
}

fn edit(original: &str, body: &str) -> Value {
    json!({
        "msgtype": "m.text",
        "body": format!("* {body}"),
        "m.new_content": {"msgtype": "m.text", "body": body},
        "m.relates_to": {"rel_type": "m.replace", "event_id": original},
    })
}

fn thread(root: &str, body: &str) -> Value {
    json!({
        "msgtype": "m.text",
        "body": body,
        "m.relates_to": {"rel_type": "m.thread", "event_id": root, "is_falling_back": true, "m.in_reply_to": {"event_id": root}},
    })
}

fn reaction(target: &str, key: &str) -> Value {
    json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": target, "key": key}})
}

fn ids(events: &Value) -> Vec<String> {
    events.as_array().unwrap().iter().map(|e| e["event_id"].as_str().unwrap().to_owned()).collect()
}

#[track_caller]
fn assert_ids(events: &Value, expected: &[&String]) {
    let expected: Vec<String> = expected.iter().map(|s| (*s).clone()).collect();
    assert_eq!(ids(events), expected, "{events}");
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn relations_of(event: &Value) -> &Value {
    &event["unsigned"]["m.relations"]
}

async fn relations_over_http(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let base = server.base_url.clone();
    let alice = User::new(&base, "alice").await;
    let bob = User::new(&base, "bob").await;
    let carol = User::new(&base, "carol").await;
    let eve = User::new(&base, "eve").await;
    let room = alice.post("/v3/createRoom", json!({"preset": "public_chat", "name": "Planning"})).await["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    bob.post(&format!("/v3/rooms/{room}/join"), json!({})).await;
    carol.post(&format!("/v3/rooms/{room}/join"), json!({})).await;

    let root = alice.say(&room, text("Meeting at 9")).await;
    // Edits: only the sender's own, of an original, with m.new_content,
    // count; the others are stored as plain messages.
    let edit1 = alice.say(&room, edit(&root, "Meeting at 10")).await;
    let edit2 = alice.say(&room, edit(&root, "Meeting at 11")).await;
    let bob_edit = bob.say(&room, edit(&root, "Meeting cancelled")).await;
    let edit_of_edit = alice.say(&room, edit(&edit1, "Meeting at noon")).await;
    let no_new_content =
        alice.say(&room, json!({"body": "* x", "m.relates_to": {"rel_type": "m.replace", "event_id": root}})).await;
    // A thread of three replies.
    let t1 = bob.say(&room, thread(&root, "I'll be there")).await;
    let t2 = bob.say(&room, thread(&root, "Bringing slides")).await;
    let t3 = alice.say(&room, thread(&root, "Great")).await;
    // Threads do not nest, and do not start at an edit (spec: 400 M_UNKNOWN).
    assert_error(&alice.try_send(&room, "m.room.message", thread(&t1, "nested")).await, 400, "M_UNKNOWN");
    assert_error(&alice.try_send(&room, "m.room.message", thread(&edit1, "from an edit")).await, 400, "M_UNKNOWN");
    // Reactions: one per sender, type and key.
    let like = bob.send(&room, "m.reaction", reaction(&root, "👍")).await;
    assert_error(&bob.try_send(&room, "m.reaction", reaction(&root, "👍")).await, 400, "M_DUPLICATE_ANNOTATION");
    let like2 = alice.send(&room, "m.reaction", reaction(&root, "👍")).await;
    let heart = bob.send(&room, "m.reaction", reaction(&root, "❤️")).await;
    // A reference, and a reaction to a thread reply (a relation of a relation).
    let reference = bob
        .say(
            &room,
            json!({"msgtype": "m.notice", "body": "minutes", "m.relates_to": {"rel_type": "m.reference", "event_id": root}}),
        )
        .await;
    let deep = carol.send(&room, "m.reaction", reaction(&t1, "🎉")).await;
    // A relation to an event of another room is stored but ignored.
    let elsewhere = alice.post("/v3/createRoom", json!({})).await["room_id"].as_str().unwrap().to_owned();
    let stray = alice.send(&elsewhere, "m.reaction", reaction(&root, "👀")).await;

    let rel = |path: &str| format!("/v1/rooms/{room}/relations/{path}");
    let all = alice.get(&rel(&format!("{root}?limit=50"))).await;
    let direct = [&reference, &heart, &like2, &like, &t3, &t2, &t1, &edit2, &edit1];
    assert_ids(&all["chunk"], &direct);
    assert!(all.get("next_batch").is_none() && all.get("recursion_depth").is_none(), "{all}");
    for invalid in [&bob_edit, &edit_of_edit, &no_new_content, &stray] {
        assert!(!ids(&all["chunk"]).contains(invalid));
    }
    assert!(alice.get(&rel(&edit1)).await["chunk"].as_array().unwrap().is_empty(), "an edit of an edit is no edit");
    let recursed = alice.get(&rel(&format!("{root}?limit=50&recurse=true"))).await;
    assert_eq!(recursed["recursion_depth"], 3);
    let mut with_deep = vec![&deep];
    with_deep.extend(direct);
    assert_ids(&recursed["chunk"], &with_deep);
    let reactions = alice.get(&rel(&format!("{root}/m.annotation/m.reaction"))).await;
    assert_ids(&reactions["chunk"], &[&heart, &like2, &like]);
    assert!(alice.get(&rel(&format!("{root}/m.thread/m.reaction"))).await["chunk"].as_array().unwrap().is_empty());

    // Paging through the thread: backwards (the default), forwards, and up to a `to` token.
    let page1 = alice.get(&rel(&format!("{root}/m.thread?limit=2"))).await;
    assert_ids(&page1["chunk"], &[&t3, &t2]);
    assert!(page1.get("prev_batch").is_none());
    let next = page1["next_batch"].as_str().unwrap();
    let page2 = alice.get(&rel(&format!("{root}/m.thread?limit=2&from={next}"))).await;
    assert_ids(&page2["chunk"], &[&t1]);
    assert!(page2.get("next_batch").is_none(), "{page2}");
    assert_eq!(page2["prev_batch"], next);
    let forward = alice.get(&rel(&format!("{root}/m.thread?limit=2&dir=f"))).await;
    assert_ids(&forward["chunk"], &[&t1, &t2]);
    let after_t2 = forward["next_batch"].as_str().unwrap();
    let forward2 = alice.get(&rel(&format!("{root}/m.thread?limit=2&dir=f&from={after_t2}"))).await;
    assert_ids(&forward2["chunk"], &[&t3]);
    let newer_than_t2 = alice.get(&rel(&format!("{root}/m.thread?to={after_t2}"))).await;
    assert_ids(&newer_than_t2["chunk"], &[&t3]);

    // Bundled aggregations on /event: the latest edit, the thread, the
    // references; never the reactions.
    let got = alice.event(&room, &root).await;
    let relations = relations_of(&got);
    assert_eq!(relations["m.replace"]["event_id"], edit2.as_str(), "{got}");
    assert_eq!(relations["m.replace"]["content"]["m.new_content"]["body"], "Meeting at 11");
    assert_eq!(relations["m.thread"]["count"], 3);
    assert_eq!(relations["m.thread"]["latest_event"]["event_id"], t3.as_str());
    assert_eq!(relations["m.thread"]["latest_event"]["content"]["body"], "Great");
    assert_eq!(relations["m.thread"]["current_user_participated"], true);
    assert_eq!(relations["m.reference"], json!({"chunk": [{"event_id": reference}]}));
    assert!(relations.get("m.annotation").is_none());
    assert_eq!(got["content"]["body"], "Meeting at 9", "the original content stays");
    assert_eq!(relations_of(&bob.event(&room, &root).await)["m.thread"]["current_user_participated"], true);
    assert_eq!(relations_of(&carol.event(&room, &root).await)["m.thread"]["current_user_participated"], false);
    assert!(relations_of(&alice.event(&room, &t1).await).is_null(), "reactions are not bundled");

    // The thread's latest event comes with its own edit.
    let t3_edit = alice.say(&room, edit(&t3, "Great!")).await;
    let thread_summary = relations_of(&alice.event(&room, &root).await)["m.thread"].clone();
    assert_eq!(thread_summary["count"], 3);
    assert_eq!(relations_of(&thread_summary["latest_event"])["m.replace"]["event_id"], t3_edit.as_str());

    // /messages and /sync bundle them too.
    let messages = alice.get(&format!("/v3/rooms/{room}/messages?dir=b&limit=100")).await;
    let in_messages = messages["chunk"].as_array().unwrap().iter().find(|e| e["event_id"] == root.as_str()).unwrap();
    assert_eq!(relations_of(in_messages)["m.thread"]["count"], 3);
    assert_eq!(relations_of(in_messages)["m.replace"]["event_id"], edit2.as_str());
    let filter = urlencode(r#"{"room":{"timeline":{"limit":100}}}"#);
    let sync = bob.get(&format!("/v3/sync?filter={filter}")).await;
    let timeline = sync["rooms"]["join"][&room]["timeline"]["events"].as_array().unwrap();
    let in_sync = timeline.iter().find(|e| e["event_id"] == root.as_str()).unwrap();
    assert_eq!(relations_of(in_sync)["m.replace"]["event_id"], edit2.as_str());
    assert_eq!(relations_of(in_sync)["m.thread"]["current_user_participated"], true);

    // /threads: the most recently active first, paginated, optionally
    // only the threads the user took part in.
    let root2 = bob.say(&room, text("Another topic")).await;
    alice.say(&room, thread(&root2, "Indeed")).await;
    let threads = carol.get(&format!("/v1/rooms/{room}/threads")).await;
    assert_ids(&threads["chunk"], &[&root2, &root]);
    assert_eq!(relations_of(&threads["chunk"][1])["m.thread"]["count"], 3);
    assert_eq!(relations_of(&threads["chunk"][0])["m.thread"]["current_user_participated"], false);
    let first = carol.get(&format!("/v1/rooms/{room}/threads?limit=1")).await;
    assert_ids(&first["chunk"], &[&root2]);
    let next = first["next_batch"].as_str().unwrap();
    let second = carol.get(&format!("/v1/rooms/{room}/threads?limit=1&from={next}")).await;
    assert_ids(&second["chunk"], &[&root]);
    let participated = format!("/v1/rooms/{room}/threads?include=participated");
    assert_ids(&bob.get(&participated).await["chunk"], &[&root2, &root]);
    assert_ids(&alice.get(&participated).await["chunk"], &[&root2, &root]);
    assert!(carol.get(&participated).await["chunk"].as_array().unwrap().is_empty());

    // /context around t2: two events before (newest first), two after,
    // tokens that continue with /messages, and the state there.
    let context = alice.get(&format!("/v3/rooms/{room}/context/{t2}?limit=4")).await;
    assert_eq!(context["event"]["event_id"], t2.as_str());
    assert_ids(&context["events_before"], &[&t1, &no_new_content]);
    assert_ids(&context["events_after"], &[&t3, &like]);
    let state_types: BTreeSet<&str> = context["state"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert!(state_types.contains("m.room.create") && state_types.contains("m.room.member"), "{state_types:?}");
    let start = context["start"].as_str().unwrap();
    let before = alice.get(&format!("/v3/rooms/{room}/messages?dir=b&limit=1&from={start}")).await;
    assert_ids(&before["chunk"], &[&edit_of_edit]);
    let end = context["end"].as_str().unwrap();
    let after = alice.get(&format!("/v3/rooms/{room}/messages?dir=f&limit=1&from={end}")).await;
    assert_ids(&after["chunk"], &[&like2]);
    let around_root = alice.get(&format!("/v3/rooms/{room}/context/{root}?limit=0")).await;
    assert_eq!(relations_of(&around_root["event"])["m.thread"]["count"], 3);
    assert!(around_root.get("events_before").is_none_or(|e| e.as_array().unwrap().is_empty()));
    // The filter applies to the events around and the state, not the event.
    let only_reactions = urlencode(r#"{"types":["m.reaction"]}"#);
    let filtered = alice.get(&format!("/v3/rooms/{room}/context/{t2}?limit=4&filter={only_reactions}")).await;
    assert_eq!(filtered["event"]["event_id"], t2.as_str());
    assert!(filtered["events_before"].as_array().unwrap().is_empty());
    assert_ids(&filtered["events_after"], &[&like]);
    assert!(filtered["state"].as_array().unwrap().is_empty());
    let lazy = urlencode(r#"{"lazy_load_members":true}"#);
    let lazy = alice.get(&format!("/v3/rooms/{room}/context/{t2}?limit=2&filter={lazy}")).await;
    let members: BTreeSet<&str> = lazy["state"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.member")
        .map(|e| e["state_key"].as_str().unwrap())
        .collect();
    assert_eq!(members, BTreeSet::from([alice.id.as_str(), bob.id.as_str()]), "senders of t1, t2, t3 only");

    // /timestamp_to_event in both directions.
    let ts = |dir: &str, ts: u64| format!("/v1/rooms/{room}/timestamp_to_event?dir={dir}&ts={ts}");
    let root_ts = got["origin_server_ts"].as_u64().unwrap();
    for dir in ["f", "b"] {
        let found = alice.get(&ts(dir, root_ts)).await;
        assert_eq!(found["origin_server_ts"].as_u64(), Some(root_ts), "{dir}: {found}");
    }
    let create = alice.get(&format!("/v3/rooms/{room}/state/m.room.create/?format=event")).await;
    assert_eq!(alice.get(&ts("f", 0)).await["event_id"], create["event_id"]);
    let last = alice.get(&format!("/v3/rooms/{room}/messages?dir=b&limit=1")).await;
    let far_future = 4_102_444_800_000; // 2100
    assert_eq!(alice.get(&ts("b", far_future)).await["event_id"], last["chunk"][0]["event_id"]);
    assert_error(&alice.call(Method::GET, &ts("b", 0), None).await, 404, "M_NOT_FOUND");
    assert_error(&alice.call(Method::GET, &ts("f", far_future), None).await, 404, "M_NOT_FOUND");

    // Redacting edits: the previous edit comes back, then none; redacting
    // the latest thread reply moves the thread back.
    alice.redact(&room, &edit2).await;
    assert_eq!(relations_of(&alice.event(&room, &root).await)["m.replace"]["event_id"], edit1.as_str());
    alice.redact(&room, &edit1).await;
    let relations = relations_of(&alice.event(&room, &root).await).clone();
    assert!(relations.get("m.replace").is_none(), "{relations}");
    assert_eq!(relations["m.thread"]["count"], 3);
    alice.redact(&room, &t3).await;
    let thread_summary = relations_of(&alice.event(&room, &root).await)["m.thread"].clone();
    assert_eq!(
        (thread_summary["count"].as_u64(), thread_summary["latest_event"]["event_id"].as_str()),
        (Some(2), Some(t2.as_str()))
    );
    assert_ids(&alice.get(&rel(&format!("{root}/m.replace"))).await["chunk"], &[]);
    // A redacted original is served without its edits.
    let doomed = alice.say(&room, text("Secret")).await;
    alice.say(&room, edit(&doomed, "Still secret")).await;
    alice.redact(&room, &doomed).await;
    let redacted = alice.event(&room, &doomed).await;
    assert!(relations_of(&redacted).get("m.replace").is_none(), "{redacted}");
    // A redacted reaction frees its key.
    bob.redact(&room, &like).await;
    bob.send(&room, "m.reaction", reaction(&root, "👍")).await;

    // Errors: unknown events, rooms the user is not in, bad parameters.
    assert_error(&alice.call(Method::GET, &rel("$unknown"), None).await, 404, "M_NOT_FOUND");
    assert_error(&alice.call(Method::GET, &rel(&stray), None).await, 404, "M_NOT_FOUND");
    assert_error(&alice.call(Method::GET, &format!("/v3/rooms/{room}/context/$unknown"), None).await, 404, "M_NOT_FOUND");
    for path in [rel(&root), format!("/v1/rooms/{room}/threads"), format!("/v3/rooms/{room}/context/{root}"), ts("f", root_ts)] {
        assert_error(&eve.call(Method::GET, &path, None).await, 403, "M_FORBIDDEN");
    }
    for path in [
        rel(&format!("{root}?dir=sideways")),
        rel(&format!("{root}?limit=many")),
        rel(&format!("{root}?from=garbage")),
        rel(&format!("{root}?recurse=maybe")),
        rel("not-an-event-id"),
        format!("/v1/rooms/{room}/threads?include=everything"),
        format!("/v1/rooms/{room}/threads?from=garbage"),
        format!("/v1/rooms/{room}/timestamp_to_event?dir=f"),
        format!("/v1/rooms/{room}/timestamp_to_event?ts=1&dir=up"),
        format!("/v3/rooms/{room}/context/{root}?filter=not-json"),
        format!("/v3/rooms/{room}/context/{root}?limit=-1"),
    ] {
        assert_error(&alice.call(Method::GET, &path, None).await, 400, "M_INVALID_PARAM");
    }
    server.stop().await.unwrap();
}

on_both_backends!(relations_over_http);

/// `/relations` and `/threads` follow history visibility as `/messages`
/// does: a member who left reads the thread up to their departure (with
/// pages that move on past what they may not see), outsiders of a
/// `shared` room get `/messages`' 403, anyone reads a `world_readable`
/// room, and a forgotten room is closed.
async fn relations_follow_history_visibility(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let base = server.base_url.clone();
    let alice = User::new(&base, "alice").await;
    let bob = User::new(&base, "bob").await;
    let carol = User::new(&base, "carol").await;
    let dave = User::new(&base, "dave").await;
    // private_chat: history visibility `shared`.
    let room = alice.post("/v3/createRoom", json!({"preset": "private_chat"})).await["room_id"].as_str().unwrap().to_owned();
    let root = alice.say(&room, text("Budget draft")).await;
    let before_bob = alice.say(&room, thread(&root, "sent before bob joined")).await;
    alice.post(&format!("/v3/rooms/{room}/invite"), json!({"user_id": bob.id})).await;
    bob.post(&format!("/v3/join/{room}"), json!({})).await;
    let bob_reply = bob.say(&room, thread(&root, "looks fine")).await;
    let while_there = alice.say(&room, thread(&root, "thanks")).await;
    bob.post(&format!("/v3/rooms/{room}/leave"), json!({})).await;
    let after_leave = alice.say(&room, thread(&root, "now that bob is gone")).await;
    let late_root = alice.say(&room, text("A new topic")).await;
    let late_reply = alice.say(&room, thread(&late_root, "bob never sees this")).await;

    let rel = |path: &str| format!("/v1/rooms/{room}/relations/{path}");
    assert_ids(
        &alice.get(&rel(&format!("{root}/m.thread"))).await["chunk"],
        &[&after_leave, &while_there, &bob_reply, &before_bob],
    );
    // Shared history: what was said before bob joined and while he was
    // there, nothing after he left.
    let readable = [&while_there, &bob_reply, &before_bob];
    assert_ids(&bob.get(&rel(&format!("{root}/m.thread"))).await["chunk"], &readable);
    assert_ids(&bob.get(&rel(&format!("{root}?limit=50"))).await["chunk"], &readable);
    assert_error(&bob.call(Method::GET, &rel(&late_root), None).await, 404, "M_NOT_FOUND");
    let threads = bob.get(&format!("/v1/rooms/{room}/threads")).await;
    assert_ids(&threads["chunk"], &[&root]);
    assert_ids(&alice.get(&format!("/v1/rooms/{room}/threads")).await["chunk"], &[&late_root, &root]);
    // The root as served bundles its latest reply and edit: the ones sent
    // after bob left are not shown to him (nor is the thread's count).
    let edit = alice
        .say(
            &room,
            json!({"msgtype": "m.text", "body": "* edited after bob left", "m.new_content": {"msgtype": "m.text", "body": "edited after bob left"},
                   "m.relates_to": {"rel_type": "m.replace", "event_id": root}}),
        )
        .await;
    let for_alice = alice.get(&format!("/v3/rooms/{room}/event/{root}")).await;
    assert_eq!(for_alice["unsigned"]["m.relations"]["m.thread"]["latest_event"]["event_id"], json!(after_leave), "{for_alice}");
    assert_eq!(for_alice["unsigned"]["m.relations"]["m.replace"]["event_id"], json!(edit), "{for_alice}");
    let for_bob = bob.get(&format!("/v3/rooms/{room}/event/{root}")).await;
    assert!(for_bob["unsigned"].get("m.relations").is_none(), "bob sees what came after he left: {for_bob}");
    // One reply per page: the first page is empty (the newest reply is not
    // bob's to see) yet its token moves on, and the walk ends.
    let mut seen = Vec::new();
    let mut from: Option<String> = None;
    for _ in 0..10 {
        let query = from.as_ref().map(|f| format!("&from={f}")).unwrap_or_default();
        let page = bob.get(&rel(&format!("{root}/m.thread?limit=1{query}"))).await;
        seen.extend(ids(&page["chunk"]));
        match page["next_batch"].as_str() {
            Some(next) => {
                assert_ne!(Some(next), from.as_deref(), "a token that does not move: {page}");
                from = Some(next.to_owned());
            }
            None => {
                from = None;
                break;
            }
        }
    }
    assert!(from.is_none(), "pagination did not end within 10 pages");
    assert_eq!(seen, readable.map(|id| id.to_owned()));
    assert!(!seen.contains(&after_leave) && !seen.contains(&late_reply));

    // Never a member of a `shared` room: the answer /messages gives.
    assert_error(&carol.call(Method::GET, &format!("/v3/rooms/{room}/messages?dir=b"), None).await, 403, "M_FORBIDDEN");
    assert_error(&carol.call(Method::GET, &rel(&root), None).await, 403, "M_FORBIDDEN");
    assert_error(&carol.call(Method::GET, &format!("/v1/rooms/{room}/threads"), None).await, 403, "M_FORBIDDEN");

    // Anyone reads a world-readable room's relations and threads.
    let open = alice
        .post(
            "/v3/createRoom",
            json!({"preset": "public_chat", "initial_state": [
                {"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "world_readable"}}]}),
        )
        .await["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let open_root = alice.say(&open, text("Public minutes")).await;
    let open_reply = alice.say(&open, thread(&open_root, "item 1")).await;
    let like = alice.send(&open, "m.reaction", reaction(&open_root, "👍")).await;
    let outside = dave.get(&format!("/v1/rooms/{open}/relations/{open_root}")).await;
    assert_ids(&outside["chunk"], &[&like, &open_reply]);
    assert_ids(&dave.get(&format!("/v1/rooms/{open}/threads")).await["chunk"], &[&open_root]);

    // Forgetting closes the history (spec "Leaving rooms").
    bob.post(&format!("/v3/rooms/{room}/forget"), json!({})).await;
    assert_error(&bob.call(Method::GET, &rel(&root), None).await, 403, "M_FORBIDDEN");
    assert_error(&bob.call(Method::GET, &format!("/v3/rooms/{room}/messages?dir=b"), None).await, 403, "M_FORBIDDEN");
    server.stop().await.unwrap();
}

on_both_backends!(relations_follow_history_visibility);

async fn sdk_client(base: &str, name: &str) -> matrix_sdk::Client {
    register(base, name).await;
    let client = matrix_sdk::Client::builder().homeserver_url(base).build().await.unwrap();
    client.matrix_auth().login_username(name, PASSWORD).send().await.unwrap();
    client.sync_once(SyncSettings::default().timeout(Duration::from_secs(5))).await.unwrap();
    client
}

/// Raw JSON of an event as matrix-sdk received it.
fn raw(event: &matrix_sdk::deserialized_responses::TimelineEvent) -> Value {
    event.raw().deserialize_as().unwrap()
}

/// What Element does: edit a message, reply in a thread, react; then read
/// it all back through matrix-sdk's relations, threads, event and context
/// calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn element_style_edits_threads_and_reactions() {
    let server = TestServer::start(Backend::Sqlite).await.unwrap();
    let base = server.base_url.clone();
    let alice = sdk_client(&base, "alice").await;
    let bob = sdk_client(&base, "bob").await;
    let mut request = matrix_sdk::ruma::api::client::room::create_room::v3::Request::new();
    request.preset = Some(matrix_sdk::ruma::api::client::room::create_room::v3::RoomPreset::PublicChat);
    let room = alice.create_room(request).await.unwrap();
    let room_id = room.room_id().to_owned();
    let bob_room = bob.join_room_by_id(&room_id).await.unwrap();
    let alice_id = alice.user_id().unwrap().to_owned();

    let root: OwnedEventId = room.send(RoomMessageEventContent::text_plain("Draft agenda")).await.unwrap().response.event_id;
    let edit = RoomMessageEventContent::text_plain("Final agenda").make_replacement(ReplacementMetadata::new(root.clone(), None));
    let edit_id = room.send(edit).await.unwrap().response.event_id;
    let reply = RoomMessageEventContent::text_plain("Looks good").make_for_thread(
        ReplyMetadata::new(&root, &alice_id, None),
        ReplyWithinThread::No,
        AddMentions::No,
    );
    let reply_id = bob_room.send(reply).await.unwrap().response.event_id;
    let like = ReactionEventContent::new(Annotation::new(root.clone(), "👍".to_owned()));
    let like_id = bob_room.send(like.clone()).await.unwrap().response.event_id;
    let twice = bob_room.send(like).await.unwrap_err();
    let errcode = twice.client_api_error_kind().map(|kind| kind.errcode().to_string());
    assert_eq!(errcode.as_deref(), Some("M_DUPLICATE_ANNOTATION"), "{twice:?}");

    let all = bob_room.relations(root.clone(), RelationsOptions::default()).await.unwrap();
    let all_ids: Vec<_> = all.chunk.iter().map(|e| e.event_id().unwrap()).collect();
    assert_eq!(all_ids, [like_id.clone(), reply_id.clone(), edit_id.clone()]);
    let options = RelationsOptions {
        include_relations: IncludeRelations::RelationsOfType(RelationType::Thread),
        limit: Some(uint!(10)),
        ..Default::default()
    };
    let in_thread = bob_room.relations(root.clone(), options).await.unwrap();
    assert_eq!(in_thread.chunk.iter().map(|e| e.event_id().unwrap()).collect::<Vec<_>>(), std::slice::from_ref(&reply_id));
    assert!(in_thread.next_batch_token.is_none());

    let threads = bob_room.list_threads(ListThreadsOptions::default()).await.unwrap();
    assert_eq!(threads.chunk.len(), 1);
    let listed = raw(&threads.chunk[0]);
    assert_eq!(listed["event_id"], root.as_str());
    assert_eq!(listed["unsigned"]["m.relations"]["m.thread"]["latest_event"]["event_id"], reply_id.as_str());
    assert_eq!(listed["unsigned"]["m.relations"]["m.thread"]["current_user_participated"], true);

    let fetched = raw(&bob_room.event(&root, None).await.unwrap());
    assert_eq!(fetched["unsigned"]["m.relations"]["m.replace"]["content"]["m.new_content"]["body"], "Final agenda", "{fetched}");
    assert_eq!(fetched["unsigned"]["m.relations"]["m.thread"]["count"], 1);

    let context = bob_room.event_with_context(&reply_id, true, uint!(2), None).await.unwrap();
    assert_eq!(context.event.as_ref().and_then(|e| e.event_id()), Some(reply_id.clone()));
    assert_eq!(context.events_before.iter().map(|e| e.event_id().unwrap()).collect::<Vec<_>>(), [edit_id]);
    assert_eq!(context.events_after.iter().map(|e| e.event_id().unwrap()).collect::<Vec<_>>(), [like_id]);
    server.stop().await.unwrap();
}
