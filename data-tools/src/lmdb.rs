//! LMDBs of serialized `Datum`, laid out as Caffe lays them out: a directory holding
//! `data.mdb` and `lock.mdb`, one unnamed database, keys sorted bytewise.
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use ::lmdb::{Cursor, Database, Environment, EnvironmentFlags, Transaction, WriteFlags};
use crema_proto::caffe::Datum;
use prost::Message;

use crate::error::{DataError, Result};

/// Entries per write transaction, as in Caffe's converters.
const COMMIT_EVERY: usize = 1000;
/// Starting map size; it doubles whenever LMDB reports MDB_MAP_FULL.
const DEFAULT_MAP_SIZE: usize = 64 << 20;
/// Entries the reader copies out per read transaction.
const READ_BATCH: usize = 256;

/// Writes Datums into a new LMDB, committing every 1000 entries and growing the map as needed.
///
/// Call [`DatumWriter::finish`]: a writer dropped without it deletes the half-written database,
/// so that a failed conversion can simply be run again.
pub struct DatumWriter {
    env: Environment,
    db: Database,
    path: PathBuf,
    map_size: usize,
    pending: Vec<(Vec<u8>, Vec<u8>)>,
    written: usize,
    finished: bool,
}

impl DatumWriter {
    /// Creates the LMDB directory `path`; an existing one is refused unless `overwrite`.
    pub fn create(path: &Path, overwrite: bool) -> Result<Self> {
        Self::with_initial_map_size(path, overwrite, DEFAULT_MAP_SIZE)
    }

    /// As [`DatumWriter::create`], starting from a map of `map_size` bytes (it still grows).
    pub fn with_initial_map_size(path: &Path, overwrite: bool, map_size: usize) -> Result<Self> {
        prepare_output_dir(path, overwrite)?;
        let map_size = map_size.max(1 << 16);
        // No fsync per batch: an interrupted conversion is unusable anyway, and `finish` syncs.
        let env = Environment::new()
            .set_flags(EnvironmentFlags::NO_SYNC)
            .set_map_size(map_size)
            .open(path)
            .map_err(|e| DataError::lmdb(path, "open for writing", e))?;
        let db = env
            .open_db(None)
            .map_err(|e| DataError::lmdb(path, "open database", e))?;
        Ok(DatumWriter {
            env,
            db,
            path: path.to_path_buf(),
            map_size,
            pending: Vec::with_capacity(COMMIT_EVERY),
            written: 0,
            finished: false,
        })
    }

    /// Queues `datum` under `key`; a full batch of 1000 is committed.
    pub fn put(&mut self, key: &str, datum: &Datum) -> Result<()> {
        self.put_raw(key.as_bytes(), datum.encode_to_vec())
    }

    /// Queues an already serialized value under `key`.
    pub fn put_raw(&mut self, key: &[u8], value: Vec<u8>) -> Result<()> {
        if key.is_empty() || key.len() > 511 {
            return Err(DataError::InvalidArgument(format!(
                "LMDB {}: key of {} bytes; LMDB keys must be 1..=511 bytes (shorten the file paths)",
                self.path.display(),
                key.len()
            )));
        }
        self.pending.push((key.to_vec(), value));
        if self.pending.len() >= COMMIT_EVERY {
            self.commit()?;
        }
        Ok(())
    }

    /// Entries queued or committed so far.
    pub fn len(&self) -> usize {
        self.written + self.pending.len()
    }

    /// Whether nothing has been put yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Commits what is pending, syncs to disk and returns the number of entries put.
    pub fn finish(mut self) -> Result<usize> {
        self.commit()?;
        self.env
            .sync(true)
            .map_err(|e| DataError::lmdb(&self.path, "sync", e))?;
        self.finished = true;
        Ok(self.written)
    }

