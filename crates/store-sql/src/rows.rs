//! Result rows read into domain types, once for both drivers. A backend
//! wraps its driver's row in a [`Row`] and hands it to these readers; the
//! SELECT lists they read live beside them, so a list and its reader
//! cannot drift apart.

use chancery_proto::ruma::events::room::guest_access::GuestAccess;
use chancery_proto::ruma::events::room::history_visibility::HistoryVisibility;
use chancery_proto::ruma::events::room::member::MembershipState;
use chancery_proto::ruma::room::JoinRuleKind;
use chancery_store::*;

use crate::u;

/// One result row of either driver, read by column index. `Error` is the
/// driver's, so a reader also works inside the driver's row callbacks.
pub trait Row {
    type Error;
    fn text(&self, column: usize) -> Result<String, Self::Error>;
    fn opt_text(&self, column: usize) -> Result<Option<String>, Self::Error>;
    fn int(&self, column: usize) -> Result<i64, Self::Error>;
    fn opt_int(&self, column: usize) -> Result<Option<i64>, Self::Error>;
    fn boolean(&self, column: usize) -> Result<bool, Self::Error>;
    fn float(&self, column: usize) -> Result<f64, Self::Error>;

    /// A count, position or timestamp (see [`u`]).
    fn uint(&self, column: usize) -> Result<u64, Self::Error> {
        self.int(column).map(u)
    }

    fn opt_uint(&self, column: usize) -> Result<Option<u64>, Self::Error> {
        Ok(self.opt_int(column)?.map(u))
    }
}

/// Columns of a [`StoredEvent`], for [`stored_event`]; `e` is `events`,
/// `r` the LEFT JOINed `redactions` ([`REDACTION_JOIN`]).
pub const EVENT_COLUMNS: &str = "e.event_id, e.room_id, e.event_type, e.state_key, e.sender, e.origin_server_ts, e.depth, \
     e.json, e.membership, e.stream_pos, r.redaction_event_id, e.txn_user, e.txn_device, e.txn_id";

/// Number of columns in [`EVENT_COLUMNS`]; extra columns of a query follow.
pub const EVENT_COLUMN_COUNT: usize = 14;

pub const REDACTION_JOIN: &str = "LEFT JOIN redactions r ON r.target_event_id = e.event_id";

pub fn stored_event<R: Row>(row: &R) -> Result<StoredEvent, R::Error> {
    let txn = match (row.opt_text(11)?, row.opt_text(12)?, row.opt_text(13)?) {
        (Some(user_id), Some(device_id), Some(txn_id)) => Some(TxnKey { user_id, device_id, txn_id }),
        _ => None,
    };
    Ok(StoredEvent {
        event_id: row.text(0)?,
        room_id: row.text(1)?,
        event_type: row.text(2)?,
        state_key: row.opt_text(3)?,
        sender: row.text(4)?,
        origin_server_ts: row.uint(5)?,
        depth: row.uint(6)?,
        json: row.text(7)?,
        membership: row.opt_text(8)?.map(MembershipState::from),
        stream_pos: row.uint(9)?,
        redacted_by: row.opt_text(10)?,
        txn,
    })
}

/// Columns (room_id, state_key, membership, event_id, from_pos) of a
/// member's current `room_state` row.
pub fn membership<R: Row>(row: &R) -> Result<Membership, R::Error> {
    Ok(Membership {
        room_id: row.text(0)?,
        user_id: row.text(1)?,
        membership: MembershipState::from(row.opt_text(2)?.unwrap_or_default()),
        event_id: row.text(3)?,
        stream_pos: row.uint(4)?,
    })
}

/// A state span row: (room_id, from_pos, to_pos, the user's membership or
/// NULL, the history visibility event's JSON or NULL).
pub fn visibility_span<R: Row>(row: &R) -> Result<StateSpan, R::Error> {
    let kind = match row.opt_text(3)? {
        Some(membership) => SpanKind::Membership(MembershipState::from(membership)),
        None => SpanKind::HistoryVisibility(row.opt_text(4)?.as_deref().and_then(history_visibility_of)),
    };
    Ok(StateSpan { room_id: row.text(0)?, from_pos: row.uint(1)?, to_pos: row.opt_uint(2)?, kind })
}

/// Columns of an [`Account`], for [`account`].
pub const ACCOUNT_COLUMNS: &str = "user_id, password_hash, is_admin, deactivated_ts, created_ts FROM accounts";

pub fn account<R: Row>(row: &R) -> Result<Account, R::Error> {
    Ok(Account {
        user_id: row.text(0)?,
        password_hash: row.opt_text(1)?,
        is_admin: row.boolean(2)?,
        deactivated: row.opt_int(3)?.is_some(),
        created_ts: row.uint(4)?,
    })
}

