//! The content repository's endpoints (spec "Content repository"):
//! authenticated downloads, thumbnails, config and URL previews under
//! `/_matrix/client/v1/media`, uploads under `/_matrix/media`, the frozen
//! unauthenticated downloads, and Synapse's admin endpoints for media.
//!
//! Uploads are streamed to the service chunk by chunk (their bound is the
//! media size limit, not the JSON body limit); downloads are streamed from
//! the file. Every file answer carries the spec's sandboxing
//! `Content-Security-Policy`, `X-Content-Type-Options: nosniff` and
//! `Cross-Origin-Resource-Policy: cross-origin`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use chancery_proto::ruma::api::client::authenticated_media::{
    get_content, get_content_as_filename, get_content_thumbnail, get_media_preview,
};
use chancery_proto::ruma::http_headers::{ContentDisposition, ContentDispositionType};
use chancery_proto::ruma::media::Method;
use chancery_proto::ruma::{OwnedServerName, ServerName, UserId};
use chancery_service::Media;
use chancery_service::media::{Served, ThumbnailMethod, ThumbnailRequest, UploadBody, UploadMeta};
use futures_util::{StreamExt, TryStreamExt};
use serde_json::{Value as JsonValue, json};
use tokio::io::AsyncReadExt;

use crate::error::{ApiError, ApiResult};
use crate::extract::{Admin, Authed, Ruma};

/// The spec's recommended policy ("Content repository"), with
/// `media-src 'self'` so audio and video play in a sandboxed tab.
const CONTENT_SECURITY_POLICY: &str = "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; \
     style-src 'unsafe-inline'; media-src 'self'; object-src 'self';";

/// Bytes read from a file per chunk of a download.
const DOWNLOAD_CHUNK_BYTES: usize = 64 * 1024;

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", message)
}

/// A file answer: its headers, and its bytes streamed from disk.
fn file_response(served: Served) -> Response {
    let disposition = if served.inline { ContentDispositionType::Inline } else { ContentDispositionType::Attachment };
    let disposition = ContentDisposition::new(disposition).with_filename(served.file_name);
    let stream = futures_util::stream::try_unfold(served.file, |mut file| async move {
        let mut buf = BytesMut::with_capacity(DOWNLOAD_CHUNK_BYTES);
        let read = file.read_buf(&mut buf).await?;
        Ok::<_, std::io::Error>((read > 0).then(|| (buf.freeze(), file)))
    });
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    // The service hands out only well-formed types; the fallback is for a
    // type the HTTP library would still refuse.
    let content_type =
        HeaderValue::from_str(&served.content_type).unwrap_or(HeaderValue::from_static(chancery_service::media::OCTET_STREAM));
    headers.insert(header::CONTENT_TYPE, content_type);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(served.size_bytes));
    if let Ok(value) = HeaderValue::from_str(&disposition.to_string()) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    } else {
        headers.insert(header::CONTENT_DISPOSITION, HeaderValue::from_static("attachment"));
    }
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert("cross-origin-resource-policy", HeaderValue::from_static("cross-origin"));
    // Quarantine and deletion take effect at once: nothing keeps a copy.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-cache"));
    response
}

/// What an upload says of itself: its type, the `filename` parameter and
/// its declared length.
fn upload_meta(query: Result<Query<HashMap<String, String>>, QueryRejection>, headers: &HeaderMap) -> ApiResult<UploadMeta> {
    let Query(query) = query.map_err(|_| invalid("malformed query string"))?;
    let content_type = match headers.get(header::CONTENT_TYPE) {
        Some(v) => Some(v.to_str().map_err(|_| invalid("the Content-Type is not text"))?.to_owned()),
        None => None,
    };
    let declared_bytes = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    Ok(UploadMeta { content_type, file_name: query.get("filename").cloned(), declared_bytes })
}

fn body_stream(body: Body) -> UploadBody {
    Box::pin(body.into_data_stream().map_err(std::io::Error::other).into_stream().boxed())
}

/// `GET /_matrix/client/v1/media/config` (and the deprecated
/// `/_matrix/media/v3/config`).
pub async fn config(State(media): State<Arc<Media>>, Authed(_): Authed) -> Json<JsonValue> {
    Json(json!({ "m.upload.size": media.max_upload_bytes() }))
}

