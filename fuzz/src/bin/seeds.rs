//! Writes the fuzz targets' seed corpora from this host's real data:
//! `seeds DIR` fills `DIR/<target>/seed-*`. Each source that is missing here
//! (no Docker, no BTF, no conntrack) is reported and skipped; the fuzzer still
//! runs from the others and from the small seeds committed in fuzz/seeds/.

use std::{
    fs,
    io::{Read as _, Write as _},
    os::unix::{fs::OpenOptionsExt as _, net::UnixStream},
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use ctscope::{host::ctnetlink, host::procfs, observe, tune::recommend};

/// Replaces `dir/name` with `data` (created exclusively, mode 0644, no link
/// followed: removing first means a planted symlink is unlinked, not written
/// through).
fn put(dir: &Path, name: &str, data: &[u8]) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    let path = dir.join(name);
    match fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)?;
    f.write_all(data)
}

/// Datagrams of a ctnetlink dump of this namespace's table, as received.
fn ctnetlink_dump() -> std::io::Result<Vec<Vec<u8>>> {
    let s = ctnetlink::Socket::open(&[])?;
    s.send(&ctnetlink::dump_request(1))?;
    collect(&s, Duration::from_secs(3), true)
}

/// NEW events for a UDP datagram sent to 127.0.0.1 (tracked wherever any
/// rule or NAT has conntrack hooked in this namespace).
fn ctnetlink_events() -> std::io::Result<Vec<Vec<u8>>> {
    let s = ctnetlink::Socket::open(&[
        ctnetlink::NFNLGRP_CONNTRACK_NEW,
        ctnetlink::NFNLGRP_CONNTRACK_DESTROY,
    ])?;
    let u = std::net::UdpSocket::bind("127.0.0.1:0")?;
    u.send_to(b"ctscope fuzz seed", "127.0.0.1:9")?;
    collect(&s, Duration::from_secs(1), false)
}

/// Datagrams until NLMSG_DONE (a dump) or the deadline.
fn collect(s: &ctnetlink::Socket, within: Duration, dump: bool) -> std::io::Result<Vec<Vec<u8>>> {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 18];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let mut pfd = libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, its count passed.
        let rc = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(1000) as i32) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if rc == 0 {
            continue;
        }
        let n = s.recv(&mut buf)?;
        let got = &buf[..n];
        out.push(got.to_vec());
        let done = ctnetlink::parse_messages(got)
            .iter()
            .any(|m| matches!(m, ctnetlink::Message::Done));
        if n == 0 || (dump && done) {
            break;
        }
    }
    Ok(out)
}

/// One raw Docker Engine answer (`GET path`, HTTP/1.0: no chunking).
fn docker_get(path: &str) -> std::io::Result<Vec<u8>> {
    let mut s = UnixStream::connect("/var/run/docker.sock")?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.set_write_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n").as_bytes())?;
    let mut raw = Vec::new();
    s.take(64 << 20).read_to_end(&mut raw)?;
    Ok(raw)
}

/// A report from a short procfs-mode observe of this host (needs root).
fn observe_report() -> Result<ctscope::report::Report, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(observe::run(observe::Options {
        duration: Some(Duration::from_secs(2)),
        interval: Duration::from_secs(1),
        json: None,
        mode: observe::RequestedMode::Procfs,
        ready_file: None,
        quiet: true,
        fault_offset_skew: 0,
        lookups: false,
        cost: false,
        attribution: ctscope::probe::probes::Attribution::Auto,
    }))
    .map(|o| o.report)
    .map_err(|e| e.to_string())
}

