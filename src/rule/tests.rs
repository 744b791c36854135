use super::*;

fn ctx<'a>(sni: Option<&'a str>, alpn: &'a [&'a [u8]], ip: &str) -> MatchCtx<'a> {
    MatchCtx {
        sni,
        alpn,
        client_ip: ip.parse().expect("test ip"),
        tls: sni.is_some() || !alpn.is_empty(),
        pg: None,
    }
}

/// Rule, SNI, offered ALPN, client IP, expected match.
type Case<'a> = (&'a str, Option<&'a str>, &'a [&'a [u8]], &'a str, bool);

/// Traefik v2's matchers (pkg/muxer/tcp/matcher_v2.go semantics), rule
/// by rule: several values per matcher, mux templates, `*` positions.
#[test]
fn v2_rules_match_as_traefik_v2() {
    let cases: &[Case<'_>] = &[
        ("HostSNI(`foobar`)", Some("foobar"), &[], "10.0.0.1", true),
        ("hostsni(`foobar`)", Some("foobar"), &[], "10.0.0.1", true),
        ("HostSNI(`foobar`)", Some("bar"), &[], "10.0.0.1", false),
        (
            "HostSNI(`Foo.Example.com.`)",
            Some("foo.example.com"),
            &[],
            "10.0.0.1",
            true,
        ),
        (
            "HostSNI(`a.test`, `b.test`)",
            Some("b.test"),
            &[],
            "10.0.0.1",
            true,
        ),
        (
            "HostSNI(`a.test`, `b.test`)",
            Some("c.test"),
            &[],
            "10.0.0.1",
            false,
        ),
        // `*` first: everything, even without a name; later: any name.
        ("HostSNI(`*`)", None, &[], "10.0.0.1", true),
        (
            "HostSNI(`a.test`, `*`)",
            Some("z.test"),
            &[],
            "10.0.0.1",
            true,
        ),
        ("HostSNI(`a.test`, `*`)", None, &[], "10.0.0.1", false),
        (
            "HostSNIRegexp(`{subdomain:[a-z]+}.foobar`)",
            Some("sub.foobar"),
            &[],
            "10.0.0.1",
            true,
        ),
        (
            "HostSNIRegexp(`{subdomain:[a-z]+}.foobar`)",
            Some("sub.foobar.com"),
            &[],
            "10.0.0.1",
            false,
        ),
        (
            "HostSNIRegexp(`{subdomain:[a-z]*}`)",
            None,
            &[],
            "10.0.0.1",
            true,
        ),
        (
            "HostSNIRegexp(`{dummy}`)",
            Some("toto"),
            &[],
            "10.0.0.1",
            true,
        ),
        (
            "HostSNIRegexp(`{dummy}`)",
            Some("toto.com"),
            &[],
            "10.0.0.1",
            false,
        ),
        // Literal text is literal: the dot is not "any character".
        (
            "HostSNIRegexp(`a.{x}`)",
            Some("abc"),
            &[],
            "10.0.0.1",
            false,
        ),
        ("HostSNIRegexp(`A.{x}`)", Some("a.b"), &[], "10.0.0.1", true),
        (
            "HostSNIRegexp(`x.test`, `{n}.db.test`)",
            Some("pg.db.test"),
            &[],
            "10.0.0.1",
            true,
        ),
        (
            "!HostSNIRegexp(`bar`)",
            Some("foobar"),
            &[],
            "10.0.0.1",
            true,
        ),
        (
            "ClientIP(`10.0.0.1`, `10.0.0.0`)",
            None,
            &[],
            "10.0.0.0",
            true,
        ),
        (
            "ClientIP(`11.0.0.0/16`, `10.0.0.0/16`)",
            None,
            &[],
            "10.0.5.5",
            true,
        ),
        (
            "ClientIP(`11.0.0.0/16`, `10.0.0.0/16`)",
            None,
            &[],
            "12.0.0.1",
            false,
        ),
        ("ClientIP(`10::10`)", None, &[], "10::10", true),
        (
            "ALPN(`h2`, `postgresql`)",
            Some("x"),
            &[b"postgresql"],
            "10.0.0.1",
            true,
        ),
        (
            "ALPN(`h2`, `postgresql`)",
            Some("x"),
            &[b"http/1.1"],
            "10.0.0.1",
            false,
        ),
        (
            "HostSNI(`foobar`) && !ClientIP(`10.0.0.2`)",
            Some("foobar"),
            &[],
            "10.0.0.1",
            true,
        ),
    ];
    for &(rule, sni, alpn, ip, want) in cases {
        let r = parse_with(rule, Syntax::V2).unwrap_or_else(|e| panic!("{rule}: {e}"));
        assert!(r.is_v2());
        assert_eq!(
            r.matches(&ctx(sni, alpn, ip)),
            want,
            "{rule} with {sni:?}/{ip}"
        );
    }
}

