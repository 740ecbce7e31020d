//! Handing the pages of freed heap memory back to the kernel after the
//! control loop's large, short-lived allocations.
//!
//! A pass of the loop (render, diff, the nft transaction, and at a resync
//! a second full state read back from the kernel on a thread of its own,
//! i.e. in another glibc arena) allocates several times what the agent
//! holds between passes. glibc returns freed memory to the kernel only
//! from the top of each heap, so a pass's pages stay resident behind the
//! live chunks allocated after them, and a resync's read-back leaves a
//! whole second arena resident (measured in bench/README.md, "agent").

use std::time::Instant;

/// Returns the free pages of every malloc arena to the kernel (glibc's
/// `malloc_trim`), logging at debug how long it took. A no-op where the
/// C library is not glibc.
pub fn release_freed_pages() {
    let started = Instant::now();
    let released = trim();
    tracing::debug!(
        released,
        took_us = started.elapsed().as_micros() as u64,
        "freed heap pages returned to the kernel"
    );
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() -> bool {
    // SAFETY: `malloc_trim` takes no pointer and touches no memory the
    // program owns: it walks glibc's arenas under their own locks (it is
    // MT-Safe per malloc_trim(3)) and only releases pages that lie wholly
    // inside free chunks, so no live allocation, Rust's or a library's,
    // is affected, whichever global allocator the binary uses.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_allocations_survive_a_release() {
        // Freed pages between live blocks: what a pass leaves behind.
        let mut blocks: Vec<Option<Vec<u8>>> =
            (0..128u8).map(|i| Some(vec![i; 3 * 4096])).collect();
        for block in blocks.iter_mut().step_by(2) {
            *block = None;
        }
        release_freed_pages();
        for (i, block) in blocks.iter().enumerate() {
            if let Some(block) = block {
                assert!(block.iter().all(|&b| usize::from(b) == i));
            }
        }
    }
}
