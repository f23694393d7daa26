//! Arbitrary bytes, in arbitrary chunks, into the control socket's frame decoder, and frames the
//! encoder wrote back through it; see `checks::frame_decode_check`. This binary's allocator
//! counts what each thread allocates, so the check can hold the decoder to "nothing allocated
//! for a refused length prefix".

#![no_main]

// Each target uses one of the shared checks.
#[allow(dead_code)]
mod checks;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use libfuzzer_sys::fuzz_target;

thread_local! {
    /// Bytes this thread has allocated (growth by `realloc` included), ever.
    static ALLOCATED: Cell<u64> = const { Cell::new(0) };
}

fn count(bytes: usize) {
    // `try_with`: an allocation while the thread's locals are being torn down is not counted.
    let _ = ALLOCATED.try_with(|total| total.set(total.get() + bytes as u64));
}

fn allocated() -> u64 {
    ALLOCATED.with(Cell::get)
}

/// The system allocator, counting per thread.
struct Counting;

// SAFETY: every call is forwarded unchanged to the system allocator; counting touches only a
// thread-local integer, which allocates nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: the caller upholds `alloc`'s contract, which `System.alloc` shares.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size.saturating_sub(layout.size()));
        // SAFETY: `ptr` was allocated by `System` with `layout`; the caller upholds the rest.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fuzz_target!(|data: &[u8]| checks::frame_decode_check(data, Some(allocated)));
