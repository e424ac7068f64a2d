//! Panics while fuzzing: caught per execution, silent on the fuzzing thread, located.
//!
//! In: panics raised by the relay's code (or the generators) on the thread that installed
//! [`QuietPanics`]. Out: their message ([`panic_message`]) and location ([`QuietPanics::last_location`]).
//! Stays true: panics on other threads (e.g. tests running in parallel) still reach the previous
//! hook, and the previous hook is put back when the guard is dropped.

use std::panic::PanicHookInfo;
use std::sync::{Arc, Mutex, PoisonError};

pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(a panic without a message)".into())
}

type PanicHook = Box<dyn Fn(&PanicHookInfo<'_>) + Sync + Send + 'static>;

/// While alive: panics on the installing thread are not printed, only their location kept;
/// panics elsewhere go to the previous hook, which is put back on drop.
pub struct QuietPanics {
    location: Arc<Mutex<String>>,
    previous: Option<Arc<PanicHook>>,
}

impl QuietPanics {
    pub fn install() -> QuietPanics {
        let previous: Arc<PanicHook> = Arc::new(std::panic::take_hook());
        let location = Arc::new(Mutex::new(String::new()));
        let (keep, fallback) = (location.clone(), previous.clone());
        let fuzzing = std::thread::current().id();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().id() == fuzzing {
                *keep.lock().unwrap_or_else(PoisonError::into_inner) =
                    info.location().map(|l| l.to_string()).unwrap_or_default();
            } else {
                fallback(info);
            }
        }));
        QuietPanics {
            location,
            previous: Some(previous),
        }
    }

    /// For a replay: the hook is left alone, so the panic prints as usual.
    pub fn recording_only() -> QuietPanics {
        QuietPanics {
            location: Arc::new(Mutex::new("(printed above by the panic hook)".into())),
            previous: None,
        }
    }

    pub fn last_location(&self) -> String {
        self.location
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for QuietPanics {
    fn drop(&mut self) {
        if let Some(previous) = self.previous.take() {
            std::panic::set_hook(Box::new(move |info| previous(info)));
        }
    }
}