/// Columns of a [`Session`], for [`session`].
pub const SESSION_COLUMNS: &str = "d.user_id, d.device_id, a.is_admin, d.access_expires_ts, d.prev_refresh_token_hash FROM devices d JOIN accounts a ON a.user_id = d.user_id";

pub fn session<R: Row>(row: &R) -> Result<Session, R::Error> {
    Ok(Session {
        user_id: row.text(0)?,
        device_id: row.text(1)?,
        is_admin: row.boolean(2)?,
        access_expires_ts: row.opt_uint(3)?,
        previous_refresh_pending: row.opt_text(4)?.is_some(),
    })
}

/// Columns of a [`Device`], for [`device`].
pub const DEVICE_COLUMNS: &str = "user_id, device_id, display_name, created_ts FROM devices";

pub fn device<R: Row>(row: &R) -> Result<Device, R::Error> {
    Ok(Device { user_id: row.text(0)?, device_id: row.text(1)?, display_name: row.opt_text(2)?, created_ts: row.uint(3)? })
}

/// Columns of a [`RegistrationToken`], for [`registration_token`].
pub const TOKEN_COLUMNS: &str = "token, uses_allowed, completed, expiry_ts, created_ts, revoked_ts FROM registration_tokens";

pub fn registration_token<R: Row>(row: &R) -> Result<RegistrationToken, R::Error> {
    Ok(RegistrationToken {
        token: row.text(0)?,
        uses_allowed: row.opt_uint(1)?,
        completed: row.uint(2)?,
        expiry_ts: row.opt_uint(3)?,
        created_ts: row.uint(4)?,
        revoked_ts: row.opt_uint(5)?,
    })
}

/// Columns of a [`UiaSession`], for [`uia_session`].
pub const UIA_COLUMNS: &str = "session_id, operation, user_id, completed, registration_token, created_ts FROM uia_sessions";

/// The session with no stages yet, and its stages as stored (JSON), which
/// the backend parses into `completed`.
pub fn uia_session<R: Row>(row: &R) -> Result<(UiaSession, String), R::Error> {
    Ok((
        UiaSession {
            session_id: row.text(0)?,
            operation: row.text(1)?,
            user_id: row.opt_text(2)?,
            completed: Vec::new(),
            registration_token: row.opt_text(4)?,
            created_ts: row.uint(5)?,
        },
        row.text(3)?,
    ))
}

/// What an `account_data` row counts for in the user's byte quota and in
/// a batch of changes: `chancery_store::account_data_entry_bytes` in SQL
/// (the room id is '' for global data). Both dialects count bytes with
/// `octet_length`.
pub const ACCOUNT_DATA_ENTRY_BYTES: &str = "(octet_length(room_id) + octet_length(event_type) + octet_length(content))";

/// Columns (room_id, event_type, content, stream_pos) of `account_data`.
pub fn account_data_entry<R: Row>(row: &R) -> Result<AccountDataEntry, R::Error> {
    let room_id = row.text(0)?;
    Ok(AccountDataEntry {
        room_id: (!room_id.is_empty()).then_some(room_id),
        event_type: row.text(1)?,
        content: row.text(2)?,
        stream_pos: row.uint(3)?,
    })
}

/// Columns (room_id, user_id, receipt_type, thread_id, event_id, ts,
/// stream_pos) of `receipts`.
pub fn receipt<R: Row>(row: &R) -> Result<Receipt, R::Error> {
    let thread_id = row.text(3)?;
    Ok(Receipt {
        room_id: row.text(0)?,
        user_id: row.text(1)?,
        receipt_type: row.text(2)?,
        thread_id: (!thread_id.is_empty()).then_some(thread_id),
        event_id: row.text(4)?,
        ts: row.uint(5)?,
        stream_pos: row.uint(6)?,
    })
}

/// Columns of a [`RoomAlias`], for [`room_alias`].
pub const ALIAS_COLUMNS: &str = "alias, room_id, creator, created_ts FROM room_aliases";

pub fn room_alias<R: Row>(row: &R) -> Result<RoomAlias, R::Error> {
    Ok(RoomAlias { alias: row.text(0)?, room_id: row.text(1)?, creator: row.text(2)?, created_ts: row.uint(3)? })
}

/// Columns of a [`Report`], for [`report`].
pub const REPORT_SELECT: &str = "SELECT c.report_id, c.room_id, c.event_id, c.reporter, c.reason, c.score, c.created_ts, e.sender
     FROM content_reports c LEFT JOIN events e ON e.event_id = c.event_id";

