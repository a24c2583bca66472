//! State resolution for forked rooms: room versions 2–11 use algorithm v2,
//! room version 12 its revision v2.1 (empty state for the first pass of
//! iterative auth checks, and the conflicted state subgraph), both through
//! `ruma-state-res` (spec "Room versions", `rooms/v2` and `rooms/v12`,
//! "State resolution").
//!
//! The single-server write path never forks: a send is built on the room's
//! forward extremities and retried if another writer moved them. Forks
//! arrive with federation, whose events name several `prev_events`; the
//! state before such an event is the resolution of the states after each.
//! This module is that computation, pure: the caller hands in the state
//! maps at each fork tip and a way to fetch events, and gets the resolved
//! state map back.
//!
//! Everything it loads is bounded: at most [`MAX_STATE_RES_FORKS`] state
//! maps and [`MAX_STATE_RES_EVENTS`] distinct events (the forks' state and
//! their auth chains, walked through `auth_events`). A missing event, an
//! event of another room, or a chain past the bound is an error, never a
//! guess and never a panic.

use std::collections::{BTreeMap, HashMap, HashSet};

use chancery_proto::limits::{MAX_STATE_RES_EVENTS, MAX_STATE_RES_FORKS};
use chancery_proto::ruma::events::StateEventType;
use chancery_proto::ruma::room_version_rules::RoomVersionRules;
use chancery_proto::ruma::state_res;
use chancery_proto::ruma::state_res::utils::event_id_set::EventIdSet;
use chancery_proto::ruma::{EventId, OwnedEventId, OwnedRoomId};

use crate::pdu::Pdu;

/// A room state: `(event type, state key)` to event id. Ordered, so that
/// what is built from it does not depend on hashing.
pub type StateMap = BTreeMap<(StateEventType, String), OwnedEventId>;

#[derive(Debug, thiserror::Error)]
pub enum StateResError {
    #[error("this room version does not resolve state with algorithm v2")]
    UnsupportedVersion,
    #[error("more than {MAX_STATE_RES_FORKS} state maps to resolve")]
    TooManyForks,
    #[error("event {0} is not available")]
    MissingEvent(OwnedEventId),
    #[error("resolving needs more than {0} events")]
    TooLarge(usize),
    #[error("event {0} belongs to another room")]
    ForeignEvent(OwnedEventId),
    #[error("state entry ({0}, {1:?}) names event {2}, whose type or state key differs")]
    WrongKey(StateEventType, String, OwnedEventId),
    #[error("state resolution failed: {0}")]
    Resolution(String),
}

/// Resolves the states at the tips of a forked room into one.
///
/// `forks` are the state maps after each tip; `fetch` returns an event of
/// the room by id (from the store, or from a batch received over
/// federation). Every event of the forks and of their auth chains must be
/// available.
pub fn resolve_forks(
    rules: &RoomVersionRules,
    forks: &[StateMap],
    fetch: impl Fn(&EventId) -> Option<Pdu>,
) -> Result<StateMap, StateResError> {
    resolve_forks_within(rules, forks, fetch, MAX_STATE_RES_EVENTS)
}

