//! The content repository over HTTP, on SQLite and PostgreSQL: uploads
//! and downloads with their headers, deduplicated files, thumbnails,
//! asynchronous uploads and waiting downloads, limits and quotas, hostile
//! content types, the frozen legacy endpoints, quarantine and deletion by
//! admins, URL previews and their guard against internal addresses, what
//! a crash or a broken upload leaves behind, and an encrypted attachment
//! sent and read with matrix-sdk.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use chancery_testkit::{Backend, TestServer};
use matrix_sdk::attachment::AttachmentConfig;
use matrix_sdk::media::{MediaFormat, MediaRequestParameters};
use matrix_sdk::ruma::api::client::room::create_room;
use matrix_sdk::ruma::api::client::room::create_room::v3::RoomPreset;
use matrix_sdk::ruma::events::room::MediaSource;
use matrix_sdk::ruma::events::room::message::{MessageType, OriginalSyncRoomMessageEvent};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::common::{User, http, urlencode};
use crate::e2ee::{encryption, new_user, sync_until};

const CSP: &str = "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; \
                   style-src 'unsafe-inline'; media-src 'self'; object-src 'self';";

/// A JPEG or PNG of `width`×`height` with a gradient (so it compresses
/// like a picture, and two sizes never share bytes).
fn picture(width: u32, height: u32, format: image::ImageFormat) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x * 255 / width.max(1)) as u8, (y * 255 / height.max(1)) as u8, ((x + y) % 256) as u8])
    });
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img).write_to(&mut out, format).unwrap();
    out.into_inner()
}

struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    bytes: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(|v| v.to_str().unwrap()).unwrap_or_else(|| panic!("no {name} header: {:?}", self.headers))
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes).unwrap_or(Value::Null)
    }
    #[track_caller]
    fn error(&self, status: u16, errcode: &str) {
        assert_eq!(self.status.as_u16(), status, "{}", String::from_utf8_lossy(&self.bytes));
        assert_eq!(self.json()["errcode"], errcode, "{}", String::from_utf8_lossy(&self.bytes));
    }
}

async fn send(req: reqwest::RequestBuilder) -> Answer {
    let resp = req.send().await.expect("request sent");
    let (status, headers) = (resp.status(), resp.headers().clone());
    Answer { status, headers, bytes: resp.bytes().await.expect("body").to_vec() }
}

/// `POST /_matrix/media/v3/upload`; returns the media id.
async fn upload(user: &User, bytes: Vec<u8>, content_type: Option<&str>, file_name: Option<&str>) -> Answer {
    let query = file_name.map(|name| format!("?filename={}", urlencode(name))).unwrap_or_default();
    let mut req = http().post(format!("{}/_matrix/media/v3/upload{query}", user.base)).bearer_auth(&user.token).body(bytes);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    send(req).await
}

async fn upload_ok(user: &User, bytes: Vec<u8>, content_type: Option<&str>, file_name: Option<&str>) -> String {
    let answer = upload(user, bytes, content_type, file_name).await;
    assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.bytes));
    let uri = answer.json()["content_uri"].as_str().unwrap().to_owned();
    uri.strip_prefix("mxc://localhost/").unwrap_or_else(|| panic!("{uri}")).to_owned()
}

async fn get(user: Option<&User>, base: &str, path: &str) -> Answer {
    let mut req = http().get(format!("{base}{path}"));
    if let Some(user) = user {
        req = req.bearer_auth(&user.token);
    }
    send(req).await
}

async fn download(user: &User, media_id: &str) -> Answer {
    get(Some(user), &user.base, &format!("/_matrix/client/v1/media/download/localhost/{media_id}")).await
}

async fn thumbnail(user: &User, media_id: &str, query: &str) -> Answer {
    get(Some(user), &user.base, &format!("/_matrix/client/v1/media/thumbnail/localhost/{media_id}?{query}")).await
}

/// The content files on disk (every shard of the media directory).
fn content_files(data_dir: &Path) -> Vec<PathBuf> {
    let media = data_dir.join("media");
    let mut files = Vec::new();
    for shard in std::fs::read_dir(&media).unwrap() {
        let shard = shard.unwrap().path();
        if shard.file_name().unwrap() == "tmp" {
            continue;
        }
        files.extend(std::fs::read_dir(&shard).unwrap().map(|e| e.unwrap().path()));
    }
    files.sort();
    files
}

fn temp_files(data_dir: &Path) -> usize {
    std::fs::read_dir(data_dir.join("media").join("tmp")).unwrap().count()
}

