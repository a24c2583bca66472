//! Thread subscriptions (MSC4306) and their changes (MSC4308), on SQLite
//! and PostgreSQL: the endpoints and their errors over plain HTTP, the
//! push rules that notify only a thread's subscribers, the sliding-sync
//! extension with `pos` and its pagination endpoint, and matrix-sdk's
//! own calls.

use std::time::{Duration, Instant};

use chancery_testkit::{Backend, TestServer};
use matrix_sdk::Client;
use matrix_sdk::config::SyncSettings;
use matrix_sdk::ruma::{OwnedEventId, OwnedRoomId};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{PASSWORD, User, assert_error, call, urlencode};

const UNSTABLE: &str = "/_matrix/client/unstable";
const EXTENSION: &str = "io.element.msc4308.thread_subscriptions";

fn enabled(config: &mut chancery_server::Config) {
    config.experimental.thread_subscriptions = true;
    crate::common::with_metrics(config);
}

fn subscription_url(user: &User, room: &str, root: &str) -> String {
    format!("{}{UNSTABLE}/io.element.msc4306/rooms/{room}/thread/{root}/subscription", user.base)
}

async fn subscription(user: &User, method: Method, room: &str, root: &str, body: Option<Value>) -> (StatusCode, Value) {
    let body = body.or_else(|| (method == Method::PUT).then(|| json!({})));
    call(method, &subscription_url(user, room, root), Some(&user.token), body).await
}

async fn changes(user: &User, query: &str) -> (StatusCode, Value) {
    let url = format!("{}{UNSTABLE}/io.element.msc4308/thread_subscriptions?{query}", user.base);
    call(Method::GET, &url, Some(&user.token), None).await
}

/// A reply in the thread of `root`.
async fn reply(user: &User, room: &str, root: &str, txn: &str, extra: Value) -> String {
    let mut content = json!({
        "msgtype": "m.text",
        "body": txn,
        "m.relates_to": { "rel_type": "m.thread", "event_id": root, "is_falling_back": true, "m.in_reply_to": { "event_id": root } },
    });
    if let (Some(content), Value::Object(extra)) = (content.as_object_mut(), extra) {
        content.extend(extra);
    }
    user.send(room, txn, content).await
}

/// A public room of alice's with bob in it and a thread root of alice's.
async fn room_with_thread(alice: &User, bob: &User) -> (String, String) {
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.ok(Method::POST, &format!("/join/{room}"), Some(json!({}))).await;
    let root = alice.say(&room, "root", "a thread starts here").await;
    (room, root)
}

