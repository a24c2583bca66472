//! The ephemeral component: what users say about their reading and
//! presence rather than in rooms: typing notifications (`typing.rs`, in
//! memory), read receipts and read markers (`receipts.rs`, stored),
//! presence (`presence.rs`, in memory, off unless enabled), and the
//! messages the nodes sharing a database exchange about the in-memory
//! parts (`cluster.rs`).
//!
//! In memory, per node: typing and presence. Losing them costs seconds of
//! "is typing" and an "online" dot; nodes keep each other informed through
//! the store's node bus.

mod cluster;
mod presence;
mod receipts;
mod remote;
mod typing;

use std::sync::Arc;

use chancery_store::{NodeBus, ReceiptStore, RoomStore};

pub use receipts::ReceiptThread;
pub(crate) use typing::TypingSnapshot;

use crate::account_data::AccountData;
use crate::clock::Clock;
use crate::notifier::Notifier;
use crate::pushers::Pushers;
use crate::ratelimit::Limiters;
use crate::rooms::Visibility;
use crate::tokens::Entropy;
use presence::PresenceRuntime;
use typing::TypingRuntime;

/// What [`Ephemeral`] is built from: the store traits, components, clock
/// and randomness it uses, named where the server wires it.
pub struct EphemeralDeps {
    pub rooms: Arc<dyn RoomStore>,
    /// A receipt may name only events the user may see.
    pub visibility: Arc<Visibility>,
    pub receipts: Arc<dyn ReceiptStore>,
    /// The fully-read marker is account data.
    pub account_data: Arc<AccountData>,
    pub bus: Arc<dyn NodeBus>,
    pub notifier: Arc<Notifier>,
    /// A read receipt changes the reader's badge on their phones.
    pub pushers: Arc<Pushers>,
    /// Per-user bounds on receipts and read markers.
    pub limiters: Arc<Limiters>,
    pub clock: Arc<dyn Clock>,
    /// Local users' typing and receipts go to the other servers in the
    /// room.
    pub edus: Arc<crate::federation::edus::EduSender>,
}

/// Typing, receipts and presence.
pub struct Ephemeral {
    deps: EphemeralDeps,
    typing: TypingRuntime,
    presence: PresenceRuntime,
    /// This process among the nodes sharing the database (random).
    node_id: u64,
    /// Whether other nodes may share the database (typing and presence
    /// changes are then published for them).
    shares_ephemeral: bool,
}

impl Ephemeral {
    /// Starts following what other nodes publish (when the store has
    /// other nodes), for as long as the component lives. The node's id
    /// among them is drawn from `entropy`.
    pub fn new(deps: EphemeralDeps, entropy: &dyn Entropy, presence_enabled: bool) -> Arc<Self> {
        let updates = deps.bus.ephemeral_updates();
        let mut node_id = [0u8; 8];
        entropy.fill(&mut node_id);
        let now_ms = deps.clock.now_ms();
        let ephemeral = Arc::new(Self {
            deps,
            typing: TypingRuntime::new(now_ms),
            presence: PresenceRuntime::new(presence_enabled, now_ms),
            node_id: u64::from_le_bytes(node_id),
            shares_ephemeral: updates.is_some(),
        });
        if let Some(updates) = updates {
            cluster::follow_other_nodes(Arc::downgrade(&ephemeral), updates);
        }
        ephemeral
    }
}