#[test]
fn v2_rules_refuse_what_traefik_v2_refuses() {
    for (rule, says) in [
        ("HostSNI()", "at least one argument"),
        ("HostSNI(``)", "not a valid hostname"),
        ("HostSNI(`*.example.com`)", "no `*.` wildcards"),
        ("HostSNIRegexp()", "at least one argument"),
        ("HostSNIRegexp(`{sub`)", "unbalanced braces"),
        ("HostSNIRegexp(`{:[a-z]+}.a`)", "missing name or pattern"),
        ("HostSNIRegexp(`{x:[}.a`)", "invalid HostSNIRegexp"),
        ("ClientIP(`invalid`)", "invalid ClientIP"),
        ("ALPN(`h2`, `acme-tls/1`)", "reserved"),
    ] {
        let e = parse_with(rule, Syntax::V2).expect_err(rule);
        assert!(e.message.contains(says), "{rule}: {}", e.message);
    }
    // v3 keeps one argument per matcher, and v2 templates mean
    // something else there (a regexp repetition), so they must not be
    // read as v3 silently: the router's syntax decides.
    assert!(parse("HostSNI(`a.test`, `b.test`)").is_err());
}

#[test]
fn v2_rules_print_as_their_v3_equivalent() {
    for (v2, v3) in [
        (
            "HostSNI(`a.test`, `B.test.`) && ClientIP(`10.0.0.0/8`, `1.2.3.4`)",
            "(HostSNI(`a.test`) || HostSNI(`b.test`)) && (ClientIP(`10.0.0.0/8`) || ClientIP(`1.2.3.4`))",
        ),
        (
            "HostSNIRegexp(`{sub:[a-z]+}.example.org`)",
            "HostSNIRegexp(`(?i)^([a-z]+)\\.example\\.org$`)",
        ),
        ("HostSNI(`*`)", "HostSNI(`*`)"),
    ] {
        let r = parse_with(v2, Syntax::V2).expect(v2);
        assert_eq!(r.to_string(), v3, "{v2}");
        // The printed rule is valid v3 and matches the same way.
        let again = parse(&r.to_string()).expect("v3 parses");
        for sni in ["a.test", "b.test", "sub.example.org", "x.y"] {
            let c = ctx(Some(sni), &[], "10.1.2.3");
            assert_eq!(r.matches(&c), again.matches(&c), "{v2} on {sni}");
        }
    }
    assert!(parse_with("HostSNI(`*`)", Syntax::V2)
        .expect("*")
        .is_catch_all());
}

