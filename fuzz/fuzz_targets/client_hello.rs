//! Fuzz target for `wire::client_hello::peek`: never panics, and every answer
//! keeps its promise (need-more bounds, decisions final on longer input).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluicegate::wire::client_hello::{max_buffered, peek, Peek, DEFAULT_CAP, MIN_CAP};

fuzz_target!(|data: &[u8]| {
    // The smallest cap exercises the too-large paths on short inputs.
    for cap in [DEFAULT_CAP, MIN_CAP] {
        let answer = peek(data, cap);
        match &answer {
            Peek::NeedMore { min_len } => {
                assert!(*min_len > data.len() && *min_len <= max_buffered(cap))
            }
            // More handshake bytes than the cap, or more record headers than
            // its allowance (cap / 5 of them, all already buffered).
            Peek::TooLarge { hello_len } => assert!(*hello_len > cap || data.len() > cap),
            Peek::Hello(hello) => {
                assert!(hello.raw_len <= data.len() && hello.raw_len <= max_buffered(cap));
                assert!(hello.hello_len <= cap);
                if let Some(sni) = &hello.sni {
                    assert!(!sni.is_empty() && !sni.ends_with('.') && !hello.sni_invalid);
                    assert!(!sni.bytes().any(|b| b.is_ascii_uppercase()));
                }
            }
            Peek::NotTls(_) => {}
        }
        // A decision on a prefix is the decision on the whole input.
        let half = &data[..data.len() / 2];
        match peek(half, cap) {
            Peek::NeedMore { min_len } if data.len() >= min_len => {}
            decided => assert_eq!(decided, answer),
        }
    }
});
