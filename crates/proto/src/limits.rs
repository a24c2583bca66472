//! Every size and count that a client or remote party can grow has its
//! limit here, so that an operator (and a reviewer) finds them in one place.
//! Exceeding a limit is an operating error answered with a Matrix errcode,
//! never a panic and never unbounded memory. Limits an operator may want to
//! change are also exposed in the config (`[limits]`); these are defaults.

/// Largest request body accepted by the client-server API (spec: events are
/// at most 64 KiB; profile and device bodies far less). Configurable.
pub const MAX_REQUEST_BODY_BYTES: usize = 1024 * 1024;

/// Longest user id, in bytes, including the `@` sigil and the server name
/// (spec: "The length of a user ID, including the @ sigil and the domain,
/// MUST NOT exceed 255 bytes").
pub const MAX_USER_ID_BYTES: usize = 255;

/// Longest password accepted, in bytes. Argon2 takes any length, but a
/// megabyte password costs hashing time for nothing.
pub const MAX_PASSWORD_BYTES: usize = 512;
/// Password hashes waiting or running at once in one process (two run at a
/// time, tens of milliseconds each): past this, logins and registrations
/// are answered `M_LIMIT_EXCEEDED` at once instead of queueing for seconds.
pub const MAX_QUEUED_PASSWORD_HASHES: usize = 64;

/// Longest device id a client may choose, in bytes.
pub const MAX_DEVICE_ID_BYTES: usize = 255;

/// Longest device display name, in bytes.
pub const MAX_DEVICE_DISPLAY_NAME_BYTES: usize = 256;

/// Devices one account may hold; logging in once more past this is refused
/// with `M_LIMIT_EXCEEDED` until the user removes one.
pub const MAX_DEVICES_PER_USER: usize = 1_000;

/// Devices that one `/delete_devices` request may name.
pub const MAX_DEVICES_PER_DELETE: usize = 1_000;

/// The spec limits a whole profile to 64 KiB of canonical JSON
/// (client-server API, "Profiles": "the total size of a user's profile").
pub const MAX_PROFILE_BYTES: usize = 65_536;

/// Longest profile field name, in bytes (spec: 255 bytes).
pub const MAX_PROFILE_KEY_BYTES: usize = 255;

/// Longest `displayname`, in bytes.
pub const MAX_DISPLAYNAME_BYTES: usize = 256;

/// Longest `avatar_url`, in bytes.
pub const MAX_AVATAR_URL_BYTES: usize = 1_024;

/// Lifetime of a user-interactive-auth session.
pub const UIA_SESSION_TTL_MS: u64 = 30 * 60 * 1000;

/// Live user-interactive-auth sessions held at once, across all users.
/// Sessions cost a row each; past this, new ones are refused with
/// `M_LIMIT_EXCEEDED` until old ones expire.
pub const MAX_UIA_SESSIONS: u64 = 100_000;
/// Live interactive-auth sessions of one logged-in user. A user's open
/// session of an operation is reused, so this is reached only by users
/// running many different operations at once.
pub const MAX_UIA_SESSIONS_PER_USER: u64 = 8;

/// Longest registration token (MSC3231: at most 64 characters from
/// `[A-Za-z0-9._~-]`).
pub const MAX_REGISTRATION_TOKEN_CHARS: usize = 64;

/// Lifetime of an access token when the client asked for a refresh token.
/// Configurable.
pub const ACCESS_TOKEN_LIFETIME_MS: u64 = 5 * 60 * 1000;

/// Entries kept by each in-memory rate limiter (one per client address or
/// account). Past this the oldest idle entries are dropped, so a flood of
/// distinct addresses cannot grow memory without bound.
pub const MAX_RATE_LIMITER_KEYS: usize = 100_000;

/// Largest PDU, in bytes of canonical JSON (spec: "The complete event MUST
/// NOT be larger than 65536 bytes").
pub const MAX_PDU_BYTES: usize = 65_536;

/// Longest event type and state key, in bytes (spec: 255 bytes each).
pub const MAX_EVENT_TYPE_BYTES: usize = 255;
pub const MAX_STATE_KEY_BYTES: usize = 255;

/// Longest client transaction id, in bytes.
pub const MAX_TXN_ID_BYTES: usize = 255;

/// Users one `/createRoom` may invite, and initial state events it may set.
pub const MAX_CREATE_ROOM_INVITES: usize = 100;
pub const MAX_CREATE_ROOM_INITIAL_STATE: usize = 100;

/// Timeline events per room in one `/sync` answer (filters may ask for
/// fewer, not more).
pub const MAX_SYNC_TIMELINE_LIMIT: usize = 100;
/// Default when the filter says nothing (Synapse uses 10 too).
pub const DEFAULT_SYNC_TIMELINE_LIMIT: usize = 10;

