//! The server-server API: keys, the version, and the queries other servers
//! make. Served on the federation listener only (`federation_router`).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use chancery_proto::ruma::MilliSecondsSinceUnixEpoch;
use chancery_proto::ruma::api::federation::authorization::get_event_authorization;
use chancery_proto::ruma::api::federation::backfill::get_backfill;
use chancery_proto::ruma::api::federation::device::get_devices;
use chancery_proto::ruma::api::federation::directory::{get_public_rooms, get_public_rooms_filtered};
use chancery_proto::ruma::api::federation::discovery::{
    get_remote_server_keys, get_remote_server_keys_batch, get_server_version,
};
use chancery_proto::ruma::api::federation::event::{
    get_event, get_event_by_timestamp, get_missing_events, get_room_state, get_room_state_ids,
};
use chancery_proto::ruma::api::federation::keys::{claim_keys, get_keys};
use chancery_proto::ruma::api::federation::membership::{
    create_invite, create_join_event, create_knock_event, create_leave_event, prepare_join_event, prepare_knock_event,
    prepare_leave_event,
};
use chancery_proto::ruma::api::federation::query::{get_profile_information, get_room_information};
use chancery_proto::ruma::api::federation::transactions::send_transaction_message;
use chancery_proto::ruma::directory::RoomNetwork;
use chancery_service::directory::PublicRoomsRequest;
use chancery_service::{Directory, Ephemeral, Federation, Keys, Profiles, RoomFederation};
use serde_json::value::RawValue as RawJsonValue;
use serde_json::{Value as JsonValue, json};

use crate::error::ApiResult;
use crate::extract::{Ruma, RumaResponse, Signed};

/// `GET /_matrix/key/v2/server`: this server's keys, self-signed.
pub async fn server_keys(State(federation): State<Arc<Federation>>) -> Json<JsonValue> {
    Json(json!(federation.own_keys()))
}

/// `GET /_matrix/key/v2/query/{serverName}`: a notary answer for one server.
pub async fn query_keys(
    State(federation): State<Arc<Federation>>,
    Ruma(req): Ruma<get_remote_server_keys::v2::Request>,
) -> ApiResult<Json<JsonValue>> {
    let minimum = u64::from(req.minimum_valid_until_ts.get());
    let keys = federation.notary_keys(vec![(req.server_name, Some(minimum))]).await?;
    Ok(Json(json!({ "server_keys": keys })))
}

/// `POST /_matrix/key/v2/query`: a notary answer for several servers.
pub async fn query_keys_batch(
    State(federation): State<Arc<Federation>>,
    Ruma(req): Ruma<get_remote_server_keys_batch::v2::Request>,
) -> ApiResult<Json<JsonValue>> {
    let servers = req
        .server_keys
        .into_iter()
        .map(|(server, criteria)| {
            let minimum = criteria.values().filter_map(|c| c.minimum_valid_until_ts).map(|ts| u64::from(ts.get())).max();
            (server, minimum)
        })
        .collect();
    let keys = federation.notary_keys(servers).await?;
    Ok(Json(json!({ "server_keys": keys })))
}

/// `GET /_matrix/federation/v1/version`.
pub async fn version() -> RumaResponse<get_server_version::v1::Response> {
    let mut server = get_server_version::v1::Server::new();
    server.name = Some("Chancery".into());
    server.version = Some(env!("CARGO_PKG_VERSION").into());
    let mut response = get_server_version::v1::Response::new();
    response.server = Some(server);
    RumaResponse(response)
}

/// `GET /_matrix/federation/v1/query/profile`.
pub async fn query_profile(
    State(profiles): State<Arc<Profiles>>,
    Signed { origin, request, permit: _permit }: Signed<get_profile_information::v1::Request>,
) -> ApiResult<RumaResponse<get_profile_information::v1::Response>> {
    tracing::debug!(origin = %origin, "profile query");
    let field = request.field.as_ref().map(|f| f.as_str().to_owned());
    let profile = profiles.profile_for_federation(&request.user_id, field.as_deref()).await?;
    Ok(RumaResponse(profile.into_iter().collect()))
}

/// `GET /_matrix/federation/v1/query/directory`.
pub async fn query_directory(
    State(directory): State<Arc<Directory>>,
    Signed { origin, request, permit: _permit }: Signed<get_room_information::v1::Request>,
) -> ApiResult<RumaResponse<get_room_information::v1::Response>> {
    tracing::debug!(origin = %origin, "directory query");
    let (room_id, servers) = directory.resolve_alias_with_servers(&request.room_alias).await?;
    Ok(RumaResponse(get_room_information::v1::Response::new(room_id, servers)))
}

