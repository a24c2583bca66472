//! `timestamp_to_event` across servers (server-server API "Timestamp to
//! event", spec v1.19): served to servers in the room, and asked of them
//! when this server's copy of a room may lack the history near a time.

use chancery_proto::limits::MAX_TIMESTAMP_TO_EVENT_SERVERS;
use chancery_proto::ruma::api::Direction as RumaDirection;
use chancery_proto::ruma::api::federation::event::get_event_by_timestamp;
use chancery_proto::ruma::events::room::member::MembershipState;
use chancery_proto::ruma::{MilliSecondsSinceUnixEpoch, OwnedServerName, RoomId, ServerName, UInt, UserId};
use chancery_store::PositionRange;

use super::RoomFederation;
use crate::Error;

/// An event found near a time: its id and `origin_server_ts`.
pub type EventAtTs = (String, u64);

/// Of a local and a remote answer, the one closer to `ts_ms` (ties: the
/// local one, which this server can serve); an answer on the wrong side of
/// `ts_ms` for the direction does not count.
pub(crate) fn closer(ts_ms: u64, forward: bool, local: Option<EventAtTs>, remote: Option<EventAtTs>) -> Option<EventAtTs> {
    let fits = |e: &EventAtTs| if forward { e.1 >= ts_ms } else { e.1 <= ts_ms };
    let (local, remote) = (local.filter(fits), remote.filter(fits));
    match (local, remote) {
        (Some(l), Some(r)) => Some(if r.1.abs_diff(ts_ms) < l.1.abs_diff(ts_ms) { r } else { l }),
        (l, r) => l.or(r),
    }
}

impl RoomFederation {
    /// `GET /_matrix/federation/v1/timestamp_to_event/{roomId}`: the
    /// room's event closest to `ts_ms` in the direction, for a server
    /// with a user in the room (and let in by its ACL). Served from this
    /// server's copy of the room; the server's own history visibility
    /// is not applied (as for `/backfill`).
    pub async fn timestamp_to_event(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        ts_ms: u64,
        forward: bool,
    ) -> Result<EventAtTs, Error> {
        self.ensure_origin_in_room(origin, room_id).await?;
        let found = self.deps.relations.event_near_ts_within(room_id.as_str(), ts_ms, forward, &[PositionRange::ALL]).await?;
        let event = found.ok_or_else(|| Error::NotFound(format!("no event from {ts_ms} in that direction")))?;
        Ok((event.event_id, event.origin_server_ts))
    }

    /// Whether this server's copy of the room may lack part of its history:
    /// it joined a room another server created, so what came before the
    /// join is here only as state.
    pub async fn is_partly_local(&self, room_id: &RoomId) -> Result<bool, Error> {
        let Some(info) = self.deps.rooms.room(room_id.as_str()).await? else { return Ok(false) };
        Ok(UserId::parse(&info.creator).is_ok_and(|c| c.server_name() != self.deps.server_name))
    }

    /// Asks the other servers joined to the room (at most
    /// [`MAX_TIMESTAMP_TO_EVENT_SERVERS`], one after the other, each within
    /// the federation request timeout) for the event closest to `ts_ms`;
    /// the first answer on the right side of `ts_ms` is taken. `None` when
    /// none answers one.
    pub async fn remote_timestamp_to_event(
        &self,
        room_id: &RoomId,
        ts_ms: u64,
        forward: bool,
    ) -> Result<Option<EventAtTs>, Error> {
        let mut servers: Vec<OwnedServerName> = Vec::new();
        for member in self.deps.rooms.members_of_room(room_id.as_str()).await? {
            if member.membership != MembershipState::Join {
                continue;
            }
            let Ok(user) = UserId::parse(&member.user_id) else { continue };
            let server = user.server_name();
            if server != self.deps.server_name && !servers.iter().any(|s| s == server) {
                servers.push(server.to_owned());
                if servers.len() == MAX_TIMESTAMP_TO_EVENT_SERVERS {
                    break;
                }
            }
        }
        let dir = if forward { RumaDirection::Forward } else { RumaDirection::Backward };
        let ts = MilliSecondsSinceUnixEpoch(UInt::new_saturating(ts_ms));
        for server in servers {
            let request = get_event_by_timestamp::v1::Request::new(room_id.to_owned(), ts, dir);
            match self.deps.federation.send(&server, request).await {
                Ok(answer) => {
                    let found = (answer.event_id.to_string(), u64::from(answer.origin_server_ts.get()));
                    if closer(ts_ms, forward, None, Some(found.clone())).is_some() {
                        return Ok(Some(found));
                    }
                    tracing::info!(server = %server, room_id = %room_id, "timestamp_to_event: an answer on the wrong side of the time");
                }
                Err(e) => {
                    tracing::info!(server = %server, room_id = %room_id, error = %e, "timestamp_to_event over federation failed")
                }
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::closer;

    #[test]
    fn the_closer_answer_on_the_right_side_wins() {
        let e = |id: &str, ts: u64| Some((id.to_owned(), ts));
        for (ts, forward, local, remote, expected) in [
            (100, true, e("$l", 150), e("$r", 120), e("$r", 120)),
            (100, true, e("$l", 110), e("$r", 120), e("$l", 110)),
            (100, true, e("$l", 120), e("$r", 120), e("$l", 120)),
            (100, true, None, e("$r", 120), e("$r", 120)),
            (100, true, e("$l", 150), None, e("$l", 150)),
            (100, true, None, e("$r", 90), None),
            (100, true, e("$l", 150), e("$r", 90), e("$l", 150)),
            (100, false, e("$l", 50), e("$r", 90), e("$r", 90)),
            (100, false, e("$l", 100), e("$r", 90), e("$l", 100)),
            (100, false, None, e("$r", 110), None),
            (100, false, None, None, None),
        ] {
            assert_eq!(closer(ts, forward, local.clone(), remote.clone()), expected, "{ts} {forward} {local:?} {remote:?}");
        }
    }
}
