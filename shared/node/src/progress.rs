//! Progress on the terminal for long work (the initial snapshot, a catch-up, a USB import): one
//! line on standard error, redrawn in place at most [`REDRAWS_PER_S_MAX`] times a second, and
//! only when standard error is a terminal. Anywhere else (a log file, a pipe, CI) it prints
//! nothing at all, so logs stay clean.
//!
//! Updates only store numbers; a small thread draws them every [`REDRAW_INTERVAL_MS`], so the
//! line keeps moving (elapsed time) during one long statement, a caller in async code never
//! waits on the terminal, and the rate limit holds however often the caller updates. Work that
//! ends within the first interval draws nothing. The line is cleared when the work ends (the
//! caller prints its own summary), and drawn as `clear, text, carriage return` so that a log
//! line written meanwhile overwrites it from the start instead of being appended to it.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const REDRAWS_PER_S_MAX: u64 = 4;
pub const REDRAW_INTERVAL_MS: u64 = 1_000 / REDRAWS_PER_S_MAX;
/// Longest line drawn when the terminal's width is unknown (`COLUMNS` unset).
const LINE_CHARS_DEFAULT: usize = 100;
/// Characters of the progress bar itself.
const BAR_CHARS: usize = 20;

#[derive(Debug, Clone, Default, PartialEq)]
struct State {
    label: String,
    unit: String,
    done: u64,
    total: Option<u64>,
    detail: String,
}

struct Shared {
    state: Mutex<State>,
    stop: AtomicBool,
}

/// One unit of long work shown on the terminal. Dropping it clears the line.
pub struct Progress {
    shared: Arc<Shared>,
    drawer: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    /// `label` names the work ("snapshot"), `unit` what is counted ("tables"); `total` when known.
    /// Draws only when standard error is a terminal (and `TERM` is not `dumb`).
    pub fn new(label: &str, unit: &str, total: Option<u64>) -> Progress {
        let visible = std::io::stderr().is_terminal() && std::env::var("TERM").map_or(true, |t| t != "dumb");
        Progress::with_visibility(label, unit, total, visible)
    }

    /// Never draws (tests, or a caller with its own output on the terminal).
    pub fn hidden(label: &str, unit: &str, total: Option<u64>) -> Progress {
        Progress::with_visibility(label, unit, total, false)
    }

    fn with_visibility(label: &str, unit: &str, total: Option<u64>, visible: bool) -> Progress {
        let state = State { label: label.to_owned(), unit: unit.to_owned(), total, ..State::default() };
        let shared = Arc::new(Shared { state: Mutex::new(state), stop: AtomicBool::new(false) });
        let drawer = visible.then(|| {
            let shared = shared.clone();
            std::thread::Builder::new().name("feedsync-progress".into()).spawn(move || draw_until_stopped(&shared)).ok()
        });
        Progress { shared, drawer: drawer.flatten() }
    }

    /// Whether anything is drawn (callers can skip work done only for the display).
    pub fn is_visible(&self) -> bool {
        self.drawer.is_some()
    }

    /// How far the work is, and a few words on what it is doing now.
    pub fn update(&self, done: u64, detail: impl Into<String>) {
        let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        state.done = done;
        state.detail = detail.into();
    }

    /// A new stage of the same work: new label, unit and total, counting from zero.
    pub fn stage(&self, label: &str, unit: &str, total: Option<u64>) {
        let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        *state = State { label: label.to_owned(), unit: unit.to_owned(), total, ..State::default() };
    }

    pub fn set_total(&self, total: Option<u64>) {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner()).total = total;
    }

    /// Ends the display (the same as dropping it).
    pub fn finish(self) {}
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(drawer) = self.drawer.take() {
            drawer.thread().unpark();
            let _ = drawer.join();
        }
    }
}

