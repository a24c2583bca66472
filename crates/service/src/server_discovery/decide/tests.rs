use super::*;

fn name(s: &str) -> OwnedServerName {
    ServerName::parse(s).unwrap()
}

fn dest(url_base: &str, host_header: &str, tls_name: &str) -> Destination {
    Destination {
        url_base: url_base.to_owned(),
        host_header: host_header.to_owned(),
        tls_name: tls_name.to_owned(),
        srv_targets: Vec::new(),
    }
}

#[test]
fn first_step_follows_the_spec_order() {
    let ready = |d: Destination| Ok(FirstStep::Ready(d));
    let well_known = |h: &str| Ok(FirstStep::FetchWellKnown { hostname: h.to_owned() });
    let cases: Vec<(&str, Result<FirstStep, DiscoveryError>)> = vec![
        // Step 1: IP literals, port 8448 unless given; Host is the name as written.
        ("1.2.3.4", ready(dest("https://1.2.3.4:8448", "1.2.3.4", "1.2.3.4"))),
        ("1.2.3.4:1234", ready(dest("https://1.2.3.4:1234", "1.2.3.4:1234", "1.2.3.4"))),
        ("[1234:5678::abcd]", ready(dest("https://[1234:5678::abcd]:8448", "[1234:5678::abcd]", "1234:5678::abcd"))),
        ("[1234:5678::abcd]:5678", ready(dest("https://[1234:5678::abcd]:5678", "[1234:5678::abcd]:5678", "1234:5678::abcd"))),
        ("[::1]:8448", ready(dest("https://[::1]:8448", "[::1]:8448", "::1"))),
        // Step 2: explicit port, no well-known; TLS for the hostname.
        ("matrix.org:8448", ready(dest("https://matrix.org:8448", "matrix.org:8448", "matrix.org"))),
        ("Example.COM:443", ready(dest("https://example.com:443", "Example.COM:443", "example.com"))),
        // Step 3: a bare hostname asks its well-known (lowercased).
        ("matrix.org", well_known("matrix.org")),
        ("Example.Com", well_known("example.com")),
        ("localhost", well_known("localhost")),
        // Not an IPv4 literal to the spec's grammar: a hostname.
        ("1.2.3", well_known("1.2.3")),
    ];
    for (server_name, expected) in cases {
        assert_eq!(first_step(&name(server_name)), expected, "{server_name}");
    }
}

#[test]
fn overlong_names_are_refused() {
    let long = format!("{}.org", "a".repeat(MAX_SERVER_NAME_BYTES));
    assert_eq!(first_step(&name(&long)), Err(DiscoveryError::InvalidServerName));
    assert_eq!(after_well_known("example.org", Some(&name(&long))), Err(DiscoveryError::InvalidServerName));
}

