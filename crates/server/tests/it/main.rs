//! Integration tests: real servers on 127.0.0.1, driven over HTTP by
//! matrix-sdk (user flows) and reqwest (errors and edge cases). One test
//! binary for the whole workspace keeps link time down.

mod admin;
mod bad_input;
mod client_flows;
mod common;
mod components;
mod concurrent_sends;
mod directory;
mod ephemeral;
mod lazy_members;
mod presence;
mod process;
mod push;
mod registration;
mod relations;
mod rooms_flow;
mod rooms_http;
mod scale;
mod search;
mod store_conformance;
