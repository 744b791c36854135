//! Fuzz target for `wire::proxy_protocol::decode`: never panics, decisions
//! are final, and every decoded address survives a re-encode round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluicegate::wire::proxy_protocol::{
    decode, encode_v1, encode_v2, Addresses, Decoded, Version, V2_MAX_LEN,
};

fuzz_target!(|data: &[u8]| {
    let answer = decode(data);
    match &answer {
        Decoded::NeedMore { min_len } => assert!(*min_len > data.len() && *min_len <= V2_MAX_LEN),
        Decoded::Header(header) => {
            assert!(header.consumed_len <= data.len());
            if let Addresses::Proxied { src, dst } = header.addresses {
                let again = match header.version {
                    Version::V1 => encode_v1(src, dst),
                    Version::V2 => encode_v2(src, dst),
                };
                let Decoded::Header(back) = decode(&again) else {
                    panic!("re-encoded header does not decode: {again:?}");
                };
                assert_eq!(back.addresses, header.addresses);
                assert_eq!(back.consumed_len, again.len());
            }
        }
        Decoded::Invalid(_) => {}
    }
    let half = &data[..data.len() / 2];
    match decode(half) {
        Decoded::NeedMore { min_len } if data.len() >= min_len => {}
        decided => assert_eq!(decided, answer),
    }
});