/// `GET /_matrix/federation/v1/make_join/{roomId}/{userId}`.
pub async fn make_join(
    State(rooms): State<Arc<RoomFederation>>,
    Signed { origin, request, permit: _permit }: Signed<prepare_join_event::v1::Request>,
) -> ApiResult<RumaResponse<prepare_join_event::v1::Response>> {
    let (room_version, template) = rooms.make_join(&origin, &request.room_id, &request.user_id, &request.ver).await?;
    let event = serde_json::value::to_raw_value(&template).map_err(|e| chancery_service::Error::Internal(e.to_string()))?;
    let mut response = prepare_join_event::v1::Response::new(event);
    response.room_version = Some(room_version);
    Ok(RumaResponse(response))
}

/// `GET /_matrix/federation/v1/make_knock/{roomId}/{userId}`.
pub async fn make_knock(
    State(rooms): State<Arc<RoomFederation>>,
    Signed { origin, request, permit: _permit }: Signed<prepare_knock_event::v1::Request>,
) -> ApiResult<RumaResponse<prepare_knock_event::v1::Response>> {
    let (room_version, template) = rooms.make_knock(&origin, &request.room_id, &request.user_id, &request.ver).await?;
    let event = serde_json::value::to_raw_value(&template).map_err(|e| chancery_service::Error::Internal(e.to_string()))?;
    Ok(RumaResponse(prepare_knock_event::v1::Response::new(room_version, event)))
}

/// `PUT /_matrix/federation/v1/send_knock/{roomId}/{eventId}`.
pub async fn send_knock(
    State(rooms): State<Arc<RoomFederation>>,
    Signed { origin, request, permit: _permit }: Signed<create_knock_event::v1::Request>,
) -> ApiResult<RumaResponse<create_knock_event::v1::Response>> {
    let state = rooms.send_knock(&origin, &request.room_id, &request.event_id, &request.pdu).await?;
    Ok(RumaResponse(create_knock_event::v1::Response::new(state)))
}

/// `GET /_matrix/federation/v1/timestamp_to_event/{roomId}`.
pub async fn timestamp_to_event(
    State(rooms): State<Arc<RoomFederation>>,
    Signed { origin, request, permit: _permit }: Signed<get_event_by_timestamp::v1::Request>,
) -> ApiResult<RumaResponse<get_event_by_timestamp::v1::Response>> {
    let forward = request.dir == chancery_proto::ruma::api::Direction::Forward;
    let (event_id, ts) = rooms.timestamp_to_event(&origin, &request.room_id, u64::from(request.ts.get()), forward).await?;
    let event_id = event_id.parse().map_err(|e| chancery_service::Error::Internal(format!("stored event id: {e}")))?;
    let ts = MilliSecondsSinceUnixEpoch(chancery_proto::ruma::UInt::new_saturating(ts));
    Ok(RumaResponse(get_event_by_timestamp::v1::Response::new(event_id, ts)))
}

/// `GET /_matrix/federation/v1/hierarchy/{roomId}`.
pub async fn hierarchy(
    State(spaces): State<Arc<chancery_service::Spaces>>,
    Signed { origin, request, permit: _permit }: Signed<chancery_proto::ruma::api::federation::space::get_hierarchy::v1::Request>,
) -> ApiResult<RumaResponse<chancery_proto::ruma::api::federation::space::get_hierarchy::v1::Response>> {
    Ok(RumaResponse(spaces.hierarchy_for_server(&origin, &request.room_id, request.suggested_only).await?))
}

/// `PUT /_matrix/federation/v2/send_join/{roomId}/{eventId}`.
pub async fn send_join(
    State(rooms): State<Arc<RoomFederation>>,
    Signed { origin, request, permit: _permit }: Signed<create_join_event::v2::Request>,
) -> ApiResult<RumaResponse<create_join_event::v2::Response>> {
    let answer = rooms.send_join(&origin, &request.room_id, &request.event_id, &request.pdu).await?;
    let mut state = create_join_event::v2::RoomState::new();
    state.state = answer.state;
    state.auth_chain = answer.auth_chain;
    state.event = Some(answer.event);
    Ok(RumaResponse(create_join_event::v2::Response::new(state)))
}