/// Longest `/sync` long-poll.
pub const MAX_SYNC_TIMEOUT_MS: u64 = 5 * 60 * 1000;

/// `/sync` long-polls one user may have waiting at once on one node (one
/// per device and a few tabs is normal; a poll whose client went away is
/// dropped with its connection). Past this, a new one is answered
/// `M_LIMIT_EXCEEDED`.
pub const MAX_LONG_POLLS_PER_USER: usize = 16;

/// Events per `/messages` page.
pub const MAX_MESSAGES_LIMIT: usize = 1_000;
pub const DEFAULT_MESSAGES_LIMIT: usize = 10;

/// Retries of an event build when another writer moved the room on.
pub const MAX_APPEND_RETRIES: usize = 5;

/// Distinct sync filters one user may store, and the size of one.
pub const MAX_FILTERS_PER_USER: usize = 1_000;
pub const MAX_FILTER_BYTES: usize = 16 * 1024;

/// Longest search term (user directory and `/search`), in bytes.
pub const MAX_SEARCH_TERM_BYTES: usize = 512;
/// Results per user-directory answer.
pub const MAX_USER_DIRECTORY_LIMIT: usize = 100;
/// Results per `/search` page, and context events on each side of one.
pub const MAX_SEARCH_RESULTS: usize = 100;
pub const MAX_SEARCH_CONTEXT: usize = 20;

/// Spans of history visibility and of the reader's membership that one
/// visibility check loads (`/search` loads those of every room searched).
/// Each is a few dozen bytes; only state changes by room admins or around
/// the reader's own membership add spans, so real users stay far below.
pub const MAX_VISIBILITY_SPANS: usize = 100_000;

/// Notifications per `/notifications` page.
pub const MAX_NOTIFICATIONS_LIMIT: usize = 100;

/// Users whose presence one node keeps, and the longest status message.
pub const MAX_PRESENCE_ENTRIES: usize = 100_000;
pub const MAX_STATUS_MSG_BYTES: usize = 256;
/// Account-data entries (global and per room together) one user may hold.
/// Element keeps a few per room (`m.fully_read`, `m.tag`,
/// `m.marked_unread`), so this leaves room for thousands of rooms.
pub const MAX_ACCOUNT_DATA_ENTRIES_PER_USER: usize = 50_000;

/// Largest content of one account-data entry, in bytes of JSON. `m.direct`
/// of a user with very many direct chats is the largest one in practice.
pub const MAX_ACCOUNT_DATA_BYTES: usize = 128 * 1024;

/// All of one user's account data together, in bytes (each entry's room
/// id, type and content), checked in the write's transaction. Without it
/// the two limits above let one user store 50,000 × 128 KiB. Element's
/// account data comes to a few hundred bytes per room plus some tens of
/// KiB of global data, so this leaves room for tens of thousands of rooms
/// and a large `m.direct`, while 128 full-size entries reach it.
pub const MAX_ACCOUNT_DATA_BYTES_PER_USER: usize = 16 * 1024 * 1024;

/// Account-data entries (global and per room together) one `/sync`
/// answer carries at most, and their bytes: entries are added while
/// those before come to less, so an answer holds at most this plus one
/// entry. The rest follow in the next answers (the token then stops at
/// the last entry sent). Most users' account data fits in one answer.
pub const MAX_SYNC_ACCOUNT_DATA_ENTRIES: usize = 1_000;
pub const MAX_SYNC_ACCOUNT_DATA_BYTES: usize = 1024 * 1024;

/// Longest room tag name, in bytes (spec "Room Tagging": "The name of a tag
/// MUST NOT exceed 255 bytes").
pub const MAX_TAG_BYTES: usize = 255;

/// Receipts of one type one user may hold in one room: one per thread,
/// plus the unthreaded one and `main`. Past this a receipt for yet another
/// thread is refused.
pub const MAX_RECEIPT_THREADS_PER_ROOM: usize = 1_000;

/// Longest typing notification; a longer `timeout` is cut to this (spec
/// "Typing Notifications" recommends clients resend every 20–30 s).
pub const MAX_TYPING_TIMEOUT_MS: u64 = 30_000;

/// Rooms whose typing state a node remembers. Past this, rooms nobody types
/// in are forgotten, oldest change first; syncs from before the forgotten
/// changes then get every room's typing list once.
pub const MAX_TYPING_ROOMS: usize = 100_000;
/// Child events per `/relations` page. The default is Synapse's, which
/// clients are tuned to.
pub const MAX_RELATIONS_LIMIT: usize = 1_000;
pub const DEFAULT_RELATIONS_LIMIT: usize = 5;

