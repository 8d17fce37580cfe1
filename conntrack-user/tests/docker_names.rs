//! Container names: one API request per container id (then cached), and a
//! daemon that failed is left alone (back-off) instead of being asked, and
//! waited for, again. A real Unix socket served by a test thread, named with
//! `DOCKER_HOST` (set once, before any other thread of this test binary
//! reads the environment: this file holds one test).

use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixListener,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use conntrack_user::host::docker::{self, DockerError};

#[test]
fn names_are_cached_and_a_failed_daemon_is_left_alone() {
    let dir = std::env::temp_dir().join(format!("ctscope-names-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let path = dir.join("docker.sock");
    let l = UnixListener::bind(&path).expect("bind");
    let asked = Arc::new(AtomicU64::new(0));
    let seen = asked.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            let n = seen.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 1024];
            let _ = c.read(&mut buf);
            if n < 1 {
                let _ = c.write_all(
                    b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"Name\":\"/web-1\"}",
                );
            } else {
                // From the second request on: accept, never answer.
                std::thread::sleep(Duration::from_secs(30));
            }
        }
    });
    // SAFETY: the only test of this binary, before it starts any thread that
    // reads the environment (the server thread above does not).
    unsafe { std::env::set_var("DOCKER_HOST", format!("unix://{}", path.display())) };

    // An id the daemon's state directory does not have: the API answers.
    let id = "ab".repeat(32);
    for _ in 0..5 {
        assert_eq!(docker::container_name(&id).as_deref(), Some("web-1"));
    }
    assert_eq!(asked.load(Ordering::SeqCst), 1, "one lookup per id");

    // Another id: the daemon is silent now; the request ends at its deadline.
    let t0 = Instant::now();
    assert_eq!(docker::container_name(&"cd".repeat(32)), None);
    let first = t0.elapsed();
    assert!(
        first >= docker::DEADLINE && first < docker::DEADLINE + Duration::from_secs(1),
        "{first:?}"
    );
    // Within the back-off it is not asked again: an answer at once.
    let t1 = Instant::now();
    let r = docker::get("/containers/json");
    assert!(matches!(r, Err(DockerError::Unavailable(_))), "{r:?}");
    assert!(
        t1.elapsed() < Duration::from_millis(100),
        "{:?}",
        t1.elapsed()
    );
    assert_eq!(docker::container_name(&"ef".repeat(32)), None);
    assert_eq!(asked.load(Ordering::SeqCst), 2);
    // The cached name is still there.
    assert_eq!(docker::container_name(&id).as_deref(), Some("web-1"));
    eprintln!("cached: 1 request for 5 lookups; silent daemon: {first:?}, then back-off");
    let _ = std::fs::remove_dir_all(&dir);
}
