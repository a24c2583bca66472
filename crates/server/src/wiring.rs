//! Builds the components of one node over a store, each handed exactly
//! the store traits, other components, clock and randomness its
//! constructor asks for. The order below is the components' dependency
//! order: a component comes after everything it uses.

use std::sync::Arc;

use anyhow::Context;
use chancery_service::accounts::InteractiveAuth;
use chancery_service::clock::{Clock, SystemClock};
use chancery_service::rooms::{RoomsConfig, ServerIdentity, supported_room_version};
use chancery_service::tokens::{Entropy, OsEntropy};
use chancery_service::{
    AccountData, Accounts, AccountsConfig, Admin, Components, Directory, Ephemeral, EventFormatter, Health, Limiters, Notifier,
    Profiles, Push, Reports, RoomReader, RoomWriter, Rooms, Search, Syncer, Visibility,
};
use chancery_store::DynStore;

use crate::Config;

/// Every component of a node over `store`, with the server's signing key
/// (generated on first use). Registers the store's commit listener, so
/// call it once per store.
pub fn components(config: &Config, store: DynStore) -> anyhow::Result<Components> {
    let signing_key = chancery_service::signing::load_or_generate(&config.signing_key_path()).map_err(|e| anyhow::anyhow!(e))?;
    let server_name = config.server_name();
    let default_room_version =
        supported_room_version(&config.default_room_version).context("default_room_version is not supported")?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let entropy: Arc<dyn Entropy> = Arc::new(OsEntropy);

    // Wake-ups: the store tells the notifier of each commit.
    let notifier = Arc::new(Notifier::default());
    store.set_event_listener(notifier.listener());

    let limiters = Arc::new(Limiters::new(&config.rate_limits));
    let uia =
        Arc::new(InteractiveAuth::new(store.clone(), server_name.clone(), limiters.clone(), clock.clone(), entropy.clone()));
    let accounts = Arc::new(Accounts::new(
        AccountsConfig {
            server_name: server_name.clone(),
            registration: config.registration,
            reserved_usernames: config.reserved_usernames.clone(),
            password_min_length: config.password_min_length,
            access_token_lifetime_ms: config.access_token_lifetime_ms,
            max_devices_per_user: config.limits.max_devices_per_user,
        },
        store.clone(),
        uia,
        limiters,
        clock.clone(),
        entropy.clone(),
    ));
    let profiles = Arc::new(Profiles::new(store.clone(), server_name.clone()));
    let account_data = Arc::new(AccountData::new(store.clone(), store.clone(), notifier.clone()));

    let visibility = Arc::new(Visibility::new(store.clone(), store.clone()));
    let formatter = Arc::new(EventFormatter::new(store.clone(), store.clone(), visibility.clone(), clock.clone()));
    let push = Arc::new(Push::new(store.clone(), store.clone(), formatter.clone(), notifier.clone()));
    let writer = Arc::new(RoomWriter::new(
        store.clone(),
        store.clone(),
        push.clone(),
        ServerIdentity { server_name: server_name.clone(), signing_key },
        clock.clone(),
    ));
    let directory = Arc::new(Directory::new(store.clone(), store.clone(), writer.clone(), server_name.clone(), clock.clone()));
    let rooms = Arc::new(Rooms::new(
        RoomsConfig { server_name, default_room_version },
        writer,
        store.clone(),
        store.clone(),
        store.clone(),
        store.clone(),
        directory.clone(),
        notifier.clone(),
        clock.clone(),
        entropy.clone(),
    ));
    let room_reader =
        Arc::new(RoomReader::new(store.clone(), store.clone(), visibility.clone(), formatter.clone(), account_data.clone()));
    let search = Arc::new(Search::new(
        store.clone(),
        store.clone(),
        store.clone(),
        store.clone(),
        visibility.clone(),
        formatter.clone(),
        config.user_directory.search_all_users,
    ));
    let ephemeral = Ephemeral::new(
        store.clone(),
        store.clone(),
        account_data.clone(),
        store.clone(),
        notifier.clone(),
        clock.clone(),
        &*entropy,
        config.presence.enabled,
    );
    let syncer = Arc::new(Syncer::new(
        store.clone(),
        store.clone(),
        store.clone(),
        account_data.clone(),
        push.clone(),
        ephemeral.clone(),
        visibility,
        formatter,
        notifier,
    ));
    let reports = Arc::new(Reports::new(store.clone(), store.clone(), clock));
    let admin = Arc::new(Admin::new(store.clone(), store.clone()));
    let health = Arc::new(Health::new(store));
    Ok(Components {
        accounts,
        profiles,
        account_data,
        push,
        rooms,
        room_reader,
        directory,
        search,
        ephemeral,
        syncer,
        reports,
        admin,
        health,
    })
}
