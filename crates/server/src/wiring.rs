//! Builds the components of one node over a store, each handed exactly
//! the store traits, other components, clock and randomness its
//! constructor asks for, by name. The order below is the components'
//! dependency order: a component comes after everything it uses. One
//! backend implements every store trait, so the same store is handed out
//! under each trait a component names.

use std::sync::Arc;

use anyhow::Context;
use chancery_service::clock::{Clock, SystemClock};
use chancery_service::pushers::{GatewayPolicy, RetryPolicy};
use chancery_service::rooms::{RoomsConfig, ServerIdentity, supported_room_version};
use chancery_service::tokens::{Entropy, OsEntropy};
use chancery_service::{
    AccountData, AccountDataDeps, Accounts, AccountsConfig, AccountsDeps, Admin, Calls, CallsDeps, Components, DelayedEvents,
    DelayedEventsConfig, DelayedEventsDeps, DeviceLists, Directory, DirectoryDeps, Ephemeral, EphemeralDeps, EventFormatter,
    EventFormatterDeps, Federation, FederationDeps, FederationSender, FederationSenderDeps, Health, InteractiveAuth,
    InteractiveAuthDeps, Keys, KeysDeps, Limiters, Media, MediaConfig, MediaDeps, Notifier, OpenId, OpenIdDeps, Profiles, Push,
    PushDeps, Pushers, PushersConfig, PushersDeps, Reports, ReportsDeps, RoomFederation, RoomFederationDeps, RoomHistory,
    RoomHistoryDeps, RoomReader, RoomReaderDeps, RoomWriter, RoomWriterDeps, Rooms, RoomsDeps, Search, SearchDeps, SlidingSync,
    SlidingSyncDeps, Spaces, SpacesDeps, Syncer, SyncerDeps, ThreadSubscriptions, ThreadSubscriptionsDeps, Visibility,
};
use chancery_store::DynStore;

use crate::Config;
use crate::push_gateway::HttpGateway;

/// Every component of a node over `store`, with the server's signing key
/// (generated on first use), the system's clock and the operating
/// system's randomness. Registers the store's commit listener, so call it
/// once per store.
pub fn components(config: &Config, store: DynStore) -> anyhow::Result<Components> {
    components_with(config, store, Arc::new(SystemClock), Arc::new(OsEntropy))
}

