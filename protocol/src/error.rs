//! Errors with stable codes.
//!
//! Every error a client sees starts with a code word (`ERR`, `WRONGTYPE`, `OOM`,
//! `NOAUTH`, `NOPARENT`, ...) that clients may match on; the rest is for people.
//! Texts of Redis commands follow Redis 7 word for word.

use std::borrow::Cow;

/// A broken request stream. The connection that sent it is answered with
/// `-ERR Protocol error: ...` and closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Protocol error: {0}")]
pub struct ProtocolError(Cow<'static, str>);

impl ProtocolError {
    /// A protocol error with this description.
    pub fn new(msg: impl Into<Cow<'static, str>>) -> Self {
        ProtocolError(msg.into())
    }
}

/// An error reply to one command; the connection carries on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code} {msg}")]
pub struct CommandError {
    /// The stable first word of the reply, such as `ERR` or `OOM`.
    pub code: &'static str,
    /// The human-readable rest.
    pub msg: Cow<'static, str>,
}

impl CommandError {
    /// An error with the given code.
    pub fn new(code: &'static str, msg: impl Into<Cow<'static, str>>) -> Self {
        CommandError {
            code,
            msg: msg.into(),
        }
    }

    /// A generic `ERR`.
    pub fn err(msg: impl Into<Cow<'static, str>>) -> Self {
        Self::new("ERR", msg)
    }

    /// Redis's `ERR syntax error`.
    pub fn syntax() -> Self {
        Self::err("syntax error")
    }

    /// Redis's error for a bad integer argument.
    pub fn not_integer() -> Self {
        Self::err("value is not an integer or out of range")
    }

    /// Redis's arity error.
    pub fn arity(cmd: &str) -> Self {
        Self::err(format!(
            "wrong number of arguments for '{}' command",
            cmd.to_ascii_lowercase()
        ))
    }

    /// Redis's unknown command error, quoting the first arguments.
    pub fn unknown_command(name: &[u8], args: &[bytes::Bytes]) -> Self {
        let mut quoted = String::new();
        for a in args.iter().take(32) {
            quoted.push('\'');
            quoted.push_str(&printable(a, 128));
            quoted.push_str("' ");
        }
        Self::err(format!(
            "unknown command '{}', with args beginning with: {}",
            printable(name, 128),
            quoted
        ))
    }

    /// Redis's unknown subcommand error.
    pub fn unknown_subcommand(cmd: &str, sub: &[u8]) -> Self {
        Self::err(format!(
            "unknown subcommand '{}'. Try {} HELP.",
            printable(sub, 128),
            cmd.to_ascii_uppercase()
        ))
    }

    /// `OOM`: the store could not make room.
    pub fn oom(msg: impl Into<Cow<'static, str>>) -> Self {
        Self::new("OOM", msg)
    }
}

/// Renders untrusted bytes for an error message or a log line: printable ASCII as
/// is, anything else escaped, cut at `max` bytes.
pub fn printable(b: &[u8], max: usize) -> String {
    let mut s = String::with_capacity(b.len().min(max));
    for &c in b.iter().take(max) {
        if c.is_ascii_graphic() || c == b' ' {
            s.push(c as char);
        } else {
            s.push_str(&format!("\\x{c:02x}"));
        }
    }
    if b.len() > max {
        s.push_str("...");
    }
    s
}