async fn endpoints_and_errors(backend: Backend) {
    let server = TestServer::start_with(backend, enabled).await.unwrap();
    let alice = User::new(&server.base_url, "alice").await;
    let bob = User::new(&server.base_url, "bob").await;
    let carol = User::new(&server.base_url, "carol").await;
    let (status, versions) = call(Method::GET, &format!("{}/_matrix/client/versions", server.base_url), None, None).await;
    assert_eq!(status, 200);
    assert_eq!(versions["unstable_features"]["org.matrix.msc4306"], true, "{versions}");

    let (room, root) = room_with_thread(&alice, &bob).await;
    let first = reply(&bob, &room, &root, "r1", json!({})).await;

    assert_error(&subscription(&alice, Method::GET, &room, &root, None).await, 404, "M_NOT_FOUND");
    let (status, body) = subscription(&alice, Method::PUT, &room, &root, None).await;
    assert_eq!((status.as_u16(), &body), (200, &json!({})));
    assert_eq!(subscription(&alice, Method::GET, &room, &root, None).await.1, json!({ "automatic": false }));
    // Subscribing again changes nothing.
    assert_eq!(subscription(&alice, Method::PUT, &room, &root, None).await.0, 200);

    let (status, body) = subscription(&alice, Method::DELETE, &room, &root, None).await;
    assert_eq!((status.as_u16(), &body), (200, &json!({})));
    assert_error(&subscription(&alice, Method::GET, &room, &root, None).await, 404, "M_NOT_FOUND");
    // Unsubscribing when not subscribed is fine (Synapse).
    assert_eq!(subscription(&alice, Method::DELETE, &room, &root, None).await.0, 200);

    // Her client subscribes automatically because of a reply she had seen
    // when she unsubscribed: refused, and matrix-sdk knows the code.
    let automatic = |event: &str| Some(json!({ "automatic": event }));
    let conflict = subscription(&alice, Method::PUT, &room, &root, automatic(&first)).await;
    assert_error(&conflict, 409, "IO.ELEMENT.MSC4306.M_CONFLICTING_UNSUBSCRIPTION");
    // A later reply does subscribe her, automatically.
    let second = reply(&bob, &room, &root, "r2", json!({})).await;
    assert_eq!(subscription(&alice, Method::PUT, &room, &root, automatic(&second)).await.0, 200);
    assert_eq!(subscription(&alice, Method::GET, &room, &root, None).await.1, json!({ "automatic": true }));

    // The cause must be an event of the thread the user can see.
    let elsewhere = alice.say(&room, "plain", "not in the thread").await;
    assert_error(
        &subscription(&alice, Method::PUT, &room, &root, automatic(&elsewhere)).await,
        400,
        "IO.ELEMENT.MSC4306.M_NOT_IN_THREAD",
    );
    assert_error(&subscription(&alice, Method::PUT, &room, &root, automatic("$nope")).await, 404, "M_NOT_FOUND");

    // Unknown roots, rooms the user is not in, other rooms: 404 alike.
    for method in [Method::GET, Method::PUT, Method::DELETE] {
        assert_error(&subscription(&alice, method.clone(), &room, "$unknown", None).await, 404, "M_NOT_FOUND");
        assert_error(&subscription(&carol, method.clone(), &room, &root, None).await, 404, "M_NOT_FOUND");
        assert_error(&subscription(&alice, method.clone(), "!other:localhost", &root, None).await, 404, "M_NOT_FOUND");
    }
    assert_error(&subscription(&alice, Method::GET, &room, "not-an-event-id", None).await, 400, "M_INVALID_PARAM");
    assert_error(&subscription(&alice, Method::PUT, &room, &root, Some(json!({ "automatic": 3 }))).await, 400, "M_BAD_JSON");

    // The pagination endpoint: the newest change of each thread.
    let other_root = alice.say(&room, "root2", "another thread").await;
    assert_eq!(subscription(&alice, Method::PUT, &room, &other_root, None).await.0, 200);
    let (status, all) = changes(&alice, "dir=b").await;
    assert_eq!(status, 200, "{all}");
    let threads = &all["subscribed"][&room];
    assert_eq!(threads[&root]["automatic"], true, "{all}");
    assert_eq!(threads[&other_root]["automatic"], false, "{all}");
    assert!(threads[&other_root]["bump_stamp"].as_u64() > threads[&root]["bump_stamp"].as_u64());
    assert!(all["unsubscribed"] == json!({}) && all.get("end").is_none(), "{all}");
    // One at a time, newest first, then on from `end`.
    let (_, page) = changes(&alice, "dir=b&limit=1").await;
    assert!(page["subscribed"][&room][&other_root].is_object(), "{page}");
    let end = page["end"].as_str().unwrap().to_owned();
    let (_, page) = changes(&alice, &format!("dir=b&limit=1&from={}", urlencode(&end))).await;
    assert!(page["subscribed"][&room][&root].is_object() && page["subscribed"][&room].get(&other_root).is_none(), "{page}");
    let (_, page) = changes(&alice, &format!("dir=b&limit=1&from={}", urlencode(page["end"].as_str().unwrap()))).await;
    // Both maps always (matrix-sdk cannot read an answer without them).
    let nothing = json!({ "subscribed": {}, "unsubscribed": {} });
    assert_eq!(page, nothing, "nothing older");
    assert_eq!(changes(&bob, "dir=b").await.1, nothing, "bob follows nothing");

    assert_error(&changes(&alice, "dir=f").await, 400, "M_INVALID_PARAM");
    assert_error(&changes(&alice, "").await, 400, "M_MISSING_PARAM");
    assert_error(&changes(&alice, "dir=b&limit=0").await, 400, "M_INVALID_PARAM");
    assert_error(&changes(&alice, "dir=b&from=bogus").await, 400, "M_INVALID_PARAM");
    assert_error(&changes(&alice, "dir=b&to=bogus").await, 400, "M_INVALID_PARAM");
    let (status, _) = call(Method::GET, &subscription_url(&alice, &room, &root), None, None).await;
    assert_eq!(status, 401);

    // Turned off (the default), none of it exists.
    let off = TestServer::start(backend).await.unwrap();
    let dave = User::new(&off.base_url, "dave").await;
    let (_, versions) = call(Method::GET, &format!("{}/_matrix/client/versions", off.base_url), None, None).await;
    assert!(versions["unstable_features"].get("org.matrix.msc4306").is_none(), "{versions}");
    assert_error(&subscription(&dave, Method::GET, &room, &root, None).await, 404, "M_UNRECOGNIZED");
    assert_error(&changes(&dave, "dir=b").await, 404, "M_UNRECOGNIZED");
    let rules = dave.ok(Method::GET, "/pushrules/", None).await;
    assert!(rules["global"].get("postcontent").is_none(), "{rules}");
}
on_both_backends!(endpoints_and_errors);

