//! Reading files that hold secrets: refused when others could read or change them.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Why a secret file was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum FileError {
    #[error("cannot read {path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("refusing {path}: mode {mode:04o} is looser than 0600 (run: chmod 600 {path})")]
    Mode { path: PathBuf, mode: u32 },
    #[error("refusing {path}: owned by uid {owner}, not by the current user (uid {euid})")]
    Owner {
        path: PathBuf,
        owner: u32,
        euid: u32,
    },
}

impl FileError {
    pub(crate) fn io(path: &Path, err: &std::io::Error) -> Self {
        FileError::Io {
            path: path.to_owned(),
            reason: err.to_string(),
        }
    }
}

/// The largest secret file read: a credentials file is a few lines, and a
/// file that is really a device or a runaway write must not fill memory.
pub const MAX_SECRET_FILE_BYTES: u64 = 1 << 20;

/// Reads a file that holds secrets. It must be owned by the effective user and
/// have mode 0600 or stricter; the checks use the opened handle so the file
/// cannot be swapped between the check and the read.
pub fn read_private_file(path: &Path) -> Result<Vec<u8>, FileError> {
    let file = File::open(path).map_err(|e| FileError::io(path, &e))?;
    let meta = file.metadata().map_err(|e| FileError::io(path, &e))?;
    check_private(path, meta.mode(), meta.uid())?;
    let mut buf = Vec::new();
    file.take(MAX_SECRET_FILE_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| FileError::io(path, &e))?;
    if buf.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(FileError::Io {
            path: path.to_owned(),
            reason: format!("larger than {MAX_SECRET_FILE_BYTES} bytes"),
        });
    }
    Ok(buf)
}

/// Mode 0600 or stricter (no owner execute, nothing for group or others, no
/// set-id bits) and owned by the effective uid.
pub(crate) fn check_private(path: &Path, mode: u32, owner: u32) -> Result<(), FileError> {
    let mode = mode & 0o7777;
    if mode & 0o7177 != 0 {
        return Err(FileError::Mode {
            path: path.to_owned(),
            mode,
        });
    }
    let euid = rustix::process::geteuid().as_raw();
    if owner != euid {
        return Err(FileError::Owner {
            path: path.to_owned(),
            owner,
            euid,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn mode_rules() {
        let p = Path::new("/x");
        let me = rustix::process::geteuid().as_raw();
        for ok in [0o600, 0o400, 0o200, 0o000, 0o100600] {
            assert!(check_private(p, ok, me).is_ok(), "{ok:o}");
        }
        for bad in [0o640, 0o604, 0o700, 0o660, 0o666, 0o4600, 0o602] {
            let err = check_private(p, bad, me).unwrap_err();
            assert!(matches!(err, FileError::Mode { .. }), "{bad:o}");
        }
        let err = check_private(p, 0o600, me + 1).unwrap_err();
        assert!(matches!(err, FileError::Owner { .. }));
    }

    #[test]
    fn error_names_path_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("creds");
        std::fs::write(&path, "x").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let msg = read_private_file(&path).unwrap_err().to_string();
        assert!(msg.contains(path.to_str().unwrap()), "{msg}");
        assert!(msg.contains("0644"), "{msg}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_private_file(&path).unwrap(), b"x");
    }

    #[test]
    fn an_oversized_secret_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("creds");
        let size = MAX_SECRET_FILE_BYTES as usize;
        std::fs::write(&path, vec![b'#'; size + 1]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let msg = read_private_file(&path).unwrap_err().to_string();
        assert!(msg.contains("larger than"), "{msg}");
        std::fs::write(&path, vec![b'#'; size]).unwrap();
        assert_eq!(read_private_file(&path).unwrap().len(), size);
    }
}
