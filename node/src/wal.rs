//! The write-ahead log: where a node's writes become durable, one record per group of writes and
//! one `fdatasync` per record, except records appended lazily, which the next sync covers.
//!
//! The log is a folder of segment files, `00000000000000000001.wal` and up, each a sequence of
//! records framed as `length (u32 BE) · CRC-32 of the payload (u32 BE) · payload`. A position in
//! the log ([`Position`]) is a segment number and an offset in it.
//!
//! A segment is written into a file made ready beforehand, in the background: zero-filled to
//! [`SEGMENT_BYTES_MAX`] and synced. Overwriting blocks a file already has changes none of its
//! metadata, so each `fdatasync` writes the record and nothing else: appending to a file instead
//! grows it, and every sync then commits the file system's journal too (about 100 µs more per
//! sync on this project's machines, with five nodes on one disk). The zeros after the last record
//! end the log, so a record is never empty. When a segment is closed it is cut to its records.
//! Until a ready file exists (just after opening) records are appended to a plain file, and the
//! log moves to a ready file as soon as one is.
//!
//! Records go into a ready file with direct I/O (`O_DIRECT`) where the file system allows it: each
//! record is written as whole 4 KiB blocks, from the block holding the log's end through the
//! record, the rest of its last block zeros (as the ready file held). The page cache is bypassed,
//! so a sync only has the disk flush its cache: on this project's machines, with five nodes
//! syncing at once, that took a write and sync from ~150–200 µs to ~110 µs, and the writer thread
//! no longer copies each record into the page cache and out again. A file system that refuses
//! direct I/O gets plain writes, as before.
//!
//! A crash can leave the last record of the last segment torn (cut short, or with a wrong CRC),
//! or lose the lazy records at its end; none of them was synced, so opening the log cuts the last
//! segment at the end of its last good record, which also drops anything after it (lazy records
//! the disk kept out of order). A segment is synced before the next one starts, so that only the
//! log's end can tear. A bad record anywhere else is corruption, and opening refuses.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A segment is closed and a new one started once it holds this many bytes; the size its file is
/// made ready with.
pub const SEGMENT_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// The file being made ready for the next segment (not a segment's name, so never read as one).
const PREPARING: &str = "next-segment.preparing";
/// The file ready for the next segment: zero-filled and synced.
const PREPARED: &str = "next-segment.ready";
/// Zeros written per call while a file is made ready.
const ZEROS_PER_WRITE: usize = 1024 * 1024;
/// The largest record the log accepts (a record is one group of writes).
pub const RECORD_BYTES_MAX: usize = 256 * 1024 * 1024;
/// Bytes of framing before each record's payload.
const HEADER_BYTES: usize = 8;
/// Direct I/O needs buffers, offsets and lengths aligned to the device's logical block size; 4 KiB
/// covers every common device.
const DIRECT_BLOCK: usize = 4096;
/// The aligned buffer is cut back to this many blocks after a larger record.
const DIRECT_BUFFER_BLOCKS_KEPT: usize = 64;

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
    /// An empty record: the zeros after the last record end the log, so it would not read back.
    #[error("an empty record cannot be written to the log")]
    Empty,
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How a log's segments were written, so how to read them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Into ready files: zeros end the log, and no record is empty.
    Current,
    /// Appended to plain files, by store formats before ready files: a header of zeros was read
    /// as an empty record and the log went on after it. Such a log is read that way and written
    /// only into plain files, until [`Wal::start_current_format`].
    Plain,
}

/// An open log, writing at the end of its last segment.
pub struct Wal {
    folder: PathBuf,
    segment: u64,
    file: File,
    offset: u64,
    /// Whether the segment holds records appended since its last sync.
    unsynced: bool,
    /// Whether the segment's file was made ready (zero-filled), rather than grown record by record.
    ready_file: bool,
    /// Writes into the ready file with direct I/O, if the file system allows it.
    direct: Option<DirectWriter>,
    /// Cleared once the file system refuses direct I/O: plain writes from then on.
    direct_allowed: bool,
    /// The size a segment is closed at and a ready file is made with.
    segment_bytes: u64,
    /// Whether ready files are made at all (not for a [`LogFormat::Plain`] log).
    prepare: bool,
    /// The file for the next segment.
    next: NextFile,
}

/// The file the next segment will be written into.
enum NextFile {
    /// None: the next segment starts as a plain file, and a ready one is made.
    None,
    /// Being made ready by a background thread.
    Preparing {
        thread: std::thread::JoinHandle<io::Result<()>>,
        /// Set when the log is dropped: the thread stops and removes its file.
        cancelled: std::sync::Arc<std::sync::atomic::AtomicBool>,
    },
    /// Ready, under the name [`PREPARED`].
    Ready,
}

impl Drop for Wal {
    fn drop(&mut self) {
        // Lazy records held for direct I/O reach the file, as they would have without it.
        let _ = self.write_out();
        self.stop_preparing();
    }
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
    ///
    /// A log in [`LogFormat::Plain`] is read as it was written, and written in plain files.
    pub fn open(
        folder: &Path,
        from: Position,
        format: LogFormat,
    ) -> Result<(Wal, Vec<Replayed>), WalError> {
        Wal::open_with(folder, from, SEGMENT_BYTES_MAX, format)
    }