#[test]
fn match_table() {
    const H2: &[&[u8]] = &[b"h2", b"http/1.1"];
    const H1: &[&[u8]] = &[b"http/1.1"];
    #[rustfmt::skip]
    let cases: &[Case] = &[
        ("HostSNI(`*`)", None, &[], "10.0.0.1", true),
        ("HostSNI(`*`)", Some("a.com"), H2, "::1", true),
        ("HostSNI(`example.com`)", Some("example.com"), &[], "10.0.0.1", true),
        ("HostSNI(`EXAMPLE.Com`)", Some("example.com"), &[], "10.0.0.1", true),
        ("HostSNI(`example.com.`)", Some("example.com"), &[], "10.0.0.1", true),
        ("HostSNI(`example.com`)", None, &[], "10.0.0.1", false),
        ("HostSNI(`example.com`)", Some("www.example.com"), &[], "10.0.0.1", false),
        ("HostSNI(`_srv.ex-1.com`)", Some("_srv.ex-1.com"), &[], "10.0.0.1", true),
        ("HostSNI(`10.0.0.1`)", None, &[], "10.0.0.1", false),
        ("HostSNI(`*.example.com`)", Some("a.example.com"), &[], "10.0.0.1", true),
        ("HostSNI(`*.example.com`)", Some("a.b.example.com"), &[], "10.0.0.1", false),
        ("HostSNI(`*.example.com`)", Some("example.com"), &[], "10.0.0.1", false),
        ("HostSNI(`*.example.com`)", Some("aexample.com"), &[], "10.0.0.1", false),
        ("HostSNI(`*.example.com`)", None, &[], "10.0.0.1", false),
        ("HostSNIRegexp(`^[a-z]+\\.example\\.com$`)", Some("foo.example.com"), &[], "10.0.0.1", true),
        ("HostSNIRegexp(`^[a-z]+\\.example\\.com$`)", Some("a.b.example.com"), &[], "10.0.0.1", false),
        ("HostSNIRegexp(`example`)", Some("www.example.org"), &[], "10.0.0.1", true),
        // No server name (plain, or a hello without SNI) is matched as "".
        ("HostSNIRegexp(`.*`)", None, &[], "10.0.0.1", true),
        ("HostSNIRegexp(`^$`)", None, &[], "10.0.0.1", true),
        ("HostSNIRegexp(`^$`)", Some("a.com"), &[], "10.0.0.1", false),
        ("HostSNIRegexp(`.`)", None, &[], "10.0.0.1", false),
        ("!HostSNIRegexp(`.`)", None, &[], "10.0.0.1", true),
        ("ClientIP(`10.0.0.0/8`)", None, &[], "10.1.2.3", true),
        ("ClientIP(`10.0.0.0/8`)", None, &[], "11.0.0.1", false),
        ("ClientIP(`10.0.0.1`)", None, &[], "10.0.0.1", true),
        ("ClientIP(`10.0.0.1`)", None, &[], "10.0.0.2", false),
        ("ClientIP(`::1`)", None, &[], "::1", true),
        ("ClientIP(`::1`)", None, &[], "127.0.0.1", false),
        ("ClientIP(`2001:db8::/32`)", None, &[], "2001:db8::5", true),
        ("ClientIP(`2001:db8::/32`)", None, &[], "2001:db9::5", false),
        ("ClientIP(`::ffff:1.2.3.4`)", None, &[], "1.2.3.4", true),
        ("ClientIP(`::ffff:10.0.0.0/104`)", None, &[], "10.9.9.9", true),
        ("ClientIP(`0.0.0.0/0`)", None, &[], "::1", false),
        ("ClientIP(`::/0`)", None, &[], "1.2.3.4", false),
        ("ALPN(`h2`)", Some("a.com"), H2, "10.0.0.1", true),
        ("ALPN(`h2`)", Some("a.com"), H1, "10.0.0.1", false),
        ("ALPN(`h2`)", None, &[], "10.0.0.1", false),
        ("ALPN(`H2`)", Some("a.com"), H2, "10.0.0.1", false),
        // Matcher names in each casing Traefik's parser registers.
        ("hostsni(`a.com`)", Some("a.com"), &[], "10.0.0.1", true),
        ("HOSTSNI(`a.com`)", Some("a.com"), &[], "10.0.0.1", true),
        ("Hostsni(`a.com`)", Some("a.com"), &[], "10.0.0.1", true),
        ("Hostsni(`a.com`)", Some("b.com"), &[], "10.0.0.1", false),
        ("hostsniregexp(`^a`)", Some("a.com"), &[], "10.0.0.1", true),
        ("HOSTSNIREGEXP(`^a`)", Some("a.com"), &[], "10.0.0.1", true),
        ("Hostsniregexp(`^a`)", Some("a.com"), &[], "10.0.0.1", true),
        ("clientip(`10.0.0.1`)", None, &[], "10.0.0.1", true),
        ("CLIENTIP(`10.0.0.1`)", None, &[], "10.0.0.1", true),
        ("Clientip(`10.0.0.1`)", None, &[], "10.0.0.2", false),
        ("alpn(`h2`)", Some("a.com"), H2, "10.0.0.1", true),
        ("Alpn(`h2`)", Some("a.com"), H2, "10.0.0.1", true),
        ("hostsni(`*`) && !Clientip(`10.0.0.0/8`)", None, &[], "10.0.0.1", false),
        // Operators and precedence.
        ("HostSNI(`a.com`) || HostSNI(`b.com`)", Some("b.com"), &[], "10.0.0.1", true),
        ("HostSNI(`a.com`) && HostSNI(`b.com`)", Some("b.com"), &[], "10.0.0.1", false),
        ("!ClientIP(`10.0.0.0/8`)", None, &[], "10.0.0.1", false),
        ("!ClientIP(`10.0.0.0/8`)", None, &[], "192.168.0.1", true),
        ("!!ClientIP(`10.0.0.0/8`)", None, &[], "10.0.0.1", true),
        ("HostSNI(`a.com`) || HostSNI(`b.com`) && ALPN(`h2`)", Some("a.com"), &[], "10.0.0.1", true),
        ("(HostSNI(`a.com`) || HostSNI(`b.com`)) && ALPN(`h2`)", Some("a.com"), &[], "10.0.0.1", false),
        ("(HostSNI(`a.com`) || HostSNI(`b.com`)) && ALPN(`h2`)", Some("b.com"), H2, "10.0.0.1", true),
        ("!HostSNI(`a.com`) && HostSNI(`*`)", Some("a.com"), &[], "10.0.0.1", false),
        ("!HostSNI(`a.com`) && HostSNI(`*`)", Some("b.com"), &[], "10.0.0.1", true),
        ("!(HostSNI(`a.com`) || HostSNI(`b.com`))", Some("b.com"), &[], "10.0.0.1", false),
        ("\tHostSNI ( `a.com` )\n&&\r\nClientIP(`::1`) ", Some("a.com"), &[], "::1", true),
        // Quotes and escapes.
        ("HostSNI(\"a.com\")", Some("a.com"), &[], "10.0.0.1", true),
        ("HostSNIRegexp(\"^a\\\\.com$\")", Some("a.com"), &[], "10.0.0.1", true),
        ("HostSNIRegexp(\"^a\\\\.com$\")", Some("abcom"), &[], "10.0.0.1", false),
        ("ALPN(\"h\\x32\")", None, H2, "10.0.0.1", true),
        ("ALPN(\"\\u0068\\062\")", None, H2, "10.0.0.1", true),
        ("ALPN(\"\\\"q\\\"\")", None, &[b"\"q\""], "10.0.0.1", true),
        ("HostSNI(`a.com`,)", Some("a.com"), &[], "10.0.0.1", true),
    ];
    for &(rule, sni, alpn, ip, want) in cases {
        let r = parse(rule).unwrap_or_else(|e| panic!("{rule}: {e:?}"));
        assert_eq!(
            r.matches(&ctx(sni, alpn, ip)),
            want,
            "{rule} sni={sni:?} ip={ip}"
        );
    }
}

