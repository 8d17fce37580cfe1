//! Host tests against the running kernel: its real BTF, its verifier, its
//! conntrack counters under real traffic in a private network namespace, and
//! the CLI's refusals. Tests that need root, BPF or a built eBPF object skip
//! with a printed reason; `CTSCOPE_STRICT=1` (set by .ci/run, which runs as
//! root) turns every such skip into a failure.

use std::{
    fs,
    net::UdpSocket,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::Command,
};

use conntrack_common::names;
use conntrack_user::{
    host::kernel,
    host::procfs::{self, StatTotals},
    probe::environment::Environment,
    probe::object,
    probe::offsets::KernelBtf,
    probe::probes::{self, Probes},
    report::{Mode, Report},
};

fn strict() -> bool {
    std::env::var_os("CTSCOPE_STRICT").is_some_and(|v| v == "1")
}

/// Skips (prints why) or, under CTSCOPE_STRICT=1, fails.
fn skip(why: &str) {
    assert!(
        !strict(),
        "CTSCOPE_STRICT=1 and this test cannot run: {why}"
    );
    eprintln!("SKIPPED: {why}");
}

fn ctscope() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ctscope"))
}

#[test]
fn btf_offsets_agree_with_the_slab_cache() {
    let Ok(btf) = KernelBtf::load() else {
        return skip("no /sys/kernel/btf/vmlinux on this kernel");
    };
    let o = match btf.offsets() {
        Ok(o) => o,
        Err(e) => return skip(&format!("no BTF for struct nf_conn: {e}")),
    };
    // Two tuple hashes fit inside nf_conn, after its general part and lock.
    assert!(o.off_tuplehash >= 8, "{o:?}");
    assert!(
        o.off_tuplehash + 2 * o.tuplehash_size <= o.nf_conn_size,
        "{o:?}"
    );
    assert!(
        o.off_status >= o.off_tuplehash + 2 * o.tuplehash_size,
        "{o:?}"
    );
    // The slab allocator knows the real object size independently of BTF.
    match procfs::slab_object_size() {
        Some(size) => assert_eq!(u64::from(o.nf_conn_size), size, "BTF vs slab: {o:?}"),
        None => skip("no nf_conntrack slab size readable (SLUB sysfs or root needed)"),
    }
    // The functions ctscope probes are described as functions where BTF has them.
    assert!(btf.has_func("__nf_conntrack_confirm") || btf.module.is_none());
}

#[test]
fn the_table_is_global_on_this_kernel_by_btf() {
    // Up to 7.3.4 (this host: 6.18) the table is global: struct netns_ct
    // exists in vmlinux BTF and has neither `hash` nor `htable_size`.
    let env = Environment::gather();
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        return skip("no vmlinux BTF");
    }
    assert_eq!(env.per_netns_table, Some(false));
}

#[test]
fn every_program_passes_the_host_verifier() {
    if !kernel::is_root() {
        return skip("loading eBPF programs needs root");
    }
    if object::object().is_err() {
        return skip("ctscope was built without its eBPF object (run cargo xtask setup)");
    }
    let env = Environment::gather();
    let plan = match env.load_plan() {
        Ok(p) => p,
        Err(e) => return skip(&format!("cannot plan a load here: {e}")),
    };
    let loaded = Probes::load_only(&plan).unwrap_or_else(|e| panic!("{}", probes::chain(&e)));
    // The kernel itself holds each program under its name, with an id, and
    // (5.16+) says how many instructions its verifier walked.
    let mut ids = std::collections::HashSet::new();
    for l in &loaded {
        let expect: String = l.program.chars().take(15).collect();
        assert_eq!(l.kernel_name, expect, "{l:?}");
        assert!(l.kernel_id > 0 && ids.insert(l.kernel_id), "{l:?}");
        if let Some(n) = l.verified_instructions {
            assert!(n > 0, "the verifier walked no instruction of {l:?}");
        }
    }
    for l in &loaded {
        eprintln!("VERIFIED {} {:?}", l.program, l.verified_instructions);
    }
    // The bounded two-direction walks (at entry, `insert`; at return,
    // `hash_insert_ret`) are the biggest programs by far, and they must stay
    // far from the verifier's limit of 1,000,000 instructions:
    // `hash_insert_ret` processed 209,044 here (6.18) and hit that limit on
    // 7.3.4, whose pruning differs (E2BIG). Since its restructure (insert.rs
    // `walk`): about 30,000 here, 21,000 on 7.3.4.
    let walk_programs = [names::programs::INSERT, names::programs::HASH_INSERT_RET];
    let walks: Vec<u32> = walk_programs
        .iter()
        .map(|name| {
            let l = loaded
                .iter()
                .find(|l| l.program == *name)
                .unwrap_or_else(|| panic!("the chain-walk program {name} was loaded"));
            l.verified_instructions.unwrap_or(0)
        })
        .collect();
    for (name, n) in walk_programs.iter().zip(&walks) {
        assert!(*n < 100_000, "{name}: {n} instructions processed");
    }
    if let Some(n) = walks.iter().copied().filter(|n| *n > 0).min() {
        let others = loaded
            .iter()
            .filter(|l| !walk_programs.contains(&l.program.as_str()))
            .filter_map(|l| l.verified_instructions)
            .filter(|m| *m > n);
        assert_eq!(others.count(), 0, "{loaded:?}");
    }
}