pub fn report<R: Row>(row: &R) -> Result<Report, R::Error> {
    Ok(Report {
        report_id: row.uint(0)?,
        room_id: row.text(1)?,
        event_id: row.opt_text(2)?,
        reporter: row.text(3)?,
        reason: row.opt_text(4)?,
        score: row.opt_int(5)?,
        created_ts: row.uint(6)?,
        event_sender: row.opt_text(7)?,
    })
}

/// [`EVENT_COLUMNS`] and the thread's latest position.
pub fn thread_root<R: Row>(row: &R) -> Result<ThreadRoot, R::Error> {
    Ok(ThreadRoot { root: stored_event(row)?, latest_pos: row.uint(EVENT_COLUMN_COUNT)? })
}

/// [`EVENT_COLUMNS`] of the latest reply, then the root, the number of
/// replies and whether the viewer participated.
pub fn thread_summary<R: Row>(row: &R) -> Result<ThreadSummary, R::Error> {
    Ok(ThreadSummary {
        latest: stored_event(row)?,
        root: row.text(EVENT_COLUMN_COUNT)?,
        count: row.uint(EVENT_COLUMN_COUNT + 1)?,
        participated: row.boolean(EVENT_COLUMN_COUNT + 2)?,
    })
}

/// [`EVENT_COLUMNS`] of the edit, then the original's id.
pub fn edit<R: Row>(row: &R) -> Result<(String, StoredEvent), R::Error> {
    Ok((row.text(EVENT_COLUMN_COUNT)?, stored_event(row)?))
}

/// Columns (event_type, key, count).
pub fn annotation_count<R: Row>(row: &R) -> Result<AnnotationCount, R::Error> {
    Ok(AnnotationCount { event_type: row.text(0)?, key: row.text(1)?, count: row.uint(2)? })
}

/// [`EVENT_COLUMNS`] and the rank.
pub fn search_hit<R: Row>(row: &R) -> Result<SearchHit, R::Error> {
    Ok(SearchHit { event: stored_event(row)?, rank: row.float(EVENT_COLUMN_COUNT)? })
}

/// Columns (user_id, display name, avatar URL).
pub fn user_hit<R: Row>(row: &R) -> Result<UserHit, R::Error> {
    Ok(UserHit { user_id: row.text(0)?, displayname: row.opt_text(1)?, avatar_url: row.opt_text(2)? })
}

/// [`EVENT_COLUMNS`], then the notification's actions and highlight.
pub fn stored_notification<R: Row>(row: &R) -> Result<StoredNotification, R::Error> {
    Ok(StoredNotification {
        event: stored_event(row)?,
        actions_json: row.text(EVENT_COLUMN_COUNT)?,
        highlight: row.boolean(EVENT_COLUMN_COUNT + 1)?,
    })
}

/// Columns (user_id, push rule set or NULL).
pub fn member_push_rules<R: Row>(row: &R) -> Result<(String, Option<String>), R::Error> {
    Ok((row.text(0)?, row.opt_text(1)?))
}

/// As [`member_push_rules`], `None` for a user without rules of their own.
pub fn user_push_rules<R: Row>(row: &R) -> Result<Option<(String, String)>, R::Error> {
    let (user_id, rules) = member_push_rules(row)?;
    Ok(rules.map(|rules| (user_id, rules)))
}

/// Columns (thread root or NULL, stream_pos, highlight).
pub fn threaded_notification<R: Row>(row: &R) -> Result<ThreadedNotification, R::Error> {
    Ok(ThreadedNotification { thread_root: row.opt_text(0)?, stream_pos: row.uint(1)?, highlight: row.boolean(2)? })
}

/// Columns of a directory entry: room_id, joined members, then the
/// [`DIRECTORY_FIELDS`](crate::directory::DIRECTORY_FIELDS) in order.
pub fn public_room<R: Row>(row: &R) -> Result<PublicRoomEntry, R::Error> {
    Ok(PublicRoomEntry {
        room_id: row.text(0)?,
        joined_members: row.uint(1)?,
        name: row.opt_text(2)?,
        topic: row.opt_text(3)?,
        avatar_url: row.opt_text(4)?,
        canonical_alias: row.opt_text(5)?,
        join_rule: row.opt_text(6)?.map(JoinRuleKind::from),
        history_visibility: row.opt_text(7)?.map(HistoryVisibility::from),
        guest_access: row.opt_text(8)?.map(GuestAccess::from),
        room_type: row.opt_text(9)?,
    })
}

