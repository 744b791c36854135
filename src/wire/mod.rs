//! Pure wire codecs for the bytes a connection sends before it is routed.
//!
//! Role: decide what the first bytes of a connection are: a TLS ClientHello
//! (and its SNI / ALPN), a PROXY protocol header, or a PostgreSQL SSLRequest;
//! and `x509`, the few facts read from a certificate's DER that rustls does not
//! expose (validity, common name, SPKI, URI SANs).
//!
//! Rules for everything under this module:
//! - Pure functions over `&[u8]` and values. No IO, no async, no clocks, no
//!   global state, no `unsafe` (forbidden below).
//! - The caller owns the buffer. Parsers only look at it; they never consume,
//!   copy out or rewrite the bytes, because passthrough must replay them to the
//!   backend exactly as received.
//! - Incremental: every parser accepts any prefix of a valid input and answers
//!   "need more" (with the smallest buffer length worth calling again at) until
//!   it can decide. Decisions depend only on bytes already seen, so a decision
//!   taken on a prefix stands for every longer buffer and callers may act on it
//!   at once. (One documented exception: a PostgreSQL request followed by more
//!   bytes than a client may send before the reply.)
//! - Never panic on input: no unchecked indexing or `unwrap` on peer data.
//!   Each codec has a fuzz target under `fuzz/` and a committed corpus under
//!   `fuzz/corpus/<codec>/` that plain `cargo test` replays.
//! - Every size limit is a named constant with its reason.

#![forbid(unsafe_code)]

pub mod client_hello;
pub mod postgres;
pub mod proxy_protocol;
pub mod x509;

/// Test helpers shared by the codecs' tests: corpus replay and mutation.
#[cfg(test)]
pub(crate) mod testutil {
    use std::path::PathBuf;

    /// A corpus must hold at least this many seeds, so an emptied or misplaced
    /// directory fails the test instead of silently replaying nothing.
    pub const MIN_CORPUS_FILES: usize = 5;

    /// Mutated inputs per codec: enough to hit every length field of the
    /// seeds many times, small enough to run in about a second in debug builds.
    pub const MUTATIONS: usize = 20_000;

    /// Reads every regular file of `fuzz/corpus/<name>/` (the fuzzer also
    /// writes new inputs there, so names are not assumed), sorted by name.
    pub fn corpus(name: &str) -> Vec<(String, Vec<u8>)> {
        let dir: PathBuf = [env!("CARGO_MANIFEST_DIR"), "fuzz", "corpus", name]
            .iter()
            .collect();
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("corpus dir {}: {e}", dir.display()))
            .map(|entry| entry.expect("read corpus dir entry").path())
            .filter(|path| path.is_file())
            .filter(|path| {
                // cargo-fuzz leaves `.tmp*` files while merging; they are not seeds.
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                !name.starts_with('.')
            })
            .map(|path| {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                let bytes = std::fs::read(&path).expect("read corpus file");
                (name, bytes)
            })
            .collect();
        files.sort();
        assert!(
            files.len() >= MIN_CORPUS_FILES,
            "corpus {} has {} files, expected at least {MIN_CORPUS_FILES}",
            dir.display(),
            files.len()
        );
        files
    }

    /// Deterministic xorshift64 generator: reproducible mutation runs without
    /// a dependency on a random number crate.
    pub struct XorShift(pub u64);

    impl XorShift {
        pub fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        /// A number in `0..n` (`n` > 0).
        pub fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Applies one to four random edits to `input`: bit flips, byte writes
    /// (often 0x00 / 0xff / length-like values), inserts, deletes, truncation
    /// and chunk duplication.
    pub fn mutate(rng: &mut XorShift, input: &[u8]) -> Vec<u8> {
        const INTERESTING: [u8; 8] = [0x00, 0x01, 0x03, 0x16, 0x7f, 0x80, 0xfe, 0xff];
        let mut out = input.to_vec();
        for _ in 0..1 + rng.below(4) {
            let len = out.len();
            match rng.below(7) {
                0 if len > 0 => {
                    let i = rng.below(len);
                    out[i] ^= 1 << rng.below(8);
                }
                1 if len > 0 => {
                    let i = rng.below(len);
                    out[i] = INTERESTING[rng.below(INTERESTING.len())];
                }
                2 if len > 0 => {
                    let i = rng.below(len);
                    out[i] = rng.next() as u8;
                }
                3 => {
                    let i = rng.below(len + 1);
                    out.insert(i, rng.next() as u8);
                }
                4 if len > 0 => {
                    out.remove(rng.below(len));
                }
                5 => out.truncate(rng.below(len + 1)),
                _ if len > 0 => {
                    let start = rng.below(len);
                    let end = start + rng.below(len - start).min(64);
                    let chunk = out[start..end].to_vec();
                    let at = rng.below(out.len() + 1);
                    out.splice(at..at, chunk);
                }
                _ => out.push(rng.next() as u8),
            }
        }
        out
    }
}