/// How many relations away from the parent `/relations?recurse=true`
/// follows (spec: "Homeservers SHOULD traverse at least 3 levels").
pub const RELATIONS_RECURSION_DEPTH: u32 = 3;

/// Thread roots per `/threads` page; the default is Synapse's.
pub const MAX_THREADS_LIMIT: usize = 100;
pub const DEFAULT_THREADS_LIMIT: usize = 5;

/// Events around the requested one in a `/context` answer (the spec's
/// default is 10).
pub const MAX_CONTEXT_LIMIT: usize = 100;

/// `m.reference` children listed in one event's bundled aggregation; a
/// client wanting all of them pages through `/relations`.
pub const MAX_BUNDLED_REFERENCES: usize = 50;
/// Local aliases one room may have (any joined member may add one).
pub const MAX_ALIASES_PER_ROOM: usize = 100;

/// Rooms per `/publicRooms` page; also the page size when the client
/// names none (Synapse then returns every room, which does not scale).
pub const MAX_PUBLIC_ROOMS_LIMIT: usize = 500;

/// Longest `filter.generic_search_term` of `/publicRooms`, in bytes.
pub const MAX_DIRECTORY_SEARCH_TERM_BYTES: usize = 256;

/// Entries of `filter.room_types` of `/publicRooms`.
pub const MAX_DIRECTORY_ROOM_TYPES: usize = 32;

/// `additional_creators` one `/upgrade` may name.
pub const MAX_UPGRADE_ADDITIONAL_CREATORS: usize = 100;

/// Longest content-report reason, in bytes.
pub const MAX_REPORT_REASON_BYTES: usize = 4_096;

/// Reports (of events and rooms) one user may file per window; the table
/// of reports grows by client action, so it is bounded per reporter.
pub const MAX_REPORTS_PER_USER_PER_WINDOW: usize = 30;
pub const REPORT_WINDOW_MS: u64 = 60 * 60 * 1000;

/// Reports per page of the admin API's report lists; the default is
/// Synapse's, which admin tools are tuned to.
pub const MAX_ADMIN_REPORTS_LIMIT: usize = 1_000;
pub const DEFAULT_ADMIN_REPORTS_LIMIT: usize = 100;

/// Rooms a `/search` filter may list (`rooms` and `not_rooms` each).
pub const MAX_SEARCH_FILTER_ROOMS: usize = 1_000;

/// Unread notifications of one room counted per thread in a `/sync`
/// (counts past it are capped).
pub const MAX_UNREAD_COUNTED: usize = 10_000;

/// State maps one state resolution merges. An event cites at most 20
/// `prev_events` (room versions, "Event format"), so joining the forks
/// before one event never needs more.
pub const MAX_STATE_RES_FORKS: usize = 20;

/// Distinct events (the forks' state and their whole auth chains) one state
/// resolution may load. The auth chain of a room's state holds every
/// membership and power change ever made in it, so this bounds the rooms
/// that can be resolved in memory; past it resolution is refused, not
/// attempted. Rooms beyond it need a stored auth-chain index (Synapse's
/// chain cover) rather than a walk.
pub const MAX_STATE_RES_EVENTS: usize = 200_000;

/// The lazy-loaded members cache (`service::lazy_members`): which member
/// events each device was already sent by `/sync`. Devices remembered per
/// node, rooms per device, members per device in all and per room. An
/// entry is two 64-bit hashes and a serial, so the whole cache stays under
/// about 70 MB; anything forgotten is simply sent again.
pub const MAX_LAZY_MEMBER_DEVICES: usize = 2_048;
pub const MAX_LAZY_MEMBER_ROOMS_PER_DEVICE: usize = 50;
pub const MAX_LAZY_MEMBERS_PER_DEVICE: usize = 500;
pub const MAX_LAZY_MEMBERS_PER_ROOM: usize = 100;

/// Users whose default push rule set is kept built (`service::push`; a few
/// kB each), least recently used dropped first.
pub const MAX_CACHED_DEFAULT_RULESETS: usize = 1_024;

// End-to-end encryption (`service::keys`).

