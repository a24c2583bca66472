//! Shared vocabulary of Chancery: the Matrix types (re-exported from `ruma`)
//! and every limit on what a client or remote server can make us hold.
//!
//! Architecture invariant: this crate does no I/O and depends on no runtime,
//! web framework or database.

pub use ruma;

pub mod limits;
