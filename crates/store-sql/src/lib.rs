//! What the SQL backends (`chancery-store-sqlite`, `chancery-store-postgres`)
//! have in common beyond their dialects: reading result rows into domain
//! types, turning domain values into parameters, checking write batches,
//! and the list of migrations.
//!
//! Architecture invariant: no driver here (neither rusqlite nor
//! tokio-postgres), only pure functions and constants. A backend adapts its
//! driver's row to [`rows::Row`]; SQL that differs between the dialects stays
//! in the backends. `chancery-store` knows no SQL, so SQL-flavoured helpers
//! (LIKE patterns, column lists) live here.

pub mod batches;
pub mod directory;
pub mod migrations;
pub mod params;
pub mod rows;

pub use params::{i, u};