/// [`resolve_forks`] loading at most `max_events` events.
fn resolve_forks_within(
    rules: &RoomVersionRules,
    forks: &[StateMap],
    fetch: impl Fn(&EventId) -> Option<Pdu>,
    max_events: usize,
) -> Result<StateMap, StateResError> {
    let v2_rules = rules.state_res.v2_rules().ok_or(StateResError::UnsupportedVersion)?;
    if forks.len() > MAX_STATE_RES_FORKS {
        return Err(StateResError::TooManyForks);
    }
    let mut pool = Pool { fetch, events: HashMap::new(), room_id: None, max_events };
    for fork in forks {
        for ((event_type, state_key), id) in fork {
            let pdu = pool.load(id)?;
            if pdu.event_type.to_string() != event_type.to_string() || pdu.state_key.as_deref() != Some(state_key.as_str()) {
                return Err(StateResError::WrongKey(event_type.clone(), state_key.clone(), id.clone()));
            }
        }
    }
    // Since v12 the create event is no auth event: it is found through the
    // room id, which is its reference hash.
    if rules.authorization.room_create_event_id_as_room_id
        && let Some(room_id) = pool.room_id.clone()
    {
        let create_id = EventId::parse(format!("${}", room_id.strip_sigil()))
            .map_err(|e| StateResError::Resolution(format!("room id {room_id}: {e}")))?;
        pool.load(&create_id)?;
    }
    let auth_chains = forks.iter().map(|fork| pool.auth_chain(fork)).collect::<Result<Vec<_>, _>>()?;

    let events = &pool.events;
    let fork_maps: Vec<state_res::StateMap<OwnedEventId>> =
        forks.iter().map(|fork| fork.iter().map(|(k, id)| (k.clone(), id.clone())).collect()).collect();
    let resolved = state_res::resolve(
        &rules.authorization,
        v2_rules,
        fork_maps.iter(),
        auth_chains,
        |id| events.get(id),
        |conflicted| {
            let subgraph =
                conflicted_subgraph(conflicted.values().flatten(), |id| events.get(id).map(|p| p.auth_events.as_slice()));
            Some(subgraph.into_iter().collect())
        },
    )
    .map_err(|e| StateResError::Resolution(e.to_string()))?;
    Ok(resolved.into_iter().collect())
}

/// The events loaded for one resolution, all of one room.
struct Pool<F> {
    fetch: F,
    events: HashMap<OwnedEventId, Pdu>,
    room_id: Option<OwnedRoomId>,
    max_events: usize,
}

impl<F: Fn(&EventId) -> Option<Pdu>> Pool<F> {
    fn load(&mut self, id: &EventId) -> Result<&Pdu, StateResError> {
        if !self.events.contains_key(id) {
            if self.events.len() >= self.max_events {
                return Err(StateResError::TooLarge(self.max_events));
            }
            let mut pdu =
                (self.fetch)(id).filter(|p| p.event_id == id).ok_or_else(|| StateResError::MissingEvent(id.to_owned()))?;
            let room_id = pdu.room_id_or_derived().map_err(|_| StateResError::ForeignEvent(id.to_owned()))?;
            match &self.room_id {
                Some(known) if *known != room_id => return Err(StateResError::ForeignEvent(id.to_owned())),
                Some(_) => {}
                None => self.room_id = Some(room_id),
            }
            // Resolution reads the parsed fields only; the signed JSON
            // would double what a large chain holds in memory.
            pdu.json = String::new();
            self.events.insert(id.to_owned(), pdu);
        }
        self.events.get(id).ok_or_else(|| StateResError::MissingEvent(id.to_owned()))
    }

    /// The full auth chain of a state: every event reachable from its
    /// events through `auth_events` (the events themselves excluded, as in
    /// the spec's definition).
    fn auth_chain(&mut self, state: &StateMap) -> Result<EventIdSet<OwnedEventId>, StateResError> {
        let mut chain: HashSet<OwnedEventId> = HashSet::new();
        let mut stack: Vec<OwnedEventId> = Vec::new();
        for id in state.values() {
            stack.extend(self.load(id)?.auth_events.iter().cloned());
        }
        while let Some(id) = stack.pop() {
            if chain.contains(&id) {
                continue;
            }
            let auth_events = self.load(&id)?.auth_events.clone();
            chain.insert(id);
            stack.extend(auth_events.into_iter().filter(|a| !chain.contains(a)));
        }
        Ok(chain.into_iter().collect())
    }
}

