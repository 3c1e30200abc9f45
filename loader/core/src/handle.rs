//! The values runtimes hold for tasks: addresses nobody can ever own.
//!
//! A runtime keeps its task handle the way its language keeps a C pointer:
//! Go in an `unsafe.Pointer`, which its stack copier and garbage collector
//! inspect. Go aborts the process when such a value is below 4096 ("invalid
//! pointer found on stack") or points into its own heap where no object
//! lives. Small integers, which handles once were, crash every
//! lua-resty-ffi Go runtime as soon as a goroutine's stack grows.
//!
//! So a handle is an address inside one range of address space reserved
//! once per process with `mmap(PROT_NONE, MAP_NORESERVE)` and never
//! touched or unmapped: no allocator (malloc, Go's arenas, a JVM's heap)
//! can ever be given memory there, it costs no memory, and a runtime that
//! dereferences a handle faults instead of reading another call's data.
//! The offset inside the range encodes the task's slot index (low
//! [`INDEX_BITS`] bits) and the low bits of the slot's generation, so a
//! stale handle (answered twice, answered late) is still told apart from
//! the slot's current call.
//!
//! The range is as large as the kernel grants, from 16 TiB (22 generation
//! bits: a stale handle is mistaken for a live one only after its slot was
//! reused 4 Mi times) down to 16 GiB (12 bits), tried in that order, so an
//! address-space limit (`ulimit -v`) shrinks detection rather than breaking
//! calls.

use std::sync::OnceLock;

/// Bits of the slot index: at most 4 Mi tasks in flight (see task.rs).
pub const INDEX_BITS: u32 = 22;

/// The reserved range: its base address and how many generation bits fit.
#[derive(Debug, Clone, Copy)]
struct Space {
    base: usize,
    gen_bits: u32,
}

static SPACE: OnceLock<Space> = OnceLock::new();

fn reserve() -> Space {
    for gen_bits in (12..=22).rev().step_by(2) {
        let size = 1usize << (INDEX_BITS + gen_bits);
        // SAFETY: an anonymous PROT_NONE reservation at an address of the
        // kernel's choosing touches no existing mapping; it is never
        // unmapped, so the range stays ours for the process's life.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p != libc::MAP_FAILED {
            return Space {
                base: p as usize,
                gen_bits,
            };
        }
    }
    // Not even 16 GiB of address space: fall back to a range of heap
    // memory we own and leak (never handed to anyone else either), with
    // no generation bits: stale handles then alias the slot's next call.
    let size = 1usize << INDEX_BITS;
    let keep: &'static mut [u8] = Box::leak(vec![0u8; size].into_boxed_slice());
    crate::log::error(
        "resty_ffi: cannot reserve address space for task handles (ulimit -v?); \
         answers to stale handles can no longer be detected",
    );
    Space {
        base: keep.as_ptr() as usize,
        gen_bits: 0,
    }
}

fn space() -> Space {
    *SPACE.get_or_init(reserve)
}

/// The handle of slot `index` in generation `gen`.
pub fn encode(index: u32, gen: u64) -> usize {
    let s = space();
    let gen_low = gen as usize & ((1usize << s.gen_bits) - 1);
    s.base + (gen_low << INDEX_BITS | index as usize)
}

/// The slot index and generation bits a handle names, or None when the
/// value is not a handle at all (NULL, a made-up pointer, a heap address).
pub fn decode(handle: usize) -> Option<(u32, u64)> {
    let s = space();
    let off = handle.checked_sub(s.base)?;
    if off >> (INDEX_BITS + s.gen_bits) != 0 {
        return None;
    }
    let index = (off & ((1usize << INDEX_BITS) - 1)) as u32;
    Some((index, (off >> INDEX_BITS) as u64))
}

/// Whether generation `gen` has the low bits a handle carried.
pub fn same_generation(gen: u64, gen_low: u64) -> bool {
    let bits = space().gen_bits;
    gen & ((1u64 << bits) - 1) == gen_low
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_far_from_null_and_round_trip() {
        for (i, g) in [
            (0u32, 0u64),
            (1, 1),
            (4_194_303, 0xffff_ffff),
            (77, 1 << 40),
        ] {
            let h = encode(i, g);
            assert!(h >= 1 << 20, "{h:#x} would look like a small integer");
            let (index, gen_low) = decode(h).unwrap();
            assert_eq!(index, i);
            assert!(same_generation(g, gen_low));
            assert!(!same_generation(g + 1, gen_low));
        }
        assert!(decode(0).is_none());
        assert!(decode(0x1234).is_none());
        let heap = Box::new(5u64);
        assert!(decode(&*heap as *const u64 as usize).is_none());
    }

    #[test]
    fn handles_point_at_memory_nobody_can_read() {
        let h = encode(3, 9);
        let mut vec = 0u8;
        let page = h & !4095;
        // SAFETY: mincore only asks the kernel about the page and writes
        // one byte into `vec`; it reads no memory at `page`.
        let r = unsafe { libc::mincore(page as *mut libc::c_void, 4096, &mut vec) };
        // a PROT_NONE reserved page is mapped but has no resident memory
        assert_eq!(r, 0);
        assert_eq!(vec & 1, 0, "the handle's page must never be touched");
    }
}