#[test]
fn display_is_canonical_and_round_trips() {
    #[rustfmt::skip]
    let cases = [
        ("HostSNI(\"EXAMPLE.com.\")", "HostSNI(`example.com`)"),
        ("  HostSNI(`a`)||HostSNI(`b`)&&!ALPN(`h2`) ", "HostSNI(`a`) || HostSNI(`b`) && !ALPN(`h2`)"),
        ("(HostSNI(`a`) || HostSNI(`b`)) && ALPN(`h2`)", "(HostSNI(`a`) || HostSNI(`b`)) && ALPN(`h2`)"),
        ("HostSNI(`a`) || (HostSNI(`b`) || HostSNI(`c`))", "HostSNI(`a`) || HostSNI(`b`) || HostSNI(`c`)"),
        ("((HostSNI(`a`)))", "HostSNI(`a`)"),
        ("hostsni(`a`) || CLIENTIP(`::1`) || Alpn(`h2`)", "HostSNI(`a`) || ClientIP(`::1`) || ALPN(`h2`)"),
        ("!(HostSNI(`a`) && HostSNI(`b`))", "!(HostSNI(`a`) && HostSNI(`b`))"),
        ("!(ClientIP(`::ffff:10.0.0.1`))", "!ClientIP(`10.0.0.1`)"),
        ("ClientIP(`10.1.2.3/8`)", "ClientIP(`10.0.0.0/8`)"),
        ("ClientIP(`10.0.0.1/32`)", "ClientIP(`10.0.0.1`)"),
        ("ClientIP(`2001:DB8::1/32`)", "ClientIP(`2001:db8::/32`)"),
        ("HostSNIRegexp(\"a`b\")", "HostSNIRegexp(\"a`b\")"),
        ("ALPN(\"x\\ty\\\\\")", "ALPN(\"x\\ty\\\\\")"),
        ("ALPN(\"\\x01\")", "ALPN(\"\\x01\")"),
    ];
    for (rule, want) in cases {
        let shown = parse(rule).expect(rule).to_string();
        assert_eq!(shown, want, "{rule}");
        assert_eq!(parse(&shown).expect(&shown).to_string(), shown);
    }
}

