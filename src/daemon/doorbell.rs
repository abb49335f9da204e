//! Wakes the send loop when root's side rings the doorbell (`store::doorbell`): a message
//! was queued. Only the kind of an inotify event is looked at, never the file's content,
//! so nothing in the file can be used against the daemon; a flood of rings costs one
//! empty queue read each. When the file cannot be watched (an older state folder whose
//! mount has not started since) the daemon says so and relies on its poll, trying the
//! watch again now and then.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch, Notify};
use tracing::{debug, info};

/// How long after a failed or lost watch it is tried again.
const REARM_AFTER: Duration = Duration::from_secs(10);

/// What a watch event means for the send loop.
#[derive(Debug, PartialEq, Eq)]
enum Meaning {
    /// A ring: someone opened the file for writing and closed it.
    Ring,
    /// The watched file is gone or replaced: the watch must be made again.
    Rearm,
    /// Anything else (a read, a metadata change).
    Nothing,
}

fn meaning(event: &notify::Result<notify::Event>) -> Meaning {
    use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
    match event {
        Ok(e) if e.need_rescan() => Meaning::Rearm,
        Ok(e) => match e.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => Meaning::Ring,
            EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_)) => Meaning::Rearm,
            _ => Meaning::Nothing,
        },
        Err(_) => Meaning::Rearm,
    }
}

/// Rings `bell` for every ring of the doorbell at `path`, until `stop`.
pub async fn listen(path: PathBuf, bell: Arc<Notify>, mut stop: watch::Receiver<bool>) {
    let mut told = false;
    loop {
        let (rearm_tx, mut rearm_rx) = mpsc::unbounded_channel();
        let ringer = bell.clone();
        let watcher = notify::recommended_watcher(move |event| match meaning(&event) {
            Meaning::Ring => ringer.notify_one(),
            Meaning::Rearm => {
                // Whatever happened meanwhile, the queue is read once more.
                ringer.notify_one();
                let _ = rearm_tx.send(());
            }
            Meaning::Nothing => {}
        })
        .and_then(|mut w| w.watch(&path, RecursiveMode::NonRecursive).map(|()| w));
        let pause = match watcher {
            Ok(w) => {
                info!(file = %path.display(), "doorbell armed: queued messages are sent at once");
                told = false;
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = rearm_rx.recv() => {}
                }
                drop(w);
                debug!("the doorbell was replaced or its watch lost; watching it again");
                // A file being replaced: let the new one appear.
                Duration::from_millis(100)
            }
            Err(e) => {
                if !told {
                    info!(file = %path.display(), error = %e, "cannot watch the doorbell; the send queue is polled instead (serve.queue_poll_secs) until it can be watched");
                    told = true;
                }
                REARM_AFTER
            }
        };
        tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RemoveKind};

    fn event(kind: EventKind) -> notify::Result<notify::Event> {
        Ok(notify::Event::new(kind))
    }

    #[test]
    fn only_a_close_after_writing_is_a_ring() {
        assert_eq!(
            meaning(&event(EventKind::Access(AccessKind::Close(
                AccessMode::Write
            )))),
            Meaning::Ring
        );
        assert_eq!(
            meaning(&event(EventKind::Access(AccessKind::Close(
                AccessMode::Read
            )))),
            Meaning::Nothing
        );
        assert_eq!(
            meaning(&event(EventKind::Access(AccessKind::Open(AccessMode::Any)))),
            Meaning::Nothing
        );
        assert_eq!(
            meaning(&event(EventKind::Modify(ModifyKind::Any))),
            Meaning::Nothing
        );
    }

    #[test]
    fn a_removed_file_or_a_failed_watch_is_watched_again() {
        assert_eq!(
            meaning(&event(EventKind::Remove(RemoveKind::File))),
            Meaning::Rearm
        );
        assert_eq!(
            meaning(&Err(notify::Error::generic("queue overflow"))),
            Meaning::Rearm
        );
    }

    #[tokio::test]
    async fn opening_the_file_for_writing_and_closing_it_wakes_the_listener() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("doorbell");
        std::fs::write(&path, b"").unwrap();
        let bell = Arc::new(Notify::new());
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(listen(path.clone(), bell.clone(), stop_rx));
        // Until the watch is armed a ring may be lost (the poll covers that in the daemon):
        // ring until one is heard.
        let heard = async {
            loop {
                drop(std::fs::OpenOptions::new().write(true).open(&path).unwrap());
                if tokio::time::timeout(Duration::from_millis(200), bell.notified())
                    .await
                    .is_ok()
                {
                    break;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), heard)
            .await
            .expect("a ring wakes the listener");
        stop_tx.send(true).unwrap();
        task.await.unwrap();
    }
}
