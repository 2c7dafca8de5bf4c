//! When to collect, with containerd's rules: a first collection `startup_delay` after start;
//! then a collection at the next tick (every `interval`, which `pause_threshold` stretches so
//! that collections' pauses, their mark and sweep of the metadata store, take at most that
//! share of the time) once anything was deleted or
//! `mutation_threshold` changes were made; `deletion_threshold` deletions, or an explicit
//! request, schedule one `schedule_delay` from now. Beyond containerd: the earliest expiry of a
//! lease or ingest schedules one too, so an idle daemon cleans up.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot};
use tokio::time::sleep_until;

use crate::collector::{Collector, GcError, Stats};
use crate::GcConfig;

/// Collections are never assumed to take less than this when spacing them.
const MINIMUM_GC_TIME: Duration = Duration::from_millis(5);

#[derive(Debug)]
struct Event {
    at: Instant,
    /// A metadata change (else an explicit request).
    mutation: bool,
    dirty: bool,
    expires_at: Option<u64>,
}

/// Callers waiting for the next collection to start and finish; `None` once the loop ended.
type Waiters = Arc<Mutex<Option<Vec<oneshot::Sender<Result<Stats, String>>>>>>;

/// The running scheduler: the handle services use to ask for a collection.
pub struct Scheduler {
    events: mpsc::UnboundedSender<Event>,
    waiters: Waiters,
}

impl Scheduler {
    /// Starts the loop; it ends when `stop` fires.
    pub fn start(
        collector: Collector,
        config: &GcConfig,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Arc<Scheduler> {
        let (tx, rx) = mpsc::unbounded_channel();
        let hook_tx = tx.clone();
        collector.metadata().on_mutation(move |m| {
            let _ = hook_tx.send(Event {
                at: Instant::now(),
                mutation: true,
                dirty: m.dirty,
                expires_at: m.expires_at,
            });
        });
        let waiters: Waiters = Arc::new(Mutex::new(Some(Vec::new())));
        let state = Loop {
            collector,
            waiters: waiters.clone(),
            pause_threshold: config.pause_threshold.clamp(0.0, 0.5),
            deletion_threshold: config.deletion_threshold,
            mutation_threshold: config.mutation_threshold.max(0),
            schedule_delay: config.schedule_delay.0,
            startup_delay: config.startup_delay.0,
        };
        tokio::spawn(state.run(rx, stop));
        Arc::new(Scheduler {
            events: tx,
            waiters,
        })
    }

    /// Asks for a collection soon (after `schedule_delay`) and waits for its result.
    pub async fn schedule_and_wait(&self) -> Result<Stats, GcError> {
        let (tx, rx) = oneshot::channel();
        match self
            .waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            Some(waiting) => waiting.push(tx),
            None => return Err(GcError::Stopped),
        }
        let _ = self.events.send(Event {
            at: Instant::now(),
            mutation: false,
            dirty: false,
            expires_at: None,
        });
        match rx.await {
            Ok(Ok(stats)) => Ok(stats),
            Ok(Err(message)) => Err(GcError::Task(message)),
            Err(_) => Err(GcError::Stopped),
        }
    }
}

struct Loop {
    collector: Collector,
    waiters: Waiters,
    pause_threshold: f64,
    deletion_threshold: i64,
    mutation_threshold: i64,
    schedule_delay: Duration,
    startup_delay: Duration,
}

/// The instant a wall-clock expiry (ns since the epoch) falls due.
fn due(expires_at: u64) -> Instant {
    let at = SystemTime::UNIX_EPOCH + Duration::from_nanos(expires_at);
    let wait = at
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    // Expiry times are compared with `<=`: wake just after.
    Instant::now() + wait + Duration::from_millis(1)
}

impl Loop {
    async fn run(
        self,
        events: mpsc::UnboundedReceiver<Event>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) {
        self.schedule(events, stop).await;
        // Waiters still queued are told the collection they wait for will not come.
        self.waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }

