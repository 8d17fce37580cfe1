//! Tests of the scenario model: parsing, validation and the files in scenarios/.

use super::*;

const GOOD: &str = r#"
        name = "docker-nat"
        description = "three containers"
        [conntrack]
        hashsize = 1024
        max = 65536
        udp_timeout = 600
        [[containers]]
        name = "web"
        protocol = "tcp"
        flows = 3000
        concurrency = 16
        [[containers]]
        name = "dns"
        protocol = "udp"
        flows = 4000
        [ctscope]
        args = ["observe", "--mode", "kprobe"]
        [expect]
        table_full_min = 1
    "#;

#[test]
fn parses_a_full_scenario() {
    let s = Scenario::from_toml(GOOD).expect("valid");
    assert_eq!(s.name, "docker-nat");
    assert_eq!(s.conntrack.get("hashsize"), Some(&1024));
    assert_eq!(s.conntrack.get("udp_timeout"), Some(&600));
    assert_eq!(s.containers.len(), 2);
    assert_eq!(s.containers[0].protocol, Protocol::Tcp);
    assert_eq!(s.containers[0].concurrency(), 16);
    assert_eq!(
        s.containers[0].connect_timeout_ms(),
        DEFAULT_CONNECT_TIMEOUT_MS
    );
    assert_eq!(s.containers[1].concurrency(), DEFAULT_CONCURRENCY);
    assert_eq!(s.containers[1].netns(), "ctlab-dns");
    assert_eq!(s.ctscope.args, ["observe", "--mode", "kprobe"]);
    assert_eq!(s.ctscope_option("mode"), Some("kprobe"));
    assert_eq!(s.ctscope_option("attribution"), None);
    assert_eq!(s.expect.table_full_min, Some(1));
    assert_eq!(s.expect.drops_max, None);
    assert!(!s.expect.self_check_fails);
    assert_eq!(s.total_flows(), 7000);
}

#[test]
fn minimal_scenario_gets_defaults() {
    let s = Scenario::from_toml(
        "name = \"x\"\n[[containers]]\nname = \"a\"\nprotocol = \"udp\"\nflows = 1\n",
    )
    .expect("valid");
    assert!(s.conntrack.is_empty());
    assert_eq!(s.ctscope.args, ["observe"]);
    assert_eq!(s.expect, Expect::default());
}

#[test]
fn a_forced_apply_names_the_risks_it_takes() {
    let base =
        "name = \"x\"\n[[containers]]\nname = \"a\"\nprotocol = \"udp\"\nflows = 1\n[tuning]\n";
    for bad in ["force = true\n", "forced_warnings = [\"cut\"]\n"] {
        assert!(
            matches!(
                Scenario::from_toml(&format!("{base}{bad}")),
                Err(ScenarioError::TuningForce)
            ),
            "{bad}"
        );
    }
    let s = Scenario::from_toml(&format!(
        "{base}force = true\nforced_warnings = [\"cut\"]\n"
    ))
    .expect("valid");
    assert!(
        s.tuning
            .is_some_and(|t| t.force && t.forced_warnings == ["cut"])
    );
    assert!(Scenario::from_toml(base).is_ok());
}

fn with_container(line: &str) -> String {
    format!("name = \"x\"\n[[containers]]\n{line}\n")
}

#[test]
fn rejects_bad_containers() {
    let cases = [
        (
            with_container("name = \"Web\"\nprotocol = \"udp\"\nflows = 1"),
            "BadContainerName",
        ),
        (
            with_container("name = \"abcdefghijkl\"\nprotocol = \"udp\"\nflows = 1"),
            "BadContainerName",
        ),
        (
            with_container("name = \"wan\"\nprotocol = \"udp\"\nflows = 1"),
            "BadContainerName",
        ),
        (
            with_container("name = \"a\"\nprotocol = \"udp\"\nflows = 0"),
            "Flows",
        ),
        (
            with_container("name = \"a\"\nprotocol = \"udp\"\nflows = 40001"),
            "Flows",
        ),
        (
            with_container("name = \"a\"\nprotocol = \"tcp\"\nflows = 1\nconcurrency = 0"),
            "ZeroTcpOption",
        ),
        (
            with_container(
                "name = \"a\"\nprotocol = \"tcp\"\nflows = 1\nconnect_timeout_ms = 1000",
            ),
            "ConnectTimeout",
        ),
        (
            with_container("name = \"a\"\nprotocol = \"sctp\"\nflows = 1"),
            "Parse",
        ),
        (
            with_container("name = \"a\"\nprotocol = \"udp\"\nflows = 1\nflow = 2"),
            "Parse",
        ),
    ];
    for (text, want) in cases {
        let err = Scenario::from_toml(&text).expect_err(&text);
        let got = format!("{err:?}");
        assert!(got.starts_with(want), "{text}: want {want}, got {got}");
    }
}