#[test]
fn well_known_bodies() {
    let cases: &[(&[u8], Option<&str>)] = &[
        (br#"{"m.server": "delegated.example.org"}"#, Some("delegated.example.org")),
        (br#"{"m.server": "delegated.example.org:443"}"#, Some("delegated.example.org:443")),
        (br#"{"m.server": "10.0.0.1:8448", "other": [1, 2]}"#, Some("10.0.0.1:8448")),
        (br#"{"m.server": "[::1]"}"#, Some("[::1]")),
        // Invalid JSON, missing or mistyped property, invalid server name.
        (b"not json", None),
        (b"", None),
        (br#"{"m.server": "delegated.example.org""#, None),
        (br#"{}"#, None),
        (br#"["m.server"]"#, None),
        (br#"{"m.server": 8448}"#, None),
        (br#"{"m.server": null}"#, None),
        (br#"{"m.server": ""}"#, None),
        (br#"{"m.server": "bad_host.example.org"}"#, None),
        (br#"{"m.server": "example.org:99999"}"#, None),
        (br#"{"m.server": "https://example.org"}"#, None),
        (b"\xff\xfe{}", None),
    ];
    for (body, expected) in cases {
        assert_eq!(parse_well_known(body).as_deref().map(ServerName::as_str), *expected, "{}", String::from_utf8_lossy(body));
    }
    // Deep nesting hits serde_json's recursion limit: invalid, no panic.
    let deep = format!(r#"{{"x": {}{}, "m.server": "a.org"}}"#, "[".repeat(10_000), "]".repeat(10_000));
    assert_eq!(parse_well_known(deep.as_bytes()), None);
}

#[test]
fn well_known_cache_times() {
    let hour = 3600 * 1000;
    let cases: &[(Option<&str>, u64)] = &[
        (None, 24 * hour),
        (Some(""), 24 * hour),
        (Some("public"), 24 * hour),
        (Some("max-age=3600"), hour),
        (Some("public, max-age=7200"), 2 * hour),
        (Some("Max-Age=\"7200\""), 2 * hour),
        // Capped at 48 hours, floored at 5 minutes.
        (Some("max-age=604800"), 48 * hour),
        (Some("max-age=18446744073709551615"), 48 * hour),
        (Some("max-age=0"), 5 * 60 * 1000),
        (Some("max-age=10"), 5 * 60 * 1000),
        (Some("no-store"), 5 * 60 * 1000),
        (Some("max-age=7200, no-cache"), 5 * 60 * 1000),
        // An unreadable max-age is ignored.
        (Some("max-age=soon"), 24 * hour),
        (Some("max-age=-5"), 24 * hour),
    ];
    for (header, expected) in cases {
        assert_eq!(well_known_cache_ms(*header), *expected, "{header:?}");
    }
}

#[test]
fn well_known_entries_and_their_expiry() {
    let now = 1_000_000;
    let ok = |body: &str, cache_control: Option<&str>| WellKnownFetch::Answered {
        status: 200,
        body: body.as_bytes().to_vec(),
        cache_control: cache_control.map(str::to_owned),
    };
    let status = |status: u16| WellKnownFetch::Answered { status, body: Vec::new(), cache_control: None };
    let held = WellKnownEntry { delegated: Some(name("old.example.org")), expires_at_ms: now - 1 };
    let entry =
        |delegated: Option<&str>, hold_ms: u64| WellKnownEntry { delegated: delegated.map(name), expires_at_ms: now + hold_ms };
    let cases: Vec<(&str, WellKnownFetch, Option<&WellKnownEntry>, WellKnownEntry)> = vec![
        (
            "valid, no header: 24 h",
            ok(r#"{"m.server":"d.example.org"}"#, None),
            None,
            entry(Some("d.example.org"), WELL_KNOWN_DEFAULT_CACHE_MS),
        ),
        (
            "valid, max-age",
            ok(r#"{"m.server":"d.example.org"}"#, Some("max-age=600")),
            Some(&held),
            entry(Some("d.example.org"), 600_000),
        ),
        ("invalid JSON: 1 h", ok("{", None), None, entry(None, WELL_KNOWN_FAILURE_CACHE_MS)),
        (
            "invalid body is not temporary: the old delegation goes",
            ok("{}", None),
            Some(&held),
            entry(None, WELL_KNOWN_FAILURE_CACHE_MS),
        ),
        ("404: 1 h", status(404), None, entry(None, WELL_KNOWN_FAILURE_CACHE_MS)),
        ("404 ends an old delegation", status(404), Some(&held), entry(None, WELL_KNOWN_FAILURE_CACHE_MS)),
        ("301 left unfollowed", status(301), None, entry(None, WELL_KNOWN_FAILURE_CACHE_MS)),
        ("503 with nothing before: 1 h", status(503), None, entry(None, WELL_KNOWN_FAILURE_CACHE_MS)),
        (
            "503 keeps the old delegation a little",
            status(503),
            Some(&held),
            entry(Some("old.example.org"), WELL_KNOWN_DOWN_CACHE_MS),
        ),
        (
            "unreachable keeps the old delegation a little",
            WellKnownFetch::Failed,
            Some(&held),
            entry(Some("old.example.org"), WELL_KNOWN_DOWN_CACHE_MS),
        ),
        ("unreachable, nothing before: 1 h", WellKnownFetch::Failed, None, entry(None, WELL_KNOWN_FAILURE_CACHE_MS)),
    ];
    for (what, fetch, previous, expected) in cases {
        assert_eq!(well_known_entry(&fetch, previous, now), expected, "{what}");
    }
}

#[test]
fn after_well_known_follows_the_spec_order() {
    let srv = |h: &str| Ok(AfterWellKnown::LookupSrv { hostname: h.to_owned() });
    let ready = |d: Destination| Ok(AfterWellKnown::Ready(d));
    let cases: Vec<(Option<&str>, Result<AfterWellKnown, DiscoveryError>)> = vec![
        // Steps 4-6: no valid well-known, SRV of the original hostname.
        (None, srv("example.org")),
        // 3.1: delegated IP literal; Host carries the port if given.
        (Some("10.1.2.3"), ready(dest("https://10.1.2.3:8448", "10.1.2.3", "10.1.2.3"))),
        (Some("10.1.2.3:8000"), ready(dest("https://10.1.2.3:8000", "10.1.2.3:8000", "10.1.2.3"))),
        (Some("[2001:db8::1]"), ready(dest("https://[2001:db8::1]:8448", "[2001:db8::1]", "2001:db8::1"))),
        (Some("[2001:db8::1]:443"), ready(dest("https://[2001:db8::1]:443", "[2001:db8::1]:443", "2001:db8::1"))),
        // 3.2: delegated hostname with a port.
        (
            Some("matrix.example.org:443"),
            ready(dest("https://matrix.example.org:443", "matrix.example.org:443", "matrix.example.org")),
        ),
        // 3.3-3.5: delegated hostname alone: its SRV records.
        (Some("Matrix.Example.org"), srv("matrix.example.org")),
    ];
    for (delegated, expected) in cases {
        let delegated = delegated.map(name);
        assert_eq!(after_well_known("example.org", delegated.as_deref()), expected, "{delegated:?}");
    }
}

#[test]
fn srv_names_are_fully_qualified_and_in_order() {
    assert_eq!(
        srv_service_names("example.org"),
        ["_matrix-fed._tcp.example.org.".to_owned(), "_matrix._tcp.example.org.".to_owned()]
    );
}

fn rec(priority: u16, weight: u16, port: u16, target: &str) -> SrvRecord {
    SrvRecord { priority, weight, port, target: target.to_owned() }
}

fn hosts(targets: &[SrvTarget]) -> Vec<&str> {
    targets.iter().map(|t| t.host.as_str()).collect()
}

#[test]
fn srv_order_is_by_priority_then_weight() {
    // The draw always says "the first unit of the running sum", then "the last".
    let mut low = |_total: u32| 1;
    let mut high = |total: u32| total;
    let records = [rec(20, 0, 8448, "c"), rec(10, 10, 8448, "a"), rec(10, 30, 8448, "b"), rec(5, 0, 8448, "z")];
    assert_eq!(hosts(&order_srv(&records, &mut low)), ["z", "a", "b", "c"]);
    assert_eq!(hosts(&order_srv(&records, &mut high)), ["z", "b", "a", "c"]);

    // A draw within a record's share of the running sum picks it.
    let records = [rec(0, 10, 1, "a"), rec(0, 20, 2, "b"), rec(0, 30, 3, "c")];
    let mut draws = vec![31, 1].into_iter();
    let mut scripted = |total: u32| {
        let d = draws.next().unwrap_or(total);
        assert!((1..=total).contains(&d));
        d
    };
    // 31 of 60 falls in c's share (31..=60); then 1 of 30 in a's.
    assert_eq!(hosts(&order_srv(&records, &mut scripted)), ["c", "a", "b"]);

    // Weight 0 comes after the weighted ones of its priority.
    let records = [rec(0, 0, 1, "zero"), rec(0, 5, 1, "five")];
    assert_eq!(hosts(&order_srv(&records, &mut low)), ["five", "zero"]);

    // A draw out of range (a faulty source) is clamped, never panics.
    let mut wild = |_total: u32| u32::MAX;
    assert_eq!(hosts(&order_srv(&records, &mut wild)), ["five", "zero"]);
    let mut zero = |_total: u32| 0;
    assert_eq!(hosts(&order_srv(&records, &mut zero)), ["five", "zero"]);

    // The weighted share is what the draw says, over many draws.
    let records = [rec(0, 1, 1, "light"), rec(0, 3, 1, "heavy")];
    // The first draw of each order (out of 4) sweeps 1..=4 evenly.
    let mut counter = 0u32;
    let mut sweep = |total: u32| {
        if total != 4 {
            return 1;
        }
        counter += 1;
        (counter % 4) + 1
    };
    let heavy_first = (0..400).filter(|_| order_srv(&records, &mut sweep)[0].host == "heavy").count();
    assert_eq!(heavy_first, 300);
}

#[test]
fn srv_decisions() {
    let now = 5_000;
    let mut first = |_total: u32| 1;
    let answer = |records: Vec<SrvRecord>, ttl_s: u32| SrvAnswer::Records { records, ttl_s };

    // The first target's port goes in the URL; TLS and Host stay the hostname.
    let decided = decide_srv(
        "example.org",
        &answer(vec![rec(10, 0, 8449, "b.example.net"), rec(0, 0, 443, "a.example.net"), rec(5, 0, 443, "c.example.net")], 300),
        &mut first,
        now,
    );
    assert_eq!(
        decided,
        Ok(SrvDecision::Use {
            destination: Destination {
                url_base: "https://example.org:443".into(),
                host_header: "example.org".into(),
                tls_name: "example.org".into(),
                srv_targets: vec![
                    SrvTarget { host: "a.example.net".into(), port: 443 },
                    SrvTarget { host: "c.example.net".into(), port: 443 },
                ],
            },
            expires_at_ms: now + 300_000,
        })
    );

    // TTLs are held within bounds.
    let mut expiry = |ttl_s| match decide_srv("h.org", &answer(vec![rec(0, 0, 1, "t.org")], ttl_s), &mut first, now) {
        Ok(SrvDecision::Use { expires_at_ms, .. }) => expires_at_ms - now,
        other => panic!("{other:?}"),
    };
    assert_eq!(expiry(0), SRV_MIN_CACHE_MS);
    assert_eq!(expiry(u32::MAX), SRV_MAX_CACHE_MS);

    // A lone "." says no service; "." beside real records is ignored.
    assert_eq!(
        decide_srv("h.org", &answer(vec![rec(0, 0, 0, ".")], 60), &mut first, now),
        Err(DiscoveryError::FederationUnavailable)
    );
    match decide_srv("h.org", &answer(vec![rec(0, 0, 0, "."), rec(1, 0, 8448, "t.org")], 60), &mut first, now) {
        Ok(SrvDecision::Use { destination, .. }) => assert_eq!(hosts(&destination.srv_targets), ["t.org"]),
        other => panic!("{other:?}"),
    }
    // No records, a failed query, or only unusable ones: the next step.
    for answer in [SrvAnswer::NoRecords, SrvAnswer::Failed, answer(vec![], 60), answer(vec![rec(0, 0, 1, "")], 60)] {
        assert_eq!(decide_srv("h.org", &answer, &mut first, now), Ok(SrvDecision::Next), "{answer:?}");
    }
}

#[test]
fn fallback_is_port_8448_with_the_bare_hostname() {
    let now = 10;
    let expected = dest("https://example.org:8448", "example.org", "example.org");
    assert_eq!(
        fallback("example.org", &[SrvAnswer::NoRecords, SrvAnswer::NoRecords], now),
        (expected.clone(), now + SRV_ABSENT_CACHE_MS)
    );
    // A failed DNS query is retried sooner.
    assert_eq!(fallback("example.org", &[SrvAnswer::Failed, SrvAnswer::NoRecords], now), (expected, now + SRV_FAILURE_CACHE_MS));
}
