//! Client errors.

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The connection failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The server's bytes were not valid RESP.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The server answered with an error.
    #[error("{code} {message}")]
    Server {
        /// The stable code (`OOM`, `NOPARENT`, `ERR`, ...).
        code: String,
        /// The rest of the message.
        message: String,
    },
    /// The data plane failed or is not available.
    #[error("data plane: {0}")]
    Transport(#[from] tidepool_transport::TransportError),
    /// The reply had an unexpected shape.
    #[error("unexpected reply: {0}")]
    Unexpected(String),
    /// A get over shared memory (or RDMA) copied blocks out of the server's
    /// memory under a lease that had run out by the time it was given back:
    /// the server may have reused that memory during the copy, so the
    /// buffers' contents cannot be trusted. Get the blocks again, or raise
    /// [`crate::ClientOptions::read_lease_ms`].
    #[error("lease expired: {0}")]
    LeaseExpired(String),
    /// The client refused to send a command (one that would leave a pooled
    /// connection answering out of turn, see
    /// [`crate::Client::pipeline_frames`]).
    #[error("refused: {0}")]
    Refused(String),
}

impl ClientError {
    /// The server's error code, when the server answered with an error.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Server { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The error a server's error reply (`CODE message`) stands for.
    pub fn server(text: &str) -> ClientError {
        let (code, message) = text.split_once(' ').unwrap_or((text, ""));
        ClientError::Server {
            code: code.to_string(),
            message: message.to_string(),
        }
    }
}