    /// Writes the pending batch in one transaction, doubling the map size on MDB_MAP_FULL.
    fn commit(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        loop {
            match self.try_commit() {
                Ok(()) => break,
                Err(::lmdb::Error::MapFull) => {
                    // The failed transaction is dropped (aborted) by now, so resizing is allowed.
                    let new_size = self.map_size.checked_mul(2).ok_or_else(|| {
                        DataError::lmdb(&self.path, "grow map", ::lmdb::Error::MapFull)
                    })?;
                    self.env
                        .set_map_size(new_size)
                        .map_err(|e| DataError::lmdb(&self.path, "grow map", e))?;
                    tracing::debug!(
                        "LMDB {}: map size doubled to {} MiB",
                        self.path.display(),
                        new_size >> 20
                    );
                    self.map_size = new_size;
                }
                Err(e) => return Err(DataError::lmdb(&self.path, "write", e)),
            }
        }
        self.written += self.pending.len();
        self.pending.clear();
        Ok(())
    }

    fn try_commit(&self) -> std::result::Result<(), ::lmdb::Error> {
        let mut txn = self.env.begin_rw_txn()?;
        for (key, value) in &self.pending {
            txn.put(self.db, key, value, WriteFlags::empty())?;
        }
        txn.commit()
    }
}

impl Drop for DatumWriter {
    fn drop(&mut self) {
        if !self.finished {
            // Only our own two files: the directory was created (or emptied) by `create`.
            for name in ["data.mdb", "lock.mdb"] {
                let _ = std::fs::remove_file(self.path.join(name));
            }
            let _ = std::fs::remove_dir(&self.path);
        }
    }
}

/// Makes `path` an empty directory, refusing to touch anything that is not an LMDB of ours.
fn prepare_output_dir(path: &Path, overwrite: bool) -> Result<()> {
    if path.exists() {
        if !overwrite {
            return Err(DataError::DbExists {
                path: path.to_path_buf(),
            });
        }
        if !path.is_dir() {
            return Err(DataError::NotLmdb {
                path: path.to_path_buf(),
                reason: "it is a file, and --overwrite only replaces LMDB directories; remove it yourself".into(),
            });
        }
        let entries = std::fs::read_dir(path).map_err(|e| DataError::io("list", path, e))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| DataError::io("list", path, e))?;
            names.push(entry.file_name());
        }
        if let Some(other) = names.iter().find(|n| *n != "data.mdb" && *n != "lock.mdb") {
            return Err(DataError::NotLmdb {
                path: path.to_path_buf(),
                reason: format!(
                    "it holds {:?}, so --overwrite will not delete it; remove it yourself or choose another name",
                    other
                ),
            });
        }
        for name in names {
            let file = path.join(name);
            std::fs::remove_file(&file).map_err(|e| DataError::io("remove", file, e))?;
        }
    } else {
        std::fs::create_dir_all(path).map_err(|e| DataError::io("create directory", path, e))?;
    }
    Ok(())
}

/// Opens an existing LMDB environment read-only, with errors that name the path.
/// Opens an LMDB for reading, sharing one environment among all readers of the same database in
/// this process. LMDB must not be opened twice by one process: closing one handle drops the
/// other's file locks, and a later open may then reset the lock file under a live reader (seen as
/// a database that suddenly reads as empty when data-parallel workers open it at once).
pub(crate) fn open_read_only(path: &Path) -> Result<(SharedEnv, Database)> {
    type Open = HashMap<PathBuf, Weak<(Environment, Database)>>;
    static OPEN: OnceLock<Mutex<Open>> = OnceLock::new();
    let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut open = OPEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(shared) = open.get(&key).and_then(Weak::upgrade) {
        let db = shared.1;
        return Ok((SharedEnv(shared), db));
    }
    open.retain(|_, w| w.strong_count() > 0);
    let (env, db) = open_environment(path)?;
    let shared = Arc::new((env, db));
    open.insert(key, Arc::downgrade(&shared));
    Ok((SharedEnv(shared), db))
}

/// A read-only environment shared by every reader of one database in this process.
#[derive(Clone)]
pub(crate) struct SharedEnv(Arc<(Environment, Database)>);

impl std::ops::Deref for SharedEnv {
    type Target = Environment;
    fn deref(&self) -> &Environment {
        &self.0 .0
    }
}

