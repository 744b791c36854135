//! Plaintext reads and writes on a terminated client outside the pump, for
//! the PostgreSQL startup phase (the `pg` module): the StartupMessage is read
//! inside TLS before routing, and the authentication exchange is relayed
//! message-aware until the backend's cancel key has been seen. What is
//! read here is fully taken out of the TLS state, so the pump that runs
//! afterwards starts with nothing pending.

use std::io;

use monoio::net::TcpStream;

use super::side::{tls_io, Pull};
use super::Accepted;

/// Rounds of record processing one `try_read_plain` call does at most
/// before reporting "nothing yet": each round decrypts a record, handles a
/// control record or reads the socket once.
const MAX_ROUNDS: usize = 64;

impl Accepted {
    /// Append decrypted bytes to `out` without waiting: `Ok(Some(n))` with
    /// `n > 0` bytes, `Ok(Some(0))` at the client's close, `Ok(None)` when
    /// the socket has nothing more now (wait for readability).
    pub fn try_read_plain(
        &mut self,
        client: &TcpStream,
        out: &mut Vec<u8>,
    ) -> io::Result<Option<usize>> {
        let fd = crate::sys::fd(client);
        for _ in 0..MAX_ROUNDS {
            let pulled = self.side.pull(&mut |b| {
                out.extend_from_slice(b);
                Ok(b.len())
            });
            // Control records may have queued records of ours (alerts,
            // key updates); they go out as they come.
            let _ = self.side.flush(fd);
            match pulled {
                Pull::Moved(0) | Pull::TxFull => {}
                Pull::Moved(n) => return Ok(Some(n)),
                Pull::Eof => return Ok(Some(0)),
                Pull::DstBlocked => {}
                Pull::NeedInput => match self.side.read(fd) {
                    Ok((0, _)) => return Ok(Some(0)),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                    Err(e) => return Err(e),
                },
                Pull::Failed(e) => {
                    let _ = self.side.flush(fd);
                    return Err(tls_io(e));
                }
                Pull::DstFailed(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Encrypt and send all of `data`.
    pub async fn write_plain(&mut self, client: &TcpStream, mut data: &[u8]) -> io::Result<()> {
        let fd = crate::sys::fd(client);
        loop {
            if !self.side.flush(fd)? {
                client.writable(false).await?;
                continue;
            }
            if data.is_empty() {
                return Ok(());
            }
            let n = self.side.encrypt(data)?;
            data = &data[n..];
        }
    }

    /// Queue close_notify and send what can be sent now (a refusal).
    pub fn close_plain(&mut self, client: &TcpStream) {
        if self.side.close_notify().is_ok() {
            let _ = self.side.flush(crate::sys::fd(client));
        }
    }
}
