//! The outbox's disk: a reserve of free space that deletes and checkpoints can always use.
//!
//! SQLite needs room to delete: a delete goes through the write-ahead log before it frees
//! anything. On a full disk, deletes of delivered readings failed too, and space freed by
//! someone else refilled within a second. So the writer keeps `buffer.reserve` free: below
//! half of it, new readings are refused and counted (`disk_full`), and the other half is held
//! in a file beside the outbox (`<outbox>.reserve`), given up the moment a write fails, for
//! the case where something else filled the disk. The file comes back once there is room.

use std::path::{Path, PathBuf};

use tracing::{info, warn};

/// The outbox's filesystem, watched for free space.
#[derive(Debug)]
pub struct Disk {
    dir: PathBuf,
    ballast: PathBuf,
    reserve: u64,
    /// Whether readings are being refused now, and how many since it began.
    low: Option<u64>,
}

impl Disk {
    /// The disk of the outbox at `path`, keeping `reserve` bytes free.
    pub fn new(path: &Path, reserve: u64) -> Self {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let mut ballast = path.as_os_str().to_owned();
        ballast.push(".reserve");
        Self {
            dir,
            ballast: PathBuf::from(ballast),
            reserve,
            low: None,
        }
    }

    /// Free bytes for this user; `None` when the filesystem cannot say.
    pub fn free(&self) -> Option<u64> {
        let stat = rustix::fs::statvfs(&self.dir).ok()?;
        Some(stat.f_bavail.saturating_mul(stat.f_frsize))
    }

    /// Whether `free` bytes are near the reserve, so that [`Disk::refusing`] wants to know
    /// the room inside the outbox file too.
    pub fn near(&self, free: u64, wal: u64) -> bool {
        free < self.reserve + wal
    }

    /// Whether new readings must be refused now: the room left fell below half the reserve,
    /// and has not come back to all of it since. Room is the `free` space, plus `reusable`
    /// bytes (free pages inside the outbox file, and the WAL as it is now), less `wal` (what
    /// the WAL may grow to before its next checkpoint). Says so in the log when that changes.
    pub fn refusing(&mut self, free: u64, reusable: u64, wal: u64) -> bool {
        let room = free.saturating_add(reusable).saturating_sub(wal);
        let low = if self.low.is_some() {
            room < self.reserve
        } else {
            room < self.reserve / 2
        };
        match (low, self.low) {
            (true, None) => {
                warn!(dir = %self.dir.display(), room, reserve = self.reserve, "The disk is down to the outbox's reserve: new readings are refused and counted (disk_full) until there is room");
                self.low = Some(0);
            }
            (false, Some(refused)) => {
                info!(dir = %self.dir.display(), room, refused, "Room on the disk again: readings are taken again");
                self.low = None;
            }
            _ => {}
        }
        low
    }

    /// Whether readings were refused at the last look.
    pub fn is_low(&self) -> bool {
        self.low.is_some()
    }

    /// Counts `n` readings refused.
    pub fn refused(&mut self, n: u64) {
        if let Some(count) = &mut self.low {
            *count += n;
        }
    }

    /// Gives the held half of the reserve back to the filesystem, so that SQLite can delete
    /// and checkpoint on a disk something else filled.
    pub async fn release(&self) {
        if tokio::fs::remove_file(&self.ballast).await.is_ok() {
            warn!(file = %self.ballast.display(), bytes = self.reserve / 2, "A write failed: the outbox's reserve file is given up so that deletes can run");
        }
    }

    /// Puts the held half of the reserve back in place when there is room for it and the
    /// rest of the reserve.
    pub async fn hold(&self) {
        if tokio::fs::try_exists(&self.ballast).await.unwrap_or(true) {
            return;
        }
        let half = self.reserve / 2;
        if self.free().is_none_or(|free| free < self.reserve + half) {
            return;
        }
        // Written, not just sized: a sparse file would hold no blocks.
        let zeros = vec![0u8; usize::try_from(half).unwrap_or(usize::MAX)];
        if let Err(e) = tokio::fs::write(&self.ballast, zeros).await {
            let _ = tokio::fs::remove_file(&self.ballast).await;
            warn!(file = %self.ballast.display(), error = %e, "Cannot hold the outbox's reserve in a file");
        }
    }
}