fn draw_until_stopped(shared: &Shared) {
    let started = Instant::now();
    let interval = Duration::from_millis(REDRAW_INTERVAL_MS);
    let mut last_drawn: Option<Instant> = None;
    let width = std::env::var("COLUMNS").ok().and_then(|c| c.parse::<usize>().ok()).filter(|w| *w > 20).map_or(LINE_CHARS_DEFAULT, |w| w - 1);
    loop {
        std::thread::park_timeout(interval);
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        // Parking can wake early: the interval is measured, not assumed.
        let now = Instant::now();
        if now - started < interval || last_drawn.is_some_and(|last| now - last < interval) {
            continue;
        }
        let state = shared.state.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let line = render(&state.label, &state.unit, state.done, state.total, &state.detail, now - started, width);
        let mut stderr = std::io::stderr().lock();
        let _ = write!(stderr, "\x1b[2K{line}\r");
        let _ = stderr.flush();
        last_drawn = Some(now);
    }
    if last_drawn.is_some() {
        let mut stderr = std::io::stderr().lock();
        let _ = write!(stderr, "\x1b[2K\r");
        let _ = stderr.flush();
    }
}

/// The line drawn: `label [#####.....]  45% 12/27 unit · detail · 0:12`, or without a total
/// `label 1,234 unit (56/s) · detail · 0:12`; cut to `width` characters. Pure.
pub fn render(label: &str, unit: &str, done: u64, total: Option<u64>, detail: &str, elapsed: Duration, width: usize) -> String {
    let mut line = match total {
        Some(total) if total > 0 => {
            let fraction = (done.min(total) as f64 / total as f64).clamp(0.0, 1.0);
            let filled = (fraction * BAR_CHARS as f64).round() as usize;
            format!(
                "{label} [{}{}] {:>3}% {}/{} {unit}",
                "#".repeat(filled),
                ".".repeat(BAR_CHARS - filled),
                (fraction * 100.0).floor() as u64,
                thousands(done),
                thousands(total)
            )
        }
        _ => {
            let seconds = elapsed.as_secs_f64();
            let rate = if seconds >= 1.0 && done > 0 { format!(" ({}/s)", thousands((done as f64 / seconds).round() as u64)) } else { String::new() };
            format!("{label} {} {unit}{rate}", thousands(done))
        }
    };
    if !detail.is_empty() {
        line.push_str(" · ");
        line.push_str(detail);
    }
    line.push_str(" · ");
    line.push_str(&clock(elapsed));
    if line.chars().count() > width {
        line = line.chars().take(width.saturating_sub(1)).collect::<String>() + "…";
    }
    line
}

/// `12`, `1,234`, `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `0:07`, `12:03`, `1:02:03`.
pub fn clock(elapsed: Duration) -> String {
    let s = elapsed.as_secs();
    let (h, m, s) = (s / 3600, (s % 3600) / 60, s % 60);
    if h > 0 { format!("{h}:{m:02}:{s:02}") } else { format!("{m}:{s:02}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_say_how_far_and_fit_the_width() {
        let line = render("snapshot", "tables", 12, Some(24), "obs", Duration::from_secs(75), 100);
        assert_eq!(line, "snapshot [##########..........]  50% 12/24 tables · obs · 1:15");
        let line = render("catch-up", "entries", 123_456, None, "3 queued", Duration::from_secs(10), 100);
        assert_eq!(line, "catch-up 123,456 entries (12,346/s) · 3 queued · 0:10");
        assert_eq!(render("x", "u", 5, Some(3), "", Duration::ZERO, 100), "x [####################] 100% 5/3 u · 0:00");
        let long = render("snapshot", "tables", 1, Some(2), &"t".repeat(300), Duration::from_secs(3700), 60);
        assert_eq!(long.chars().count(), 60);
        assert!(long.ends_with('…'));
        assert_eq!(clock(Duration::from_secs(3723)), "1:02:03");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(999), "999");
    }

    #[test]
    fn hidden_progress_draws_nothing_and_takes_updates() {
        let p = Progress::hidden("snapshot", "tables", Some(3));
        assert!(!p.is_visible());
        p.update(1, "person");
        p.stage("pull", "events", None);
        p.set_total(Some(9));
        p.finish();
    }
}
