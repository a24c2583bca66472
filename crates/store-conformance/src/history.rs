//! Conformance cases of rooms' history from before the join.

use chancery_store::*;

use crate::{event, room};

fn fetched(id: &str, event_type: &str, depth: u64, prev: &[&str]) -> BackfilledEvent {
    BackfilledEvent {
        event_id: id.into(),
        event_type: event_type.into(),
        state_key: (event_type != "m.room.message").then(String::new),
        sender: "@alice:x".into(),
        origin_server_ts: 1_000 + depth,
        depth,
        json: format!("{{\"type\":\"{event_type}\",\"depth\":{depth}}}"),
        prev_events: prev.iter().map(|p| p.to_string()).collect(),
    }
}

fn ids(events: &[HistoryEvent]) -> Vec<&str> {
    events.iter().map(|e| e.event_id.as_str()).collect()
}

pub async fn history_walks_back_numbered_hidden_and_bounded(store: DynStore) {
    // The room as joined: its create event is in the stream.
    store.create_room(room("!r:x"), vec![event("!r:x", "$create", "m.room.create", Some(""), 1)]).await.unwrap();
    let status = store.history_status("!r:x").await.unwrap();
    assert_eq!(status, HistoryStatus::default());
    // Before it is opened, nothing is stored.
    assert_eq!(store.add_history("!r:x", &[], &[fetched("$m5", "m.room.message", 5, &["$m4"])], 100).await.unwrap(), 0);

    store.open_history("!r:x", &["$m5".into()]).await.unwrap();
    assert_eq!(store.history_status("!r:x").await.unwrap(), HistoryStatus { opened: true, frontier: 1, stored: 0 });
    assert_eq!(store.history_frontier("!r:x", 10).await.unwrap(), vec!["$m5"]);

    // A batch, newest first: numbered in that order; the frontier moves
    // to the prev_events not stored.
    let batch = [
        fetched("$m5", "m.room.message", 5, &["$m4"]),
        fetched("$m4", "m.room.message", 4, &["$m3", "$side"]),
        fetched("$m3", "m.room.history_visibility", 3, &["$create"]),
    ];
    assert_eq!(store.add_history("!r:x", &["$m5".into()], &batch, 100).await.unwrap(), 3);
    let mut frontier = store.history_frontier("!r:x", 10).await.unwrap();
    frontier.sort();
    assert_eq!(frontier, vec!["$create", "$side"]);
    let page = store.history_page("!r:x", 0, 10).await.unwrap();
    assert_eq!(ids(&page), vec!["$m5", "$m4", "$m3"]);
    assert_eq!(page.iter().map(|e| e.ordinal).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(page[2].state_key.as_deref(), Some(""));
    assert_eq!(page[0].depth, 5);
    assert_eq!(ids(&store.history_page("!r:x", 1, 1).await.unwrap()), vec!["$m4"]);

    // Stored again: skipped, nothing renumbered. The stream's own event
    // is stored hidden, and the walk goes on through it.
    let again = [fetched("$m4", "m.room.message", 4, &["$m3"]), fetched("$create", "m.room.create", 1, &["$before"])];
    assert_eq!(store.add_history("!r:x", &[], &again, 100).await.unwrap(), 1);
    assert_eq!(ids(&store.history_page("!r:x", 0, 10).await.unwrap()), vec!["$m5", "$m4", "$m3"]);
    let creates = store.history_of_type("!r:x", "m.room.create", 10).await.unwrap();
    assert_eq!((creates[0].ordinal, creates[0].shown), (4, false));
    assert_eq!(ids(&store.history_of_type("!r:x", "m.room.history_visibility", 10).await.unwrap()), vec!["$m3"]);
    let mut frontier = store.history_frontier("!r:x", 10).await.unwrap();
    frontier.sort();
    assert_eq!(frontier, vec!["$before", "$side"]);

    // A rejoin adds to the frontier, but never an id already stored.
    store.open_history("!r:x", &["$m5".into(), "$new".into()]).await.unwrap();
    assert_eq!(store.history_status("!r:x").await.unwrap(), HistoryStatus { opened: true, frontier: 3, stored: 4 });

    // At the bound the walk stops: what fits is stored, the frontier is emptied.
    let more = [fetched("$side", "m.room.message", 3, &["$x"]), fetched("$before", "m.room.message", 0, &["$y"])];
    assert_eq!(store.add_history("!r:x", &["$side".into(), "$before".into()], &more, 5).await.unwrap(), 1);
    assert_eq!(store.history_status("!r:x").await.unwrap(), HistoryStatus { opened: true, frontier: 0, stored: 5 });
    assert_eq!(ids(&store.history_page("!r:x", 3, 10).await.unwrap()), vec!["$side"]);

    // Asked ids that did not come leave the frontier: the walk ends there.
    store.open_history("!r:x", &["$gone".into()]).await.unwrap();
    assert_eq!(store.add_history("!r:x", &["$gone".into()], &[], 100).await.unwrap(), 0);
    assert_eq!(store.history_status("!r:x").await.unwrap().frontier, 0);

    // Other rooms are apart.
    assert_eq!(store.history_status("!other:x").await.unwrap(), HistoryStatus::default());
    assert!(store.history_page("!other:x", 0, 10).await.unwrap().is_empty());
}
