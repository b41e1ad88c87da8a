/// mimalloc instead of the system allocator: an agent allocates and frees persistent map
/// nodes, frames and request buffers for every write, and glibc's malloc took a tenth of its
/// CPU. Built without transparent huge pages (`no_thp`: with them an idle agent's resident
/// memory was 37 MiB instead of 17), and of mimalloc's second generation (`v2`): with the
/// third an idle change stream cost 1.03 KiB against 0.9 (issue 14's goal is under 1 KiB).
///
/// Through [`Mi`] rather than `mimalloc::MiMalloc`, which asks for every block with its
/// alignment (`mi_malloc_aligned`), a longer path than plain `mi_malloc`: a registration makes
/// about a hundred allocations, and taking the plain path where it is enough cut its
/// instructions by 3% (`bench/instructions.sh`).
#[global_allocator]
static GLOBAL: Mi = Mi;

/// mimalloc, asked for an alignment only when its plain blocks may not have it.
struct Mi;

/// Whether a plain mimalloc block of `size` bytes is aligned to `align`: always to a machine
/// word (its smallest blocks are a word), and to up to 16 bytes when the block is at least
/// that large (mimalloc's own rule, `mi_malloc_is_naturally_aligned` in alloc-aligned.c).
fn plain(align: usize, size: usize) -> bool {
    align <= std::mem::size_of::<usize>() || (align <= 16 && align <= size)
}

// SAFETY: every block comes from mimalloc and goes back to it (`mi_free` takes both kinds);
// `plain` sends a layout to the plain entry points only when their blocks are aligned enough,
// and to the aligned ones otherwise, as `mimalloc::MiMalloc` does.
unsafe impl std::alloc::GlobalAlloc for Mi {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        use libmimalloc_sys::{mi_malloc, mi_malloc_aligned};
        if plain(layout.align(), layout.size()) {
            mi_malloc(layout.size()).cast()
        } else {
            mi_malloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        use libmimalloc_sys::{mi_zalloc, mi_zalloc_aligned};
        if plain(layout.align(), layout.size()) {
            mi_zalloc(layout.size()).cast()
        } else {
            mi_zalloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: std::alloc::Layout) {
        libmimalloc_sys::mi_free(ptr.cast());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        use libmimalloc_sys::{mi_realloc, mi_realloc_aligned};
        if plain(layout.align(), new_size) {
            mi_realloc(ptr.cast(), new_size).cast()
        } else {
            mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
        }
    }
}

fn main() {
    std::process::exit(chordctl::cli::main());
}

#[cfg(test)]
mod tests {
    use std::alloc::{alloc, alloc_zeroed, dealloc, realloc, Layout};

    /// Run under the binary's own allocator ([`super::Mi`]), as every test of this file is.
    #[test]
    fn every_block_has_its_alignment_and_keeps_its_bytes_when_it_grows() {
        for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
            for size in (1..=300).chain([511, 512, 1000, 4096, 70_000, 1 << 20]) {
                let layout = Layout::from_size_align(size, align).expect("a layout");
                // SAFETY: the layouts are of nonzero size; each block is freed with its layout.
                unsafe {
                    let p = alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size}, align {align}");
                    p.write_bytes(0xa5, size);
                    let q = realloc(p, layout, size * 3);
                    assert_eq!(q as usize % align, 0, "grown from {size}, align {align}");
                    assert!(std::slice::from_raw_parts(q, size)
                        .iter()
                        .all(|b| *b == 0xa5));
                    dealloc(
                        q,
                        Layout::from_size_align(size * 3, align).expect("a layout"),
                    );
                    let z = alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0, "zeroed {size}, align {align}");
                    assert!(std::slice::from_raw_parts(z, size).iter().all(|b| *b == 0));
                    dealloc(z, layout);
                }
            }
        }
    }
}