/// Serialized size of one key object a client uploads: device keys, a
/// one-time or fallback key, a cross-signing key (a few hundred bytes in
/// practice; signatures of many devices make a master key grow).
pub const MAX_KEY_OBJECT_BYTES: usize = 16 * 1024;
/// One-time and fallback keys in one `/keys/upload` (clients upload 50 at
/// a time; a dehydrated device a few more).
pub const MAX_KEYS_PER_UPLOAD: usize = 1_000;
/// Unclaimed one-time keys one device may hold (clients keep half of
/// what their Olm account holds, 100, on the server).
pub const MAX_ONE_TIME_KEYS_PER_DEVICE: usize = 1_000;
/// Users one `/keys/query` may ask about (a sender queries a whole room's
/// members at once), and devices named per user.
pub const MAX_KEY_QUERY_USERS: usize = 10_000;
/// Keys one `/keys/claim` may claim (a room key shared with a big room).
pub const MAX_KEY_CLAIMS: usize = 10_000;
/// Signatures one `/keys/signatures/upload` may carry.
pub const MAX_SIGNATURE_UPLOADS: usize = 1_000;
/// Messages one `/sendToDevice` may queue, counting a `*` as one per
/// device (clients send at most 250 per request).
pub const MAX_TO_DEVICE_MESSAGES_PER_REQUEST: usize = 10_000;
/// Messages from one sender waiting for one device: a sender shares a
/// room key once per session and device, so this is far above what any
/// client queues, and a user who floods someone's device fills only this
/// share of its inbox; the rest stays free for everyone else's keys.
pub const MAX_TO_DEVICE_FROM_ONE_SENDER: u64 = 1_000;
/// Transaction ids of `/sendToDevice` remembered per sending device: a
/// retry comes within seconds, and the table must not grow with every
/// request a device ever made. The oldest are forgotten first.
pub const MAX_TO_DEVICE_TXNS_PER_DEVICE: u64 = 1_000;
/// Serialized size of one to-device message's content.
pub const MAX_TO_DEVICE_CONTENT_BYTES: usize = 65_536;
/// Messages waiting for one device; more are dropped for that device
/// only, so a device nobody uses any more cannot grow the database
/// forever, nor stop a sender reaching everyone else.
pub const MAX_TO_DEVICE_INBOX: usize = 50_000;
/// To-device messages one `/sync` answer (or one dehydrated-device read)
/// carries; the rest come with the next.
pub const MAX_SYNC_TO_DEVICE_EVENTS: usize = 100;
/// Sessions one key backup version may hold, and versions a user may
/// keep (not counting deleted ones: clients use one, and make a new one
/// only when they reset their backup).
pub const MAX_BACKED_UP_KEYS: u64 = 250_000;
pub const MAX_BACKUP_VERSIONS: usize = 10;
/// Serialized size of a backup's `auth_data` and of one session's
/// `session_data` (an encrypted session key is about 1 KB).
pub const MAX_BACKUP_AUTH_DATA_BYTES: usize = 16 * 1024;
pub const MAX_BACKUP_SESSION_BYTES: usize = 8 * 1024;
/// Serialized size of a dehydrated device's opaque `device_data`.
pub const MAX_DEHYDRATED_DEVICE_DATA_BYTES: usize = 256 * 1024;

// Simplified sliding sync (MSC4186).
/// Lists and room subscriptions of one request (the MSC's own caps).
pub const MAX_SLIDING_LISTS: usize = 100;
pub const MAX_SLIDING_SUBSCRIPTIONS: usize = 100;
/// Ranges of one list (clients send one).
pub const MAX_SLIDING_RANGES_PER_LIST: usize = 10;
/// `required_state` entries of one list or subscription.
pub const MAX_SLIDING_REQUIRED_STATE: usize = 100;
/// Longest `timeline_limit` honoured (larger ones are capped, as the MSC allows).
pub const MAX_SLIDING_TIMELINE_LIMIT: usize = 100;
/// Rooms one answer carries; the others of the lists' ranges follow in
/// the next answers (they count as news, so the client comes back at once).
pub const MAX_SLIDING_ROOMS_PER_ANSWER: usize = 200;
/// Connections one device keeps; starting one more drops the least recently used.
pub const MAX_SLIDING_CONNECTIONS_PER_DEVICE: usize = 10;
/// Longest `conn_id` and list name (ruma's documentation says 16; clients send short names).
pub const MAX_SLIDING_NAME_BYTES: usize = 64;
/// A connection unused this long is forgotten (its next request gets `M_UNKNOWN_POS`).
pub const SLIDING_CONNECTION_IDLE_MS: u64 = 7 * 24 * 3600 * 1000;
/// Connections whose state (what was sent per room) one node keeps in memory.
pub const SLIDING_CONNECTIONS_CACHED: usize = 1_000;
/// Room-list entries (one per room of a user) one node keeps in memory
/// over all users, so that an answer reads only the rooms that moved on.
pub const ROOM_LISTS_CACHED_ENTRIES: usize = 200_000;
/// Rooms of the server that may have moved on since a kept list was
/// brought up to date; beyond, the list is read whole again.
pub const ROOM_LIST_CHANGES_MAX: usize = 500;
/// A kept room list is read whole again at least this often.
pub const ROOM_LIST_REREAD_MS: u64 = 60_000;
// Spaces and room previews (`service::spaces`).

