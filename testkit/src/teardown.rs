//! Teardown on interrupt. Drop cleans up after a test that ends or panics,
//! but Ctrl-C (SIGINT), SIGTERM or SIGHUP end the process without running
//! any destructor, and the children of a [`Guard`](crate::process::Guard)
//! live in their own process groups, so the terminal's Ctrl-C does not
//! reach them either: QEMU, dnsmasq or moto would outlive the test run.
//!
//! Everything that must not outlive the process registers an action here
//! (and drops the [`Registration`] when it cleaned up by itself). The first
//! registration starts a thread that waits for those signals, runs every
//! pending action, newest first (VMs before the network they sit on), and
//! exits with 128 + the signal number, as the shell would.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};

type Action = Box<dyn FnOnce() + Send>;

static ACTIONS: Mutex<BTreeMap<u64, (String, Action)>> = Mutex::new(BTreeMap::new());
static NEXT: AtomicU64 = AtomicU64::new(0);
static INSTALL: Once = Once::new();

/// An action pending until this is dropped.
#[must_use = "the action is forgotten when the registration is dropped"]
pub struct Registration(u64);

impl Drop for Registration {
    fn drop(&mut self) {
        lock().remove(&self.0);
    }
}

fn lock() -> std::sync::MutexGuard<'static, BTreeMap<u64, (String, Action)>> {
    // An action that panicked poisons nothing we rely on: the map is
    // consistent after every operation.
    ACTIONS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `action` if the process is interrupted before the registration
/// is dropped. `what` names it in the message printed when it runs.
pub fn on_interrupt(what: &str, action: impl FnOnce() + Send + 'static) -> Registration {
    INSTALL.call_once(|| {
        // If the watcher cannot start, Drop still cleans up on every path
        // but a signal; say so instead of failing the test.
        if let Err(e) = std::thread::Builder::new().name("keel-teardown".into()).spawn(watch) {
            say(format_args!("keel teardown: cannot watch for interrupts ({e}); Ctrl-C may leave processes behind"));
        }
    });
    let id = NEXT.fetch_add(1, Ordering::SeqCst);
    lock().insert(id, (what.to_string(), Box::new(action)));
    Registration(id)
}

/// Runs every pending action now, newest first.
pub fn run_all() {
    let pending = std::mem::take(&mut *lock());
    for (_, (what, action)) in pending.into_iter().rev() {
        say(format_args!("keel teardown: {what}"));
        action();
    }
}

/// Writes one line to stderr, ignoring failure: the reader may be gone
/// (a closed pipe), and a panic here would skip the teardown.
fn say(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{args}");
}

fn watch() {
    use tokio::signal::unix::{signal, SignalKind};
    let waited =
        tokio::runtime::Builder::new_current_thread().enable_all().build().and_then(|rt| {
            rt.block_on(async {
                let mut int = signal(SignalKind::interrupt())?;
                let mut term = signal(SignalKind::terminate())?;
                let mut hup = signal(SignalKind::hangup())?;
                Ok(tokio::select! {
                    _ = int.recv() => rustix::process::Signal::INT.as_raw(),
                    _ = term.recv() => rustix::process::Signal::TERM.as_raw(),
                    _ = hup.recv() => rustix::process::Signal::HUP.as_raw(),
                })
            })
        });
    let signo = match waited {
        Ok(no) => no,
        Err(e) => {
            say(format_args!("keel teardown: cannot watch for interrupts ({e}); Ctrl-C may leave processes behind"));
            return;
        }
    };
    say(format_args!("keel teardown: signal {signo}: stopping everything this test run started"));
    run_all();
    std::process::exit(128 + signo);
}
