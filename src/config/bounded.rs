//! Reading the files a configuration names, boundedly: the main file, the
//! `[providers.file]` files, certificates, keys and CA bundles.
//!
//! Only regular files are read (a FIFO would block the loader until a writer
//! appears, `/dev/zero` or `/dev/urandom` would be read until memory runs
//! out, a directory or a socket is a mistake), and never more than a cap:
//! the file is read through `take(cap + 1)`, so one that grows while it is
//! read (a log, `/proc`) cannot exceed the cap either. The start-up, `check`
//! and every reload (`config::load`, then the TLS state build) go through
//! here, so none of them can hang or exhaust memory on a file.
//!
//! The messages do not name the file: callers put it, and the position of the
//! key that named it, in front.

use std::fs::FileType;
use std::io::{self, Read};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use crate::sys;

/// Largest configuration file (main or dynamic). Traefik configurations are
/// a few KiB; 4 MiB holds about 40,000 routers, beyond what one file is for,
/// and keeps a mistaken file (a log, a dump) from being parsed for minutes.
pub const MAX_CONFIG_FILE_SIZE: u64 = 4 << 20;

/// Largest certificate chain or private key file. A PEM certificate is 1–3
/// KiB and a chain a few of them; 1 MiB is hundreds of certificates.
pub const MAX_PEM_FILE_SIZE: u64 = 1 << 20;

/// Largest CA bundle (`rootCAs`, `clientAuth.caFiles`, the system bundle).
/// Debian's whole Mozilla bundle is about 220 KiB; some distributions add a
/// text dump of each certificate, which triples it.
pub const MAX_CA_FILE_SIZE: u64 = 4 << 20;

/// Reads a whole regular file of at most `cap` bytes. The error says what is
/// wrong (not a regular file, too large, or the system's reason).
pub fn read_regular(path: &Path, cap: u64) -> io::Result<Vec<u8>> {
    let file = sys::open_for_reading(path)?;
    // fstat on the opened descriptor: what is read is what was checked.
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}, not a regular file", kind(meta.file_type())),
        ));
    }
    if meta.len() > cap {
        return Err(too_large(cap));
    }
    // `meta.len()` ≤ cap: the reservation is bounded too.
    let mut buf = Vec::with_capacity(meta.len() as usize);
    file.take(cap + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > cap {
        return Err(too_large(cap));
    }
    Ok(buf)
}

/// `read_regular` for text (configuration files): UTF-8 required, as TOML.
pub fn read_text(path: &Path, cap: u64) -> io::Result<String> {
    let bytes = read_regular(path, cap)?;
    String::from_utf8(bytes).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

fn too_large(cap: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("larger than the limit of {}", size(cap)),
    )
}

/// `4 MiB`, `1 MiB`, or bytes for other values.
fn size(n: u64) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else {
        format!("{n} bytes")
    }
}

/// What a non-regular file is, for messages.
pub fn kind(t: FileType) -> &'static str {
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("sluicegate-bounded-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn regular_files_up_to_the_cap() {
        let dir = scratch("cap");
        let f = dir.join("a");
        std::fs::File::create(&f)
            .unwrap()
            .write_all(&[b'x'; 100])
            .unwrap();
        assert_eq!(read_regular(&f, 100).unwrap().len(), 100);
        let e = read_regular(&f, 99).unwrap_err();
        assert_eq!(e.to_string(), "larger than the limit of 99 bytes");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn devices_directories_and_fifos_are_refused_without_blocking() {
        let e = read_regular(Path::new("/dev/zero"), MAX_PEM_FILE_SIZE).unwrap_err();
        assert_eq!(
            e.to_string(),
            "a character device, not a regular file",
            "{e}"
        );
        let e = read_regular(Path::new("/"), MAX_PEM_FILE_SIZE).unwrap_err();
        assert_eq!(e.to_string(), "a directory, not a regular file");
        let dir = scratch("fifo");
        let fifo = dir.join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        // No writer: a blocking open would wait for ever.
        let e = read_regular(&fifo, MAX_PEM_FILE_SIZE).unwrap_err();
        assert_eq!(e.to_string(), "a FIFO, not a regular file");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn text_must_be_utf8() {
        let dir = scratch("utf8");
        let f = dir.join("a.toml");
        std::fs::write(&f, b"a = 1\n\xff").unwrap();
        let e = read_text(&f, MAX_CONFIG_FILE_SIZE).unwrap_err();
        assert!(e.to_string().contains("offset 6"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