/// Rooms one `/hierarchy` page lists: the default and the most a client
/// may ask for (Synapse's cap too).
pub const MAX_HIERARCHY_LIMIT: usize = 50;
/// How far below its root a hierarchy walk goes: the default and the most
/// a client may ask for (spaces are nested a few levels in practice).
pub const MAX_HIERARCHY_DEPTH: u32 = 20;
/// Rooms one `/hierarchy` request looks at, listed or not (each costs a
/// few indexed reads); past it the page ends early with a `next_batch`.
pub const MAX_HIERARCHY_ROOMS_VISITED_PER_REQUEST: usize = 200;
/// Rooms one walk over all its pages visits or holds in its frontier:
/// bounds the walk saved between pages; children past it are not listed.
pub const MAX_HIERARCHY_ROOMS_PER_WALK: usize = 2_000;
/// `m.space.child` links read of one space (the first by child room id).
pub const MAX_SPACE_CHILDREN: usize = 500;
/// Rooms of a restricted room's `allow` list checked for the requester's
/// membership when deciding whether they may preview it.
pub const MAX_ALLOW_ROOMS_CHECKED: usize = 50;
/// Walks paused between `/hierarchy` pages kept per user (the oldest go
/// first), and how long a `next_batch` token stays valid.
pub const MAX_HIERARCHY_WALKS_PER_USER: usize = 20;
pub const HIERARCHY_WALK_TTL_MS: u64 = 10 * 60 * 1000;
// Pushers and push delivery (`service::pushers`).

