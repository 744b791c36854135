//! Fuzz target for `wire::postgres::decode_first` and `BackendScan`: never
//! panic; a decision on a prefix stands; a decoded StartupMessage encodes
//! back to the same bytes; the scanner sees the same whatever the chunking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluicegate::wire::postgres::{decode_first, BackendScan, First};

fuzz_target!(|data: &[u8]| {
    let whole = decode_first(data);
    let cut = data.len() / 2;
    match decode_first(&data[..cut]) {
        First::NeedMore { min_len } => assert!(min_len > cut),
        part => assert_eq!(part, whole),
    }
    if let First::Startup { startup, len } = &whole {
        assert_eq!(startup.encode_with(None, None), data[..*len]);
    }
    let mut a = BackendScan::default();
    for b in data {
        a.feed(std::slice::from_ref(b));
    }
    let mut b = BackendScan::default();
    b.feed(data);
    assert_eq!((a.key, a.done), (b.key, b.done));
});