#[test]
fn catch_all_needs_tls_and_host_snis() {
    // (rule, Traefik's catch-all, needs a router with tls)
    #[rustfmt::skip]
    let cases = [
        ("HostSNI(`*`)", true, false),
        ("   HostSNI ( `*` )       ", true, false),
        ("((HostSNI(`*`)))", true, false),
        ("hostsni(`*`,)", true, false),
        ("HOSTSNI(\"*\")", true, false),
        ("!HostSNI(`*`)", true, false),
        ("ClientIP(`10.0.0.0/8`)", false, false),
        ("HostSNI(`*`) && !ClientIP(`10.0.0.0/8`)", false, false),
        ("HostSNI(`*`) || HostSNI(`*`)", false, false),
        ("HostSNI(`a.com`)", false, true),
        ("!HostSNI(`a.com`)", false, true),
        ("HostSNI(`*.a.com`) || ClientIP(`::1`)", false, true),
        ("HostSNI(`*`) || ALPN(`h2`)", false, false),
        ("HostSNIRegexp(`.`)", false, false),
        ("ALPN(`h2`)", false, false),
    ];
    for (rule, catch_all, tls) in cases {
        let r = parse(rule).expect(rule);
        assert_eq!(
            (r.is_catch_all(), r.needs_tls()),
            (catch_all, tls),
            "{rule}"
        );
    }
    let r = parse("HostSNI(`A.com`) || HostSNI(`*.b.com`) && !HostSNI(`a.com.`) || HostSNI(`*`)")
        .expect("valid");
    assert_eq!(r.host_snis(), ["a.com", "*.b.com"]);
    assert!(parse("ClientIP(`::1`)")
        .expect("valid")
        .host_snis()
        .is_empty());
}

