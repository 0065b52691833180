//! Per-test temporary directories.

use std::path::{Path, PathBuf};

use crate::HarnessError;

/// `sun_path` is 108 bytes on Linux, including the terminating NUL.
const MAX_SOCKET_PATH_BYTES: usize = 107;

/// A temporary directory removed (with everything in it) when dropped.
///
/// Lives under the system temporary directory with a short name, because the UNIX sockets the
/// peers create inside it must fit in `sun_path`.
#[derive(Debug)]
pub struct TestDir {
    dir: tempfile::TempDir,
}

impl TestDir {
    /// Creates a fresh directory named `tlpb-<label>-XXXXXX`.
    pub fn new(label: &str) -> Result<Self, HarnessError> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("tlpb-{label}-"))
            .tempdir()
            .map_err(HarnessError::TempDir)?;
        Ok(Self { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The path for a UNIX socket called `name` in this directory, checked against `sun_path`.
    pub fn socket_path(&self, name: &str) -> Result<PathBuf, HarnessError> {
        let path = self.join(name);
        let len = path.as_os_str().len();
        if len > MAX_SOCKET_PATH_BYTES {
            return Err(HarnessError::SocketPathTooLong { path, len, max: MAX_SOCKET_PATH_BYTES });
        }
        Ok(path)
    }
}