/// [`components`] reading time from `clock` and drawing randomness from
/// `entropy` (tests set both).
pub fn components_with(
    config: &Config,
    store: DynStore,
    clock: Arc<dyn Clock>,
    entropy: Arc<dyn Entropy>,
) -> anyhow::Result<Components> {
    let signing_key = chancery_service::signing::load_or_generate(&config.signing_key_path()).map_err(|e| anyhow::anyhow!(e))?;
    let server_name = config.server_name();
    let default_room_version =
        supported_room_version(&config.default_room_version).context("default_room_version is not supported")?;
    let gateways = GatewayPolicy {
        allow_http: config.push.allow_http_gateways,
        allow_private_addresses: config.push.allow_private_gateway_addresses,
    };

    // Wake-ups: the store tells the notifier of each commit, and wakes the
    // push delivery (a commit may have queued notifications).
    let notifier = Arc::new(Notifier::default());
    let push_wake = Arc::new(tokio::sync::Notify::new());
    let syncs = notifier.listener();
    let pushes = push_wake.clone();
    // And the federation sender (a commit may hold events for other servers).
    let federation_wake = Arc::new(tokio::sync::Notify::new());
    let outbound = federation_wake.clone();
    store.set_event_listener(Arc::new(move |room_id: &str, member_target: Option<&str>| {
        pushes.notify_one();
        outbound.notify_one();
        syncs(room_id, member_target)
    }));

    // The federation component signs with the same key as the write path
    // (the file was created above if it did not exist).
    let federation = Arc::new(
        Federation::new(FederationDeps {
            config: config.federation_config()?,
            server_name: server_name.clone(),
            signing_key: chancery_service::signing::load_or_generate(&config.signing_key_path())
                .map_err(|e| anyhow::anyhow!(e))?,
            old_keys: chancery_service::signing::load_old_keys(&config.signing_key_path()).map_err(|e| anyhow::anyhow!(e))?,
            clock: clock.clone(),
            entropy: entropy.clone(),
        })
        .map_err(|e| anyhow::anyhow!("federation: {e}"))?,
    );
    let federation_sender = Arc::new(FederationSender::new(FederationSenderDeps {
        store: store.clone(),
        federation: federation.clone(),
        server_name: server_name.clone(),
        clock: clock.clone(),
        wake: federation_wake,
    }));
    // Local users' typing and receipts for other servers (at once), and
    // their device-list, cross-signing and to-device EDUs (through the
    // sender's persisted outbox).
    let edus = Arc::new(chancery_service::federation::edus::EduSender::new(
        federation.clone(),
        store.clone(),
        clock.clone(),
        federation_sender.clone(),
    ));
    let limiters = Arc::new(Limiters::new(&config.rate_limits));
    let device_lists = Arc::new(DeviceLists::new(store.clone(), notifier.clone(), edus.clone()));
    let uia = Arc::new(InteractiveAuth::new(InteractiveAuthDeps {
        store: store.clone(),
        server_name: server_name.clone(),
        limiters: limiters.clone(),
        clock: clock.clone(),
        entropy: entropy.clone(),
    }));
    let keys = Arc::new(Keys::new(KeysDeps {
        server_name: server_name.clone(),
        keys: store.clone(),
        accounts: store.clone(),
        uia: uia.clone(),
        device_lists: device_lists.clone(),
        max_devices_per_user: config.limits.max_devices_per_user,
        clock: clock.clone(),
        entropy: entropy.clone(),
        federation: federation.clone(),
        edus: edus.clone(),
        remote_keys: store.clone(),
        rooms: store.clone(),
    }));
    let accounts = Arc::new(Accounts::new(AccountsDeps {
        config: AccountsConfig {
            server_name: server_name.clone(),
            registration: config.registration,
            reserved_usernames: config.reserved_usernames.clone(),
            password_min_length: config.password_min_length,
            access_token_lifetime_ms: config.access_token_lifetime_ms,
            max_devices_per_user: config.limits.max_devices_per_user,
        },
        store: store.clone(),
        uia,
        limiters: limiters.clone(),
        clock: clock.clone(),
        entropy: entropy.clone(),
        device_lists,
    }));
    let profiles = Arc::new(Profiles::new(store.clone(), server_name.clone(), federation.clone()));
    let account_data = Arc::new(AccountData::new(AccountDataDeps {
        store: store.clone(),
        filters: store.clone(),
        rooms: store.clone(),
        notifier: notifier.clone(),
    }));

    let visibility = Arc::new(Visibility::new(store.clone(), store.clone()));
    let formatter = Arc::new(EventFormatter::new(EventFormatterDeps {
        rooms: store.clone(),
        relations: store.clone(),
        visibility: visibility.clone(),
        clock: clock.clone(),
    }));
    let push = Arc::new(Push::new(PushDeps {
        store: store.clone(),
        rooms: store.clone(),
        formatter: formatter.clone(),
        notifier: notifier.clone(),
        clock: clock.clone(),
        notification_retention_ms: u64::from(config.retention.notifications_days) * 24 * 60 * 60 * 1000,
        thread_subscriptions: config
            .experimental
            .thread_subscriptions
            .then(|| store.clone() as Arc<dyn chancery_store::ThreadSubscriptionStore>),
    }));
    let thread_subscriptions = Arc::new(ThreadSubscriptions::new(ThreadSubscriptionsDeps {
        store: store.clone(),
        streams: store.clone(),
        rooms: store.clone(),
        visibility: visibility.clone(),
        notifier: notifier.clone(),
        enabled: config.experimental.thread_subscriptions,
    }));
    let writer = Arc::new(RoomWriter::new(RoomWriterDeps {
        rooms: store.clone(),
        relations: store.clone(),
        push: push.clone(),
        identity: ServerIdentity { server_name: server_name.clone(), signing_key },
        clock: clock.clone(),
    }));
    let directory = Arc::new(Directory::new(DirectoryDeps {
        store: store.clone(),
        rooms: store.clone(),
        writer: writer.clone(),
        server_name: server_name.clone(),
        clock: clock.clone(),
        federation: federation.clone(),
    }));
    let spaces = Arc::new(Spaces::new(SpacesDeps {
        rooms: store.clone(),
        aliases: store.clone(),
        walks: store.clone(),
        server_name: server_name.clone(),
        clock: clock.clone(),
        entropy: entropy.clone(),
        federation: federation.clone(),
    }));
    let history = Arc::new(RoomHistory::new(RoomHistoryDeps {
        federation: federation.clone(),
        rooms: store.clone(),
        history: store.clone(),
    }));
    let room_federation = Arc::new(RoomFederation::new(RoomFederationDeps {
        federation: federation.clone(),
        rooms: store.clone(),
        relations: store.clone(),
        writer: writer.clone(),
        server_name: server_name.clone(),
        clock: clock.clone(),
        accounts: store.clone(),
        notifier: notifier.clone(),
        history: history.clone(),
    }));
    let rooms = Arc::new(Rooms::new(RoomsDeps {
        config: RoomsConfig { server_name, default_room_version, encryption_by_default: config.encryption_by_default },
        writer,
        rooms: store.clone(),
        addresses: store.clone(),
        forgotten: store.clone(),
        accounts: store.clone(),
        directory: directory.clone(),
        notifier: notifier.clone(),
        limiters: limiters.clone(),
        clock: clock.clone(),
        entropy: entropy.clone(),
        federation: room_federation.clone(),
    }));
    let delayed_events = Arc::new(DelayedEvents::new(DelayedEventsDeps {
        config: DelayedEventsConfig {
            enabled: config.delayed_events.enabled,
            max_delay_ms: config.delayed_events.max_delay_ms,
            max_per_user: config.delayed_events.max_per_user,
        },
        store: store.clone(),
        rooms: rooms.clone(),
        limiters: limiters.clone(),
        clock: clock.clone(),
        entropy: entropy.clone(),
    }));
    let room_reader = Arc::new(RoomReader::new(RoomReaderDeps {
        rooms: store.clone(),
        relations: store.clone(),
        visibility: visibility.clone(),
        formatter: formatter.clone(),
        account_data: account_data.clone(),
        history,
        federation: room_federation.clone(),
    }));
    let search = Arc::new(Search::new(SearchDeps {
        store: store.clone(),
        rooms: store.clone(),
        forgotten: store.clone(),
        accounts: store.clone(),
        visibility: visibility.clone(),
        formatter: formatter.clone(),
        search_all_users: config.user_directory.search_all_users,
    }));
    let pushers = Arc::new(Pushers::new(
        PushersDeps {
            store: store.clone(),
            rooms: store.clone(),
            streams: store.clone(),
            gateway: Arc::new(HttpGateway::new(gateways)?),
            wake: push_wake,
            config: PushersConfig {
                gateways,
                group_unread_count_by_room: config.push.group_unread_count_by_room,
                retry: RetryPolicy {
                    initial_ms: config.push.retry_initial_ms,
                    max_ms: config.push.retry_max_ms,
                    max_age_ms: chancery_proto::limits::MAX_PUSH_AGE_MS,
                },
            },
            clock: clock.clone(),
        },
        &*entropy,
    ));
    let ephemeral = Ephemeral::new(
        EphemeralDeps {
            rooms: store.clone(),
            visibility: visibility.clone(),
            receipts: store.clone(),
            account_data: account_data.clone(),
            bus: store.clone(),
            notifier: notifier.clone(),
            pushers: pushers.clone(),
            limiters,
            clock: clock.clone(),
            edus: edus.clone(),
        },
        &*entropy,
        config.presence.enabled,
    );
    let syncer = Arc::new(Syncer::new(SyncerDeps {
        streams: store.clone(),
        rooms: store.clone(),
        forgotten: store.clone(),
        account_data: account_data.clone(),
        push: push.clone(),
        ephemeral: ephemeral.clone(),
        visibility: visibility.clone(),
        formatter: formatter.clone(),
        notifier: notifier.clone(),
        keys: keys.clone(),
    }));
    let sliding_sync = Arc::new(SlidingSync::new(SlidingSyncDeps {
        store: store.clone(),
        streams: store.clone(),
        rooms: store.clone(),
        forgotten: store.clone(),
        account_data: account_data.clone(),
        push: push.clone(),
        ephemeral: ephemeral.clone(),
        visibility: visibility.clone(),
        formatter,
        notifier: notifier.clone(),
        keys: keys.clone(),
        thread_subscriptions: thread_subscriptions.clone(),
        clock: clock.clone(),
    }));
    let media = Arc::new(
        Media::new(MediaDeps {
            config: MediaConfig {
                server_name: config.server_name(),
                directory: config.media_path(),
                max_upload_bytes: config.media.max_upload_bytes,
                max_bytes_per_user: config.media.max_bytes_per_user,
                thumbnail_sizes: config.media_thumbnail_sizes().map_err(|e| anyhow::anyhow!(e))?,
                max_concurrent_thumbnails: config.media.max_concurrent_thumbnails,
                upload_idle_timeout: std::time::Duration::from_millis(config.limits.body_read_timeout_ms),
                url_preview: config.media.url_preview.then(|| chancery_service::media::UrlPreviewConfig {
                    allow_ranges: config.media_allow_ranges().unwrap_or_default(),
                }),
            },
            store: store.clone(),
            clock: clock.clone(),
            entropy: entropy.clone(),
            // Issue 17's virus scanner plugs in here.
            delivery_check: None,
        })
        .with_context(|| format!("opening the media directory {}", config.media_path().display()))?,
    );
    let reports =
        Arc::new(Reports::new(ReportsDeps { store: store.clone(), rooms: store.clone(), visibility, clock: clock.clone() }));
    let admin = Arc::new(Admin::new(store.clone(), store.clone()));
    let openid = Arc::new(OpenId::new(OpenIdDeps {
        store: store.clone(),
        server_name: config.server_name(),
        clock: clock.clone(),
        entropy: entropy.clone(),
    }));
    let calls = config.calls_config().map(|calls| {
        Arc::new(Calls::new(CallsDeps {
            config: calls,
            openid: openid.clone(),
            clock: clock.clone(),
            // The built-in SFU's participant events reach the component
            // (`sfu::feed_calls`), so it can keep delegated leaves alive.
            delayed_events: config.calls_delegate_leaves().then(|| delayed_events.clone()),
        }))
    });
    let health = Arc::new(Health::new(store, notifier));
    Ok(Components {
        accounts,
        profiles,
        account_data,
        push,
        pushers,
        rooms,
        room_reader,
        directory,
        search,
        spaces,
        ephemeral,
        keys,
        syncer,
        sliding_sync,
        thread_subscriptions,
        reports,
        admin,
        media,
        delayed_events,
        health,
        openid,
        federation,
        room_federation,
        federation_sender,
        calls,
    })
}
