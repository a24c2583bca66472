//! Presence: off by default (everyone offline, nothing kept), and when the
//! operator turns it on, shared between users of a room through /sync.

use chancery_testkit::{Backend, TestServer};
use reqwest::Method;
use serde_json::json;

use crate::common::{assert_error, call, ok, register};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_off_by_default_and_shared_when_on() {
    for enabled in [false, true] {
        let server = TestServer::start_with(Backend::Sqlite, |c| c.presence.enabled = enabled).await.unwrap();
        let base = server.base_url.clone();
        let api = |path: &str| format!("{base}/_matrix/client/v3{path}");
        let (alice_id, alice, _) = register(&base, "alice").await;
        let (_, bob, _) = register(&base, "bob").await;
        let (_, carol, _) = register(&base, "carol").await;
        let room = ok(Method::POST, api("/createRoom"), &alice, Some(json!({"preset": "public_chat"}))).await["room_id"]
            .as_str()
            .unwrap()
            .to_owned();
        ok(Method::POST, api(&format!("/join/{room}")), &bob, Some(json!({}))).await;
        let since =
            ok(Method::GET, api("/sync?set_presence=offline"), &bob, None).await["next_batch"].as_str().unwrap().to_owned();

        ok(
            Method::PUT,
            api(&format!("/presence/{alice_id}/status")),
            &alice,
            Some(json!({"presence": "unavailable", "status_msg": "in a meeting"})),
        )
        .await;
        let got = ok(Method::GET, api(&format!("/presence/{alice_id}/status")), &bob, None).await;
        let sync = ok(Method::GET, api(&format!("/sync?since={since}&timeout=0&set_presence=offline")), &bob, None).await;
        let events = sync["presence"]["events"].as_array().unwrap();
        if enabled {
            assert_eq!(got["presence"], "unavailable");
            assert_eq!(got["status_msg"], "in a meeting");
            assert!(
                events.iter().any(|e| e["sender"] == alice_id.as_str() && e["content"]["status_msg"] == "in a meeting"),
                "{sync}"
            );
        } else {
            assert_eq!(got, json!({"presence": "offline"}));
            assert!(events.is_empty(), "{sync}");
        }
        // Only oneself, and only people one shares a room with.
        assert_error(
            &call(Method::PUT, &api(&format!("/presence/{alice_id}/status")), Some(&bob), Some(json!({"presence": "online"})))
                .await,
            403,
            "M_FORBIDDEN",
        );
        assert_error(
            &call(Method::GET, &api(&format!("/presence/{alice_id}/status")), Some(&carol), None).await,
            403,
            "M_FORBIDDEN",
        );
        assert_error(
            &call(Method::PUT, &api(&format!("/presence/{alice_id}/status")), Some(&alice), Some(json!({"presence": "dancing"})))
                .await,
            400,
            "M_INVALID_PARAM",
        );
        server.stop().await.unwrap();
    }
}