    fn open_with(
        folder: &Path,
        from: Position,
        segment_bytes: u64,
        format: LogFormat,
    ) -> Result<(Wal, Vec<Replayed>), WalError> {
        fs::create_dir_all(folder).map_err(io_error(folder))?;
        // A file made ready before a crash may not be whole: make a new one.
        for name in [PREPARING, PREPARED] {
            remove_if_present(&folder.join(name))?;
        }
        let segments = list_segments(folder)?;
        let mut replayed = Vec::new();
        let last = segments.last().copied();
        for segment in &segments {
            let path = segment_path(folder, *segment);
            let is_last = Some(*segment) == last;
            let (records, good_end) = read_segment(&path, *segment, is_last, format)?;
            if is_last {
                let length = fs::metadata(&path).map_err(io_error(&path))?.len();
                if good_end < length {
                    // A torn tail, lazy records, or the zeros of a ready file: none of it was
                    // ever reported durable, and none of it may be read after what comes next.
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
        let file = open_for_writing(&path)?;
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
            ready_file: false,
            direct: None,
            direct_allowed: true,
            segment_bytes,
            prepare: format == LogFormat::Current,
            next: NextFile::None,
        };
        wal.prepare_next();
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
        self.append_record(payload, false)?;
        let path = segment_path(&self.folder, self.segment);
        self.file.sync_data().map_err(io_error(&path))?;
        self.unsynced = false;
        Ok(self.position())
    }

    /// Appends one record without syncing it: the next [`Wal::append`] syncs it too, and so does
    /// starting a new segment. A crash before then may lose it or tear it; opening the log cuts a
    /// torn record off, and only ever at the log's end. With direct I/O the record is written
    /// only with the next record synced, or by [`Wal::write_out`]: a lazy record costs no write
    /// of its own when a synced one follows.
    pub fn append_unsynced(&mut self, payload: &[u8]) -> Result<Position, WalError> {
        self.append_record(payload, true)?;
        self.unsynced = true;
        Ok(self.position())
    }

    fn append_record(&mut self, payload: &[u8], lazy: bool) -> Result<(), WalError> {
        if payload.len() > RECORD_BYTES_MAX {
            return Err(WalError::TooLarge(payload.len()));
        }
        if payload.is_empty() {
            return Err(WalError::Empty);
        }
        if self.offset >= self.segment_bytes {
            self.rotate()?;
        } else if !self.ready_file && self.next_is_ready(false) {
            self.use_ready_file()?;
        }
        let mut header = [0u8; HEADER_BYTES];
        header[..4].copy_from_slice(&(payload.len() as u32).to_be_bytes());
        header[4..].copy_from_slice(&crc32fast::hash(payload).to_be_bytes());
        if let Some(direct) = &mut self.direct {
            direct.hold(&header, payload);
            self.offset += (HEADER_BYTES + payload.len()) as u64;
            return if lazy { Ok(()) } else { self.write_out() };
        }
        let mut record = Vec::with_capacity(HEADER_BYTES + payload.len());
        record.extend_from_slice(&header);
        record.extend_from_slice(payload);
        let path = segment_path(&self.folder, self.segment);
        self.file
            .write_all_at(&record, self.offset)
            .map_err(io_error(&path))?;
        self.offset += record.len() as u64;
        Ok(())
    }

    /// Writes the records appended lazily and held in memory for direct I/O (a no-op otherwise),
    /// without syncing them: after this they survive the process, though not the machine.
    pub fn write_out(&mut self) -> Result<(), WalError> {
        let Some(direct) = &mut self.direct else {
            return Ok(());
        };
        match direct.write_out() {
            Ok(()) => Ok(()),
            // The file system took the open but not the write (which then wrote nothing): plain
            // writes from now on, starting with what the direct writer held.
            Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
                let held = &block_bytes(&mut direct.blocks)[..direct.held];
                let path = segment_path(&self.folder, self.segment);
                self.file
                    .write_all_at(held, direct.base)
                    .map_err(io_error(&path))?;
                self.direct = None;
                self.direct_allowed = false;
                Ok(())
            }
            Err(error) => Err(io_error(&segment_path(&self.folder, self.segment))(error)),
        }
    }

    /// Since when records appended lazily are held in memory, not yet written (see
    /// [`Wal::write_out`]); `None` if none are.
    pub fn unwritten_since(&self) -> Option<Instant> {
        self.direct
            .as_ref()
            .and_then(|direct| direct.unwritten_since)
    }

    /// The end of the last record.
    pub fn position(&self) -> Position {
        Position {
            segment: self.segment,
            offset: self.offset,
        }
    }

    /// Starts a new segment: in the ready file if there is one, else in a plain file, until a
    /// ready one is (it never waits for one being made).
    fn rotate(&mut self) -> Result<(), WalError> {
        let path = segment_path(&self.folder, self.segment);
        self.write_out()?;
        if self.unsynced {
            // A torn record may only ever be the log's last.
            self.file.sync_data().map_err(io_error(&path))?;
            self.unsynced = false;
        }
        if self.ready_file {
            // Only the last segment may end in zeros: cut this one to its records first (a
            // direct write may also have grown it past its size, with zeros).
            self.file.set_len(self.offset).map_err(io_error(&path))?;
            self.file.sync_all().map_err(io_error(&path))?;
        }
        let ready = self.next_is_ready(false);
        self.segment += 1;
        self.offset = 0;
        self.switch_file(ready)
    }

    /// Moves the log into the ready file: this segment's own file if it holds no record yet,
    /// else a new segment.
    fn use_ready_file(&mut self) -> Result<(), WalError> {
        if self.offset > 0 {
            return self.rotate();
        }
        // Replaced whole by the rename: a crash leaves either file, and both read as empty.
        self.switch_file(true)
    }

    /// Opens segment `self.segment` as the file written from now on: the ready file, renamed to
    /// it, if `ready`, else a plain file. Then starts making the next ready file.
    fn switch_file(&mut self, ready: bool) -> Result<(), WalError> {
        let path = segment_path(&self.folder, self.segment);
        if ready {
            let prepared = self.folder.join(PREPARED);
            fs::rename(&prepared, &path).map_err(io_error(&prepared))?;
            self.next = NextFile::None;
        }
        self.file = open_for_writing(&path)?;
        sync_folder(&self.folder)?;
        self.ready_file = ready;
        self.direct = None;
        if ready && self.direct_allowed {
            match DirectWriter::open(&path) {
                Ok(direct) => self.direct = Some(direct),
                Err(_) => self.direct_allowed = false,
            }
        }
        self.prepare_next();
        Ok(())
    }

    /// Whether the ready file is there; with `wait`, waits for one being made.
    fn next_is_ready(&mut self, wait: bool) -> bool {
        let done = matches!(&self.next,
            NextFile::Preparing { thread, .. } if wait || thread.is_finished());
        if done {
            if let NextFile::Preparing { thread, .. } =
                std::mem::replace(&mut self.next, NextFile::None)
            {
                if matches!(thread.join(), Ok(Ok(()))) {
                    self.next = NextFile::Ready;
                }
            }
        }
        matches!(self.next, NextFile::Ready)
    }

    /// Starts making the next segment's file ready, unless there is one or it is under way. If
    /// that fails (a full disk, say), the next segment is a plain file and the rotation after it
    /// tries again.
    fn prepare_next(&mut self) {
        if !self.prepare || !matches!(self.next, NextFile::None) {
            return;
        }
        let cancelled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let folder = self.folder.clone();
        let bytes = self.segment_bytes;
        let stop = cancelled.clone();
        let thread = std::thread::Builder::new()
            .name("benmo-wal-ready".to_string())
            .spawn(move || make_ready_file(&folder, bytes, &stop));
        if let Ok(thread) = thread {
            self.next = NextFile::Preparing { thread, cancelled };
        }
    }

    /// Moves a [`LogFormat::Plain`] log to the current format: its records go into ready files
    /// from the next segment on, and zeros end it. The caller must first make every earlier
    /// segment unneeded and delete it (see [`Wal::start_segment`]), and record the store's new
    /// format: a log of this format is never read as plain again.
    pub fn start_current_format(&mut self) {
        self.prepare = true;
        self.prepare_next();
    }

    /// Starts a new segment, so that every record so far is in earlier ones; returns its start.
    pub fn start_segment(&mut self) -> Result<Position, WalError> {
        self.rotate()?;
        Ok(self.position())
    }

    /// Stops making ready files, and waits for the thread making one (it stops within one
    /// write), so that a log opened next in this folder never meets it.
    fn stop_preparing(&mut self) {
        self.prepare = false;
        if let NextFile::Preparing { thread, cancelled } =
            std::mem::replace(&mut self.next, NextFile::None)
        {
            cancelled.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = thread.join();
        }
    }

    /// Deletes every segment that ends at or before `position`: their records are elsewhere now.
    /// Another caller may be deleting them too (the store's checkpoint thread, and a checkpoint
    /// on opening): a segment already gone is what both want.
    pub fn forget_before(folder: &Path, position: Position) -> Result<(), WalError> {
        for segment in list_segments(folder)? {
            if segment < position.segment {
                remove_if_present(&segment_path(folder, segment))?;
            }
        }
        sync_folder(folder)
    }
}

/// Writes `bytes` zeros to a new file and syncs it, then gives it the ready file's name: a file
/// by that name is whole. Stops (and removes the file) once `cancelled` is set.
fn make_ready_file(
    folder: &Path,
    bytes: u64,
    cancelled: &std::sync::atomic::AtomicBool,
) -> io::Result<()> {
    let path = folder.join(PREPARING);
    let mut file = File::create(&path)?;
    let zeros = vec![0u8; ZEROS_PER_WRITE];
    let mut written = 0u64;
    let result = (|| {
        while written < bytes {
            if cancelled.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(io::Error::other("the log was closed"));
            }
            let chunk = (bytes - written).min(ZEROS_PER_WRITE as u64) as usize;
            file.write_all(&zeros[..chunk])?;
            written += chunk as u64;
        }
        file.sync_all()?;
        // Its zeros need not stay in the page cache: the log writes over them (directly, where
        // it can, and a direct write would first have to drop the cached pages one by one).
        // Only advice: the file is whole whatever the answer.
        // SAFETY: posix_fadvise only reads its arguments; the descriptor is open.
        let _ = unsafe {
            libc::posix_fadvise(
                std::os::fd::AsRawFd::as_raw_fd(&file),
                0,
                0,
                libc::POSIX_FADV_DONTNEED,
            )
        };
        fs::rename(&path, folder.join(PREPARED))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&path);
    }
    result
}