#[track_caller]
fn assert_served_safely(answer: &Answer) {
    assert_eq!(answer.header("content-security-policy"), CSP);
    assert_eq!(answer.header("x-content-type-options"), "nosniff");
    assert_eq!(answer.header("cross-origin-resource-policy"), "cross-origin");
}

/// An upload with a file name comes back whole, with its type, its name
/// and the sandboxing headers; a body larger than the JSON limit is fine;
/// the file name in the path wins; the config tells the limit.
async fn round_trip_with_headers(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let alice = User::new(&server.base_url, "alice").await;
    let bob = User::new(&server.base_url, "bob").await;
    let jpeg = picture(64, 48, image::ImageFormat::Jpeg);
    let id = upload_ok(&alice, jpeg.clone(), Some("image/jpeg"), Some("holiday photo.jpg")).await;
    assert_eq!(id.len(), 24);

    // Anyone logged in on this server downloads it.
    let got = download(&bob, &id).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.bytes, jpeg);
    assert_eq!(got.header("content-type"), "image/jpeg");
    assert_eq!(got.header("content-length"), jpeg.len().to_string());
    assert_eq!(got.header("content-disposition"), r#"inline; filename="holiday photo.jpg""#);
    assert_served_safely(&got);

    let renamed = get(Some(&bob), &bob.base, &format!("/_matrix/client/v1/media/download/localhost/{id}/other.jpg")).await;
    assert_eq!((renamed.status, renamed.header("content-disposition")), (StatusCode::OK, "inline; filename=other.jpg"));
    assert_eq!(renamed.bytes, jpeg);

    // A name beyond ASCII is encoded per RFC 6266 / 8187.
    let id = upload_ok(&alice, b"hello".to_vec(), Some("text/plain"), Some("résumé.txt")).await;
    let got = download(&bob, &id).await;
    assert_eq!(got.header("content-type"), "text/plain; charset=utf-8");
    assert_eq!(got.header("content-disposition"), "inline; filename*=utf-8''r%C3%A9sum%C3%A9.txt");

    // No name, no type: octet-stream, an attachment without a name.
    let big: Vec<u8> = (0..3 * 1024 * 1024).map(|n: u32| (n % 251) as u8).collect();
    let id = upload_ok(&alice, big.clone(), None, None).await;
    let got = download(&alice, &id).await;
    assert_eq!(got.bytes, big, "a body three times the JSON limit is taken and streamed back");
    assert_eq!((got.header("content-type"), got.header("content-disposition")), ("application/octet-stream", "attachment"));

    let config = get(Some(&alice), &alice.base, "/_matrix/client/v1/media/config").await;
    assert_eq!(config.json(), json!({"m.upload.size": 50 * 1024 * 1024}));
    let legacy_config = get(Some(&alice), &alice.base, "/_matrix/media/v3/config").await;
    assert_eq!(legacy_config.json(), config.json());
}
on_both_backends!(round_trip_with_headers);

/// HTML, SVG and scripts are never inline; a malformed type is served as
/// octet-stream.
async fn hostile_content_types(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let mallory = User::new(&server.base_url, "mallory").await;
    let script = b"<html><script>alert(document.cookie)</script></html>".to_vec();
    let svg = br#"<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>"#.to_vec();
    for (bytes, content_type, served) in [
        (script.clone(), "text/html", "text/html; charset=utf-8"),
        (svg, "image/svg+xml", "image/svg+xml"),
        (script.clone(), "application/xhtml+xml", "application/xhtml+xml"),
        (script.clone(), "text/javascript", "text/javascript; charset=utf-8"),
        (script.clone(), "image/png; x", "application/octet-stream"),
        (script.clone(), "not a type", "application/octet-stream"),
    ] {
        let id = upload_ok(&mallory, bytes.clone(), Some(content_type), Some("x.html")).await;
        let got = download(&mallory, &id).await;
        assert_eq!(got.bytes, bytes);
        assert_eq!(got.header("content-type"), served, "{content_type}");
        assert_eq!(got.header("content-disposition"), "attachment; filename=x.html", "{content_type}");
        assert_served_safely(&got);
    }
}
on_both_backends!(hostile_content_types);

