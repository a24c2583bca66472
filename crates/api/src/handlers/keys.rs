//! End-to-end encryption: `/keys/*`, `/sendToDevice`, `/room_keys/*` and
//! MSC3814's `/dehydrated_device`. The requests are ruma's; keys stay the
//! raw JSON the client signed, handed to the keys component as text.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use chancery_proto::ruma::api::client::backup::{
    add_backup_keys, add_backup_keys_for_room, add_backup_keys_for_session, create_backup_version, delete_backup_keys,
    delete_backup_keys_for_room, delete_backup_keys_for_session, delete_backup_version, get_backup_info, get_backup_keys,
    get_backup_keys_for_room, get_backup_keys_for_session, get_latest_backup_info, update_backup_version,
};
use chancery_proto::ruma::api::client::dehydrated_device::{
    delete_dehydrated_device, get_dehydrated_device, get_events, put_dehydrated_device,
};
use chancery_proto::ruma::api::client::keys::{
    claim_keys, get_key_changes, get_keys, upload_keys, upload_signatures, upload_signing_keys,
};
use chancery_proto::ruma::api::client::to_device::send_event_to_device;
use chancery_proto::ruma::serde::Raw;
use chancery_proto::ruma::to_device::DeviceIdOrAllDevices;
use chancery_service::keys::{BackupScope, NewDehydratedDevice, OutgoingToDevice, UploadedSession};
use chancery_service::{Error, Keys};
use serde_json::{Value as JsonValue, json};

use super::auth_payload;
use crate::error::ApiResult;
use crate::extract::{Authed, Ruma};

type JsonResult = ApiResult<Json<JsonValue>>;

fn raw_keys<T>(keys: &BTreeMap<impl ToString, Raw<T>>) -> Vec<(String, String)> {
    keys.iter().map(|(id, raw)| (id.to_string(), raw.json().get().to_owned())).collect()
}

/// A JSON object the client sent inside a typed request, as a value.
fn raw_json<T>(raw: &Raw<T>) -> Result<JsonValue, Error> {
    serde_json::from_str(raw.json().get()).map_err(|e| Error::BadJson(format!("not JSON: {e}")))
}

pub async fn upload(
    State(keys): State<Arc<Keys>>,
    Authed(user): Authed,
    Ruma(req): Ruma<upload_keys::v3::Request>,
) -> JsonResult {
    let device_keys = req.device_keys.as_ref().map(|raw| raw.json().get());
    let counts = keys.upload(&user, device_keys, &raw_keys(&req.one_time_keys), &raw_keys(&req.fallback_keys)).await?;
    Ok(Json(json!({ "one_time_key_counts": counts })))
}

pub async fn query(State(keys): State<Arc<Keys>>, Authed(user): Authed, Ruma(req): Ruma<get_keys::v3::Request>) -> JsonResult {
    let wanted = req
        .device_keys
        .into_iter()
        .map(|(user_id, devices)| (user_id.to_string(), devices.into_iter().map(|d| d.to_string()).collect()))
        .collect();
    Ok(Json(keys.query(&user, wanted).await?))
}

pub async fn claim(State(keys): State<Arc<Keys>>, Authed(_user): Authed, Ruma(req): Ruma<claim_keys::v3::Request>) -> JsonResult {
    let wanted = req
        .one_time_keys
        .into_iter()
        .map(|(user_id, devices)| {
            let devices = devices.into_iter().map(|(device, algorithm)| (device.to_string(), algorithm.to_string())).collect();
            (user_id.to_string(), devices)
        })
        .collect();
    Ok(Json(keys.claim(wanted).await?))
}

pub async fn changes(
    State(keys): State<Arc<Keys>>,
    Authed(user): Authed,
    Ruma(req): Ruma<get_key_changes::v3::Request>,
) -> JsonResult {
    Ok(Json(keys.changes(&user, &req.from, &req.to).await?))
}

pub async fn upload_signing_keys(
    State(keys): State<Arc<Keys>>,
    Authed(user): Authed,
    Ruma(req): Ruma<upload_signing_keys::v3::Request>,
) -> JsonResult {
    let text = |raw: &Option<Raw<_>>| raw.as_ref().map(|r: &Raw<_>| r.json().get().to_owned());
    let (master, self_signing, user_signing) = (text(&req.master_key), text(&req.self_signing_key), text(&req.user_signing_key));
    keys.upload_signing_keys(&user, master.as_deref(), self_signing.as_deref(), user_signing.as_deref(), auth_payload(req.auth))
        .await?;
    Ok(Json(json!({})))
}

