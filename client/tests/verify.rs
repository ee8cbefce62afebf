//! `verify` against real kernel objects: memfds with every interesting
//! combination of seals, a regular file, a pipe.
//!
//! Each test names its memfd uniquely, so it can count the descriptors and
//! mappings of exactly that file while other tests run in parallel threads
//! of the same process.

mod common;

use common::{mappings_named, memfd_with, open_fds_named};
use memseal::{verify, VerifyError};
use rustix::fs::SealFlags;
use std::os::fd::{AsFd, OwnedFd};

const BYTES: &[u8] = b"sealed bytes nobody can change";

/// Verify a memfd that must be refused, and check that the refusal closed
/// the descriptor and left nothing mapped.
fn refused(name: &str, fd: OwnedFd, expected_size: Option<u64>) -> VerifyError {
    assert_eq!(
        open_fds_named(name),
        1,
        "the test memfd should be open once"
    );
    let err = verify(fd, expected_size).expect_err("verify should refuse it");
    assert_eq!(
        open_fds_named(name),
        0,
        "a refused descriptor must be closed"
    );
    assert_eq!(
        mappings_named(name),
        0,
        "a refused descriptor must not stay mapped"
    );
    err
}

#[test]
fn fully_sealed_memfd_maps_to_its_bytes() {
    let name = "verify-test-sealed";
    let fd = memfd_with(name, BYTES, common::daemon_seals());
    let sealed = verify(fd, Some(BYTES.len() as u64)).unwrap();
    assert_eq!(&sealed[..], BYTES);
    assert_eq!(sealed.len(), BYTES.len());
    assert_eq!(mappings_named(name), 1);

    // Handing the descriptor back unmaps, and the descriptor still works.
    let fd = sealed.into_fd();
    assert_eq!(mappings_named(name), 0);
    let again = verify(fd, None).unwrap();
    assert_eq!(again.as_bytes(), BYTES);
    drop(again);
    assert_eq!(open_fds_named(name), 0);
    assert_eq!(mappings_named(name), 0);
}

#[test]
fn extra_seals_are_fine() {
    // The mask test: EXEC (set by MFD_NOEXEC_SEAL) and FUTURE_WRITE on top of
    // the required three must not make an equality test fail.
    let name = "verify-test-extra";
    let fd = memfd_with(
        name,
        BYTES,
        SealFlags::WRITE
            | SealFlags::GROW
            | SealFlags::SHRINK
            | SealFlags::FUTURE_WRITE
            | SealFlags::EXEC
            | SealFlags::SEAL,
    );
    assert_eq!(&verify(fd, None).unwrap()[..], BYTES);
}

#[test]
fn unsealed_memfd_is_refused() {
    let name = "verify-test-unsealed";
    let err = refused(name, memfd_with(name, BYTES, SealFlags::empty()), None);
    match &err {
        VerifyError::MissingSeals { have: 0, missing } => {
            assert_eq!(*missing, memseal::REQUIRED_SEALS.bits());
        }
        other => panic!("wrong error: {other:?}"),
    }
    let message = err.to_string();
    for seal in ["WRITE", "GROW", "SHRINK"] {
        assert!(message.contains(seal), "{message}");
    }
}

#[test]
fn future_write_does_not_stand_in_for_write() {
    let name = "verify-test-future-write";
    let seals = SealFlags::FUTURE_WRITE | SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL;
    let err = refused(name, memfd_with(name, BYTES, seals), None);
    match &err {
        VerifyError::MissingSeals { have, missing } => {
            assert_eq!(*have, seals.bits());
            assert_eq!(*missing, SealFlags::WRITE.bits());
        }
        other => panic!("wrong error: {other:?}"),
    }
    assert!(
        err.to_string().contains("lacks the seal(s) WRITE "),
        "{err}"
    );
}

#[test]
fn missing_shrink_is_refused() {
    let name = "verify-test-no-shrink";
    let seals = SealFlags::WRITE | SealFlags::GROW | SealFlags::SEAL;
    let err = refused(name, memfd_with(name, BYTES, seals), None);
    assert!(
        matches!(err, VerifyError::MissingSeals { missing, .. } if missing == SealFlags::SHRINK.bits()),
        "{err:?}"
    );
}

#[test]
fn regular_file_is_not_sealable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("verify-test-regular-file");
    std::fs::write(&path, BYTES).unwrap();
    let fd = OwnedFd::from(std::fs::File::open(&path).unwrap());
    // F_GET_SEALS fails with EINVAL on anything but shmem; were the temporary
    // directory on tmpfs, the file would support seals and simply lack them.
    let on_tmpfs = rustix::fs::fstatfs(&fd).unwrap().f_type == 0x0102_1994;
    let err = refused("verify-test-regular-file", fd, None);
    if on_tmpfs {
        assert!(matches!(err, VerifyError::MissingSeals { .. }), "{err:?}");
    } else {
        assert!(
            matches!(err, VerifyError::NotSealable(rustix::io::Errno::INVAL)),
            "{err:?}"
        );
        assert!(err.to_string().contains("does not support seals"), "{err}");
    }
}

#[test]
fn pipe_is_not_a_regular_file() {
    let (reader, _writer) = rustix::pipe::pipe().unwrap();
    let err = verify(reader, None).unwrap_err();
    assert!(
        matches!(err, VerifyError::NotRegularFile { kind: "pipe" }),
        "{err:?}"
    );
}

#[test]
fn size_mismatch_is_refused() {
    let name = "verify-test-size";
    let fd = memfd_with(name, BYTES, common::daemon_seals());
    let declared = BYTES.len() as u64 + 4096;
    let err = refused(name, fd, Some(declared));
    match err {
        VerifyError::SizeMismatch {
            declared: d,
            actual,
        } => {
            assert_eq!(d, declared);
            assert_eq!(actual, BYTES.len() as u64);
        }
        other => panic!("wrong error: {other:?}"),
    }
}

#[test]
fn zero_length_is_an_empty_slice_without_a_mapping() {
    let name = "verify-test-empty";
    let fd = memfd_with(name, b"", common::daemon_seals());
    let sealed = verify(fd, Some(0)).unwrap();
    assert!(sealed.is_empty());
    assert_eq!(&sealed[..], b"");
    assert_eq!(mappings_named(name), 0);
    assert_eq!(open_fds_named(name), 1, "the descriptor is kept");
    drop(sealed);
    assert_eq!(open_fds_named(name), 0);
}

#[test]
fn the_mapping_is_read_only_and_private() {
    let name = "verify-test-prot";
    let sealed = verify(
        memfd_with(name, BYTES, common::daemon_seals()),
        Some(BYTES.len() as u64),
    )
    .unwrap();
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let line = maps.lines().find(|line| line.contains(name)).unwrap();
    let permissions = line.split_whitespace().nth(1).unwrap();
    assert_eq!(permissions, "r--p", "{line}");
    drop(sealed);
}

#[test]
fn sealed_is_send_and_sync_and_outlives_other_descriptors() {
    fn assert_send_sync<T: Send + Sync>(_: &T) {}
    let name = "verify-test-threads";
    let fd = memfd_with(name, BYTES, common::daemon_seals());
    let other = fd.try_clone().unwrap();
    let sealed = std::sync::Arc::new(verify(fd, None).unwrap());
    assert_send_sync(&*sealed);
    // The sender closing its copy changes nothing for the reader.
    drop(other);
    let shared = std::sync::Arc::clone(&sealed);
    let seen = std::thread::spawn(move || shared.to_vec()).join().unwrap();
    assert_eq!(seen, BYTES);
    assert!(sealed.as_fd().try_clone_to_owned().is_ok());
}
