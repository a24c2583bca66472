//! The search component: `POST /user_directory/search` and `POST /search`
//! (client-server API "User Directory" and "Server Side Search").

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use chancery_proto::ruma::events::room::member::MembershipState;

use chancery_proto::limits::{
    MAX_SEARCH_CONTEXT, MAX_SEARCH_FILTER_ROOMS, MAX_SEARCH_RESULTS, MAX_SEARCH_TERM_BYTES, MAX_USER_DIRECTORY_LIMIT,
};
use chancery_store::{AccountStore, ForgottenRoomStore, RoomStore, SearchOrder, SearchScope, SearchStore};
use serde::Deserialize;
use serde_json::{Map, Value as JsonValue, json};

use crate::rooms::{ClientEventOptions, EventFormatter, Visibility, format_token};
use crate::{AuthedUser, Error};

/// The `room_events` criteria of a `/search` request.
#[derive(Debug, Clone, Deserialize)]
pub struct RoomEventsCriteria {
    pub search_term: String,
    #[serde(default)]
    pub keys: Option<Vec<String>>,
    #[serde(default)]
    pub filter: Option<SearchFilter>,
    #[serde(default)]
    pub order_by: Option<String>,
    #[serde(default)]
    pub event_context: Option<EventContext>,
    #[serde(default)]
    pub include_state: bool,
    #[serde(default)]
    pub groupings: Option<Groupings>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct SearchFilter {
    pub rooms: Option<Vec<String>>,
    #[serde(default)]
    pub not_rooms: Vec<String>,
    pub limit: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EventContext {
    pub before_limit: Option<usize>,
    pub after_limit: Option<usize>,
    #[serde(default)]
    pub include_profile: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Groupings {
    #[serde(default)]
    pub group_by: Vec<GroupKey>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct GroupKey {
    pub key: String,
}

const KEYS: &[&str] = &["content.body", "content.name", "content.topic"];

/// Words of a search term: letters and digits, lowercase, at most 20.
fn words(term: &str) -> Vec<String> {
    term.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).take(20).collect()
}

/// What [`Search`] is built from: the store traits, components, clock
/// and randomness it uses, named where the server wires it.
pub struct SearchDeps {
    pub store: Arc<dyn SearchStore>,
    /// The searcher's rooms, and the events around results.
    pub rooms: Arc<dyn RoomStore>,
    /// Forgotten rooms are not searched.
    pub forgotten: Arc<dyn ForgottenRoomStore>,
    /// Profiles of the senders around results.
    pub accounts: Arc<dyn AccountStore>,
    pub visibility: Arc<Visibility>,
    pub formatter: Arc<EventFormatter>,
    /// The user directory finds every local user, not only those sharing
    /// a room with the searcher or in public rooms.
    pub search_all_users: bool,
}

/// Searching users and messages.
pub struct Search {
    deps: SearchDeps,
}

impl Search {
    pub fn new(deps: SearchDeps) -> Self {
        Self { deps }
    }

    /// `POST /user_directory/search`.
    pub async fn search_user_directory(&self, user: &AuthedUser, term: &str, limit: usize) -> Result<JsonValue, Error> {
        if term.len() > MAX_SEARCH_TERM_BYTES {
            return Err(Error::InvalidParam(format!("search terms are at most {MAX_SEARCH_TERM_BYTES} bytes")));
        }
        let limit = limit.clamp(1, MAX_USER_DIRECTORY_LIMIT);
        let term = term.trim().to_lowercase();
        let mut hits = self.deps.store.search_users(user.user_id.as_str(), &term, limit + 1, self.deps.search_all_users).await?;
        let limited = hits.len() > limit;
        hits.truncate(limit);
        let results: Vec<JsonValue> = hits
            .into_iter()
            .map(|h| {
                let mut r = json!({ "user_id": h.user_id });
                if let Some(name) = h.displayname {
                    r["display_name"] = json!(name);
                }
                if let Some(avatar) = h.avatar_url {
                    r["avatar_url"] = json!(avatar);
                }
                r
            })
            .collect();
        Ok(json!({ "results": results, "limited": limited }))
    }

    /// `POST /search` (category `room_events`; the only one the spec has).
    pub async fn search_room_events(
        &self,
        user: &AuthedUser,
        criteria: RoomEventsCriteria,
        next_batch: Option<&str>,
    ) -> Result<JsonValue, Error> {
        if criteria.search_term.len() > MAX_SEARCH_TERM_BYTES {
            return Err(Error::InvalidParam(format!("search terms are at most {MAX_SEARCH_TERM_BYTES} bytes")));
        }
        let keys: Vec<String> = match &criteria.keys {
            Some(keys) => {
                if let Some(bad) = keys.iter().find(|k| !KEYS.contains(&k.as_str())) {
                    return Err(Error::InvalidParam(format!("unknown search key {bad}")));
                }
                keys.clone()
            }
            None => KEYS.iter().map(|k| (*k).to_owned()).collect(),
        };
        let order = match criteria.order_by.as_deref() {
            None | Some("rank") => SearchOrder::Rank,
            Some("recent") => SearchOrder::Recent,
            Some(other) => return Err(Error::InvalidParam(format!("unknown order_by {other}"))),
        };
        let offset = match next_batch {
            Some(token) => token.parse::<usize>().map_err(|_| Error::InvalidParam("malformed next_batch".into()))?,
            None => 0,
        };
        let filter = criteria.filter.clone().unwrap_or_default();
        let limit = filter.limit.unwrap_or(10).clamp(1, MAX_SEARCH_RESULTS);
        if filter.rooms.as_ref().is_some_and(|r| r.len() > MAX_SEARCH_FILTER_ROOMS)
            || filter.not_rooms.len() > MAX_SEARCH_FILTER_ROOMS
        {
            return Err(Error::InvalidParam(format!("room filters list at most {MAX_SEARCH_FILTER_ROOMS} rooms")));
        }
        let wanted: Option<HashSet<&String>> = filter.rooms.as_ref().map(|r| r.iter().collect());
        let unwanted: HashSet<&String> = filter.not_rooms.iter().collect();
        // Rooms the user is or was in (spec "Server Side Search": results
        // must be visible to the user), minus forgotten ones; in each, only
        // the stretches history visibility lets them read, so the store's
        // page, count and offsets cover exactly what they may see.
        let memberships = self.deps.rooms.memberships_of_user(user.user_id.as_str()).await?;
        let forgotten: HashSet<String> =
            if memberships.iter().any(|m| matches!(m.membership, MembershipState::Leave | MembershipState::Ban)) {
                self.deps.forgotten.forgotten_rooms(user.user_id.as_str()).await?.into_iter().collect()
            } else {
                HashSet::new()
            };
        let mut left_at: HashMap<String, u64> = HashMap::new();
        let mut rooms: Vec<String> = Vec::new();
        for m in memberships {
            let readable = match m.membership {
                MembershipState::Join => true,
                MembershipState::Leave | MembershipState::Ban => !forgotten.contains(&m.room_id),
                _ => false,
            };
            if readable && wanted.as_ref().is_none_or(|w| w.contains(&m.room_id)) && !unwanted.contains(&m.room_id) {
                if m.membership != MembershipState::Join {
                    left_at.insert(m.room_id.clone(), m.stream_pos);
                }
                rooms.push(m.room_id);
            }
        }
        let words = words(&criteria.search_term);
        let (hits, count) = if words.is_empty() || rooms.is_empty() {
            (Vec::new(), 0)
        } else {
            let current = self.deps.rooms.current_stream_pos().await?;
            let scopes: Vec<SearchScope> = self
                .deps
                .visibility
                .read_access(&user.user_id, &rooms, 0, current)
                .await?
                .into_iter()
                .map(|(room_id, access)| SearchScope { room_id, ranges: access.visible_ranges() })
                .filter(|scope| !scope.ranges.is_empty())
                .collect();
            self.deps.store.search_events(&scopes, &words, &keys, order, offset, limit).await?
        };
        let viewer = ClientEventOptions::from(user);
        let events: Vec<_> = hits.iter().map(|h| h.event.clone()).collect();
        let formatted = self.deps.formatter.client_events(&events, &viewer).await?;
        let mut results = Vec::with_capacity(hits.len());
        for (hit, event) in hits.iter().zip(formatted) {
            let mut result = json!({ "rank": hit.rank, "result": event });
            if let Some(ctx) = &criteria.event_context {
                result["context"] = self.search_context(ctx, &hit.event, user, &viewer).await?;
            }
            results.push(result);
        }
        let mut body = json!({
            "results": results,
            "count": count,
            "highlights": words,
        });
        if (offset + hits.len()) < count as usize {
            body["next_batch"] = json!((offset + hits.len()).to_string());
        }
        if let Some(groupings) = &criteria.groupings {
            body["groups"] = group(&groupings.group_by, &hits, body.get("next_batch").cloned());
        }
        if criteria.include_state {
            let mut state = Map::new();
            let mut seen: Vec<&str> = hits.iter().map(|h| h.event.room_id.as_str()).collect();
            seen.sort_unstable();
            seen.dedup();
            for room in seen {
                // A former member gets the state as they left it.
                let events = self.deps.rooms.state_at(room, left_at.get(room).copied()).await?;
                state.insert(room.to_owned(), JsonValue::Array(self.deps.formatter.client_events(&events, &viewer).await?));
            }
            body["state"] = JsonValue::Object(state);
        }
        Ok(json!({ "search_categories": { "room_events": body } }))
    }

    async fn search_context(
        &self,
        ctx: &EventContext,
        event: &chancery_store::StoredEvent,
        user: &AuthedUser,
        viewer: &ClientEventOptions,
    ) -> Result<JsonValue, Error> {
        let before_limit = ctx.before_limit.unwrap_or(5).min(MAX_SEARCH_CONTEXT);
        let after_limit = ctx.after_limit.unwrap_or(5).min(MAX_SEARCH_CONTEXT);
        let pos = event.stream_pos;
        let current = self.deps.rooms.current_stream_pos().await?;
        let before = if before_limit == 0 {
            Vec::new()
        } else {
            self.deps.rooms.room_events(&event.room_id, 0, pos - 1, before_limit, true).await?
        };
        let after = if after_limit == 0 {
            Vec::new()
        } else {
            self.deps.rooms.room_events(&event.room_id, pos, current, after_limit, false).await?
        };
        let start = before.last().map_or(pos - 1, |e| e.stream_pos - 1);
        let end = after.last().map_or(pos, |e| e.stream_pos);
        // Tokens continue after what was read; only what the user may see
        // is shown.
        let before = self.deps.visibility.visible_events(&user.user_id, &event.room_id, before).await?;
        let after = self.deps.visibility.visible_events(&user.user_id, &event.room_id, after).await?;
        let mut context = json!({
            "events_before": self.deps.formatter.client_events(&before, viewer).await?,
            "events_after": self.deps.formatter.client_events(&after, viewer).await?,
            "start": format_token(start),
            "end": format_token(end),
        });
        if ctx.include_profile {
            let mut profiles = Map::new();
            for sender in before.iter().chain(after.iter()).map(|e| e.sender.as_str()).chain([event.sender.as_str()]) {
                if profiles.contains_key(sender) {
                    continue;
                }
                let profile = self.deps.accounts.profile(sender).await?;
                let mut info = Map::new();
                if let Some(name) = profile.get("displayname") {
                    info.insert("displayname".into(), name.clone());
                }
                if let Some(avatar) = profile.get("avatar_url") {
                    info.insert("avatar_url".into(), avatar.clone());
                }
                profiles.insert(sender.to_owned(), JsonValue::Object(info));
            }
            context["profile_info"] = JsonValue::Object(profiles);
        }
        Ok(context)
    }
}

/// `groups`: results partitioned by room or sender, in result order.
fn group(keys: &[GroupKey], hits: &[chancery_store::SearchHit], next_batch: Option<JsonValue>) -> JsonValue {
    let mut groups = Map::new();
    for key in keys {
        let mut by: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for hit in hits {
            let value = match key.key.as_str() {
                "room_id" => hit.event.room_id.clone(),
                "sender" => hit.event.sender.clone(),
                _ => continue,
            };
            by.entry(value).or_default().push(hit.event.event_id.clone());
        }
        let mut entries = Map::new();
        for (order, (value, results)) in by.into_iter().enumerate() {
            let mut group = json!({ "results": results, "order": order + 1 });
            if let Some(nb) = &next_batch {
                group["next_batch"] = nb.clone();
            }
            entries.insert(value, group);
        }
        groups.insert(key.key.clone(), JsonValue::Object(entries));
    }
    JsonValue::Object(groups)
}
