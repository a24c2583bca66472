//! The push component (client-server API "Push Notifications"): each
//! user's rule set (the spec's defaults until they change it), evaluated
//! for every member when an event is sent (the room writer asks), giving
//! notification and highlight counts and `/notifications`.
//!
//! In memory: the server's default rule sets of the users evaluated
//! lately, which depend on nothing but the user id.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use chancery_core::pdu::Pdu;

use chancery_proto::limits::{MAX_CACHED_DEFAULT_RULESETS, MAX_NOTIFICATIONS_LIMIT, MAX_UNREAD_COUNTED};
use chancery_proto::ruma::api::client::push::PushRule;
use chancery_proto::ruma::events::room::member::MembershipState;
use chancery_proto::ruma::push::{
    Action, AnyPushRule, FlattenedJson, InsertPushRuleError, NewPushRule, PushConditionPowerLevelsCtx, PushConditionRoomCtx,
    RemovePushRuleError, RuleKind, Ruleset,
};
use chancery_proto::ruma::room_version_rules::RoomVersionRules;
use chancery_proto::ruma::serde::Raw;
use chancery_proto::ruma::{OwnedUserId, RoomId, UInt, UserId};
use chancery_store::{NewNotification, PushStore, RoomStore, ThreadSubscriptionStore};
use hashlink::LruCache;
use serde_json::{Value as JsonValue, json};

use crate::clock::Clock;
use crate::notifier::Notifier;
use crate::nul::refuse_nul_in_json;
use crate::rooms::state::{POWER_KEYS, state_subset};
use crate::rooms::{ClientEventOptions, EventFormatter, StateMap, power_levels};
use crate::{AuthedUser, Error};

/// The server's default rules for the user. The two thread-subscription
/// rules (MSC4306's `postcontent` kind) are among them only when thread
/// subscriptions are on, as Synapse shows them only under
/// `msc4306_enabled`: without subscriptions every thread would count as
/// unsubscribed.
fn server_default(user_id: &UserId, thread_subscriptions: bool) -> Ruleset {
    let mut ruleset = Ruleset::server_default(user_id);
    if !thread_subscriptions {
        ruleset.postcontent.clear();
    }
    ruleset
}

/// A stored rule set, with the server's current default rules (whose
/// `enabled`/`actions` the user may have changed) brought up to date.
fn parse_ruleset(json: &str, user_id: &UserId, thread_subscriptions: bool) -> Result<Ruleset, Error> {
    let mut ruleset: Ruleset = serde_json::from_str(json).map_err(|e| Error::Internal(format!("stored push rules: {e}")))?;
    let mut defaults = server_default(user_id, thread_subscriptions);
    let mut postcontent = Ruleset::default();
    std::mem::swap(&mut postcontent.postcontent, &mut defaults.postcontent);
    ruleset.update_with_server_default(defaults);
    update_postcontent_defaults(&mut ruleset, postcontent);
    Ok(ruleset)
}

/// What ruma's `update_with_server_default` does for the other kinds, for
/// the `postcontent` kind it leaves alone: the current default rules
/// (those of `defaults.postcontent`), with the `enabled`/`actions` the
/// user gave them, after the user's own rules; default rules no longer
/// among the defaults (the switch turned off) are dropped.
fn update_postcontent_defaults(ruleset: &mut Ruleset, defaults: Ruleset) {
    let stored = std::mem::take(&mut ruleset.postcontent);
    ruleset.postcontent = stored.iter().filter(|r| !r.default).cloned().collect();
    for mut rule in defaults.postcontent {
        if let Some(old) = stored.get(rule.rule_id.as_str()) {
            rule.enabled = old.enabled;
            rule.actions = old.actions.clone();
        }
        ruleset.postcontent.insert(rule);
    }
}

/// The thread `content` replies in (`m.relates_to` of type `m.thread`).
fn thread_root_of(content: &JsonValue) -> Option<&str> {
    let relation = content.get("m.relates_to")?;
    (relation.get("rel_type")?.as_str()? == "m.thread").then(|| relation.get("event_id")?.as_str()).flatten()
}

