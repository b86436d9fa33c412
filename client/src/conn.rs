//! One connection: pipelined requests, replies decoded with `redis-protocol`.

use bytes::{BufMut, Bytes, BytesMut};
use redis_protocol::resp2::{decode::decode_bytes_mut, types::BytesFrame};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::ClientError;

/// Arguments this large go out as their own slice of a vectored write.
const INLINE_MAX: usize = 16 * 1024;

pub(crate) struct Conn {
    /// `None` once [`Conn::take`] moved the stream out.
    stream: Option<TcpStream>,
    rbuf: BytesMut,
    /// An exchange failed half way: the stream's position is unknown, so the
    /// pool replaces this connection before its next use.
    pub(crate) broken: bool,
    /// Replies still to come for commands sent without waiting
    /// ([`Conn::send_unanswered`]): read and dropped before the next ones.
    unanswered: usize,
    /// Replies owed to the exchange under way: commands sent (or being
    /// sent) whose replies are not read yet. Left above zero when the
    /// exchange was given up half way (its future dropped), which puts
    /// the connection out of step ([`Conn::in_step`]).
    owed: usize,
    /// A send is under way: given up now, it leaves half a command in the
    /// stream, and no reply after it will come.
    sending: bool,
}

impl Conn {
    pub(crate) async fn connect(addr: &str) -> Result<Conn, ClientError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream: Some(stream),
            rbuf: BytesMut::with_capacity(64 * 1024),
            broken: false,
            unanswered: 0,
            owed: 0,
            sending: false,
        })
    }

    /// Moves this connection out, leaving a closed one (out of step, so the
    /// pool replaces it) in its place: for a task that reads the replies an
    /// exchange given up left owed.
    pub(crate) fn take(&mut self) -> Conn {
        let taken = Conn {
            stream: self.stream.take(),
            rbuf: std::mem::take(&mut self.rbuf),
            broken: self.broken,
            unanswered: self.unanswered,
            owed: self.owed,
            sending: self.sending,
        };
        self.broken = true;
        taken
    }

    /// Replies owed that will come: commands wholly sent on a stream whose
    /// position is known (0 when an error or a send cut short left it
    /// unknown).
    pub(crate) fn owed_readable(&self) -> usize {
        match self.broken || self.sending || self.stream.is_none() {
            true => 0,
            false => self.owed,
        }
    }

    fn stream(&mut self) -> std::io::Result<&mut TcpStream> {
        self.stream
            .as_mut()
            .ok_or_else(|| std::io::ErrorKind::NotConnected.into())
    }

    /// Whether the next command's reply is the next one to read: no error
    /// left the stream at an unknown position, and no exchange was given up
    /// with replies (or half a command) in flight. The pool replaces a
    /// connection that is not.
    pub(crate) fn in_step(&self) -> bool {
        !self.broken && self.owed == 0
    }

    /// Sends every command, then reads one reply per command, in order.
    pub(crate) async fn pipeline(
        &mut self,
        cmds: &[Vec<Bytes>],
    ) -> Result<Vec<BytesFrame>, ClientError> {
        self.send(cmds).await?;
        self.recv(cmds.len()).await
    }

    /// Writes the commands without waiting for their replies.
    pub(crate) async fn send(&mut self, cmds: &[Vec<Bytes>]) -> Result<(), ClientError> {
        let out = self.send_inner(cmds).await;
        self.broken |= out.is_err();
        out
    }

    async fn send_inner(&mut self, cmds: &[Vec<Bytes>]) -> Result<(), ClientError> {
        // Counted before the first byte goes: a send cut short leaves half
        // a command in the stream.
        self.owed += cmds.len();
        let mut chunks: Vec<Bytes> = Vec::new();
        // Sized once: a 256-key match is thousands of small arguments, and
        // growing the buffer as it fills copied it over and over.
        let size: usize = cmds
            .iter()
            .flatten()
            .map(|a| 16 + if a.len() >= INLINE_MAX { 0 } else { a.len() })
            .sum::<usize>()
            + 16 * cmds.len();
        let mut cur = BytesMut::with_capacity(size);
        for cmd in cmds {
            cur.put_u8(b'*');
            put_len(&mut cur, cmd.len());
            for arg in cmd {
                cur.put_u8(b'$');
                put_len(&mut cur, arg.len());
                if arg.len() >= INLINE_MAX {
                    chunks.push(cur.split().freeze());
                    chunks.push(arg.clone());
                } else {
                    cur.put_slice(arg);
                }
                cur.put_slice(b"\r\n");
            }
        }
        chunks.push(cur.freeze());
        self.sending = true;
        write_all_chunks(self.stream()?, &chunks).await?;
        self.sending = false;
        Ok(())
    }

    /// Sends commands whose replies nobody waits for (a lease given back at
    /// the end of a get: the caller need not sit through a round trip for
    /// it). The replies are read and dropped, errors included, before the
    /// next command's on this connection.
    pub(crate) async fn send_unanswered(&mut self, cmds: &[Vec<Bytes>]) -> Result<(), ClientError> {
        self.send(cmds).await?;
        self.owed -= cmds.len();
        self.unanswered += cmds.len();
        Ok(())
    }

    /// Reads `n` replies.
    pub(crate) async fn recv(&mut self, n: usize) -> Result<Vec<BytesFrame>, ClientError> {
        let out = self.recv_inner(n).await;
        self.broken |= out.is_err();
        out
    }

    async fn recv_inner(&mut self, n: usize) -> Result<Vec<BytesFrame>, ClientError> {
        // Counted down frame by frame: a skip cut short (its future
        // dropped) leaves the count of what is still to skip exact.
        while self.unanswered > 0 {
            match self.next_frame()? {
                Some(_) => self.unanswered -= 1,
                None => self.fill().await?,
            }
        }
        let frames = self.recv_frames(n).await?;
        self.owed = self.owed.saturating_sub(n);
        Ok(frames)
    }

    async fn recv_frames(&mut self, n: usize) -> Result<Vec<BytesFrame>, ClientError> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.next_frame()? {
                Some(frame) => out.push(frame),
                None => self.fill().await?,
            }
        }
        Ok(out)
    }

    /// The next whole reply in the read buffer, if there is one.
    fn next_frame(&mut self) -> Result<Option<BytesFrame>, ClientError> {
        Ok(decode_bytes_mut(&mut self.rbuf)
            .map_err(|e| ClientError::Protocol(e.to_string()))?
            .map(|(frame, _, _)| frame))
    }

    /// Reads more of the stream into the read buffer.
    async fn fill(&mut self) -> Result<(), ClientError> {
        self.rbuf.reserve(64 * 1024);
        let Some(stream) = self.stream.as_mut() else {
            return Err(ClientError::Io(std::io::ErrorKind::NotConnected.into()));
        };
        if stream.read_buf(&mut self.rbuf).await? == 0 {
            return Err(ClientError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        Ok(())
    }
}

/// Writes `n` in decimal and `\r\n` (lengths below 100 without formatting:
/// keys and counts are mostly that short).
fn put_len(out: &mut BytesMut, n: usize) {
    match n {
        0..=9 => out.put_slice(&[b'0' + n as u8, b'\r', b'\n']),
        10..=99 => out.put_slice(&[b'0' + (n / 10) as u8, b'0' + (n % 10) as u8, b'\r', b'\n']),
        _ => {
            out.put_slice(itoa::Buffer::new().format(n).as_bytes());
            out.put_slice(b"\r\n");
        }
    }
}

async fn write_all_chunks(stream: &mut TcpStream, chunks: &[Bytes]) -> std::io::Result<()> {
    tidepool_transport::vectored::write_all(stream, chunks, tidepool_transport::vectored::SLICES)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_written_in_decimal() {
        for n in [0, 7, 9, 10, 42, 99, 100, 4096, usize::MAX] {
            let mut out = BytesMut::new();
            put_len(&mut out, n);
            assert_eq!(&out[..], format!("{n}\r\n").as_bytes());
        }
    }
}