#[test]
fn rejects_duplicates_and_counts() {
    let dup = "name = \"x\"\n[[containers]]\nname = \"a\"\nprotocol = \"udp\"\nflows = 1\n\
                   [[containers]]\nname = \"a\"\nprotocol = \"tcp\"\nflows = 1\n";
    assert!(matches!(
        Scenario::from_toml(dup),
        Err(ScenarioError::DuplicateContainer(n)) if n == "a"
    ));
    assert!(matches!(
        Scenario::from_toml("name = \"x\"\ncontainers = []\n"),
        Err(ScenarioError::ContainerCount(0))
    ));
    let mut many = String::from("name = \"x\"\n");
    for i in 0..=MAX_CONTAINERS {
        many.push_str(&format!(
            "[[containers]]\nname = \"c{i}\"\nprotocol = \"udp\"\nflows = 1\n"
        ));
    }
    assert!(matches!(
        Scenario::from_toml(&many),
        Err(ScenarioError::ContainerCount(n)) if n == MAX_CONTAINERS + 1
    ));
}

#[test]
fn rejects_bad_conntrack_and_ctscope_sections() {
    let base = with_container("name = \"a\"\nprotocol = \"udp\"\nflows = 1");
    let bad_key = format!("{base}[conntrack]\n\"udp-timeout\" = 5\n");
    assert!(matches!(
        Scenario::from_toml(&bad_key),
        Err(ScenarioError::BadConntrackKey(_))
    ));
    let zero = format!("{base}[conntrack]\nmax = 0\n");
    assert!(matches!(
        Scenario::from_toml(&zero),
        Err(ScenarioError::BadConntrackValue { .. })
    ));
    let not_observe = format!("{base}[ctscope]\nargs = [\"doctor\"]\n");
    assert!(matches!(
        Scenario::from_toml(&not_observe),
        Err(ScenarioError::CtscopeArgs(_))
    ));
    let reserved = format!("{base}[ctscope]\nargs = [\"observe\", \"--json=/x\"]\n");
    assert!(matches!(
        Scenario::from_toml(&reserved),
        Err(ScenarioError::ReservedCtscopeArg(a)) if a == "--json"
    ));
    let bad_expect = format!("{base}[expect]\nchain_too_long = 1\n");
    assert!(matches!(
        Scenario::from_toml(&bad_expect),
        Err(ScenarioError::Parse(_))
    ));
    let not_bool = format!("{base}[expect]\nself_check_fails = 1\n");
    assert!(matches!(
        Scenario::from_toml(&not_bool),
        Err(ScenarioError::Parse(_))
    ));
    let contradiction = format!("{base}[expect]\nself_check_fails = true\nchain_max_min = 2\n");
    assert!(matches!(
        Scenario::from_toml(&contradiction),
        Err(ScenarioError::ContradictoryExpect("chain_max_min"))
    ));
    let fault = format!("{base}[expect]\nself_check_fails = true\ninserts_min = 2\n");
    let s = Scenario::from_toml(&fault).expect("valid");
    assert!(s.expect.self_check_fails);
}

