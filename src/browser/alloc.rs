//! A small global allocator for the browser build: power-of-two size classes,
//! one free list per class, new blocks bumped from `memory.grow`.
//!
//! Why: the default (dlmalloc) is ~7 KB of the wasm; the tagger makes a handful
//! of short-lived allocations per call, so a simple segregated free list does the
//! job in a few hundred bytes. Memory is never returned to the browser (wasm
//! memory cannot shrink anyway); freed blocks are reused for the same class.
//! wasm32 is single-threaded here (no atomics target feature), so plain statics
//! guarded by that fact are sound.

use core::alloc::{GlobalAlloc, Layout};
use core::arch::wasm32;
use core::cell::UnsafeCell;
use core::ptr::null_mut;

const PAGE: usize = 65_536;
const CLASSES: usize = 32;

struct State {
    /// Head of the free list of each class (class `k` holds blocks of `1 << k` bytes).
    free: [*mut u8; CLASSES],
    /// Next unused byte of the bump region and its end.
    next: usize,
    end: usize,
}

/// The allocator; installed as `#[global_allocator]` in the browser module.
pub struct ClassAlloc(UnsafeCell<State>);

// SAFETY: wasm32-unknown-unknown without the atomics feature runs one thread.
unsafe impl Sync for ClassAlloc {}

impl ClassAlloc {
    /// An empty allocator; it takes memory from `memory.grow` on first use.
    pub const fn new() -> Self {
        ClassAlloc(UnsafeCell::new(State {
            free: [null_mut(); CLASSES],
            next: 0,
            end: 0,
        }))
    }
}

/// The size class of a layout: log2 of the block size (at least 8 bytes).
fn class_of(layout: &Layout) -> usize {
    let size = layout.size().max(layout.align()).max(8);
    size.next_power_of_two().trailing_zeros() as usize
}

unsafe impl GlobalAlloc for ClassAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let s = &mut *self.0.get();
        let k = class_of(&layout);
        if k >= CLASSES {
            return null_mut();
        }
        let head = s.free[k];
        if !head.is_null() && (head as usize).is_multiple_of(layout.align()) {
            s.free[k] = *(head as *mut *mut u8);
            return head;
        }
        let size = 1usize << k;
        // Blocks are aligned to their own size up to a page: any later reuse of
        // the block for an alignment <= its size stays aligned.
        let align = size.min(PAGE).max(layout.align());
        if s.end == 0 {
            s.next = wasm32::memory_size::<0>() * PAGE;
            s.end = s.next;
        }
        let start = (s.next + align - 1) & !(align - 1);
        let Some(stop) = start.checked_add(size) else {
            return null_mut();
        };
        if stop > s.end {
            let pages = (stop - s.end).div_ceil(PAGE);
            if wasm32::memory_grow::<0>(pages) == usize::MAX {
                return null_mut();
            }
            s.end += pages * PAGE;
        }
        s.next = stop;
        start as *mut u8
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let s = &mut *self.0.get();
        let k = class_of(&layout);
        *(ptr as *mut *mut u8) = s.free[k];
        s.free[k] = ptr;
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return null_mut();
        };
        if class_of(&new_layout) == class_of(&layout) {
            return ptr;
        }
        let new = self.alloc(new_layout);
        if !new.is_null() {
            core::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
            self.dealloc(ptr, layout);
        }
        new
    }
}
