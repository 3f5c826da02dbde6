//! Colour on or off (`--no-color`, `NO_COLOR`, not a terminal) and the few styles used.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use owo_colors::OwoColorize;

static COLOR: AtomicBool = AtomicBool::new(false);

/// Decide once whether to colour output; returns the decision.
pub fn init(no_color: bool) -> bool {
    let on = allowed(no_color) && std::io::stdout().is_terminal();
    COLOR.store(on, Ordering::SeqCst);
    on
}

/// Colour is not turned off: no `--no-color`, and `NO_COLOR` unset or empty.
fn allowed(no_color: bool) -> bool {
    !no_color && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Whether logs on stderr (`-v`) may be coloured: colour allowed and stderr a terminal.
pub fn stderr_color(no_color: bool) -> bool {
    allowed(no_color) && std::io::stderr().is_terminal()
}

/// Whether stdout is coloured (decided by [`init`]).
pub fn color() -> bool {
    COLOR.load(Ordering::Relaxed)
}

fn on() -> bool {
    color()
}

/// Green (create).
pub fn green(s: &str) -> String {
    if on() {
        s.green().to_string()
    } else {
        s.to_string()
    }
}
/// Yellow (update).
pub fn yellow(s: &str) -> String {
    if on() {
        s.yellow().to_string()
    } else {
        s.to_string()
    }
}
/// Red (delete, errors).
pub fn red(s: &str) -> String {
    if on() {
        s.red().to_string()
    } else {
        s.to_string()
    }
}
/// Bold.
pub fn bold(s: &str) -> String {
    if on() {
        s.bold().to_string()
    } else {
        s.to_string()
    }
}
/// Dim (hints, unchanged).
pub fn dim(s: &str) -> String {
    if on() {
        s.dimmed().to_string()
    } else {
        s.to_string()
    }
}
