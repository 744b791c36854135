//! A backend that records what each connection sent: it reads to EOF, hands
//! the bytes to the test, then answers with its tag and closes. The tag tells
//! the client which backend it reached; the recording lets the test compare
//! the backend's stream byte for byte with what the client wrote.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use super::Backend;

/// How long a recording backend waits for its client's EOF (bounds the
/// handler threads of a failing test).
const RECORD_LIMIT: Duration = Duration::from_secs(20);

pub struct Recorder {
    backend: Backend,
    rx: Mutex<mpsc::Receiver<Vec<u8>>>,
}

impl Recorder {
    pub fn start(tag: &'static [u8]) -> Recorder {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let backend = Backend::start(move |mut s| {
            s.set_read_timeout(Some(RECORD_LIMIT)).unwrap();
            let mut got = Vec::new();
            let _ = s.read_to_end(&mut got);
            let _ = tx.lock().unwrap().send(got);
            let _ = s.write_all(tag);
            let _ = s.shutdown(Shutdown::Write);
        });
        Recorder {
            backend,
            rx: Mutex::new(rx),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.backend.addr
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.backend.accepted.load(Ordering::Relaxed)
    }

    /// The next connection's complete stream (waits for its EOF).
    pub fn next(&self) -> Vec<u8> {
        self.rx
            .lock()
            .unwrap()
            .recv_timeout(RECORD_LIMIT)
            .expect("the recording backend got no connection")
    }
}
