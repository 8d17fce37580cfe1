//! Developer tasks for ctscope: `cargo xtask <command>` (see `cargo xtask --help`).

mod accel;
mod bench;
mod cmd;
mod compare;
mod compile;
mod cpio;
mod demo;
mod fuzz;
mod initramfs;
mod install;
mod kernels;
mod lab;
mod modules;
mod paths;
mod progress;
mod qemu;
mod setup;
mod soak;
mod vm;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "ctscope's developer tasks: setup, build, the qemu VM lab, tests and the demo",
    long_about = "ctscope's developer tasks.\n\n\
        The VM lab boots real kernels (Debian's 5.10, 6.1, 6.12, 7.3, ... or one you give it) under qemu (KVM where a probe boot proves it works, else TCG) with \
        an initramfs holding ctscope, the lab agent and the load generator, runs a scenario from \
        scenarios/*.toml and compares what ctscope measured with the kernel's own counters. \
        Everything it downloads or builds lives under target/lab/."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what this machine lacks (Debian packages, nightly rust-src and clippy, bpf-linker);
    /// idempotent.
    ///
    /// Debian packages: qemu-system-x86 busybox-static kmod cpio zstd xz-utils nftables iproute2
    /// (apt-get needs root). bpf-linker 0.13.0 is built against nightly's own libLLVM, linked into
    /// ~/.local/share/ctscope/llvm/lib so that it runs outside rustup.
    Setup,
    /// Build ctscope (with its eBPF object) and the lab binaries (lab-agent, loadgen).
    ///
    /// Fails if the eBPF object would be the empty stub (AYA_BUILD_SKIP set, or bpf-linker missing).
    Build {
        /// Build with the release profile (the lab always does).
        #[arg(long)]
        release: bool,
    },
    /// Build ctscope (release, with its eBPF object) and install it as PREFIX/bin/ctscope.
    ///
    /// Runs setup first. The copy is atomic (a temporary file in PREFIX/bin renamed over
    /// ctscope, mode 755). PREFIX/bin must be writable: use sudo or a prefix you own.
    Install {
        /// Installation prefix; the binary goes to PREFIX/bin/ctscope.
        #[arg(long, default_value = install::DEFAULT_PREFIX, value_parser = install::prefix_arg)]
        prefix: PathBuf,
    },
    /// Download and unpack a kernel for the lab (cached under target/lab/kernels/) and check
    /// that the lab can use it.
    ///
    /// SPEC: a series (5.10, 6.1, 6.12, 7.2, 7.3, ...: the newest patch release in Debian's
    /// bullseye, bookworm, trixie, their backports or sid), `latest` (the newest Debian cloud
    /// kernel), debian:PACKAGE[=VERSION], a .deb file or an image and a modules .deb
    /// (a.deb,b.deb or a.deb+b.deb), or a directory holding bzImage, vmlinuz, boot/vmlinuz-* or
    /// usr/lib/modules/<release>/vmlinuz[.unsigned] and [usr/]lib/modules/<release>/.
    Kernel {
        /// Kernel SPEC (see above); repeatable.
        #[arg(long = "kernel", required = true, value_parser = kernel_spec)]
        kernels: Vec<String>,
        /// Also boot each with a trivial init that loads the lab's modules and sets up an nft rule.
        #[arg(long)]
        smoke: bool,
        /// Seconds before a smoke VM is killed.
        #[arg(long, default_value_t = 300)]
        timeout_s: u64,
        #[command(flatten)]
        accel: accel::Arg,
    },
    /// Run one scenario in a VM and write its result as JSON.
    Vm {
        /// Kernel SPEC: a series (5.10, 6.1, 6.12, 7.3, ...), latest, debian:PACKAGE[=VERSION],
        /// .deb file(s) or a kernel directory (see `cargo xtask kernel --help`).
        #[arg(long, value_parser = kernel_spec)]
        kernel: String,
        /// Scenario file (e.g. scenarios/chain-overflow.toml).
        #[arg(long)]
        scenario: PathBuf,
        /// Result file [default: target/lab/results/<kernel>-<scenario>.json].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Seconds before the VM is killed.
        #[arg(long, default_value_t = 900)]
        timeout_s: u64,
        /// Use the binaries already in target/release instead of building first.
        #[arg(long)]
        no_build: bool,
        #[command(flatten)]
        accel: accel::Arg,
    },
    /// Run everything: setup, fmt, clippy (the workspace, then the eBPF crate for its real
    /// target with nightly), host tests, then the VM lab matrix.
    ///
    /// The lab runs every scenarios/*.toml on 6.1, 6.12 and 7.3, and on 5.10 every scenario but
    /// docker-nat, table-full and self-check-fault, then `soak` (bench/soak.toml cut to 3
    /// minutes of churn, see `cargo xtask soak --help`) on 7.3, and checks each result. The
    /// last line reads `N passed, N failed` (lab checks).
    Test {
        /// Only these kernels (comma-separated SPECs, e.g. 6.1,7.3; see `cargo xtask kernel
        /// --help`). An image and its modules .deb are joined by `+`: a.deb+b.deb. A kernel
        /// other than 5.10 runs every scenario.
        #[arg(long, value_delimiter = ',', value_parser = kernel_spec)]
        kernels: Option<Vec<String>>,
        /// Only these scenarios, by name (comma-separated; `soak` is the 3-minute soak). With
        /// --kernels too, every named scenario runs on every named kernel; with --kernels alone,
        /// the soak is left out.
        #[arg(long, value_delimiter = ',')]
        scenarios: Option<Vec<String>>,
        /// Skip the VM lab.
        #[arg(long, conflicts_with = "lab_only")]
        no_lab: bool,
        /// Skip fmt, clippy and the host tests.
        #[arg(long)]
        lab_only: bool,
        /// Skip the setup step.
        #[arg(long)]
        no_setup: bool,
        /// Use the binaries already in target/release instead of building them for the lab.
        #[arg(long)]
        no_build: bool,
        /// Seconds before one VM run is killed.
        #[arg(long, default_value_t = 600)]
        timeout_s: u64,
        #[command(flatten)]
        accel: accel::Arg,
    },
    /// Measure ctscope's overhead in the VM lab: bench/workload.toml, each round twice without
    /// ctscope (an A/A pair), with its default probes, with --cost and with --lookups (rotated
    /// order), then bench/results/<kernel>.json and the tables in BENCHMARKS.md.
    ///
    /// The bench VM counts guest time in guest instructions (qemu -icount): the figure is the
    /// guest's busy time per connection over the connections' whole life, against the round's
    /// baselines, and the run is flagged when its A/A pair differs by more than 1%. Instruction
    /// counts are not real hardware's time (no cache misses, traps or mispredicts in them).
    Bench {
        /// Kernel SPEC (see `cargo xtask kernel --help`).
        #[arg(long, default_value = "6.1", value_parser = kernel_spec)]
        kernel: String,
        /// Rounds (each runs every variant once) [default: bench/workload.toml's].
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=20))]
        rounds: Option<u32>,
        /// Seconds before the VM is killed.
        #[arg(long, default_value_t = 1800)]
        timeout_s: u64,
        /// Use the binaries already in target/release instead of building first.
        #[arg(long)]
        no_build: bool,
        /// Only regenerate the tables of BENCHMARKS.md from bench/results/*.json (no VM).
        #[arg(long)]
        tables_only: bool,
        #[command(flatten)]
        accel: accel::Arg,
    },
    /// Soak `ctscope serve` in the VM lab: bench/soak.toml, every container opening flows at
    /// its rate (10 minutes by default) while entries expire, serve scraped and sampled all
    /// along; then bench/soak/<kernel>.json and the soak table of BENCHMARKS.md.
    ///
    /// The lab agent samples ctscope's resident memory (/proc/PID/status), a /metrics scrape,
    /// the kernel's count and the fill of ctscope's eBPF maps (read through the bpf syscall,
    /// not from ctscope) every sample_s. The run passes when the counts are exact against the
    /// kernel (as in the serve scenario), the memory stays within [soak] rss_flat_kib after
    /// the warm-up, no map reaches its capacity, the per-origin map stops growing, and the
    /// lifetime slots drain once every entry has died. `cargo xtask test` runs a 3-minute form
    /// on 7.3 (`--scenarios soak`).
    Soak {
        /// Kernel SPEC (see `cargo xtask kernel --help`).
        #[arg(long, default_value = "7.3", value_parser = kernel_spec)]
        kernel: String,
        /// Minutes of churn [default: bench/soak.toml's flows / rate, 10]. Each container opens
        /// rate x 60 x minutes flows, at most 40,000 (its source ports): above 13 minutes,
        /// lower --rate (e.g. --minutes 40 --rate 15). The result then goes to
        /// bench/soak/<kernel>-<minutes>min[-<rate>per-s].json.
        #[arg(long, value_parser = clap::value_parser!(u32).range(3..=600))]
        minutes: Option<u32>,
        /// New flows per second of each container [default: bench/soak.toml's, 50].
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
        rate: Option<u32>,
        /// ctscope's --mode instead of its own choice (e.g. kprobe on a kernel that permits
        /// fentry); the result goes to bench/soak/<kernel>-<mode>.json.
        #[arg(long, value_parser = ["fentry", "kprobe"])]
        mode: Option<String>,
        /// Seconds before the VM is killed.
        #[arg(long, default_value_t = 1800)]
        timeout_s: u64,
        /// Use the binaries already in target/release instead of building first.
        #[arg(long)]
        no_build: bool,
        /// Only regenerate the soak table of BENCHMARKS.md from bench/soak/*.json (no VM).
        #[arg(long)]
        tables_only: bool,
        #[command(flatten)]
        accel: accel::Arg,
    },
    /// Fuzz ctscope's parsers of outside input with libFuzzer (stable rust, no cargo-fuzz):
    /// BTF (vmlinux and split), ctnetlink messages, the conntrack stat file, Docker's HTTP
    /// answers, report JSON into recommend and recommendation JSON into render.
    ///
    /// Seeds come from this host (its BTF, a ctnetlink dump, /proc/net/stat/nf_conntrack,
    /// the Docker Engine, a procfs-mode observe). Prints `TARGET: N runs, no crash` per target;
    /// a crash saves its input under target/fuzz/artifacts/TARGET/ and fails the command.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only this target.
        #[arg(long, value_parser = fuzz::target_arg)]
        target: Option<String>,
    },
    /// The main job, in the VM: Debian 6.1 with scenarios/tune-table-full.toml. A small host at
    /// the kernel's defaults drops connections (table full); ctscope observes it, recommends
    /// (next to the kernel's defaults and the usual formulas), applies, the same load runs again
    /// without a drop, and rollback restores the defaults. Live output, then a summary.
    Demo {
        /// Kernel SPEC (see `cargo xtask kernel --help`).
        #[arg(long, default_value = demo::KERNEL, value_parser = kernel_spec)]
        kernel: String,
        /// Seconds before the VM is killed.
        #[arg(long, default_value_t = 900)]
        timeout_s: u64,
        #[command(flatten)]
        accel: accel::Arg,
    },
    /// Compare two lab runs (or two bench results) and fail when NEW is worse than BASE
    /// beyond thresholds: exit 0 no regression, 1 regression, 2 usage or input error.
    #[command(long_about = compare::LONG_ABOUT)]
    Compare(compare::Args),
}

