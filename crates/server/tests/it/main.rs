//! Integration tests: real servers on 127.0.0.1, driven over HTTP by
//! matrix-sdk (user flows) and reqwest (errors and edge cases). One test
//! binary for the whole workspace keeps link time down.

/// Runs a test on both backends: `on_both_backends!(name)` makes the tests
/// `name::sqlite` and `name::postgres` calling `name(Backend)`;
/// `on_both_backends!(name: test(args))` calls `test(Backend, args)`.
macro_rules! on_both_backends {
    ($test:ident) => {
        on_both_backends!($test: $test());
    };
    ($name:ident: $test:ident($($arg:expr),*)) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$test(chancery_testkit::Backend::Sqlite $(, $arg)*).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$test(chancery_testkit::Backend::Postgres $(, $arg)*).await;
            }
        }
    };
}

mod admin;
mod bad_input;
mod calls;
mod calls_join;
mod client_flows;
mod common;
mod components;
mod concurrent_sends;
mod connections;
mod delayed_events;
mod directory;
mod e2ee;
mod e2ee_dehydrated;
mod e2ee_http;
mod element_x;
mod ephemeral;
mod faults;
mod federation;
mod federation_e2ee;
mod federation_knock;
mod federation_outbox;
mod federation_synapse;
mod hostile;
mod js_client;
mod lazy_members;
mod media;
mod nul_text;
mod presence;
mod process;
mod push;
mod pushers;
mod registration;
mod relations;
mod rooms_flow;
mod rooms_http;
mod scale;
mod search;
mod sfu;
mod sliding_sync_http;
mod spaces;
mod store_conformance;
mod thread_subscriptions;
mod visibility;