#[test]
fn error_table() {
    let long = format!("HostSNI(`{}.com`)", "a".repeat(250));
    let deep_paren = format!("{}HostSNI(`*`){}", "(".repeat(100), ")".repeat(100));
    let deep_not = format!("{}HostSNI(`*`)", "!".repeat(100));
    #[rustfmt::skip]
    let cases: &[(&str, usize, &str)] = &[
        ("", 0, "empty rule"),
        (" \n ", 0, "empty rule"),
        ("Host(`a`)", 0, "unknown matcher `Host` (TCP rules know HostSNI, HostSNIRegexp, ClientIP, ALPN, and the PostgreSQL extensions PgDatabase, PgUser, PgParam)"),
        ("hostSNI(`a`)", 0, "unknown matcher `hostSNI` (a matcher name is written `HostSNI`, `hostsni`, `HOSTSNI` or `Hostsni`)"),
        ("HostSni(`a`)", 0, "unknown matcher `HostSni`"),
        ("HostSNIregexp(`a`)", 0, "`HostSNIRegexp`, `hostsniregexp`, `HOSTSNIREGEXP` or `Hostsniregexp`"),
        ("ClientIp(`::1`)", 0, "unknown matcher `ClientIp`"),
        ("aLPN(`h2`)", 0, "`ALPN`, `alpn`, `ALPN` or `Alpn`"),
        ("HostSNI(`a`) && Foo(`b`)", 16, "unknown matcher `Foo`"),
        ("HostSNI(`a`) && ", 16, "unexpected end of rule, expected a matcher"),
        ("HostSNI(`a` `b`)", 12, "expected `)` after argument"),
        ("HostSNI(`a`", 11, "expected `)` after argument"),
        ("HostSNI(`a)", 8, "unterminated string"),
        ("HostSNI(\"a)", 8, "unterminated string"),
        ("HostSNI(\"a\nb\")", 8, "unterminated string"),
        ("HostSNI()", 0, "exactly one argument, got none"),
        ("HostSNI(`a`, `b`)", 13, "exactly one argument, got 2"),
        ("ALPN(`a`,`b`,`c`)", 9, "got 3"),
        ("HostSNI(a)", 8, "expected a quoted argument"),
        ("HostSNI(", 8, "unexpected end of rule, expected a quoted argument"),
        ("HostSNI('a')", 8, "single quotes"),
        ("HostSNI `a`", 8, "expected `(` after `HostSNI`"),
        ("HostSNI", 7, "expected `(` after `HostSNI`"),
        ("HostSNI(\"a\\qb\")", 10, "unknown escape sequence `\\q`"),
        ("HostSNI(\"a\\x4\")", 10, "malformed escape"),
        ("HostSNI(\"\\xff\")", 9, "above \\x7f"),
        ("HostSNI(\"\\ud800\")", 9, "not a valid Unicode"),
        ("HostSNI(`a`) & HostSNI(`b`)", 13, "single `&`"),
        ("HostSNI(`a`) | HostSNI(`b`)", 13, "single `|`"),
        ("HostSNI(`a`))", 12, "without a matching `(`"),
        ("(HostSNI(`a`)", 13, "expected `)` to close the `(` at byte 0"),
        ("HostSNI(`a`) HostSNI(`b`)", 13, "expected `&&`, `||` or end of rule"),
        ("&& HostSNI(`a`)", 0, "expected a matcher, found `&&`"),
        ("()", 1, "expected a matcher, found `)`"),
        ("HostSNI(`a`) # x", 13, "unexpected character '#'"),
        ("é", 0, "unexpected character"),
        ("HostSNI(`a`)\u{a0}", 12, "unexpected character"),
        ("HostSNI(``)", 8, "empty"),
        ("HostSNI(`.`)", 8, "empty"),
        ("HostSNI(`a..com`)", 8, "empty label"),
        ("HostSNI(`a.com..`)", 8, "empty label"),
        ("HostSNI(`*.`)", 8, "`*` is only allowed"),
        ("HostSNI(`a b`)", 8, "invalid character ' '"),
        ("HostSNI(`bücher.de`)", 8, "punycode"),
        ("HostSNI(`a.*.com`)", 8, "`*` is only allowed"),
        ("HostSNI(`*com`)", 8, "`*` is only allowed"),
        (&long, 8, "the limit is 253"),
        ("HostSNIRegexp(`(`)", 14, "invalid HostSNIRegexp"),
        ("ClientIP(`10.0.0.256`)", 9, "invalid ClientIP `10.0.0.256`"),
        ("ClientIP(`10.0.0.0/33`)", 9, "invalid ClientIP"),
        ("ClientIP(``)", 9, "invalid ClientIP"),
        ("ALPN(`acme-tls/1`)", 5, "acme-tls/1"),
        ("ALPN(``)", 5, "empty"),
        (&deep_paren, MAX_DEPTH, "nests too deeply"),
        (&deep_not, MAX_DEPTH, "nests too deeply"),
    ];
    for &(rule, offset, msg) in cases {
        let e = parse(rule).expect_err(rule);
        assert!(
            e.message.contains(msg),
            "{rule:?}: {:?} lacks {msg:?}",
            e.message
        );
        assert_eq!(e.offset, offset, "{rule:?}: {}", e.message);
    }
}