/// Pushers one user may have (one per device and app in practice).
pub const MAX_PUSHERS_PER_USER: usize = 100;
/// A pushkey's length (spec `POST /pushers/set`: "Max length, 512 bytes").
pub const MAX_PUSHKEY_BYTES: usize = 512;
/// An app id's length (spec: "Max length, 64 chars").
pub const MAX_PUSHER_APP_ID_CHARS: usize = 64;
/// `app_display_name`, `device_display_name`, `profile_tag` and `lang`.
pub const MAX_PUSHER_TEXT_BYTES: usize = 256;
/// A push gateway URL.
pub const MAX_PUSHER_URL_BYTES: usize = 2_048;
/// A pusher's `data` object, serialized: it is forwarded (without `url`)
/// in every push (iOS apps put a `default_payload` there).
pub const MAX_PUSHER_DATA_BYTES: usize = 8 * 1024;
/// Notifications older than this (by their event's timestamp) are not
/// pushed any more: after a long gateway outage the device is told of
/// recent messages only (Synapse gives up on a notification after a day
/// of failures too).
pub const MAX_PUSH_AGE_MS: u64 = 24 * 60 * 60 * 1000;
/// Pushes one node has in flight at once (each waits on a gateway).
pub const MAX_CONCURRENT_PUSHES: usize = 64;
/// A push gateway must answer within this time; slower is a failure.
pub const PUSH_GATEWAY_TIMEOUT_MS: u64 = 15_000;
/// What is read of a gateway's answer (`{"rejected": [...]}`).
pub const MAX_PUSH_GATEWAY_ANSWER_BYTES: usize = 64 * 1024;
/// How long a node's hold on a pusher lasts unless renewed: longer than
/// one push (gateway timeout and two store writes), so a live node never
/// loses it mid-push; a node that died frees it after this.
pub const PUSHER_LEASE_MS: u64 = 60_000;
/// Queued notifications read per step of a pusher's delivery.
pub const PUSH_QUEUE_BATCH: usize = 16;
/// Pushes one pusher is given before the node turns to others (it comes
/// back at once if more are queued), so one busy pusher never holds a
/// delivery slot for long.
pub const MAX_PUSHES_PER_TURN: usize = 64;
/// Pushers whose last badge count a node remembers (to skip sending the
/// same count again); forgotten ones are simply sent again.
pub const MAX_REMEMBERED_BADGES: usize = 10_000;
/// Users whose badge update (after a read receipt) waits to be sent on a
/// node, and pushers of theirs waiting for it; past it new ones are
/// dropped (a badge is corrected by the next push).
pub const MAX_PENDING_BADGE_USERS: usize = 10_000;
/// Largest upload (spec "Content repository": larger ones are refused with
/// 413 `M_TOO_LARGE`), and the request body bound of the upload endpoints,
/// which stream to disk instead of holding the body. Configurable
/// (`media.max_upload_bytes`).
pub const MAX_UPLOAD_BYTES: u64 = 50 * 1024 * 1024;
/// Bytes of media one user may keep (403 `M_FORBIDDEN` past it, as the
/// spec says for a quota). Configurable (`media.max_bytes_per_user`).
pub const MAX_MEDIA_BYTES_PER_USER: u64 = 10 * 1024 * 1024 * 1024;
/// Media ids one user may hold without content (`POST
/// /_matrix/media/v1/create`; 429 `M_LIMIT_EXCEEDED` past it), and how long
/// one waits for its content (the spec recommends 24 hours).
pub const MAX_PENDING_MEDIA_PER_USER: usize = 10;
pub const PENDING_MEDIA_TTL_MS: u64 = 24 * 60 * 60 * 1000;
/// Longest `Content-Type` and file name kept with an upload, in bytes.
pub const MAX_MEDIA_CONTENT_TYPE_BYTES: usize = 255;
pub const MAX_MEDIA_FILE_NAME_BYTES: usize = 255;
/// Longest media id looked up (ours are 24 characters).
pub const MAX_MEDIA_ID_BYTES: usize = 255;
/// Longest a download waits for the content of a pending media id (the
/// spec's `timeout_ms`, default 20 s, which a server SHOULD bound).
pub const MAX_MEDIA_DOWNLOAD_WAIT_MS: u64 = 60_000;
/// Downloads of one node waiting for pending content at once; more are
/// answered `M_NOT_YET_UPLOADED` without waiting.
pub const MAX_MEDIA_DOWNLOAD_WAITERS: usize = 10_000;
/// Thumbnails: images of more pixels or bytes are not decoded (413
/// `M_TOO_LARGE`), a decoder may allocate at most this much, a thumbnail
/// box is at most this wide or high, at most this many images are
/// decoded at once per node (configurable,
/// `media.max_concurrent_thumbnails`), at most this many thumbnails wait
/// to be made (then 429), and a request waits at most this long for one
/// (then 503 with `Retry-After`: the thumbnail is still made and cached).
pub const MAX_THUMBNAIL_SOURCE_PIXELS: u64 = 40_000_000;
pub const MAX_THUMBNAIL_SOURCE_BYTES: u64 = 64 * 1024 * 1024;
pub const MAX_THUMBNAIL_DECODE_BYTES: u64 = 512 * 1024 * 1024;
pub const MAX_THUMBNAIL_DIMENSION: u32 = 2_048;
pub const MAX_CONCURRENT_THUMBNAILS: usize = 2;
pub const MAX_QUEUED_THUMBNAILS: usize = 256;
pub const THUMBNAIL_WAIT_MS: u64 = 30_000;
/// URL previews (off unless `media.url_preview`): the longest URL taken,
/// the bytes of a page read (the rest is never fetched) and of its image,
/// how long a fetch may take in all, the redirects followed (each one
/// checked again), fetches at once per node, previews cached per node
/// and for how long, and the OpenGraph properties kept per page and the
/// length of each.
pub const MAX_URL_PREVIEW_URL_BYTES: usize = 2_048;
pub const MAX_URL_PREVIEW_PAGE_BYTES: usize = 1024 * 1024;
pub const MAX_URL_PREVIEW_IMAGE_BYTES: u64 = 10 * 1024 * 1024;
pub const URL_PREVIEW_TIMEOUT_MS: u64 = 10_000;
pub const MAX_URL_PREVIEW_REDIRECTS: usize = 5;
pub const MAX_CONCURRENT_URL_PREVIEWS: usize = 16;
pub const URL_PREVIEW_CACHE_ENTRIES: usize = 1_000;
pub const URL_PREVIEW_CACHE_TTL_MS: u64 = 60 * 60 * 1000;
pub const MAX_OPENGRAPH_PROPERTIES: usize = 64;
pub const MAX_OPENGRAPH_VALUE_BYTES: usize = 2_048;

// Delayed events (MSC4140, `service::delayed_events`).