pub async fn upload_signatures(
    State(keys): State<Arc<Keys>>,
    Authed(user): Authed,
    Ruma(req): Ruma<upload_signatures::v3::Request>,
) -> JsonResult {
    let signed = req
        .signed_keys
        .iter()
        .map(|(user_id, keys)| {
            (user_id.to_string(), keys.iter().map(|(id, raw)| (id.to_owned(), raw.get().to_owned())).collect())
        })
        .collect();
    Ok(Json(keys.upload_signatures(&user, signed).await?))
}

pub async fn send_to_device(
    State(keys): State<Arc<Keys>>,
    Authed(user): Authed,
    Ruma(req): Ruma<send_event_to_device::v3::Request>,
) -> JsonResult {
    let mut messages = Vec::new();
    for (user_id, devices) in &req.messages {
        for (device, content) in devices {
            let device_id = match device {
                DeviceIdOrAllDevices::DeviceId(d) => Some(d.to_string()),
                DeviceIdOrAllDevices::AllDevices => None,
            };
            messages.push(OutgoingToDevice { user_id: user_id.to_string(), device_id, content: content.json().get().to_owned() });
        }
    }
    keys.send_to_device(&user, &req.event_type.to_string(), req.txn_id.as_str(), messages).await?;
    Ok(Json(json!({})))
}

/// `algorithm` and `auth_data` of a backup version's body.
fn backup_algorithm<T>(raw: &Raw<T>) -> Result<(String, JsonValue, Option<String>), Error> {
    let body = raw_json(raw)?;
    let algorithm = body["algorithm"].as_str().ok_or_else(|| Error::BadJson("`algorithm` must be a string".into()))?.to_owned();
    let version = body.get("version").and_then(JsonValue::as_str).map(str::to_owned);
    Ok((algorithm, body.get("auth_data").cloned().unwrap_or(JsonValue::Null), version))
}

pub async fn create_backup(
    State(keys): State<Arc<Keys>>,
    Authed(user): Authed,
    Ruma(req): Ruma<create_backup_version::v3::Request>,
) -> JsonResult {
    let (algorithm, auth_data, _) = backup_algorithm(&req.algorithm)?;
    Ok(Json(json!({ "version": keys.create_backup(&user, &algorithm, &auth_data).await? })))
}

pub async fn latest_backup(
    State(keys): State<Arc<Keys>>,
    Authed(user): Authed,
    Ruma(_): Ruma<get_latest_backup_info::v3::Request>,
) -> JsonResult {
    Ok(Json(keys.backup(&user, None).await?))
}

pub async fn backup(
    State(keys): State<Arc<Keys>>,
    Authed(user): Authed,
    Ruma(req): Ruma<get_backup_info::v3::Request>,
) -> JsonResult {
    Ok(Json(keys.backup(&user, Some(&req.version)).await?))
}

pub async fn update_backup(
    State(keys): State<Arc<Keys>>,
    Authed(user): Authed,
    Ruma(req): Ruma<update_backup_version::v3::Request>,
) -> JsonResult {
    let (algorithm, auth_data, body_version) = backup_algorithm(&req.algorithm)?;
    keys.update_backup(&user, &req.version, body_version.as_deref(), &algorithm, &auth_data).await?;
    Ok(Json(json!({})))
}

pub async fn delete_backup(
    State(keys): State<Arc<Keys>>,
    Authed(user): Authed,
    Ruma(req): Ruma<delete_backup_version::v3::Request>,
) -> JsonResult {
    keys.delete_backup(&user, &req.version).await?;
    Ok(Json(json!({})))
}

fn sessions_of<T>(room_id: &str, sessions: &BTreeMap<String, Raw<T>>) -> Result<Vec<UploadedSession>, Error> {
    sessions
        .iter()
        .map(|(session_id, data)| {
            Ok(UploadedSession { room_id: room_id.to_owned(), session_id: session_id.clone(), data: raw_json(data)? })
        })
        .collect()
}

pub async fn put_backup_keys(
    State(keys): State<Arc<Keys>>,
    Authed(user): Authed,
    Ruma(req): Ruma<add_backup_keys::v3::Request>,
) -> JsonResult {
    let mut sessions = Vec::new();
    for (room_id, room) in &req.rooms {
        sessions.extend(sessions_of(room_id.as_str(), &room.sessions)?);
    }
    Ok(Json(keys.put_backup_keys(&user, &req.version, sessions).await?))
}

pub async fn put_backup_room_keys(
    State(keys): State<Arc<Keys>>,
    Authed(user): Authed,
    Ruma(req): Ruma<add_backup_keys_for_room::v3::Request>,
) -> JsonResult {
    let sessions = sessions_of(req.room_id.as_str(), &req.sessions)?;
    Ok(Json(keys.put_backup_keys(&user, &req.version, sessions).await?))
}

