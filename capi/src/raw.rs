//! What C hands over, turned into Rust values: the library's unsafe code.
//!
//! Each function here relies on the contract the header states for every
//! argument: a pointer is NULL or valid for the duration of the call (a
//! string NUL-terminated, a buffer as long as its length says), and a
//! handle is one this library returned and has not freed. NULL is checked
//! and refused with `MEMSEAL_E_BAD_ARGUMENT`, never dereferenced; nothing
//! else about a pointer can be checked, so everything else is the caller's
//! promise, named in each `SAFETY:` comment.

use crate::codes::{Failure, MEMSEAL_HASH_LEN};
use crate::info::memseal_info;
use std::ffi::{c_char, c_int, CStr, CString};
use std::os::fd::BorrowedFd;
use std::slice;

/// A C string argument that must be given.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string valid for `'a`.
pub(crate) unsafe fn c_str<'a>(ptr: *const c_char, what: &str) -> Result<&'a CStr, Failure> {
    // SAFETY: the caller's promise, passed on.
    unsafe { opt_c_str(ptr) }.ok_or_else(|| Failure::null(what))
}

/// A C string argument that may be NULL.
///
/// # Safety
/// As for [`c_str`].
pub(crate) unsafe fn opt_c_str<'a>(ptr: *const c_char) -> Option<&'a CStr> {
    if ptr.is_null() {
        return None;
    }
    // SAFETY: not NULL, and NUL-terminated and valid for 'a by the
    // caller's promise.
    Some(unsafe { CStr::from_ptr(ptr) })
}

/// An array of `len` values: a buffer of bytes, the items of a batch.
/// NULL is allowed for an empty array.
///
/// # Safety
/// `ptr` is NULL or points to `len` initialised values of type `T`,
/// readable and unchanged for `'a`.
pub(crate) unsafe fn array<'a, T>(
    ptr: *const T,
    len: usize,
    what: &str,
) -> Result<&'a [T], Failure> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(Failure::null(what));
    }
    possible_length::<T>(len, what)?;
    // `ptr` is not NULL, aligned and initialised (a `T *` from C), and
    // `possible_length` bounded the span to isize::MAX bytes.
    // SAFETY: so, with the caller's promise that the values stay readable
    // and unchanged for 'a, this is a valid shared slice.
    Ok(unsafe { slice::from_raw_parts(ptr, len) })
}

/// An array of `len` results for the caller, or None for NULL. Every
/// entry is set to `empty` at once, so that after a failure the caller
/// finds NULL (or 0) in each, never a stale value.
///
/// # Safety
/// `ptr` is NULL or points to writable storage for `len` values of type
/// `T`, used by nothing else (no other argument either) for `'a`.
pub(crate) unsafe fn opt_out_array<'a, T: Copy>(
    ptr: *mut T,
    len: usize,
    what: &str,
    empty: T,
) -> Result<Option<&'a mut [T]>, Failure> {
    if ptr.is_null() {
        return Ok(None);
    }
    possible_length::<T>(len, what)?;
    for i in 0..len {
        // `write` neither reads nor drops what was there (maybe garbage).
        // SAFETY: `i < len`, within the writable entries the caller promised.
        unsafe { ptr.add(i).write(empty) };
    }
    // Not NULL, aligned (a `T *` from C), every entry initialised above,
    // at most isize::MAX bytes (`possible_length`).
    // SAFETY: and nothing else uses it for 'a, by the caller's promise.
    Ok(Some(unsafe { slice::from_raw_parts_mut(ptr, len) }))
}

/// Refuse a length no array in memory can have (more than isize::MAX
/// bytes), which `slice::from_raw_parts` must never be given.
fn possible_length<T>(len: usize, what: &str) -> Result<(), Failure> {
    match len.checked_mul(size_of::<T>()).map(isize::try_from) {
        Some(Ok(_)) => Ok(()),
        _ => Err(Failure::bad_argument(format!(
            "{what}: a length of {len} is not possible"
        ))),
    }
}

/// A content hash: `MEMSEAL_HASH_LEN` bytes.
///
/// # Safety
/// `ptr` is NULL or points to `MEMSEAL_HASH_LEN` readable bytes.
pub(crate) unsafe fn hash(ptr: *const u8, what: &str) -> Result<[u8; MEMSEAL_HASH_LEN], Failure> {
    if ptr.is_null() {
        return Err(Failure::null(what));
    }
    // SAFETY: not NULL; MEMSEAL_HASH_LEN readable bytes by the caller's
    // promise. Copied at once, so nothing is kept.
    let bytes = unsafe { slice::from_raw_parts(ptr, MEMSEAL_HASH_LEN) };
    Ok(bytes.try_into().expect("slice of MEMSEAL_HASH_LEN bytes"))
}