/// What a request adds to a rule set, as JSON for [`refuse_nul_in_json`].
fn to_json(value: &impl serde::Serialize) -> Result<JsonValue, Error> {
    serde_json::to_value(value).map_err(|e| Error::Internal(e.to_string()))
}

/// The server's default rule set of the users evaluated lately. It depends
/// on nothing but the user id, so it never goes stale, and building it for
/// every member of a room for every message was a tenth of a send's CPU.
struct DefaultRulesets {
    cache: Mutex<LruCache<OwnedUserId, Arc<Ruleset>>>,
    thread_subscriptions: bool,
}

impl DefaultRulesets {
    fn new(thread_subscriptions: bool) -> Self {
        Self { cache: Mutex::new(LruCache::new(MAX_CACHED_DEFAULT_RULESETS)), thread_subscriptions }
    }

    fn of(&self, user_id: &UserId) -> Arc<Ruleset> {
        let lock = || self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ruleset) = lock().get(user_id) {
            return Arc::clone(ruleset);
        }
        let ruleset = Arc::new(server_default(user_id, self.thread_subscriptions));
        lock().insert(user_id.to_owned(), Arc::clone(&ruleset));
        ruleset
    }
}

/// What [`Push`] is built from: the store traits, components, clock
/// and randomness it uses, named where the server wires it.
pub struct PushDeps {
    pub store: Arc<dyn PushStore>,
    pub rooms: Arc<dyn RoomStore>,
    pub formatter: Arc<EventFormatter>,
    pub notifier: Arc<Notifier>,
    /// Decides which notifications are old.
    pub clock: Arc<dyn Clock>,
    /// How long notifications are kept.
    pub notification_retention_ms: u64,
    /// Who follows which thread, when thread subscriptions (MSC4306) are
    /// on: a reply in a thread then notifies its subscribers by the
    /// `.io.element.msc4306.rule.subscribed_thread` rule and nobody else
    /// by `unsubscribed_thread` (but mentions and rules of higher kinds).
    pub thread_subscriptions: Option<Arc<dyn ThreadSubscriptionStore>>,
}

/// Push rules and notifications.
pub struct Push {
    deps: PushDeps,
    default_rulesets: DefaultRulesets,
}

impl Push {
    pub fn new(deps: PushDeps) -> Self {
        let default_rulesets = DefaultRulesets::new(deps.thread_subscriptions.is_some());
        Self { deps, default_rulesets }
    }

    /// The user's rule set: what they stored, or the server defaults.
    pub async fn push_ruleset(&self, user_id: &UserId) -> Result<Ruleset, Error> {
        match self.deps.store.push_rules(user_id.as_str()).await? {
            Some(json) => parse_ruleset(&json, user_id, self.deps.thread_subscriptions.is_some()),
            None => Ok(server_default(user_id, self.deps.thread_subscriptions.is_some())),
        }
    }

    async fn store_push_ruleset(&self, user_id: &UserId, ruleset: &Ruleset) -> Result<(), Error> {
        let json = serde_json::to_string(ruleset).map_err(|e| Error::Internal(e.to_string()))?;
        // The rule set is account data and is read for every event the user
        // could be notified of: it gets the account-data size limit.
        if json.len() > chancery_proto::limits::MAX_ACCOUNT_DATA_BYTES {
            return Err(Error::TooLarge(format!(
                "push rules are limited to {} bytes in all",
                chancery_proto::limits::MAX_ACCOUNT_DATA_BYTES
            )));
        }
        self.deps.store.set_push_rules(user_id.as_str(), &json, crate::account_data::LIMITS).await?;
        self.deps.notifier.user(user_id.as_str());
        Ok(())
    }

