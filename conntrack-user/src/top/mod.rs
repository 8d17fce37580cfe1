//! `ctscope top`: the measurement engine shown live in a terminal (ratatui), or, with
//! `--batch`, one JSON object per interval on stdout for scripts and CI logs.
//!
//! The terminal is restored on every way out: the normal end, an error (the guard's drop), a
//! signal (it ends the loop like `q`) and a panic (the hook restores before the message).

mod state;
mod ui;

use std::{
    io::Write as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use ratatui::crossterm::{
    event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
    execute,
    terminal::{self, EnterAlternateScreen, LeaveAlternateScreen},
};
use thiserror::Error;
use tokio::sync::mpsc;

use crate::{
    host::kernel,
    observe::{self, Engine, ObserveError, Signals},
};
use state::State;

/// Rows of namespaces and containers in a `--batch` line, at most.
const BATCH_ROWS: usize = 50;
/// The namespace and container tables are rebuilt at most this often: each rebuild visits
/// every namespace and dumps the table for NAT attribution.
const ROWS_EVERY: Duration = Duration::from_secs(2);

pub struct Options {
    pub batch: bool,
    /// `--batch`: stop after this many lines.
    pub count: Option<u64>,
    /// The engine's options (`interval`, `mode`, `attribution` used).
    pub observe: observe::Options,
}

#[derive(Debug, Error)]
pub enum TopError {
    #[error(transparent)]
    Observe(#[from] ObserveError),
    #[error("the terminal: {0}")]
    Terminal(std::io::Error),
    #[error("ctscope top needs a terminal on stdin and stdout (use --batch for JSON lines)")]
    NoTerminal,
}

pub async fn run(opts: Options) -> Result<(), TopError> {
    if !kernel::is_root() {
        return Err(ObserveError::NotRoot.into());
    }
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout())
        && std::io::IsTerminal::is_terminal(&std::io::stdin());
    if !opts.batch && !terminal {
        return Err(TopError::NoTerminal);
    }
    let mut signals = Signals::new()?;
    if !opts.batch {
        eprintln!("ctscope: attaching (Ctrl-C stops)...");
    }
    let mut engine = Engine::open(&opts.observe, &mut signals, false).await?;
    if engine.stopped_early() {
        return Ok(());
    }
    let mut state = State {
        release: crate::text::name(engine.release()),
        mode: Some(engine.mode()),
        ..State::default()
    };
    if engine.attached().is_none() {
        state.notice =
            Some("procfs mode: eBPF probes could not attach (see ctscope doctor)".to_string());
    }
    if opts.batch {
        batch(&mut engine, &mut state, &mut signals, opts.count).await
    } else {
        interactive(&mut engine, &mut state, &mut signals).await
    }
}

async fn batch(
    engine: &mut Engine,
    state: &mut State,
    signals: &mut Signals,
    count: Option<u64>,
) -> Result<(), TopError> {
    let mut lines = 0u64;
    loop {
        tokio::select! {
            tick = engine.next() => {
                let Some(t) = tick else { continue };
                state.on_tick(&t, t.now.at.duration_since(engine.started()).as_secs_f64());
                match engine.report() {
                    Ok((r, _)) => state.on_report(&r),
                    Err(e) => log::warn!("reading namespaces and containers: {e}"),
                }
                let line = state.batch_json(BATCH_ROWS).to_string();
                let mut out = std::io::stdout().lock();
                // A closed stdout (`| head`) ends the run quietly.
                if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                    return Ok(());
                }
                lines += 1;
                if count.is_some_and(|c| lines >= c) {
                    return Ok(());
                }
            }
            _ = signals.recv() => return Ok(()),
        }
    }
}

/// Raw mode and the alternate screen, undone on drop.
struct TerminalGuard;

impl TerminalGuard {
    fn enter() -> std::io::Result<TerminalGuard> {
        terminal::enable_raw_mode()?;
        let guard = TerminalGuard;
        execute!(std::io::stdout(), EnterAlternateScreen)?;
        Ok(guard)
    }
}

fn restore_terminal() {
    let _ = terminal::disable_raw_mode();
    let _ = execute!(
        std::io::stdout(),
        LeaveAlternateScreen,
        ratatui::crossterm::cursor::Show
    );
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// What a key or the terminal asks for.
enum Input {
    Key(KeyCode, KeyModifiers),
    Resize,
}

/// Reads terminal events on a thread of its own (crossterm's reads block), until `stop`.
fn input_thread(tx: mpsc::Sender<Input>, stop: Arc<AtomicBool>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("ctscope-keys".into())
        .spawn(move || {
            while !stop.load(Ordering::Acquire) {
                match event::poll(Duration::from_millis(100)) {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(_) => return,
                }
                let input = match event::read() {
                    Ok(Event::Key(k)) if k.kind != KeyEventKind::Release => {
                        Input::Key(k.code, k.modifiers)
                    }
                    Ok(Event::Resize(..)) => Input::Resize,
                    Ok(_) => continue,
                    Err(_) => return,
                };
                if tx.blocking_send(input).is_err() {
                    return;
                }
            }
        })
        .map(|_| ())
}

async fn interactive(
    engine: &mut Engine,
    state: &mut State,
    signals: &mut Signals,
) -> Result<(), TopError> {
    // A panic restores the terminal before its message is printed.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore_terminal();
        default_hook(info);
    }));
    let _guard = TerminalGuard::enter().map_err(TopError::Terminal)?;
    let mut term =
        ratatui::Terminal::new(ratatui::backend::CrosstermBackend::new(std::io::stdout()))
            .map_err(TopError::Terminal)?;
    term.clear().map_err(TopError::Terminal)?;
    let (tx, mut rx) = mpsc::channel(64);
    let stop = Arc::new(AtomicBool::new(false));
    input_thread(tx, stop.clone()).map_err(TopError::Terminal)?;
    let mut rows_at: Option<std::time::Instant> = None;
    let result = loop {
        if let Err(e) = term.draw(|f| ui::draw(f, state)) {
            break Err(TopError::Terminal(e));
        }
        tokio::select! {
            tick = engine.next() => {
                let Some(t) = tick else { continue };
                if state.paused {
                    continue;
                }
                state.on_tick(&t, t.now.at.duration_since(engine.started()).as_secs_f64());
                if rows_at.is_none_or(|at| at.elapsed() >= ROWS_EVERY) {
                    match engine.report() {
                        Ok((r, _)) => state.on_report(&r),
                        Err(e) => state.notice = Some(format!("reading namespaces: {e}")),
                    }
                    rows_at = Some(std::time::Instant::now());
                }
            }
            input = rx.recv() => match input {
                Some(Input::Key(code, mods)) => match code {
                    KeyCode::Char('q') | KeyCode::Esc => break Ok(()),
                    KeyCode::Char('c') if mods.contains(KeyModifiers::CONTROL) => break Ok(()),
                    KeyCode::Char('s') => {
                        state.sort = state.sort.next();
                        state.sort_rows();
                    }
                    KeyCode::Char('p' | ' ') => state.paused = !state.paused,
                    KeyCode::Char('h' | '?') => state.help = !state.help,
                    _ => {}
                },
                // The next draw takes the new size.
                Some(Input::Resize) => {}
                None => break Ok(()),
            },
            _ = signals.recv() => break Ok(()),
        }
    };
    stop.store(true, Ordering::Release);
    result
}