/// Room version 12's conflicted state subgraph: the events on any
/// `auth_events` path from one event of the conflicted state set to
/// another, both ends included. An event belongs to it when it is reached
/// from a conflicted event and itself reaches one; events `auth_events_of`
/// does not know end the walk.
fn conflicted_subgraph<'a>(
    conflicted: impl IntoIterator<Item = &'a OwnedEventId>,
    auth_events_of: impl Fn(&EventId) -> Option<&'a [OwnedEventId]>,
) -> HashSet<OwnedEventId> {
    let conflicted: HashSet<&EventId> = conflicted.into_iter().map(|id| id.as_ref()).collect();
    // Everything reachable from the conflicted events, and who cites whom.
    let mut reached: HashSet<&EventId> = HashSet::new();
    let mut cited_by: HashMap<&EventId, Vec<&EventId>> = HashMap::new();
    let mut stack: Vec<&EventId> = conflicted.iter().copied().collect();
    while let Some(id) = stack.pop() {
        if !reached.insert(id) {
            continue;
        }
        for auth in auth_events_of(id).unwrap_or_default() {
            cited_by.entry(auth.as_ref()).or_default().push(id);
            stack.push(auth);
        }
    }
    // Walking back from the conflicted events along those edges finds the
    // reached events that lead to one.
    let mut subgraph: HashSet<&EventId> = HashSet::new();
    let mut stack: Vec<&EventId> = conflicted.iter().copied().filter(|id| auth_events_of(id).is_some()).collect();
    while let Some(id) = stack.pop() {
        if subgraph.insert(id) {
            stack.extend(cited_by.get(id).into_iter().flatten().copied());
        }
    }
    subgraph.into_iter().map(ToOwned::to_owned).collect()
}

#[cfg(test)]
mod tests {
    //! Fixture tables: real PDUs on forked DAGs, for every supported room
    //! version. Each fixture builds a room, forks it, builds on the
    //! branches, and names the resolved event it expects for the keys that
    //! matter, then what may and may not be sent on the merged tip.

    use chancery_proto::ruma::events::StateEventType;
    use serde_json::{Value as JsonValue, json};

    use super::*;
    use crate::pdu::testing::{Room, Tip, power};
    use crate::pdu::{PduError, authorize_with};

    const VERSIONS: [&str; 3] = ["10", "11", "12"];

    type Key = (StateEventType, String);

    fn key(event_type: &str, state_key: &str) -> Key {
        (StateEventType::from(event_type), state_key.to_owned())
    }

    fn member(user: &str) -> Key {
        key("m.room.member", user)
    }