/// Delayed events one user may have scheduled at once, by default
/// (`delayed_events.max_per_user`; Synapse's
/// `msc4140_max_delayed_events_per_user` default). A call member holds
/// one per device and call.
pub const MAX_DELAYED_EVENTS_PER_USER: usize = 100;
/// The longest delay a client may ask for, by default
/// (`delayed_events.max_delay_ms`): a day, MSC4140's example. Element
/// Call asks for seconds; an SFU delegated the delayed leave for hours.
pub const MAX_EVENT_DELAY_MS: u64 = 24 * 60 * 60 * 1000;
/// Delayed events one listing answers, whatever the configured bound.
pub const MAX_DELAYED_EVENTS_LISTED: usize = 1_000;
/// How long an OpenID token (`/user/{userId}/openid/request_token`) is
/// valid: an hour, as Synapse and the spec's example give.
pub const OPENID_TOKEN_LIFETIME_MS: u64 = 60 * 60 * 1000;
/// Unexpired OpenID tokens a user holds at most; a new one pushes out
/// their oldest. A call join takes one or two.
pub const MAX_OPENID_TOKENS_PER_USER: usize = 100;
/// Largest LiveKit room name, participant identity or device id the
/// token service accepts from a client (its own are 43 characters).
pub const MAX_CALL_FIELD_BYTES: usize = 255;
/// Delayed leaves one user may have delegated to the token service at once
/// (`/delegate_delayed_leave`): one per call device.
pub const MAX_CALL_DELEGATIONS_PER_USER: usize = 16;
/// Delegated delayed leaves the process keeps at once.
pub const MAX_CALL_DELEGATIONS: usize = 16_384;
/// Participants of the built-in SFU the token service remembers as present
/// (the SFU's own bounds keep it far below this).
pub const MAX_SFU_PRESENCES: usize = 65_536;

// Thread subscriptions (MSC4306, MSC4308; `service::thread_subscriptions`).

/// Threads one user may hold a row for, subscribed or unsubscribed (an
/// unsubscription is kept so the user's other devices learn of it).
/// Replacing an existing row is always allowed; a new one past this is
/// 403 `M_FORBIDDEN`.
pub const MAX_THREAD_SUBSCRIPTIONS_PER_USER: usize = 50_000;
/// Changes sent in one page of `GET /unstable/io.element.msc4308/thread_subscriptions`
/// and in one sliding-sync `thread_subscriptions` extension: the default
/// when the client names none (the MSC's), and the most (Synapse's).
pub const DEFAULT_THREAD_SUBSCRIPTIONS_PAGE: usize = 100;
pub const MAX_THREAD_SUBSCRIPTIONS_PAGE: usize = 512;

// --- Federation (issue 16) ---

/// Largest answer read from another server (a `send_join` of a large room
/// is the largest the spec has); past it the request fails.
pub const MAX_FEDERATION_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
/// Largest request body another server may send (a transaction of 50 PDUs
/// and 100 EDUs fits many times over).
pub const MAX_FEDERATION_REQUEST_BYTES: usize = 8 * 1024 * 1024;
/// Other servers whose signing keys are kept in memory.
pub const MAX_CACHED_SERVER_KEYS: usize = 10_000;
/// How long this server's published key document says it is valid
/// (Synapse: a day); others re-fetch after it.
pub const SERVER_KEY_VALIDITY_MS: u64 = 24 * 60 * 60 * 1000;
/// After a failed key fetch, the server's keys are not asked for again
/// for this long (requests signed by it are refused meanwhile).
pub const SERVER_KEY_FAILURE_BACKOFF_MS: u64 = 60 * 1000;
/// Servers one notary query (`/_matrix/key/v2/query`) may name.
pub const MAX_NOTARY_QUERY_SERVERS: usize = 100;
/// How long an outbound federation request may take, whole.
pub const FEDERATION_REQUEST_TIMEOUT_MS: u64 = 60_000;
/// How long connecting to another server may take.
pub const FEDERATION_CONNECT_TIMEOUT_MS: u64 = 10_000;
// Federation server discovery (`service::server_discovery`).

