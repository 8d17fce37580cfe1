//! `ctscope report --html` looked at in a real browser: headless Chromium (Debian's package;
//! `cargo xtask setup` installs it) renders the page to PNG, and the test reads the pixels: the
//! page is drawn, its charts are there (their colours cover real areas), and it is not blank.
//! The page itself must be self-contained: nothing in it is fetched.

use std::{fs, path::Path, process::Command};

use conntrack_user::{report::Report, tune::recommend};

/// A report as `observe --json` writes it: fentry mode, a chain histogram with a long tail,
/// a timeline with table-full refusals, two namespaces, a container, lifetimes.
fn report() -> Report {
    let chain = serde_json::json!({"histogram": [[1, 6000], [2, 2500], [3, 900], [4, 400], [6, 150], [9, 40], [14, 10]],
        "samples": 10000, "mean": 1.7, "p50": 1, "p99": 6, "max": 14, "truncated": 0});
    let timeline: Vec<serde_json::Value> = (1..=30)
        .map(|t| {
            serde_json::json!({"t_s": f64::from(t), "count": 100 * t, "inserts": 120,
                "drops": {"table_full": if t > 20 { 15 } else { 0 }, "chain_too_long": 0, "clash": 1,
                          "other": 0, "alloc_failed": 0},
                "kernel_drop": if t > 20 { 16 } else { 1 }})
        })
        .collect();
    serde_json::from_value(serde_json::json!({
        "ctscope_version": "0.1.0",
        "mode": "fentry",
        "kernel_release": "6.1.0-50-cloud-amd64",
        "duration_s": 30.0,
        "inserts": 3600,
        "chain_length": {"orig": chain, "reply": chain},
        "drops": {"table_full": 150, "chain_too_long": 0, "clash": 30, "other": 0, "alloc_failed": 0},
        "settings": {"buckets": 2048, "max": 3000, "count_start": 0, "count_end": 3000,
                     "slab_object_size": 248, "slab_size": 256, "ram_bytes": 2u64 << 30, "cpus": 2,
                     "timeouts": {"udp_timeout": 30, "tcp_timeout_established": 432_000}},
        "kernel_stats": {"drop": 180},
        "occupancy": {"interval_s": 1.0, "samples": 30, "total_start": 0, "total_end": 3000,
                      "total_peak": 3000, "total_peak_at_s": 30.0, "netns_peak": 3000,
                      "netns_peak_name": "host", "growth_per_hour": null, "per_netns": []},
        "netns": [
            {"inode": 1, "name": "host", "kind": "host", "inserts": 3000, "live_entries": 2990,
             "drops": {"table_full": 150, "chain_too_long": 0, "clash": 30, "other": 0, "alloc_failed": 0}},
            {"inode": 2, "name": "<script>alert(1)</script>", "kind": "container", "inserts": 600,
             "live_entries": 10, "drops": {"table_full": 0, "chain_too_long": 0, "clash": 0, "other": 0, "alloc_failed": 0}}
        ],
        "containers": [{"name": "web", "id": null, "netns_inode": 2, "addresses": ["172.17.0.2"],
            "inserts": 2400, "nat_inserts": 1800, "own_inserts": 600, "live_entries": 2400, "drops": 150}],
        "lifetimes": {"udp": {"count": 600, "p50_ms": 30000.0, "p99_ms": 31000.0, "max_ms": 31500.0,
                              "by_end": {"timeout": 600, "tcp_closed": 0, "early_drop": 0, "flush": 0,
                                         "unconfirmed": 0, "other": 0}}},
        "timeline": timeline,
        "notices": ["a notice with <b>markup</b>"]
    }))
    .expect("a report")
}

