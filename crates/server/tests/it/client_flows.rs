//! A whole account lifecycle through matrix-sdk, on SQLite and PostgreSQL.

use chancery_testkit::{Backend, TestServer};
use matrix_sdk::Client;
use matrix_sdk::ruma::api::client::account::register;
use matrix_sdk::ruma::api::client::uiaa::{AuthData, Dummy, MatrixUserIdentifier, Password, UserIdentifier};
use reqwest::Method;
use serde_json::json;

use crate::common::{PASSWORD, assert_error, call, login};

async fn client(base: &str) -> Client {
    Client::builder().homeserver_url(base).build().await.expect("client")
}

fn password_auth(user: &str, password: &str, session: Option<String>) -> AuthData {
    let mut p = Password::new(UserIdentifier::Matrix(MatrixUserIdentifier::new(user.into())), password.into());
    p.session = session;
    AuthData::Password(p)
}

async fn account_lifecycle(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let base = server.base_url.clone();

    // Register through interactive auth, as Element does.
    let phone = client(&base).await;
    let mut request = register::v3::Request::new();
    request.username = Some("alice".into());
    request.password = Some(PASSWORD.into());
    request.initial_device_display_name = Some("Alice's phone".into());
    let err = phone.matrix_auth().register(request.clone()).await.expect_err("first call asks for auth");
    let info = err.as_uiaa_response().expect("UIA answer");
    assert_eq!(info.flows[0].stages.iter().map(|s| s.to_string()).collect::<Vec<_>>(), ["m.login.dummy"]);
    let mut dummy = Dummy::new();
    dummy.session = info.session.clone();
    request.auth = Some(AuthData::Dummy(dummy));
    let registered = phone.matrix_auth().register(request).await.unwrap();
    assert_eq!(registered.user_id.as_str(), format!("@alice:{}", server.config.server_name));
    let whoami = phone.whoami().await.unwrap();
    assert_eq!(whoami.user_id, registered.user_id);
    assert_eq!(whoami.device_id, registered.device_id);
    let phone_device = registered.device_id.clone().unwrap();

    // A second device, with a refresh token.
    let laptop = Client::builder().homeserver_url(&base).handle_refresh_tokens().build().await.unwrap();
    let login_response = laptop
        .matrix_auth()
        .login_username("alice", PASSWORD)
        .initial_device_display_name("Laptop")
        .request_refresh_token()
        .send()
        .await
        .unwrap();
    assert!(login_response.refresh_token.is_some());
    assert!(login_response.expires_in.is_some());
    let laptop_device = login_response.device_id.clone();

    // Both devices are listed with their names; rename one.
    let devices = phone.devices().await.unwrap().devices;
    let mut names: Vec<_> = devices.iter().map(|d| d.display_name.clone().unwrap_or_default()).collect();
    names.sort();
    assert_eq!(names, ["Alice's phone", "Laptop"]);
    phone.rename_device(&laptop_device, "Work laptop").await.unwrap();
    let devices = laptop.devices().await.unwrap().devices;
    let renamed = devices.iter().find(|d| d.device_id == laptop_device).unwrap();
    assert_eq!(renamed.display_name.as_deref(), Some("Work laptop"));

    // Refresh: a new access token, the old one stops working.
    let old_token = laptop.access_token().unwrap();
    laptop.refresh_access_token().await.unwrap();
    let new_token = laptop.access_token().unwrap();
    assert_ne!(old_token, new_token);
    assert_eq!(laptop.whoami().await.unwrap().device_id.as_ref(), Some(&laptop_device));
    let whoami_url = format!("{base}/_matrix/client/v3/account/whoami");
    assert_error(&call(Method::GET, &whoami_url, Some(&old_token), None).await, 401, "M_UNKNOWN_TOKEN");

    // Profile through the SDK.
    phone.account().set_display_name(Some("Alice Martin")).await.unwrap();
    assert_eq!(laptop.account().get_display_name().await.unwrap().as_deref(), Some("Alice Martin"));

    // Change the password (interactive auth with the old one): the other
    // device is logged out, this one stays.
    let err = phone.account().change_password("new password 42", None).await.expect_err("needs auth");
    let session = err.as_uiaa_response().expect("UIA").session.clone();
    phone.account().change_password("new password 42", Some(password_auth("alice", PASSWORD, session))).await.unwrap();
    phone.whoami().await.unwrap();
    assert_error(&call(Method::GET, &whoami_url, Some(&new_token), None).await, 401, "M_UNKNOWN_TOKEN");
    assert_error(&login(&base, "alice", PASSWORD).await, 403, "M_FORBIDDEN");
    let (status, _) = login(&base, "alice", "new password 42").await;
    assert_eq!(status, 200);

    // Delete that new device with interactive auth.
    let devices = phone.devices().await.unwrap().devices;
    let others: Vec<_> = devices.iter().map(|d| d.device_id.clone()).filter(|d| *d != phone_device).collect();
    assert_eq!(others.len(), 1);
    let err = phone.delete_devices(&others, None).await.expect_err("needs auth");
    let session = err.as_uiaa_response().expect("UIA").session.clone();
    phone.delete_devices(&others, Some(password_auth("@alice:localhost", "new password 42", session))).await.unwrap();
    assert_eq!(phone.devices().await.unwrap().devices.len(), 1);

    // Log out the laptop session (logged in again), then deactivate.
    let tablet = client(&base).await;
    tablet.matrix_auth().login_username("alice", "new password 42").send().await.unwrap();
    let tablet_token = tablet.access_token().unwrap();
    tablet.matrix_auth().logout().await.unwrap();
    assert_error(&call(Method::GET, &whoami_url, Some(&tablet_token), None).await, 401, "M_UNKNOWN_TOKEN");

    let err = phone.account().deactivate(None, None, true).await.expect_err("needs auth");
    let session = err.as_uiaa_response().expect("UIA").session.clone();
    phone.account().deactivate(None, Some(password_auth("alice", "new password 42", session)), true).await.unwrap();
    // Answered like a wrong password: who was deactivated is not revealed.
    assert_error(&login(&base, "alice", "new password 42").await, 403, "M_FORBIDDEN");
    let profile = call(Method::GET, &format!("{base}/_matrix/client/v3/profile/@alice:localhost"), None, None).await;
    assert_error(&profile, 404, "M_NOT_FOUND");
    let again = call(Method::GET, &format!("{base}/_matrix/client/v3/register/available?username=alice"), None, None).await;
    assert_error(&again, 400, "M_USER_IN_USE");
    let register_again = call(
        Method::POST,
        &format!("{base}/_matrix/client/v3/register"),
        None,
        Some(json!({"username": "alice", "password": PASSWORD})),
    )
    .await;
    assert_error(&register_again, 400, "M_USER_IN_USE");

    server.stop().await.unwrap();
}

