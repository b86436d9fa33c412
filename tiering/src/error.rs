//! Errors of the block store, each with a stable code for the RESP reply.

/// Why a store operation failed. Misses are not errors: they are `None`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Nothing could be evicted to make room (everything is pinned, leased or has
    /// stored children).
    #[error("command not allowed: the {tier} tier is full and nothing in it can be evicted")]
    OutOfMemory {
        /// The tier that is full.
        tier: &'static str,
    },
    /// One block is larger than its tier's whole capacity.
    #[error("block of {len} bytes is larger than the {tier} tier ({capacity} bytes)")]
    TooBig {
        /// Accounted size of the block.
        len: u64,
        /// The tier.
        tier: &'static str,
        /// The tier's capacity.
        capacity: u64,
    },
    /// The named parent block is not stored.
    #[error("parent block is not stored")]
    NoParent,
    /// A block named itself as its parent.
    #[error("a block cannot be its own parent")]
    SelfParent,
    /// An overwrite named another parent for a block that has stored
    /// children. Refused because it could make a block its own ancestor (a
    /// cycle of parents never leaves the tier: each block in it always has
    /// a stored child), and because a chain key names its whole prefix, so
    /// a block with children has no other parent to move to.
    #[error(
        "a block with stored children keeps its parent (delete it first to store it elsewhere)"
    )]
    Reparent,
    /// The tier asked for is not configured on this node.
    #[error("the {0} tier is not configured on this node")]
    NoTier(&'static str),
    /// A tier's device failed.
    #[error("I/O error: {0}")]
    Io(String),
}

impl StoreError {
    /// The stable first word of the error reply.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::OutOfMemory { .. } => "OOM",
            StoreError::TooBig { .. } => "TOOBIG",
            StoreError::NoParent => "NOPARENT",
            StoreError::SelfParent => "ERR",
            StoreError::Reparent => "REPARENT",
            StoreError::NoTier(_) => "NOTIER",
            StoreError::Io(_) => "IOERR",
        }
    }
}