pub async fn put_backup_session_key(
    State(keys): State<Arc<Keys>>,
    Authed(user): Authed,
    Ruma(req): Ruma<add_backup_keys_for_session::v3::Request>,
) -> JsonResult {
    let session = UploadedSession {
        room_id: req.room_id.to_string(),
        session_id: req.session_id.clone(),
        data: raw_json(&req.session_data)?,
    };
    Ok(Json(keys.put_backup_keys(&user, &req.version, vec![session]).await?))
}

pub async fn backup_keys(
    State(keys): State<Arc<Keys>>,
    Authed(user): Authed,
    Ruma(req): Ruma<get_backup_keys::v3::Request>,
) -> JsonResult {
    Ok(Json(keys.backup_keys(&user, &req.version, BackupScope::All).await?))
}

pub async fn backup_room_keys(
    State(keys): State<Arc<Keys>>,
    Authed(user): Authed,
    Ruma(req): Ruma<get_backup_keys_for_room::v3::Request>,
) -> JsonResult {
    Ok(Json(keys.backup_keys(&user, &req.version, BackupScope::Room(req.room_id.as_str())).await?))
}

pub async fn backup_session_key(
    State(keys): State<Arc<Keys>>,
    Authed(user): Authed,
    Ruma(req): Ruma<get_backup_keys_for_session::v3::Request>,
) -> JsonResult {
    let scope = BackupScope::Session { room_id: req.room_id.as_str(), session_id: &req.session_id };
    Ok(Json(keys.backup_keys(&user, &req.version, scope).await?))
}

pub async fn delete_backup_keys(
    State(keys): State<Arc<Keys>>,
    Authed(user): Authed,
    Ruma(req): Ruma<delete_backup_keys::v3::Request>,
) -> JsonResult {
    Ok(Json(keys.delete_backup_keys(&user, &req.version, BackupScope::All).await?))
}

pub async fn delete_backup_room_keys(
    State(keys): State<Arc<Keys>>,
    Authed(user): Authed,
    Ruma(req): Ruma<delete_backup_keys_for_room::v3::Request>,
) -> JsonResult {
    Ok(Json(keys.delete_backup_keys(&user, &req.version, BackupScope::Room(req.room_id.as_str())).await?))
}

pub async fn delete_backup_session_key(
    State(keys): State<Arc<Keys>>,
    Authed(user): Authed,
    Ruma(req): Ruma<delete_backup_keys_for_session::v3::Request>,
) -> JsonResult {
    let scope = BackupScope::Session { room_id: req.room_id.as_str(), session_id: &req.session_id };
    Ok(Json(keys.delete_backup_keys(&user, &req.version, scope).await?))
}

pub async fn put_dehydrated_device(
    State(keys): State<Arc<Keys>>,
    Authed(user): Authed,
    Ruma(req): Ruma<put_dehydrated_device::unstable::Request>,
) -> JsonResult {
    let device_data = raw_json(&req.device_data)?;
    let (one_time_keys, fallback_keys) = (raw_keys(&req.one_time_keys), raw_keys(&req.fallback_keys));
    let new = NewDehydratedDevice {
        device_id: req.device_id.as_str(),
        display_name: req.initial_device_display_name.as_deref(),
        device_data: &device_data,
        device_keys: req.device_keys.json().get(),
        one_time_keys: &one_time_keys,
        fallback_keys: &fallback_keys,
    };
    keys.put_dehydrated_device(&user, new).await?;
    Ok(Json(json!({ "device_id": req.device_id })))
}

pub async fn get_dehydrated_device(
    State(keys): State<Arc<Keys>>,
    Authed(user): Authed,
    Ruma(_): Ruma<get_dehydrated_device::unstable::Request>,
) -> JsonResult {
    Ok(Json(keys.dehydrated_device(&user).await?))
}

pub async fn delete_dehydrated_device(
    State(keys): State<Arc<Keys>>,
    Authed(user): Authed,
    Ruma(_): Ruma<delete_dehydrated_device::unstable::Request>,
) -> JsonResult {
    Ok(Json(json!({ "device_id": keys.delete_dehydrated_device(&user).await? })))
}

pub async fn dehydrated_device_events(
    State(keys): State<Arc<Keys>>,
    Authed(user): Authed,
    Ruma(req): Ruma<get_events::unstable::Request>,
) -> JsonResult {
    Ok(Json(keys.dehydrated_device_events(&user, req.device_id.as_str(), req.next_batch.as_deref()).await?))
}
