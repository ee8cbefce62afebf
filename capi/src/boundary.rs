//! The edge of every call from C: panics are caught here, failures become
//! codes, and each thread keeps the message of its last failure (and those
//! of the items that failed in its last batch fetch).

use crate::codes::{Failure, MEMSEAL_E_LIBRARY, MEMSEAL_OK};
use std::any::Any;
use std::cell::RefCell;
use std::ffi::{c_char, c_int, CStr, CString};
use std::panic::{self, AssertUnwindSafe};
use std::ptr;

/// What `last_error` gives before any call on the thread has failed.
const NO_ERROR: &CStr = c"";

thread_local! {
    /// The message of this thread's last failed call.
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
    /// The messages of the items that failed in this thread's last batch
    /// fetch, which that call handed out as pointers.
    static ITEM_ERRORS: RefCell<Vec<CString>> = const { RefCell::new(Vec::new()) };
}

/// Run the body of an entry point that returns a code: `MEMSEAL_OK`, or
/// the failure's code with its message recorded for this thread.
pub(crate) fn call(body: impl FnOnce() -> Result<(), Failure>) -> c_int {
    // AssertUnwindSafe: after a panic the caller only gets a code; nothing
    // the body touched is used again except through the handles, and the
    // client's lock turns a panic inside a request into a lost connection.
    match panic::catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => MEMSEAL_OK,
        Ok(Err(failure)) => record(failure),
        Err(payload) => record(panicked(payload)),
    }
}

/// Run the body of an entry point that returns a value rather than a code
/// (the accessors); after a panic it returns `fallback`.
pub(crate) fn value<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    panic::catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|payload| {
        record(panicked(payload));
        fallback
    })
}

/// Remember `failure` as this thread's last error and give its code.
pub(crate) fn record(failure: Failure) -> c_int {
    let message = c_string(failure.message.as_bytes());
    // During thread teardown the slot may be gone; the code still tells.
    let _ = LAST_ERROR.try_with(|last| *last.borrow_mut() = Some(message));
    failure.code
}

/// This thread's last error message ("" if no call has failed yet). The
/// pointer stays valid until the next failure on this thread.
pub(crate) fn last_error() -> *const c_char {
    LAST_ERROR
        .try_with(|last| match &*last.borrow() {
            Some(message) => message.as_ptr(),
            None => NO_ERROR.as_ptr(),
        })
        .unwrap_or(NO_ERROR.as_ptr())
}

/// Keep the messages of a batch's items for this thread, in place of the
/// previous batch's, and give a pointer to each (NULL for an item that
/// has none). The pointers stay valid until this thread's next batch
/// fetch.
pub(crate) fn keep_item_errors(messages: Vec<Option<&str>>) -> Vec<*const c_char> {
    let kept: Vec<Option<CString>> = messages
        .into_iter()
        .map(|message| message.map(|m| c_string(m.as_bytes())))
        .collect();
    // A CString's bytes stay where they are when the CString moves, so
    // the pointers taken here hold once the strings are in the slot.
    let pointers = kept
        .iter()
        .map(|message| message.as_ref().map_or(ptr::null(), |m| m.as_ptr()))
        .collect();
    let stored =
        ITEM_ERRORS.try_with(|slot| *slot.borrow_mut() = kept.into_iter().flatten().collect());
    match stored {
        Ok(()) => pointers,
        // During thread teardown the slot may be gone: no messages, the
        // codes still tell.
        Err(_) => vec![ptr::null(); pointers.len()],
    }
}

/// The failure reported for a panic caught at the boundary.
fn panicked(payload: Box<dyn Any + Send>) -> Failure {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned());
    Failure::new(
        MEMSEAL_E_LIBRARY,
        format!("internal error in libmemseal (please report it): {what}"),
    )
}

/// Bytes as a C string. Names, paths and server names never hold a NUL
/// when all is well; one from a confused daemon is replaced rather than
/// cutting the string short or failing the call.
pub(crate) fn c_string(bytes: &[u8]) -> CString {
    let bytes: Vec<u8> = bytes
        .iter()
        .map(|&b| if b == 0 { b'?' } else { b })
        .collect();
    CString::new(bytes).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codes::MEMSEAL_E_NOT_FOUND;

    /// What `last_error` points to, read from the slot itself.
    fn last() -> String {
        LAST_ERROR.with(|last| {
            let last = last.borrow();
            let message = last.as_deref().unwrap_or(NO_ERROR);
            assert_eq!(message.as_ptr(), last_error());
            message.to_string_lossy().into_owned()
        })
    }

    #[test]
    fn a_panic_becomes_a_code_and_a_message() {
        let code = call(|| panic!("boom"));
        assert_eq!(code, MEMSEAL_E_LIBRARY);
        assert!(last().contains("boom"), "{}", last());
    }

    #[test]
    fn a_failure_is_recorded_and_a_success_leaves_it() {
        assert_eq!(
            call(|| Err(Failure::new(MEMSEAL_E_NOT_FOUND, "no such thing"))),
            MEMSEAL_E_NOT_FOUND
        );
        assert_eq!(call(|| Ok(())), MEMSEAL_OK);
        assert_eq!(last(), "no such thing");
    }

    #[test]
    fn item_errors_are_kept_until_the_next_batch() {
        let pointers = keep_item_errors(vec![None, Some("gone"), Some("bad\0name")]);
        assert!(pointers[0].is_null());
        ITEM_ERRORS.with(|slot| {
            let kept = slot.borrow();
            let kept: Vec<(*const c_char, &str)> = kept
                .iter()
                .map(|m| (m.as_ptr(), m.to_str().unwrap()))
                .collect();
            assert_eq!(kept, [(pointers[1], "gone"), (pointers[2], "bad?name")]);
        });
        assert_eq!(keep_item_errors(vec![None]), [ptr::null()]);
        ITEM_ERRORS.with(|slot| assert!(slot.borrow().is_empty()));
    }

    #[test]
    fn each_thread_has_its_own_message() {
        call(|| Err(Failure::new(MEMSEAL_E_NOT_FOUND, "main thread")));
        let other = std::thread::spawn(last).join().unwrap();
        assert_eq!(other, "");
        assert_eq!(last(), "main thread");
    }
}