/// `POST /_matrix/media/v3/upload`.
pub async fn upload(
    State(media): State<Arc<Media>>,
    Authed(user): Authed,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<JsonValue>> {
    let meta = upload_meta(query, &headers)?;
    let content_uri = media.upload(&user, meta, body_stream(body)).await?;
    Ok(Json(json!({ "content_uri": content_uri })))
}

/// `POST /_matrix/media/v1/create`. Its body (an empty object) is not
/// read.
pub async fn create(State(media): State<Arc<Media>>, Authed(user): Authed) -> ApiResult<Json<JsonValue>> {
    let created = media.create(&user).await?;
    Ok(Json(json!({ "content_uri": created.content_uri, "unused_expires_at": created.unused_expires_at_ms })))
}

fn server_and_media(path: Result<Path<(String, String)>, PathRejection>) -> ApiResult<(OwnedServerName, String)> {
    let Path((server_name, media_id)) = path.map_err(|_| invalid("invalid path parameter"))?;
    let server_name = ServerName::parse(&server_name).map_err(|_| invalid("invalid server name"))?;
    Ok((server_name, media_id))
}

/// `PUT /_matrix/media/v3/upload/{serverName}/{mediaId}`.
pub async fn upload_to(
    State(media): State<Arc<Media>>,
    Authed(user): Authed,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<JsonValue>> {
    let (server_name, media_id) = server_and_media(path)?;
    let meta = upload_meta(query, &headers)?;
    media.upload_to(&user, &server_name, &media_id, meta, body_stream(body)).await?;
    Ok(Json(json!({})))
}

/// `GET /_matrix/client/v1/media/download/{serverName}/{mediaId}`.
pub async fn download(
    State(media): State<Arc<Media>>,
    Authed(user): Authed,
    Ruma(req): Ruma<get_content::v1::Request>,
) -> ApiResult<Response> {
    let served = media.download(&user, &req.server_name, &req.media_id, None, req.timeout_ms).await?;
    Ok(file_response(served))
}

/// `GET /_matrix/client/v1/media/download/{serverName}/{mediaId}/{fileName}`.
pub async fn download_as(
    State(media): State<Arc<Media>>,
    Authed(user): Authed,
    Ruma(req): Ruma<get_content_as_filename::v1::Request>,
) -> ApiResult<Response> {
    let served = media.download(&user, &req.server_name, &req.media_id, Some(req.filename), req.timeout_ms).await?;
    Ok(file_response(served))
}

/// `GET /_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}`.
pub async fn thumbnail(
    State(media): State<Arc<Media>>,
    Authed(user): Authed,
    Ruma(req): Ruma<get_content_thumbnail::v1::Request>,
) -> ApiResult<Response> {
    let method = match req.method {
        None | Some(Method::Scale) => ThumbnailMethod::Scale,
        Some(Method::Crop) => ThumbnailMethod::Crop,
        Some(_) => return Err(invalid("method is `crop` or `scale`")),
    };
    let dimension = |v: chancery_proto::ruma::UInt| u32::try_from(u64::from(v)).unwrap_or(u32::MAX);
    let request = ThumbnailRequest {
        width: dimension(req.width),
        height: dimension(req.height),
        method,
        animated: req.animated,
        timeout: req.timeout_ms,
    };
    let served = media.thumbnail(&user, &req.server_name, &req.media_id, request).await?;
    Ok(file_response(served))
}

/// `GET /_matrix/client/v1/media/preview_url` (routed only when previews
/// are on).
pub async fn preview_url(
    State(media): State<Arc<Media>>,
    Authed(user): Authed,
    Ruma(req): Ruma<get_media_preview::v1::Request>,
) -> ApiResult<Json<JsonValue>> {
    Ok(Json(media.preview_url(&user, &req.url).await?))
}

/// The deprecated unauthenticated downloads and thumbnails
/// (`/_matrix/media/{v3,r0}/download|thumbnail/...`), frozen as the spec
/// describes (v1.11, "Client behaviour"): media uploaded after the freeze
/// is served only by the authenticated endpoints, and this server has no
/// media from before it, so every item answers 404 `M_NOT_FOUND`.
pub async fn frozen() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "M_NOT_FOUND", "Not found: use the authenticated media endpoints")
}

/// `DELETE /_synapse/admin/v1/media/{serverName}/{mediaId}`.
pub async fn admin_delete(
    State(media): State<Arc<Media>>,
    Admin(admin): Admin,
    path: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<Json<JsonValue>> {
    let (server_name, media_id) = server_and_media(path)?;
    Ok(Json(media.admin_delete(&admin, &server_name, &media_id).await?))
}

/// `POST /_synapse/admin/v1/media/quarantine/{serverName}/{mediaId}`.
pub async fn admin_quarantine(
    State(media): State<Arc<Media>>,
    Admin(admin): Admin,
    path: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<Json<JsonValue>> {
    let (server_name, media_id) = server_and_media(path)?;
    Ok(Json(media.admin_quarantine(&admin, &server_name, &media_id, true).await?))
}

/// `POST /_synapse/admin/v1/media/unquarantine/{serverName}/{mediaId}`.
pub async fn admin_unquarantine(
    State(media): State<Arc<Media>>,
    Admin(admin): Admin,
    path: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<Json<JsonValue>> {
    let (server_name, media_id) = server_and_media(path)?;
    Ok(Json(media.admin_quarantine(&admin, &server_name, &media_id, false).await?))
}

/// `POST /_synapse/admin/v1/user/{userId}/media/quarantine`.
pub async fn admin_quarantine_user(
    State(media): State<Arc<Media>>,
    Admin(admin): Admin,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<JsonValue>> {
    let Path(user_id) = path.map_err(|_| invalid("invalid path parameter"))?;
    let user_id = <&UserId>::try_from(user_id.as_str()).map_err(|_| invalid("invalid user id"))?;
    Ok(Json(media.admin_quarantine_user(&admin, user_id.as_str()).await?))
}