/// Columns of a [`BackupVersion`] in `backup_versions`, for
/// [`backup_version`].
pub const BACKUP_VERSION_COLUMNS: &str = "version, algorithm, auth_data, etag, key_count";

pub fn backup_version<R: Row>(row: &R) -> Result<BackupVersion, R::Error> {
    Ok(BackupVersion {
        version: row.int(0)?.to_string(),
        algorithm: row.text(1)?,
        auth_data: row.text(2)?,
        etag: row.int(3)?.to_string(),
        count: row.uint(4)?,
    })
}

/// Columns of a [`BackedUpKey`] in `backup_keys`, for [`backed_up_key`].
pub const BACKED_UP_KEY_COLUMNS: &str = "room_id, session_id, first_message_index, forwarded_count, is_verified, session_data";

pub fn backed_up_key<R: Row>(row: &R) -> Result<BackedUpKey, R::Error> {
    Ok(BackedUpKey {
        room_id: row.text(0)?,
        session_id: row.text(1)?,
        first_message_index: row.uint(2)?,
        forwarded_count: row.uint(3)?,
        is_verified: row.boolean(4)?,
        session_data: row.text(5)?,
    })
}

/// Columns of a [`KeySignature`] in `key_signatures`, for
/// [`key_signature`].
pub const KEY_SIGNATURE_COLUMNS: &str = "target_user_id, target_key_id, signer_user_id, signer_key_id, signature";

pub fn key_signature<R: Row>(row: &R) -> Result<KeySignature, R::Error> {
    Ok(KeySignature {
        target_user_id: row.text(0)?,
        target_key_id: row.text(1)?,
        signer_user_id: row.text(2)?,
        signer_key_id: row.text(3)?,
        signature: row.text(4)?,
    })
}

/// Columns of a [`RoomListEntry`], for [`room_list_entry`]: the user's
/// current membership row `s` of `room_state`, its room `r` (with whether
/// it is encrypted), and whether a leave was sent by someone else (its
/// event looked up for leaves only).
pub const ROOM_LIST_COLUMNS: &str =
    "s.room_id, s.membership, s.event_id, s.from_pos, r.bump_pos, r.last_pos, r.room_type, r.encrypted,
     CASE WHEN s.membership = 'leave' THEN EXISTS (
         SELECT 1 FROM events k WHERE k.event_id = s.event_id AND k.sender <> s.state_key) ELSE FALSE END";

/// A row of [`ROOM_LIST_COLUMNS`].
pub fn room_list_entry<R: Row>(row: &R) -> Result<RoomListEntry, R::Error> {
    Ok(RoomListEntry {
        room_id: row.text(0)?,
        membership: MembershipState::from(row.opt_text(1)?.unwrap_or_default()),
        membership_event_id: row.text(2)?,
        membership_pos: row.uint(3)?,
        bump_pos: row.uint(4)?,
        last_pos: row.uint(5)?,
        room_type: row.opt_text(6)?,
        encrypted: row.boolean(7)?,
        kicked: row.boolean(8)?,
    })
}

/// Columns of a [`HierarchyWalk`], for [`hierarchy_walk`].
pub const HIERARCHY_WALK_COLUMNS: &str =
    "SELECT token, user_id, room_id, suggested_only, max_depth, walk, created_ts FROM hierarchy_walks";

/// The walk with an empty frontier, and its frontier and visited rooms as
/// stored (JSON), which the backend reads with `read_walk_state`.
pub fn hierarchy_walk<R: Row>(row: &R) -> Result<(HierarchyWalk, String), R::Error> {
    Ok((
        HierarchyWalk {
            token: row.text(0)?,
            user_id: row.text(1)?,
            room_id: row.text(2)?,
            suggested_only: row.boolean(3)?,
            max_depth: u32::try_from(row.int(4)?).unwrap_or(u32::MAX),
            pending: Vec::new(),
            visited: Vec::new(),
            created_ts: row.uint(6)?,
        },
        row.text(5)?,
    ))
}

/// Columns of a [`Pusher`] in `pushers`, for [`pusher`].
pub const PUSHER_COLUMNS: &str = "id, user_id, device_id, app_id, pushkey, kind, app_display_name, device_display_name, \
     profile_tag, lang, data, pushkey_ts";

/// Number of columns in [`PUSHER_COLUMNS`]; extra columns of a query follow.
pub const PUSHER_COLUMN_COUNT: usize = 12;

