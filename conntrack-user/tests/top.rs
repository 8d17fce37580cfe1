//! `ctscope top` in a real terminal: tmux runs it in a shell, the test reads the screen with
//! `capture-pane` as a person would see it, presses keys, and checks that `q` quits with the
//! terminal restored (the alternate screen left, the line discipline back in canonical mode).
//! procfs mode on the host; a private namespace holds a known number of entries, which must
//! show in the namespace table.

mod common;

use std::{
    net::Ipv4Addr,
    process::Command,
    time::{Duration, Instant},
};

use common::{NamedNetns, count_in, send_flows, skip};
use conntrack_user::host::kernel;

const TRACK_OUT: &str = "table ip ctscope_track {\n chain out {\n  type filter hook output priority 0; policy accept;\n  ct state new counter\n }\n}\n";

/// A tmux session, killed on drop.
struct Tmux(String);

impl Tmux {
    fn run(args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("tmux {args:?}: {e}"));
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let mut a = vec!["send-keys", "-t", self.0.as_str()];
        a.extend_from_slice(keys);
        Tmux::run(&a);
    }

    fn screen(&self) -> String {
        Tmux::run(&["capture-pane", "-p", "-t", &self.0])
    }

    /// Waits until the screen shows every one of `texts`; the screen.
    fn wait_for(&self, texts: &[&str], limit: Duration) -> String {
        let t0 = Instant::now();
        loop {
            let s = self.screen();
            if texts.iter().all(|t| s.contains(t)) {
                return s;
            }
            assert!(
                t0.elapsed() < limit,
                "the screen did not show {texts:?} within {limit:?}:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .status();
    }
}

#[test]
fn top_shows_the_table_and_quits_with_the_terminal_restored() {
    if !kernel::is_root() {
        return skip("needs root (network namespaces, nftables, setns)");
    }
    if Command::new("tmux").arg("-V").output().is_err() {
        return skip("no tmux (cargo xtask setup installs it)");
    }
    let ns = NamedNetns::new(&format!("cttop-{}", std::process::id()));
    ns.exec(&[
        "sysctl",
        "-qw",
        "net.netfilter.nf_conntrack_udp_timeout=600",
    ]);
    ns.nft(TRACK_OUT);
    assert_eq!(
        send_flows(&ns.path(), Ipv4Addr::LOCALHOST, 32_000, 250),
        250
    );
    let count = count_in(&ns.path());

    let session = format!("cttop{}", std::process::id());
    let t = Tmux(session.clone());
    Tmux::run(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "150",
        "-y",
        "45",
        "env",
        "TERM=xterm-256color",
        "PS1=$ ",
        "bash",
        "--norc",
        "--noprofile",
    ]);
    let cmd = format!(
        "{} top --mode procfs --interval 1s; echo TOP-EXITED=$?",
        env!("CARGO_BIN_EXE_ctscope")
    );
    t.keys(&[&cmd, "Enter"]);
    // What a person sees: the header, the fill, the rates, the chains, and the namespace
    // with its entries.
    let screen = t.wait_for(
        &[
            "ctscope top",
            "mode procfs",
            "MODELED",
            "count ",
            "/ max ",
            "load factor",
            "inserts/s",
            "drops/s",
            "chain length",
            "network namespaces by entries",
            "containers by entries",
            &ns.name,
        ],
        Duration::from_secs(40),
    );
    let row = screen
        .lines()
        .find(|l| l.contains(&ns.name))
        .expect("the namespace's row");
    assert!(
        row.split_whitespace().any(|w| w == count.to_string()),
        "the row of {} shows its {count} entries: {row:?}\n{screen}",
        ns.name
    );
    assert_eq!(
        Tmux::run(&["display", "-p", "-t", &session, "#{alternate_on}"]).trim(),
        "1"
    );

    // Keys: sort, help.
    t.keys(&["s"]);
    t.wait_for(&["network namespaces by inserts"], Duration::from_secs(10));
    t.keys(&["h"]);
    t.wait_for(&["q, Esc, Ctrl-C  quit"], Duration::from_secs(10));
    t.keys(&["h"]);

    // q quits: the shell's screen is back, the exit code 0, the terminal out of raw mode.
    t.keys(&["q"]);
    let after = t.wait_for(&["TOP-EXITED=0"], Duration::from_secs(10));
    assert!(
        !after.contains("network namespaces by"),
        "still drawn:\n{after}"
    );
    assert_eq!(
        Tmux::run(&["display", "-p", "-t", &session, "#{alternate_on}"]).trim(),
        "0"
    );
    // The marker is computed by the shell, so the typed line does not show it.
    t.keys(&[
        "stty -a | tr ' ' '\\n' | grep -x -e icanon -e -icanon -e echo -e -echo; echo STTY-$((40+2))",
        "Enter",
    ]);
    let modes = t.wait_for(&["STTY-42"], Duration::from_secs(10));
    let last: Vec<&str> = modes.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        last.iter().any(|l| l.trim() == "icanon") && last.iter().any(|l| l.trim() == "echo"),
        "canonical mode and echo are back:\n{modes}"
    );
}