fn kernel_spec(s: &str) -> Result<String, String> {
    kernels::Spec::parse(s)
        .map(|_| s.to_owned())
        .map_err(|e| e.to_string())
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

impl Command {
    /// `--accel` of the commands that boot VMs.
    fn accel(&self) -> Option<accel::Choice> {
        match self {
            Command::Kernel { accel, .. }
            | Command::Vm { accel, .. }
            | Command::Test { accel, .. }
            | Command::Bench { accel, .. }
            | Command::Soak { accel, .. }
            | Command::Demo { accel, .. } => Some(accel.accel),
            Command::Setup
            | Command::Build { .. }
            | Command::Install { .. }
            | Command::Fuzz { .. }
            | Command::Compare(_) => None,
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    if let Some(choice) = cli.command.accel() {
        accel::set_choice(choice);
    }
    match cli.command {
        Command::Setup => setup::run(),
        Command::Build { release } => compile::run(release).map(|_| ()),
        Command::Install { prefix } => install::run(&prefix),
        Command::Kernel {
            kernels: labels,
            smoke,
            timeout_s,
            ..
        } => {
            for label in &labels {
                let kernel = kernels::prepare(label)?;
                if smoke {
                    let result = vm::smoke(&kernel, Duration::from_secs(timeout_s))?;
                    println!("smoke {}: {result}", kernel.label);
                }
            }
            Ok(())
        }
        Command::Vm {
            kernel,
            scenario,
            out,
            timeout_s,
            no_build,
            ..
        } => {
            let scenario = vm::ScenarioFile::load(&scenario)?;
            let bins = if no_build {
                compile::binaries(true)
            } else {
                compile::run(true)?
            };
            let kernel = kernels::prepare(&kernel)?;
            let out = out.unwrap_or_else(|| vm::default_out(&kernel, &scenario));
            let result = vm::run_scenario(
                &kernel,
                &bins,
                &scenario,
                &out,
                Duration::from_secs(timeout_s),
            )
            .with_context(|| format!("{} on {}", scenario.name(), kernel.label))?;
            let checks = ctscope_lab::check(&result, &scenario.scenario);
            println!("checks:");
            for c in &checks {
                println!("  {c}");
            }
            Ok(())
        }
        Command::Test {
            kernels,
            scenarios,
            no_lab,
            lab_only,
            no_setup,
            no_build,
            timeout_s,
            ..
        } => lab::run(&lab::Options {
            kernels,
            scenarios,
            no_lab,
            lab_only,
            no_setup,
            no_build,
            timeout: Duration::from_secs(timeout_s),
        }),
        Command::Bench {
            tables_only: true, ..
        } => bench::regenerate_markdown(),
        Command::Bench {
            kernel,
            rounds,
            timeout_s,
            no_build,
            ..
        } => bench::run(&bench::Options {
            kernel,
            rounds,
            timeout: Duration::from_secs(timeout_s),
            no_build,
        }),
        Command::Soak {
            tables_only: true, ..
        } => soak::regenerate_markdown(),
        Command::Soak {
            kernel,
            minutes,
            rate,
            mode,
            timeout_s,
            no_build,
            ..
        } => soak::run(&soak::Options {
            kernel,
            minutes,
            rate,
            mode,
            timeout: Duration::from_secs(timeout_s),
            no_build,
        }),
        Command::Fuzz { seconds, target } => fuzz::run(&fuzz::Options { seconds, target }),
        Command::Demo {
            kernel, timeout_s, ..
        } => demo::run(&kernel, Duration::from_secs(timeout_s)),
        // Exit codes of its own: 1 is a regression found, 2 an input it could not compare.
        Command::Compare(args) => std::process::exit(compare::main(&args)),
    }
}
