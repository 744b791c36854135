//! Fuzz target for the rule language (`rule::parse`): never panics, an
//! error offset stays inside the rule, and a parsed rule prints to a canonical
//! form that parses again to the same form. Rules in v2 syntax print as v3
//! rules that parse.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluicegate::rule::{parse, parse_with, Syntax};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse(text) {
        Ok(rule) => {
            let canonical = rule.to_string();
            let again = parse(&canonical).expect("canonical form parses");
            assert_eq!(again.to_string(), canonical);
        }
        Err(e) => assert!(e.offset <= text.len()),
    }
    match parse_with(text, Syntax::V2) {
        Ok(rule) => {
            parse(&rule.to_string()).expect("a v2 rule's v3 form parses");
        }
        Err(e) => assert!(e.offset <= text.len()),
    }
});