/// One 4 KiB block of the direct writer's buffer, aligned as direct I/O needs.
#[derive(Clone, Copy)]
#[repr(C, align(4096))]
struct AlignedBlock([u8; DIRECT_BLOCK]);

/// Writes records into a ready file with direct I/O, in whole aligned blocks.
struct DirectWriter {
    file: File,
    /// The log's bytes from `base` to its end (`held` of them), then room for more.
    blocks: Vec<AlignedBlock>,
    /// The file offset of `blocks`' first byte: a block boundary.
    base: u64,
    /// Bytes of `blocks` that hold the log.
    held: usize,
    /// Since when some of them are not written yet (records appended lazily).
    unwritten_since: Option<Instant>,
}

impl DirectWriter {
    /// Opens a ready file, at its start, for direct writes; fails if the file system refuses.
    fn open(path: &Path) -> io::Result<DirectWriter> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)?;
        Ok(DirectWriter {
            file,
            blocks: vec![AlignedBlock([0; DIRECT_BLOCK])],
            base: 0,
            held: 0,
            unwritten_since: None,
        })
    }

    /// Adds the record `header · payload` at the log's end, in memory only.
    fn hold(&mut self, header: &[u8], payload: &[u8]) {
        let record_end = self.held + header.len() + payload.len();
        let blocks = record_end.div_ceil(DIRECT_BLOCK);
        if self.blocks.len() < blocks {
            self.blocks.resize(blocks, AlignedBlock([0; DIRECT_BLOCK]));
        }
        let bytes = block_bytes(&mut self.blocks);
        bytes[self.held..self.held + header.len()].copy_from_slice(header);
        bytes[self.held + header.len()..record_end].copy_from_slice(payload);
        self.held = record_end;
        self.unwritten_since.get_or_insert_with(Instant::now);
    }

    /// Writes every record held and not yet written: the blocks from `base` through the log's
    /// end, the rest of the last block zeros (as the ready file held). Keeps that last, partly
    /// written block for the next record.
    fn write_out(&mut self) -> io::Result<()> {
        if self.unwritten_since.is_none() {
            return Ok(());
        }
        let blocks = self.held.div_ceil(DIRECT_BLOCK);
        let bytes = block_bytes(&mut self.blocks);
        bytes[self.held..blocks * DIRECT_BLOCK].fill(0);
        self.file
            .write_all_at(&bytes[..blocks * DIRECT_BLOCK], self.base)?;
        let kept_from = self.held - self.held % DIRECT_BLOCK;
        bytes.copy_within(kept_from..self.held, 0);
        self.base += kept_from as u64;
        self.held -= kept_from;
        self.unwritten_since = None;
        if self.blocks.len() > DIRECT_BUFFER_BLOCKS_KEPT {
            self.blocks.truncate(1);
            self.blocks.shrink_to_fit();
        }
        Ok(())
    }
}