/// The events of alice's `/notifications`.
async fn notified(alice: &User) -> Vec<String> {
    let body = alice.ok(Method::GET, "/notifications", None).await;
    body["notifications"].as_array().unwrap().iter().map(|n| n["event"]["event_id"].as_str().unwrap().to_owned()).collect()
}

async fn push_notifies_subscribers_only(backend: Backend) {
    let server = TestServer::start_with(backend, enabled).await.unwrap();
    let alice = User::new(&server.base_url, "alice").await;
    let bob = User::new(&server.base_url, "bob").await;
    let (room, root) = room_with_thread(&alice, &bob).await;
    // Alice has a rule set of her own (as soon as a client changes a rule,
    // as Element X does): the server's thread rules are still in it.
    let keyword = json!({ "pattern": "zebra", "actions": ["notify"] });
    alice.ok(Method::PUT, "/pushrules/global/content/zebra", Some(keyword)).await;
    let rules = alice.ok(Method::GET, "/pushrules/", None).await;
    assert_eq!(rules["global"]["content"][0]["rule_id"], "zebra", "{rules}");
    let ids: Vec<&str> =
        rules["global"]["postcontent"].as_array().unwrap().iter().map(|r| r["rule_id"].as_str().unwrap()).collect();
    assert_eq!(ids, [".io.element.msc4306.rule.unsubscribed_thread", ".io.element.msc4306.rule.subscribed_thread"]);

    // Not subscribed: a reply does not notify, a plain message does.
    let unheard = reply(&bob, &room, &root, "r1", json!({})).await;
    let plain = bob.say(&room, "plain", "in the room").await;
    // Mentions still notify, in any thread (override rules come first).
    let mention = reply(&bob, &room, &root, "r2", json!({ "m.mentions": { "user_ids": [alice.id] } })).await;
    let seen = notified(&alice).await;
    assert!(seen.contains(&plain) && seen.contains(&mention), "{seen:?}");
    assert!(!seen.contains(&unheard), "{seen:?}");

    // Subscribed: replies notify, and count as unread in the thread.
    assert_eq!(subscription(&alice, Method::PUT, &room, &root, None).await.0, 200);
    let heard = reply(&bob, &room, &root, "r3", json!({})).await;
    assert!(notified(&alice).await.contains(&heard));
    let sync = alice.sync("").await;
    let joined = &sync["rooms"]["join"][&room];
    assert_eq!(joined["unread_notifications"]["notification_count"], 3, "{joined}");

    // Unsubscribed again: silent again.
    assert_eq!(subscription(&alice, Method::DELETE, &room, &root, None).await.0, 200);
    let unheard = reply(&bob, &room, &root, "r4", json!({})).await;
    assert!(!notified(&alice).await.contains(&unheard));
}
on_both_backends!(push_notifies_subscribers_only);

/// One sliding-sync request of the encryption-sync kind (no lists), with
/// the thread-subscriptions extension.
async fn sliding(user: &User, pos: Option<&str>, timeout_ms: u64, limit: Option<u64>) -> Value {
    let mut query = format!("timeout={timeout_ms}");
    if let Some(pos) = pos {
        query.push_str(&format!("&pos={}", urlencode(pos)));
    }
    let mut extension = json!({ "enabled": true });
    if let Some(limit) = limit {
        extension["limit"] = json!(limit);
    }
    let url = format!("{}{UNSTABLE}/org.matrix.simplified_msc3575/sync?{query}", user.base);
    let body = json!({ "conn_id": "threads", "extensions": { EXTENSION: extension } });
    let (status, answer) = call(Method::POST, &url, Some(&user.token), Some(body)).await;
    assert_eq!(status, 200, "{answer}");
    answer
}