/// Cheap in-tree fuzzing: every prefix of some tricky rules, plus random
/// soups of rule fragments, must parse or fail without panicking.
#[test]
fn no_panics_on_garbage() {
    let seeds = [
        "!(HostSNI(\"a\\u00e9\\x41\") || HostSNIRegexp(`^a$`)) && ClientIP(`::ffff:1.2.3.4/120`)",
        "ALPN(\"\\U0001F600\\101\") || HostSNI(`*.é.com`,)",
    ];
    for seed in seeds {
        for (i, _) in seed.char_indices() {
            let _ = seed.get(..i).map(parse);
        }
    }
    // The deepest nesting allowed must still parse, match and print.
    let deep = format!("{}HostSNI(`*`){}", "(!".repeat(32), ")".repeat(32));
    let r = parse(&deep).expect("64 levels are allowed");
    assert!(r.matches(&ctx(None, &[], "::1")));
    assert_eq!(r.to_string(), format!("{}HostSNI(`*`)", "!".repeat(32)));
    let parts = [
        "HostSNI",
        "ALPN",
        "ClientIP",
        "HostSNIRegexp",
        "(",
        ")",
        "!",
        "&&",
        "||",
        "&",
        ",",
        "`",
        "\"",
        "\\",
        "\\x",
        "\\u12",
        "a.com",
        "*",
        "::1/",
        "é",
        " ",
        "\n",
        "[",
    ];
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..5000 {
        let mut rule = String::new();
        for _ in 0..(seed % 24) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            rule.push_str(parts[(seed % parts.len() as u64) as usize]);
        }
        if let Ok(r) = parse(&rule) {
            let shown = r.to_string();
            assert_eq!(parse(&shown).map(|r| r.to_string()), Ok(shown));
        }
    }
}

#[test]
fn fuzz_corpus_replays() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/rule");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz/corpus/rule exists") {
        let bytes = std::fs::read(entry.expect("dir entry").path()).expect("readable");
        let text = String::from_utf8_lossy(&bytes);
        // The fuzz target's properties, on every committed input.
        if let Ok(rule) = parse(&text) {
            let canonical = rule.to_string();
            let again = parse(&canonical).expect("canonical form parses");
            assert_eq!(again.to_string(), canonical);
        }
        if let Ok(rule) = parse_with(&text, Syntax::V2) {
            parse(&rule.to_string()).expect("a v2 rule's v3 form parses");
        }
        n += 1;
    }
    assert!(n >= 5, "only {n} seed files in {}", dir.display());
}

fn pg(params: &[(&str, &str)]) -> crate::wire::postgres::Startup {
    crate::wire::postgres::Startup {
        version: 3 << 16,
        params: params
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect(),
    }
}

