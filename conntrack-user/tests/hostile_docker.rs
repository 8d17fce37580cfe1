//! A hostile Docker socket cannot hold ctscope: real Unix sockets served by
//! test threads that accept and stay silent, never accept (backlog full),
//! answer a byte a second, or answer too much. Each request must fail within
//! its deadline; and an `observe` run pointed at such a socket
//! (`DOCKER_HOST=unix://...`) must still end on SIGINT promptly with its
//! report.

use std::{
    fs,
    io::{Read as _, Write as _},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use conntrack_user::{
    host::docker::{self, DockerError},
    host::kernel,
};

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ctscope-hostile-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).expect("mkdir");
    d
}

/// Serves every connection on `l` with `serve` on its own thread until `stop`.
fn serve(l: UnixListener, stop: Arc<AtomicBool>, serve: fn(UnixStream, &AtomicBool)) {
    thread::spawn(move || {
        for c in l.incoming() {
            let Ok(c) = c else { return };
            let flag = stop.clone();
            thread::spawn(move || serve(c, &flag));
            if stop.load(Ordering::Relaxed) {
                return;
            }
        }
    });
}

fn read_request(c: &mut UnixStream) {
    let mut buf = [0u8; 1024];
    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = c.read(&mut buf);
}

fn silent(mut c: UnixStream, stop: &AtomicBool) {
    read_request(&mut c);
    while !stop.load(Ordering::Relaxed) {
        thread::sleep(Duration::from_millis(50));
    }
}

fn byte_a_second(mut c: UnixStream, stop: &AtomicBool) {
    read_request(&mut c);
    let answer = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n[]";
    for b in answer.iter().cycle() {
        if stop.load(Ordering::Relaxed) || c.write_all(&[*b]).is_err() {
            return;
        }
        thread::sleep(Duration::from_secs(1));
    }
}

