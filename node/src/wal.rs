//! The write-ahead log: where a node's writes become durable, one record per group of writes and
//! one `fdatasync` per record, except records appended lazily, which the next sync covers.
//!
//! The log is a folder of segment files, `00000000000000000001.wal` and up, each a sequence of
//! records framed as `length (u32 BE) · CRC-32 of the payload (u32 BE) · payload`. A position in
//! the log ([`Position`]) is a segment number and an offset in it.
//!
//! A crash can leave the last record of the last segment torn (cut short, or with a wrong CRC),
//! or lose the lazy records at its end; none of them was synced, so opening the log cuts a torn
//! one off. A segment is synced before the next one starts, so that only the log's end can tear.
//! A bad record anywhere else is corruption, and opening refuses.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// A segment is closed and a new one started once it holds this many bytes.
pub const SEGMENT_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// The largest record the log accepts (a record is one group of writes).
pub const RECORD_BYTES_MAX: usize = 256 * 1024 * 1024;
/// Bytes of framing before each record's payload.
const HEADER_BYTES: usize = 8;

/// A place in the log: the end of a record, or the start of the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    /// The segment's number.
    pub segment: u64,
    /// The offset in the segment.
    pub offset: u64,
}

impl Position {
    /// Sixteen bytes: the segment, then the offset, both big-endian.
    pub fn to_bytes(self) -> [u8; 16] {
        let mut bytes = [0; 16];
        bytes[..8].copy_from_slice(&self.segment.to_be_bytes());
        bytes[8..].copy_from_slice(&self.offset.to_be_bytes());
        bytes
    }

    /// Reads [`Position::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Option<Position> {
        let bytes: [u8; 16] = bytes.try_into().ok()?;
        Some(Position {
            segment: u64::from_be_bytes(bytes[..8].try_into().ok()?),
            offset: u64::from_be_bytes(bytes[8..].try_into().ok()?),
        })
    }
}

/// Why the log could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// The file system failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What happened.
        source: io::Error,
    },
    /// A record before the end of the log does not read back.
    #[error("write-ahead log segment {path} is corrupted at offset {offset}: {reason}")]
    Corrupted {
        /// The segment.
        path: PathBuf,
        /// Where.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A record is too large to write.
    #[error("a record of {0} bytes is larger than the log accepts")]
    TooLarge(usize),
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// An open log, appending to its last segment.
pub struct Wal {
    folder: PathBuf,
    segment: u64,
    file: File,
    offset: u64,
    /// Whether the segment holds records appended since its last sync.
    unsynced: bool,
}

/// A record read back while opening the log.
pub struct Replayed {
    /// Its payload.
    pub payload: Vec<u8>,
    /// The position of its end.
    pub end: Position,
}

impl Wal {
    /// Opens the log in `folder` (creating it if needed), cuts off a torn last record, and
    /// returns the log with every record that ends after `from`, in order.
    pub fn open(folder: &Path, from: Position) -> Result<(Wal, Vec<Replayed>), WalError> {
        fs::create_dir_all(folder).map_err(io_error(folder))?;
        let segments = list_segments(folder)?;
        let mut replayed = Vec::new();
        let last = segments.last().copied();
        for segment in &segments {
            let path = segment_path(folder, *segment);
            let is_last = Some(*segment) == last;
            let (records, good_end) = read_segment(&path, *segment, is_last)?;
            if is_last {
                let length = fs::metadata(&path).map_err(io_error(&path))?.len();
                if good_end < length {
                    // A torn tail: never reported durable, so never relied on.
                    let file = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(io_error(&path))?;
                    file.set_len(good_end).map_err(io_error(&path))?;
                    file.sync_all().map_err(io_error(&path))?;
                }
            }
            replayed.extend(records.into_iter().filter(|record| record.end > from));
        }
        let segment = last.unwrap_or(1);
        let path = segment_path(folder, segment);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_error(&path))?;
        let offset = file.metadata().map_err(io_error(&path))?.len();
        if last.is_none() {
            sync_folder(folder)?;
        }
        let mut wal = Wal {
            unsynced: false,
            folder: folder.to_path_buf(),
            segment,
            file,
            offset,
        };
        if wal.position() < from {
            // The caller holds records the log has lost (appended lazily, then a crash, while the
            // caller's copy survived). New records must end after `from`, or a later opening would
            // take them for applied and skip them.
            wal.segment = wal.segment.max(from.segment);
            wal.rotate()?;
        }
        Ok((wal, replayed))
    }

    /// Appends one record and syncs it (and every record before it) to the disk.
    pub fn append(&mut self, payload: &[u8]) -> Result<Position, WalError> {
        self.append_record(payload)?;
        let path = segment_path(&self.folder, self.segment);
        self.file.sync_data().map_err(io_error(&path))?;
        self.unsynced = false;
        Ok(self.position())
    }

    /// Appends one record without syncing it: the next [`Wal::append`] syncs it too, and so does
    /// starting a new segment. A crash before then may lose it or tear it; opening the log cuts a
    /// torn record off, and only ever at the log's end.
    pub fn append_unsynced(&mut self, payload: &[u8]) -> Result<Position, WalError> {
        self.append_record(payload)?;
        self.unsynced = true;
        Ok(self.position())
    }

    fn append_record(&mut self, payload: &[u8]) -> Result<(), WalError> {
        if payload.len() > RECORD_BYTES_MAX {
            return Err(WalError::TooLarge(payload.len()));
        }
        if self.offset >= SEGMENT_BYTES_MAX {
            self.rotate()?;
        }
        let mut record = Vec::with_capacity(HEADER_BYTES + payload.len());
        record.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        record.extend_from_slice(&crc32fast::hash(payload).to_be_bytes());
        record.extend_from_slice(payload);
        let path = segment_path(&self.folder, self.segment);
        self.file.write_all(&record).map_err(io_error(&path))?;
        self.offset += record.len() as u64;
        Ok(())
    }

    /// The end of the last record.
    pub fn position(&self) -> Position {
        Position {
            segment: self.segment,
            offset: self.offset,
        }
    }

    /// Starts a new segment.
    fn rotate(&mut self) -> Result<(), WalError> {
        if self.unsynced {
            // A torn record may only ever be the log's last.
            let path = segment_path(&self.folder, self.segment);
            self.file.sync_data().map_err(io_error(&path))?;
            self.unsynced = false;
        }
        let segment = self.segment + 1;
        let path = segment_path(&self.folder, segment);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_error(&path))?;
        sync_folder(&self.folder)?;
        self.segment = segment;
        self.file = file;
        self.offset = 0;
        Ok(())
    }

    /// Deletes every segment that ends at or before `position`: their records are elsewhere now.
    pub fn forget_before(folder: &Path, position: Position) -> Result<(), WalError> {
        for segment in list_segments(folder)? {
            if segment < position.segment {
                let path = segment_path(folder, segment);
                fs::remove_file(&path).map_err(io_error(&path))?;
            }
        }
        sync_folder(folder)
    }
}