    /// Who `pdu` notifies: every joined member but the sender (and the
    /// target of an invite), by their own push rules. `auth_state` is the
    /// state `pdu` was authorised against (its create and power levels
    /// events are used from there when present).
    pub(crate) async fn evaluate(
        &self,
        room_id: &RoomId,
        pdu: &Pdu,
        rules: &RoomVersionRules,
        auth_state: &StateMap,
    ) -> Result<Vec<NewNotification>, Error> {
        let is_member_event = pdu.event_type.to_string() == "m.room.member";
        let invitee = is_member_event.then(|| pdu.state_key.clone()).flatten().filter(|_| {
            pdu.content_json().get("membership").and_then(|m| m.as_str()).map(MembershipState::from)
                == Some(MembershipState::Invite)
        });
        let (targets, stored, joined) = if is_member_event {
            // Membership changes notify nobody under the default rules (but
            // invites of the target): only members with rules of their own
            // and the invitee are evaluated, found without reading the
            // member list, so a join to a large room costs what one to a
            // small room does.
            let mut stored: std::collections::HashMap<String, String> =
                self.deps.store.push_rules_in_room(room_id.as_str()).await?.into_iter().collect();
            if let Some(invitee) = invitee.as_ref().filter(|i| !stored.contains_key(*i)) {
                stored.extend(self.deps.store.push_rules_of(std::slice::from_ref(invitee)).await?);
            }
            let targets: Vec<String> = stored
                .keys()
                .cloned()
                .chain(invitee.clone())
                .filter(|u| u != pdu.sender.as_str())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            if targets.is_empty() {
                return Ok(Vec::new());
            }
            let joined = self.deps.rooms.member_summary(room_id.as_str(), "", 0).await?.joined;
            (targets, stored, joined)
        } else {
            let members = self.deps.store.joined_members_with_push_rules(room_id.as_str()).await?;
            let joined = members.len() as u64;
            let mut stored = std::collections::HashMap::new();
            let mut targets = Vec::with_capacity(members.len());
            for (user_id, rules) in members.into_iter().filter(|(u, _)| u != pdu.sender.as_str()) {
                if let Some(rules) = rules {
                    stored.insert(user_id.clone(), rules);
                }
                targets.push(user_id);
            }
            if targets.is_empty() {
                return Ok(Vec::new());
            }
            (targets, stored, joined)
        };
        let power = if POWER_KEYS.iter().all(|k| auth_state.contains_key(k)) {
            power_levels(auth_state, rules)?
        } else {
            power_levels(&state_subset(&*self.deps.rooms, room_id, &POWER_KEYS).await?, rules)?
        };
        let power_ctx = PushConditionPowerLevelsCtx::from(power);
        let event: Raw<JsonValue> = Raw::from_json_string(pdu.json.clone()).map_err(|e| Error::Internal(e.to_string()))?;
        // Flattened once for every member (ruma's `get_actions` would
        // flatten it again for each).
        let event = FlattenedJson::from_raw(&event);
        let member_count = UInt::try_from(joined).unwrap_or(UInt::MAX);
        // A thread's subscribers, read once for all members (Synapse's
        // `get_subscribers_to_thread`).
        let mut thread_subscribers: Option<HashSet<String>> = None;
        if let Some(store) = &self.deps.thread_subscriptions
            && let Some(root) = thread_root_of(&pdu.content_json())
        {
            thread_subscribers = Some(store.thread_subscribers(room_id.as_str(), root).await?.into_iter().collect());
        }
        let mut out = Vec::new();
        for target in targets {
            let Ok(user_id) = UserId::parse(target.as_str()) else { continue };
            let (ruleset, display_name) = match stored.get(&target) {
                Some(json) => {
                    // Only a rule of the user's own can ask for the display
                    // name (the defaults use intentional mentions), so it is
                    // looked up only then.
                    let name = if json.contains("contains_display_name") {
                        self.member_display_name(room_id, &user_id).await?
                    } else {
                        user_id.localpart().to_owned()
                    };
                    let ruleset = parse_ruleset(json, &user_id, self.deps.thread_subscriptions.is_some()).map(Arc::new);
                    (ruleset.unwrap_or_else(|_| self.default_rulesets.of(&user_id)), name)
                }
                None => (self.default_rulesets.of(&user_id), user_id.localpart().to_owned()),
            };
            let mut ctx = PushConditionRoomCtx::new(room_id.to_owned(), member_count, user_id.clone(), display_name)
                .with_power_levels(power_ctx.clone());
            if let Some(subscribers) = &thread_subscribers {
                let subscribed = subscribers.contains(&target);
                ctx = ctx.with_has_thread_subscription_fn(move |_root| Box::pin(std::future::ready(subscribed)));
            }
            let mut actions: &[Action] = &[];
            for rule in ruleset.iter() {
                if rule.applies(&event, &ctx).await {
                    actions = rule.actions();
                    break;
                }
            }
            if actions.iter().any(Action::should_notify) {
                out.push(NewNotification {
                    user_id: target,
                    actions_json: serde_json::to_string(actions).map_err(|e| Error::Internal(e.to_string()))?,
                    highlight: actions.iter().any(Action::is_highlight),
                });
            }
        }
        Ok(out)
    }

