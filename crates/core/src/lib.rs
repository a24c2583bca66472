//! Pure rules of Chancery. Nothing here does I/O, reads a clock or spawns a
//! task: callers pass time and data in, and get decisions back. That keeps
//! every rule table-testable.

pub mod keys;
pub mod pdu;
pub mod state_res;
pub mod uia;
pub mod username;