/// `PUT /_matrix/federation/v1/send/{txnId}`: the PDUs are checked and
/// stored one by one, then the EDUs applied (typing and receipts; device
/// lists, cross-signing updates and to-device messages, which, if this
/// server fails to store them, fail the transaction so that the origin
/// sends it again; unknown EDU types are dropped).
pub async fn send_transaction(
    State(rooms): State<Arc<RoomFederation>>,
    State(ephemeral): State<Arc<Ephemeral>>,
    State(keys): State<Arc<Keys>>,
    Signed { origin, request, permit: _permit }: Signed<send_transaction_message::v1::Request>,
) -> ApiResult<RumaResponse<send_transaction_message::v1::Response>> {
    if request.origin != origin {
        return Err(chancery_service::Error::Forbidden("the transaction's origin is not the server that signed it".into()).into());
    }
    if request.edus.len() > chancery_proto::limits::MAX_TRANSACTION_EDUS {
        return Err(chancery_service::Error::TooLarge("a transaction holds at most 100 EDUs".into()).into());
    }
    let pdus = rooms.receive_pdus(&origin, &request.pdus).await?;
    ephemeral.receive_edus(&origin, &request.edus).await;
    keys.receive_edus(&origin, &request.edus).await?;
    Ok(RumaResponse(send_transaction_message::v1::Response::new(pdus)))
}

/// `GET /_matrix/federation/v1/event/{eventId}`.
pub async fn event(
    State(rooms): State<Arc<RoomFederation>>,
    State(federation): State<Arc<Federation>>,
    Signed { origin, request, permit: _permit }: Signed<get_event::v1::Request>,
) -> ApiResult<RumaResponse<get_event::v1::Response>> {
    let pdu = rooms.event(&origin, &request.event_id).await?;
    Ok(RumaResponse(get_event::v1::Response::new(federation.server_name().to_owned(), MilliSecondsSinceUnixEpoch::now(), pdu)))
}

/// `GET /_matrix/federation/v1/state/{roomId}`.
pub async fn state(
    State(rooms): State<Arc<RoomFederation>>,
    Signed { origin, request, permit: _permit }: Signed<get_room_state::v1::Request>,
) -> ApiResult<RumaResponse<get_room_state::v1::Response>> {
    let (state, chain) = rooms.state_at_event(&origin, &request.room_id, &request.event_id).await?;
    let raw = |events: Vec<(chancery_proto::ruma::OwnedEventId, String)>| -> ApiResult<Vec<Box<RawJsonValue>>> {
        events
            .into_iter()
            .map(|(_, json)| RawJsonValue::from_string(json).map_err(|e| chancery_service::Error::Internal(e.to_string()).into()))
            .collect()
    };
    Ok(RumaResponse(get_room_state::v1::Response::new(raw(chain)?, raw(state)?)))
}

/// `GET /_matrix/federation/v1/state_ids/{roomId}`.
pub async fn state_ids(
    State(rooms): State<Arc<RoomFederation>>,
    Signed { origin, request, permit: _permit }: Signed<get_room_state_ids::v1::Request>,
) -> ApiResult<RumaResponse<get_room_state_ids::v1::Response>> {
    let (state, chain) = rooms.state_at_event(&origin, &request.room_id, &request.event_id).await?;
    let ids = |events: Vec<(chancery_proto::ruma::OwnedEventId, String)>| events.into_iter().map(|(id, _)| id).collect();
    Ok(RumaResponse(get_room_state_ids::v1::Response::new(ids(chain), ids(state))))
}

/// `GET /_matrix/federation/v1/backfill/{roomId}`.
pub async fn backfill(
    State(rooms): State<Arc<RoomFederation>>,
    State(federation): State<Arc<Federation>>,
    Signed { origin, request, permit: _permit }: Signed<get_backfill::v1::Request>,
) -> ApiResult<RumaResponse<get_backfill::v1::Response>> {
    let limit = usize::try_from(u64::from(request.limit)).unwrap_or(usize::MAX);
    let pdus = rooms.backfill(&origin, &request.room_id, &request.v, limit).await?;
    Ok(RumaResponse(get_backfill::v1::Response::new(
        federation.server_name().to_owned(),
        MilliSecondsSinceUnixEpoch::now(),
        pdus,
    )))
}

/// `POST /_matrix/federation/v1/get_missing_events/{roomId}`.
pub async fn missing_events(
    State(rooms): State<Arc<RoomFederation>>,
    Signed { origin, request, permit: _permit }: Signed<get_missing_events::v1::Request>,
) -> ApiResult<RumaResponse<get_missing_events::v1::Response>> {
    let limit = usize::try_from(u64::from(request.limit)).unwrap_or(usize::MAX);
    let events = rooms
        .missing_events(
            &origin,
            &request.room_id,
            &request.earliest_events,
            &request.latest_events,
            limit,
            request.min_depth.into(),
        )
        .await?;
    Ok(RumaResponse(get_missing_events::v1::Response::new(events)))
}

/// `PUT /_matrix/federation/v2/invite/{roomId}/{eventId}`.
pub async fn invite(
    State(rooms): State<Arc<RoomFederation>>,
    Signed { origin, request, permit: _permit }: Signed<create_invite::v2::Request>,
) -> ApiResult<RumaResponse<create_invite::v2::Response>> {
    let event = rooms.receive_invite(&origin, &request.room_id, &request.event_id, &request.room_version, &request.event).await?;
    Ok(RumaResponse(create_invite::v2::Response::new(event)))
}