/// The names the loader looks maps and programs up by (conntrack-common
/// `names`) are the ones the eBPF side declares: its macros take the Rust
/// identifier, not the constant, so only the built object can tie the two.
/// (The `Config::GLOBAL` symbol and its size are checked by every load:
/// `override_global` must find it, at the size of `Config`.)
#[test]
fn every_shared_name_is_in_the_object() {
    let Ok(bytes) = object::object() else {
        return skip("ctscope was built without its eBPF object (run cargo xtask setup)");
    };
    let obj = aya_obj::Object::parse(bytes).unwrap_or_else(|e| panic!("parsing the object: {e}"));
    for name in names::maps::ALL {
        assert!(
            obj.maps.contains_key(name),
            "map {name} is not in the object"
        );
    }
    for name in names::programs::ALL {
        assert!(
            obj.programs.contains_key(name),
            "program {name} is not in the object"
        );
    }
    // Every program of the object has a name here (a new one must be added).
    for name in obj.programs.keys() {
        assert!(
            names::programs::ALL.contains(&name.as_str()),
            "program {name} has no name in conntrack_common::names::programs"
        );
    }
}

/// A two-instruction kprobe program loaded by hand (`r0 = r2; exit` with
/// r2 never set): the verifier refuses it, and its log is the kernel's own.
fn rejected_program_log() -> (i32, String) {
    #[repr(C)]
    struct ProgLoad {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
    }
    // struct bpf_insn: code, dst_reg | src_reg << 4, off, imm.
    let insns: [[u8; 8]; 2] = [[0xbf, 0x20, 0, 0, 0, 0, 0, 0], [0x95, 0, 0, 0, 0, 0, 0, 0]];
    let license = b"GPL\0";
    let mut log = vec![0u8; 64 * 1024];
    let attr = ProgLoad {
        prog_type: 2, // BPF_PROG_TYPE_KPROBE
        insn_cnt: 2,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        kern_version: 0,
        prog_flags: 0,
    };
    // SAFETY: every pointer in `attr` is live for the call and sized as told.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            5, // BPF_PROG_LOAD
            std::ptr::addr_of!(attr),
            std::mem::size_of::<ProgLoad>(),
        )
    };
    let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    if r >= 0 {
        // SAFETY: the kernel returned a new fd that nothing else owns.
        unsafe { libc::close(r as i32) };
        return (0, String::new());
    }
    let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
    (errno, String::from_utf8_lossy(&log[..end]).into_owned())
}

#[test]
fn a_rejected_program_is_told_in_the_verifiers_own_words() {
    if !kernel::is_root() {
        return skip("loading eBPF programs needs root");
    }
    let (errno, log) = rejected_program_log();
    assert_eq!(errno, libc::EACCES, "{log}");
    assert!(log.contains("R2 !read_ok"), "{log}");
    // The message names a register: it is the conclusion, not a register dump.
    let summary = probes::verifier_summary(&log);
    assert!(summary.starts_with("R2 !read_ok"), "{summary:?} from {log}");
    assert!(summary.contains("processed"), "{summary:?}");
}

extern "C" fn ignore_signal(_: libc::c_int) {}

