//! The one place that prints. Results go to stdout, progress to stderr.
//! Spinners only on a TTY outside CI and never under `--json`; elsewhere plain lines.

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::fmt::Display;
use std::io::{IsTerminal, Write};
use std::time::Duration;

#[derive(Clone)]
pub struct Ui {
    /// -1 quiet, 0 default, 1+ verbose.
    verbosity: i8,
    json: bool,
    bars: Option<MultiProgress>,
}

impl Ui {
    /// `json`: stdout carries one JSON object; `verbosity`: -1 (`-q`) .. 2 (`-vv`).
    pub fn new(json: bool, verbosity: i8) -> Self {
        let tty = std::io::stderr().is_terminal() && std::env::var_os("CI").is_none();
        let bars = (tty && !json && verbosity >= 0).then(MultiProgress::new);
        Self {
            verbosity,
            json,
            bars,
        }
    }

    /// A Ui that prints nothing (library use and tests).
    pub fn silent() -> Self {
        Self {
            verbosity: -1,
            json: true,
            bars: None,
        }
    }

    pub fn is_json(&self) -> bool {
        self.json
    }

    pub fn is_tty(&self) -> bool {
        self.bars.is_some()
    }

    /// A progress line on stderr (hidden by `-q`).
    pub fn step(&self, msg: impl Display) {
        if self.verbosity >= 0 {
            self.eprint(&msg.to_string());
        }
    }

    /// Detail shown with `-v`.
    pub fn detail(&self, msg: impl Display) {
        if self.verbosity >= 1 {
            self.eprint(&msg.to_string());
        }
    }

    /// Debug detail shown with `-vv` (e.g. the chain of an error's causes).
    pub fn debug(&self, msg: impl Display) {
        if self.verbosity >= 2 {
            self.eprint(&msg.to_string());
        }
    }

    /// A warning: shown even with `-q`.
    pub fn warn(&self, msg: impl Display) {
        self.eprint(&format!("warning: {msg}"));
    }

    /// An error line on stderr, always shown.
    pub fn error(&self, msg: impl Display) {
        self.eprint(&format!("error: {msg}"));
    }

    /// Ask on stderr (no newline) and read one line from stdin, with any bar suspended.
    pub fn prompt(&self, question: impl Display) -> String {
        let ask = || {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "{question}");
            let _ = err.flush();
            drop(err);
            let mut line = String::new();
            let _ = std::io::BufRead::read_line(&mut std::io::stdin().lock(), &mut line);
            line
        };
        match &self.bars {
            Some(bars) => bars.suspend(ask),
            None => ask(),
        }
    }

    fn eprint(&self, line: &str) {
        match &self.bars {
            Some(bars) => bars.suspend(|| eprintln!("{line}")),
            None => {
                let _ = writeln!(std::io::stderr().lock(), "{line}");
            }
        }
    }

    /// A spinner on a TTY; a plain line per message elsewhere.
    pub fn spinner(&self, msg: impl Display) -> Spinner {
        let msg = msg.to_string();
        match &self.bars {
            Some(bars) => {
                let pb = bars.add(ProgressBar::new_spinner());
                pb.set_style(
                    ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                pb.enable_steady_tick(Duration::from_millis(120));
                pb.set_message(msg);
                Spinner {
                    bar: Some(pb),
                    ui: self.clone(),
                }
            }
            None => {
                self.step(&msg);
                Spinner {
                    bar: None,
                    ui: self.clone(),
                }
            }
        }
    }

    /// Human result text on stdout (suppressed under `--json`).
    pub fn result(&self, text: impl Display) {
        if !self.json {
            println!("{text}");
        }
    }

    /// The one JSON result object on stdout (only under `--json`).
    pub fn result_json(&self, value: &impl serde::Serialize) {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(value).unwrap_or_default()
            );
        }
    }
}

/// A running step. Messages update the spinner on a TTY and print as lines elsewhere.
pub struct Spinner {
    bar: Option<ProgressBar>,
    ui: Ui,
}

impl Spinner {
    pub fn set_message(&self, msg: impl Display) {
        match &self.bar {
            Some(pb) => pb.set_message(msg.to_string()),
            None => self.ui.step(msg),
        }
    }

    /// A line that stays in the log above the spinner (events, layer pushes).
    pub fn println(&self, msg: impl Display) {
        self.ui.step(msg);
    }

    pub fn finish(self, msg: impl Display) {
        match &self.bar {
            Some(pb) => {
                pb.finish_and_clear();
                self.ui.step(msg);
            }
            None => self.ui.step(msg),
        }
    }
}