fn open_environment(path: &Path) -> Result<(Environment, Database)> {
    if !path.exists() {
        return Err(DataError::DbMissing {
            path: path.to_path_buf(),
        });
    }
    if !path.is_dir() {
        return Err(DataError::NotLmdb {
            path: path.to_path_buf(),
            reason: "it is a file, an LMDB is a directory holding data.mdb".into(),
        });
    }
    if !path.join("data.mdb").is_file() {
        return Err(DataError::NotLmdb {
            path: path.to_path_buf(),
            reason: "the directory has no data.mdb".into(),
        });
    }
    let open = |flags: EnvironmentFlags| {
        Environment::new()
            .set_flags(flags | EnvironmentFlags::READ_ONLY | EnvironmentFlags::NO_TLS)
            .open(path)
    };
    let env = match open(EnvironmentFlags::empty()) {
        Ok(env) => env,
        // A read-only directory without lock.mdb: read without the lock, as nobody can write there.
        Err(::lmdb::Error::Other(code))
            if std::io::Error::from_raw_os_error(code).kind()
                == std::io::ErrorKind::PermissionDenied =>
        {
            open(EnvironmentFlags::NO_LOCK)
                .map_err(|e| DataError::lmdb(path, "open for reading", e))?
        }
        Err(::lmdb::Error::Invalid) | Err(::lmdb::Error::VersionMismatch) => {
            return Err(DataError::NotLmdb {
                path: path.to_path_buf(),
                reason:
                    "data.mdb is not an LMDB data file (or was written by an incompatible LMDB)"
                        .into(),
            })
        }
        Err(e) => return Err(DataError::lmdb(path, "open for reading", e)),
    };
    let db = env
        .open_db(None)
        .map_err(|e| DataError::lmdb(path, "open database", e))?;
    Ok((env, db))
}

/// Parses an LMDB value as a Datum, naming the database and key on failure.
pub fn parse_datum(path: &Path, key: &[u8], value: &[u8]) -> Result<Datum> {
    Datum::decode(value).map_err(|e| DataError::BadDatum {
        path: path.to_path_buf(),
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    })
}

/// Reads Datums in key order forever, starting over at the first after the last (as Caffe's
/// Data layer does). Holds no transaction between calls, so it can move to a prefetch thread.
pub struct DatumReader {
    env: SharedEnv,
    db: Database,
    path: PathBuf,
    len: usize,
    buf: VecDeque<(Vec<u8>, Vec<u8>)>,
    /// The last key visited (copied or passed over); the next batch starts after it.
    last_key: Option<Vec<u8>>,
    /// Keep one entry, then pass over `stride - 1` (see [`DatumReader::set_stride`]).
    stride: usize,
    /// Entries still to pass over before the next one is kept.
    pass_over: usize,
    /// False once [`DatumReader::keys_only`] was called: values stay in the database.
    copy_values: bool,
}

/// Looks Datums up by key, on any thread and several at once, each lookup in a read transaction
/// of its own: with [`DatumReader::keys_only`], a reading thread hands out keys and the threads
/// that parse the values copy them straight out of the database.
#[derive(Clone)]
pub struct DatumLookup {
    env: SharedEnv,
    db: Database,
    path: PathBuf,
}

impl DatumLookup {
    /// The Datum stored under `key`.
    pub fn get(&self, key: &[u8]) -> Result<Datum> {
        let path = &self.path;
        let txn = self
            .env
            .begin_ro_txn()
            .map_err(|e| DataError::lmdb(path, "begin read", e))?;
        let value = txn
            .get(self.db, &key)
            .map_err(|e| DataError::lmdb(path, "look up a key it listed", e))?;
        parse_datum(path, key, value)
    }
}

impl DatumReader {
    /// Opens the LMDB at `path` for reading; it must exist and hold at least one entry.
    pub fn open(path: &Path) -> Result<Self> {
        let (env, db) = open_read_only(path)?;
        let len = env
            .stat()
            .map_err(|e| DataError::lmdb(path, "read statistics", e))?
            .entries();
        if len == 0 {
            return Err(DataError::EmptyDb {
                path: path.to_path_buf(),
            });
        }
        Ok(DatumReader {
            env,
            db,
            path: path.to_path_buf(),
            len,
            buf: VecDeque::new(),
            last_key: None,
            stride: 1,
            pass_over: 0,
            copy_values: true,
        })
    }

