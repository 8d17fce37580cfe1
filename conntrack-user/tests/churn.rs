//! Memory stays flat under connection churn, against the real kernel and in
//! process.
//!
//! Real kernel: `ctscope observe --mode procfs` runs in the host namespace
//! while a private namespace (conntrack on through an nft `ct` rule) creates
//! UDP entries and flushes them through ctnetlink, round after round: every
//! flush is a DESTROY event per entry, which procfs mode turns into
//! lifetimes. Its RSS after 500,000 more deaths must stay within 4 MiB of
//! what it was after the first 100,000 (one `Vec` element per death, as
//! before, grew it by 12,432 KiB here, 25.5 B a death; now about 400 KiB).
//!
//! In process: the aggregation itself is fed a million synthetic deaths.

mod common;

use std::{
    fs,
    net::{Ipv4Addr, UdpSocket},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use common::{NamedNetns, skip, within};
use conntrack_user::{
    host::ctnetlink::{self, Entry, Message},
    host::kernel,
    observe::events::{self, Tallies},
    report::Report,
};

fn rss_kib(pid: u32) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// `IPCTNL_MSG_CT_DELETE` without attributes: flush the IPv4 entries of the
/// calling thread's namespace (ctnetlink_del_conntrack -> ctnetlink_flush_conntrack).
fn flush(seq: u32) {
    let s = ctnetlink::Socket::open(&[]).expect("ctnetlink socket");
    let mut m = Vec::new();
    m.extend_from_slice(&20u32.to_ne_bytes());
    m.extend_from_slice(&((1u16 << 8) | 2).to_ne_bytes()); // CTNETLINK, CT_DELETE
    m.extend_from_slice(&(1u16 | 4).to_ne_bytes()); // NLM_F_REQUEST | NLM_F_ACK
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[libc::AF_INET as u8, 0, 0, 0]);
    s.send(&m).expect("flush request");
    let mut buf = vec![0u8; 8192];
    let n = s.recv(&mut buf).expect("flush answer");
    for msg in ctnetlink::parse_messages(&buf[..n]) {
        if let Message::Error(e) = msg {
            assert_eq!(e, 0, "flush refused: errno {}", -e);
        }
    }
}

/// `rounds` rounds of `flows` new UDP entries, each round flushed: that many
/// deaths. Returns the deaths caused.
fn churn(ns: &Path, rounds: u32, flows: u16, seq0: u32) -> u64 {
    within(ns, || {
        let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let mut n = 0u64;
        for r in 0..rounds {
            for p in 0..flows {
                if s.send_to(b"x", (Ipv4Addr::LOCALHOST, 20_000 + p)).is_ok() {
                    n += 1;
                }
            }
            flush(seq0 + r);
            // Let the listener keep up (its socket holds about 40k events).
            std::thread::sleep(Duration::from_millis(15));
        }
        n
    })
}

#[test]
fn observe_rss_stays_flat_under_real_churn() {
    if !kernel::is_root() {
        return skip("needs root (network namespaces, nftables, observe)");
    }
    let ns = NamedNetns::new(&format!("ctchurn{}", std::process::id() % 100_000));
    ns.nft("table ip ctscope_churn {\n chain out {\n  type filter hook output priority 0; policy accept;\n  ct state new counter\n }\n}\n");
    let dir = std::env::temp_dir().join(format!("ctscope-churn-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("mkdir");
    let report = dir.join("r.json");
    let ready = dir.join("ready");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ctscope"))
        .args([
            "observe",
            "--mode",
            "procfs",
            "--quiet",
            "--duration",
            "300s",
            "--json",
        ])
        .arg(&report)
        .arg("--ready-file")
        .arg(&ready)
        .spawn()
        .expect("start ctscope");
    let t0 = Instant::now();
    while !ready.exists() {
        assert!(t0.elapsed().as_secs() < 30, "ctscope never became ready");
        if let Ok(Some(st)) = child.try_wait() {
            panic!("ctscope exited early: {st}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = child.id();
    const FLOWS: u16 = 4000;
    let warm = churn(&ns.path(), 25, FLOWS, 1);
    std::thread::sleep(Duration::from_millis(2500));
    let before = rss_kib(pid);
    let more = churn(&ns.path(), 125, FLOWS, 100);
    std::thread::sleep(Duration::from_millis(2500));
    let after = rss_kib(pid);
    // SAFETY: kill(2) on the pid of a child we spawned and still own.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGINT) }, 0);
    let st = child.wait().expect("wait");
    assert!(st.success(), "{st}");
    let r: Report =
        serde_json::from_str(&fs::read_to_string(&report).expect("report")).expect("parse");
    fs::remove_dir_all(&dir).ok();
    let udp = r
        .lifetimes
        .as_ref()
        .and_then(|l| l.get("udp"))
        .map_or(0, |u| u.count);
    eprintln!(
        "deaths caused: {warm} + {more}; udp lifetimes in the report: {udp}; RSS {before} KiB after the first {warm}, {after} KiB after {more} more (growth {} KiB, {:.1} B per death)",
        after as i64 - before as i64,
        (after as f64 - before as f64) * 1024.0 / more as f64
    );
    assert_eq!(warm + more, 150 * u64::from(FLOWS));
    // Most deaths were seen (a burst may overrun the socket; said in notices).
    assert!(
        udp >= (warm + more) * 8 / 10,
        "{udp} of {}: {:?}",
        warm + more,
        r.notices
    );
    assert!(
        after <= before + 4096,
        "RSS grew {} KiB over {more} deaths",
        after - before
    );
}

#[test]
fn a_million_synthetic_deaths_cost_no_memory() {
    let t0 = Instant::now();
    let mut t = Tallies::new(t0);
    let mut id = 0u32;
    let mut feed = |t: &mut Tallies, n: u32| {
        for _ in 0..n {
            id = id.wrapping_add(1);
            let e = |state| Entry {
                id: Some(id),
                src: Some(std::net::IpAddr::from([
                    10,
                    0,
                    (id >> 8) as u8 & 3,
                    id as u8,
                ])),
                l4proto: Some(if id.is_multiple_of(3) { 6 } else { 17 }),
                tcp_state: state,
            };
            let born = t0 + Duration::from_micros(u64::from(id));
            t.on(1, Message::New(e(None)), born);
            t.on(
                1,
                Message::Destroy(e(Some(7))),
                born + Duration::from_millis(u64::from(id % 5000)),
            );
        }
    };
    feed(&mut t, 100_000);
    let before = rss_kib(std::process::id());
    feed(&mut t, 1_000_000);
    let after = rss_kib(std::process::id());
    eprintln!(
        "RSS {before} KiB after 100,000 deaths, {after} KiB after 1,000,000 more ({} KiB)",
        after as i64 - before as i64
    );
    assert_eq!(t.lifetimes.len(), 1_100_000);
    assert_eq!(t.tracked(), 0);
    assert!(t.sources() <= events::SOURCES_MAX);
    let r = t.lifetimes.report();
    assert_eq!(r["tcp"].count + r["udp"].count, 1_100_000);
    // Lifetimes 0..5 s, uniform: p50 about 2.5 s.
    assert!((r["udp"].p50_ms - 2500.0).abs() < 50.0, "{:?}", r["udp"]);
    assert!(after <= before + 2048, "grew {} KiB", after - before);
}