/// Loads every program on a thread while another thread keeps sending it
/// SIGUSR1 (a handler installed, so the signal is pending, not ignored),
/// setting `stop` with the first signal when asked. What the loader returned.
fn load_under_signals(
    plan: &conntrack_user::probe::probes::Plan,
    stop_soon: bool,
) -> Result<Vec<conntrack_user::probe::probes::Loaded>, conntrack_user::probe::probes::ProbeError> {
    use std::os::unix::thread::JoinHandleExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    // SAFETY: installs a handler that does nothing, for SIGUSR1 only.
    unsafe {
        libc::signal(
            libc::SIGUSR1,
            ignore_signal as *const () as libc::sighandler_t,
        )
    };
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let (flag, finished) = (stop.clone(), done.clone());
    // The object first, without signals (see Probes::object).
    let mut object = Probes::object(plan)?;
    let loader = std::thread::spawn(move || {
        let r = Probes::verify_object(&mut object, &flag);
        finished.store(true, Ordering::Release);
        r
    });
    let thread = loader.as_pthread_t();
    let deadline = std::time::Instant::now() + std::time::Duration::from_mins(1);
    while !done.load(Ordering::Acquire) && std::time::Instant::now() < deadline {
        // SAFETY: the thread is joinable (its handle is alive) until joined below.
        unsafe { libc::pthread_kill(thread, libc::SIGUSR1) };
        std::thread::sleep(std::time::Duration::from_micros(100));
        // The stop comes with the first signal, as in observe (which sends
        // one after setting it): the interrupted load is not tried again.
        if stop_soon {
            stop.store(true, Ordering::Release);
        }
    }
    loader.join().expect("the loader thread panicked")
}

#[test]
fn a_pending_signal_interrupts_verification_and_a_stop_ends_loading() {
    if !kernel::is_root() {
        return skip("loading eBPF programs needs root");
    }
    if object::object().is_err() {
        return skip("ctscope was built without its eBPF object (run cargo xtask setup)");
    }
    let plan = match Environment::gather().load_plan() {
        Ok(p) => p,
        Err(e) => return skip(&format!("cannot plan a load here: {e}")),
    };
    // Nobody asked to stop: EAGAIN is tried again (3 times), and under a
    // stream of signals the tries are interrupted: the kernel's EAGAIN comes
    // out, told as what it is (do_check() stops at a pending signal).
    // (A load may slip through between two signals on a busy machine: then
    // it says how many tries the signals cost.)
    match load_under_signals(&plan, false) {
        Err(e) => {
            let why = probes::chain(&e);
            assert!(why.contains("signal was pending"), "{why}");
        }
        Ok(loaded) => assert!(
            loaded.iter().any(|l| l.interrupted > 0),
            "no load was interrupted: {loaded:?}"
        ),
    }
    // Asked to stop: interrupted, not an error of the program.
    match load_under_signals(&plan, true) {
        Err(conntrack_user::probe::probes::ProbeError::Interrupted(_)) => {}
        other => panic!("expected Interrupted, got {other:?}"),
    }
    // And without signals the same programs load.
    assert!(Probes::load_only(&plan).is_ok());
}

#[test]
fn doctor_tells_the_truth_about_kprobes() {
    let out = ctscope()
        .args(["doctor", "--json"])
        .output()
        .expect("run ctscope");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).expect("doctor JSON");
    for key in [
        "kernel_release",
        "conntrack",
        "btf",
        "kprobe",
        "fentry",
        "mode",
    ] {
        assert!(d.get(key).is_some(), "doctor JSON lacks {key}: {d}");
    }
    assert_eq!(d["kernel_release"], kernel::release());
    let pmu = Path::new(kernel::KPROBE_PMU_TYPE).exists();
    let available = d["kprobe"]["available"].as_bool().expect("bool");
    if !pmu {
        assert!(!available);
        let reason = d["kprobe"]["reason"].as_str().expect("a reason");
        assert!(reason.contains(kernel::KPROBE_PMU_TYPE), "{reason}");
        assert_eq!(d["mode"], "procfs");
    }
    if !available {
        assert!(
            d["kprobe"]["reason"]
                .as_str()
                .is_some_and(|r| !r.is_empty())
        );
    }
    if !d["fentry"]["available"].as_bool().expect("bool") {
        assert!(
            d["fentry"]["reason"]
                .as_str()
                .is_some_and(|r| !r.is_empty())
        );
    }
}

#[test]
fn observe_refuses_without_root() {
    if !kernel::is_root() {
        let out = ctscope()
            .args(["observe", "--duration", "1s"])
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(3));
        return;
    }
    // As root: drop to nobody for this one run.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_ctscope"))
        .args(["observe", "--duration", "1s"])
        .output();
    let Ok(out) = out else {
        return skip("setpriv (util-linux) is not installed");
    };
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs root"), "{err}");
}