#[test]
fn postgres_matchers() {
    let orders = pg(&[
        ("user", "report_ro"),
        ("database", "orders"),
        ("application_name", "etl"),
    ]);
    let no_db = pg(&[("user", "orders")]);
    let mut c = ctx(None, &[], "10.0.0.1");
    let table: &[(&str, &crate::wire::postgres::Startup, bool)] = &[
        ("PgDatabase(`orders`)", &orders, true),
        ("PgDatabase(`order`)", &orders, false),
        ("PgDatabase(`ord*`)", &orders, true),
        ("PgDatabase(`*ers`)", &orders, true),
        ("PgDatabase(`o*r*s`)", &orders, true),
        ("PgDatabase(`o*x`)", &orders, false),
        // No database: PostgreSQL takes the user name.
        ("PgDatabase(`orders`)", &no_db, true),
        ("PgUser(`report*`)", &orders, true),
        ("PgUser(`report`)", &orders, false),
        ("PgParam(`application_name`, `etl`)", &orders, true),
        ("PgParam(`application_name`, `e*`)", &orders, true),
        ("PgParam(`application_name`, `etl`)", &no_db, false),
        ("PgUser(`*`) && !PgDatabase(`orders`)", &orders, false),
        ("PgUser(`x`) || ClientIP(`10.0.0.0/8`)", &orders, true),
    ];
    for (rule, startup, want) in table {
        c.pg = Some(startup);
        let r = parse(rule).unwrap_or_else(|e| panic!("{rule}: {e}"));
        assert_eq!(r.matches(&c), *want, "{rule}");
        assert!(r.uses_pg() || rule.contains("ClientIP"), "{rule}");
        // Canonical form parses to itself.
        assert_eq!(parse(&r.to_string()).unwrap().to_string(), r.to_string());
    }
    // Without a startup packet a Pg matcher never matches.
    c.pg = None;
    assert!(!parse("PgUser(`*`)").unwrap().matches(&c));
    assert_eq!(
        parse("PgParam(`a`, `b`)").unwrap().to_string(),
        "PgParam(`a`, `b`)"
    );
    assert!(!parse("HostSNI(`*`)").unwrap().uses_pg());
}

#[test]
fn postgres_matcher_errors() {
    let table: &[(&str, usize, &str)] = &[
        ("PgDatabase(``)", 11, "the pattern is empty (use `*` to match every name)"),
        ("PgParam(`a`)", 0, "`PgParam` takes two arguments (a parameter name and a pattern), got 1"),
        ("PgParam(``, `x`)", 8, "PgParam needs a parameter name (e.g. `application_name`)"),
        ("PgUser(`a`, `b`)", 12, "`PgUser` takes exactly one argument, got 2 (Traefik v3 matchers take one argument each; combine them with `||`)"),
    ];
    for (rule, at, msg) in table {
        let e = parse(rule).unwrap_err();
        assert_eq!((e.offset, e.message.as_str()), (*at, *msg), "{rule}");
    }
}

#[test]
fn glob_has_no_slow_patterns() {
    assert!(glob(b"*", b""));
    assert!(glob(b"a*", b"a"));
    assert!(!glob(b"a", b""));
    assert!(glob(b"**a**b", b"xxaxxb"));
    let text = vec![b'a'; 5000];
    let mut pat = b"*a".repeat(50);
    pat.push(b'b');
    assert!(!glob(&pat, &text));
}

/// Found by fuzzing: v2 accepted these names, and the v3 form `check` prints
/// for them did not parse. Now v2 refuses them with v3's reason.
#[test]
fn v2_host_sni_names_are_ones_v3_accepts() {
    for (name, why) in [
        (".", "empty"),
        ("a:b", "invalid character ':'"),
        ("a..b", "empty label"),
    ] {
        let rule = format!("HostSNI(`{name}`)");
        let e = parse_with(&rule, Syntax::V2).expect_err(name);
        assert!(e.message.contains(why), "{name}: {}", e.message);
        assert!(parse(&rule).is_err(), "{name} in v3");
    }
    for name in ["a.com", "A.Com.", "db_1.example", "::1", "10.0.0.1"] {
        let rule = parse_with(&format!("HostSNI(`{name}`)"), Syntax::V2).expect(name);
        parse(&rule.to_string()).expect("its v3 form parses");
    }
}
