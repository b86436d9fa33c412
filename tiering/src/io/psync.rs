//! Positional reads and writes (pread/pwrite) on the calling thread.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::IoEngine;

/// pread/pwrite engine: works on every kernel and file system.
#[derive(Debug, Default)]
pub struct PsyncEngine;

impl IoEngine for PsyncEngine {
    fn name(&self) -> &'static str {
        "psync"
    }

    fn write_at(&self, file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
        file.write_all_at(buf, offset)
    }

    fn read_at(&self, file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
        file.read_exact_at(buf, offset)
    }

    fn sync(&self, file: &File) -> io::Result<()> {
        file.sync_data()
    }
}