pub fn pusher<R: Row>(row: &R) -> Result<Pusher, R::Error> {
    Ok(Pusher {
        id: row.uint(0)?,
        user_id: row.text(1)?,
        device_id: row.text(2)?,
        app_id: row.text(3)?,
        pushkey: row.text(4)?,
        kind: row.text(5)?,
        app_display_name: row.text(6)?,
        device_display_name: row.text(7)?,
        profile_tag: row.opt_text(8)?,
        lang: row.text(9)?,
        data_json: row.text(10)?,
        pushkey_ts: row.uint(11)?,
    })
}

/// Columns [`PUSHER_COLUMNS`] and [`CLAIMED_PUSHER_STATE`], for
/// [`claimed_pusher`].
pub const CLAIMED_PUSHER_STATE: &str = "delivered_pos, queued_pos, failures, retry_at_ts";

pub fn claimed_pusher<R: Row>(row: &R) -> Result<ClaimedPusher, R::Error> {
    let n = PUSHER_COLUMN_COUNT;
    Ok(ClaimedPusher {
        pusher: pusher(row)?,
        progress: DeliveryProgress {
            delivered_pos: row.uint(n)?,
            // A count the store wrote itself, from a u32.
            failures: u32::try_from(row.uint(n + 2)?).unwrap_or(u32::MAX),
            retry_at_ts: row.uint(n + 3)?,
        },
        queued_pos: row.uint(n + 1)?,
    })
}

/// [`EVENT_COLUMNS`], the notification's actions and highlight, then
/// whether the user has read it.
pub fn queued_notification<R: Row>(row: &R) -> Result<QueuedNotification, R::Error> {
    Ok(QueuedNotification { notification: stored_notification(row)?, read: row.boolean(EVENT_COLUMN_COUNT + 2)? })
}

/// Columns of a [`MediaRecord`], for [`media_record`].
pub const MEDIA_SELECT: &str = "SELECT media_id, uploader, created_ts, unused_expires_ts, content_type, file_name, \
     size_bytes, sha256, uploaded_ts, quarantined FROM media";

/// A row of [`MEDIA_SELECT`]. An item has content once its hash is set.
pub fn media_record<R: Row>(row: &R) -> Result<MediaRecord, R::Error> {
    let sha256 = row.opt_text(7)?;
    let content = match sha256 {
        Some(sha256) => Some(MediaContent {
            content_type: row.opt_text(4)?,
            file_name: row.opt_text(5)?,
            size_bytes: row.opt_uint(6)?.unwrap_or(0),
            sha256,
            uploaded_ts: row.opt_uint(8)?.unwrap_or(0),
        }),
        None => None,
    };
    Ok(MediaRecord {
        media_id: row.text(0)?,
        uploader: row.opt_text(1)?,
        created_ts: row.uint(2)?,
        unused_expires_ts: if content.is_some() { None } else { row.opt_uint(3)? },
        content,
        quarantined: row.boolean(9)?,
    })
}

/// Columns of a [`StoredThumbnail`] but its key, for [`stored_thumbnail`].
pub const THUMBNAIL_COLUMNS: &str = "content_type, size_bytes, sha256";

/// A row of [`THUMBNAIL_COLUMNS`] of the thumbnail made for `key`.
pub fn stored_thumbnail<R: Row>(row: &R, key: ThumbnailKey) -> Result<StoredThumbnail, R::Error> {
    Ok(StoredThumbnail { key, content_type: row.text(0)?, size_bytes: row.uint(1)?, sha256: row.text(2)? })
}

/// Columns of a [`DelayedEvent`], for [`delayed_event`].
pub const DELAYED_EVENT_COLUMNS: &str =
    "delay_id, user_id, device_id, room_id, event_type, state_key, content, delay_ms, send_ts, txn_id";

/// A delayed event read with [`DELAYED_EVENT_COLUMNS`], its content still
/// as stored (JSON text), which the backend parses with
/// [`delayed_event_content`].
pub fn delayed_event<R: Row>(row: &R) -> Result<(DelayedEvent, String), R::Error> {
    Ok((
        DelayedEvent {
            delay_id: row.text(0)?,
            user_id: row.text(1)?,
            device_id: row.text(2)?,
            room_id: row.text(3)?,
            event_type: row.text(4)?,
            state_key: row.opt_text(5)?,
            content: serde_json::Value::Null,
            delay_ms: row.uint(7)?,
            send_ts: row.uint(8)?,
            txn_id: row.opt_text(9)?,
        },
        row.text(6)?,
    ))
}

/// Puts the stored content into the event [`delayed_event`] read.
pub fn delayed_event_content((mut event, content): (DelayedEvent, String)) -> StoreResult<DelayedEvent> {
    event.content =
        serde_json::from_str(&content).map_err(|e| StoreError::Backend(format!("stored delayed event content: {e}")))?;
    Ok(event)
}