/// Longest server name, in bytes, that federation discovery resolves: a DNS
/// name is at most 253 bytes, and with a `:port` and IPv6 brackets the
/// spec's grammar stays within 255 (appendices, "Server name").
pub const MAX_SERVER_NAME_BYTES: usize = 255;
/// Largest `/.well-known/matrix/server` body read; past it the fetch counts
/// as failed (Synapse allows 50 KiB). A delegation is one short string.
pub const MAX_WELL_KNOWN_BODY_BYTES: usize = 64 * 1024;
/// Redirects followed when fetching `/.well-known/matrix/server` (the spec
/// asks that 30x be followed and loops avoided).
pub const MAX_WELL_KNOWN_REDIRECTS: usize = 5;
/// Whole-request deadline of one `/.well-known/matrix/server` fetch.
pub const WELL_KNOWN_TIMEOUT_MS: u64 = 10_000;
/// Server names whose discovery (well-known answer, resolved destination,
/// SRV targets) is remembered at once; least recently used go first.
pub const MAX_SERVER_DISCOVERY_CACHE_ENTRIES: usize = 10_000;
/// PDUs in one inbound transaction (the spec's limit).
pub const MAX_TRANSACTION_PDUS: usize = 50;
/// EDUs in one inbound transaction (the spec's limit).
pub const MAX_TRANSACTION_EDUS: usize = 100;
/// Servers a join is tried through, in turn.
pub const MAX_FEDERATION_JOIN_SERVERS: usize = 5;
/// Servers a `timestamp_to_event` is asked of, in turn, when this
/// server's copy of the room may lack the history near the time.
pub const MAX_TIMESTAMP_TO_EVENT_SERVERS: usize = 3;
/// Rooms of other servers one `/hierarchy` request asks their servers
/// about (`GET /_matrix/federation/v1/hierarchy`), each through at most
/// [`MAX_HIERARCHY_SERVERS_PER_ROOM`] of its `via` servers.
pub const MAX_HIERARCHY_REMOTE_ROOMS_PER_REQUEST: usize = 10;
/// `via` servers a remote room of a hierarchy is asked through, in turn.
pub const MAX_HIERARCHY_SERVERS_PER_ROOM: usize = 3;
/// The time one `/hierarchy` request spends asking other servers in all;
/// rooms not reached by then are left out of the page.
pub const HIERARCHY_REMOTE_BUDGET_MS: u64 = 10_000;
/// State events (and, apart, auth chain events) a `send_join` hands out
/// or takes; a larger room needs partial-state joins (not built yet).
pub const MAX_JOIN_STATE_EVENTS: usize = 20_000;
/// How long a remote user's typing lasts unless their server renews it
/// (Synapse's federation timeout).
pub const FEDERATION_TYPING_TIMEOUT_MS: u64 = 30_000;
/// Events one `backfill` or `get_missing_events` answer holds, and event
/// ids one such request may name.
pub const MAX_FEDERATION_PAGE: usize = 100;
/// PDUs in one outbound transaction (spec: "Transactions" are limited to
/// 50 PDUs).
pub const MAX_PDUS_PER_TRANSACTION: usize = 50;
/// Servers the federation sender keeps a queue for; destinations found
/// beyond it are left out (and logged).
pub const MAX_FEDERATION_DESTINATIONS: usize = 4_096;
/// Destinations the sender reads for or sends to at once, per node.
pub const MAX_CONCURRENT_FEDERATION_SENDS: usize = 32;
/// The federation sender's first retry after a failed transaction; each
/// further failure doubles it, up to [`FEDERATION_RETRY_MAX_MS`].
pub const FEDERATION_RETRY_INITIAL_MS: u64 = 1_000;
pub const FEDERATION_RETRY_MAX_MS: u64 = 60 * 60 * 1000;
/// EDUs in one outbound transaction (spec: at most 100).
pub const MAX_EDUS_PER_TRANSACTION: usize = 100;
/// Bytes of EDU JSON in one outbound transaction (at least one EDU goes
/// whatever its size): with 50 PDUs of at most 64 KiB it stays within
/// [`MAX_FEDERATION_REQUEST_BYTES`].
pub const MAX_TRANSACTION_EDU_BYTES: usize = 4 * 1024 * 1024;
/// EDUs that must arrive (to-device, device-list and cross-signing
/// updates) kept per destination while it is unreachable; queueing more
/// drops the oldest (logged).
pub const MAX_EDU_OUTBOX_PER_DESTINATION: usize = 10_000;
/// How long such an EDU waits for its destination before it is dropped
/// (logged): a week, as long as a server is worth catching up with.
pub const MAX_EDU_OUTBOX_AGE_MS: u64 = 7 * 24 * 60 * 60 * 1000;
/// Typing and receipt transactions in flight at once (best effort; past
/// it a change is not sent).
pub const MAX_CONCURRENT_EDU_SENDS: usize = 64;
/// Requests one other server may have in flight here at once (past it,
/// 429); Synapse lets 3 per origin run and queues a few more.
pub const MAX_INBOUND_REQUESTS_PER_ORIGIN: usize = 32;
/// Events walked back to tell whether a received state event knew the
/// one in force (a fork); past it, it is taken as knowing it.
pub const MAX_ANCESTRY_WALK: usize = 1_000;

/// A room's history from before this server's join (federation
/// "Backfilling"): events kept per room (past it the history stops), rounds
/// of fetching one `/messages` page may wait for, how long each may take,
/// and servers asked in turn.
pub const MAX_HISTORY_EVENTS_PER_ROOM: u64 = 100_000;
pub const MAX_HISTORY_FETCH_ROUNDS: usize = 3;
pub const HISTORY_FETCH_TIMEOUT_MS: u64 = 10_000;
pub const MAX_HISTORY_SERVERS: usize = 3;

/// Events asked of a server (`get_missing_events`) to fill the gap before
/// an event it sent whose `prev_events` this server lacks.
pub const MAX_MISSING_EVENTS_FETCH: usize = 50;

/// Presence updates read from one `m.presence` EDU (the rest are dropped).
pub const MAX_PRESENCE_UPDATES_PER_EDU: usize = 1_000;
