//! Progress bars for downloads, drawn only when stderr is a terminal.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    multi: Option<MultiProgress>,
}

impl Progress {
    pub fn new(enabled: bool) -> Progress {
        Progress {
            multi: enabled.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
        }
    }

    pub fn bar(&self, name: &str) -> Bar {
        let bar = self.multi.as_ref().map(|m| {
            let style = ProgressStyle::with_template(
                "{prefix:>24} {bar:30} {bytes:>10}/{total_bytes:10} {bytes_per_sec:>12}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            let bar = m.add(ProgressBar::new(0).with_style(style));
            bar.set_prefix(name.to_string());
            bar
        });
        Bar { bar }
    }
}

/// One download's bar (or nothing, off a terminal).
pub struct Bar {
    bar: Option<ProgressBar>,
}

impl Bar {
    pub fn set_length(&self, len: u64) {
        if let Some(b) = &self.bar {
            b.set_length(len);
        }
    }

    pub fn inc(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    /// Back to zero for a new attempt.
    pub fn restart(&self) {
        if let Some(b) = &self.bar {
            b.set_position(0);
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        if let Some(b) = &self.bar {
            b.finish();
        }
    }
}
