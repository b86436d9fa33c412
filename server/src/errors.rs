//! Replies for the errors of the crates below the commands (the store's),
//! shared by the command handlers and the data plane.

use tidepool_protocol::{CommandError, Reply};
use tidepool_tiering::StoreError;

/// The reply for a store error: its stable code and its message.
pub fn store_error(e: StoreError) -> Reply {
    Reply::Error(CommandError::new(e.code(), e.to_string()))
}