async fn sliding_sync_extension(backend: Backend) {
    let server = TestServer::start_with(backend, enabled).await.unwrap();
    let alice = User::new(&server.base_url, "alice").await;
    let bob = User::new(&server.base_url, "bob").await;
    let (room, root) = room_with_thread(&alice, &bob).await;
    let root2 = alice.say(&room, "root2", "second").await;
    for r in [&root, &root2] {
        assert_eq!(subscription(&alice, Method::PUT, &room, r, None).await.0, 200);
    }

    // A new connection gets every subscription.
    let first = sliding(&alice, None, 0, None).await;
    let part = &first["extensions"][EXTENSION];
    assert_eq!(part["subscribed"][&room][&root]["automatic"], false, "{first}");
    assert!(part["subscribed"][&room][&root2].is_object(), "{first}");
    assert!(part.get("prev_batch").is_none(), "{first}");
    let pos = first["pos"].as_str().unwrap().to_owned();

    // Nothing new: no thread subscriptions in the answer.
    let quiet = sliding(&alice, Some(&pos), 0, None).await;
    assert!(quiet["extensions"].get(EXTENSION).is_none(), "{quiet}");
    let pos = quiet["pos"].as_str().unwrap().to_owned();

    // A waiting connection is woken by an unsubscription and gets only it.
    let waiting = {
        let (alice, pos) = (User { base: alice.base.clone(), token: alice.token.clone(), id: alice.id.clone() }, pos.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            (sliding(&alice, Some(&pos), 20_000, None).await, started.elapsed())
        })
    };
    crate::common::wait_for_parked_polls(&server, 1).await;
    assert_eq!(subscription(&alice, Method::DELETE, &room, &root2, None).await.0, 200);
    let (next, waited) = waiting.await.unwrap();
    assert!(waited < Duration::from_secs(15), "woken, not timed out: {waited:?}");
    let part = &next["extensions"][EXTENSION];
    assert!(part["unsubscribed"][&room][&root2]["bump_stamp"].is_u64(), "{next}");
    assert!(part.get("subscribed").is_none(), "{next}");
    let pos = next["pos"].as_str().unwrap().to_owned();

    // More changes than the limit: the newest, and `prev_batch` for the
    // rest, which the pagination endpoint gives from there down to `pos`.
    let mut roots = Vec::new();
    for n in 0..3 {
        let r = alice.say(&room, &format!("more{n}"), "more").await;
        assert_eq!(subscription(&alice, Method::PUT, &room, &r, None).await.0, 200);
        roots.push(r);
    }
    let limited = sliding(&alice, Some(&pos), 0, Some(2)).await;
    let part = &limited["extensions"][EXTENSION];
    let sent: Vec<&String> = part["subscribed"][&room].as_object().unwrap().keys().collect();
    assert_eq!(sent.len(), 2, "{limited}");
    assert!(sent.contains(&&roots[1]) && sent.contains(&&roots[2]), "{limited}");
    let prev_batch = part["prev_batch"].as_str().unwrap();
    let (status, rest) = changes(&alice, &format!("dir=b&from={}&to={}", urlencode(prev_batch), urlencode(&pos))).await;
    assert_eq!(status, 200, "{rest}");
    let only =
        json!({ "subscribed": { &room: { &roots[0]: rest["subscribed"][&room][&roots[0]].clone() } }, "unsubscribed": {} });
    assert_eq!(rest, only);
    assert_eq!(rest["subscribed"][&room][&roots[0]]["automatic"], false);
}
on_both_backends!(sliding_sync_extension);

async fn sdk_client(base: &str, name: &str) -> Client {
    let client = Client::builder()
        .homeserver_url(base)
        .with_threading_support(matrix_sdk::ThreadingSupport::Enabled { with_subscriptions: true })
        .build()
        .await
        .unwrap();
    client.matrix_auth().login_username(name, PASSWORD).send().await.unwrap();
    client
}

