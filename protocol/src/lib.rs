//! tidepool-protocol: the bytes on the wire of tidepool's metadata port.
//!
//! This crate owns RESP2 and RESP3 framing (requests are cut out of the read
//! buffer by one scan that also checks their limits, plus Redis's inline form;
//! `redis-protocol` is the reference decoder the tests check against),
//! the command table (name, arity, flags, key positions) and the typed commands
//! that the server applies, and reply encoding with stable error codes.
//!
//! It never does I/O and never imports tokio, the tiering or the transport
//! crates: everything here is pure functions over byte buffers, so it is easy
//! to test and to fuzz.

pub mod command;
pub mod error;
pub mod glob;
pub mod hash;
pub mod help;
pub mod keys;
pub mod reply;
pub mod request;
pub mod slot;
pub mod table;

pub use command::Command;
pub use error::{CommandError, ProtocolError};
pub use keys::KeyList;
pub use reply::{Reply, Version};
pub use request::{Frame, Limits, RequestParser};
