fn main() {
    std::process::exit(chordctl::cli::main());
}