async fn matrix_sdk_flow(backend: Backend) {
    let server = TestServer::start_with(backend, enabled).await.unwrap();
    let alice = User::new(&server.base_url, "alice").await;
    let bob = User::new(&server.base_url, "bob").await;
    let (room, root) = room_with_thread(&alice, &bob).await;
    let seen = reply(&bob, &room, &root, "r1", json!({})).await;
    let client = sdk_client(&server.base_url, "alice").await;
    assert!(client.enabled_thread_subscriptions().await.unwrap(), "the server's flag is what matrix-sdk looks for");
    client.sync_once(SyncSettings::default()).await.unwrap();
    let room_id = OwnedRoomId::try_from(room.as_str()).unwrap();
    let sdk_room = client.get_room(&room_id).expect("alice's room");
    let root_id = OwnedEventId::try_from(root.as_str()).unwrap();

    assert_eq!(sdk_room.fetch_thread_subscription(root_id.clone()).await.unwrap(), None);
    sdk_room.subscribe_thread(root_id.clone(), None).await.unwrap();
    let sub = sdk_room.fetch_thread_subscription(root_id.clone()).await.unwrap().expect("subscribed");
    assert!(!sub.automatic);
    let listed = client.fetch_thread_subscriptions(None, None, None).await.unwrap();
    assert!(listed.subscribed[&room_id].contains_key(&root_id), "{listed:?}");

    sdk_room.unsubscribe_thread(root_id.clone()).await.unwrap();
    assert_eq!(sdk_room.fetch_thread_subscription(root_id.clone()).await.unwrap(), None);
    // An automatic subscription the unsubscription overrides: matrix-sdk
    // takes the server's 409 for what it is (no error, no subscription).
    sdk_room.subscribe_thread(root_id.clone(), Some(OwnedEventId::try_from(seen.as_str()).unwrap())).await.unwrap();
    assert_eq!(sdk_room.fetch_thread_subscription(root_id.clone()).await.unwrap(), None);
    let listed = client.fetch_thread_subscriptions(None, None, None).await.unwrap();
    assert!(listed.unsubscribed[&room_id].contains_key(&root_id), "{listed:?}");
}
on_both_backends!(matrix_sdk_flow);

/// Element X's stack (matrix-sdk-ui's `SyncService`, whose room list asks
/// for the extension with `limit: 10` once `/versions` advertises thread
/// subscriptions): the first answer brings the newest ten, matrix-sdk
/// pages back through the rest with `prev_batch`, and a change made on
/// another device arrives with the next answer.
async fn element_x_syncs_subscriptions(backend: Backend) {
    use matrix_sdk::sliding_sync::VersionBuilder;
    use matrix_sdk::store::ThreadSubscriptionStatus;
    use matrix_sdk_ui::sync_service::SyncService;

    let server = TestServer::start_with(backend, enabled).await.unwrap();
    let alice = User::new(&server.base_url, "alice").await;
    let bob = User::new(&server.base_url, "bob").await;
    let (room, _) = room_with_thread(&alice, &bob).await;
    // More threads than one answer carries (Element X asks for 10).
    let mut roots = Vec::new();
    for n in 0..13 {
        let root = alice.say(&room, &format!("root{n}"), "a thread").await;
        assert_eq!(subscription(&alice, Method::PUT, &room, &root, None).await.0, 200);
        roots.push(OwnedEventId::try_from(root.as_str()).unwrap());
    }

    let client = Client::builder()
        .homeserver_url(&server.base_url)
        .sliding_sync_version_builder(VersionBuilder::DiscoverNative)
        .with_threading_support(matrix_sdk::ThreadingSupport::Enabled { with_subscriptions: true })
        .build()
        .await
        .unwrap();
    client.matrix_auth().login_username("alice", PASSWORD).send().await.unwrap();
    let sync = SyncService::builder(client.clone()).build().await.unwrap();
    sync.start().await;
    let room_id = OwnedRoomId::try_from(room.as_str()).unwrap();
    let status = async |root: &OwnedEventId| {
        client.state_store().load_thread_subscription(&room_id, root).await.unwrap().map(|s| s.status)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut known = 0;
        for root in &roots {
            if status(root).await == Some(ThreadSubscriptionStatus::Subscribed { automatic: false }) {
                known += 1;
            }
        }
        if known == roots.len() {
            break;
        }
        assert!(Instant::now() < deadline, "matrix-sdk knows {known} of {} subscriptions", roots.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Alice unsubscribes on another device: her Element X hears of it.
    assert_eq!(subscription(&alice, Method::DELETE, &room, roots[4].as_str(), None).await.0, 200);
    let deadline = Instant::now() + Duration::from_secs(60);
    while status(&roots[4]).await != Some(ThreadSubscriptionStatus::Unsubscribed) {
        assert!(Instant::now() < deadline, "the unsubscription never reached matrix-sdk");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sync.stop().await;
}
on_both_backends!(element_x_syncs_subscriptions);