/// Unknown, remote and malformed media is 404; the v1 endpoints need a
/// token; the legacy endpoints are frozen; previews are off.
async fn errors_and_frozen_endpoints(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let base = server.base_url.clone();
    let alice = User::new(&base, "alice").await;
    let id = upload_ok(&alice, b"data".to_vec(), Some("text/plain"), None).await;

    download(&alice, "AAAAAAAAAAAAAAAAAAAAAAAA").await.error(404, "M_NOT_FOUND");
    download(&alice, "bad.id").await.error(404, "M_NOT_FOUND");
    get(Some(&alice), &base, &format!("/_matrix/client/v1/media/download/matrix.org/{id}")).await.error(404, "M_NOT_FOUND");
    get(Some(&alice), &base, "/_matrix/client/v1/media/download/bad_server!/abc").await.error(400, "M_INVALID_PARAM");
    thumbnail(&alice, "AAAAAAAAAAAAAAAAAAAAAAAA", "width=32&height=32").await.error(404, "M_NOT_FOUND");

    for path in [
        format!("/_matrix/client/v1/media/download/localhost/{id}"),
        format!("/_matrix/client/v1/media/thumbnail/localhost/{id}?width=32&height=32"),
        "/_matrix/client/v1/media/config".to_owned(),
    ] {
        get(None, &base, &path).await.error(401, "M_MISSING_TOKEN");
    }
    let anonymous_upload = send(http().post(format!("{base}/_matrix/media/v3/upload")).body("x")).await;
    anonymous_upload.error(401, "M_MISSING_TOKEN");

    // Frozen: media uploaded after the freeze (all of it here) is not
    // served without authentication, token or not.
    for path in [
        format!("/_matrix/media/v3/download/localhost/{id}"),
        format!("/_matrix/media/r0/download/localhost/{id}"),
        format!("/_matrix/media/v3/download/localhost/{id}/name.txt"),
        format!("/_matrix/media/v3/thumbnail/localhost/{id}?width=32&height=32"),
    ] {
        get(None, &base, &path).await.error(404, "M_NOT_FOUND");
        get(Some(&alice), &base, &path).await.error(404, "M_NOT_FOUND");
    }

    // Off by default: an unknown endpoint.
    let preview = get(Some(&alice), &base, "/_matrix/client/v1/media/preview_url?url=https%3A%2F%2Fexample.org").await;
    preview.error(404, "M_UNRECOGNIZED");

    // Thumbnails of nothing and of a size of nothing.
    thumbnail(&alice, &id, "width=0&height=10").await.error(400, "M_UNKNOWN");
    thumbnail(&alice, &id, "width=32").await.error(400, "M_INVALID_PARAM");
}
on_both_backends!(errors_and_frozen_endpoints);

/// Two uploads of the same bytes share one file; deleting one item keeps
/// the file for the other, deleting both removes it.
async fn dedup_and_admin_delete(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let alice = User::new(&server.base_url, "alice").await;
    let bob = User::new(&server.base_url, "bob").await;
    let admin = User::admin(&server, "root").await;
    let bytes = picture(40, 30, image::ImageFormat::Png);
    let a = upload_ok(&alice, bytes.clone(), Some("image/png"), Some("a.png")).await;
    let b = upload_ok(&bob, bytes.clone(), Some("image/png"), Some("b.png")).await;
    assert_ne!(a, b);
    let files = content_files(server.data_dir());
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(std::fs::read(&files[0]).unwrap(), bytes);
    assert_eq!(download(&alice, &b).await.header("content-disposition"), "inline; filename=b.png");

    let delete = |id: &str| {
        let url = format!("{}/_synapse/admin/v1/media/localhost/{id}", server.base_url);
        http().delete(url)
    };
    send(delete(&a).bearer_auth(&alice.token)).await.error(403, "M_FORBIDDEN");
    let deleted = send(delete(&a).bearer_auth(&admin.token)).await;
    assert_eq!(deleted.status, 200);
    assert_eq!(deleted.json(), json!({"deleted_media": [a], "total": 1}));
    download(&alice, &a).await.error(404, "M_NOT_FOUND");
    assert_eq!(download(&alice, &b).await.bytes, bytes);
    assert_eq!(content_files(server.data_dir()).len(), 1, "bob's item still uses the file");
    send(delete(&a).bearer_auth(&admin.token)).await.error(404, "M_NOT_FOUND");
    assert_eq!(send(delete(&b).bearer_auth(&admin.token)).await.status, 200);
    assert!(content_files(server.data_dir()).is_empty());
    let remote = format!("{}/_synapse/admin/v1/media/matrix.org/{b}", server.base_url);
    send(http().delete(remote).bearer_auth(&admin.token)).await.error(400, "M_INVALID_PARAM");
}
on_both_backends!(dedup_and_admin_delete);

