//! What the command line prints: JSON for scripts, tables for people, progress on stderr.
//!
//! Everything for stdout goes through [`print`] so that a closed pipe (`chordctl ring show |
//! head -1`) ends the command quietly with exit 0 instead of a panic.

use std::borrow::Cow;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use comfy_table::{presets, Cell, CellAlignment, Color, ContentArrangement, Table};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

use super::Failure;

/// Writes `text` to stdout. A closed pipe becomes [`Failure::BrokenPipe`] (exit 0, no message).
pub(crate) fn print(text: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => Failure::BrokenPipe,
            _ => Failure::Failed(format!("cannot write to stdout: {e}")),
        })
}

/// Prints a JSON value pretty, as the agent sent it; nothing for an empty answer.
pub(crate) fn print_json(value: &Value) -> Result<(), Failure> {
    if value.is_null() {
        return Ok(());
    }
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Failure::Failed(format!("cannot format JSON: {e}")))?;
    print(&format!("{text}\n"))
}

/// Whether stdout gets colors: only on a terminal, and never when `NO_COLOR` is set
/// (to anything but the empty string, as no-color.org asks).
pub fn use_color() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// A borderless table in the style of kubectl, with upper-case headers. Columns listed in
/// `right` (by index) are right-aligned, for numbers.
pub(crate) fn table(headers: &[&str], right: &[usize]) -> Table {
    let mut table = Table::new();
    // Fit a terminal's width by wrapping, unless the terminal reports no usable width (some
    // pseudo-terminals say 0 columns), where wrapping would put one letter on a line.
    let arrangement = match table.width() {
        Some(width) if width >= 40 => ContentArrangement::Dynamic,
        _ => ContentArrangement::Disabled,
    };
    table
        .load_preset(presets::NOTHING)
        .set_content_arrangement(arrangement)
        .set_header(headers.iter().map(|h| Cell::new(h.to_uppercase())));
    for (i, column) in table.column_iter_mut().enumerate() {
        // No margin on the left, two spaces between columns.
        column.set_padding((0, 2));
        if right.contains(&i) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    table
}

/// Renders a table for [`print`]: no trailing blanks, one newline after the last row.
pub(crate) fn render(table: &Table) -> String {
    let mut text = String::new();
    for line in table.lines() {
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

/// The cell for an instance state with `mark` after it (`critical (flapping)`), colored by
/// the state when `color` is on.
pub(crate) fn state_cell(state: &str, mark: &str, color: bool) -> Cell {
    let cell = Cell::new(format!("{state}{mark}"));
    if !color {
        return cell;
    }
    match state {
        "passing" => cell.fg(Color::Green),
        "warning" => cell.fg(Color::Yellow),
        "critical" => cell.fg(Color::Red),
        "maintenance" => cell.fg(Color::Blue),
        _ => cell,
    }
}

/// The first 8 hex digits of a 40-digit identifier: enough to tell nodes apart by eye.
pub(crate) fn short_id(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// A spinner on stderr for an operation of unknown length, e.g. waiting for the ring to
/// settle. Hidden unless stderr is a terminal, so logs and pipes stay clean. Call
/// `finish_and_clear` (or drop it) when done.
pub fn spinner(message: impl Into<Cow<'static, str>>) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner().with_message(message);
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// A spinner for a request that is usually quick but can take long (`ring show` walks the whole
/// ring, one node after another): it appears on stderr only once the request has taken longer
/// than `delay`, so quick answers do not flicker. Hidden unless stderr is a terminal. Call
/// `finish_and_clear` when the answer is in.
pub fn delayed_spinner(message: impl Into<Cow<'static, str>>, delay: Duration) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden())
        .with_style(ProgressStyle::default_spinner())
        .with_message(message);
    let shown = bar.clone();
    // Detached: the thread ends after `delay`, and with the process in any case.
    std::thread::spawn(move || {
        std::thread::sleep(delay);
        if !shown.is_finished() {
            shown.set_draw_target(ProgressDrawTarget::stderr());
            shown.enable_steady_tick(Duration::from_millis(100));
        }
    });
    bar
}

/// A progress bar on stderr for `len` steps (e.g. records handed over). Hidden unless stderr is
/// a terminal.
pub fn progress_bar(len: u64, message: impl Into<Cow<'static, str>>) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({eta})")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    ProgressBar::new(len)
        .with_style(style)
        .with_message(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_have_no_border_and_right_aligned_numbers() {
        let mut t = table(&["service", "instances"], &[1]);
        t.add_row(vec![Cell::new("payments"), Cell::new("12")]);
        t.add_row(vec![Cell::new("db"), Cell::new("3")]);
        let text = render(&t);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].contains("SERVICE") && lines[0].contains("INSTANCES"));
        assert!(
            lines[1].ends_with("12") && lines[2].ends_with(" 3"),
            "{text}"
        );
        assert_eq!(lines[1].len(), lines[2].len(), "{text}");
    }

    #[test]
    fn progress_is_hidden_off_a_terminal() {
        // `cargo test` captures stderr, so it is not a terminal here.
        if !std::io::stderr().is_terminal() {
            assert!(spinner("x").is_hidden());
            assert!(progress_bar(3, "x").is_hidden());
            assert!(delayed_spinner("x", Duration::ZERO).is_hidden());
        }
    }
}