    async fn schedule(
        &self,
        mut events: mpsc::UnboundedReceiver<Event>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut next: Option<Instant> =
            (!self.startup_delay.is_zero()).then(|| Instant::now() + self.startup_delay);
        let mut last: Option<Instant> = None;
        let mut expiry: Option<Instant> = None;
        let mut interval = Duration::from_secs(1);
        let (mut gc_time_sum, mut collections) = (Duration::ZERO, 0u32);
        let (mut triggered, mut deletions, mut mutations) = (false, 0i64, 0i64);
        loop {
            tokio::select! {
                _ = async { sleep_until(next.unwrap_or_else(Instant::now).into()).await }, if next.is_some() => {
                    let idle = !triggered
                        && last.is_some()
                        && deletions == 0
                        && (self.mutation_threshold == 0 || mutations < self.mutation_threshold);
                    if idle {
                        next = Some(Instant::now() + interval);
                        continue;
                    }
                }
                _ = async { sleep_until(expiry.unwrap_or_else(Instant::now).into()).await }, if expiry.is_some() => {
                    expiry = None;
                    triggered = true;
                    self.soon(&mut next);
                    continue;
                }
                event = events.recv() => {
                    let Some(e) = event else { return };
                    if let Some(at) = e.expires_at.map(due) {
                        expiry = Some(expiry.map_or(at, |x| x.min(at)));
                    }
                    if last.is_some_and(|l| l > e.at) {
                        continue; // a collection already ran after it
                    }
                    if e.dirty {
                        deletions += 1;
                    }
                    if e.mutation {
                        mutations += 1;
                    } else {
                        triggered = true;
                    }
                    let by_deletions = self.deletion_threshold > 0 && deletions >= self.deletion_threshold;
                    let unscheduled = next.is_none()
                        && ((self.deletion_threshold == 0 && deletions > 0)
                            || (self.mutation_threshold > 0 && mutations >= self.mutation_threshold));
                    if triggered || by_deletions || unscheduled {
                        self.soon(&mut next);
                    }
                    continue;
                }
                _ = stop.changed() => return,
            }

            // Answered by this collection: those who asked before it started. A request made
            // while it runs waits for the next one (its event, later than `started`, schedules
            // that).
            let waiters = self
                .waiters
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_mut()
                .map(std::mem::take)
                .unwrap_or_default();
            let started = Instant::now();
            let result = self.collector.collect().await;
            let finished = Instant::now();
            match result {
                Ok(stats) => {
                    tracing::debug!(pause = ?stats.pause, elapsed = ?stats.elapsed, lock_held = ?stats.lock_held, removed = stats.removed.len(), "garbage collected");
                    gc_time_sum += stats.pause;
                    collections += 1;
                    (triggered, deletions, mutations) = (false, 0, 0);
                    if self.pause_threshold > 0.0 {
                        let avg = (gc_time_sum / collections)
                            .max(MINIMUM_GC_TIME)
                            .as_secs_f64();
                        interval = Duration::from_secs_f64(avg / self.pause_threshold - avg);
                    }
                    expiry = stats.next_expiry.map(due);
                    next = Some(finished + interval);
                    for w in waiters {
                        let _ = w.send(Ok(stats.clone()));
                    }
                }
                Err(e) => {
                    tracing::error!("garbage collection failed: {e}");
                    let retry = match (last, next) {
                        (Some(l), Some(n)) => {
                            n.saturating_duration_since(l) + Duration::from_secs(1)
                        }
                        _ => self.schedule_delay,
                    };
                    next = Some(finished + retry);
                    for w in waiters {
                        let _ = w.send(Err(e.to_string()));
                    }
                }
            }
            last = Some(started);
        }
    }

    /// Moves the next collection to `schedule_delay` from now, unless it is sooner already.
    fn soon(&self, next: &mut Option<Instant>) {
        let at = Instant::now() + self.schedule_delay;
        if next.is_none_or(|n| n > at) {
            *next = Some(at);
        }
    }
}