fn decoded(answer: &Answer) -> image::DynamicImage {
    assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.bytes));
    image::load_from_memory(&answer.bytes).unwrap()
}

/// Thumbnails by scale and crop, of a JPEG and a PNG: the box's size,
/// never scaled up (a small image comes back as it is), made once and
/// cached; a corrupt image is a clean 400.
async fn thumbnails(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let alice = User::new(&server.base_url, "alice").await;
    let photo = upload_ok(&alice, picture(1600, 1200, image::ImageFormat::Jpeg), Some("image/jpeg"), Some("p.jpg")).await;
    let logo = upload_ok(&alice, picture(640, 320, image::ImageFormat::Png), Some("image/png"), None).await;

    let scaled = thumbnail(&alice, &photo, "width=800&height=600&method=scale").await;
    assert_eq!(scaled.header("content-type"), "image/jpeg");
    assert_eq!(scaled.header("content-disposition"), "inline; filename=thumbnail.jpeg");
    assert_served_safely(&scaled);
    let img = decoded(&scaled);
    assert_eq!((img.width(), img.height()), (800, 600));
    // Asked for less, the smallest box not smaller than asked.
    let img = decoded(&thumbnail(&alice, &photo, "width=500&height=400&method=scale").await);
    assert_eq!((img.width(), img.height()), (640, 480));
    let cropped = thumbnail(&alice, &photo, "width=96&height=96&method=crop").await;
    let img = decoded(&cropped);
    assert_eq!((img.width(), img.height()), (96, 96));
    let img = decoded(&thumbnail(&alice, &logo, "width=100&height=100&method=scale").await);
    assert_eq!((img.width(), img.height()), (320, 160));
    let png = thumbnail(&alice, &logo, "width=32&height=32&method=crop").await;
    assert_eq!(png.header("content-type"), "image/png");
    let img = decoded(&png);
    assert_eq!((img.width(), img.height()), (32, 32));

    // Made once: the same box again is the same file.
    let again = thumbnail(&alice, &photo, "width=90&height=90&method=crop").await;
    assert_eq!(again.bytes, cropped.bytes);
    // One decoding makes every box of an item: the photo's five, the
    // logo's three (it fits 640×480 and 800×600 whole).
    assert_eq!(content_files(server.data_dir()).len(), 2 + 5 + 3);

    // Smaller than the box: the original, untouched.
    let small = picture(100, 80, image::ImageFormat::Png);
    let small_id = upload_ok(&alice, small.clone(), Some("image/png"), None).await;
    let same = thumbnail(&alice, &small_id, "width=320&height=240&method=scale").await;
    assert_eq!((same.status, &same.bytes), (StatusCode::OK, &small));

    // Not an image at all, or a broken one: 400 M_UNKNOWN, the server fine.
    let corrupt: Vec<u8> = b"\x89PNG\r\n\x1a\n".iter().copied().chain((0..5000).map(|n: u32| (n * 7 % 256) as u8)).collect();
    let corrupt = upload_ok(&alice, corrupt, Some("image/png"), None).await;
    thumbnail(&alice, &corrupt, "width=96&height=96&method=crop").await.error(400, "M_UNKNOWN");
    let text = upload_ok(&alice, b"just text".to_vec(), Some("image/jpeg"), None).await;
    thumbnail(&alice, &text, "width=96&height=96").await.error(400, "M_UNKNOWN");
    let mut truncated = picture(800, 600, image::ImageFormat::Jpeg);
    truncated.truncate(300);
    let truncated = upload_ok(&alice, truncated, Some("image/jpeg"), None).await;
    let answer = thumbnail(&alice, &truncated, "width=96&height=96&method=crop").await;
    assert!(
        answer.status == 400 || answer.status == 200,
        "a cut JPEG is refused or decoded as far as it goes: {}",
        answer.status
    );
    assert_eq!(decoded(&thumbnail(&alice, &photo, "width=32&height=32&method=crop").await).width(), 32);
}
on_both_backends!(thumbnails);