#[test]
fn chromium_renders_the_html_report_with_its_charts() {
    let dir = std::env::temp_dir().join(format!("ctscope-share-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("mkdir");
    let r = report();
    let rec = recommend::recommend(
        &r,
        &recommend::Options {
            headroom: 2.0,
            budget: None,
            target_chain: 4,
        },
    )
    .expect("a recommendation");
    fs::write(
        dir.join("report.json"),
        serde_json::to_string(&r).expect("json"),
    )
    .expect("write");
    fs::write(
        dir.join("rec.json"),
        serde_json::to_string(&rec).expect("json"),
    )
    .expect("write");
    let page = dir.join("report.html");
    let out = Command::new(env!("CARGO_BIN_EXE_ctscope"))
        .arg("report")
        .arg(dir.join("report.json"))
        .arg("--recommendation")
        .arg(dir.join("rec.json"))
        .arg("--html")
        .arg(&page)
        .output()
        .expect("ctscope report");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let html = fs::read_to_string(&page).expect("the page");
    // Self-contained and escaped: nothing to fetch, no markup from the report's strings.
    for bad in ["<script", "src=", "href=", "@import", "url("] {
        assert!(!html.contains(bad), "the page contains {bad}");
    }
    assert!(
        html.contains("&lt;script&gt;") || html.contains("\\x"),
        "the name is escaped"
    );
    assert!(html.contains("&lt;b&gt;markup&lt;/b&gt;"));
    // Chain lengths, fill, inserts, refusals, namespaces, containers, two sizing charts.
    assert!(
        html.matches("<svg").count() >= 9,
        "{} charts",
        html.matches("<svg").count()
    );
    for method in rec.comparison.iter().map(|c| c.method.as_str()) {
        assert!(html.contains(method), "method {method} in the side-by-side");
    }

    let Ok(chromium) = which("chromium") else {
        assert!(
            std::env::var_os("CTSCOPE_STRICT").is_none_or(|v| v != "1"),
            "CTSCOPE_STRICT=1 and no chromium (cargo xtask setup installs it)"
        );
        eprintln!("SKIPPED: no chromium");
        return;
    };
    let png = dir.join("page.png");
    let shot = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1000,3600",
        ])
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", page.display()))
        .env("HOME", &dir)
        .output()
        .expect("chromium");
    assert!(
        shot.status.success(),
        "{}",
        String::from_utf8_lossy(&shot.stderr)
    );
    let (w, h, rgb) = decode(&png);
    assert_eq!((w, h), (1000, 3600), "the screenshot's size");
    let count = |c: [u8; 3]| rgb.chunks(3).filter(|p| *p == c).count();
    let total = (w * h) as usize;
    let white = count([255, 255, 255]);
    // Not blank: text, tables and charts cover a real share of the page.
    assert!(
        white < total * 97 / 100,
        "{white} of {total} pixels are white"
    );
    // Each chart colour covers a real area: measured chain bars and entries (blue), the
    // model (grey), inserts (green), table-full refusals and the limit (red), memory (blue),
    // p99 per method (orange).
    for (name, c, min) in [
        ("blue", [0x1f, 0x77, 0xb4], 20_000),
        ("grey", [0xaa, 0xaa, 0xaa], 2_000),
        ("green", [0x2c, 0xa0, 0x2c], 2_000),
        ("red", [0xd6, 0x27, 0x28], 500),
        ("orange", [0xff, 0x7f, 0x0e], 1_000),
    ] {
        let n = count(c);
        println!("{name}: {n} pixels");
        assert!(
            n >= min,
            "{name} covers {n} pixels (< {min}): a chart is missing or empty"
        );
    }
    let _ = fs::remove_dir_all(&dir);
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}

/// Width, height and RGB bytes of a PNG.
fn decode(path: &Path) -> (u32, u32, Vec<u8>) {
    let file = fs::File::open(path).expect("png");
    let mut dec = png::Decoder::new(std::io::BufReader::new(file));
    dec.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = dec.read_info().expect("png header");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("png frame");
    let bytes = &buf[..info.buffer_size()];
    let rgb = match info.color_type {
        png::ColorType::Rgb => bytes.to_vec(),
        png::ColorType::Rgba => bytes.chunks(4).flat_map(|p| [p[0], p[1], p[2]]).collect(),
        other => panic!("unexpected PNG colour type {other:?}"),
    };
    (info.width, info.height, rgb)
}