    /// The user's display name in the room (member event), else the
    /// localpart.
    async fn member_display_name(&self, room_id: &RoomId, user_id: &UserId) -> Result<String, Error> {
        let member = self.deps.rooms.state_event(room_id.as_str(), "m.room.member", user_id.as_str(), None).await?;
        let name = member
            .and_then(|e| serde_json::from_str::<JsonValue>(&e.json).ok())
            .and_then(|v| v["content"]["displayname"].as_str().map(str::to_owned));
        Ok(name.unwrap_or_else(|| user_id.localpart().to_owned()))
    }

    /// `GET /notifications`.
    pub async fn list_notifications(
        &self,
        user: &AuthedUser,
        from: Option<&str>,
        limit: usize,
        only_highlight: bool,
    ) -> Result<JsonValue, Error> {
        let before =
            from.map(|f| f.parse::<u64>().map_err(|_| Error::InvalidParam("malformed from token".into()))).transpose()?;
        let limit = limit.clamp(1, MAX_NOTIFICATIONS_LIMIT);
        let found = self.deps.store.notifications(user.user_id.as_str(), before, limit, only_highlight).await?;
        let viewer = ClientEventOptions::from(user);
        let events: Vec<_> = found.iter().map(|n| n.event.clone()).collect();
        let formatted = self.deps.formatter.client_events(&events, &viewer).await?;
        let mut notifications = Vec::with_capacity(found.len());
        for (n, event) in found.iter().zip(formatted) {
            let read_up_to = self.read_position(&user.user_id, &n.event.room_id).await?;
            notifications.push(json!({
                "actions": serde_json::from_str::<JsonValue>(&n.actions_json).unwrap_or(JsonValue::Array(vec![])),
                "event": event,
                "read": n.event.stream_pos <= read_up_to,
                "room_id": n.event.room_id,
                "ts": n.event.origin_server_ts,
            }));
        }
        let mut body = json!({ "notifications": notifications });
        if found.len() == limit
            && let Some(last) = found.last()
        {
            body["next_token"] = json!(last.event.stream_pos.to_string());
        }
        Ok(body)
    }

    /// Up to where the user has read a room: their read receipt, or their
    /// latest own event (sending implies reading), whichever is later.
    async fn read_position(&self, user_id: &UserId, room_id: &str) -> Result<u64, Error> {
        Ok(self.deps.store.read_up_to(room_id, user_id.as_str()).await?)
    }

    /// `unread_notifications` and `unread_thread_notifications` of a room
    /// when the client asked for per-thread counts (spec "Receiving
    /// notifications", threaded read receipts): an unthreaded receipt (or
    /// the user's own newest event) reads everything up to it, a `main`
    /// receipt the main timeline, a thread's receipt that thread.
    pub(crate) async fn unread_counts_by_thread(&self, user_id: &UserId, room_id: &str) -> Result<(JsonValue, JsonValue), Error> {
        let (receipts, own) = self.deps.store.read_positions(user_id.as_str(), room_id).await?;
        let of = |thread: &str| receipts.iter().find(|(t, _)| t == thread).map_or(0, |(_, p)| *p);
        let unthreaded = own.max(of(""));
        let main = unthreaded.max(of("main"));
        let rows =
            self.deps.store.unread_notifications_by_thread(user_id.as_str(), room_id, unthreaded, MAX_UNREAD_COUNTED).await?;
        let (mut main_counts, mut threads) = ((0u64, 0u64), std::collections::BTreeMap::<String, (u64, u64)>::new());
        for row in rows {
            let (read, counts) = match &row.thread_root {
                None => (main, &mut main_counts),
                Some(root) => (unthreaded.max(of(root)), threads.entry(root.clone()).or_default()),
            };
            if row.stream_pos > read {
                counts.0 += 1;
                counts.1 += u64::from(row.highlight);
            }
        }
        let per_thread: serde_json::Map<String, JsonValue> = threads
            .into_iter()
            .filter(|(_, (n, _))| *n > 0)
            .map(|(root, (n, h))| (root, json!({ "notification_count": n, "highlight_count": h })))
            .collect();
        Ok((json!({ "notification_count": main_counts.0, "highlight_count": main_counts.1 }), JsonValue::Object(per_thread)))
    }