fn segment_path(folder: &Path, segment: u64) -> PathBuf {
    folder.join(format!("{segment:020}.wal"))
}

fn list_segments(folder: &Path) -> Result<Vec<u64>, WalError> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(folder).map_err(io_error(folder))? {
        let entry = entry.map_err(io_error(folder))?;
        let name = entry.file_name();
        let Some(number) = name
            .to_str()
            .and_then(|name| name.strip_suffix(".wal"))
            .and_then(|number| number.parse::<u64>().ok())
        else {
            continue;
        };
        segments.push(number);
    }
    segments.sort_unstable();
    Ok(segments)
}

fn sync_folder(folder: &Path) -> Result<(), WalError> {
    File::open(folder)
        .and_then(|directory| directory.sync_all())
        .map_err(io_error(folder))
}

/// Reads a segment's records; returns them with the end of the last good one. A bad record ends
/// the last segment (a torn tail) and is corruption anywhere else.
fn read_segment(
    path: &Path,
    segment: u64,
    is_last: bool,
) -> Result<(Vec<Replayed>, u64), WalError> {
    let mut file = File::open(path).map_err(io_error(path))?;
    let length = file.metadata().map_err(io_error(path))?.len();
    let mut bytes = Vec::with_capacity(length as usize);
    file.seek(SeekFrom::Start(0)).map_err(io_error(path))?;
    file.read_to_end(&mut bytes).map_err(io_error(path))?;
    let mut records = Vec::new();
    let mut offset = 0usize;
    while offset < bytes.len() {
        let bad = |reason: &str| WalError::Corrupted {
            path: path.to_path_buf(),
            offset: offset as u64,
            reason: reason.to_string(),
        };
        let Some(header) = bytes.get(offset..offset + HEADER_BYTES) else {
            if is_last {
                break;
            }
            return Err(bad("a record header is cut short"));
        };
        let size = u32::from_be_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_be_bytes(header[4..].try_into().expect("4 bytes"));
        let start = offset + HEADER_BYTES;
        let Some(payload) = bytes.get(start..start + size) else {
            if is_last {
                break;
            }
            return Err(bad("a record is cut short"));
        };
        if crc32fast::hash(payload) != crc {
            if is_last {
                break;
            }
            return Err(bad("a record does not match its checksum"));
        }
        offset = start + size;
        records.push(Replayed {
            payload: payload.to_vec(),
            end: Position {
                segment,
                offset: offset as u64,
            },
        });
    }
    Ok((records, offset as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_back_in_order_after_a_position() {
        let folder = tempfile::tempdir().unwrap();
        let (mut wal, replayed) = Wal::open(folder.path(), Position::default()).unwrap();
        assert!(replayed.is_empty());
        let first = wal.append(b"one").unwrap();
        let second = wal.append(b"two").unwrap();
        wal.append(b"three").unwrap();
        drop(wal);
        let (_, all) = Wal::open(folder.path(), Position::default()).unwrap();
        let payloads: Vec<&[u8]> = all.iter().map(|record| &record.payload[..]).collect();
        assert_eq!(payloads, vec![&b"one"[..], b"two", b"three"]);
        assert_eq!(all[1].end, second);
        let (_, after) = Wal::open(folder.path(), first).unwrap();
        assert_eq!(after.len(), 2);
        assert_eq!(after[0].payload, b"two");
    }

    #[test]
    fn a_torn_last_record_is_cut_off_and_the_log_goes_on() {
        let folder = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(folder.path(), Position::default()).unwrap();
        wal.append(b"kept").unwrap();
        let end = wal.position();
        drop(wal);
        let path = segment_path(folder.path(), 1);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&[0, 0, 0, 9, 1, 2, 3, 4, b'x']).unwrap();
        drop(file);
        let (mut wal, replayed) = Wal::open(folder.path(), Position::default()).unwrap();
        assert_eq!(replayed.len(), 1);
        assert_eq!(wal.position(), end, "the torn record is gone");
        wal.append(b"next").unwrap();
        drop(wal);
        let (_, replayed) = Wal::open(folder.path(), Position::default()).unwrap();
        let payloads: Vec<&[u8]> = replayed.iter().map(|record| &record.payload[..]).collect();
        assert_eq!(payloads, vec![&b"kept"[..], b"next"]);
    }

    #[test]
    fn a_bad_record_before_the_end_is_corruption() {
        let folder = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(folder.path(), Position::default()).unwrap();
        wal.append(b"first").unwrap();
        wal.rotate().unwrap();
        wal.append(b"second").unwrap();
        drop(wal);
        let path = segment_path(folder.path(), 1);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&path, bytes).unwrap();
        assert!(matches!(
            Wal::open(folder.path(), Position::default()),
            Err(WalError::Corrupted { .. })
        ));
    }

    #[test]
    fn segments_before_a_position_are_forgotten() {
        let folder = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(folder.path(), Position::default()).unwrap();
        wal.append(b"old").unwrap();
        wal.rotate().unwrap();
        let kept = wal.append(b"new").unwrap();
        drop(wal);
        Wal::forget_before(folder.path(), kept).unwrap();
        let (_, replayed) = Wal::open(folder.path(), Position::default()).unwrap();
        assert_eq!(replayed.len(), 1);
        assert_eq!(replayed[0].payload, b"new");
    }

    #[test]
    fn a_lazy_record_is_read_back_and_synced_before_a_new_segment() {
        let folder = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(folder.path(), Position::default()).unwrap();
        wal.append(b"synced").unwrap();
        wal.append_unsynced(b"lazy").unwrap();
        assert!(wal.unsynced);
        wal.rotate().unwrap();
        assert!(
            !wal.unsynced,
            "a segment is synced before the next one starts"
        );
        wal.append_unsynced(b"lazy too").unwrap();
        wal.append(b"and synced").unwrap();
        assert!(!wal.unsynced, "a sync covers the lazy records before it");
        drop(wal);
        let (_, replayed) = Wal::open(folder.path(), Position::default()).unwrap();
        let payloads: Vec<&[u8]> = replayed.iter().map(|record| &record.payload[..]).collect();
        assert_eq!(
            payloads,
            vec![&b"synced"[..], b"lazy", b"lazy too", b"and synced"]
        );
    }

    #[test]
    fn after_losing_records_a_reader_holds_new_ones_end_past_them() {
        // A lazy record was applied elsewhere (the reader's position is past it), then lost with
        // the machine: the records that follow must not end at or before that position, or the
        // next opening would skip them as applied.
        let folder = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(folder.path(), Position::default()).unwrap();
        let kept = wal.append(b"kept").unwrap();
        let applied = wal.append_unsynced(b"a long lazy record, lost").unwrap();
        drop(wal);
        let path = segment_path(folder.path(), 1);
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(kept.offset)
            .unwrap();
        let (mut wal, replayed) = Wal::open(folder.path(), applied).unwrap();
        assert!(replayed.is_empty());
        let next = wal.append(b"new").unwrap();
        assert!(next > applied, "{next:?} must end after {applied:?}");
        drop(wal);
        let (_, replayed) = Wal::open(folder.path(), applied).unwrap();
        let payloads: Vec<&[u8]> = replayed.iter().map(|record| &record.payload[..]).collect();
        assert_eq!(payloads, vec![&b"new"[..]]);
    }
}