#[test]
fn new_options_validate_and_round_trip() {
    let text = r#"
            name = "x"
            [conntrack]
            udp_timeout = 15
            tcp_timeout_time_wait = 20
            [[containers]]
            name = "a"
            protocol = "udp"
            flows = 10
            keepalive_s = 5
            keepalive_interval_ms = 500
            firewall = true
            [[containers]]
            name = "b"
            protocol = "tcp"
            flows = 10
            close = true
            [expiry]
            wait_max_s = 60
            [expect]
            deletes_min = 20
            [expect.by_end_min]
            timeout = 10
        "#;
    let s = Scenario::from_toml(text).expect("valid");
    assert_eq!(s.lowered_timeout_s(), Some(15));
    assert!(s.containers[0].firewall && s.containers[1].close);
    assert_eq!(s.containers[0].keepalive_interval_ms(), 500);
    assert!(!s.lookups());
    let again = Scenario::from_toml(&s.to_toml().expect("encodes")).expect("valid");
    assert_eq!(again, s);

    let bad = [
        (
            text.replace(
                "close = true",
                "close = true
keepalive_s = 3",
            ),
            "WrongProtocol",
        ),
        (
            text.replace(
                "firewall = true",
                "firewall = true
close = true",
            ),
            "WrongProtocol",
        ),
        (
            text.replace(
                "keepalive_interval_ms = 500",
                "keepalive_interval_ms = 5000",
            ),
            "KeepaliveInterval",
        ),
        // A refresh slower than the UDP timeout would make one flow two inserts.
        (
            text.replace("udp_timeout = 15", "udp_timeout = 1").replace(
                "keepalive_interval_ms = 500",
                "keepalive_interval_ms = 1200",
            ),
            "KeepaliveInterval",
        ),
        (
            text.replace(
                "udp_timeout = 15\n            tcp_timeout_time_wait = 20",
                "",
            ),
            "ExpiryWithoutTimeout",
        ),
        (
            text.replace("wait_max_s = 60", "wait_max_s = 0"),
            "ExpiryWait",
        ),
        (text.replace("timeout = 10", "dead = 10"), "ByEndKey"),
        (format!("{text}\n[bench]\nrounds = 2\n"), "Bench"),
    ];
    for (t, want) in bad {
        let got = format!("{:?}", Scenario::from_toml(&t).expect_err(want));
        assert!(got.starts_with(want), "want {want}, got {got}");
    }
}

#[test]
fn shipped_scenarios_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("scenarios/ exists") {
        let path = entry.expect("dir entry").path();
        if path.extension().and_then(|e| e.to_str()) == Some("toml") {
            let s = Scenario::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(
                Some(s.name.as_str()),
                path.file_stem().and_then(|f| f.to_str()),
                "scenario name matches its file name"
            );
            names.push(s.name);
        }
    }
    names.sort();
    assert_eq!(
        names,
        [
            "chain-overflow",
            "docker-nat",
            "early-drop",
            "long-udp",
            "self-check-fault",
            "serve",
            "short-tcp",
            "table-full",
            "tune-light",
            "tune-table-full",
            "uneven"
        ]
    );
}

#[test]
fn a_soak_is_a_paced_serve_run_whose_flows_each_make_one_host_entry() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/soak.toml");
    let text = std::fs::read_to_string(&path).expect("bench/soak.toml");
    let s = Scenario::from_toml(&text).expect("bench/soak.toml is valid");
    let soak = s.soak.as_ref().expect("[soak]");
    assert!(s.serves() && s.expiry.is_some());
    assert_eq!(s.churn_s(), Some(600.0));
    assert_eq!(s.rate_per_s(), 100, "two containers at 50 flows/s");
    assert!(f64::from(soak.warmup_s) < 600.0);
    // Each change makes it something whose truth the agent cannot know, or no soak at all.
    for (from, to, want) in [
        (
            "rate = 50\n\n[ctscope]",
            "\n[ctscope]",
            "every container needs a rate",
        ),
        ("tcp_loose = 0\n", "", "needs tcp_loose = 0"),
        (
            "args = [\"serve\",",
            "args = [\"observe\",",
            "needs ctscope serve",
        ),
        ("[expiry]\n", "[expiry_]\n", "unknown"),
        ("sample_s = 10", "sample_s = 0", "sample_s must be"),
        ("warmup_s = 120", "warmup_s = 600", "warmup_s must end"),
        ("rate = 50\nclose", "rate = 0\nclose", "Rate"),
        (
            "concurrency = 16",
            "concurrency = 16\nfirewall = true",
            "no container may run",
        ),
    ] {
        let bad = text.replacen(from, to, 1);
        assert_ne!(bad, text, "{from}");
        let got = format!("{:?}", Scenario::from_toml(&bad).expect_err(want));
        assert!(got.contains(want), "want {want}, got {got}");
    }
    // tcp_loose is a switch: 0 is a setting there, and only there.
    assert!(Scenario::from_toml(&text.replace("max = 32768", "max = 0")).is_err());
}