    /// Number of entries in the database.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: opening refuses an empty database.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next Datum in key order, wrapping around to the first after the last.
    pub fn next_datum(&mut self) -> Result<Datum> {
        let (key, value) = self.next_raw()?;
        self.datum_of(&key, &value)
    }

    /// The Datum of an entry [`DatumReader::next_raw`] returned, looked up again if only its key
    /// was kept.
    fn datum_of(&self, key: &[u8], value: &[u8]) -> Result<Datum> {
        if self.copy_values {
            parse_datum(&self.path, key, value)
        } else {
            self.lookup().get(key)
        }
    }

    /// The Datum [`DatumReader::next_datum`] will return, without moving past it
    /// (e.g. to size the data blobs before the first batch).
    pub fn peek_datum(&mut self) -> Result<Datum> {
        let (key, value) = self.next_raw()?;
        let datum = self.datum_of(&key, &value);
        self.buf.push_front((key, value));
        datum
    }

    /// The next entry with its key, wrapping around like [`DatumReader::next_datum`].
    pub fn next_entry(&mut self) -> Result<(String, Datum)> {
        let (key, value) = self.next_raw()?;
        let datum = self.datum_of(&key, &value)?;
        Ok((String::from_utf8_lossy(&key).into_owned(), datum))
    }

    /// From now on, lists keys only (for [`DatumReader::next_key`]; no value is copied), and
    /// returns the lookup that fetches the Datum of a key on other threads.
    pub fn keys_only(&mut self) -> DatumLookup {
        self.copy_values = false;
        self.lookup()
    }

    fn lookup(&self) -> DatumLookup {
        DatumLookup {
            env: self.env.clone(),
            db: self.db,
            path: self.path.clone(),
        }
    }

    /// The next key in the order of [`DatumReader::next_datum`], as stored (for
    /// [`DatumLookup::get`]).
    pub fn next_key(&mut self) -> Result<Vec<u8>> {
        Ok(self.next_raw()?.0)
    }

    /// Skips `n` of the entries this reader would return (wrapping around), e.g. to give each
    /// solver rank its own offset. Entries not yet read are passed over without being copied.
    pub fn skip(&mut self, n: usize) -> Result<()> {
        let mut n = n;
        while n > 0 && self.buf.pop_front().is_some() {
            n -= 1;
        }
        self.pass_over = (self.pass_over + n % self.len * self.stride) % self.len;
        Ok(())
    }

    /// From now on, returns one entry, then passes over `stride - 1` without copying them, and so
    /// on around the database: with [`DatumReader::skip`]`(r)` first, worker `r` of `stride` reads
    /// entries r, r + stride, r + 2 stride, ... (modulo the length), as Caffe shards data.
    pub fn set_stride(&mut self, stride: usize) {
        self.stride = stride.max(1);
    }

    fn next_raw(&mut self) -> Result<(Vec<u8>, Vec<u8>)> {
        // Each pass over the database keeps at least one entry unless more than a length is
        // still to be passed over; a few passes always suffice.
        let passes = 2 + (self.pass_over + self.stride) / self.len.max(1);
        for _ in 0..passes {
            if let Some(entry) = self.buf.pop_front() {
                return Ok(entry);
            }
            self.fill()?;
            if self.buf.is_empty() {
                // Reached the end: start over from the first key.
                self.last_key = None;
            }
        }
        self.buf.pop_front().ok_or_else(|| DataError::EmptyDb {
            path: self.path.clone(),
        })
    }

