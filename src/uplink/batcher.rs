//! Groups outbox rows into messages, per device or for the whole gateway, each bounded by
//! readings, bytes and a linger delay. Rows arrive in `seq` order and a group's batches are
//! sealed in that order, so per device the readings leave in order.

use std::sync::Arc;
use std::time::Duration;

use cairn_adapters::Value;
use tokio::time::Instant;

use crate::config::{BatchConfig, Grouping};
use crate::store::Record;

/// Readings that travel in one message.
#[derive(Debug)]
pub struct Batch {
    /// The device, when batches are per device; `None` for a gateway-wide batch.
    pub device: Option<Arc<str>>,
    /// The readings, in `seq` order.
    pub records: Vec<Record>,
}

impl Batch {
    /// The outbox rows the batch carries.
    pub fn seqs(&self) -> Vec<i64> {
        self.records.iter().map(|r| r.seq).collect()
    }

    /// The batch cut in two, for a message that came out too large.
    pub fn split(mut self) -> (Batch, Batch) {
        let tail = self.records.split_off(self.records.len() / 2);
        let device = self.device.clone();
        (
            self,
            Batch {
                device,
                records: tail,
            },
        )
    }
}

/// A batch still taking readings.
#[derive(Debug)]
struct Open {
    batch: Batch,
    bytes: usize,
    since: Instant,
}

/// The batches being filled.
#[derive(Debug)]
pub struct Batcher {
    group: Grouping,
    max_readings: usize,
    max_bytes: usize,
    linger: Duration,
    open: Vec<Open>,
    held: usize,
}

impl Batcher {
    /// A batcher bounded by `config`; with `single`, every reading is a message of its own
    /// (the `json` encoding).
    pub fn new(config: &BatchConfig, single: bool) -> Self {
        Self {
            group: config.group,
            max_readings: if single { 1 } else { config.max_readings },
            max_bytes: config.max_bytes.as_u64() as usize,
            linger: if single {
                Duration::ZERO
            } else {
                config.linger
            },
            open: Vec::new(),
            held: 0,
        }
    }

    /// The most readings one batch takes.
    pub fn max_readings(&self) -> usize {
        self.max_readings
    }

    /// Readings held in batches not yet sealed.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Adds `record`; returns the batch it filled, or the one it did not fit in any more.
    pub fn push(&mut self, record: Record, now: Instant) -> Option<Batch> {
        let device = match self.group {
            Grouping::Device => Some(record.device.clone()),
            Grouping::Gateway => None,
        };
        let bytes = size_hint(&record);
        let i = self.slot(&device, now);
        let open = &self.open[i];
        if !open.batch.records.is_empty() && open.bytes + bytes > self.max_bytes {
            let sealed = self.seal(i);
            let j = self.slot(&device, now);
            self.add(j, record, bytes);
            return Some(sealed);
        }
        self.add(i, record, bytes);
        (self.open[i].batch.records.len() >= self.max_readings).then(|| self.seal(i))
    }

    /// The open batch of `device`, started at `now` if there is none.
    fn slot(&mut self, device: &Option<Arc<str>>, now: Instant) -> usize {
        if let Some(i) = self.open.iter().position(|o| &o.batch.device == device) {
            return i;
        }
        self.open.push(Open {
            batch: Batch {
                device: device.clone(),
                records: Vec::new(),
            },
            bytes: 0,
            since: now,
        });
        self.open.len() - 1
    }

    fn add(&mut self, i: usize, record: Record, bytes: usize) {
        self.open[i].batch.records.push(record);
        self.open[i].bytes += bytes;
        self.held += 1;
    }

    fn seal(&mut self, i: usize) -> Batch {
        let open = self.open.remove(i);
        self.held -= open.batch.records.len();
        open.batch
    }

    /// When the longest-waiting open batch is due.
    pub fn deadline(&self) -> Option<Instant> {
        self.open.iter().map(|o| o.since + self.linger).min()
    }

    /// The open batch whose linger ran out first, if one has by `now`.
    pub fn due(&mut self, now: Instant) -> Option<Batch> {
        let (i, _) = self
            .open
            .iter()
            .enumerate()
            .filter(|(_, o)| o.since + self.linger <= now)
            .min_by_key(|(_, o)| o.since)?;
        Some(self.seal(i))
    }

    /// The fullest open batch, sealed early to bound what is held in memory.
    pub fn largest(&mut self) -> Option<Batch> {
        let (i, _) = self
            .open
            .iter()
            .enumerate()
            .max_by_key(|(_, o)| o.batch.records.len())?;
        Some(self.seal(i))
    }
}

/// A reading's share of an uncompressed batch, at most: its values with their names (a batch
/// writes each name once, so this overestimates), and its seq and ts deltas.
fn size_hint(record: &Record) -> usize {
    18 + record
        .values
        .iter()
        .map(|(name, value)| {
            name.len()
                + 2
                + match value {
                    Value::Float(_) | Value::Int(_) => 9,
                    Value::Bool(_) => 1,
                    Value::Text(t) => t.len() + 5,
                }
        })
        .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytesize::ByteSize;

    fn record(seq: i64, device: &str) -> Record {
        Record {
            priority: Default::default(),
            unsynced: false,
            seq,
            device: Arc::from(device),
            ts_ms: seq,
            values: vec![(Arc::from("x"), Value::Int(seq))],
        }
    }

    fn config(max_readings: usize, max_bytes: u64, group: Grouping) -> BatchConfig {
        BatchConfig {
            max_readings,
            max_bytes: ByteSize::b(max_bytes),
            linger: Duration::from_secs(1),
            group,
        }
    }

    #[test]
    fn per_device_batches_fill_in_order_and_linger() {
        let mut batcher = Batcher::new(&config(3, 10_000, Grouping::Device), false);
        let t0 = Instant::now();
        let mut sealed = Vec::new();
        for seq in 1..=7 {
            let device = if seq % 2 == 0 { "b" } else { "a" };
            sealed.extend(batcher.push(record(seq, device), t0));
        }
        let seqs: Vec<Vec<i64>> = sealed.iter().map(Batch::seqs).collect();
        assert_eq!(seqs, [vec![1, 3, 5], vec![2, 4, 6]]);
        assert_eq!(batcher.held(), 1);
        assert_eq!(batcher.deadline(), Some(t0 + Duration::from_secs(1)));
        assert!(batcher.due(t0).is_none(), "not yet");
        let last = batcher.due(t0 + Duration::from_secs(1)).unwrap();
        assert_eq!((last.device.as_deref(), last.seqs()), (Some("a"), vec![7]));
        assert_eq!(batcher.held(), 0);
        assert!(batcher.deadline().is_none());
    }

    #[test]
    fn bytes_bound_a_batch_and_json_sends_each_reading_alone() {
        let per = size_hint(&record(1, "a"));
        let mut batcher = Batcher::new(&config(100, (per * 2) as u64, Grouping::Gateway), false);
        let now = Instant::now();
        assert!(batcher.push(record(1, "a"), now).is_none());
        assert!(batcher.push(record(2, "b"), now).is_none());
        let full = batcher.push(record(3, "a"), now).unwrap();
        assert_eq!((full.device.clone(), full.seqs()), (None, vec![1, 2]));
        assert_eq!(batcher.held(), 1);

        let mut single = Batcher::new(&config(100, 10_000, Grouping::Device), true);
        assert_eq!(single.push(record(9, "a"), now).unwrap().seqs(), vec![9]);
        let (a, b) = full.split();
        assert_eq!((a.seqs(), b.seqs()), (vec![1], vec![2]));
    }
}