    /// `unread_notifications` of a room in `/sync`.
    pub(crate) async fn unread_counts(&self, user_id: &UserId, room_id: &str) -> Result<JsonValue, Error> {
        let read = self.read_position(user_id, room_id).await?;
        let (notifications, highlights) = self.deps.store.notification_counts(user_id.as_str(), room_id, read).await?;
        Ok(json!({ "notification_count": notifications, "highlight_count": highlights }))
    }
}

/// Editing one's rule set (`/pushrules/global/{kind}/{ruleId}`).
impl Push {
    pub async fn push_rule(&self, user: &AuthedUser, kind: RuleKind, rule_id: &str) -> Result<AnyPushRule, Error> {
        let ruleset = self.push_ruleset(&user.user_id).await?;
        ruleset.get(kind, rule_id).map(|r| r.to_owned()).ok_or_else(|| Error::NotFound("no such push rule".into()))
    }

    pub async fn set_push_rule(
        &self,
        user: &AuthedUser,
        rule: NewPushRule,
        before: Option<&str>,
        after: Option<&str>,
    ) -> Result<(), Error> {
        let mut ruleset = self.push_ruleset(&user.user_id).await?;
        let (kind, rule_id) = (rule.kind(), rule.rule_id().to_owned());
        ruleset.insert(rule, after, before).map_err(|e| match e {
            InsertPushRuleError::UnknownRuleId => Error::NotFound(e.to_string()),
            e => Error::InvalidParam(e.to_string()),
        })?;
        // The new rule as it will be stored (its id, pattern, conditions and
        // actions); rules stored before this check do not block edits.
        if let Some(inserted) = ruleset.get(kind, &rule_id) {
            refuse_nul_in_json(&to_json(&PushRule::from(inserted.to_owned()))?, "push rules")?;
        }
        self.store_push_ruleset(&user.user_id, &ruleset).await
    }

    pub async fn delete_push_rule(&self, user: &AuthedUser, kind: RuleKind, rule_id: &str) -> Result<(), Error> {
        let mut ruleset = self.push_ruleset(&user.user_id).await?;
        ruleset.remove(kind, rule_id).map_err(|e| match e {
            RemovePushRuleError::NotFound => Error::NotFound(e.to_string()),
            e => Error::InvalidParam(e.to_string()),
        })?;
        self.store_push_ruleset(&user.user_id, &ruleset).await
    }

    pub async fn set_push_rule_enabled(
        &self,
        user: &AuthedUser,
        kind: RuleKind,
        rule_id: &str,
        enabled: bool,
    ) -> Result<(), Error> {
        let mut ruleset = self.push_ruleset(&user.user_id).await?;
        ruleset.set_enabled(kind, rule_id, enabled).map_err(|e| Error::NotFound(e.to_string()))?;
        self.store_push_ruleset(&user.user_id, &ruleset).await
    }

    pub async fn set_push_rule_actions(
        &self,
        user: &AuthedUser,
        kind: RuleKind,
        rule_id: &str,
        actions: Vec<Action>,
    ) -> Result<(), Error> {
        refuse_nul_in_json(&to_json(&actions)?, "push rule actions")?;
        let mut ruleset = self.push_ruleset(&user.user_id).await?;
        ruleset.set_actions(kind, rule_id, actions).map_err(|e| Error::NotFound(e.to_string()))?;
        self.store_push_ruleset(&user.user_id, &ruleset).await
    }
}