    /// Copies the next batch of entries after `last_key` out of one read transaction.
    fn fill(&mut self) -> Result<()> {
        let path = &self.path;
        let txn = self
            .env
            .begin_ro_txn()
            .map_err(|e| DataError::lmdb(path, "begin read", e))?;
        let mut cursor = txn
            .open_ro_cursor(self.db)
            .map_err(|e| DataError::lmdb(path, "open cursor", e))?;
        let iter = match &self.last_key {
            Some(key) => cursor.iter_from(key),
            None => cursor.iter_start(),
        };
        let mut visited: Option<Vec<u8>> = None;
        for item in iter {
            let (key, value) = item.map_err(|e| DataError::lmdb(path, "read", e))?;
            if self.last_key.as_deref() == Some(key) {
                continue;
            }
            visited = Some(key.to_vec());
            if self.pass_over > 0 {
                self.pass_over -= 1;
                continue;
            }
            let value = if self.copy_values {
                value.to_vec()
            } else {
                Vec::new()
            };
            self.buf.push_back((key.to_vec(), value));
            self.pass_over = self.stride - 1;
            if self.buf.len() >= READ_BATCH {
                break;
            }
        }
        if visited.is_some() {
            self.last_key = visited;
        }
        Ok(())
    }
}

/// Every entry of the LMDB at `path`, in key order, with keys as strings.
pub fn read_all(path: &Path) -> Result<Vec<(String, Datum)>> {
    let (env, db) = open_read_only(path)?;
    let txn = env
        .begin_ro_txn()
        .map_err(|e| DataError::lmdb(path, "begin read", e))?;
    let mut cursor = txn
        .open_ro_cursor(db)
        .map_err(|e| DataError::lmdb(path, "open cursor", e))?;
    let mut out = Vec::new();
    for item in cursor.iter_start() {
        let (key, value) = item.map_err(|e| DataError::lmdb(path, "read", e))?;
        out.push((
            String::from_utf8_lossy(key).into_owned(),
            parse_datum(path, key, value)?,
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datum(i: usize) -> Datum {
        Datum {
            channels: Some(1),
            height: Some(2),
            width: Some(2),
            data: Some(vec![i as u8; 4]),
            label: Some(i as i32),
            ..Default::default()
        }
    }

    #[test]
    fn keys_only_reader_feeds_lookups_on_other_threads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut w = DatumWriter::create(&path, false).unwrap();
        for i in 0..300 {
            w.put(&format!("{i:08}"), &datum(i)).unwrap();
        }
        w.finish().unwrap();
        let mut r = DatumReader::open(&path).unwrap();
        r.skip(5).unwrap();
        r.set_stride(2);
        let lookup = r.keys_only();
        let keys: Vec<Vec<u8>> = (0..200).map(|_| r.next_key().unwrap()).collect();
        // Entries 5, 7, ..., 299, then 1, 3, ... around the database.
        assert_eq!(keys[0], b"00000005");
        assert_eq!(keys[148], b"00000001");
        let labels: Vec<i32> = std::thread::scope(|s| {
            let parts: Vec<_> = keys
                .chunks(50)
                .map(|part| {
                    let lookup = lookup.clone();
                    s.spawn(move || {
                        part.iter()
                            .map(|k| lookup.get(k).unwrap().label())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            parts.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let want: Vec<i32> = keys
            .iter()
            .map(|k| std::str::from_utf8(k).unwrap().parse().unwrap())
            .collect();
        assert_eq!(labels, want);
        // The reader itself still returns whole Datums.
        assert_eq!(r.next_datum().unwrap().label(), 105);
        let e = lookup.get(b"missing").unwrap_err().to_string();
        assert!(e.contains("db") && e.contains("look up"), "{e}");
    }

    #[test]
    fn reader_wraps_and_skips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut w = DatumWriter::create(&path, false).unwrap();
        for i in 0..600 {
            w.put(&format!("{i:08}"), &datum(i)).unwrap();
        }
        assert_eq!(w.finish().unwrap(), 600);
        let mut r = DatumReader::open(&path).unwrap();
        assert_eq!(r.len(), 600);
        assert_eq!(r.peek_datum().unwrap().label(), 0);
        let labels: Vec<i32> = (0..1201).map(|_| r.next_datum().unwrap().label()).collect();
        assert_eq!(r.peek_datum().unwrap().label(), 1);
        assert_eq!(r.peek_datum().unwrap().label(), 1);
        assert_eq!(labels[599], 599);
        assert_eq!(labels[600], 0);
        assert_eq!(labels[1200], 0);
        r.skip(1199).unwrap(); // at position 1201 = 1 (mod 600); 1 + 1199 = 1200 = 0 (mod 600)
        assert_eq!(r.next_datum().unwrap().label(), 0);
        r.skip(10).unwrap();
        assert_eq!(r.next_entry().unwrap().0, "00000011");
    }

    #[test]
    fn strided_readers_share_the_database_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut w = DatumWriter::create(&path, false).unwrap();
        for i in 0..5 {
            w.put(&format!("{i:08}"), &datum(i)).unwrap();
        }
        w.finish().unwrap();
        let read = |offset: usize, stride: usize, n: usize| -> Vec<i32> {
            let mut r = DatumReader::open(&path).unwrap();
            r.skip(offset).unwrap();
            r.set_stride(stride);
            (0..n).map(|_| r.next_datum().unwrap().label()).collect()
        };
        // Global positions r, r+2, ... modulo 5.
        assert_eq!(read(0, 2, 6), [0, 2, 4, 1, 3, 0]);
        assert_eq!(read(1, 2, 6), [1, 3, 0, 2, 4, 1]);
        assert_eq!(read(2, 3, 4), [2, 0, 3, 1]);
        // More workers than entries still works.
        assert_eq!(read(6, 7, 3), [1, 3, 0]);
        // skip counts the reader's own entries once strided.
        let mut r = DatumReader::open(&path).unwrap();
        r.set_stride(2);
        assert_eq!(r.next_datum().unwrap().label(), 0);
        r.skip(2).unwrap();
        assert_eq!(r.next_datum().unwrap().label(), 1); // passed over 2 and 4
    }

    #[test]
    fn map_grows_from_tiny() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut w = DatumWriter::with_initial_map_size(&path, false, 64 << 10).unwrap();
        let big = Datum {
            data: Some(vec![7u8; 3 * 32 * 32]),
            ..Default::default()
        };
        for i in 0..2500 {
            w.put(&format!("{i:08}"), &big).unwrap();
        }
        assert_eq!(w.finish().unwrap(), 2500);
        assert_eq!(read_all(&path).unwrap().len(), 2500);
    }

    #[test]
    fn existing_refused_and_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut w = DatumWriter::create(&path, false).unwrap();
        w.put("a", &datum(1)).unwrap();
        w.finish().unwrap();
        let err = DatumWriter::create(&path, false).err().unwrap().to_string();
        assert!(err.contains("--overwrite") && err.contains("db"), "{err}");
        let mut w = DatumWriter::create(&path, true).unwrap();
        w.put("b", &datum(2)).unwrap();
        w.finish().unwrap();
        let all = read_all(&path).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].0, "b");
    }

    #[test]
    fn overwrite_refuses_foreign_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("precious.txt"), b"x").unwrap();
        let err = DatumWriter::create(dir.path(), true)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("precious.txt"), "{err}");
        assert!(dir.path().join("precious.txt").exists());
    }

    #[test]
    fn unfinished_writer_removes_its_db() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let mut w = DatumWriter::create(&path, false).unwrap();
            w.put("a", &datum(1)).unwrap();
        }
        assert!(!path.exists());
    }

    #[test]
    fn open_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope_lmdb");
        let err = DatumReader::open(&missing).err().unwrap().to_string();
        assert!(
            err.contains("nope_lmdb") && err.contains("does not exist"),
            "{err}"
        );
        let err = DatumReader::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("no data.mdb"), "{err}");
        std::fs::write(dir.path().join("data.mdb"), vec![0u8; 8192]).unwrap();
        let err = DatumReader::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("not an LMDB"), "{err}");
        let file = dir.path().join("data.mdb");
        let err = read_all(&file).err().unwrap().to_string();
        assert!(err.contains("is a file"), "{err}");
    }

    #[test]
    fn reader_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<DatumReader>();
        assert_send::<DatumWriter>();
    }
}
