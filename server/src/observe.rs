//! What the server observes of the commands it runs: per-command calls and
//! time (INFO commandstats), error codes (INFO errorstats), the slow log
//! (SLOWLOG) and the latency monitor (LATENCY).
//!
//! Every command is timed (one clock read each: the time since the one
//! before it) and counted. The counters are per thread, each thread adding
//! to its own cache lines, and summed when INFO asks: one counter shared by
//! every worker, bumped by each command, would bounce its line between the
//! cores at every call. The slow log and the latency monitor are locked only
//! for a command slower than their thresholds.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tidepool_protocol::table::{self, CommandSpec};

/// Counters one thread adds to.
struct ThreadCounters {
    /// Per command (rows of the table): calls, microseconds, calls that
    /// answered an error, calls refused before they ran.
    calls: Box<[AtomicU64]>,
    usec: Box<[AtomicU64]>,
    failed: Box<[AtomicU64]>,
    rejected: Box<[AtomicU64]>,
    /// Error replies by code.
    errors: Mutex<HashMap<&'static str, u64>>,
}

impl ThreadCounters {
    fn new() -> ThreadCounters {
        let n = table::COMMANDS.len();
        let zeroes = || (0..n).map(|_| AtomicU64::new(0)).collect();
        ThreadCounters {
            calls: zeroes(),
            usec: zeroes(),
            failed: zeroes(),
            rejected: zeroes(),
            errors: Mutex::new(HashMap::new()),
        }
    }
}

thread_local! {
    /// This thread's counters, for the `Observed` of the given id.
    static LOCAL: std::cell::RefCell<Option<(u64, Arc<ThreadCounters>)>> =
        const { std::cell::RefCell::new(None) };
}