fn run(root: &Path) -> Result<(), String> {
    let e = |what: &str| {
        let what = what.to_string();
        move |err: std::io::Error| format!("{what}: {err}")
    };
    let mut skipped = Vec::new();

    match fs::read(ctscope_fuzz::VMLINUX_BTF) {
        Ok(v) => {
            // The whole file would be a seed of several MiB that libFuzzer
            // runs some 50 times a second; its trimmed form holds the same
            // structs (checked: the same offsets) and runs far faster.
            let trimmed = ctscope_fuzz::trim_vmlinux(&v).ok_or("cannot trim vmlinux BTF")?;
            let offsets = |data: Vec<u8>| {
                ctscope::host::btf::Btf::parse(data, None)
                    .map_err(|e| e.to_string())
                    .and_then(|b| {
                        ctscope::probe::offsets::KernelBtf {
                            vmlinux: std::sync::Arc::new(b),
                            module: None,
                        }
                        .offsets()
                        .map_err(|e| e.to_string())
                    })
                    .map(|o| serde_json::to_string(&o).unwrap_or_default())
            };
            let (full, small) = (offsets(v.clone()), offsets(trimmed.clone()));
            if full != small {
                return Err(format!(
                    "trimmed vmlinux BTF reads differently: {full:?} vs {small:?}"
                ));
            }
            put(&root.join("btf_vmlinux"), "seed-vmlinux-trimmed", &trimmed)
                .map_err(e("vmlinux"))?;
            if let Some((_, split)) = ctscope_fuzz::slice_vmlinux(&trimmed) {
                put(&root.join("btf_split"), "seed-sliced-vmlinux", &split).map_err(e("split"))?;
            }
        }
        Err(err) => skipped.push(format!("{}: {err}", ctscope_fuzz::VMLINUX_BTF)),
    }
    // Small hand-built BTF with every struct ctscope reads: fast inputs that
    // reach the end of the offset lookups (checked here, so a seed that
    // stopped doing so is seen).
    let mini = ctscope_fuzz::mini_btf(1, 0);
    let base = ctscope_fuzz::split_base();
    let mini_split = ctscope_fuzz::mini_btf(base.type_count(), base.strings_end());
    let vm =
        ctscope::host::btf::Btf::parse(mini.clone(), None).map_err(|e| format!("mini BTF: {e}"))?;
    let kb = ctscope::probe::offsets::KernelBtf {
        vmlinux: std::sync::Arc::new(vm),
        module: None,
    };
    kb.offsets().map_err(|e| format!("mini BTF offsets: {e}"))?;
    let module = ctscope::host::btf::Btf::parse(mini_split.clone(), Some(base.clone()))
        .map_err(|e| format!("mini split BTF: {e}"))?;
    if !module.has_struct("nf_conn")
        || module
            .member_path("nf_conn", &["proto", "tcp", "state"])
            .is_err()
    {
        return Err("mini split BTF: nf_conn not found through the base".into());
    }
    put(&root.join("btf_vmlinux"), "seed-mini", &mini).map_err(e("mini"))?;
    put(&root.join("btf_split"), "seed-mini", &mini_split).map_err(e("mini split"))?;

    // Real module BTF, where modules have it (read as continuing the sliced
    // base: wrong ids, still a well-formed split BTF to mutate).
    if let Ok(dir) = fs::read_dir("/sys/kernel/btf") {
        for m in dir.flatten().filter(|m| m.file_name() != "vmlinux").take(8) {
            if let Ok(data) = fs::read(m.path()) {
                let name = format!("seed-module-{}", m.file_name().to_string_lossy());
                put(&root.join("btf_split"), &name, &data).map_err(e("module"))?;
            }
        }
    }

    let nl = root.join("ctnetlink");
    match ctnetlink_dump() {
        Ok(d) => {
            for (i, g) in d.iter().enumerate() {
                put(&nl, &format!("seed-dump-{i}"), g).map_err(e("dump"))?;
            }
        }
        Err(err) => skipped.push(format!("ctnetlink dump: {err}")),
    }
    match ctnetlink_events() {
        Ok(d) => {
            for (i, g) in d.iter().enumerate() {
                put(&nl, &format!("seed-events-{i}"), g).map_err(e("events"))?;
            }
        }
        Err(err) => skipped.push(format!("ctnetlink events: {err}")),
    }

    match fs::read(procfs::STAT_FILE) {
        Ok(s) => put(&root.join("conntrack_stat"), "seed-host", &s).map_err(e("stat"))?,
        Err(err) => skipped.push(format!("{}: {err}", procfs::STAT_FILE)),
    }

    let dk = root.join("docker_response");
    match docker_get("/containers/json") {
        Ok(raw) => {
            put(&dk, "seed-containers", &raw).map_err(e("docker"))?;
            // One container's inspect answer, the other call ctscope makes.
            let id = serde_json::from_slice::<serde_json::Value>(
                raw.split(|&b| b == b'\n').next_back().unwrap_or(&[]),
            )
            .ok()
            .and_then(|v| v.get(0)?.get("Id")?.as_str().map(str::to_string));
            if let Some(id) = id.filter(|id| ctscope::host::docker::is_full_id(id))
                && let Ok(raw) = docker_get(&format!("/containers/{id}/json"))
            {
                put(&dk, "seed-inspect", &raw).map_err(e("docker"))?;
            }
            if let Ok(raw) = docker_get("/containers/nonexistent/json") {
                put(&dk, "seed-404", &raw).map_err(e("docker"))?;
            }
        }
        Err(err) => skipped.push(format!("docker: {err}")),
    }

    match observe_report() {
        Ok(report) => {
            let json = serde_json::to_vec_pretty(&report).map_err(|e| e.to_string())?;
            put(&root.join("report_recommend"), "seed-observed", &json).map_err(e("report"))?;
            match recommend::recommend(&report, &recommend::Options::default()) {
                Ok(rec) => {
                    let json = serde_json::to_vec_pretty(&rec).map_err(|e| e.to_string())?;
                    put(&root.join("recommendation_render"), "seed-observed", &json)
                        .map_err(e("recommendation"))?;
                }
                Err(err) => skipped.push(format!("recommend: {err}")),
            }
        }
        Err(err) => skipped.push(format!("observe --mode procfs: {err}")),
    }

    for s in skipped {
        eprintln!("seeds: skipped {s}");
    }
    Ok(())
}

fn main() -> ExitCode {
    let Some(root) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: seeds CORPUS_DIR");
        return ExitCode::from(2);
    };
    match run(&root) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("seeds: {e}");
            ExitCode::FAILURE
        }
    }
}
