//! Fuzz target for the configuration parsers (`config::tree`): YAML and TOML
//! text never panics either parser, every position they report (errors,
//! keys, values) stays inside the text, and the KV listing built from any
//! pairs places every value where the listing has it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluicegate::config::tree::{self, Item, Table, V};

fn check(t: &Table, len: usize, depth: usize) {
    assert!(depth < 1000);
    for e in &t.entries {
        assert!(e.key_at <= len);
        item(&e.item, len, depth + 1);
    }
}

fn item(i: &Item, len: usize, depth: usize) {
    assert!(i.at <= len);
    match &i.v {
        V::Table(t) => check(t, len, depth),
        V::Array(a) | V::Tables(a) => a.iter().for_each(|x| item(x, len, depth + 1)),
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for parsed in [tree::parse_yaml(text), tree::parse_toml(text)] {
        match parsed {
            Ok(t) => check(&t, text.len(), 0),
            Err(e) => assert!(e.offset <= text.len()),
        }
    }
    // The same bytes as KV pairs: one pair per line, `key=value`.
    let pairs: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let listing = tree::kv_listing(&pairs);
    let t = tree::from_pairs(&pairs, &listing);
    check(&t, listing.len(), 0);
});