/// Tells apart the `Observed` of several servers in one process (tests).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It ran and answered.
    Ok,
    /// It ran and answered this error code.
    Failed(&'static str),
    /// It was refused before running (unknown, arity, a bad argument).
    Rejected(&'static str),
}

/// One slow log entry.
#[derive(Debug, Clone)]
pub struct SlowEntry {
    /// Its id, growing from 0.
    pub id: u64,
    /// Unix time it ran, in seconds.
    pub at: u64,
    /// How long it took, in microseconds.
    pub micros: u64,
    /// Its arguments (at most 32, each at most 128 bytes, as Redis keeps).
    pub args: Vec<Bytes>,
    /// The client's address.
    pub addr: String,
    /// The client's name.
    pub name: String,
}

/// A latency monitor event class's samples.
#[derive(Debug, Clone, Default)]
pub struct LatencyEvent {
    /// (Unix seconds, milliseconds), the newest last, at most 160, one a second.
    pub samples: VecDeque<(u64, u64)>,
    /// The highest latency seen.
    pub max: u64,
}

/// Most samples an event keeps, as Redis.
const LATENCY_SAMPLES: usize = 160;

/// What the server observes (one per server).
pub struct Observed {
    id: u64,
    threads: Mutex<Vec<Arc<ThreadCounters>>>,
    /// `slowlog-log-slower-than`, microseconds; negative: off.
    pub slower_than_us: AtomicI64,
    /// `slowlog-max-len`.
    pub slowlog_max_len: AtomicU64,
    /// `latency-monitor-threshold`, milliseconds; 0: off.
    pub latency_threshold_ms: AtomicU64,
    slowlog: Mutex<(u64, VecDeque<SlowEntry>)>,
    latency: Mutex<HashMap<&'static str, LatencyEvent>>,
    /// The totals at the last CONFIG RESETSTAT, subtracted from what is
    /// reported (the counters themselves are only ever written by their
    /// own thread).
    base: Mutex<Totals>,
}

/// Per command (calls, usec, rejected, failed), and errors by code.
#[derive(Default, Clone)]
struct Totals {
    commands: Vec<[u64; 4]>,
    errors: HashMap<&'static str, u64>,
}

impl Default for Observed {
    fn default() -> Self {
        Observed {
            id: NEXT_ID.fetch_add(1, Relaxed),
            threads: Mutex::new(Vec::new()),
            slower_than_us: AtomicI64::new(10_000),
            slowlog_max_len: AtomicU64::new(128),
            latency_threshold_ms: AtomicU64::new(0),
            slowlog: Mutex::new((0, VecDeque::new())),
            latency: Mutex::new(HashMap::new()),
            base: Mutex::new(Totals::default()),
        }
    }
}

impl Observed {
    fn local<R>(&self, f: impl FnOnce(&ThreadCounters) -> R) -> R {
        LOCAL.with(|l| {
            let mut l = l.borrow_mut();
            match &*l {
                Some((id, c)) if *id == self.id => f(c),
                _ => {
                    let c = Arc::new(ThreadCounters::new());
                    self.threads.lock().push(c.clone());
                    *l = Some((self.id, c.clone()));
                    f(&c)
                }
            }
        })
    }

    /// Counts one command of row `spec` that took `micros` and ended so.
    pub fn record(&self, spec: Option<&'static CommandSpec>, micros: u64, outcome: Outcome) {
        // Only this thread writes its counters: a load and a store, without
        // the locked read-modify-write of fetch_add (readers see each
        // counter whole, a moment late at most).
        let bump = |a: &AtomicU64, by: u64| a.store(a.load(Relaxed) + by, Relaxed);
        self.local(|c| {
            if let Some(spec) = spec {
                let i = table::index_of(spec);
                match outcome {
                    Outcome::Rejected(_) => bump(&c.rejected[i], 1),
                    _ => {
                        bump(&c.calls[i], 1);
                        bump(&c.usec[i], micros);
                        if let Outcome::Failed(_) = outcome {
                            bump(&c.failed[i], 1);
                        }
                    }
                }
            }
            if let Outcome::Failed(code) | Outcome::Rejected(code) = outcome {
                *c.errors.lock().entry(code).or_insert(0) += 1;
            }
        });
    }

    /// Whether a command of `micros` goes to the slow log or the latency
    /// monitor (cheap: two loads).
    pub fn is_slow(&self, micros: u64) -> bool {
        let slow = self.slower_than_us.load(Relaxed);
        let lat = self.latency_threshold_ms.load(Relaxed);
        (slow >= 0 && micros >= slow as u64) || (lat > 0 && micros >= lat * 1000)
    }

    /// Logs a command of `micros` that [`Observed::is_slow`] picked.
    pub fn slow(&self, micros: u64, args: impl FnOnce() -> Vec<Bytes>, addr: &str, name: &str) {
        let now = unix_secs();
        let slow = self.slower_than_us.load(Relaxed);
        if slow >= 0 && micros >= slow as u64 {
            let max = self.slowlog_max_len.load(Relaxed) as usize;
            let mut log = self.slowlog.lock();
            let id = log.0;
            log.0 += 1;
            log.1.push_front(SlowEntry {
                id,
                at: now,
                micros,
                args: args(),
                addr: addr.to_string(),
                name: name.to_string(),
            });
            log.1.truncate(max);
        }
        let lat = self.latency_threshold_ms.load(Relaxed);
        if lat > 0 && micros >= lat * 1000 {
            let ms = micros / 1000;
            let mut events = self.latency.lock();
            let e = events.entry("command").or_default();
            e.max = e.max.max(ms);
            // One sample a second: the highest of that second.
            match e.samples.back_mut() {
                Some((t, v)) if *t == now => *v = (*v).max(ms),
                _ => {
                    e.samples.push_back((now, ms));
                    if e.samples.len() > LATENCY_SAMPLES {
                        e.samples.pop_front();
                    }
                }
            }
        }
    }

    /// SLOWLOG GET: the newest `count` entries (all for `None`).
    pub fn slowlog_get(&self, count: Option<usize>) -> Vec<SlowEntry> {
        let log = self.slowlog.lock();
        log.1
            .iter()
            .take(count.unwrap_or(usize::MAX))
            .cloned()
            .collect()
    }

    /// SLOWLOG LEN.
    pub fn slowlog_len(&self) -> usize {
        self.slowlog.lock().1.len()
    }

    /// SLOWLOG RESET.
    pub fn slowlog_reset(&self) {
        self.slowlog.lock().1.clear();
    }

    /// The latency monitor's events, by name.
    pub fn latency_events(&self) -> Vec<(&'static str, LatencyEvent)> {
        let mut v: Vec<_> = self
            .latency
            .lock()
            .iter()
            .map(|(k, e)| (*k, e.clone()))
            .collect();
        v.sort_by_key(|(k, _)| *k);
        v
    }

    /// LATENCY RESET: forgets the named events (all when none is named);
    /// returns how many there were.
    pub fn latency_reset(&self, names: &[Bytes]) -> usize {
        let mut events = self.latency.lock();
        if names.is_empty() {
            let n = events.len();
            events.clear();
            return n;
        }
        let before = events.len();
        events.retain(|k, _| !names.iter().any(|n| n.eq_ignore_ascii_case(k.as_bytes())));
        before - events.len()
    }

    /// Everything counted so far, summed over the threads.
    fn totals(&self) -> Totals {
        let threads = self.threads.lock();
        let mut t = Totals {
            commands: vec![[0; 4]; table::COMMANDS.len()],
            errors: HashMap::new(),
        };
        for c in threads.iter() {
            for (i, row) in t.commands.iter_mut().enumerate() {
                row[0] += c.calls[i].load(Relaxed);
                row[1] += c.usec[i].load(Relaxed);
                row[2] += c.rejected[i].load(Relaxed);
                row[3] += c.failed[i].load(Relaxed);
            }
            for (k, v) in c.errors.lock().iter() {
                *t.errors.entry(k).or_insert(0) += v;
            }
        }
        t
    }

    /// Per command, since the last reset: (row, calls, usec, rejected,
    /// failed), for the commands called at least once.
    pub fn commandstats(&self) -> Vec<(&'static CommandSpec, u64, u64, u64, u64)> {
        let now = self.totals();
        let base = self.base.lock().clone();
        table::COMMANDS
            .iter()
            .zip(now.commands)
            .enumerate()
            .filter_map(|(i, (spec, row))| {
                let b = base.commands.get(i).copied().unwrap_or_default();
                let d: Vec<u64> = (0..4).map(|j| row[j].saturating_sub(b[j])).collect();
                (d[0] + d[2] > 0).then_some((spec, d[0], d[1], d[2], d[3]))
            })
            .collect()
    }

    /// Error replies by code since the last reset.
    pub fn errorstats(&self) -> Vec<(&'static str, u64)> {
        let now = self.totals();
        let base = self.base.lock();
        let mut v: Vec<_> = now
            .errors
            .into_iter()
            .map(|(k, n)| {
                (
                    k,
                    n.saturating_sub(base.errors.get(k).copied().unwrap_or(0)),
                )
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        v.sort();
        v
    }

    /// CONFIG RESETSTAT: what is reported starts again from zero.
    pub fn reset(&self) {
        let now = self.totals();
        *self.base.lock() = now;
    }
}

/// Seconds since the Unix epoch.
pub fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A slow request's arguments as the slow log keeps them: at most 32 (the
/// last saying how many more there were), each at most 128 bytes (the rest
/// said in bytes), as Redis does.
pub fn slowlog_args<'a>(args: impl ExactSizeIterator<Item = &'a [u8]>) -> Vec<Bytes> {
    const MAX_ARGS: usize = 32;
    const MAX_LEN: usize = 128;
    let total = args.len();
    let mut out = Vec::with_capacity(total.min(MAX_ARGS));
    for (i, a) in args.enumerate() {
        if i == MAX_ARGS - 1 && total > MAX_ARGS {
            out.push(Bytes::from(format!(
                "... ({} more arguments)",
                total - (MAX_ARGS - 1)
            )));
            break;
        }
        if a.len() > MAX_LEN {
            let mut v = a[..MAX_LEN].to_vec();
            v.extend_from_slice(format!("... ({} more bytes)", a.len() - MAX_LEN).as_bytes());
            out.push(Bytes::from(v));
        } else {
            out.push(Bytes::copy_from_slice(a));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_sum_over_threads_and_reset() {
        let o = Arc::new(Observed::default());
        let get = table::lookup(b"get").unwrap();
        std::thread::scope(|s| {
            for _ in 0..4 {
                let o = o.clone();
                s.spawn(move || {
                    for _ in 0..100 {
                        o.record(Some(get), 2, Outcome::Ok);
                    }
                    o.record(Some(get), 1, Outcome::Failed("ERR"));
                    o.record(Some(get), 0, Outcome::Rejected("ERR"));
                });
            }
        });
        let st = o.commandstats();
        assert_eq!(st.len(), 1);
        let (spec, calls, usec, rejected, failed) = st[0];
        assert_eq!(
            (spec.name, calls, usec, rejected, failed),
            ("get", 404, 804, 4, 4)
        );
        assert_eq!(o.errorstats(), [("ERR", 8)]);
        o.reset();
        assert!(o.commandstats().is_empty());
        assert!(o.errorstats().is_empty());
    }

    #[test]
    fn long_arguments_are_cut_as_redis_cuts_them() {
        let long = [b'x'; 200];
        let many: Vec<Vec<u8>> = (0..40).map(|i| format!("a{i}").into_bytes()).collect();
        let got = slowlog_args([&b"SET"[..], &long[..]].into_iter());
        assert_eq!(got[1].len(), 128 + "... (72 more bytes)".len());
        let got = slowlog_args(many.iter().map(|v| &v[..]));
        assert_eq!(got.len(), 32);
        assert_eq!(&got[31][..], b"... (9 more arguments)");
    }

    #[test]
    fn the_slow_log_keeps_the_newest_first_and_is_bounded() {
        let o = Observed::default();
        o.slower_than_us.store(0, Relaxed);
        o.slowlog_max_len.store(3, Relaxed);
        for i in 0..5u64 {
            assert!(o.is_slow(i));
            o.slow(i, || vec![Bytes::from(format!("c{i}"))], "a", "");
        }
        let got = o.slowlog_get(None);
        assert_eq!(got.iter().map(|e| e.id).collect::<Vec<_>>(), [4, 3, 2]);
        assert_eq!(o.slowlog_len(), 3);
        o.slowlog_reset();
        assert_eq!(o.slowlog_len(), 0);
        o.slower_than_us.store(-1, Relaxed);
        assert!(!o.is_slow(u64::MAX / 2));
    }
}