fn oversized(mut c: UnixStream, _stop: &AtomicBool) {
    read_request(&mut c);
    let _ = c.write_all(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n[");
    let chunk = "0,".repeat(32 << 10);
    // 6 MiB of valid JSON elements, never closed: past any cap.
    for _ in 0..96 {
        if c.write_all(chunk.as_bytes()).is_err() {
            return;
        }
    }
    let _ = c.write_all(b"0]");
}

fn near_cap(mut c: UnixStream, _stop: &AtomicBool) {
    read_request(&mut c);
    let mut body = String::from("[");
    while body.len() < docker::MAX_ANSWER - 4096 {
        body.push_str("0,");
    }
    body.push_str("0]");
    let _ = c.write_all(b"HTTP/1.0 200 OK\r\n\r\n");
    let _ = c.write_all(body.as_bytes());
}

/// One request against `socket`: its error, and how long it took.
fn request(socket: &Path) -> (Result<serde_json::Value, DockerError>, Duration) {
    let t0 = Instant::now();
    let r = docker::get_from(socket, "/containers/json");
    (r, t0.elapsed())
}

/// Within the total deadline plus scheduling slack (2 shared cores).
fn assert_prompt(took: Duration) {
    assert!(
        took < docker::DEADLINE + Duration::from_millis(800),
        "took {took:?}, deadline {:?}",
        docker::DEADLINE
    );
}

#[test]
fn a_socket_that_accepts_and_stays_silent_times_out() {
    let d = tmp("silent");
    let path = d.join("docker.sock");
    let stop = Arc::new(AtomicBool::new(false));
    serve(
        UnixListener::bind(&path).expect("bind"),
        stop.clone(),
        silent,
    );
    let (r, took) = request(&path);
    stop.store(true, Ordering::Relaxed);
    eprintln!("silent: {r:?} after {took:?}");
    assert!(
        matches!(r, Err(DockerError::Timeout { .. })),
        "{r:?} after {took:?}"
    );
    assert_prompt(took);
    let _ = fs::remove_dir_all(d);
}

#[test]
fn a_socket_that_answers_a_byte_a_second_times_out() {
    let d = tmp("slow");
    let path = d.join("docker.sock");
    let stop = Arc::new(AtomicBool::new(false));
    serve(
        UnixListener::bind(&path).expect("bind"),
        stop.clone(),
        byte_a_second,
    );
    let (r, took) = request(&path);
    stop.store(true, Ordering::Relaxed);
    eprintln!("byte a second: {r:?} after {took:?}");
    // Per-read timeouts never fire here: only a total deadline ends it.
    assert!(
        matches!(r, Err(DockerError::Timeout { .. })),
        "{r:?} after {took:?}"
    );
    assert!(took >= docker::DEADLINE, "{took:?}");
    assert_prompt(took);
    let _ = fs::remove_dir_all(d);
}

#[test]
fn a_socket_that_never_accepts_times_out_at_connect() {
    let d = tmp("backlog");
    let path = d.join("docker.sock");
    // A listener with backlog 0 that never accepts: one pending connection
    // fills its queue (unix_recvq_full), every further connect waits.
    let l = UnixListener::bind(&path).expect("bind");
    // SAFETY: listen(2) on a listening socket we own, to shrink its backlog.
    assert_eq!(unsafe { libc::listen(l.as_raw_fd(), 0) }, 0);
    let mut fillers = Vec::new();
    for _ in 0..4 {
        // SAFETY: plain socket(2); checked below.
        let raw = unsafe {
            libc::socket(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        assert!(raw >= 0);
        // SAFETY: a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let filler = UnixStream::from(fd);
        // Non-blocking: a blocking connect would wait here once the queue is full.
        let c = std::ffi::CString::new(path.to_str().expect("utf-8")).expect("c path");
        // SAFETY: an all-zero sockaddr_un is valid; filled below.
        let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        sa.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (d, b) in sa.sun_path.iter_mut().zip(c.as_bytes()) {
            *d = *b as libc::c_char;
        }
        // SAFETY: valid sockaddr_un of the size given, a socket we own.
        unsafe {
            libc::connect(
                filler.as_raw_fd(),
                (&raw const sa).cast(),
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            )
        };
        fillers.push(filler);
    }
    let (r, took) = request(&path);
    eprintln!("backlog full: {r:?} after {took:?}");
    assert!(
        matches!(
            r,
            Err(DockerError::Timeout {
                what: "connection",
                ..
            })
        ),
        "{r:?} after {took:?}"
    );
    assert!(took < docker::CONNECT_TIMEOUT + Duration::from_millis(500));
    drop(l);
    let _ = fs::remove_dir_all(d);
}

#[test]
fn an_oversized_answer_is_refused_and_one_under_the_cap_parses() {
    let d = tmp("big");
    let path = d.join("docker.sock");
    let stop = Arc::new(AtomicBool::new(false));
    serve(
        UnixListener::bind(&path).expect("bind"),
        stop.clone(),
        oversized,
    );
    let (r, took) = request(&path);
    eprintln!("oversized: {:?} after {took:?}", r.as_ref().err());
    assert!(matches!(r, Err(DockerError::TooLarge { .. })), "{took:?}");
    assert_prompt(took);

    let path2 = d.join("near.sock");
    serve(
        UnixListener::bind(&path2).expect("bind"),
        stop.clone(),
        near_cap,
    );
    let (r, took) = request(&path2);
    stop.store(true, Ordering::Relaxed);
    let v = r.expect("an answer just under the cap");
    assert!(
        v.as_array().is_some_and(|a| a.len() > 1_000_000),
        "{took:?}"
    );
    let _ = fs::remove_dir_all(d);
}

#[test]
fn observe_with_a_hostile_docker_socket_ends_on_sigint_with_its_report() {
    if !kernel::is_root() {
        eprintln!("SKIPPED: observe needs root");
        assert!(
            std::env::var_os("CTSCOPE_STRICT").is_none_or(|v| v != "1"),
            "CTSCOPE_STRICT=1 and this test needs root"
        );
        return;
    }
    let d = tmp("observe");
    let stop = Arc::new(AtomicBool::new(false));
    // Named with DOCKER_HOST, and (where the default socket exists to mount
    // over) bound over /var/run/docker.sock in a private mount namespace,
    // which is what a wedged daemon looks like to any version of ctscope.
    let default = Path::new(docker::SOCKET).exists();
    for (name, f, over_default) in [
        (
            "slow.sock",
            byte_a_second as fn(UnixStream, &AtomicBool),
            false,
        ),
        ("silent.sock", silent, false),
        ("slow-default.sock", byte_a_second, true),
    ] {
        if over_default && !default {
            eprintln!("SKIPPED {name}: no {} to mount over", docker::SOCKET);
            continue;
        }
        let path = d.join(name);
        serve(UnixListener::bind(&path).expect("bind"), stop.clone(), f);
        let report = d.join(format!("{name}.json"));
        let ready = d.join(format!("{name}.ready"));
        let mut cmd = if over_default {
            // unshare and sh exec: the pid signalled is ctscope's.
            let mut c = Command::new("unshare");
            c.args(["--mount", "--propagation", "private", "sh", "-c"]).arg(format!(
                "mount --bind {} {} && exec {} observe --mode procfs --quiet --json {} --ready-file {}",
                path.display(),
                docker::SOCKET,
                env!("CARGO_BIN_EXE_ctscope"),
                report.display(),
                ready.display()
            ));
            c
        } else {
            let mut c = Command::new(env!("CARGO_BIN_EXE_ctscope"));
            c.args(["observe", "--mode", "procfs", "--quiet", "--json"])
                .arg(&report)
                .arg("--ready-file")
                .arg(&ready)
                .env("DOCKER_HOST", format!("unix://{}", path.display()));
            c
        };
        let mut child = cmd.spawn().expect("start ctscope");
        let t0 = Instant::now();
        while !ready.exists() {
            if t0.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{name}: ctscope never became ready (held by the socket?)");
            }
            if let Ok(Some(st)) = child.try_wait() {
                panic!("{name}: ctscope exited early: {st}");
            }
            thread::sleep(Duration::from_millis(50));
        }
        let started = t0.elapsed();
        // SAFETY: kill(2) on the pid of a child we spawned and still own.
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
        let t1 = Instant::now();
        let st = loop {
            if let Ok(Some(st)) = child.try_wait() {
                break st;
            }
            if t1.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{name}: ctscope ignored SIGINT for 20 s");
            }
            thread::sleep(Duration::from_millis(20));
        };
        let ended = t1.elapsed();
        eprintln!("{name}: ready after {started:?}, ended {ended:?} after SIGINT: {st}");
        assert!(st.success(), "{name}: {st}");
        assert!(ended < Duration::from_secs(5), "{name}: {ended:?}");
        let r: conntrack_user::report::Report =
            serde_json::from_str(&fs::read_to_string(&report).expect("report")).expect("parse");
        assert_eq!(r.mode, conntrack_user::report::Mode::Procfs);
    }
    stop.store(true, Ordering::Relaxed);
    let _ = fs::remove_dir_all(d);
}
