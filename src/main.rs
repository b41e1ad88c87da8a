/// mimalloc instead of the system allocator: an agent allocates and frees persistent map
/// nodes, frames and request buffers for every write, and glibc's malloc took a tenth of its
/// CPU. Built without transparent huge pages (`no_thp`: with them an idle agent's resident
/// memory was 37 MiB instead of 17), and of mimalloc's second generation (`v2`): with the
/// third an idle change stream cost 1.03 KiB against 0.9 (issue 14's goal is under 1 KiB).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(chordctl::cli::main());
}