    /// An event to try on the merged tip, and whether the resolved state
    /// must allow it.
    type Attempt = (&'static str, &'static str, Option<&'static str>, JsonValue, bool);

    struct Fixture {
        room: Room,
        forks: Vec<Tip>,
        /// Keys and the event resolution must choose (`None`: no entry).
        expect: Vec<(Key, Option<OwnedEventId>)>,
        after: Vec<Attempt>,
    }

    /// alice (creator, 100), bob and carol (50 each) joined an invite-only
    /// room whose topic alice set.
    fn room_of_three(version: &str, bob: i64) -> Room {
        let mut room = Room::create(version);
        for user in ["@bob:x", "@carol:x"] {
            room.send("@alice:x", "m.room.member", Some(user), json!({"membership": "invite"})).unwrap();
            room.send(user, "m.room.member", Some(user), json!({"membership": "join"})).unwrap();
        }
        room.send("@alice:x", "m.room.power_levels", Some(""), power(version, &[("@bob:x", bob), ("@carol:x", 50)])).unwrap();
        room.send("@alice:x", "m.room.topic", Some(""), json!({"topic": "original"})).unwrap();
        room
    }

    fn id_of(tip: &Tip, k: &Key) -> Option<OwnedEventId> {
        tip.state.get(k).map(|p| p.event_id.clone())
    }

    /// (a) alice demotes bob on one branch while bob, on the other, changes
    /// the topic and names the room (sent first, so timestamps do not
    /// favour the demotion): his changes are dropped.
    fn demotion_races_topic_change(version: &str) -> Fixture {
        let mut room = room_of_three(version, 50);
        let original_topic = id_of(&room.tip, &key("m.room.topic", ""));
        let (mut a, mut b) = (room.tip.clone(), room.tip.clone());
        room.send_on(&mut b, "@bob:x", "m.room.topic", Some(""), json!({"topic": "bob's"})).unwrap();
        room.send_on(&mut b, "@bob:x", "m.room.name", Some(""), json!({"name": "bob's"})).unwrap();
        let demotion = room
            .send_on(&mut a, "@alice:x", "m.room.power_levels", Some(""), power(version, &[("@bob:x", 0), ("@carol:x", 50)]))
            .unwrap();
        Fixture {
            room,
            forks: vec![a, b],
            expect: vec![
                (key("m.room.power_levels", ""), Some(demotion)),
                (key("m.room.topic", ""), original_topic),
                (key("m.room.name", ""), None),
            ],
            after: vec![
                ("@bob:x", "m.room.topic", Some(""), json!({"topic": "again"}), false),
                ("@alice:x", "m.room.topic", Some(""), json!({"topic": "alice's"}), true),
            ],
        }
    }

    /// (b) alice bans carol on one branch while carol, on the other, joins
    /// the public room (earlier by timestamp): the ban wins.
    fn ban_races_join(version: &str) -> Fixture {
        let mut room = Room::create(version);
        room.send("@alice:x", "m.room.join_rules", Some(""), json!({"join_rule": "public"})).unwrap();
        let (mut a, mut b) = (room.tip.clone(), room.tip.clone());
        room.send_on(&mut b, "@carol:x", "m.room.member", Some("@carol:x"), json!({"membership": "join"})).unwrap();
        let ban = room.send_on(&mut a, "@alice:x", "m.room.member", Some("@carol:x"), json!({"membership": "ban"})).unwrap();
        Fixture {
            room,
            forks: vec![a, b],
            expect: vec![(member("@carol:x"), Some(ban))],
            after: vec![
                ("@carol:x", "m.room.message", None, json!({"body": "hi"}), false),
                ("@carol:x", "m.room.member", Some("@carol:x"), json!({"membership": "join"}), false),
            ],
        }
    }

    /// (c) bob and carol, equal in power, change the topic at once, carol
    /// later: neither is a power event, both sit on the same mainline
    /// position, so `origin_server_ts` orders them and the later one wins.
    fn equal_topics_later_wins(version: &str) -> Fixture {
        let mut room = room_of_three(version, 50);
        let (mut a, mut b) = (room.tip.clone(), room.tip.clone());
        let carols = room.send_at(&mut b, 60_000, "@carol:x", "m.room.topic", Some(""), json!({"topic": "carol's"})).unwrap();
        room.send_at(&mut a, 50_000, "@bob:x", "m.room.topic", Some(""), json!({"topic": "bob's"})).unwrap();
        Fixture { room, forks: vec![a, b], expect: vec![(key("m.room.topic", ""), Some(carols))], after: vec![] }
    }

    /// (c') The same at the same `origin_server_ts`: the event ids break
    /// the tie, the greater one applied last.
    fn equal_topics_same_time_greater_id_wins(version: &str) -> Fixture {
        let mut room = room_of_three(version, 50);
        let (mut a, mut b) = (room.tip.clone(), room.tip.clone());
        let bobs = room.send_at(&mut a, 70_000, "@bob:x", "m.room.topic", Some(""), json!({"topic": "bob's"})).unwrap();
        let carols = room.send_at(&mut b, 70_000, "@carol:x", "m.room.topic", Some(""), json!({"topic": "carol's"})).unwrap();
        let winner = bobs.max(carols);
        Fixture { room, forks: vec![a, b], expect: vec![(key("m.room.topic", ""), Some(winner))], after: vec![] }
    }

    /// (d) alice raises bob on one branch, carol names the room on the
    /// other: the changes do not conflict and both are kept.
    fn power_change_and_unrelated_name(version: &str) -> Fixture {
        let mut room = room_of_three(version, 50);
        let (mut a, mut b) = (room.tip.clone(), room.tip.clone());
        let raise = room
            .send_on(&mut a, "@alice:x", "m.room.power_levels", Some(""), power(version, &[("@bob:x", 75), ("@carol:x", 50)]))
            .unwrap();
        let name = room.send_on(&mut b, "@carol:x", "m.room.name", Some(""), json!({"name": "carol's"})).unwrap();
        Fixture {
            room,
            forks: vec![a, b],
            expect: vec![(key("m.room.power_levels", ""), Some(raise)), (key("m.room.name", ""), Some(name))],
            // bob's 75 counts after the merge: he may now raise carol to 60.
            after: vec![("@bob:x", "m.room.power_levels", Some(""), power(version, &[("@bob:x", 75), ("@carol:x", 60)]), true)],
        }
    }

    /// (e) bob, at 100, sits on a branch whose server breaks the rules: it
    /// claims bob demoted and banned the creator. Meanwhile alice renames
    /// the room. Resolution re-checks the branch's power events and drops
    /// both; alice keeps her power: before v12 her 100 cannot be changed by
    /// an equal, since v12 it comes from the create event, which no branch
    /// can replace (she is not even listed in `users`), and stands above
    /// bob's 100.
    fn fork_cannot_take_power_from_creator(version: &str) -> Fixture {
        let mut room = room_of_three(version, 100);
        let levels = id_of(&room.tip, &key("m.room.power_levels", ""));
        let alice_joined = id_of(&room.tip, &member("@alice:x"));
        let (mut a, mut b) = (room.tip.clone(), room.tip.clone());
        let mut demoted = power(version, &[("@bob:x", 100), ("@carol:x", 50)]);
        demoted["users"]["@alice:x"] = json!(0);
        room.inject_on(&mut a, "@bob:x", "m.room.power_levels", Some(""), demoted);
        room.inject_on(&mut a, "@bob:x", "m.room.member", Some("@alice:x"), json!({"membership": "ban"}));
        let name = room.send_on(&mut b, "@alice:x", "m.room.name", Some(""), json!({"name": "alice's"})).unwrap();
        Fixture {
            room,
            forks: vec![a, b],
            expect: vec![
                (key("m.room.power_levels", ""), levels),
                (member("@alice:x"), alice_joined),
                (key("m.room.name", ""), Some(name)),
            ],
            after: vec![
                ("@bob:x", "m.room.member", Some("@alice:x"), json!({"membership": "ban"}), false),
                // Only a v12 creator stands above a user at 100: before v12
                // alice's 100 merely equals bob's.
                ("@alice:x", "m.room.member", Some("@bob:x"), json!({"membership": "ban"}), version == "12"),
            ],
        }
    }

    type Build = fn(&str) -> Fixture;

    const FIXTURES: &[(&str, Build)] = &[
        ("demotion races topic change", demotion_races_topic_change),
        ("ban races join", ban_races_join),
        ("equal topics, later wins", equal_topics_later_wins),
        ("equal topics at once, greater id wins", equal_topics_same_time_greater_id_wins),
        ("power change and unrelated name", power_change_and_unrelated_name),
        ("fork cannot take power from the creator", fork_cannot_take_power_from_creator),
    ];

    fn resolve(fixture: &Fixture) -> StateMap {
        let forks: Vec<StateMap> = fixture.forks.iter().map(Tip::state_ids).collect();
        resolve_forks(&fixture.room.rules, &forks, |id| fixture.room.events.get(id).cloned()).unwrap()
    }

    #[test]
    fn fixtures_resolve_to_the_expected_state_in_every_version() {
        for version in VERSIONS {
            for (name, build) in FIXTURES {
                let mut fixture = build(version);
                let resolved = resolve(&fixture);
                for (k, expected) in &fixture.expect {
                    assert_eq!(resolved.get(k), expected.as_ref(), "v{version} {name}: {k:?}");
                }
                // Keys on which the forks agree are kept as they are.
                for (k, id) in fixture.forks[0].state_ids() {
                    if fixture.forks.iter().all(|f| f.state.get(&k).map(|p| &p.event_id) == Some(&id)) {
                        assert_eq!(resolved.get(&k), Some(&id), "v{version} {name}: unconflicted {k:?}");
                    }
                }
                let tips: Vec<&Tip> = fixture.forks.iter().collect();
                let mut merged = fixture.room.merge(&tips, &resolved);
                assert_eq!(merged.prev.len(), fixture.forks.len(), "v{version} {name}: merge cites every tip");
                for (sender, event_type, state_key, content, allowed) in fixture.after.clone() {
                    let got = fixture.room.send_on(&mut merged, sender, event_type, state_key, content.clone());
                    assert_eq!(got.is_ok(), allowed, "v{version} {name}: {sender} {event_type} {content} after merge -> {got:?}");
                }
            }
        }
    }

    /// Every event of a resolved state passes the authorization rules
    /// against the resolved state itself: resolution never keeps an event
    /// the state it produced would refuse. Each event is checked with the
    /// resolved events of its auth types, except its own key, where it
    /// sees what it replaced (the auth event it cited); create events have
    /// no state before them.
    #[test]
    fn resolved_state_passes_the_authorization_rules() {
        for version in VERSIONS {
            for (name, build) in FIXTURES {
                let fixture = build(version);
                let resolved = resolve(&fixture);
                let rules = &fixture.room.rules;
                let events = &fixture.room.events;
                let create_key = key("m.room.create", "");
                for (own_key, id) in &resolved {
                    let pdu = &events[id];
                    if *own_key == create_key {
                        continue;
                    }
                    let mut wanted = state_res::auth_types_for_event(
                        &pdu.event_type,
                        &pdu.sender,
                        pdu.state_key.as_deref(),
                        &pdu.content,
                        &rules.authorization,
                    )
                    .unwrap();
                    wanted.push(create_key.clone());
                    let mut state = BTreeMap::new();
                    for k in wanted {
                        let chosen = if k == *own_key {
                            pdu.auth_events.iter().map(|a| &events[a]).find(|a| {
                                a.event_type.to_string() == k.0.to_string() && a.state_key.as_deref() == Some(k.1.as_str())
                            })
                        } else {
                            resolved.get(&k).map(|r| &events[r])
                        };
                        if let Some(event) = chosen {
                            state.insert(k, event.clone());
                        }
                    }
                    let got = authorize_with(rules, pdu, |a| events.get(a), &state);
                    assert!(got.is_ok(), "v{version} {name}: resolved {own_key:?} = {id} is refused: {got:?}");
                }
            }
        }
    }

    /// The same check catches a state resolution would never produce: a
    /// branch's state with the demotion next to bob's topic change.
    #[test]
    fn the_agreement_check_can_fail() {
        let fixture = demotion_races_topic_change("11");
        let topic = &fixture.forks[1].state[&key("m.room.topic", "")];
        let demotion = &fixture.forks[0].state[&key("m.room.power_levels", "")];
        let mut state = fixture.forks[1].state.clone();
        state.insert(key("m.room.power_levels", ""), demotion.clone());
        let got = authorize_with(&fixture.room.rules, topic, |a| fixture.room.events.get(a), &state);
        assert!(matches!(got, Err(PduError::Forbidden(_))), "{got:?}");
    }

    #[test]
    fn a_single_or_repeated_state_resolves_to_itself() {
        for version in VERSIONS {
            let room = room_of_three(version, 50);
            let state = room.tip.state_ids();
            let fetch = |id: &EventId| room.events.get(id).cloned();
            assert_eq!(resolve_forks(&room.rules, std::slice::from_ref(&state), fetch).unwrap(), state);
            assert_eq!(resolve_forks(&room.rules, &[state.clone(), state.clone()], fetch).unwrap(), state);
        }
    }

    #[test]
    fn refuses_what_it_cannot_resolve_safely() {
        let fixture = ban_races_join("12");
        let forks: Vec<StateMap> = fixture.forks.iter().map(Tip::state_ids).collect();
        let rules = &fixture.room.rules;
        let events = &fixture.room.events;
        let fetch = |id: &EventId| events.get(id).cloned();

        // An event nobody can fetch, in a fork or deep in an auth chain.
        let ban = forks[0][&member("@carol:x")].clone();
        let without_ban = |id: &EventId| (id != ban).then(|| events.get(id).cloned()).flatten();
        assert!(matches!(resolve_forks(rules, &forks, without_ban), Err(StateResError::MissingEvent(id)) if id == ban));
        let alice_join = forks[0][&member("@alice:x")].clone();
        let mut only_carol = StateMap::new();
        only_carol.insert(member("@carol:x"), forks[1][&member("@carol:x")].clone());
        let without_alice = |id: &EventId| (id != alice_join).then(|| events.get(id).cloned()).flatten();
        let got = resolve_forks(rules, &[only_carol.clone(), forks[0].clone()], without_alice);
        assert!(matches!(&got, Err(StateResError::MissingEvent(id)) if *id == alice_join), "{got:?}");

        // A fetch that answers with another event counts as missing.
        let liar = |_: &EventId| events.get(&ban).cloned();
        assert!(matches!(resolve_forks(rules, &[only_carol.clone()], liar), Err(StateResError::MissingEvent(_))));

        // Chains past the bound.
        assert!(matches!(resolve_forks_within(rules, &forks, fetch, 5), Err(StateResError::TooLarge(5))));
        assert!(resolve_forks_within(rules, &forks, fetch, events.len()).is_ok());

        // Too many forks.
        let many = vec![forks[0].clone(); MAX_STATE_RES_FORKS + 1];
        assert!(matches!(resolve_forks(rules, &many, fetch), Err(StateResError::TooManyForks)));

        // An entry whose event has another type or state key.
        let mut mislabelled = forks[0].clone();
        mislabelled.insert(key("m.room.topic", ""), ban.clone());
        assert!(matches!(resolve_forks(rules, &[mislabelled], fetch), Err(StateResError::WrongKey(..))));

        // An event of another room (another create time: another v12 room).
        let other = Room::create_at("12", 9_000);
        let stranger = other.tip.state[&member("@alice:x")].clone();
        let mut mixed = forks[1].clone();
        mixed.insert(member("@zed:x"), stranger.event_id.clone());
        let either = |id: &EventId| events.get(id).or_else(|| other.events.get(id)).cloned();
        assert!(matches!(resolve_forks(rules, &[forks[0].clone(), mixed], either), Err(StateResError::ForeignEvent(_))));

        // Room version 1 resolves with algorithm v1, which is not ours.
        let v1 = RoomVersionRules::V1;
        assert!(matches!(resolve_forks(&v1, &forks, fetch), Err(StateResError::UnsupportedVersion)));
    }

    #[test]
    fn conflicted_subgraph_holds_the_paths_between_conflicted_events() {
        // d -> c -> b -> a, c -> x -> y, e -> b, with a and d conflicted:
        // the path d, c, b, a is the subgraph; x and y lead to no conflicted
        // event, e is not reached from one.
        let id = |s: &str| EventId::parse(format!("${s}")).unwrap();
        let edges: HashMap<OwnedEventId, Vec<OwnedEventId>> = [
            ("a", vec![]),
            ("b", vec!["a"]),
            ("c", vec!["b", "x"]),
            ("d", vec!["c"]),
            ("e", vec!["b"]),
            ("x", vec!["y"]),
            ("y", vec![]),
        ]
        .into_iter()
        .map(|(k, v)| (id(k), v.into_iter().map(id).collect()))
        .collect();
        let conflicted = [id("a"), id("d")];
        let got = conflicted_subgraph(&conflicted, |e| edges.get(e).map(Vec::as_slice));
        let want: HashSet<OwnedEventId> = ["a", "b", "c", "d"].into_iter().map(id).collect();
        assert_eq!(got, want);
        // A lone conflicted event is its own subgraph; unknown ones are not.
        let lone = [id("y"), id("unknown")];
        assert_eq!(conflicted_subgraph(&lone, |e| edges.get(e).map(Vec::as_slice)), HashSet::from([id("y")]));
    }
}
