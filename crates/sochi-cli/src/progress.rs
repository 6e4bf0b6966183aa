//! Progress bars for long work, shown only when stderr is a terminal.

use std::collections::HashMap;
use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use parking_lot::Mutex;
use sochi_build::{BuildEvent, LayerOutcome};
use sochi_format::Digest;

/// One bar per layer being indexed.
pub struct LayerBars {
    multi: MultiProgress,
    bars: Mutex<HashMap<Digest, ProgressBar>>,
}

impl LayerBars {
    /// Bars drawn to stderr if it is a terminal, else hidden.
    pub fn new() -> LayerBars {
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        LayerBars {
            multi: MultiProgress::with_draw_target(target),
            bars: Mutex::new(HashMap::new()),
        }
    }

    /// Feeds one build event.
    pub fn on_event(&self, event: BuildEvent<'_>) {
        match event {
            BuildEvent::LayerStarted { layer } => {
                let bar = self
                    .multi
                    .add(ProgressBar::new(u64::try_from(layer.size).unwrap_or(0)));
                if let Ok(style) = ProgressStyle::with_template(
                    "{msg:20} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
                ) {
                    bar.set_style(style.progress_chars("=> "));
                }
                bar.set_message(short(&layer.digest));
                self.bars.lock().insert(layer.digest.clone(), bar);
            }
            BuildEvent::LayerProgress { layer, read } => {
                if let Some(bar) = self.bars.lock().get(&layer.digest) {
                    bar.set_position(read);
                }
            }
            BuildEvent::LayerDone { layer, outcome } => {
                if let Some(bar) = self.bars.lock().remove(&layer.digest) {
                    let what = match outcome {
                        LayerOutcome::Built { .. } => "indexed",
                        LayerOutcome::Reused { .. } => "reused",
                        LayerOutcome::Skipped { .. } => "skipped",
                    };
                    bar.finish_with_message(format!("{} {what}", short(&layer.digest)));
                }
            }
        }
    }
}

fn short(digest: &str) -> String {
    digest.chars().take(19).collect()
}
