//! A file appended to a line at a time and rotated by size: `path` is renamed
//! `path.1` (and `path.1` `path.2`, …) once the next line would take it past its
//! limit, and past `keep` rotated files the oldest is deleted.
//!
//! Written here rather than taken from a crate: a record file must hold whole lines
//! (a rotation crate that cuts at exactly its byte limit splits one across two files),
//! and a file that cannot be created or written must be an error the sidecar reports,
//! not a panic in the writer thread.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// An append-only file of lines, rotated by size.
#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    file: BufWriter<File>,
    written: u64,
}

impl RotatingFile {
    /// Open `path` for appending (created readable and writable by its owner only).
    pub fn open(path: &Path, max_bytes: u64, keep: usize) -> io::Result<Self> {
        let file = open(path)?;
        let written = file.metadata()?.len();
        Ok(Self { path: path.to_owned(), max_bytes, keep, file: BufWriter::with_capacity(64 * 1024, file), written })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append `line` (a whole line, its newline included), rotating first when it
    /// would take the file past its limit. A line longer than the limit gets a file
    /// of its own.
    pub fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        let len = line.len() as u64;
        if self.written > 0 && self.written.saturating_add(len) > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(line)?;
        self.written += len;
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.flush()?;
        let numbered = |n: usize| {
            let mut name = self.path.clone().into_os_string();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        if self.keep == 0 {
            fs::remove_file(&self.path)?;
        } else {
            match fs::remove_file(numbered(self.keep)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            for n in (1..self.keep).rev() {
                match fs::rename(numbered(n), numbered(n + 1)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            fs::rename(&self.path, numbered(1))?;
        }
        self.file = BufWriter::with_capacity(64 * 1024, open(&self.path)?);
        self.written = 0;
        Ok(())
    }
}

fn open(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_whole_lines_and_keeps_only_so_many_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        let mut file = RotatingFile::open(&path, 25, 2).unwrap();
        for n in 0..10 {
            file.write_line(format!("line-{n}-xxxx\n").as_bytes()).unwrap(); // 12 bytes
        }
        file.flush().unwrap();
        let read = |p: &Path| fs::read_to_string(p).unwrap();
        let numbered = |n: u32| dir.path().join(format!("r.jsonl.{n}"));
        assert_eq!(read(&path), "line-8-xxxx\nline-9-xxxx\n");
        assert_eq!(read(&numbered(1)), "line-6-xxxx\nline-7-xxxx\n");
        assert_eq!(read(&numbered(2)), "line-4-xxxx\nline-5-xxxx\n");
        assert!(!numbered(3).exists(), "past `keep`, the oldest is deleted");

        // reopened, it goes on from the size on disk; a line past the limit stands alone
        let mut file = RotatingFile::open(&path, 25, 0).unwrap();
        file.write_line(&[b'y'; 40]).unwrap();
        file.write_line(b"z\n").unwrap();
        file.flush().unwrap();
        assert_eq!(read(&path), "z\n", "keep = 0 deletes instead of renaming");
    }

    #[test]
    fn an_unwritable_path_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        assert!(RotatingFile::open(&dir.path().join("missing/r.jsonl"), 4_096, 1).is_err());
        assert!(RotatingFile::open(dir.path(), 4_096, 1).is_err(), "a directory");
    }
}
