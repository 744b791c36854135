//! Fuzz target for `wire::postgres::classify`: never panics, and only an
//! exact 8-byte request is ever classified as one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluicegate::wire::postgres::{classify, PgFirst, GSSENC_REQUEST, SSL_REQUEST};

fuzz_target!(|data: &[u8]| {
    match classify(data) {
        PgFirst::SslRequest => assert_eq!(data, SSL_REQUEST),
        PgFirst::GssEncRequest => assert_eq!(data, GSSENC_REQUEST),
        PgFirst::NeedMore => assert!(data.len() < SSL_REQUEST.len()),
        PgFirst::BytesAfterRequest => assert!(data.len() > SSL_REQUEST.len()),
        PgFirst::NotPostgres => {}
    }
    // Bytes from the reply byte on: the backend check must not panic either.
    if let Some(&reply) = data.first() {
        let _ = sluicegate::wire::postgres::check_backend_reply(reply);
    }
});