/// The blocks as one byte slice.
fn block_bytes(blocks: &mut [AlignedBlock]) -> &mut [u8] {
    // SAFETY: `AlignedBlock` is `repr(C)` around a byte array whose size is its alignment, so it
    // has no padding and the blocks are `len × DIRECT_BLOCK` initialized bytes, borrowed mutably
    // for the slice's lifetime.
    unsafe {
        std::slice::from_raw_parts_mut(
            blocks.as_mut_ptr().cast::<u8>(),
            blocks.len() * DIRECT_BLOCK,
        )
    }
}

/// Opens a segment to write records at chosen offsets, creating it if needed.
fn open_for_writing(path: &Path) -> Result<File, WalError> {
    OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(false)
        .open(path)
        .map_err(io_error(path))
}

/// Deletes the file at `path`; one already gone counts as deleted.
fn remove_if_present(path: &Path) -> Result<(), WalError> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(io_error(path)(error)),
        _ => Ok(()),
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

/// Reads a segment's records; returns them with the end of the last good one. In the last
/// segment, zeros where a header would be end the log (in [`LogFormat::Plain`], they are an empty
/// record, skipped), and a bad record is a torn tail; anywhere else either is corruption. Reads
/// record by record, so the zeros of a ready file cost nothing.
fn read_segment(
    path: &Path,
    segment: u64,
    is_last: bool,
    format: LogFormat,
) -> Result<(Vec<Replayed>, u64), WalError> {
    let file = File::open(path).map_err(io_error(path))?;
    let length = file.metadata().map_err(io_error(path))?.len();
    let mut reader = io::BufReader::with_capacity(1024 * 1024, file);
    let mut records = Vec::new();
    let mut offset = 0u64;
    while offset < length {
        let bad = |reason: &str| WalError::Corrupted {
            path: path.to_path_buf(),
            offset,
            reason: reason.to_string(),
        };
        let mut header = [0u8; HEADER_BYTES];
        if offset + HEADER_BYTES as u64 > length {
            if is_last {
                break;
            }
            return Err(bad("a record header is cut short"));
        }
        reader.read_exact(&mut header).map_err(io_error(path))?;
        let size = u32::from_be_bytes(header[..4].try_into().expect("4 bytes"));
        let crc = u32::from_be_bytes(header[4..].try_into().expect("4 bytes"));
        if size == 0 && format == LogFormat::Current {
            if is_last {
                break;
            }
            return Err(bad("an empty record"));
        }
        let start = offset + HEADER_BYTES as u64;
        if start + u64::from(size) > length || size as usize > RECORD_BYTES_MAX {
            if is_last {
                break;
            }
            return Err(bad("a record is cut short"));
        }
        let mut payload = vec![0u8; size as usize];
        reader.read_exact(&mut payload).map_err(io_error(path))?;
        if crc32fast::hash(&payload) != crc {
            if is_last {
                break;
            }
            return Err(bad("a record does not match its checksum"));
        }
        offset = start + u64::from(size);
        if size > 0 {
            records.push(Replayed {
                payload,
                end: Position { segment, offset },
            });
        }
    }
    Ok((records, offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log in the current format that makes no ready files: plain segments only, as just
    /// after opening.
    fn plain(folder: &Path, from: Position) -> Result<(Wal, Vec<Replayed>), WalError> {
        let (mut wal, replayed) = Wal::open(folder, from, LogFormat::Current)?;
        wal.stop_preparing();
        let _ = fs::remove_file(folder.join(PREPARED));
        Ok((wal, replayed))
    }

    /// A log with segments of `bytes`, whose first ready file is made before it returns.
    fn with_ready_files(folder: &Path, bytes: u64) -> (Wal, Vec<Replayed>) {
        let (mut wal, replayed) =
            Wal::open_with(folder, Position::default(), bytes, LogFormat::Current).unwrap();
        assert!(wal.next_is_ready(true), "the ready file is made");
        (wal, replayed)
    }

    fn payloads(replayed: &[Replayed]) -> Vec<&[u8]> {
        replayed.iter().map(|record| &record.payload[..]).collect()
    }

    /// A closed log of "first" in segment 1 and "second" in segment 2.
    fn two_segments(folder: &Path) {
        let (mut wal, _) = plain(folder, Position::default()).unwrap();
        wal.append(b"first").unwrap();
        wal.rotate().unwrap();
        wal.append(b"second").unwrap();
    }

    #[test]
    fn records_go_into_the_ready_file_and_its_zeros_end_the_log() {
        let folder = tempfile::tempdir().unwrap();
        let (mut wal, _) = with_ready_files(folder.path(), 4096);
        let first = wal.append(b"one").unwrap();
        assert!(wal.ready_file);
        assert_eq!(
            first.segment, 1,
            "the empty plain segment was replaced, not skipped"
        );
        wal.append_unsynced(b"two").unwrap();
        let end = wal.append(b"three").unwrap();
        let path = segment_path(folder.path(), 1);
        assert_eq!(
            fs::metadata(&path).unwrap().len(),
            4096,
            "a ready file is written in place"
        );
        drop(wal);
        let (wal, replayed) =
            Wal::open(folder.path(), Position::default(), LogFormat::Current).unwrap();
        assert_eq!(payloads(&replayed), vec![&b"one"[..], b"two", b"three"]);
        assert_eq!(wal.position(), end);
        assert_eq!(
            fs::metadata(&path).unwrap().len(),
            end.offset,
            "the zeros are cut off"
        );
    }

    #[test]
    fn a_full_ready_segment_moves_on_to_the_next_ready_file() {
        let folder = tempfile::tempdir().unwrap();
        let (mut wal, _) = with_ready_files(folder.path(), 64);
        let record = [7u8; 40];
        wal.append(&record).unwrap();
        wal.append(&record).unwrap();
        assert!(wal.offset >= 64, "the segment is full");
        // Rotation never waits for a ready file being made: let this one be made first.
        assert!(wal.next_is_ready(true), "the next ready file is made");
        wal.append(&record).unwrap();
        assert_eq!(wal.segment, 2);
        assert!(wal.ready_file, "the next segment is the ready file");
        let first = segment_path(folder.path(), 1);
        assert_eq!(
            fs::metadata(first).unwrap().len(),
            96,
            "a closed segment holds its records only"
        );
        drop(wal);
        let (_, replayed) =
            Wal::open(folder.path(), Position::default(), LogFormat::Current).unwrap();
        assert_eq!(replayed.len(), 3);
    }

    #[test]
    fn a_ready_segment_closed_early_is_cut_to_its_records() {
        let folder = tempfile::tempdir().unwrap();
        let (mut wal, _) = with_ready_files(folder.path(), 4096);
        wal.append(b"first").unwrap();
        wal.append_unsynced(b"lazy").unwrap();
        wal.rotate().unwrap();
        wal.append(b"second").unwrap();
        let first = segment_path(folder.path(), 1);
        assert_eq!(fs::metadata(first).unwrap().len(), 2 * 8 + 9);
        drop(wal);
        // A segment before the last may not end in zeros: opening would call that corruption.
        let (_, replayed) =
            Wal::open(folder.path(), Position::default(), LogFormat::Current).unwrap();
        assert_eq!(payloads(&replayed), vec![&b"first"[..], b"lazy", b"second"]);
    }

    #[test]
    fn lazy_records_the_disk_kept_past_a_lost_one_never_come_back() {
        // Lazy records B and C; the disk kept C's page but not B's. Opening ends the log at A
        // and must drop C too: otherwise a new record of B's length would end exactly where C
        // starts, and the next opening would read C, which was never part of this log.
        let folder = tempfile::tempdir().unwrap();
        let (mut wal, _) = with_ready_files(folder.path(), 4096);
        let a = wal.append(b"A").unwrap();
        let b = wal.append_unsynced(b"B lost").unwrap();
        wal.append_unsynced(b"C kept").unwrap();
        drop(wal);
        let path = segment_path(folder.path(), 1);
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&vec![0; (b.offset - a.offset) as usize], a.offset)
            .unwrap();
        drop(file);
        let (mut wal, replayed) =
            Wal::open(folder.path(), Position::default(), LogFormat::Current).unwrap();
        assert_eq!(payloads(&replayed), vec![&b"A"[..]]);
        assert_eq!(
            wal.append(b"B anew").unwrap(),
            b,
            "the new record ends where B did"
        );
        drop(wal);
        let (_, replayed) =
            Wal::open(folder.path(), Position::default(), LogFormat::Current).unwrap();
        assert_eq!(payloads(&replayed), vec![&b"A"[..], b"B anew"]);
    }

    #[test]
    fn files_made_ready_before_a_crash_are_not_segments_and_are_made_anew() {
        let folder = tempfile::tempdir().unwrap();
        let (mut wal, _) = plain(folder.path(), Position::default()).unwrap();
        wal.append(b"kept").unwrap();
        drop(wal);
        fs::write(folder.path().join(PREPARING), [1, 2, 3]).unwrap();
        fs::write(folder.path().join(PREPARED), [0, 0, 0, 9]).unwrap();
        let (mut wal, replayed) =
            Wal::open(folder.path(), Position::default(), LogFormat::Current).unwrap();
        assert_eq!(payloads(&replayed), vec![&b"kept"[..]]);
        // The log starts making its first ready file at once, under the same name as the stale
        // one: look once that is done.
        assert!(wal.next_is_ready(true));
        assert!(!folder.path().join(PREPARING).exists());
        assert_eq!(
            fs::metadata(folder.path().join(PREPARED)).unwrap().len(),
            SEGMENT_BYTES_MAX,
            "a whole new ready file"
        );
        assert_eq!(list_segments(folder.path()).unwrap(), vec![1]);
    }

    #[test]
    fn zeros_before_the_last_segment_are_corruption() {
        // Only the last segment may end in zeros: a closed one was cut to its records.
        let folder = tempfile::tempdir().unwrap();
        two_segments(folder.path());
        let first = segment_path(folder.path(), 1);
        OpenOptions::new()
            .append(true)
            .open(&first)
            .unwrap()
            .write_all(&[0; 8])
            .unwrap();
        assert!(matches!(
            Wal::open(folder.path(), Position::default(), LogFormat::Current),
            Err(WalError::Corrupted { .. })
        ));
    }

    #[test]
    fn without_a_ready_file_segments_are_plain_files_and_nothing_waits() {
        let folder = tempfile::tempdir().unwrap();
        // The ready file cannot be made: its path is taken by a folder.
        let (mut wal, _) = plain(folder.path(), Position::default()).unwrap();
        fs::create_dir(folder.path().join(PREPARING)).unwrap();
        wal.segment_bytes = 64;
        wal.prepare = true;
        wal.prepare_next();
        assert!(!wal.next_is_ready(true), "making the ready file failed");
        let record = [7u8; 40];
        for _ in 0..4 {
            wal.append(&record).unwrap();
        }
        assert_eq!(wal.segment, 2, "a full segment moved on to a plain file");
        assert!(!wal.ready_file);
        drop(wal);
        fs::remove_dir(folder.path().join(PREPARING)).unwrap();
        let (_, replayed) =
            Wal::open(folder.path(), Position::default(), LogFormat::Current).unwrap();
        assert_eq!(replayed.len(), 4);
    }

    #[test]
    fn a_plain_format_log_reads_a_header_of_zeros_as_an_empty_record() {
        let folder = tempfile::tempdir().unwrap();
        let (mut wal, _) = plain(folder.path(), Position::default()).unwrap();
        wal.append(b"before").unwrap();
        drop(wal);
        let path = segment_path(folder.path(), 1);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&[0; 8]).unwrap();
        file.write_all(&[0, 0, 0, 5]).unwrap();
        file.write_all(&crc32fast::hash(b"after").to_be_bytes())
            .unwrap();
        file.write_all(b"after").unwrap();
        drop(file);
        let (mut wal, replayed) =
            Wal::open(folder.path(), Position::default(), LogFormat::Plain).unwrap();
        assert_eq!(payloads(&replayed), vec![&b"before"[..], b"after"]);
        assert!(
            !wal.next_is_ready(true),
            "a plain log makes no ready file until it is moved to the current format"
        );
        drop(wal);
        let (_, replayed) =
            Wal::open(folder.path(), Position::default(), LogFormat::Current).unwrap();
        assert_eq!(
            payloads(&replayed),
            vec![&b"before"[..]],
            "the current rules stop at zeros"
        );
    }

    #[test]
    fn an_empty_record_is_refused() {
        let folder = tempfile::tempdir().unwrap();
        let (mut wal, _) = plain(folder.path(), Position::default()).unwrap();
        let before = wal.position();
        assert!(matches!(wal.append(b""), Err(WalError::Empty)));
        assert_eq!(wal.position(), before, "nothing was written");
    }

    #[test]
    fn records_come_back_in_order_after_a_position() {
        let folder = tempfile::tempdir().unwrap();
        let (mut wal, replayed) = plain(folder.path(), Position::default()).unwrap();
        assert!(replayed.is_empty());
        let first = wal.append(b"one").unwrap();
        let second = wal.append(b"two").unwrap();
        wal.append(b"three").unwrap();
        drop(wal);
        let (_, all) = plain(folder.path(), Position::default()).unwrap();
        assert_eq!(payloads(&all), vec![&b"one"[..], b"two", b"three"]);
        assert_eq!(all[1].end, second);
        let (_, after) = plain(folder.path(), first).unwrap();
        assert_eq!(after.len(), 2);
        assert_eq!(after[0].payload, b"two");
    }

    #[test]
    fn a_torn_last_record_is_cut_off_and_the_log_goes_on() {
        let folder = tempfile::tempdir().unwrap();
        let (mut wal, _) = plain(folder.path(), Position::default()).unwrap();
        wal.append(b"kept").unwrap();
        let end = wal.position();
        drop(wal);
        let path = segment_path(folder.path(), 1);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&[0, 0, 0, 9, 1, 2, 3, 4, b'x']).unwrap();
        drop(file);
        let (mut wal, replayed) = plain(folder.path(), Position::default()).unwrap();
        assert_eq!(replayed.len(), 1);
        assert_eq!(wal.position(), end, "the torn record is gone");
        wal.append(b"next").unwrap();
        drop(wal);
        let (_, replayed) = plain(folder.path(), Position::default()).unwrap();
        assert_eq!(payloads(&replayed), vec![&b"kept"[..], b"next"]);
    }

    #[test]
    fn a_bad_record_before_the_end_is_corruption() {
        let folder = tempfile::tempdir().unwrap();
        two_segments(folder.path());
        let path = segment_path(folder.path(), 1);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&path, bytes).unwrap();
        assert!(matches!(
            plain(folder.path(), Position::default()),
            Err(WalError::Corrupted { .. })
        ));
    }

    #[test]
    fn segments_before_a_position_are_forgotten() {
        let folder = tempfile::tempdir().unwrap();
        let (mut wal, _) = plain(folder.path(), Position::default()).unwrap();
        wal.append(b"old").unwrap();
        wal.rotate().unwrap();
        let kept = wal.append(b"new").unwrap();
        drop(wal);
        Wal::forget_before(folder.path(), kept).unwrap();
        let (_, replayed) = plain(folder.path(), Position::default()).unwrap();
        assert_eq!(replayed.len(), 1);
        assert_eq!(replayed[0].payload, b"new");
    }

    #[test]
    fn two_callers_forgetting_the_same_segments_both_succeed() {
        let folder = tempfile::tempdir().unwrap();
        let (mut wal, _) = plain(folder.path(), Position::default()).unwrap();
        for _ in 0..300 {
            wal.append(b"old").unwrap();
            wal.rotate().unwrap();
        }
        let kept = wal.append(b"new").unwrap();
        drop(wal);
        // Both list the segments, then race to delete them: each meets some the other deleted.
        let start = std::sync::Barrier::new(2);
        std::thread::scope(|scope| {
            let forgetters: Vec<_> = (0..2)
                .map(|_| {
                    scope.spawn(|| {
                        start.wait();
                        Wal::forget_before(folder.path(), kept)
                    })
                })
                .collect();
            for forgetter in forgetters {
                forgetter.join().unwrap().unwrap();
            }
        });
        assert_eq!(list_segments(folder.path()).unwrap(), vec![kept.segment]);
    }

    #[test]
    fn a_lazy_record_is_read_back_and_synced_before_a_new_segment() {
        let folder = tempfile::tempdir().unwrap();
        let (mut wal, _) = plain(folder.path(), Position::default()).unwrap();
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
        let (_, replayed) = plain(folder.path(), Position::default()).unwrap();
        assert_eq!(
            payloads(&replayed),
            vec![&b"synced"[..], b"lazy", b"lazy too", b"and synced"]
        );
    }

    #[test]
    fn after_losing_records_a_reader_holds_new_ones_end_past_them() {
        // A lazy record was applied elsewhere (the reader's position is past it), then lost with
        // the machine: the records that follow must not end at or before that position, or the
        // next opening would skip them as applied.
        let folder = tempfile::tempdir().unwrap();
        let (mut wal, _) = plain(folder.path(), Position::default()).unwrap();
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
        let (mut wal, replayed) = plain(folder.path(), applied).unwrap();
        assert!(replayed.is_empty());
        let next = wal.append(b"new").unwrap();
        assert!(next > applied, "{next:?} must end after {applied:?}");
        drop(wal);
        let (_, replayed) = plain(folder.path(), applied).unwrap();
        assert_eq!(payloads(&replayed), vec![&b"new"[..]]);
    }

    /// Whether the file system under `folder` takes direct I/O (the log falls back to plain
    /// writes where it does not, so these tests say which path they covered).
    fn takes_direct_io(folder: &Path) -> bool {
        use std::os::unix::fs::OpenOptionsExt;
        let path = folder.join("direct-probe");
        let opened = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .is_ok();
        let _ = fs::remove_file(path);
        opened
    }

    /// Records of `size` bytes whose bytes tell them apart.
    fn record(number: usize, size: usize) -> Vec<u8> {
        (0..size).map(|byte| (number * 31 + byte) as u8).collect()
    }

    #[test]
    fn records_of_every_size_cross_block_boundaries_and_read_back_whole() {
        let folder = tempfile::tempdir().unwrap();
        let segment_bytes = 1 << 20;
        let (mut wal, _) = with_ready_files(folder.path(), segment_bytes);
        let sizes = [
            1, 7, 4088, 4089, 1, 4096, 10_000, 3, 8191, 12_289, 500, 4080,
        ];
        let mut written = Vec::new();
        for (number, size) in sizes.iter().copied().cycle().take(60).enumerate() {
            let payload = record(number, size);
            if number % 3 == 1 {
                wal.append_unsynced(&payload).unwrap();
            } else {
                wal.append(&payload).unwrap();
            }
            written.push(payload);
        }
        assert_eq!(wal.segment, 1, "all in the first ready segment");
        assert_eq!(
            wal.direct.is_some(),
            takes_direct_io(folder.path()),
            "direct I/O is used where the file system takes it"
        );
        let end = wal.position();
        drop(wal);
        let path = segment_path(folder.path(), 1);
        let bytes = fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, segment_bytes, "written in place");
        assert!(
            bytes[end.offset as usize..].iter().all(|byte| *byte == 0),
            "zeros after the last record"
        );
        let (wal, replayed) =
            Wal::open(folder.path(), Position::default(), LogFormat::Current).unwrap();
        assert_eq!(wal.position(), end);
        assert_eq!(
            payloads(&replayed),
            written.iter().map(Vec::as_slice).collect::<Vec<_>>()
        );
    }

    #[test]
    fn with_direct_io_a_lazy_record_waits_for_the_next_sync_or_a_write_out() {
        let folder = tempfile::tempdir().unwrap();
        if !takes_direct_io(folder.path()) {
            eprintln!("this file system refuses direct I/O: lazy records are written at once");
            return;
        }
        let (mut wal, _) = with_ready_files(folder.path(), 1 << 20);
        let path = segment_path(folder.path(), 1);
        let synced = wal.append(b"synced").unwrap();
        let lazy = wal.append_unsynced(b"lazy").unwrap();
        assert!(wal.unwritten_since().is_some());
        let on_disk = |upto: Position| fs::read(&path).unwrap()[..upto.offset as usize].to_vec();
        assert!(
            on_disk(lazy)[synced.offset as usize..]
                .iter()
                .all(|b| *b == 0),
            "the lazy record is held in memory"
        );
        wal.write_out().unwrap();
        assert!(wal.unwritten_since().is_none());
        assert_eq!(&on_disk(lazy)[synced.offset as usize + 8..], b"lazy");
        let lazy_too = wal.append_unsynced(b"lazy too").unwrap();
        let end = wal.append(b"and synced").unwrap();
        assert!(
            wal.unwritten_since().is_none(),
            "a sync writes the lazy records first"
        );
        assert_eq!(&on_disk(lazy_too)[lazy.offset as usize + 8..], b"lazy too");
        // A process that ends without a sync (say, a clean stop) leaves its lazy records in
        // the file, as plain writes did.
        wal.append_unsynced(b"last, lazy").unwrap();
        drop(wal);
        let (_, replayed) = Wal::open(folder.path(), end, LogFormat::Current).unwrap();
        assert_eq!(payloads(&replayed), vec![&b"last, lazy"[..]]);
    }
}