/// `animated`: a small animated GIF comes back whole only when asked for
/// animation; otherwise its first frame, still.
async fn animated_thumbnails(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let alice = User::new(&server.base_url, "alice").await;
    let mut gif = Vec::new();
    {
        let mut encoder = image::codecs::gif::GifEncoder::new(&mut gif);
        for shade in [0u8, 255] {
            let frame = image::RgbaImage::from_pixel(60, 40, image::Rgba([shade, 0, 0, 255]));
            encoder.encode_frame(image::Frame::new(frame)).unwrap();
        }
    }
    let id = upload_ok(&alice, gif.clone(), Some("image/gif"), None).await;
    let animated = thumbnail(&alice, &id, "width=96&height=96&method=scale&animated=true").await;
    assert_eq!((animated.header("content-type"), &animated.bytes), ("image/gif", &gif));
    for query in ["width=96&height=96&method=scale&animated=false", "width=96&height=96&method=scale"] {
        let still = thumbnail(&alice, &id, query).await;
        assert_eq!(still.header("content-type"), "image/png", "{query}");
        let img = decoded(&still);
        assert_eq!((img.width(), img.height()), (60, 40));
    }
}
on_both_backends!(animated_thumbnails);

async fn create(user: &User) -> (String, u64) {
    let created =
        send(http().post(format!("{}/_matrix/media/v1/create", user.base)).bearer_auth(&user.token).json(&json!({}))).await;
    assert_eq!(created.status, 200, "{}", String::from_utf8_lossy(&created.bytes));
    let body = created.json();
    let uri = body["content_uri"].as_str().unwrap();
    (uri.strip_prefix("mxc://localhost/").unwrap().to_owned(), body["unused_expires_at"].as_u64().unwrap())
}

fn put(user: &User, media_id: &str, bytes: Vec<u8>) -> reqwest::RequestBuilder {
    http()
        .put(format!("{}/_matrix/media/v3/upload/localhost/{media_id}?filename=later.txt", user.base))
        .bearer_auth(&user.token)
        .header("content-type", "text/plain")
        .body(bytes)
}

/// MSC2246: create, then upload; a download waits for the content; only
/// the creator uploads, once; pending ids are bounded per user.
async fn async_upload(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let alice = User::new(&server.base_url, "alice").await;
    let bob = User::new(&server.base_url, "bob").await;
    let now_ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis() as u64;
    let (id, expires) = create(&alice).await;
    assert!(expires > now_ms + 23 * 3_600_000, "{expires}");

    // Not there yet: a download that will not wait says so.
    let path = format!("/_matrix/client/v1/media/download/localhost/{id}?timeout_ms=0");
    get(Some(&bob), &bob.base, &path).await.error(504, "M_NOT_YET_UPLOADED");

    // A download that waits gets the content once it comes.
    let waiting = {
        let (base, token, id) = (bob.base.clone(), bob.token.clone(), id.clone());
        tokio::spawn(async move {
            let url = format!("{base}/_matrix/client/v1/media/download/localhost/{id}?timeout_ms=20000");
            send(http().get(url).bearer_auth(token)).await
        })
    };
    let mut waiting = std::pin::pin!(waiting);
    assert!(tokio::time::timeout(Duration::from_millis(300), &mut waiting).await.is_err(), "the download waits");

    send(put(&bob, &id, b"stolen".to_vec())).await.error(403, "M_FORBIDDEN");
    let stored = send(put(&alice, &id, b"arrived later".to_vec())).await;
    assert_eq!((stored.status, stored.json()), (StatusCode::OK, json!({})));
    let got = tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("woken by the upload").unwrap();
    assert_eq!((got.status, got.bytes.as_slice()), (StatusCode::OK, b"arrived later".as_slice()));
    assert_eq!(got.header("content-disposition"), "inline; filename=later.txt");

    send(put(&alice, &id, b"again".to_vec())).await.error(409, "M_CANNOT_OVERWRITE_MEDIA");
    send(put(&alice, "NoSuchIdNoSuchIdNoSuchId", b"x".to_vec())).await.error(404, "M_NOT_FOUND");
    let elsewhere = http().put(format!("{}/_matrix/media/v3/upload/matrix.org/{id}", alice.base)).bearer_auth(&alice.token);
    send(elsewhere.body("x")).await.error(404, "M_NOT_FOUND");

    // Ten pending ids per user; the eleventh waits for one to be used.
    let mut pending = Vec::new();
    for _ in 0..10 {
        pending.push(create(&alice).await.0);
    }
    let refused = send(http().post(format!("{}/_matrix/media/v1/create", alice.base)).bearer_auth(&alice.token)).await;
    refused.error(429, "M_LIMIT_EXCEEDED");
    assert!(refused.json()["retry_after_ms"].is_u64());
    assert_eq!(send(put(&alice, &pending[0], b"one".to_vec())).await.status, 200);
    create(&alice).await;
}
on_both_backends!(async_upload);

