//! Progress of a foreground agent (`agent join`, and leaving on Ctrl-C or `ring leave`) on a
//! terminal: a spinner while the ring takes the node, then a bar for the records arriving, and
//! a bar for the records handed over when leaving. Log lines go through the same
//! [`MultiProgress`], so that they print above the bars instead of through them.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget};

use super::output;
use crate::agent::progress::{Progress, Step};

/// The agent's progress hook and the [`MultiProgress`] its bars draw in, or `None` when
/// stderr is not a terminal (then nothing is drawn and logs go straight to stderr).
pub(crate) fn for_agent() -> Option<(Progress, MultiProgress)> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let current: Mutex<Option<ProgressBar>> = Mutex::new(None);
    let bars = multi.clone();
    let hook: Progress = Arc::new(move |step| {
        let mut current = match current.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        let replace = |current: &mut Option<ProgressBar>, bar: ProgressBar| {
            if let Some(old) = current.take() {
                old.finish_and_clear();
            }
            *current = Some(bars.add(bar));
        };
        match step {
            Step::Joining { seed } => replace(
                &mut current,
                output::spinner(format!("joining the ring through {seed}")),
            ),
            Step::Receiving { total } if total > 0 => replace(
                &mut current,
                output::progress_bar(total as u64, "taking over records"),
            ),
            Step::HandingOver { total } if total > 0 => replace(
                &mut current,
                output::progress_bar(total as u64, "handing records over"),
            ),
            Step::Received { count } | Step::HandedOver { count } => {
                if let Some(bar) = current.as_ref() {
                    bar.inc(count as u64);
                }
            }
            Step::Joined | Step::Finished | Step::Receiving { .. } | Step::HandingOver { .. } => {
                if let Some(old) = current.take() {
                    old.finish_and_clear();
                }
            }
        }
    });
    Some((hook, multi))
}

/// A `tracing` writer that prints each log line above the progress bars of `multi`.
pub(crate) struct AboveBars(pub MultiProgress);

impl Write for AboveBars {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .suspend(|| std::io::stderr().lock().write_all(buf))
            .map(|()| buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