/// Users whose old notifications one store call deletes.
const PRUNE_USERS_PER_CALL: usize = 64;

impl Push {
    /// Deletes the notifications older than the retention, read or not
    /// (unread counts cover the retention), a few users at a time. Returns
    /// the rows deleted.
    pub async fn prune_notifications(&self) -> Result<u64, Error> {
        let before_ts = self.deps.clock.now_ms().saturating_sub(self.deps.notification_retention_ms);
        let (mut total, mut after) = (0, None::<String>);
        loop {
            let (deleted, last) = self.deps.store.prune_notifications(before_ts, after.as_deref(), PRUNE_USERS_PER_CALL).await?;
            total += deleted;
            match last {
                // Each call moves past the users it looked at: the pass ends.
                Some(last) => after = Some(last),
                None => return Ok(total),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_rulesets_are_each_users_own_and_bounded() {
        let cache = DefaultRulesets::new(false);
        let alice = UserId::parse("@alice:x").unwrap();
        let first = cache.of(&alice);
        assert!(Arc::ptr_eq(&first, &cache.of(&alice)), "built once");
        let json = |r: &Ruleset| serde_json::to_value(r).unwrap();
        assert_eq!(json(&first), json(&server_default(&alice, false)));
        let bob = UserId::parse("@bob:x").unwrap();
        assert_eq!(json(&cache.of(&bob)), json(&server_default(&bob, false)));
        assert_ne!(json(&cache.of(&bob)), json(&first), "the defaults name their user");
        for n in 0..MAX_CACHED_DEFAULT_RULESETS + 10 {
            cache.of(&UserId::parse(format!("@u{n}:x")).unwrap());
        }
        assert_eq!(cache.cache.lock().unwrap().len(), MAX_CACHED_DEFAULT_RULESETS);
        assert!(!Arc::ptr_eq(&first, &cache.of(&alice)), "the least recently used went first");
    }

    #[test]
    fn thread_subscription_rules_are_defaults_only_when_on() {
        let alice = UserId::parse("@alice:x").unwrap();
        let ids = |r: &Ruleset| r.postcontent.iter().map(|r| r.rule_id.clone()).collect::<Vec<_>>();
        assert!(ids(&server_default(&alice, false)).is_empty());
        assert_eq!(
            ids(&server_default(&alice, true)),
            [".io.element.msc4306.rule.unsubscribed_thread", ".io.element.msc4306.rule.subscribed_thread"]
        );
        // A rule set stored before they existed gets them.
        let stored = serde_json::to_string(&server_default(&alice, false)).unwrap();
        let with = parse_ruleset(&stored, &alice, true).unwrap();
        assert_eq!(ids(&with), ids(&server_default(&alice, true)));
        // The user's changes to them are kept, and they go when turned off.
        let mut changed = with.clone();
        let id = ".io.element.msc4306.rule.subscribed_thread";
        changed.set_enabled(RuleKind::PostContent, id, false).unwrap();
        let stored = serde_json::to_string(&changed).unwrap();
        let kept = parse_ruleset(&stored, &alice, true).unwrap();
        assert_eq!(ids(&kept), ids(&with));
        assert!(!kept.postcontent.get(id).unwrap().enabled);
        assert!(ids(&parse_ruleset(&stored, &alice, false).unwrap()).is_empty());
    }

    #[test]
    fn thread_roots_come_from_thread_relations_only() {
        let root = |content: JsonValue| thread_root_of(&content).map(str::to_owned);
        assert_eq!(root(json!({"m.relates_to": {"rel_type": "m.thread", "event_id": "$root"}})).as_deref(), Some("$root"));
        assert_eq!(root(json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": "$root"}})), None);
        assert_eq!(root(json!({"m.relates_to": {"rel_type": "m.thread"}})), None);
        assert_eq!(root(json!({"body": "hi"})), None);
        assert_eq!(root(JsonValue::Null), None);
    }
}