/// The size limit (with or without a declared length) and the quota; a
/// refused upload leaves no file.
async fn size_limit_and_quota(backend: Backend) {
    let server = TestServer::start_with(backend, |c| {
        c.media.max_upload_bytes = 1_000;
        c.media.max_bytes_per_user = 2_500;
    })
    .await
    .unwrap();
    let alice = User::new(&server.base_url, "alice").await;
    let admin = User::admin(&server, "root").await;
    upload(&alice, vec![7; 1_001], Some("application/pdf"), None).await.error(413, "M_TOO_LARGE");
    // Chunked, no length declared: cut off at the limit while streaming.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..5).map(|_| Ok(vec![1u8; 300])).collect();
    let chunked = http()
        .post(format!("{}/_matrix/media/v3/upload", alice.base))
        .bearer_auth(&alice.token)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)));
    send(chunked).await.error(413, "M_TOO_LARGE");
    assert!(content_files(server.data_dir()).is_empty());
    assert_eq!(temp_files(server.data_dir()), 0);

    let first = upload_ok(&alice, vec![1; 1_000], None, None).await;
    upload_ok(&alice, vec![2; 1_000], None, None).await;
    let over = upload(&alice, vec![3; 1_000], None, None).await;
    over.error(403, "M_FORBIDDEN");
    assert_eq!(content_files(server.data_dir()).len(), 2, "the refused upload left no file");
    // Deleting frees the quota.
    let url = format!("{}/_synapse/admin/v1/media/localhost/{first}", server.base_url);
    assert_eq!(send(http().delete(url).bearer_auth(&admin.token)).await.status, 200);
    upload_ok(&alice, vec![3; 1_000], None, None).await;
    // Others have their own quota.
    let bob = User::new(&server.base_url, "bob").await;
    upload_ok(&bob, vec![4; 1_000], None, None).await;
}
on_both_backends!(size_limit_and_quota);

/// Quarantined media answers 404 to everyone, its uploader included, and
/// again 200 once released; a user's media is quarantined at once.
async fn quarantine(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let alice = User::new(&server.base_url, "alice").await;
    let bob = User::new(&server.base_url, "bob").await;
    let admin = User::admin(&server, "root").await;
    let image = upload_ok(&alice, picture(400, 300, image::ImageFormat::Png), Some("image/png"), None).await;
    let other = upload_ok(&alice, b"notes".to_vec(), Some("text/plain"), None).await;
    assert_eq!(thumbnail(&bob, &image, "width=96&height=96&method=crop").await.status, 200);
    let admin_post = |path: &str| {
        let url = format!("{}/_synapse/admin/v1/{path}", server.base_url);
        http().post(url).bearer_auth(&admin.token).json(&json!({}))
    };

    let quarantined = send(admin_post(&format!("media/quarantine/localhost/{image}"))).await;
    assert_eq!((quarantined.status, quarantined.json()), (StatusCode::OK, json!({})));
    for user in [&alice, &bob, &admin] {
        download(user, &image).await.error(404, "M_NOT_FOUND");
        thumbnail(user, &image, "width=96&height=96&method=crop").await.error(404, "M_NOT_FOUND");
    }
    assert_eq!(download(&bob, &other).await.status, 200);
    assert_eq!(send(admin_post(&format!("media/unquarantine/localhost/{image}"))).await.status, 200);
    assert_eq!(download(&bob, &image).await.status, 200);

    let by_user = send(admin_post(&format!("user/{}/media/quarantine", alice.id))).await;
    assert_eq!((by_user.status, by_user.json()), (StatusCode::OK, json!({"num_quarantined": 2})));
    download(&bob, &other).await.error(404, "M_NOT_FOUND");
    download(&alice, &image).await.error(404, "M_NOT_FOUND");

    // Admins only.
    let url = format!("{}/_synapse/admin/v1/media/unquarantine/localhost/{image}", server.base_url);
    send(http().post(url).bearer_auth(&bob.token)).await.error(403, "M_FORBIDDEN");
    let url = format!("{}/_synapse/admin/v1/user/{}/media/quarantine", server.base_url, bob.id);
    send(http().post(url).bearer_auth(&alice.token)).await.error(403, "M_FORBIDDEN");
}
on_both_backends!(quarantine);