on_both_backends!(account_lifecycle);

/// An expired access token is a soft logout; the refresh token still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_is_soft_logout() {
    let server = TestServer::start_with(Backend::Sqlite, |c| c.access_token_lifetime_ms = 0).await.unwrap();
    let base = &server.base_url;
    crate::common::register(base, "bob").await;
    let body = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "bob"}, "password": PASSWORD, "refresh_token": true});
    let (status, login) = call(Method::POST, &format!("{base}/_matrix/client/v3/login"), None, Some(body)).await;
    assert_eq!(status, 200);
    let whoami_url = format!("{base}/_matrix/client/v3/account/whoami");
    let expired = call(Method::GET, &whoami_url, login["access_token"].as_str(), None).await;
    assert_error(&expired, 401, "M_UNKNOWN_TOKEN");
    assert_eq!(expired.1["soft_logout"], true);
    let refresh_url = format!("{base}/_matrix/client/v3/refresh");
    let (status, refreshed) =
        call(Method::POST, &refresh_url, None, Some(json!({"refresh_token": login["refresh_token"]}))).await;
    assert_eq!(status, 200, "{refreshed}");
    assert_ne!(refreshed["refresh_token"], login["refresh_token"]);
    // A token that never existed is a hard logout.
    let unknown = call(Method::GET, &whoami_url, Some("cha_nope"), None).await;
    assert_error(&unknown, 401, "M_UNKNOWN_TOKEN");
    assert_eq!(unknown.1["soft_logout"], false);
    let bad_refresh = call(Method::POST, &refresh_url, None, Some(json!({"refresh_token": "chr_nope"}))).await;
    assert_error(&bad_refresh, 401, "M_UNKNOWN_TOKEN");
    server.stop().await.unwrap();
}