/// A writable buffer of `len` bytes.
///
/// # Safety
/// `ptr` is NULL or points to `len` writable bytes that nothing else reads
/// or writes for `'a`.
pub(crate) unsafe fn buffer<'a>(
    ptr: *mut c_char,
    len: usize,
    what: &str,
) -> Result<&'a mut [u8], Failure> {
    if ptr.is_null() {
        return Err(Failure::null(what));
    }
    // SAFETY: not NULL; `len` writable bytes, not aliased for 'a, by the
    // caller's promise.
    Ok(unsafe { slice::from_raw_parts_mut(ptr.cast::<u8>(), len) })
}

/// A handle this library returned, borrowed for the call.
///
/// # Safety
/// `ptr` is NULL or a handle of type `T` returned by this library and not
/// yet freed, and it is not freed during `'a`.
pub(crate) unsafe fn handle<'a, T>(ptr: *const T, what: &str) -> Result<&'a T, Failure> {
    // SAFETY: the caller's promise, passed on.
    unsafe { opt_handle(ptr) }.ok_or_else(|| Failure::null(what))
}

/// A handle that may be NULL, for the accessors, which answer NULL with a
/// neutral value.
///
/// # Safety
/// As for [`handle`].
pub(crate) unsafe fn opt_handle<'a, T>(ptr: *const T) -> Option<&'a T> {
    // A live handle comes from Box::into_raw (`into_handle`) and is only
    // ever borrowed shared.
    // SAFETY: so it is aligned, points to an initialised T, and no &mut aliases it.
    unsafe { ptr.as_ref() }
}

/// Give a value to C as a handle, to come back through [`handle`] and
/// finally [`release`].
pub(crate) fn into_handle<T>(value: T) -> *mut T {
    Box::into_raw(Box::new(value))
}

/// Take back and drop a handle. NULL is ignored, like `free(NULL)`.
///
/// # Safety
/// `ptr` is NULL or a handle of type `T` returned by this library and not
/// yet freed, that no other thread is using; it must not be used again.
pub(crate) unsafe fn release<T>(ptr: *mut T) {
    if !ptr.is_null() {
        // SAFETY: from Box::into_raw in `into_handle`, freed once, and no
        // longer borrowed anywhere, by the caller's promise.
        drop(unsafe { Box::from_raw(ptr) });
    }
}

/// Where a result goes: an out-parameter.
pub(crate) struct Out<'a, T: Copy>(&'a mut T);

impl<T: Copy> Out<'_, T> {
    /// Store the result.
    pub(crate) fn set(self, value: T) {
        *self.0 = value;
    }
}

/// An out-parameter that must be given. It is set to `empty` at once, so
/// that after a failure the caller finds NULL (or 0), never a stale value.
///
/// # Safety
/// `ptr` is NULL or points to writable storage for a `T`, used by nothing
/// else for `'a`.
pub(crate) unsafe fn out<'a, T: Copy>(
    ptr: *mut T,
    what: &str,
    empty: T,
) -> Result<Out<'a, T>, Failure> {
    // SAFETY: the caller's promise, passed on.
    unsafe { opt_out(ptr, empty) }.ok_or_else(|| Failure::null(what))
}

/// An out-parameter the caller may leave NULL when it does not want the
/// result.
///
/// # Safety
/// As for [`out`].
pub(crate) unsafe fn opt_out<'a, T: Copy>(ptr: *mut T, empty: T) -> Option<Out<'a, T>> {
    if ptr.is_null() {
        return None;
    }
    // T is Copy (pointers, integers): overwriting whatever the caller left
    // drops nothing.
    // SAFETY: not NULL, writable and unused by anything else for 'a (the caller's promise).
    let slot = unsafe { &mut *ptr };
    *slot = empty;
    Some(Out(slot))
}

/// A descriptor of the caller's, borrowed for the call.
///
/// # Safety
/// `fd` is negative or an open descriptor that stays open for `'a`.
pub(crate) unsafe fn descriptor<'a>(fd: c_int, what: &str) -> Result<BorrowedFd<'a>, Failure> {
    if fd < 0 {
        return Err(Failure::bad_argument(format!(
            "{what} must be an open descriptor, not {fd}"
        )));
    }
    // SAFETY: not negative (checked above), open for 'a by the caller's
    // promise; it is only borrowed, never closed here.
    Ok(unsafe { BorrowedFd::borrow_raw(fd) })
}

impl Drop for memseal_info {
    fn drop(&mut self) {
        // `name` comes from CString::into_raw in memseal_info::new, and the
        // value is not Clone or Copy, so no other memseal_info holds it.
        // SAFETY: so it is a CString's pointer, freed here and only here.
        drop(unsafe { CString::from_raw(self.name.cast_mut()) });
    }
}