/// The write path's contract: an upload cut off mid-body leaves no file
/// and no item; after a restart, what a crash left (a temporary file, a
/// file without a row) is never served and is collected, while files of
/// items stay.
async fn broken_uploads_and_leftovers(backend: Backend) {
    let mut server = TestServer::start(backend).await.unwrap();
    let alice = User::new(&server.base_url, "alice").await;
    let kept = upload_ok(&alice, b"kept".to_vec(), Some("text/plain"), None).await;

    // Half a body, then the connection goes.
    let addr = server.base_url.strip_prefix("http://").unwrap().to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /_matrix/media/v3/upload HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/pdf\r\nContent-Length: 100000\r\n\r\n",
        alice.token
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&[9u8; 40_000]).await.unwrap();
    stream.flush().await.unwrap();
    // The temporary file appears, then goes with the connection.
    let deadline = Instant::now() + Duration::from_secs(10);
    while temp_files(server.data_dir()) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(temp_files(server.data_dir()), 1, "the upload is being written");
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(10);
    while temp_files(server.data_dir()) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(temp_files(server.data_dir()), 0, "a cut-off upload leaves nothing");
    assert_eq!(content_files(server.data_dir()).len(), 1);

    // What a crash leaves: a half-written temporary file, and a whole file
    // whose row was never written. Both old enough for the collector.
    let media = server.data_dir().join("media");
    let temp = media.join("tmp").join("crashed.part");
    std::fs::write(&temp, b"half of something").unwrap();
    let orphan_hash = "ab".repeat(32);
    let orphan = media.join("ab").join(&orphan_hash);
    std::fs::write(&orphan, b"no row").unwrap();
    let old = SystemTime::now() - Duration::from_secs(3 * 3600);
    for path in [&temp, &orphan].into_iter().chain(content_files(server.data_dir()).iter()) {
        std::fs::File::options().append(true).open(path).unwrap().set_modified(old).unwrap();
    }
    server.restart().await.unwrap();
    let alice = User { base: server.base_url.clone(), ..alice };
    assert_eq!(download(&alice, &kept).await.bytes, b"kept");
    for id in ["crashed", "crashed.part", &orphan_hash[..24]] {
        download(&alice, id).await.error(404, "M_NOT_FOUND");
    }

    // The collector (the hourly pass, here called at once).
    let store = chancery_server::open_store(&server.config).await.unwrap();
    let components = chancery_server::components(&server.config, store.clone()).unwrap();
    let report = components.media.collect_garbage().await.unwrap();
    store.close().await;
    assert_eq!((report.temporary_files, report.orphan_files), (1, 1), "{report:?}");
    assert!(!temp.exists() && !orphan.exists());
    assert_eq!(download(&alice, &kept).await.bytes, b"kept", "a file with a row stays, however old");
}
on_both_backends!(broken_uploads_and_leftovers);

/// A tiny web server on 127.0.0.1 for previews: a page with OpenGraph
/// tags and an image, and a redirect to another loopback address.
async fn preview_site() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let png = picture(48, 48, image::ImageFormat::Png);
    let task = tokio::spawn(async move {
        // Bounded: a test needs a handful of requests.
        for _ in 0..32 {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            let png = png.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buf = vec![0u8; 4096];
                let n = socket.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]).to_string();
                let path = request.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let (status, content_type, body): (&str, &str, Vec<u8>) = match path.as_str() {
                    "/page" => (
                        "200 OK",
                        "text/html; charset=utf-8",
                        br#"<html><head><title>Fallback</title>
                          <meta property="og:title" content="Chancery &amp; friends">
                          <meta property="og:description" content="A preview">
                          <meta property="og:image" content="/cat.png"></head><body>hi</body></html>"#
                            .to_vec(),
                    ),
                    "/cat.png" => ("200 OK", "image/png", png),
                    "/hop" => ("302 Found", "text/plain", Vec::new()),
                    _ => ("404 Not Found", "text/plain", b"no".to_vec()),
                };
                let location = if path == "/hop" { format!("Location: http://127.0.0.2:{port}/page\r\n") } else { String::new() };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{location}Connection: close\r\n\r\n",
                    body.len()
                );
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(&body).await;
            });
        }
    });
    (format!("http://127.0.0.1:{port}"), task)
}

fn preview_path(url: &str) -> String {
    format!("/_matrix/client/v1/media/preview_url?url={}", urlencode(url))
}