/// `GET /_matrix/federation/v1/make_leave/{roomId}/{userId}`.
pub async fn make_leave(
    State(rooms): State<Arc<RoomFederation>>,
    Signed { origin, request, permit: _permit }: Signed<prepare_leave_event::v1::Request>,
) -> ApiResult<RumaResponse<prepare_leave_event::v1::Response>> {
    let (room_version, template) = rooms.make_leave(&origin, &request.room_id, &request.user_id).await?;
    let event = serde_json::value::to_raw_value(&template).map_err(|e| chancery_service::Error::Internal(e.to_string()))?;
    Ok(RumaResponse(prepare_leave_event::v1::Response::new(Some(room_version), event)))
}

/// `PUT /_matrix/federation/v2/send_leave/{roomId}/{eventId}`.
pub async fn send_leave(
    State(rooms): State<Arc<RoomFederation>>,
    Signed { origin, request, permit: _permit }: Signed<create_leave_event::v2::Request>,
) -> ApiResult<RumaResponse<create_leave_event::v2::Response>> {
    rooms.send_leave(&origin, &request.room_id, &request.event_id, &request.pdu).await?;
    Ok(RumaResponse(create_leave_event::v2::Response::new()))
}

/// `POST /_matrix/federation/v1/user/keys/query`.
pub async fn keys_query(
    State(keys): State<Arc<Keys>>,
    Signed { request, permit: _permit, .. }: Signed<get_keys::v1::Request>,
) -> ApiResult<Json<JsonValue>> {
    let wanted =
        request.device_keys.into_iter().map(|(u, d)| (u.to_string(), d.into_iter().map(|d| d.to_string()).collect())).collect();
    Ok(Json(keys.query_for_server(wanted).await?))
}

/// `POST /_matrix/federation/v1/user/keys/claim`.
pub async fn keys_claim(
    State(keys): State<Arc<Keys>>,
    Signed { request, permit: _permit, .. }: Signed<claim_keys::v1::Request>,
) -> ApiResult<Json<JsonValue>> {
    let wanted = request
        .one_time_keys
        .into_iter()
        .map(|(u, d)| (u.to_string(), d.into_iter().map(|(d, a)| (d.to_string(), a.to_string())).collect()))
        .collect();
    Ok(Json(keys.claim_for_server(wanted).await?))
}

/// `GET /_matrix/federation/v1/user/devices/{userId}`.
pub async fn user_devices(
    State(keys): State<Arc<Keys>>,
    Signed { request, permit: _permit, .. }: Signed<get_devices::v1::Request>,
) -> ApiResult<Json<JsonValue>> {
    let stream_id = u64::from(MilliSecondsSinceUnixEpoch::now().get());
    Ok(Json(keys.devices_for_server(&request.user_id, stream_id).await?))
}

/// `GET /_matrix/federation/v1/publicRooms`: this server's directory.
pub async fn public_rooms(
    State(directory): State<Arc<Directory>>,
    Signed { request, permit: _permit, .. }: Signed<get_public_rooms::v1::Request>,
) -> ApiResult<Json<JsonValue>> {
    let request = PublicRoomsRequest {
        limit: request.limit.map(u64::from),
        since: request.since,
        third_party_network: matches!(request.room_network, RoomNetwork::ThirdParty(_)),
        ..Default::default()
    };
    Ok(Json(directory.public_rooms(request).await?))
}

/// `POST /_matrix/federation/v1/publicRooms`.
pub async fn public_rooms_filtered(
    State(directory): State<Arc<Directory>>,
    Signed { request, permit: _permit, .. }: Signed<get_public_rooms_filtered::v1::Request>,
) -> ApiResult<Json<JsonValue>> {
    let request = PublicRoomsRequest {
        limit: request.limit.map(u64::from),
        since: request.since,
        search: request.filter.generic_search_term,
        room_types: request.filter.room_types.iter().map(|t| t.as_str().map(str::to_owned)).collect(),
        third_party_network: matches!(request.room_network, RoomNetwork::ThirdParty(_)),
        server: None,
    };
    Ok(Json(directory.public_rooms(request).await?))
}

/// `GET /_matrix/federation/v1/event_auth/{roomId}/{eventId}`.
pub async fn event_auth(
    State(rooms): State<Arc<RoomFederation>>,
    Signed { origin, request, permit: _permit }: Signed<get_event_authorization::v1::Request>,
) -> ApiResult<RumaResponse<get_event_authorization::v1::Response>> {
    let chain = rooms.event_auth(&origin, &request.room_id, &request.event_id).await?;
    Ok(RumaResponse(get_event_authorization::v1::Response::new(chain)))
}