#[test]
fn forced_kprobe_mode_fails_clearly_where_probes_cannot_attach() {
    if !kernel::is_root() {
        return skip("needs root");
    }
    let env = Environment::gather();
    if env.kprobe_pmu {
        return skip("this kernel has kprobes: the refusal path is tested in the VM lab's absence");
    }
    let out = ctscope()
        .args(["observe", "--mode", "kprobe", "--duration", "1s"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--mode kprobe is not available here"), "{err}");
    assert!(err.contains("kprobe"), "{err}");
}

/// A network namespace of our own, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Option<Netns> {
        let name = format!("ctscope-test-{tag}-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .ok()?
            .success();
        if !ok {
            return None;
        }
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        Some(ns)
    }

    fn exec(&self, args: &[&str]) {
        let st = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .status()
            .expect("ip netns exec");
        assert!(st.success(), "{args:?} failed in {}", self.name);
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Runs `f` on a thread that has joined this namespace.
    fn within<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let file = fs::File::open(self.path()).expect("open netns");
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns on a thread we own, with a valid netns fd; it
                // changes only this thread's network namespace.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("netns thread")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

#[test]
fn procfs_mode_counts_real_flows_in_a_private_namespace() {
    if !kernel::is_root() {
        return skip("needs root (network namespaces, nftables)");
    }
    let Some(ns) = Netns::new("procfs") else {
        return skip("cannot create a network namespace (iproute2 missing?)");
    };
    // Conntrack only tracks a namespace whose rules need it.
    let dir = std::env::temp_dir().join(format!("ctscope-procfs-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("mkdir");
    let rules = dir.join("rules.nft");
    fs::write(
        &rules,
        "table inet ctscope_test {\n chain out {\n  type filter hook output priority 0; policy accept;\n  ct state new counter\n }\n}\n",
    )
    .expect("write rules");
    ns.exec(&["nft", "-f", rules.to_str().expect("utf-8 path")]);
    let report_path = dir.join("report.json");
    let ready = dir.join("ready");
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name, env!("CARGO_BIN_EXE_ctscope")])
        .args(["observe", "--interval", "1s", "--json"])
        .arg(&report_path)
        .arg("--ready-file")
        .arg(&ready)
        .spawn()
        .expect("start ctscope");
    wait_ready(&mut child, &ready);

    // Distinct tuples: one bound source port per flow.
    const FLOWS: u16 = 500;
    let (sent, count_before, count_after) = ns.within(|| {
        let before = procfs::sysctl("nf_conntrack_count").expect("count");
        let mut sent = 0u64;
        for i in 0..FLOWS {
            let s = UdpSocket::bind(("127.0.0.1", 30000 + i)).expect("bind");
            if s.send_to(b"x", ("127.0.0.1", 9)).is_ok() {
                sent += 1;
            }
        }
        (
            sent,
            before,
            procfs::sysctl("nf_conntrack_count").expect("count"),
        )
    });
    std::thread::sleep(std::time::Duration::from_millis(1500));
    // SAFETY: kill(2) with a pid we spawned and still own.
    let rc = unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert_eq!(rc, 0);
    let st = child.wait().expect("wait");
    assert!(st.success(), "ctscope: {st}");

    let report: Report =
        serde_json::from_str(&fs::read_to_string(&report_path).expect("report")).expect("parse");
    fs::remove_dir_all(&dir).ok();
    assert_eq!(sent, u64::from(FLOWS));
    assert_eq!(
        count_after - count_before,
        sent,
        "the kernel tracked every flow"
    );
    let env = Environment::gather();
    if !env.kprobe_pmu {
        assert_eq!(report.mode, Mode::Procfs);
        assert!(
            report.notices.iter().any(|n| n.contains("falling back")),
            "{:?}",
            report.notices
        );
    }
    assert_eq!(report.settings.count_start, Some(count_before));
    assert_eq!(report.settings.count_end, Some(count_after));
    // The kernel refused nothing here, and ctscope says so from the kernel's counters.
    assert_eq!(report.kernel_stats.get("insert_failed"), Some(&0));
    assert_eq!(report.kernel_stats.get("drop"), Some(&0));
    assert_eq!(report.drops.chain_too_long, Some(0));
    // procfs mode claims nothing it cannot measure.
    if report.mode == Mode::Procfs {
        assert!(report.inserts.is_none());
        // Chain lengths only as modeled, and said so.
        assert!(
            report
                .chain_length
                .as_ref()
                .is_none_or(|c| c.orig.modeled && c.reply.modeled)
        );
        assert!(report.drops.table_full.is_none() && report.drops.clash.is_none());
    }
}

#[test]
fn stat_file_parses_on_this_kernel() {
    let Ok(s) = StatTotals::read_current() else {
        return skip(
            "no /proc/net/stat/nf_conntrack (conntrack absent or CONFIG_NF_CONNTRACK_PROCFS off)",
        );
    };
    for col in ["insert_failed", "drop", "early_drop", "search_restart"] {
        assert!(
            s.columns.contains_key(col),
            "missing {col}: {:?}",
            s.columns
        );
    }
    assert_eq!(
        s.get("entries"),
        procfs::sysctl("nf_conntrack_count").expect("count")
    );
}

/// Waits (bounded) for `ready` to appear while `child` runs.
fn wait_ready(child: &mut std::process::Child, ready: &Path) {
    let t0 = std::time::Instant::now();
    while !ready.exists() {
        assert!(t0.elapsed().as_secs() < 30, "ctscope never became ready");
        if let Ok(Some(st)) = child.try_wait() {
            panic!("ctscope exited early: {st}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn observe_ends_on_its_duration_and_on_sigterm_with_a_report() {
    if !kernel::is_root() {
        return skip("observe needs root");
    }
    if StatTotals::read_current().is_err() {
        return skip("no conntrack stat file in this namespace");
    }
    let dir = std::env::temp_dir().join(format!("ctscope-exit-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("mkdir");

    // --duration: the run ends by itself, on time, with its report.
    let timed = dir.join("timed.json");
    let t0 = std::time::Instant::now();
    let out = ctscope()
        .args([
            "observe",
            "--mode",
            "procfs",
            "--duration",
            "1500ms",
            "--interval",
            "250ms",
        ])
        .arg("--json")
        .arg(&timed)
        .output()
        .expect("run ctscope");
    let took = t0.elapsed().as_secs_f64();
    assert!(out.status.success(), "{out:?}");
    assert!((1.5..20.0).contains(&took), "took {took} s");
    let r: Report =
        serde_json::from_str(&fs::read_to_string(&timed).expect("report")).expect("parse");
    assert!(
        r.duration_s >= 1.4 && r.duration_s < took,
        "{}",
        r.duration_s
    );
    // A live line per interval went to stdout.
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("count "))
        .count();
    assert!(
        lines >= 4,
        "{lines} live lines:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // No duration: SIGTERM ends the run, and the report is still written.
    let termed = dir.join("termed.json");
    let ready = dir.join("ready");
    let mut child = ctscope()
        .args(["observe", "--mode", "procfs", "--quiet", "--json"])
        .arg(&termed)
        .arg("--ready-file")
        .arg(&ready)
        .spawn()
        .expect("start ctscope");
    wait_ready(&mut child, &ready);
    // SAFETY: kill(2) with a pid we spawned and still own.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let st = child.wait().expect("wait");
    assert!(st.success(), "SIGTERM must end the run cleanly: {st}");
    let r: Report =
        serde_json::from_str(&fs::read_to_string(&termed).expect("report")).expect("parse");
    assert_eq!(r.mode, Mode::Procfs);
    // Nothing but the report is left in the directory (no temporary files).
    let left: Vec<_> = fs::read_dir(&dir)
        .expect("ls")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left.len(), 3, "{left:?}");
    fs::remove_dir_all(&dir).ok();
}

/// Runs `ctscope observe ARGS`, killed after `limit`: (exit code, stderr, time taken).
fn observe_bounded(
    cmd: &mut Command,
    limit: std::time::Duration,
) -> (Option<i32>, String, std::time::Duration) {
    use std::io::Read as _;
    let t0 = std::time::Instant::now();
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start ctscope");
    let st = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break Some(st);
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    (st.and_then(|s| s.code()), err, t0.elapsed())
}

#[test]
fn observe_refuses_an_unwritable_json_path_before_the_run() {
    if !kernel::is_root() {
        return skip("observe needs root");
    }
    let dir = std::env::temp_dir().join(format!("ctscope-jsonpath-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("mkdir");
    let file = dir.join("a-file");
    fs::write(&file, "x").expect("write");
    let cases = [
        dir.join("no-such-dir").join("r.json"),
        dir.clone(),
        file.join("r.json"),
        // sysfs takes no new files, even from root.
        PathBuf::from("/sys/kernel/ctscope-report.json"),
    ];
    for path in &cases {
        let (code, err, took) = observe_bounded(
            ctscope()
                .args(["observe", "--mode", "procfs", "--duration", "30s", "--json"])
                .arg(path),
            std::time::Duration::from_secs(25),
        );
        eprintln!("{}: {code:?} in {took:?}: {err}", path.display());
        assert_eq!(code, Some(1), "{}: {err}", path.display());
        assert!(
            took.as_secs() < 10,
            "found out only after the run: {took:?}"
        );
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "one clear message: {err}");
        assert!(lines[0].contains("cannot be written"), "{err}");
        // The reason once, not repeated by the error chain.
        if let Some(os) = lines[0].find("(os error") {
            assert_eq!(lines[0].matches(&lines[0][os..]).count(), 1, "{err}");
            assert_eq!(lines[0].matches("(os error").count(), 1, "{err}");
        }
    }
    // Nothing was left behind by the check.
    let left: Vec<_> = fs::read_dir(&dir)
        .expect("ls")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
    fs::remove_dir_all(&dir).ok();
}

#[test]
fn observe_ends_on_sighup_with_a_report() {
    if !kernel::is_root() {
        return skip("observe needs root");
    }
    let dir = std::env::temp_dir().join(format!("ctscope-hup-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("mkdir");
    let report = dir.join("r.json");
    let ready = dir.join("ready");
    let mut child = ctscope()
        .args(["observe", "--mode", "procfs", "--quiet", "--json"])
        .arg(&report)
        .arg("--ready-file")
        .arg(&ready)
        .spawn()
        .expect("start ctscope");
    wait_ready(&mut child, &ready);
    // SAFETY: kill(2) with a pid we spawned and still own.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGHUP) }, 0);
    let st = child.wait().expect("wait");
    assert!(st.success(), "SIGHUP must end the run like SIGTERM: {st}");
    let r: Report =
        serde_json::from_str(&fs::read_to_string(&report).expect("report")).expect("parse");
    assert_eq!(r.mode, Mode::Procfs);
    fs::remove_dir_all(&dir).ok();
}

#[test]
fn observe_refuses_durations_past_its_maximum_with_exit_2() {
    for flag in ["--duration", "--interval"] {
        for v in ["10000000000000000000", "18446744073709551615s", "9000h"] {
            let out = ctscope()
                .args(["observe", "--mode", "procfs", flag, v])
                .output()
                .expect("run");
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{flag} {v}: {err}");
            assert!(err.contains("maximum is 8784h"), "{flag} {v}: {err}");
            assert!(!err.contains("panicked"), "{err}");
        }
    }
}

#[test]
fn observe_without_conntrack_says_so_and_exits_4() {
    if !kernel::is_root() {
        return skip("needs root (a private mount namespace)");
    }
    if !Path::new("/proc/sys/net/netfilter/nf_conntrack_max").exists() {
        // Already absent here: the plain run must refuse.
        let (code, err, _) = observe_bounded(
            ctscope().args(["observe", "--mode", "procfs", "--duration", "1s"]),
            std::time::Duration::from_secs(20),
        );
        assert_eq!(code, Some(4), "{err}");
        return;
    }
    // Conntrack is built into this kernel, so every namespace has it: hide
    // its sysctls in a private mount namespace (what a host without the
    // module shows), then observe there.
    let script = format!(
        "mount -t tmpfs ctscope-none /proc/sys/net/netfilter && exec {} observe --mode procfs --duration 2s",
        env!("CARGO_BIN_EXE_ctscope")
    );
    let (code, err, took) = observe_bounded(
        Command::new("unshare").args(["--mount", "--propagation", "private", "sh", "-c", &script]),
        std::time::Duration::from_secs(20),
    );
    eprintln!("{code:?} in {took:?}: {err}");
    if code == Some(32) || err.contains("unshare: ") || err.contains("mount: ") {
        return skip(&format!("cannot hide the sysctls here: {err}"));
    }
    assert_eq!(code, Some(4), "{err}");
    assert!(err.contains("conntrack is not there"), "{err}");
    assert!(!err.contains("chain too long"), "no empty report: {err}");
}