/// Previews on: a page's OpenGraph properties and its image (stored as
/// media); internal addresses refused, also behind a name or a redirect,
/// unless the operator allowed them.
async fn url_previews(backend: Backend) {
    let (site, site_task) = preview_site().await;
    let port = site.rsplit(':').next().unwrap().to_owned();
    // Only 127.0.0.1 itself is allowed, as an operator would allow an
    // intranet: 127.0.0.2 (where /hop redirects) stays refused.
    let server = TestServer::start_with(backend, |c| {
        c.media.url_preview = true;
        c.media.url_preview_allow_ranges = vec!["127.0.0.1/32".into()];
    })
    .await
    .unwrap();
    let alice = User::new(&server.base_url, "alice").await;
    let og = get(Some(&alice), &alice.base, &preview_path(&format!("{site}/page"))).await;
    assert_eq!(og.status, 200, "{}", String::from_utf8_lossy(&og.bytes));
    let og = og.json();
    assert_eq!(og["og:title"], "Chancery & friends");
    assert_eq!(og["og:description"], "A preview");
    let image = og["og:image"].as_str().unwrap().strip_prefix("mxc://localhost/").unwrap().to_owned();
    assert!(og["matrix:image:size"].as_u64().unwrap() > 0);
    assert_eq!(download(&alice, &image).await.header("content-type"), "image/png");

    // A redirect to an address not allowed, and that address itself.
    for refused in [format!("{site}/hop"), format!("http://127.0.0.2:{port}/page")] {
        let answer = get(Some(&alice), &alice.base, &preview_path(&refused)).await;
        answer.error(403, "M_FORBIDDEN");
    }
    for refused in ["http://169.254.169.254/latest/meta-data/", "http://[::1]/", "http://10.0.0.1/", "http://[::ffff:127.0.0.1]/"]
    {
        get(Some(&alice), &alice.base, &preview_path(refused)).await.error(403, "M_FORBIDDEN");
    }
    get(Some(&alice), &alice.base, &preview_path("file:///etc/passwd")).await.error(400, "M_INVALID_PARAM");
    get(None, &alice.base, &preview_path(&format!("{site}/page"))).await.error(401, "M_MISSING_TOKEN");
    site_task.abort();
}
on_both_backends!(url_previews);

/// Alice sends a file in an encrypted room with matrix-sdk; Bob receives
/// the event, downloads the ciphertext through the authenticated
/// endpoint and decrypts the same bytes. The server holds ciphertext only.
async fn encrypted_attachment(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let base = server.base_url.clone();
    let alice = new_user(&base, "alice", encryption(false, false)).await;
    let bob = new_user(&base, "bob", encryption(false, false)).await;
    let received: Arc<Mutex<Option<MediaSource>>> = Arc::default();
    let sink = received.clone();
    bob.add_event_handler(move |event: OriginalSyncRoomMessageEvent| {
        let sink = sink.clone();
        async move {
            if let MessageType::File(file) = event.content.msgtype {
                *sink.lock().unwrap() = Some(file.source);
            }
        }
    });

    let mut request = create_room::v3::Request::new();
    request.preset = Some(RoomPreset::PrivateChat);
    request.invite = vec![bob.user_id().unwrap().to_owned()];
    let room_id = alice.create_room(request).await.unwrap().room_id().to_owned();
    sync_until(&[&bob], "Bob's invite", || async { bob.get_room(&room_id).is_some() }).await;
    bob.join_room_by_id(&room_id).await.unwrap();
    sync_until(&[&alice, &bob], "the room is encrypted for both", || async {
        let encrypted = |c: &matrix_sdk::Client| c.get_room(&room_id).is_some_and(|r| r.encryption_state().is_encrypted());
        encrypted(&alice) && encrypted(&bob)
    })
    .await;

    let secret: Vec<u8> = b"the minister's draft, version 7\n".repeat(2_000);
    let room = alice.get_room(&room_id).unwrap();
    room.send_attachment("draft.txt", &mime::TEXT_PLAIN, secret.clone(), AttachmentConfig::new()).await.unwrap();
    sync_until(&[&alice, &bob], "Bob receives the file", || async { received.lock().unwrap().is_some() }).await;
    let source = received.lock().unwrap().clone().unwrap();
    let MediaSource::Encrypted(file) = &source else { panic!("the file was sent in the clear: {source:?}") };
    let params = MediaRequestParameters { source: source.clone(), format: MediaFormat::File };
    let plain = bob.media().get_media_content(&params, false).await.unwrap();
    assert_eq!(plain, secret);

    // What the server stored is ciphertext.
    let (_, media_id) = file.url.parts().unwrap();
    let bob_http = User { base: base.clone(), token: bob.access_token().unwrap(), id: bob.user_id().unwrap().to_string() };
    let stored = download(&bob_http, media_id).await;
    assert_eq!(stored.status, 200);
    assert_eq!(stored.bytes.len(), secret.len());
    assert_ne!(stored.bytes, secret);
    assert!(!String::from_utf8_lossy(&stored.bytes).contains("minister"));
}
on_both_backends!(encrypted_attachment);
